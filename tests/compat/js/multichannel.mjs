// Scenario 5: three channels on one connection; every message arrives tagged with the channel it
// was published to, nothing crosses over, and an unsubscribe stops exactly one channel.
import { assert, connect, makeClient, mintToken, scenario, sleep } from "./helpers.mjs";

const CHANNELS = ["team/eng", "team/ops", "alerts/prod"];

scenario("js multichannel", async () => {
  const alice = makeClient("alice", { token: mintToken({ sub: "alice", peerMetadata: { username: "Alice" } }) });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: { username: "Bob" } }) });
  await connect(alice);
  await connect(bob);

  for (const ch of CHANNELS) await alice.subscribe(ch);
  // One (empty) snapshot per channel.
  for (const ch of CHANNELS) {
    const snap = await alice.rec.waitFor("presence", (p) => p.channel === ch, `alice snapshot for ${ch}`);
    assert.deepEqual(snap, { channel: ch, joined: [], left: [] });
  }
  await bob.subscribe("team/ops");
  const joined = await alice.rec.waitFor("presence", (p) => p.joined.length > 0, "alice sees bob on team/ops");
  assert.equal(joined.channel, "team/ops", "presence is reported on the channel bob joined only");
  assert.equal(alice.rec.all("presence", (p) => p.joined.length > 0).length, 1);

  // Bob publishes to each channel (he needs no subscription to publish).
  for (const [i, ch] of CHANNELS.entries()) await bob.publish(ch, { for: ch, i });
  await alice.rec.until(() => alice.rec.all("message").length >= 3, "3 messages at alice");
  const got = alice.rec.all("message");
  assert.equal(got.length, 3);
  for (const m of got) {
    assert.equal(m.from, "bob");
    assert.equal(m.data.for, m.channel, `message for ${m.data.for} arrived on ${m.channel}`);
  }
  assert.deepEqual(got.map((m) => m.channel), CHANNELS, "in publish order");

  // Alice publishes to two channels; Bob only gets the one he is on.
  await alice.publish("team/eng", { for: "team/eng" });
  await alice.publish("team/ops", { for: "team/ops" });
  const atBob = await bob.rec.waitFor("message", () => true, "bob gets team/ops");
  assert.deepEqual(atBob, { channel: "team/ops", from: "alice", data: { for: "team/ops" } });
  await sleep(200);
  assert.equal(bob.rec.all("message").length, 1, "bob is not on team/eng");

  // Unsubscribing one channel leaves the other two working.
  await alice.unsubscribe("team/ops");
  const left = await bob.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === "alice"), "bob sees alice leave team/ops");
  assert.equal(left.channel, "team/ops");
  for (const ch of CHANNELS) await bob.publish(ch, { for: ch, round: 2 });
  await alice.rec.until(() => alice.rec.all("message", (m) => m.data.round === 2).length >= 2, "round 2 at alice");
  await sleep(200);
  assert.deepEqual(
    alice.rec.all("message", (m) => m.data.round === 2).map((m) => m.channel),
    ["team/eng", "alerts/prod"],
  );

  await alice.close();
  await bob.close();
});
