// Scenario 7: a publishable-key (`apiKey: "pk_…"`) connection (spec §2.1).
// The server assigns a UUID peerId, welcome.expiresAt is null and the SDK surfaces it as null,
// welcome.metadata is absent or an object; the pk peer has no peerMetadata, so its presence
// entries carry no `metadata` and its messages and directs carry no `fromMetadata`, even for a
// receiver that opted in. It still sees JWT peers' metadata.
import { assert, connect, makeClient, mintToken, scenario } from "./helpers.mjs";

const CH = "public/lobby";
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/;
const BOB = { username: "Bob", avatarUrl: "https://cdn.example.com/bob.png" };
// Private connection metadata (JWT `metadata`): only its iceServers are surfaced by the SDK (§2.3).
const ICE = [{ urls: ["stun:stun.example.com:3478"] }, { urls: "turn:turn.example.com:3478", username: "u", credential: "c" }];

scenario("js pk", async () => {
  const anon = makeClient("anon", { apiKey: process.env.HERALD_PK });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: BOB, metadata: { iceServers: ICE, plan: "pro" } }) });

  const w = await connect(anon);
  assert.match(w.peerId, UUID, "server-assigned lowercase UUID v4 peerId");
  assert.strictEqual(w.expiresAt, null, "pk connections never expire: expiresAt null");
  assert.equal(typeof w.serverTime, "number");
  assert.ok(w.maxMessageSize > 0);
  assert.ok(w.iceServers === undefined || Array.isArray(w.iceServers), "iceServers absent or a list");
  const anonId = w.peerId;
  const wb = await connect(bob);
  assert.deepEqual(wb.iceServers, ICE, "JWT metadata.iceServers reach the SDK verbatim");

  await bob.subscribe(CH, { includeSenderMetadata: true });
  await anon.subscribe(CH, { includeSenderMetadata: true });

  // The pk peer sees bob with his metadata ...
  const snap = await anon.rec.waitFor("presence", (p) => p.channel === CH, "anon snapshot");
  assert.deepEqual(snap.joined, [{ peerId: "bob", metadata: BOB }]);
  // ... while bob sees the pk peer without any.
  const joined = await bob.rec.waitFor("presence", (p) => p.joined.some((j) => j.peerId === anonId), "bob sees anon join");
  assert.deepEqual(joined.joined, [{ peerId: anonId }]);
  assert.ok(!("metadata" in joined.joined[0]), "no metadata key for a pk peer");

  await anon.publish(CH, { text: "hello from a pk" });
  const msg = await bob.rec.waitFor("message", () => true, "bob gets anon's message");
  assert.deepEqual(msg, { channel: CH, from: anonId, data: { text: "hello from a pk" } });
  assert.ok(!("fromMetadata" in msg), "no fromMetadata even though bob opted in");

  await anon.send("bob", { text: "direct from a pk" });
  const d = await bob.rec.waitFor("direct", () => true, "bob gets anon's direct");
  assert.deepEqual(d, { from: anonId, data: { text: "direct from a pk" } });

  // The other way round, bob's metadata reaches the pk peer.
  await bob.publish(CH, { text: "hi anon" });
  const back = await anon.rec.waitFor("message", () => true, "anon gets bob's message");
  assert.deepEqual(back.fromMetadata, BOB);
  await bob.send(anonId, { text: "hi anon, directly" });
  const dBack = await anon.rec.waitFor("direct", () => true, "anon gets bob's direct");
  assert.deepEqual(dBack, { from: "bob", data: { text: "hi anon, directly" }, fromMetadata: BOB });

  // A second pk connection is a different peer.
  const anon2 = makeClient("anon2", { apiKey: process.env.HERALD_PK });
  const w2 = await connect(anon2);
  assert.match(w2.peerId, UUID);
  assert.notEqual(w2.peerId, anonId, "a fresh UUID per connection");

  await anon.close();
  const left = await bob.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === anonId), "bob sees anon leave");
  assert.equal(left.channel, CH);
  await anon2.close();
  await bob.close();
});
