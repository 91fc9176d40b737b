// REST admin kick of a MeteredPeer (JS, stub rtcPeerConnectionFactory, spec §20.2), spec §7.2:
// 4020 is terminal and "fatal surfaced by MeteredPeer". The kicked peer emits `error` (err.name
// "admin_disconnect") and then `left`, ends "closed" with no remote peers, and never reconnects
// (no tokenProvider call, no connection in Herald's admin API for 3 s). The other peer gets
// `peer-left` and stays joined.
import { adminConnections, assert, log, makePeer, mintToken, restOk, scenario, sleep } from "./helpers.mjs";

const ROOM = "call/kick";
const QUIET_MS = 3000;
const meta = (name) => ({ username: name });

scenario("js rest kick metered peer", async () => {
  let aliceCalls = 0;
  const alice = makePeer("alice", {
    tokenProvider: async () => {
      aliceCalls += 1;
      log(`alice tokenProvider call #${aliceCalls}`);
      return mintToken({ sub: "alice", peerMetadata: meta("Alice") });
    },
  });
  const bob = makePeer("bob", { token: mintToken({ sub: "bob", peerMetadata: meta("Bob") }) });
  await alice.join(ROOM, { includeSenderMetadata: true });
  await bob.join(ROOM, { includeSenderMetadata: true });
  await bob.rec.waitFor("peer-joined", (e) => e.peer.id === "alice", "bob: peer-joined alice");
  await alice.rec.waitFor("peer-joined", (e) => e.peer.id === "bob", "alice: peer-joined bob");

  const kicked = await restOk("DELETE", "/v1/peers/alice");
  assert.deepEqual(kicked, { peerId: "alice", closed: 1 });

  const err = await alice.rec.waitFor("error", () => true, "alice: fatal error", 5000);
  assert.ok(err.err instanceof Error, `error payload: ${JSON.stringify(err)}`);
  assert.equal(err.err.name, "admin_disconnect", `fatal error name: ${err.err.name}: ${err.err.message}`);
  assert.match(err.err.message, /4020/, "the error names the close code");
  const left = await alice.rec.waitFor("left", () => true, "alice: left", 5000);
  assert.equal(left.peerId, "alice");
  assert.equal(left.channel, ROOM);
  assert.ok(
    alice.rec.indexOf("error") < alice.rec.indexOf("left"),
    "the fatal error is emitted before left (spec §7.2)",
  );
  assert.equal(alice.state, "closed");
  assert.deepEqual(alice.remotePeers, [], "alice tore down her remote peers");

  const gone = await bob.rec.waitFor("peer-left", (e) => e.peer.id === "alice", "bob: peer-left alice", 5000);
  assert.equal(gone.peer.id, "alice");
  assert.deepEqual(bob.remotePeers, []);

  // No reconnect: the admin API never shows alice again, the tokenProvider is not called again.
  const until = Date.now() + QUIET_MS;
  while (Date.now() < until) {
    const conns = await adminConnections();
    assert.deepEqual(
      conns.map((c) => c.peerId),
      ["bob"],
      `only bob may be connected after the kick: ${JSON.stringify(conns)}`,
    );
    await sleep(250);
  }
  assert.equal(aliceCalls, 1, "alice's tokenProvider was not called again");
  assert.equal(alice.rec.all("joined").length, 1, "alice never rejoined");
  assert.equal(alice.rec.all("left").length, 1);
  assert.equal(alice.rec.all("error").length, 1, "exactly one fatal error");
  assert.equal(alice.state, "closed");

  // Bob is unaffected.
  assert.equal(bob.state, "joined");
  assert.equal(bob.rec.all("error").length, 0);
  assert.equal(bob.rec.all("left").length, 0);
  await bob.close();
  assert.equal(bob.state, "closed");
});
