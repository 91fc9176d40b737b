// The reconnect grace as an official SDK client lives it (crates/server/tests/sdk_grace.rs).
// One SignallingClient joins GRACE_CHANNEL as GRACE_PEER and prints `@READY`. The Rust side,
// which owns the observers, then either cuts its socket (through a TCP proxy: no close frame)
// or kills this process. In `GRACE_MODE=reconnect` the SDK reconnects on its own backoff and
// replays the subscription: `@RESUBSCRIBED` once the snapshot after the reconnect is in; then
// a `close` line on stdin closes the client cleanly and `@CLOSED` follows. In `GRACE_MODE=hold`
// the client just stays until it is killed.
import readline from "node:readline";
import { assert, connect, log, makeClient, mintToken, scenario } from "./helpers.mjs";

const peer = process.env.GRACE_PEER;
const channel = process.env.GRACE_CHANNEL;
const mode = process.env.GRACE_MODE;

const lines = readline.createInterface({ input: process.stdin });
const nextLine = () => new Promise((resolve) => lines.once("line", resolve));

scenario(`js grace ${mode}`, async () => {
  const client = makeClient(peer, {
    token: mintToken({ sub: peer, peerMetadata: { username: peer } }),
  });
  await connect(client);
  await client.subscribe(channel);
  console.log("@READY");
  if (mode === "hold") {
    await new Promise(() => {}); // until killed
  }
  const connectedIdx = client.rec.events.length - 1;
  const back = await client.rec.until(
    () => client.rec.since(connectedIdx, "connected", (c) => c.isReconnect)[0],
    "a reconnect after the socket was cut",
    10_000,
  );
  assert.equal(back.peerId, peer, "same peer after the reconnect");
  const drop = client.rec.since(connectedIdx, "disconnected")[0];
  log("dropped with", JSON.stringify(drop));
  assert.equal(drop.willReconnect, true);
  const backIdx = client.rec.indexOf("connected", (c) => c === back);
  await client.rec.until(
    () => client.rec.since(backIdx, "presence", (p) => p.channel === channel)[0],
    "the snapshot of the replayed subscribe",
  );
  console.log("@RESUBSCRIBED");
  const line = await nextLine();
  assert.equal(line, "close");
  await client.close();
  console.log("@CLOSED");
});
