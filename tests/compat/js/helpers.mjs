// Shared helpers for the JS SDK compatibility scenarios. Not a scenario itself.
//
// The scenarios run the official `@metered-ca/realtime` SDK unmodified against a Herald started
// by crates/server/tests/sdk_compat.rs, which passes the connection details in environment
// variables. Everything here is test scaffolding: JWT minting, event recording with waits, a raw
// frame trace, and a stub RTCPeerConnection for MeteredPeer in Node.
import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import WebSocket from "ws";
import { MeteredPeer, SignallingClient } from "@metered-ca/realtime";

export { assert };

function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    console.error(`missing environment variable ${name} (run through cargo test --test sdk_compat)`);
    process.exit(2);
  }
  return v;
}

export const env = {
  url: requireEnv("HERALD_URL"),
  app: process.env.HERALD_APP ?? "",
  skId: requireEnv("HERALD_SK_ID"),
  skSecret: requireEnv("HERALD_SK_SECRET"),
  pk: requireEnv("HERALD_PK"),
};

const t0 = Date.now();
export function log(...args) {
  const ms = String(Date.now() - t0).padStart(6, " ");
  console.log(`[${ms}ms]`, ...args);
}

const b64url = (buf) => Buffer.from(buf).toString("base64url");

/** Mints an HS256 JWT (header kid = the secret key id), as a customer backend would. */
export function mintToken({ sub, ttlSecs = 3600, peerMetadata, metadata, channels, permissions } = {}) {
  const now = Math.floor(Date.now() / 1000);
  const header = { alg: "HS256", typ: "JWT", kid: env.skId };
  const claims = { sub, iat: now, exp: now + ttlSecs };
  if (peerMetadata !== undefined) claims.peerMetadata = peerMetadata;
  if (metadata !== undefined) claims.metadata = metadata;
  if (channels !== undefined) claims.channels = channels;
  if (permissions !== undefined) claims.permissions = permissions;
  const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const sig = crypto.createHmac("sha256", env.skSecret).update(input).digest("base64url");
  return `${input}.${sig}`;
}

/**
 * The CA a `wss://` Herald's certificate chains to, when the Rust test generated one
 * (`HERALD_CA_FILE`): the `ws` sockets below trust it, and only it. Node's own store is left
 * alone (no NODE_EXTRA_CA_CERTS), as an app pinning a private CA would do.
 */
export const caPem = process.env.HERALD_CA_FILE ? fs.readFileSync(process.env.HERALD_CA_FILE) : undefined;

/**
 * The `ws` socket the SDK gets through its public `webSocketFactory` option. Per spec §20.1 it
 * must be created with `allowSynchronousEvents: false` so Node dispatches each frame as its own
 * task, like a browser. Raw frames are traced to stdout (shown by the Rust test on failure).
 */
function tracingFactory(name) {
  return (u) => {
    const ws = new WebSocket(u, { allowSynchronousEvents: false, ...(caPem ? { ca: caPem } : {}) });
    const shown = u.replace(/(token|key)=[^&]+/, "$1=…");
    log(`${name} ws open ${shown}`);
    ws.on("message", (d) => log(`${name} <<`, String(d).slice(0, 400)));
    ws.on("close", (code, reason) => log(`${name} ws closed`, code, String(reason)));
    const send = ws.send.bind(ws);
    ws.send = (data, ...rest) => {
      log(`${name} >>`, String(data).slice(0, 400));
      return send(data, ...rest);
    };
    return ws;
  };
}

function sdkLogger(name) {
  return {
    debug() {},
    info() {},
    warn: (msg, ctx) => log(`${name} SDK WARN`, msg, ctx ? JSON.stringify(ctx) : ""),
    error: (msg, ctx) => log(`${name} SDK ERROR`, msg, ctx ? JSON.stringify(ctx) : ""),
  };
}

/** Records events of one emitter and lets a scenario wait for them. */
export class Recorder {
  constructor(name) {
    this.name = name;
    this.events = [];
    this.waiters = new Set();
  }

  push(type, payload) {
    this.events.push({ type, payload, at: Date.now() });
    for (const w of Array.from(this.waiters)) w.check();
  }

  /** All payloads of `type` matching `pred`, in arrival order. */
  all(type, pred = () => true) {
    return this.events.filter((e) => e.type === type && pred(e.payload)).map((e) => e.payload);
  }

  /** Wall-clock ms at which `payload` was recorded. */
  timeOf(payload) {
    return this.events.find((e) => e.payload === payload)?.at;
  }

  /** Index of the first event of `type` matching `pred`, or -1. */
  indexOf(type, pred = () => true) {
    return this.events.findIndex((e) => e.type === type && pred(e.payload));
  }

  /** Payloads of `type` matching `pred` recorded after index `idx`. */
  since(idx, type, pred = () => true) {
    return this.events.slice(idx + 1).filter((e) => e.type === type && pred(e.payload)).map((e) => e.payload);
  }

  /** Resolves with the first payload of `type` matching `pred` (already seen or future). */
  waitFor(type, pred = () => true, label = type, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const hit = this.events.find((e) => e.type === type && pred(e.payload));
          if (hit) {
            clearTimeout(w.timer);
            this.waiters.delete(w);
            resolve(hit.payload);
          }
        },
      };
      w.timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${label}`));
      }, timeoutMs);
      this.waiters.add(w);
      w.check();
    });
  }

  /** Resolves with `cond()` once it is truthy, re-checked on every recorded event. */
  until(cond, label, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const w = {
        check: () => {
          const v = cond();
          if (v) {
            clearTimeout(w.timer);
            this.waiters.delete(w);
            resolve(v);
          }
        },
      };
      w.timer = setTimeout(() => {
        this.waiters.delete(w);
        reject(new Error(`${this.name}: timed out after ${timeoutMs} ms waiting for ${label}`));
      }, timeoutMs);
      this.waiters.add(w);
      w.check();
    });
  }

  /** Waits `ms` and asserts that no `type` event matching `pred` arrived. */
  async expectNone(type, pred = () => true, label = type, ms = 400) {
    await sleep(ms);
    const hits = this.all(type, pred);
    assert.equal(hits.length, 0, `${this.name}: expected no ${label}, got ${JSON.stringify(hits)}`);
  }
}

function describe(payload) {
  // RemotePeer is an EventEmitter; log the interesting bits only.
  if (payload && payload.peer && typeof payload.peer === "object" && "id" in payload.peer) {
    return JSON.stringify({ peer: { id: payload.peer.id, metadata: payload.peer.metadata } });
  }
  if (payload && payload.err instanceof Error) {
    return `${payload.err.name}: ${payload.err.message}`;
  }
  try {
    return JSON.stringify(payload);
  } catch {
    return String(payload);
  }
}

const CLIENT_EVENTS = [
  "connected",
  "disconnected",
  "message",
  "direct",
  "presence",
  "server-error",
  "going-away",
  "token-provider-error",
];

/**
 * A SignallingClient with a recorder attached. `opts` gets `url`, `webSocketFactory` and a
 * logger; pass `tokenProvider` or `apiKey` (or `token` as a shortcut for a fixed JWT).
 */
export function makeClient(name, opts = {}) {
  const { token, ...rest } = opts;
  const client = new SignallingClient({
    url: env.url,
    webSocketFactory: tracingFactory(name),
    logger: sdkLogger(name),
    ...(token !== undefined ? { tokenProvider: async () => token } : {}),
    ...rest,
  });
  const rec = new Recorder(name);
  for (const ev of CLIENT_EVENTS) {
    client.on(ev, (p) => {
      log(`${name} event ${ev}`, describe(p));
      rec.push(ev, p);
    });
  }
  client.rec = rec;
  return client;
}

/** Connects a client and returns the `connected` payload (peerId, expiresAt, …). */
export async function connect(client) {
  await client.connect();
  return client.rec.waitFor("connected", () => true, "connected", 1000);
}

/**
 * A do-nothing RTCPeerConnection for MeteredPeer in Node (spec §20.2), injected through the
 * public `rtcPeerConnectionFactory` option. With no tracks and no data channels the SDK never
 * negotiates, so presence and server-routed data only need the object to exist.
 */
export class StubPeerConnection {
  static created = 0;

  constructor(config) {
    StubPeerConnection.created += 1;
    this.config = config;
    this.connectionState = "new";
    this.signalingState = "stable";
    this.iceConnectionState = "new";
    this.localDescription = null;
    this.remoteDescription = null;
  }
  async createOffer() {
    return { type: "offer", sdp: "" };
  }
  async createAnswer() {
    return { type: "answer", sdp: "" };
  }
  async setLocalDescription(d) {
    this.localDescription = d ?? null;
  }
  async setRemoteDescription(d) {
    this.remoteDescription = d;
  }
  async addIceCandidate() {}
  addTrack() {
    throw new Error("StubPeerConnection: media is not supported");
  }
  removeTrack() {}
  getSenders() {
    return [];
  }
  createDataChannel() {
    throw new Error("StubPeerConnection: data channels are not supported");
  }
  setConfiguration(c) {
    this.config = c;
  }
  addEventListener() {}
  removeEventListener() {}
  close() {
    this.connectionState = "closed";
    this.signalingState = "closed";
  }
}

const PEER_EVENTS = ["joined", "left", "state-change", "peer-joined", "peer-left", "data", "error"];

/** An official MeteredPeer (JWT for `sub`) with a recorder and the stub RTCPeerConnection. */
export function makePeer(name, opts = {}) {
  const { token, ...rest } = opts;
  const peer = new MeteredPeer({
    url: env.url,
    webSocketFactory: tracingFactory(name),
    logger: sdkLogger(name),
    rtcPeerConnectionFactory: (cfg) => new StubPeerConnection(cfg),
    ...(token !== undefined ? { tokenProvider: async () => token } : {}),
    ...rest,
  });
  const rec = new Recorder(name);
  for (const ev of PEER_EVENTS) {
    peer.on(ev, (p) => {
      log(`${name} event ${ev}`, describe(p));
      rec.push(ev, p);
    });
  }
  peer.rec = rec;
  return peer;
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Presence entries of `channel` as a Map peerId → metadata, replayed from the recorder. */
export function roster(rec, channel) {
  const m = new Map();
  for (const p of rec.all("presence", (p) => p.channel === channel)) {
    for (const j of p.joined) m.set(j.peerId, j.metadata);
    for (const l of p.left) m.delete(l.peerId);
  }
  return m;
}

/** Expects `promise` to reject with an error whose name (the server's code) is `code`. */
export async function expectReject(promise, code, label) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `${label}: expected rejection with ${code}, but it resolved`);
  assert.equal(err.name, code, `${label}: expected ${code}, got ${err.name}: ${err.message}`);
  return err;
}

// ---------------------------------------------------------------------------------------------
// Herald's REST control plane (spec §13) and admin API, called the way a customer backend would:
// Node's global fetch with `Authorization: Bearer <sk_id>:<sk_secret>`.
// ---------------------------------------------------------------------------------------------

/** Herald's HTTP origin (REST and admin API), derived from the WebSocket origin the SDKs use. */
export const httpOrigin = env.url.replace(/^ws(s?):/, "http$1:");

/** Hides minted tokens in the trace (the SDK's own URLs are scrubbed the same way). */
const scrubTokens = (text) => text.replace(/("token"\s*:\s*")[^"]+/g, "$1…");

/**
 * One REST call. `body` is JSON-encoded; `raw` is sent verbatim instead. Returns
 * `{ status, body }` with the body parsed as JSON (or the raw text when it is not JSON). Every call
 * is traced; a call that does not answer within `timeoutMs` throws.
 */
export async function rest(method, path, body, { raw, auth = true, timeoutMs = 5000 } = {}) {
  const headers = {};
  if (auth) headers.authorization = `Bearer ${env.skId}:${env.skSecret}`;
  const payload = raw !== undefined ? raw : body !== undefined ? JSON.stringify(body) : undefined;
  if (payload !== undefined) headers["content-type"] = "application/json";
  const res = await fetch(httpOrigin + path, {
    method,
    headers,
    body: payload,
    signal: AbortSignal.timeout(timeoutMs),
  });
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = text;
  }
  log(`REST ${method} ${path}${payload !== undefined ? ` ${scrubTokens(payload).slice(0, 300)}` : ""} -> ${res.status} ${scrubTokens(text).slice(0, 400)}`);
  return { status: res.status, body: parsed };
}

/** A REST call that must answer 200; returns the parsed body. */
export async function restOk(method, path, body, opts) {
  const r = await rest(method, path, body, opts);
  assert.equal(r.status, 200, `${method} ${path}: expected 200, got ${r.status} ${JSON.stringify(r.body)}`);
  return r.body;
}

/** `POST /v1/tokens` (spec §13.3): `{ token, expiresAt }`. */
export function restToken(request) {
  return restOk("POST", "/v1/tokens", request);
}

/** The live connections of the app, from `GET /admin/api/connections` (same Bearer auth). */
export async function adminConnections() {
  const body = await restOk("GET", "/admin/api/connections");
  assert.ok(Array.isArray(body?.connections), `admin connections: ${JSON.stringify(body)}`);
  return body.connections;
}

/** A JWT's header and claims (no verification). */
export function decodeJwt(token) {
  const parts = String(token).split(".");
  assert.equal(parts.length, 3, `not a compact JWS: ${token}`);
  const part = (p) => JSON.parse(Buffer.from(p, "base64url").toString("utf8"));
  return { header: part(parts[0]), claims: part(parts[1]), parts };
}

/** True when `token` carries a valid HS256 signature by the test secret key. */
export function verifiesWithSecret(token) {
  const [h, c, sig] = String(token).split(".");
  const want = crypto.createHmac("sha256", env.skSecret).update(`${h}.${c}`).digest("base64url");
  return sig === want;
}

/**
 * Runs a scenario with a watchdog. Exits 0 on success and 1 on failure or timeout (the Rust
 * side also kills the process after its own, longer, deadline).
 */
export function scenario(name, fn, { timeoutMs = 45_000 } = {}) {
  const watchdog = setTimeout(() => {
    log(`FAIL ${name}: scenario watchdog fired after ${timeoutMs} ms`);
    process.exit(1);
  }, timeoutMs);
  process.on("unhandledRejection", (e) => {
    log(`FAIL ${name}: unhandled rejection`, e && e.stack ? e.stack : e);
    process.exit(1);
  });
  log(`START ${name} against ${env.url}`);
  fn().then(
    () => {
      clearTimeout(watchdog);
      log(`PASS ${name}`);
      process.exit(0);
    },
    (e) => {
      log(`FAIL ${name}:`, e && e.stack ? e.stack : e);
      process.exit(1);
    },
  );
}
