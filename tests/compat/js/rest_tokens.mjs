// REST token minting (JS): the SDK's tokenProvider is a customer backend's token endpoint that
// calls Herald's `POST /v1/tokens` (spec §13.3) with Node's global fetch.
//  - The minted token is what the docs show: header {alg HS256, kid <sk_id>, typ JWT}, claims
//    sub/exp/iat plus the requested channels, permissions and peerMetadata, signed with the secret.
//  - The SDK connects with it: welcome.peerId is the requested peerId, welcome.expiresAt the REST
//    expiresAt, and another SDK client sees the peer's presence with exactly that peerMetadata.
//  - The requested channels/permissions narrow the connection (channel_not_authorized,
//    action_not_permitted).
//  - The first token is short-lived (expiresInSec 3): Herald closes with 4002, the SDK asks the
//    tokenProvider again, which fetches a new REST token with changed peerMetadata. The reconnect
//    comes within Herald's reconnect grace, so the other client sees no left/joined flap (and
//    keeps the metadata it was told); `GET /v1/channels/:id/peers`, like every later snapshot,
//    shows the refreshed metadata (spec §12: the most recently subscribed connection's).
import {
  assert,
  connect,
  decodeJwt,
  env,
  expectReject,
  log,
  makeClient,
  rest,
  restOk,
  restToken,
  roster,
  scenario,
  verifiesWithSecret,
} from "./helpers.mjs";

const CH = "lobby/rest-tokens";
const SHORT_TTL = 3;
const aliceMeta = (status) => ({
  userId: "u_alice_123",
  username: "Alice",
  avatarUrl: "https://cdn.example.com/alice.png",
  status,
});
const bobMeta = { userId: "u_bob_456", username: "Bob" };

/** Checks one `POST /v1/tokens` answer against its request. */
function checkMinted(label, { request, response, before, after }) {
  assert.deepEqual(Object.keys(response).sort(), ["expiresAt", "token"], `${label}: response keys`);
  const ttl = request.expiresInSec ?? 3600;
  assert.ok(Number.isInteger(response.expiresAt), `${label}: expiresAt is an integer: ${response.expiresAt}`);
  assert.ok(
    response.expiresAt >= before + ttl && response.expiresAt <= after + ttl,
    `${label}: expiresAt ${response.expiresAt} not within [${before + ttl}, ${after + ttl}] (unix seconds, now + ${ttl})`,
  );
  const { header, claims } = decodeJwt(response.token);
  assert.deepEqual(header, { alg: "HS256", kid: env.skId, typ: "JWT" }, `${label}: JOSE header`);
  assert.ok(verifiesWithSecret(response.token), `${label}: signed with the secret key`);
  assert.equal(claims.sub, request.peerId, `${label}: sub`);
  assert.equal(claims.exp, response.expiresAt, `${label}: exp == expiresAt`);
  assert.ok(Number.isInteger(claims.iat) && claims.iat >= before && claims.iat <= after, `${label}: iat ${claims.iat}`);
  for (const k of ["channels", "permissions", "peerMetadata", "metadata"]) {
    assert.deepEqual(claims[k], request[k], `${label}: claim ${k}`);
  }
}

scenario("js rest tokens", async () => {
  // The tokenProvider only fetches and records; the checks run in the scenario body, because an
  // assertion thrown inside a tokenProvider would be swallowed by the SDK as a provider failure.
  const minted = [];
  const alice = makeClient("alice", {
    tokenProvider: async () => {
      const first = minted.length === 0;
      const request = {
        peerId: "alice",
        channels: ["lobby/*"],
        permissions: ["subscribe", "publish", "presence"],
        expiresInSec: first ? SHORT_TTL : 600,
        peerMetadata: aliceMeta(first ? "online" : "away"),
      };
      const before = Math.floor(Date.now() / 1000);
      const response = await restToken(request);
      const after = Math.floor(Date.now() / 1000);
      minted.push({ request, response, before, after });
      log(`tokenProvider call #${minted.length}: expiresAt=${response.expiresAt}`);
      return response.token;
    },
  });

  // Bob's backend mints with only peerId + peerMetadata: default lifetime, no narrowing.
  const bobReq = { peerId: "bob", peerMetadata: bobMeta };
  const bobBefore = Math.floor(Date.now() / 1000);
  const bobTok = await restToken(bobReq);
  checkMinted("bob's token", { request: bobReq, response: bobTok, before: bobBefore, after: Math.floor(Date.now() / 1000) });
  const bob = makeClient("bob", { token: bobTok.token });

  const wb = await connect(bob);
  assert.equal(wb.peerId, "bob");
  assert.equal(wb.expiresAt, bobTok.expiresAt, "welcome.expiresAt is the REST expiresAt");
  await bob.subscribe(CH);
  await bob.rec.waitFor("presence", (p) => p.channel === CH, "bob's (empty) snapshot");

  const wa = await connect(alice);
  assert.equal(minted.length, 1, "one tokenProvider call for the first connect");
  checkMinted("alice's token #1", minted[0]);
  assert.equal(wa.peerId, "alice", "welcome.peerId is the REST peerId");
  assert.equal(wa.expiresAt, minted[0].response.expiresAt, "welcome.expiresAt is the REST expiresAt");

  await alice.subscribe(CH, { includeSenderMetadata: true });
  const seen = await bob.rec.waitFor(
    "presence",
    (p) => p.channel === CH && p.joined.some((j) => j.peerId === "alice"),
    "bob sees alice join",
  );
  assert.deepEqual(seen.joined, [{ peerId: "alice", metadata: aliceMeta("online") }], "presence carries the REST peerMetadata");
  const snap = await alice.rec.waitFor("presence", (p) => p.channel === CH, "alice's snapshot");
  assert.deepEqual(snap.joined, [{ peerId: "bob", metadata: bobMeta }]);

  await alice.publish(CH, { hello: "from a REST token" });
  const m = await bob.rec.waitFor("message", (m) => m.data?.hello === "from a REST token", "bob gets alice's publish");
  assert.equal(m.from, "alice");
  // Bob's token has no narrowing: the key's full action set applies, so he can `send`.
  await bob.send("alice", { dm: 1 });
  const d = await alice.rec.waitFor("direct", (d) => d.data?.dm === 1, "alice gets bob's direct");
  assert.deepEqual(d.fromMetadata, bobMeta, "direct carries bob's REST peerMetadata");

  // Token rotation through the REST endpoint: 4002 shortly before the short token's exp, then a
  // fresh REST token (new peerMetadata) on reconnect.
  const drop = await alice.rec.waitFor("disconnected", () => true, "alice: 4002 before her short token's exp", (SHORT_TTL + 3) * 1000);
  assert.equal(drop.code, 4002, `expected 4002, got ${JSON.stringify(drop)}`);
  assert.equal(drop.willReconnect, true);
  const re = await alice.rec.waitFor("connected", (c) => c.isReconnect, "alice reconnects with a new REST token", 10_000);
  assert.equal(minted.length, 2, "the SDK called the tokenProvider again");
  checkMinted("alice's token #2", minted[1]);
  assert.equal(re.peerId, "alice");
  assert.equal(re.expiresAt, minted[1].response.expiresAt, "reconnect used the second REST token");

  const reIdx = alice.rec.indexOf("connected", (c) => c === re);
  await alice.rec.until(
    () => alice.rec.since(reIdx, "presence", (p) => p.channel === CH)[0],
    "alice's snapshot after the automatic resubscribe",
  );
  assert.deepEqual(
    bob.rec.all("presence", (p) => p.left.some((l) => l.peerId === "alice")),
    [],
    "a reconnect within the grace shows bob no left",
  );
  assert.deepEqual(roster(bob.rec, CH).get("alice"), aliceMeta("online"), "bob keeps alice, unflapped");
  const peers = await restOk("GET", `/v1/channels/${encodeURIComponent(CH)}/peers`);
  const byId = Object.fromEntries(peers.peers.map((p) => [p.peerId, p]));
  assert.deepEqual(Object.keys(byId).sort(), ["alice", "bob"], `peers: ${JSON.stringify(peers)}`);
  assert.deepEqual(byId.alice, { peerId: "alice", metadata: aliceMeta("away") }, "REST peers list shows the new metadata");
  assert.deepEqual(byId.bob, { peerId: "bob", metadata: bobMeta });

  // The REST `channels` and `permissions` narrow what the connection may do (checked after the
  // rotation: the SDK replays even a rejected subscribe after every reconnect, spec §8.2).
  await expectReject(alice.subscribe("elsewhere/room"), "channel_not_authorized", "subscribe outside the token's channels");
  await expectReject(alice.send("bob", { hi: 1 }), "action_not_permitted", "send without the send permission");

  // A token endpoint call without credentials is refused; the SDK never sees such a token.
  const unauth = await rest("POST", "/v1/tokens", { peerId: "mallory" }, { auth: false });
  assert.equal(unauth.status, 401, `no Authorization: ${JSON.stringify(unauth)}`);
  assert.equal(unauth.body?.error, "unauthorized");

  assert.equal(alice.rec.all("token-provider-error").length, 0);
  assert.equal(bob.rec.all("disconnected").length, 0, "bob's connection was never dropped");
  await alice.close();
  await bob.close();
});
