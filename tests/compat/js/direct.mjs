// Scenario 3: direct messages (spec §4.5, §5.4). `fromMetadata` is always stamped when the sender
// has peerMetadata (no channel needed, no opt-in), absent when it has none; sending to an offline
// peer rejects with `peer_not_found` and the connection stays usable.
import { assert, connect, expectReject, makeClient, mintToken, scenario } from "./helpers.mjs";

const meta = (name) => ({ username: name, avatarUrl: `https://cdn.example.com/${name}.png`, role: "member" });

scenario("js direct", async () => {
  const alice = makeClient("alice", { token: mintToken({ sub: "alice", peerMetadata: meta("Alice") }) });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: meta("Bob") }) });
  const dave = makeClient("dave", { token: mintToken({ sub: "dave" }) }); // no peerMetadata
  for (const c of [alice, bob, dave]) await connect(c);

  // No shared channel: direct is scoped to the app.
  await alice.send("bob", { text: "hi bob", seq: 1 });
  const atBob = await bob.rec.waitFor("direct", () => true, "bob gets alice's direct");
  assert.deepEqual(atBob, { from: "alice", data: { text: "hi bob", seq: 1 }, fromMetadata: meta("Alice") });

  await bob.send("alice", { text: "hi alice", seq: 2 });
  const atAlice = await alice.rec.waitFor("direct", (m) => m.from === "bob", "alice gets bob's reply");
  assert.deepEqual(atAlice, { from: "bob", data: { text: "hi alice", seq: 2 }, fromMetadata: meta("Bob") });

  await dave.send("alice", "plain string payload");
  const fromDave = await alice.rec.waitFor("direct", (m) => m.from === "dave", "alice gets dave's direct");
  assert.deepEqual(fromDave, { from: "dave", data: "plain string payload" });
  assert.equal(fromDave.fromMetadata, undefined, "dave has no peerMetadata");

  // Ordering per (sender, receiver).
  for (let i = 0; i < 20; i++) await bob.send("alice", { seq: 100 + i });
  await alice.rec.until(() => alice.rec.all("direct", (m) => m.data?.seq >= 100).length === 20, "20 ordered directs");
  assert.deepEqual(
    alice.rec.all("direct", (m) => m.data?.seq >= 100).map((m) => m.data.seq),
    Array.from({ length: 20 }, (_, i) => 100 + i),
  );

  // Offline peers.
  await expectReject(alice.send("ghost", { text: "anyone?" }), "peer_not_found", "send to a never-connected peer");
  await bob.close();
  await expectReject(alice.send("bob", { text: "still there?" }), "peer_not_found", "send to a peer that closed");

  // The connection is still fine after the errors.
  await alice.send("dave", { text: "still connected" });
  const atDave = await dave.rec.waitFor("direct", () => true, "dave gets alice's direct");
  assert.deepEqual(atDave.fromMetadata, meta("Alice"));
  assert.equal(alice.state, "connected");
  assert.equal(alice.rec.all("disconnected").length, 0);

  await alice.close();
  await dave.close();
});
