// Channel history through the official JS SDK (Herald runs with `chat/*` keeping history and
// rewinding 20 on subscribe; the SDK is unmodified and knows nothing of history).
//  1. A client that subscribes after 30 messages were published receives exactly the last 20, in
//     order, with their original sender and fromMetadata (it asked for it), then live messages,
//     none twice.
//  2. With a publisher running during the subscribe, the subscriber's messages are consecutive
//     from its first to the publisher's last: nothing lost or duplicated at the seam.
import { assert, connect, makeClient, mintToken, restOk, scenario } from "./helpers.mjs";

const META = { username: "Pub" };

scenario("js history rewind", async () => {
  const pub = makeClient("pub", { token: mintToken({ sub: "pub", peerMetadata: META }) });
  await connect(pub);

  // 1. Thirty before anyone listens, then a subscriber.
  const CH = "chat/rewind";
  for (let n = 1; n <= 30; n++) await pub.publish(CH, { n });
  const sub = makeClient("sub", { token: mintToken({ sub: "sub" }) });
  await connect(sub);
  await sub.subscribe(CH, { includeSenderMetadata: true });
  await sub.rec.until(() => sub.rec.all("message").length >= 20, "the rewound 20");
  for (let n = 31; n <= 35; n++) await pub.publish(CH, { n });
  // Messages of one sender arrive in order: n = 35 last means everything before it is in.
  await sub.rec.waitFor("message", (m) => m.data?.n === 35, "live message 35");
  const got = sub.rec.all("message");
  assert.deepEqual(
    got.map((m) => m.data.n),
    Array.from({ length: 25 }, (_, i) => 11 + i),
    "the last 20 in order, then 31..35 live, none twice",
  );
  for (const m of got) {
    assert.equal(m.channel, CH);
    assert.equal(m.from, "pub");
    assert.deepEqual(m.fromMetadata, META, JSON.stringify(m));
  }
  // What the SDK showed is what REST lists (the REST page carries the positions).
  const page = await restOk("GET", `/v1/channels/${encodeURIComponent(CH)}/messages?limit=5`);
  assert.deepEqual(page.messages.map((m) => m.data.n), [31, 32, 33, 34, 35]);
  assert.equal(page.hasMore, true);

  // 2. A publisher keeps going while a second subscriber joins.
  const SEAM = "chat/seam";
  const TOTAL = 400;
  let published = 0;
  let reached40;
  const forty = new Promise((resolve) => (reached40 = resolve));
  const running = (async () => {
    for (let n = 1; n <= TOTAL; n++) {
      await pub.publish(SEAM, { n });
      published = n;
      if (n === 40) reached40();
    }
  })();
  await forty;
  const late = makeClient("late", { token: mintToken({ sub: "late" }) });
  await connect(late);
  await late.subscribe(SEAM);
  const publishedAtAck = published;
  await running;
  await late.rec.waitFor("message", (m) => m.data?.n === TOTAL, "the last live message");
  const seen = late.rec.all("message").map((m) => m.data.n);
  const first = seen[0];
  assert.deepEqual(
    seen,
    Array.from({ length: TOTAL - first + 1 }, (_, i) => first + i),
    "consecutive from the first to the last: no gap, no duplicate",
  );
  assert.ok(first >= 21, `at least 40 were published before the subscribe, rewind is 20: first ${first}`);
  assert.ok(publishedAtAck < TOTAL, `the publisher was still running at the subscribe (${publishedAtAck})`);

  for (const c of [pub, sub, late]) {
    assert.equal(c.rec.all("server-error").length, 0);
    assert.equal(c.rec.all("disconnected").length, 0);
  }
  await pub.close();
  await sub.close();
  await late.close();
});
