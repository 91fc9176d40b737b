// The 4010 slow-backoff floor (JS), spec §7.1 and §7.2. Herald runs with the app's
// max_connections = 1 (set by crates/server/tests/sdk_compat.rs).
//
//  1. A connects (tokenProvider, first token exp = now + 3 s) and subscribes; Herald closes it
//     with 4002 about 250 ms before exp, and the SDK schedules a reconnect (~500 ms).
//  2. B takes the only slot before A's reconnect reaches Herald, so Herald refuses A's reconnect
//     with 4010 (a close after the upgrade, not an HTTP error).
//  3. B leaves at once. A must NOT come back on the normal curve (1 s, 2 s, …): after a 4010 the
//     SDK's next delay is raised to its 30 s floor. A's next attempt comes >= 30 s after the 4010,
//     is welcomed, replays the subscription and works (REST publish in, publish out).
//
// Making B win deterministically: A and B live in this one Node process, so no race is left to
// chance. B starts connecting when A's `disconnected` (4002) fires, and A's tokenProvider — which
// the SDK awaits at the start of every reconnect attempt, before it opens the socket — does not
// return A's next token until B has been welcomed. A's reconnect therefore always finds the slot
// taken. (B retries its own connect a few times: A's old session may still be releasing its slot
// when B first knocks, and Herald then rightly refuses B with 4010 too.)
//
// Jitter: the SDK applies its ±20 % jitter AFTER raising the delay to the 30 s floor, so with
// the default options the post-4010 delay is anywhere in 24–36 s. A is created with the public
// option `reconnect: { jitterRatio: 0 }` so the floor is exact and ">= 30 s" is a sound assertion.
import { SignallingConnectError } from "@metered-ca/realtime";
import { adminConnections, assert, log, makeClient, mintToken, restOk, scenario, sleep } from "./helpers.mjs";

const CH = "quota/room";
const FLOOR_MS = 30_000;
/** Timer granularity: a Node timer may fire a millisecond early relative to Date.now(). */
const CLOCK_SLACK_MS = 20;

scenario(
  "js quota 4010 backoff",
  async () => {
    // --- B, the client that grabs the only slot -------------------------------------------
    let bob = null;
    let bobWelcomed;
    const bobReady = new Promise((resolve, reject) => {
      bobWelcomed = { resolve, reject };
    });
    const bobRefusals = [];
    async function bobGrabsTheSlot() {
      const deadline = Date.now() + 5000;
      for (let attempt = 1; ; attempt++) {
        const c = makeClient(`bob#${attempt}`, { token: mintToken({ sub: "bob" }) });
        try {
          await c.connect();
          bob = c;
          log(`bob welcomed on attempt ${attempt}`);
          bobWelcomed.resolve();
          return;
        } catch (e) {
          const code = e instanceof SignallingConnectError ? e.closeCode : null;
          bobRefusals.push(code);
          log(`bob attempt ${attempt} refused: ${e.name} closeCode=${code}`);
          if (code !== 4010 || Date.now() > deadline) {
            bobWelcomed.reject(new Error(`bob could not take the slot: ${e.name}: ${e.message} (closeCode ${code})`));
            return;
          }
          await sleep(50);
        }
      }
    }

    // --- A, the client under test ---------------------------------------------------------
    const calls = []; // Date.now() of every tokenProvider call = start of every connect attempt
    const alice = makeClient("alice", {
      reconnect: { jitterRatio: 0 },
      tokenProvider: async () => {
        calls.push(Date.now());
        const n = calls.length;
        log(`alice tokenProvider call #${n}`);
        if (n === 2) {
          // The reconnect after the 4002: hold it until B owns the slot (see the header).
          await bobReady;
          log("alice tokenProvider #2: bob holds the slot, releasing alice's reconnect");
        }
        // Only the first token is short-lived; the later ones must not expire during the test.
        return mintToken({ sub: "alice", ttlSecs: n === 1 ? 3 : 3600, peerMetadata: { username: "Alice" } });
      },
    });
    alice.on("disconnected", (d) => {
      if (d.code === 4002 && bob === null && bobRefusals.length === 0) void bobGrabsTheSlot();
    });

    await alice.connect();
    await alice.rec.waitFor("connected", () => true, "alice welcomed", 2000);
    await alice.subscribe(CH);
    await alice.rec.waitFor("presence", (p) => p.channel === CH, "alice's snapshot");
    assert.deepEqual((await adminConnections()).map((c) => c.peerId), ["alice"]);

    // 1. 4002 near the short token's exp.
    const expiry = await alice.rec.waitFor("disconnected", () => true, "alice: 4002", 6000);
    assert.equal(expiry.code, 4002, `first close: ${JSON.stringify(expiry)}`);
    assert.equal(expiry.willReconnect, true);

    // 2. B is welcomed; A's reconnect is refused with 4010.
    await bobReady;
    assert.deepEqual((await adminConnections()).map((c) => c.peerId), ["bob"], "bob holds the only slot");
    const refused = await alice.rec.waitFor("disconnected", (d) => d !== expiry, "alice: reconnect refused", 10_000);
    assert.equal(refused.code, 4010, `alice's reconnect while bob holds the slot: ${JSON.stringify(refused)}`);
    assert.equal(refused.willReconnect, true, "4010 is retryable");
    const refusedAt = alice.rec.timeOf(refused);
    assert.equal(calls.length, 2, "one reconnect attempt so far");
    assert.equal(alice.rec.all("connected").length, 1, "the refused attempt was not welcomed");

    // 3. B leaves right away; the slot is free, but A waits out the floor.
    await bob.close();
    log("bob left; the slot is free");
    await alice.rec.until(() => calls.length >= 3, "alice's next attempt", FLOOR_MS + 10_000);
    const gap = calls[2] - refusedAt;
    log(`alice's next attempt came ${gap} ms after the 4010`);
    assert.ok(gap >= FLOOR_MS - CLOCK_SLACK_MS, `alice retried ${gap} ms after the 4010; the SDK floor is ${FLOOR_MS} ms`);
    assert.ok(gap <= FLOOR_MS + 3000, `alice retried ${gap} ms after the 4010; expected right at the ${FLOOR_MS} ms floor`);
    const back = await alice.rec.waitFor("connected", (c) => c.isReconnect, "alice welcomed again", 5000);
    assert.equal(back.peerId, "alice");
    assert.ok(alice.rec.timeOf(back) - refusedAt >= FLOOR_MS - CLOCK_SLACK_MS);
    assert.equal(alice.state, "connected");
    assert.deepEqual(
      alice.rec.all("disconnected").map((d) => d.code),
      [4002, 4010],
      "no other drop or attempt between the 4010 and the welcome",
    );

    // ... and works: the subscription was replayed, REST publishes arrive, publish is acked.
    const reIdx = alice.rec.indexOf("connected", (c) => c === back);
    await alice.rec.until(
      () => alice.rec.since(reIdx, "presence", (p) => p.channel === CH)[0],
      "snapshot after the automatic resubscribe",
    );
    assert.deepEqual((await adminConnections()).map((c) => c.peerId), ["alice"]);
    const pub = await restOk("POST", `/v1/channels/${encodeURIComponent(CH)}/publish`, { data: { after: "4010" } });
    assert.deepEqual(pub, { channel: CH, delivered: 1 });
    const m = await alice.rec.waitFor("message", (m) => m.data?.after === "4010", "alice receives after the 4010");
    assert.equal(m.from, "system");
    await alice.publish(CH, { ok: true });
    log(`bob was refused ${bobRefusals.length} time(s) before taking the slot: ${JSON.stringify(bobRefusals)}`);
    await alice.close();
  },
  { timeoutMs: 70_000 },
);
