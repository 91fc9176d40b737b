// Scenario 1: a roster UI built from presence — snapshot first, then deltas, with names and
// avatars from the JWT `peerMetadata` ({username, avatarUrl}); a `left` when a peer closes its
// connection and when a peer unsubscribes (spec §5.1, §5.2, §12).
import { assert, connect, log, makeClient, mintToken, roster, scenario } from "./helpers.mjs";

const CH = "lobby";
const meta = (name) => ({ username: name, avatarUrl: `https://cdn.example.com/avatars/${name.toLowerCase()}.png` });

scenario("js roster", async () => {
  const alice = makeClient("alice", { token: mintToken({ sub: "alice", peerMetadata: meta("Alice") }) });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: meta("Bob") }) });
  const carol = makeClient("carol", { token: mintToken({ sub: "carol", peerMetadata: meta("Carol") }) });

  const w = await connect(alice);
  assert.equal(w.peerId, "alice");
  assert.equal(typeof w.expiresAt, "number", "JWT welcome carries expiresAt");
  await connect(bob);
  await connect(carol);

  // Alice is first in the room: her snapshot is empty but present (§5.1: always sent).
  await alice.subscribe(CH);
  const snapA = await alice.rec.waitFor("presence", (p) => p.channel === CH, "alice snapshot");
  assert.deepEqual(snapA, { channel: CH, joined: [], left: [] });

  // Bob joins: his snapshot lists Alice with her public metadata; Alice gets a delta.
  await bob.subscribe(CH);
  const snapB = await bob.rec.waitFor("presence", (p) => p.channel === CH, "bob snapshot");
  assert.deepEqual(snapB, { channel: CH, joined: [{ peerId: "alice", metadata: meta("Alice") }], left: [] });
  const deltaA = await alice.rec.waitFor("presence", (p) => p.joined.some((j) => j.peerId === "bob"), "alice sees bob join");
  assert.deepEqual(deltaA, { channel: CH, joined: [{ peerId: "bob", metadata: meta("Bob") }], left: [] });

  // Carol joins: snapshot has both (order is not specified), the others get deltas.
  await carol.subscribe(CH);
  const snapC = await carol.rec.waitFor("presence", (p) => p.channel === CH, "carol snapshot");
  assert.deepEqual(snapC.left, []);
  const byId = Object.fromEntries(snapC.joined.map((j) => [j.peerId, j.metadata]));
  assert.deepEqual(byId, { alice: meta("Alice"), bob: meta("Bob") });
  for (const c of [alice, bob]) {
    const d = await c.rec.waitFor("presence", (p) => p.joined.some((j) => j.peerId === "carol"), `${c.rec.name} sees carol join`);
    assert.deepEqual(d, { channel: CH, joined: [{ peerId: "carol", metadata: meta("Carol") }], left: [] });
  }
  // Nobody is told about their own join.
  for (const [c, id] of [[alice, "alice"], [bob, "bob"], [carol, "carol"]]) {
    const self = c.rec.all("presence", (p) => p.joined.some((j) => j.peerId === id));
    assert.equal(self.length, 0, `${id} must not see itself in presence`);
  }

  // What a roster UI would render for Alice: names and avatars, built from snapshot + deltas.
  const render = (rec) =>
    [...roster(rec, CH).entries()].map(([id, m]) => `${id}:${m?.username}:${m?.avatarUrl}`).sort();
  assert.deepEqual(render(alice.rec), [
    `bob:Bob:${meta("Bob").avatarUrl}`,
    `carol:Carol:${meta("Carol").avatarUrl}`,
  ]);

  // Bob closes his connection: the others get `left` for him.
  await bob.close();
  for (const c of [alice, carol]) {
    const d = await c.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === "bob"), `${c.rec.name} sees bob leave`);
    assert.equal(d.channel, CH);
    assert.deepEqual(d.joined, []);
    assert.deepEqual(d.left.map((l) => l.peerId), ["bob"]);
  }

  // Carol unsubscribes (connection stays open): Alice gets `left` for her too.
  await carol.unsubscribe(CH);
  const d = await alice.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === "carol"), "alice sees carol leave");
  assert.deepEqual(d.left.map((l) => l.peerId), ["carol"]);
  assert.deepEqual(render(alice.rec), []);
  log("alice's final roster is empty, as expected");

  await alice.close();
  await carol.close();
});
