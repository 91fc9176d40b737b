// Scaffolding for the browser suites: a real Herald process (started, stopped and restarted on
// the same port), headless Debian Chromium through playwright-core, and small wait helpers.
//
// Environment (set by crates/cli/tests/browser.rs):
//   HERALD_BIN        the herald binary to run (required)
//   HERALD_CHROMIUM   the browser (default /usr/bin/chromium; never a downloaded one)
//   HERALD_ARTIFACTS  where screenshots and logs go (default artifacts/browser, git-ignored)
//   HERALD_NETNS      "1" when the suite runs in its own network namespace (loopback only)
import { spawn } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const HERE = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
export const ROOT = path.resolve(HERE, "../..");
export const ARTIFACTS = process.env.HERALD_ARTIFACTS || path.join(ROOT, "artifacts", "browser");
export const CHROMIUM = process.env.HERALD_CHROMIUM || "/usr/bin/chromium";
export const IN_NETNS = process.env.HERALD_NETNS === "1";

/** Flags for Debian's Chromium in this sandbox: no network chatter, no GPU, no sandbox (root). */
export const CHROMIUM_FLAGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--disable-dev-shm-usage",
  "--autoplay-policy=no-user-gesture-required",
];

/** Fake camera and microphone, granted without a prompt; ICE on loopback, real host addresses. */
export const MEDIA_FLAGS = [
  "--use-fake-device-for-media-stream",
  "--use-fake-ui-for-media-stream",
  "--allow-loopback-in-peer-connection",
  "--disable-features=WebRtcHideLocalIpsWithMdns",
];

const t0 = Date.now();
export function log(...args) {
  console.log(`[${String(Date.now() - t0).padStart(6)}ms]`, ...args);
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Fails with a clear message when something the suite needs is missing. */
export async function requirePrerequisites() {
  const problems = [];
  const bin = process.env.HERALD_BIN;
  if (!bin || !fs.existsSync(bin)) problems.push(`HERALD_BIN (${bin ?? "unset"}) is not a herald binary; run through cargo test -p herald --test browser`);
  if (!fs.existsSync(CHROMIUM)) problems.push(`${CHROMIUM} is missing: install Debian's chromium package (bash tests/browser/install.sh does)`);
  try {
    await import("playwright-core");
  } catch {
    problems.push("playwright-core is not installed in tests/browser/node_modules: run bash tests/browser/install.sh");
  }
  if (problems.length) throw new Error(`browser suite prerequisites:\n  - ${problems.join("\n  - ")}`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
}

export async function launchChromium(extraFlags = []) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...CHROMIUM_FLAGS, ...extraFlags],
    timeout: 30_000,
  });
}

/** A port that is free right now on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

/** One `herald serve` process on a fixed port, restartable. */
export class Herald {
  /**
   * @param {object} opts
   * @param {string} opts.name    used for the log file
   * @param {string} [opts.config] TOML text; without it Herald runs in dev mode
   */
  constructor({ name, config } = {}) {
    this.name = name ?? "herald";
    this.dir = fs.mkdtempSync(path.join(os.tmpdir(), `herald-browser-${this.name}-`));
    this.configText = config ?? null;
    this.port = 0;
    this.child = null;
    this.starts = 0;
    this.logPath = path.join(ARTIFACTS, `${this.name}.log`);
    fs.writeFileSync(this.logPath, "");
  }

  get origin() {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsOrigin() {
    return `ws://127.0.0.1:${this.port}`;
  }

  /** The dev-mode keys (secret key id and secret), read from the file Herald wrote. */
  devKeys() {
    return JSON.parse(fs.readFileSync(path.join(this.dir, "dev-keys.json"), "utf8"));
  }

  async start() {
    if (!this.port) this.port = await freePort();
    const args = ["serve", "--listen", `127.0.0.1:${this.port}`, "--dev-keys", path.join(this.dir, "dev-keys.json")];
    if (this.configText !== null) {
      const file = path.join(this.dir, "herald.toml");
      fs.writeFileSync(file, this.configText);
      args.push("--config", file);
    }
    this.starts += 1;
    fs.appendFileSync(this.logPath, `\n===== start #${this.starts}: herald ${args.join(" ")}\n`);
    const out = fs.openSync(this.logPath, "a");
    const env = { ...process.env, HERALD_LOG_LEVEL: process.env.HERALD_LOG_LEVEL || "info" };
    delete env.HERALD_CONFIG;
    delete env.HERALD_LISTEN;
    const child = spawn(process.env.HERALD_BIN, args, { cwd: this.dir, env, stdio: ["ignore", out, out] });
    fs.closeSync(out);
    this.child = child;
    running.add(child);
    child.on("exit", () => running.delete(child));
    const deadline = Date.now() + 20_000;
    for (;;) {
      if (child.exitCode !== null) throw new Error(`herald exited with ${child.exitCode}; see ${this.logPath}`);
      try {
        const res = await fetch(`${this.origin}/healthz`);
        if (res.ok) break;
      } catch {
        // not listening yet
      }
      if (Date.now() > deadline) throw new Error(`herald did not answer /healthz within 20 s; see ${this.logPath}`);
      await sleep(50);
    }
    log(`${this.name}: listening on ${this.origin} (start #${this.starts})`);
  }

  /** SIGTERM (graceful: going_away, then close 1001) and wait for the exit. */
  async stop() {
    const child = this.child;
    if (!child || child.exitCode !== null) return;
    const exited = new Promise((resolve) => child.once("exit", resolve));
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 15_000);
    const code = await exited;
    clearTimeout(timer);
    this.child = null;
    log(`${this.name}: stopped (exit ${code})`);
  }

  async restart() {
    await this.stop();
    await this.start();
  }

  /** POST /dev/token, as the app does. */
  async devToken(body) {
    const res = await fetch(`${this.origin}/dev/token`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    return { status: res.status, body: await res.json() };
  }
}

/** Polls `fn` (sync or async) until it returns a truthy value. */
export async function until(fn, { timeout = 10_000, interval = 25, message = "condition" } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeout} ms waiting for ${message} (last: ${last})`);
    await sleep(interval);
  }
}

/** Records page errors and console errors so a test can assert there were none. */
export function watchPage(page, name) {
  const problems = [];
  page.on("pageerror", (err) => {
    problems.push(`pageerror: ${err.message}`);
    log(`${name} pageerror:`, err.message);
  });
  page.on("console", (msg) => {
    if (msg.type() === "error" || msg.type() === "warning") log(`${name} console.${msg.type()}:`, msg.text());
  });
  return problems;
}

export function screenshotPath(name) {
  return path.join(ARTIFACTS, name);
}
