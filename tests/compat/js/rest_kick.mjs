// REST admin kick (JS SignallingClient), spec §13.6 and §7.2.
//  - `DELETE /v1/peers/alice` closes EVERY connection of alice (two SDK clients, like two tabs)
//    with 4020 and answers {peerId, closed: 2}.
//  - 4020 is terminal for the SDK: `disconnected {code: 4020, willReconnect: false}`, state
//    "closed", and no reconnect: the tokenProvider is not called again and Herald's admin API
//    (`GET /admin/api/connections`) shows no connection of alice for the next 3 s.
//  - The other subscriber sees alice leave exactly once (presence is reference-counted, §12).
//  - The peerId in the path is URL-encoded (`team%2Fcarol`); kicking an offline peer answers
//    `closed: 0` (not 404); bystanders are untouched.
import { adminConnections, assert, connect, log, makeClient, mintToken, restOk, scenario, sleep } from "./helpers.mjs";

const CH = "lobby";
const QUIET_MS = 3000;

/** A client whose tokenProvider counts its calls (each (re)connect attempt calls it once). */
function countedClient(name, sub) {
  const calls = { n: 0 };
  const client = makeClient(name, {
    tokenProvider: async () => {
      calls.n += 1;
      log(`${name} tokenProvider call #${calls.n}`);
      return mintToken({ sub, peerMetadata: { username: sub } });
    },
  });
  client.calls = calls;
  return client;
}

const peerIds = (conns) => conns.map((c) => c.peerId).sort();

/** Polls the admin API for `ms` and fails if any connection of `banned` shows up. */
async function expectNoConnection(banned, ms, label) {
  const until = Date.now() + ms;
  let polls = 0;
  while (Date.now() < until) {
    const conns = await adminConnections();
    polls += 1;
    const hits = conns.filter((c) => banned.includes(c.peerId));
    assert.deepEqual(hits, [], `${label}: a new connection appeared ${ms - (until - Date.now())} ms after the kick`);
    await sleep(250);
  }
  log(`${label}: no connection of ${banned.join(", ")} in ${polls} polls over ${ms} ms`);
}

scenario("js rest kick", async () => {
  const tab1 = countedClient("alice-tab1", "alice");
  const tab2 = countedClient("alice-tab2", "alice");
  const carol = countedClient("carol", "team/carol");
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: { username: "bob" } }) });
  for (const c of [bob, tab1, tab2, carol]) {
    await connect(c);
    await c.subscribe(CH);
  }
  await bob.rec.until(() => {
    const ids = bob.rec.all("presence", (p) => p.channel === CH).flatMap((p) => p.joined.map((j) => j.peerId));
    return ids.includes("alice") && ids.includes("team/carol");
  }, "bob sees alice and team/carol");
  assert.deepEqual(peerIds(await adminConnections()), ["alice", "alice", "bob", "team/carol"], "four live connections");

  // Kick both of alice's connections.
  const kicked = await restOk("DELETE", "/v1/peers/alice");
  assert.deepEqual(kicked, { peerId: "alice", closed: 2 }, "both of alice's connections were closed");
  for (const tab of [tab1, tab2]) {
    const d = await tab.rec.waitFor("disconnected", () => true, `${tab.rec.name}: disconnected`, 5000);
    assert.equal(d.code, 4020, `${tab.rec.name}: close code ${JSON.stringify(d)}`);
    assert.equal(d.willReconnect, false, `${tab.rec.name}: 4020 is terminal`);
    assert.equal(tab.state, "closed", `${tab.rec.name}: SDK state`);
  }
  await bob.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === "alice"), "bob sees alice leave");

  // Terminal means terminal: nothing reconnects.
  await expectNoConnection(["alice"], QUIET_MS, "after kicking alice");
  for (const tab of [tab1, tab2]) {
    assert.equal(tab.calls.n, 1, `${tab.rec.name}: tokenProvider not called again (no reconnect attempt)`);
    assert.equal(tab.rec.all("connected").length, 1, `${tab.rec.name}: no second welcome`);
    assert.equal(tab.rec.all("disconnected").length, 1, `${tab.rec.name}: exactly one disconnect`);
    assert.equal(tab.state, "closed");
  }
  const aliceLeft = bob.rec.all("presence").flatMap((p) => p.left).filter((l) => l.peerId === "alice");
  assert.equal(aliceLeft.length, 1, `bob saw alice leave once (two connections, one peer): ${JSON.stringify(aliceLeft)}`);

  // URL-encoded peerId with a slash.
  const kc = await restOk("DELETE", `/v1/peers/${encodeURIComponent("team/carol")}`);
  assert.deepEqual(kc, { peerId: "team/carol", closed: 1 });
  const dc = await carol.rec.waitFor("disconnected", () => true, "carol: disconnected", 5000);
  assert.equal(dc.code, 4020);
  assert.equal(dc.willReconnect, false);
  await bob.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === "team/carol"), "bob sees team/carol leave");

  // Offline peers: 200 with closed 0, including alice now.
  assert.deepEqual(await restOk("DELETE", "/v1/peers/nobody"), { peerId: "nobody", closed: 0 });
  assert.deepEqual(await restOk("DELETE", "/v1/peers/alice"), { peerId: "alice", closed: 0 });

  await expectNoConnection(["alice", "team/carol"], 1000, "after kicking team/carol");
  assert.equal(carol.calls.n, 1, "carol: no reconnect attempt");
  assert.equal(carol.state, "closed");

  // Bob was never touched and still works.
  assert.equal(bob.rec.all("disconnected").length, 0, "bob stayed connected");
  assert.deepEqual(peerIds(await adminConnections()), ["bob"], "only bob is left");
  const pub = await restOk("POST", `/v1/channels/${CH}/publish`, { data: { still: "here" } });
  assert.equal(pub.delivered, 1);
  await bob.rec.waitFor("message", (m) => m.data?.still === "here", "bob still receives");
  await bob.close();
});
