// Occupancy mode (Herald's large rooms): the server caps `stadium-*` at 2 members. Above the
// cap a new subscriber's snapshot lists 2 members plus an extra `occupancy` field, and watchers
// get count frames (presence with empty joined/left and `occupancy`) instead of deltas. The
// official SignallingClient and MeteredPeer must survive both: no error, no reconnect, and a
// roster equal to the capped snapshot.
import { assert, connect, makeClient, makePeer, mintToken, roster, scenario, sleep } from "./helpers.mjs";

const CH = "stadium-1";
const isCount = (p) => p.channel === CH && p.joined.length === 0 && p.left.length === 0;

scenario("js occupancy frames", async () => {
  // p1 and p2 fill the room to its cap; p3 takes it over.
  const fans = [];
  for (const id of ["p1", "p2", "p3"]) {
    const c = makeClient(id, { token: mintToken({ sub: id }) });
    await connect(c);
    await c.subscribe(CH);
    await c.rec.waitFor("presence", (p) => p.channel === CH, `${id} snapshot`);
    fans.push(c);
  }

  const watcher = makeClient("w", { token: mintToken({ sub: "w" }) });
  await connect(watcher);
  await watcher.subscribe(CH);
  const snap = await watcher.rec.waitFor("presence", (p) => p.channel === CH, "w snapshot");
  assert.deepEqual(snap.joined.map((j) => j.peerId).sort(), ["p1", "p2"], "the capped snapshot");
  assert.ok(!("occupancy" in snap), "the SDK hands the app channel, joined and left only");

  const mp = makePeer("mp", { token: mintToken({ sub: "mp" }) });
  await mp.join(CH);
  await mp.rec.until(() => mp.remotePeers.length === 2, "mp: two remote peers");
  assert.deepEqual(mp.remotePeers.map((p) => p.id).sort(), ["p1", "p2"]);

  // More churn over the cap: p4 joins, p1 leaves. Nobody is told per member; a count comes.
  const p4 = makeClient("p4", { token: mintToken({ sub: "p4" }) });
  await connect(p4);
  await p4.subscribe(CH);
  await fans[0].close();
  await watcher.rec.waitFor("presence", isCount, "w: a count frame", 5000);
  await sleep(300); // mp's socket gets the same frame
  assert.deepEqual([...roster(watcher.rec, CH).keys()].sort(), ["p1", "p2"], "w's roster is the snapshot");
  assert.deepEqual(mp.remotePeers.map((p) => p.id).sort(), ["p1", "p2"], "mp's peers are the snapshot");
  assert.equal(mp.state, "joined");
  assert.equal(mp.rec.all("error").length, 0, "mp: no error events");
  assert.equal(mp.rec.all("peer-left").length, 0, "mp: no peer-left");
  assert.equal(watcher.rec.all("disconnected").length, 0, "w: never disconnected");
  assert.equal(watcher.rec.all("server-error").length, 0, "w: no server error");

  await mp.close();
  for (const c of [watcher, p4, fans[1], fans[2]]) await c.close();
});
