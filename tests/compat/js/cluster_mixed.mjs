// Official JS SDK clients on different Herald nodes of one Redis-backed cluster: presence with
// metadata, chat with sender metadata, and direct messages cross nodes exactly as on one node.
// HERALD_URL is node A, HERALD_URL_B is node B.
import { assert, connect, makeClient, mintToken, roster, scenario } from "./helpers.mjs";

const urlB = process.env.HERALD_URL_B;
const CH = "cluster/lobby";
const meta = (name) => ({ username: name, avatarUrl: `/avatars/${name}.png` });

scenario("js cluster mixed", async () => {
  assert.ok(urlB, "HERALD_URL_B is required");
  const ana = makeClient("ana", { token: mintToken({ sub: "ana", peerMetadata: meta("Ana") }) });
  const ben = makeClient("ben", { token: mintToken({ sub: "ben", peerMetadata: meta("Ben") }), url: urlB });
  const cy = makeClient("cy", { token: mintToken({ sub: "cy", peerMetadata: meta("Cy") }), url: urlB });
  await connect(ana);
  await connect(ben);
  await connect(cy);

  await ana.subscribe(CH, { includeSenderMetadata: true });
  await ana.rec.waitFor("presence", (p) => p.channel === CH, "ana snapshot");
  await ben.subscribe(CH, { includeSenderMetadata: true });
  const snapB = await ben.rec.waitFor("presence", (p) => p.channel === CH, "ben snapshot");
  assert.deepEqual(snapB.joined, [{ peerId: "ana", metadata: meta("Ana") }]);
  await ana.rec.waitFor("presence", (p) => p.joined.some((j) => j.peerId === "ben"), "ana sees ben (other node)");
  await cy.subscribe(CH);
  await cy.rec.waitFor("presence", (p) => p.channel === CH, "cy snapshot");
  await ana.rec.waitFor("presence", (p) => p.joined.some((j) => j.peerId === "cy"), "ana sees cy");
  assert.deepEqual([...roster(ana.rec, CH).keys()].sort(), ["ben", "cy"]);

  // Chat across nodes, with sender metadata only for those who asked for it.
  await ana.publish(CH, { text: "hi from node A" });
  const atBen = await ben.rec.waitFor("message", (m) => m.data?.text === "hi from node A", "ben gets ana's message");
  assert.equal(atBen.from, "ana");
  assert.deepEqual(atBen.fromMetadata, meta("Ana"));
  const atCy = await cy.rec.waitFor("message", (m) => m.data?.text === "hi from node A", "cy gets ana's message");
  assert.equal(atCy.fromMetadata, undefined);
  await ben.publish(CH, { text: "hi from node B" });
  const atAna = await ana.rec.waitFor("message", (m) => m.data?.text === "hi from node B", "ana gets ben's message");
  assert.deepEqual(atAna.fromMetadata, meta("Ben"));
  assert.equal(ana.rec.all("message", (m) => m.data?.text === "hi from node A").length, 0, "no echo");

  // Direct messages both ways across nodes, with fromMetadata.
  await ana.send("ben", { dm: "psst" });
  const dm = await ben.rec.waitFor("direct", (d) => d.data?.dm === "psst", "ben gets a dm");
  assert.equal(dm.from, "ana");
  assert.deepEqual(dm.fromMetadata, meta("Ana"));
  await cy.send("ana", { dm: "back" });
  await ana.rec.waitFor("direct", (d) => d.data?.dm === "back" && d.from === "cy", "ana gets cy's dm");

  // Leaving on node B shows on node A.
  await cy.close();
  await ana.rec.waitFor("presence", (p) => p.left.some((l) => l.peerId === "cy"), "ana sees cy leave");
  for (const c of [ana, ben]) await c.close();
});
