// WebSocket closing handshake (RFC 6455 §5.5.1, §7.1.2): when the SDK closes its connection,
// the server must answer the client's Close frame with a Close frame before dropping TCP. The
// SDK then reports the code it sent (1000) in its final `disconnected` event; without the echo
// `ws` reports 1006 (abnormal closure) for a perfectly normal client close.
import { assert, connect, makeClient, makePeer, mintToken, scenario } from "./helpers.mjs";

scenario("js clean close", async () => {
  const alice = makeClient("alice", { token: mintToken({ sub: "alice" }) });
  await connect(alice);
  await alice.subscribe("room/close");
  await alice.close();
  const d = await alice.rec.waitFor("disconnected", () => true, "disconnected after close()");
  assert.equal(d.willReconnect, false);
  assert.equal(
    d.code,
    1000,
    `client close() must end with the echoed 1000, got ${d.code} (server dropped TCP without a Close frame)`,
  );

  // The same through MeteredPeer.close().
  const bob = makePeer("bob", { token: mintToken({ sub: "bob" }) });
  await bob.join("room/close");
  await bob.close();
  assert.equal(bob.state, "closed");
});
