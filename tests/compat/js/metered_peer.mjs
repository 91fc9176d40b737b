// Scenario 9 (JS): two official MeteredPeers in one room, in Node with a stub
// rtcPeerConnectionFactory (spec §20.2). Each sees the other's `peer-joined` with its metadata,
// receives the other's per-peer data (`sendTo` and `remote.send`) as `data` events of kind
// "direct" carrying senderMetadata, and the room broadcast (`peer.send`) as kind "broadcast".
// When one leaves, the other gets `peer-left`.
import { assert, makePeer, mintToken, scenario, sleep, StubPeerConnection } from "./helpers.mjs";

const ROOM = "call/room-9";
const meta = (name) => ({ username: name, avatarUrl: `https://cdn.example.com/${name}.png` });

scenario("js metered peer", async () => {
  const alice = makePeer("alice", { token: mintToken({ sub: "alice", peerMetadata: meta("Alice") }) });
  const bob = makePeer("bob", { token: mintToken({ sub: "bob", peerMetadata: meta("Bob") }) });

  await alice.join(ROOM, { includeSenderMetadata: true });
  assert.equal(alice.state, "joined");
  assert.equal(alice.peerId, "alice");
  assert.equal(alice.channel, ROOM);
  await bob.join(ROOM, { includeSenderMetadata: true });

  // Bob learns about alice from his snapshot, alice about bob from the delta.
  const bobSeesAlice = await bob.rec.waitFor("peer-joined", (e) => e.peer.id === "alice", "bob: peer-joined alice");
  assert.deepEqual(bobSeesAlice.peer.metadata, meta("Alice"));
  const aliceSeesBob = await alice.rec.waitFor("peer-joined", (e) => e.peer.id === "bob", "alice: peer-joined bob");
  assert.deepEqual(aliceSeesBob.peer.metadata, meta("Bob"));
  assert.deepEqual(alice.remotePeers.map((p) => p.id), ["bob"]);
  assert.deepEqual(bob.remotePeers.map((p) => p.id), ["alice"]);
  assert.equal(aliceSeesBob.peer.polite, true, "alice < bob, so alice is polite");
  assert.equal(bobSeesAlice.peer.polite, false);
  assert.ok(StubPeerConnection.created >= 2, "MeteredPeer built a connection per remote");

  // Per-peer data, server-routed: sendTo(...) and remote.send(...).
  await alice.sendTo("bob", { text: "hi bob (sendTo)" });
  const d1 = await bob.rec.waitFor("data", (e) => e.data?.text === "hi bob (sendTo)", "bob gets alice's sendTo");
  assert.deepEqual(d1, { senderPeerId: "alice", data: { text: "hi bob (sendTo)" }, kind: "direct", senderMetadata: meta("Alice") });

  await bobSeesAlice.peer.send({ text: "hi alice (remote.send)" });
  const d2 = await alice.rec.waitFor("data", (e) => e.data?.text === "hi alice (remote.send)", "alice gets bob's remote.send");
  assert.deepEqual(d2, { senderPeerId: "bob", data: { text: "hi alice (remote.send)" }, kind: "direct", senderMetadata: meta("Bob") });

  // Room broadcast; the sender does not hear itself.
  await alice.send({ text: "hello room" });
  const d3 = await bob.rec.waitFor("data", (e) => e.kind === "broadcast", "bob gets alice's broadcast");
  assert.deepEqual(d3, { senderPeerId: "alice", data: { text: "hello room" }, kind: "broadcast", senderMetadata: meta("Alice") });
  await sleep(200);
  assert.equal(alice.rec.all("data", (e) => e.kind === "broadcast").length, 0, "no echo");

  // No negotiation happened (no tracks, no data channels) and nothing went wrong.
  assert.equal(alice.rec.all("error").length, 0, "alice: no error events");
  assert.equal(bob.rec.all("error").length, 0, "bob: no error events");

  await alice.close();
  const gone = await bob.rec.waitFor("peer-left", (e) => e.peer.id === "alice", "bob: peer-left alice");
  assert.equal(gone.peer.id, "alice");
  assert.deepEqual(bob.remotePeers, []);
  await bob.close();
  assert.equal(bob.state, "closed");
});
