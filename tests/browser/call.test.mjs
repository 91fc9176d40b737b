// A WebRTC video call through Herald between two official MeteredPeers, in headless Chromium
// with its fake camera. The SDK (`@metered-ca/realtime`, installed from npm into
// tests/browser/node_modules) is served unmodified to a small test page by this harness; Herald
// only carries the signalling (SDP and ICE over send/direct, spec §17).
//
// Asserted: each side gets the other's remote stream (and the video plays), the connection
// reaches "connected" over host candidates on loopback, and a data channel message crosses both
// ways.
import assert from "node:assert/strict";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, describe, test } from "node:test";
import {
  HERE,
  Herald,
  IN_NETNS,
  MEDIA_FLAGS,
  launchChromium,
  log,
  requirePrerequisites,
  screenshotPath,
  until,
  watchPage,
} from "./lib/harness.mjs";

const ROOM = "calls/room-1";

/** Serves the test page and the SDK's browser build (its ES module) on 127.0.0.1. */
async function startPageServer() {
  const sdkPath = fileURLToPath(import.meta.resolve("@metered-ca/realtime"));
  assert.ok(sdkPath.endsWith(".mjs"), `the SDK's import entry is its ES module (${sdkPath})`);
  const files = {
    "/": [path.join(HERE, "call-page", "index.html"), "text/html; charset=utf-8"],
    "/peer.js": [path.join(HERE, "call-page", "peer.js"), "text/javascript; charset=utf-8"],
    "/page.css": [path.join(HERE, "call-page", "page.css"), "text/css; charset=utf-8"],
    "/sdk/index.mjs": [sdkPath, "text/javascript; charset=utf-8"],
  };
  const server = http.createServer((req, res) => {
    const pathname = new URL(req.url, "http://x").pathname;
    const entry = files[pathname];
    if (pathname === "/favicon.ico") {
      res.writeHead(204).end();
      return;
    }
    if (!entry) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, { "content-type": entry[1], "cache-control": "no-store" });
    fs.createReadStream(entry[0]).pipe(res);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return { server, origin: `http://127.0.0.1:${server.address().port}` };
}

/** Addresses a host candidate may use here: loopback, or (outside a namespace) this machine's own. */
function localAddresses() {
  const set = new Set(["127.0.0.1", "::1"]);
  if (!IN_NETNS) {
    for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) set.add(a.address);
  }
  return set;
}

describe("video call between two official MeteredPeers through Herald", () => {
  let herald;
  let browser;
  let pages;
  const peers = [];

  before(async () => {
    await requirePrerequisites();
    herald = new Herald({ name: "herald-call" });
    await herald.start();
    pages = await startPageServer();
    browser = await launchChromium(MEDIA_FLAGS);
  });

  after(async () => {
    for (const p of peers) log(`${p.name} events:\n  ${(await p.page.evaluate(() => window.call.events).catch(() => [])).join("\n  ")}`);
    await browser?.close();
    pages?.server.close();
    await herald?.stop();
  });

  async function openPeer(name) {
    const context = await browser.newContext({ viewport: { width: 960, height: 600 }, permissions: ["camera", "microphone"] });
    const page = await context.newPage();
    const problems = watchPage(page, name);
    // The first token gets a fresh peer id; later ones keep it by proving it with the last token.
    let peerId = null;
    let proof = null;
    await page.exposeFunction("heraldToken", async () => {
      const res = await herald.devToken(peerId ? { username: name, peerId, previousToken: proof } : { username: name });
      assert.equal(res.status, 200, JSON.stringify(res.body));
      peerId = res.body.peerId;
      proof = res.body.token;
      return res.body.token;
    });
    await page.goto(`${pages.origin}/`);
    const joinedAs = await page.evaluate((args) => window.startCall(args), { url: herald.wsOrigin, room: ROOM, name });
    assert.equal(joinedAs, peerId);
    const peer = { name, peerId, context, page, problems };
    peers.push(peer);
    log(`${name} joined ${ROOM} as ${peerId}`);
    return peer;
  }

  const callState = (peer) => peer.page.evaluate(() => ({ ...window.call, events: undefined }));

  test("each side receives the other's stream over a loopback host-candidate connection", async () => {
    const alice = await openPeer("Alice");
    const bob = await openPeer("Bob");

    for (const [me, other] of [[alice, bob], [bob, alice]]) {
      const seen = await until(async () => {
        const s = await callState(me);
        return s.remoteId === other.peerId && s;
      }, { timeout: 10_000, message: `${me.name}: peer-joined ${other.peerId}` });
      assert.equal(seen.remoteMetadata?.username, other.name, "presence carries the peerMetadata");
    }

    for (const peer of [alice, bob]) {
      await until(async () => (await callState(peer)).remoteStreams >= 1, { timeout: 15_000, message: `${peer.name}: stream-added` });
      await peer.page.waitForFunction(
        () => {
          const v = document.getElementById("remote");
          return v.srcObject && v.srcObject.getVideoTracks().length > 0 && v.videoWidth > 0 && v.readyState >= 2;
        },
        null,
        { timeout: 15_000 },
      );
      await until(async () => (await callState(peer)).remoteState === "connected", { timeout: 15_000, message: `${peer.name}: remote state connected` });
      const pair = await until(() => peer.page.evaluate(() => window.selectedPair()), { timeout: 10_000, message: `${peer.name}: selected candidate pair` });
      log(`${peer.name}: selected pair ${JSON.stringify(pair)}`);
      assert.equal(pair.connectionState, "connected");
      assert.equal(pair.local.type, "host");
      assert.equal(pair.remote.type, "host");
      const allowed = localAddresses();
      assert.ok(allowed.has(pair.local.address), `local candidate ${pair.local.address} is on this machine`);
      assert.ok(allowed.has(pair.remote.address), `remote candidate ${pair.remote.address} is on this machine`);
      if (IN_NETNS) assert.equal(pair.local.address, "127.0.0.1", "in the suite's namespace only loopback exists");
    }

    const [a, b] = await Promise.all([alice, bob].map((p) => p.page.screenshot({ path: screenshotPath(`call-metered-peer-${p.name.toLowerCase()}.png`) })));
    assert.ok(a.length > 0 && b.length > 0);
  });

  test("a data channel message crosses both ways", async () => {
    const [alice, bob] = peers;
    await alice.page.evaluate(() => window.openDataChannel("hello over WebRTC from Alice"));
    await until(async () => (await callState(bob)).channelMessages.includes("hello over WebRTC from Alice"), {
      timeout: 15_000,
      message: "Bob receives Alice's data channel message",
    });
    await until(async () => (await callState(alice)).channelMessages.includes("hello back from Bob"), {
      timeout: 10_000,
      message: "Alice receives Bob's reply",
    });
  });

  test("no SDK errors and no page errors", async () => {
    for (const p of peers) {
      const s = await callState(p);
      assert.equal(s.error, null, `${p.name}: MeteredPeer error event`);
      assert.deepEqual(p.problems, [], `${p.name}: page errors`);
    }
    // One leaves: the other sees peer-left through presence (there is no hang-up signal, §17.1).
    const [alice, bob] = peers;
    await alice.page.evaluate(() => window.leaveCall());
    await until(async () => (await bob.page.evaluate(() => window.call.events)).includes(`peer-left ${alice.peerId}`), {
      message: "Bob sees Alice leave",
    });
  });
});
