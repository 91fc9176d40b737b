// Remote control of headless Chromium pages running the official MeteredPeer, for the Rust
// SDK's WebRTC test (crates/client/tests/rtc_browser/), which is the judge: this script only
// starts Herald (HERALD_BIN), Chromium and the page server, then runs the test's commands.
//
// Protocol: one JSON command per line on stdin, `{"id":N,"cmd":…}`; every reply is one stdout
// line starting with "@@ " and holding `{"id":N,"ok":true,"result":…}` or `{"id":N,"ok":false,
// "error":"…"}`. The first such line (id 0) says where Herald listens. Other stdout lines are logs.
//
// Commands: open {name, room, camera} -> peer id; eval {name, expr} -> the expression's value in
// that page (awaited); rejoin {name, room, camera} -> new peer id; close {name}.
import fs from "node:fs";
import http from "node:http";
import path from "node:path";
import readline from "node:readline";
import { fileURLToPath } from "node:url";
import { HERE, Herald, MEDIA_FLAGS, launchChromium, log, requirePrerequisites, watchPage } from "./lib/harness.mjs";

function reply(msg) {
  process.stdout.write(`@@ ${JSON.stringify(msg)}\n`);
}

async function startPageServer() {
  const sdkPath = fileURLToPath(import.meta.resolve("@metered-ca/realtime"));
  const files = {
    "/": [path.join(HERE, "rtc-page", "index.html"), "text/html; charset=utf-8"],
    "/peer.js": [path.join(HERE, "rtc-page", "peer.js"), "text/javascript; charset=utf-8"],
    "/sdk/index.mjs": [sdkPath, "text/javascript; charset=utf-8"],
  };
  const server = http.createServer((req, res) => {
    const entry = files[new URL(req.url, "http://x").pathname];
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

await requirePrerequisites();
const herald = new Herald({ name: "herald-rtc" });
await herald.start();
const pages = await startPageServer();
const browser = await launchChromium(MEDIA_FLAGS);
const open = new Map();

async function join(entry, { room, camera }) {
  return entry.page.evaluate((args) => window.startCall(args), { url: herald.wsOrigin, room, name: entry.name, camera: !!camera });
}

const commands = {
  async open({ name, room, camera }) {
    const context = await browser.newContext({ permissions: ["camera", "microphone"] });
    const page = await context.newPage();
    watchPage(page, name);
    const entry = { name, context, page };
    await page.exposeFunction("heraldToken", async () => {
      const res = await herald.devToken({ username: name });
      if (res.status !== 200) throw new Error(`dev token: ${res.status}`);
      return res.body.token;
    });
    await page.goto(`${pages.origin}/`);
    open.set(name, entry);
    return join(entry, { room, camera });
  },
  async eval({ name, expr }) {
    return open.get(name).page.evaluate(expr);
  },
  async rejoin({ name, room, camera }) {
    const entry = open.get(name);
    await entry.page.evaluate(() => window.leaveCall());
    return join(entry, { room, camera });
  },
  async close({ name }) {
    const entry = open.get(name);
    open.delete(name);
    await entry.page.evaluate(() => window.leaveCall()).catch(() => {});
    await entry.context.close();
    return true;
  },
};

reply({ id: 0, ok: true, result: { ws: herald.wsOrigin, http: herald.origin } });

async function shutdown() {
  for (const entry of open.values()) log(`${entry.name} events:\n  ${(await entry.page.evaluate(() => window.rtc.events).catch(() => [])).join("\n  ")}`);
  await browser.close().catch(() => {});
  pages.server.close();
  await herald.stop();
  process.exit(0);
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", async (line) => {
  let msg;
  try {
    msg = JSON.parse(line);
  } catch {
    return;
  }
  try {
    const run = commands[msg.cmd];
    if (!run) throw new Error(`unknown command ${msg.cmd}`);
    reply({ id: msg.id, ok: true, result: (await run(msg)) ?? null });
  } catch (e) {
    reply({ id: msg.id, ok: false, error: String(e?.stack ?? e) });
  }
});
lines.on("close", shutdown);
