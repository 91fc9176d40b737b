// Channel history in the demo app at `/`, in headless Chromium, against a real `herald serve`
// in dev mode (every channel keeps history, rewind 50).
//
// A bot publishes 60 chat messages into the lobby over a raw WebSocket before anyone opens the
// app. Alice then signs in: the lobby shows the last 50 (the rewind) and a "Load older"
// control, which pages back through REST with the app's own token to the first 10. She writes,
// reloads, and her message and the bot's are there again. Carol's page goes through a TCP
// proxy that is cut (no close frame) while the bot publishes: her re-subscribe carries `since`
// and she gets exactly the missed messages (no rewind, nothing twice).
import assert from "node:assert/strict";
import crypto from "node:crypto";
import { after, before, describe, test } from "node:test";
import net from "node:net";
import WebSocket from "ws";
import { Herald, launchChromium, log, requirePrerequisites, screenshotPath, until, watchPage } from "./lib/harness.mjs";

const OLD = 60;
const REWIND = 50; // dev mode's

let herald;
let browser;
let alice;

/** The bot's token, signed with the dev keys as any backend would sign its users'. */
function botToken() {
  const keys = herald.devKeys();
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT", kid: keys.secretKeyId })}.${b64({
    sub: "history-bot",
    exp: Math.floor(Date.now() / 1000) + 600,
    peerMetadata: { username: "Bot", color: "#059669" },
  })}`;
  return `${body}.${crypto.createHmac("sha256", keys.secret).update(body).digest("base64url")}`;
}

/**
 * A TCP proxy to `port` whose connections can all be dropped at once, without a WebSocket close
 * frame (a network loss), and which refuses new ones until restored.
 */
async function cuttableProxy(port) {
  const open = new Set();
  let refusing = false;
  const server = net.createServer((client) => {
    if (refusing) return client.destroy();
    const upstream = net.connect(port, "127.0.0.1");
    const pair = [client, upstream];
    for (const s of pair) {
      open.add(s);
      s.on("error", () => {});
      s.on("close", () => {
        open.delete(s);
        for (const other of pair) other.destroy();
      });
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    port: server.address().port,
    cut() {
      refusing = true;
      for (const s of open) s.destroy();
    },
    restore() {
      refusing = false;
    },
    close() {
      server.close();
      for (const s of open) s.destroy();
    },
  };
}

/** Publishes `count` chat messages as the bot, numbered from `first + 1`. */
async function publishAsBot(count, first = 0) {
  const ws = new WebSocket(`${herald.wsOrigin}/v1?token=${botToken()}`);
  const frames = [];
  ws.on("message", (m) => frames.push(JSON.parse(m.toString())));
  await new Promise((resolve, reject) => {
    ws.once("open", resolve);
    ws.once("error", reject);
  });
  await until(() => frames.some((f) => f.type === "welcome"), { message: "bot welcome" });
  for (let n = first + 1; n <= first + count; n++) {
    const requestId = `p${n}`;
    ws.send(JSON.stringify({ type: "publish", channel: "demo/lobby", requestId, data: { kind: "chat", id: `bot-${n}`, text: `old message ${n}` } }));
    await until(() => frames.some((f) => f.requestId === requestId), { message: `ack of ${requestId}` });
    assert.equal(frames.find((f) => f.requestId === requestId).type, "ack");
  }
  ws.close();
}

/** The texts of the open conversation, top to bottom. */
const texts = (page) => page.locator("#messages li.msg .text").allTextContents();

describe("Demo app: room history", () => {
  before(async () => {
    await requirePrerequisites();
    herald = new Herald({ name: "herald-history" });
    await herald.start();
    browser = await launchChromium();
  });

  after(async () => {
    if (alice?.problems.length) log("alice page problems:", alice.problems);
    await browser?.close();
    await herald?.stop();
  });

  test("joining shows the room's recent history, and 'Load older' pages back with the app's token", async () => {
    await publishAsBot(OLD);
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    alice = { page, problems: watchPage(page, "alice"), sockets: [], history: [] };
    page.on("websocket", (ws) => alice.sockets.push(ws.url()));
    page.on("request", (req) => {
      if (req.url().includes("/messages?")) alice.history.push({ url: req.url(), auth: req.headers().authorization });
    });
    await page.goto(`${herald.origin}/`);
    await page.locator("#signin-name").fill("Alice");
    await page.locator("#signin-submit").click();
    await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 10_000 });

    const recent = Array.from({ length: REWIND }, (_, i) => `old message ${OLD - REWIND + 1 + i}`);
    await until(async () => (await texts(page)).length === REWIND, { message: "the rewind in the lobby" });
    assert.deepEqual(await texts(page), recent);
    assert.equal(await page.locator('#messages li.msg[data-from="history-bot"] .author').first().textContent(), "Bot");

    const loadOlder = page.locator("#load-older");
    await loadOlder.waitFor({ state: "visible" });
    await loadOlder.click();
    const all = Array.from({ length: OLD }, (_, i) => `old message ${i + 1}`);
    await until(async () => (await texts(page)).length === OLD, { message: "the older page" });
    assert.deepEqual(await texts(page), all);
    // Offset 1 reached: nothing older, the control goes away.
    await page.locator("#history-bar").waitFor({ state: "hidden" });

    assert.equal(alice.history.length, 1, JSON.stringify(alice.history));
    const request = alice.history[0];
    assert.match(request.url, /\/v1\/channels\/demo%2Flobby\/messages\?before=11&limit=50$/);
    const token = request.auth.replace(/^Bearer /, "");
    assert.ok(request.auth.startsWith("Bearer ey"), "a connect JWT");
    assert.ok(alice.sockets.some((u) => u.includes(`token=${token}`)), "the token of the app's own connection");
    await page.screenshot({ path: screenshotPath("history-loaded.png") });
  });

  test("a reload shows the earlier messages, our own included", async () => {
    const { page } = alice;
    await page.locator("#composer-input").fill("written before the reload");
    await page.locator("#composer-send").click();
    await until(async () => (await page.locator("#messages li.msg.mine.sent").count()) === 1, { message: "sent" });

    await page.reload();
    await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 10_000 });
    // The rewind is the last 50 messages of the lobby: the chat among them (Alice's typing
    // indicator went through the lobby too), as the server's own history lists them.
    const keys = herald.devKeys();
    const res = await fetch(`${herald.origin}/v1/channels/demo%2Flobby/messages?limit=${REWIND}`, {
      headers: { authorization: `Bearer ${keys.secretKeyId}:${keys.secret}` },
    });
    assert.equal(res.status, 200);
    const expected = (await res.json()).messages.filter((m) => m.data.kind === "chat").map((m) => m.data.text);
    assert.equal(expected.at(-1), "written before the reload");
    assert.equal(expected.at(-2), `old message ${OLD}`);
    assert.ok(expected.length >= REWIND - 3, `${expected.length} chat messages in the last ${REWIND}`);
    await until(async () => (await texts(page)).length === expected.length, { message: "the rewind after the reload" });
    assert.deepEqual(await texts(page), expected);
    const mine = page.locator("#messages li.msg.mine");
    assert.equal(await mine.count(), 1);
    assert.equal(await mine.locator(".text").textContent(), "written before the reload");
    assert.equal(await mine.locator(".author").textContent(), "Alice");
    await page.locator("#load-older").waitFor({ state: "visible" });
    await page.screenshot({ path: screenshotPath("history-reload.png") });
    assert.deepEqual(alice.problems, []);
  });
  test("a dropped connection resumes: only the missed messages arrive, once", async () => {
    const proxy = await cuttableProxy(herald.port);
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const problems = watchPage(page, "carol");
    const sent = [];
    const lobby = [];
    page.on("websocket", (ws) => {
      ws.on("framesent", (f) => sent.push(JSON.parse(f.payload)));
      ws.on("framereceived", (f) => {
        const frame = JSON.parse(f.payload);
        if (frame.type === "message" && frame.channel === "demo/lobby") lobby.push(frame);
      });
    });
    try {
      await page.goto(`http://127.0.0.1:${proxy.port}/`);
      await page.locator("#signin-name").fill("Carol");
      await page.locator("#signin-submit").click();
      await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 10_000 });
      await until(() => lobby.length === REWIND, { message: "the rewind in the lobby" });
      const last = lobby.at(-1);

      proxy.cut();
      await page.waitForSelector('#conn-status[data-state="reconnecting"]', { timeout: 10_000 });
      await publishAsBot(5, 1000);
      const before = lobby.length;
      proxy.restore();
      await page.waitForSelector('#conn-status[data-state="connected"]', { timeout: 15_000 });
      await until(() => lobby.length === before + 5, { message: "the five missed messages" });
      const resubscribe = sent.filter((f) => f.type === "subscribe" && f.channel === "demo/lobby").at(-1);
      assert.deepEqual(resubscribe.since, { epoch: last.epoch, offset: last.offset });
      const missed = lobby.slice(before);
      assert.deepEqual(missed.map((m) => m.data.text), [1, 2, 3, 4, 5].map((n) => `old message ${1000 + n}`));
      assert.deepEqual(missed.map((m) => m.offset), [1, 2, 3, 4, 5].map((n) => last.offset + n), "the gap, with no rewind");
      await until(async () => (await texts(page)).at(-1) === "old message 1005", { message: "the missed messages shown" });
      // Nothing more arrives (a rewind or a repeat would).
      await new Promise((r) => setTimeout(r, 300));
      assert.equal(lobby.length, before + 5);
      await page.screenshot({ path: screenshotPath("history-resumed.png") });
      assert.deepEqual(problems, []);
    } finally {
      await context.close();
      proxy.close();
    }
  });
});
