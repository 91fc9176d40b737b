// Scenario 6 for MeteredPeer (JS): reconnect reconciliation (spec §8.2, §8.4). Alice's
// tokenProvider mints 3-second tokens, so Herald closes her with 4002 shortly before exp. Her
// MeteredPeer goes "reconnecting", reconnects with a fresh token, resubscribes, and treats the
// snapshot as the roster: bob survives (same RemotePeer, no peer-left), she is "joined" again and
// per-peer data flows both ways. Bob may see alice leave and rejoin; his roster ends with her.
import { assert, log, makePeer, mintToken, scenario } from "./helpers.mjs";

const ROOM = "call/reconnect";

scenario("js metered peer reconnect", async () => {
  let calls = 0;
  const alice = makePeer("alice", {
    tokenProvider: async () => {
      calls += 1;
      log(`tokenProvider call #${calls}`);
      return mintToken({ sub: "alice", ttlSecs: 3, peerMetadata: { username: "Alice" } });
    },
  });
  const bob = makePeer("bob", { token: mintToken({ sub: "bob", peerMetadata: { username: "Bob" } }) });

  await alice.join(ROOM, { includeSenderMetadata: true });
  await bob.join(ROOM, { includeSenderMetadata: true });
  const bobRemote = (await alice.rec.waitFor("peer-joined", (e) => e.peer.id === "bob", "alice: peer-joined bob")).peer;
  await bob.rec.waitFor("peer-joined", (e) => e.peer.id === "alice", "bob: peer-joined alice");

  await alice.rec.waitFor("state-change", (s) => s.to === "reconnecting", "alice: reconnecting after the 4002 close", 6000);
  const back = alice.rec.indexOf("state-change", (s) => s.to === "reconnecting");
  await alice.rec.until(
    () => alice.rec.since(back, "state-change", (s) => s.to === "joined").length > 0,
    "alice: joined again after reconcile",
    10_000,
  );
  assert.ok(calls >= 2, "tokenProvider was asked for a fresh token");
  assert.equal(alice.state, "joined");
  assert.equal(alice.peerId, "alice");
  assert.equal(alice.rec.all("peer-left").length, 0, "bob survived the reconcile: no peer-left");
  assert.deepEqual(alice.remotePeers.map((p) => p.id), ["bob"]);
  assert.strictEqual(alice.remotePeers[0], bobRemote, "same RemotePeer instance after reconcile");
  assert.equal(alice.rec.all("error").length, 0, "no fatal error on a retryable 4002");

  await bob.rec.until(() => bob.remotePeers.some((p) => p.id === "alice"), "bob: alice in his room again", 5000);
  await alice.sendTo("bob", { after: "reconnect" });
  const d1 = await bob.rec.waitFor("data", (e) => e.data?.after === "reconnect", "bob gets alice's post-reconnect sendTo");
  assert.equal(d1.senderPeerId, "alice");
  assert.deepEqual(d1.senderMetadata, { username: "Alice" });
  await bob.sendTo("alice", { reply: "welcome back" });
  const d2 = await alice.rec.waitFor("data", (e) => e.data?.reply === "welcome back", "alice gets bob's reply");
  assert.equal(d2.senderPeerId, "bob");
  await bob.send({ broadcast: "after reconnect" });
  const d3 = await alice.rec.waitFor("data", (e) => e.kind === "broadcast", "alice gets bob's broadcast");
  assert.deepEqual(d3.senderMetadata, { username: "Bob" }, "includeSenderMetadata replayed");

  await alice.close();
  await bob.close();
});
