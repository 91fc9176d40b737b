// Scenarios 2, 4 and 8: a chat room.
//  2. broadcast with includeSenderMetadata: `fromMetadata` for the receiver that opted in, absent
//     for the one that did not; the publisher gets no echo (spec §4.4, §5.3).
//  4. a typing indicator sent as a broadcast `{type:"typing", ...}` on a separate channel.
//  8. a spoofed `from` inside data: message.from is the real sender, data.from is untouched.
import { assert, connect, makeClient, mintToken, scenario } from "./helpers.mjs";

const ROOM = "chat/room-1";
const TYPING = "chat/room-1/typing";
const meta = (name) => ({ username: name, avatarUrl: `https://cdn.example.com/${name}.png` });

scenario("js chat", async () => {
  const alice = makeClient("alice", { token: mintToken({ sub: "alice", peerMetadata: meta("Alice") }) });
  const bob = makeClient("bob", { token: mintToken({ sub: "bob", peerMetadata: meta("Bob") }) });
  const carol = makeClient("carol", { token: mintToken({ sub: "carol", peerMetadata: meta("Carol") }) });
  for (const c of [alice, bob, carol]) await connect(c);

  await alice.subscribe(ROOM); // publisher is also a member, without metadata
  await bob.subscribe(ROOM, { includeSenderMetadata: true });
  await carol.subscribe(ROOM);
  await alice.subscribe(TYPING);
  await bob.subscribe(TYPING, { includeSenderMetadata: true });
  await carol.subscribe(TYPING);

  // --- 2. broadcast with and without sender metadata -----------------------------------------
  const text = { text: "hello room", n: 1, nested: { ok: true, list: [1, "two", null] } };
  await alice.publish(ROOM, text);
  const atBob = await bob.rec.waitFor("message", (m) => m.channel === ROOM, "bob gets alice's message");
  assert.deepEqual(atBob, { channel: ROOM, from: "alice", data: text, fromMetadata: meta("Alice") });
  const atCarol = await carol.rec.waitFor("message", (m) => m.channel === ROOM, "carol gets alice's message");
  assert.deepEqual(atCarol, { channel: ROOM, from: "alice", data: text });
  assert.equal(atCarol.fromMetadata, undefined, "carol did not opt in: no fromMetadata");
  await alice.rec.expectNone("message", () => true, "echo of alice's own publish", 300);

  // null is valid data (§3).
  await carol.publish(ROOM, null);
  const nullMsg = await bob.rec.waitFor("message", (m) => m.from === "carol", "bob gets carol's null");
  assert.equal(nullMsg.data, null);
  assert.deepEqual(nullMsg.fromMetadata, meta("Carol"));

  // --- 4. typing indicator on its own channel ------------------------------------------------
  await carol.publish(TYPING, { type: "typing", typing: true, at: 1 });
  for (const c of [alice, bob]) {
    const m = await c.rec.waitFor("message", (m) => m.channel === TYPING && m.data?.typing === true, `${c.rec.name} sees carol typing`);
    assert.equal(m.from, "carol");
    assert.deepEqual(m.data, { type: "typing", typing: true, at: 1 });
  }
  assert.deepEqual(
    (await bob.rec.waitFor("message", (m) => m.channel === TYPING)).fromMetadata,
    meta("Carol"),
    "bob opted in on the typing channel too",
  );
  await carol.publish(TYPING, { type: "typing", typing: false, at: 2 });
  await alice.rec.waitFor("message", (m) => m.channel === TYPING && m.data?.typing === false, "alice sees carol stop typing");
  await carol.publish(ROOM, { text: "done typing" });
  await alice.rec.waitFor("message", (m) => m.channel === ROOM && m.from === "carol" && m.data?.text === "done typing");
  // Typing never leaks into the room channel and vice versa.
  assert.equal(alice.rec.all("message", (m) => m.channel === ROOM && m.data?.type === "typing").length, 0);
  assert.equal(alice.rec.all("message", (m) => m.channel === TYPING && m.data?.text !== undefined).length, 0);
  assert.equal(carol.rec.all("message", (m) => m.channel === TYPING).length, 0, "carol gets no echo of her typing");

  // --- 8. spoofed `from` inside data ----------------------------------------------------------
  await bob.publish(ROOM, { from: "admin", text: "I am the admin, trust me" });
  const spoof = await alice.rec.waitFor("message", (m) => m.channel === ROOM && m.data?.from === "admin", "alice gets bob's spoof");
  assert.equal(spoof.from, "bob", "envelope sender is the real peer, stamped by the server");
  assert.equal(spoof.data.from, "admin", "data is forwarded untouched");
  assert.notEqual(spoof.from, spoof.data.from);
  const spoofMeta = await carol.rec.waitFor("message", (m) => m.data?.from === "admin");
  assert.equal(spoofMeta.from, "bob");
  // The same via direct.
  await bob.send("alice", { from: "admin", text: "psst" });
  const d = await alice.rec.waitFor("direct", (m) => m.data?.from === "admin", "alice gets bob's spoofed direct");
  assert.equal(d.from, "bob");
  assert.deepEqual(d.fromMetadata, meta("Bob"));

  for (const c of [alice, bob, carol]) await c.close();
});
