// TLS: the official SDK over wss:// (its webSocketFactory builds `ws` sockets that trust the
// test CA), across a certificate reload. Alice connects under the first certificate; the script
// moves the staged second pair over the live files; once a new TLS connection is served the
// second certificate, Bob connects, and messages go both ways on Alice's untouched socket.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import tls from "node:tls";
import { caPem, connect, log, makeClient, mintToken, scenario, sleep } from "./helpers.mjs";

const need = (name) => {
  const v = process.env[name];
  assert.ok(v, `missing ${name}`);
  return v;
};
const live = { cert: need("HERALD_TLS_CERT"), key: need("HERALD_TLS_KEY") };
const next = { cert: need("HERALD_TLS_NEXT_CERT"), key: need("HERALD_TLS_NEXT_KEY") };
const ROOM = "tls/room";

/** The leaf (first PEM block) of a chain file, as DER. */
const leafOf = (path) => new crypto.X509Certificate(fs.readFileSync(path)).raw;

/** The leaf certificate a fresh TLS connection to Herald is served. */
function servedLeaf() {
  const { hostname, port } = new URL(process.env.HERALD_URL);
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: hostname, port: Number(port), ca: caPem }, () => {
      const raw = socket.getPeerX509Certificate().raw;
      socket.end();
      resolve(raw);
    });
    socket.on("error", reject);
  });
}

scenario("js tls reload", async () => {
  assert.ok(process.env.HERALD_URL.startsWith("wss://"), "a wss:// Herald");
  assert.ok((await servedLeaf()).equals(leafOf(live.cert)), "the first certificate is served");

  const alice = makeClient("alice", { token: mintToken({ sub: "alice" }) });
  await connect(alice);
  await alice.subscribe(ROOM);

  // A renewal as certbot or cert-manager does it: new files renamed over the live ones.
  fs.renameSync(next.key, live.key);
  fs.renameSync(next.cert, live.cert);
  const want = leafOf(live.cert);
  const deadline = Date.now() + 10_000;
  while (!(await servedLeaf()).equals(want)) {
    assert.ok(Date.now() < deadline, "the new certificate was not served within 10 s");
    await sleep(50);
  }
  log("new connections are served the second certificate");

  const bob = makeClient("bob", { token: mintToken({ sub: "bob" }) });
  await connect(bob);
  await bob.subscribe(ROOM);
  await alice.rec.waitFor("presence", (p) => p.joined.some((j) => j.peerId === "bob"), "alice sees bob join");
  await alice.publish(ROOM, { text: "from before the reload" });
  const atBob = await bob.rec.waitFor("message", (m) => m.channel === ROOM, "bob gets alice's message");
  assert.deepEqual(atBob.data, { text: "from before the reload" });
  await bob.publish(ROOM, { text: "from after the reload" });
  const atAlice = await alice.rec.waitFor("message", (m) => m.channel === ROOM, "alice gets bob's message");
  assert.deepEqual(atAlice.data, { text: "from after the reload" });
  // Alice's socket survived: she never dropped and reconnected.
  assert.equal(alice.rec.all("disconnected").length, 0, "alice never disconnected");
  assert.equal(alice.rec.all("connected").length, 1, "alice connected once");
  alice.close();
  bob.close();
});
