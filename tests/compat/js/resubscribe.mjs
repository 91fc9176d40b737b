// Scenario 6: auto-resubscribe after a server-initiated close.
// Alice's tokenProvider mints short-lived tokens (exp = now + 3 s). Herald closes her socket with
// 4002 about 250 ms before exp (spec §2.2 step 7, §7.1); the SDK treats 4002 as retryable
// (§7.2), calls the tokenProvider again, reconnects, replays the subscription with the same
// includeSenderMetadata (§8.2) and keeps receiving. Bob, on a long-lived token, sees Alice
// continue: presence may show left+joined around each gap, but his roster ends with Alice in it.
import { assert, connect, log, makeClient, mintToken, roster, scenario } from "./helpers.mjs";

const CH = "news/live";
const TTL = 3;
const CYCLES = 2;

scenario("js resubscribe", async () => {
  const minted = [];
  const alice = makeClient("alice", {
    tokenProvider: async () => {
      const token = mintToken({ sub: "alice", ttlSecs: TTL, peerMetadata: { username: "Alice" } });
      const exp = JSON.parse(Buffer.from(token.split(".")[1], "base64url")).exp;
      minted.push(exp);
      log(`tokenProvider call #${minted.length}: exp=${exp}`);
      return token;
    },
  });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: { username: "Bob" } }) });

  const w0 = await connect(alice);
  assert.equal(w0.peerId, "alice");
  assert.equal(w0.expiresAt, minted[0], "welcome.expiresAt echoes the JWT exp");
  await connect(bob);
  await alice.subscribe(CH, { includeSenderMetadata: true });
  await bob.subscribe(CH);
  await bob.publish(CH, { seq: 0 });
  const m0 = await alice.rec.waitFor("message", (m) => m.data?.seq === 0, "message before any reconnect");
  assert.deepEqual(m0.fromMetadata, { username: "Bob" });

  for (let cycle = 1; cycle <= CYCLES; cycle++) {
    const exp = minted[minted.length - 1];
    const dropIdx = alice.rec.events.length;
    const drop = await alice.rec.until(
      () => alice.rec.since(dropIdx - 1, "disconnected")[0],
      `cycle ${cycle}: server close before exp ${exp}`,
      (TTL + 3) * 1000,
    );
    const dropAt = alice.rec.timeOf(drop);
    log(`cycle ${cycle}: dropped ${dropAt - exp * 1000} ms relative to exp`, JSON.stringify(drop));
    assert.equal(drop.code, 4002, "server-initiated close for token expiry is 4002");
    assert.equal(drop.willReconnect, true, "4002 is retryable");
    // ~250 ms before exp; the window allows for a loaded machine.
    assert.ok(dropAt <= exp * 1000 + 500, `closed ${dropAt - exp * 1000} ms after exp; expected ~250 ms before`);
    assert.ok(dropAt >= exp * 1000 - 1500, `closed ${exp * 1000 - dropAt} ms before exp; expected ~250 ms`);

    const welcome = await alice.rec.until(
      () => alice.rec.since(dropIdx - 1, "connected", (c) => c.isReconnect)[0],
      `cycle ${cycle}: reconnect`,
      10_000,
    );
    assert.equal(welcome.peerId, "alice", "same peerId after reconnect (JWT sub)");
    assert.equal(welcome.expiresAt, minted[minted.length - 1], "reconnect used a freshly minted token");
    assert.ok(welcome.expiresAt > exp, "fresh token expires later");
    const reIdx = alice.rec.indexOf("connected", (c) => c === welcome);

    // The replayed subscribe is answered with a full snapshot (bob is still there).
    const snap = await alice.rec.until(
      () => alice.rec.since(reIdx, "presence", (p) => p.channel === CH)[0],
      `cycle ${cycle}: snapshot after the automatic resubscribe`,
    );
    assert.deepEqual(snap.joined.map((j) => j.peerId), ["bob"]);
    assert.deepEqual(snap.joined[0].metadata, { username: "Bob" });

    // Published after the reconnect: still delivered, still with sender metadata.
    await bob.publish(CH, { seq: cycle });
    const m = await alice.rec.waitFor("message", (m) => m.data?.seq === cycle, `cycle ${cycle}: message after reconnect`);
    assert.equal(m.from, "bob");
    assert.deepEqual(m.fromMetadata, { username: "Bob" }, "includeSenderMetadata survived the replay");

    // And alice can publish again; bob sees her continue under the same peerId.
    await alice.publish(CH, { from_alice: cycle });
    const b = await bob.rec.waitFor("message", (m) => m.data?.from_alice === cycle, `cycle ${cycle}: bob hears alice`);
    assert.equal(b.from, "alice");
    await bob.rec.until(() => roster(bob.rec, CH).has("alice"), `cycle ${cycle}: alice in bob's roster`, 5000);
  }

  assert.ok(minted.length >= CYCLES + 1, `tokenProvider called on every (re)connect: ${minted.length}`);
  // Each gap shows up to bob as left followed by joined (or not at all); never a dangling left.
  const aliceChanges = bob.rec
    .all("presence", (p) => p.channel === CH)
    .flatMap((p) => [...p.joined.map((j) => `+${j.peerId}`), ...p.left.map((l) => `-${l.peerId}`)])
    .filter((s) => s.endsWith("alice"));
  log("bob saw alice's presence as", aliceChanges.join(" "));
  assert.ok(roster(bob.rec, CH).has("alice"));
  assert.equal(bob.rec.all("disconnected").length, 0, "bob's long-lived connection was never dropped");

  await alice.close();
  await bob.close();
});
