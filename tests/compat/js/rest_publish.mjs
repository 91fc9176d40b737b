// REST publish and peers list (JS), spec §13.4 and §13.5, as seen by SDK subscribers.
//  - `POST /v1/channels/news%2Flive/publish` (URL-encoded id) reaches every subscriber as a normal
//    `message` from "system" (the default `from`); the REST `peerMetadata` becomes fromMetadata for
//    the subscriber that opted in with includeSenderMetadata, and for no one else.
//  - An explicit `from` is stamped as the sender; without peerMetadata there is no fromMetadata.
//  - The unencoded path form (`/v1/channels/news/live/publish`) names the same channel.
//  - Answers are `{channel, delivered}` with delivered = the number of subscribed connections.
//  - `GET /v1/channels/news%2Flive/peers` lists the SDK peers with their peerMetadata (no
//    `metadata` key for a peer without it), and drops a peer once it has left.
import { assert, connect, makeClient, mintToken, restOk, scenario, sleep } from "./helpers.mjs";

const CH = "news/live";
const ENC = encodeURIComponent(CH);
const meta = (name) => ({ username: name, avatarUrl: `https://cdn.example.com/${name}.png` });
const SYSTEM_META = { kind: "moderation-bot", displayName: "System" };

scenario("js rest publish", async () => {
  assert.equal(ENC, "news%2Flive");
  const alice = makeClient("alice", { token: mintToken({ sub: "alice", peerMetadata: meta("Alice") }) });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: meta("Bob") }) });
  const carol = makeClient("carol", { token: mintToken({ sub: "carol" }) }); // no peerMetadata
  for (const c of [alice, bob, carol]) await connect(c);
  await alice.subscribe(CH, { includeSenderMetadata: true });
  await bob.subscribe(CH);
  await carol.subscribe(CH);
  await alice.rec.until(
    () => alice.rec.all("presence", (p) => p.channel === CH).flatMap((p) => p.joined).length >= 2,
    "alice sees bob and carol subscribed",
  );

  // 1. Default sender "system", REST peerMetadata → fromMetadata for the opted-in alice only.
  const news1 = { headline: "Herald ships", n: 1, nested: { ok: true, list: [1, "two", null] } };
  const r1 = await restOk("POST", `/v1/channels/${ENC}/publish`, { data: news1, peerMetadata: SYSTEM_META });
  assert.deepEqual(r1, { channel: CH, delivered: 3 }, "publish answer");
  const a1 = await alice.rec.waitFor("message", (m) => m.data?.n === 1, "alice gets REST publish #1");
  assert.deepEqual(a1, { channel: CH, from: "system", data: news1, fromMetadata: SYSTEM_META });
  for (const c of [bob, carol]) {
    const m = await c.rec.waitFor("message", (m) => m.data?.n === 1, `${c.rec.name} gets REST publish #1`);
    assert.equal(m.channel, CH);
    assert.equal(m.from, "system");
    assert.deepEqual(m.data, news1);
    assert.equal(m.fromMetadata, undefined, `${c.rec.name} did not opt in: ${JSON.stringify(m)}`);
  }

  // 2. Explicit `from`, no peerMetadata: no fromMetadata even for the opted-in subscriber.
  const r2 = await restOk("POST", `/v1/channels/${ENC}/publish`, { data: { n: 2 }, from: "ops-bot" });
  assert.deepEqual(r2, { channel: CH, delivered: 3 });
  const a2 = await alice.rec.waitFor("message", (m) => m.data?.n === 2, "alice gets REST publish #2");
  assert.equal(a2.from, "ops-bot");
  assert.equal(a2.fromMetadata, undefined, `no REST peerMetadata, so no fromMetadata: ${JSON.stringify(a2)}`);

  // 3. The unencoded path names the same channel; `data` may be any JSON (here an array).
  const r3 = await restOk("POST", `/v1/channels/${CH}/publish`, { data: [3, "three"] });
  assert.deepEqual(r3, { channel: CH, delivered: 3 });
  const a3 = await alice.rec.waitFor("message", (m) => Array.isArray(m.data), "alice gets REST publish #3");
  assert.deepEqual(a3, { channel: CH, from: "system", data: [3, "three"] });

  // Each subscriber got exactly the three REST messages, in order.
  await sleep(200);
  for (const c of [alice, bob, carol]) {
    const got = c.rec.all("message").map((m) => JSON.stringify(m.data));
    assert.deepEqual(got, [JSON.stringify(news1), JSON.stringify({ n: 2 }), JSON.stringify([3, "three"])], `${c.rec.name}'s messages`);
  }

  // 4. The peers list: both path forms, metadata only where present.
  const want = [
    { peerId: "alice", metadata: meta("Alice") },
    { peerId: "bob", metadata: meta("Bob") },
    { peerId: "carol" },
  ];
  const sortPeers = (peers) => [...peers].sort((x, y) => x.peerId.localeCompare(y.peerId));
  for (const path of [`/v1/channels/${ENC}/peers`, `/v1/channels/${CH}/peers`]) {
    const body = await restOk("GET", path);
    assert.equal(body.channel, CH, `${path}: channel`);
    assert.deepEqual(sortPeers(body.peers), want, `${path}: peers`);
  }

  // 5. Bob leaves; once alice has seen it, the REST list no longer has him.
  await bob.close();
  await alice.rec.waitFor("presence", (p) => p.channel === CH && p.left.some((l) => l.peerId === "bob"), "alice sees bob leave");
  const after = await restOk("GET", `/v1/channels/${ENC}/peers`);
  assert.deepEqual(sortPeers(after.peers), [want[0], want[2]], "peers after bob left");
  const r4 = await restOk("POST", `/v1/channels/${ENC}/publish`, { data: { n: 4 } });
  assert.deepEqual(r4, { channel: CH, delivered: 2 }, "delivered counts the remaining connections");

  // 6. A channel nobody is subscribed to: delivered 0, an empty peers list.
  assert.deepEqual(await restOk("POST", `/v1/channels/${encodeURIComponent("news/empty")}/publish`, { data: 0 }), {
    channel: "news/empty",
    delivered: 0,
  });
  assert.deepEqual(await restOk("GET", `/v1/channels/${encodeURIComponent("news/empty")}/peers`), {
    channel: "news/empty",
    peers: [],
  });

  for (const c of [alice, carol]) {
    assert.equal(c.rec.all("server-error").length, 0);
    assert.equal(c.rec.all("disconnected").length, 0);
  }
  await alice.close();
  await carol.close();
});
