// A small client for the Metered Realtime Messaging wire protocol, written for this demo.
//
// One WebSocket to `<origin>/v1?token=…`. It waits for `welcome`, correlates requests with their
// `ack`/`error` by `requestId`, keeps the connection alive with `ping`, replays its subscriptions
// after every reconnect, and marks the first `presence` after each subscribe as the snapshot.
// It reconnects with exponential backoff unless the close code is terminal. On channels that
// keep history it resumes: each re-subscribe carries `since`, the position of the last message
// received there, so the server sends what was missed (and no rewind), and a message at or
// below that position is dropped as a duplicate.
//
// Events (an EventTarget; read `event.detail`):
//   state     {state, attempt, retryAt, code, reason}   state: connecting|connected|reconnecting|closed
//   welcome   the welcome frame
//   presence  {channel, joined, left, snapshot}
//   message   {channel, from, data, fromMetadata, id?, offset?, epoch?, ts?} (position: history)
//   direct    {from, data, fromMetadata}
//   server-error {code, message}                        errors that answer no request
//   going-away {retryAfterMs}
//   resumed   {channel, recovered}  after a re-subscribe with `since`: recovered false means
//             messages may have been missed (the history moved on or was reset)

/** Close codes after which reconnecting cannot help (spec §7.2). */
export const TERMINAL_CLOSE_CODES = new Set([4001, 4003, 4012, 4020]);

const WELCOME_TIMEOUT_MS = 10_000;
const ACK_TIMEOUT_MS = 15_000;
const TOKEN_TIMEOUT_MS = 10_000;
const INACTIVITY_MS = 60_000;
const BACKOFF_INITIAL_MS = 500;
const BACKOFF_MAX_MS = 30_000;
const OVER_LIMIT_FLOOR_MS = 30_000;

/** A request the server refused: `code` is the spec's error code. */
export class HeraldError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = "HeraldError";
    this.code = code;
  }
}

/** Thrown by a token provider to stop reconnecting (for example: sign-in is disabled). */
export class FatalTokenError extends Error {
  constructor(message) {
    super(message);
    this.name = "FatalTokenError";
  }
}

const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

/** `{id, offset, epoch, ts}` of a message frame that carries a history position, else `{}`. */
export function positionOf(frame) {
  const ok =
    typeof frame.id === "string" &&
    Number.isSafeInteger(frame.offset) &&
    typeof frame.epoch === "string" &&
    Number.isFinite(frame.ts);
  return ok ? { id: frame.id, offset: frame.offset, epoch: frame.epoch, ts: frame.ts } : {};
}
const isEntry = (e) => isObject(e) && typeof e.peerId === "string";

function utf8Length(text) {
  return new TextEncoder().encode(text).length;
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} timed out`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

export class HeraldClient extends EventTarget {
  /**
   * @param {object} opts
   * @param {string} opts.url  the server origin, e.g. "ws://127.0.0.1:8080" (the client adds /v1)
   * @param {() => Promise<string>} opts.tokenProvider  called before every (re)connect
   */
  constructor({ url, tokenProvider }) {
    super();
    this.url = url.replace(/\/+$/, "");
    this.tokenProvider = tokenProvider;
    this.state = "idle";
    this.peerId = null;
    this.welcome = null;
    this.maxMessageSize = 65536;
    this.attempt = 0;
    this.retryAt = null;
    this.lastClose = null;
    this.subscriptions = new Map(); // channel -> {includeSenderMetadata, awaitingSnapshot}
    this.pending = new Map(); // requestId -> {resolve, reject, timer}
    this.ws = null;
    this.seq = 0;
    this.stopped = false;
    this.goingAwayMs = null;
    this.lastInbound = 0;
    this.pinged = false;
    this.retryTimer = null;
    this.welcomeTimer = null;
    this.heartbeat = null;
  }

  /** Starts connecting; resolves on the first welcome or rejects when the client closes. */
  connect() {
    this.stopped = false;
    if (this.state === "idle" || this.state === "closed") {
      this.attempt = 0;
      this.#open();
    }
    if (this.state === "connected") return Promise.resolve(this.welcome);
    return new Promise((resolve, reject) => {
      const onState = (ev) => {
        if (ev.detail.state === "connected") {
          this.removeEventListener("state", onState);
          resolve(this.welcome);
        } else if (ev.detail.state === "closed") {
          this.removeEventListener("state", onState);
          reject(new Error(ev.detail.reason || "closed"));
        }
      };
      this.addEventListener("state", onState);
    });
  }

  /** Closes for good (no reconnect). */
  close(reason = "client closed") {
    this.stopped = true;
    clearTimeout(this.retryTimer);
    if (this.ws) {
      this.ws.close(1000, reason);
    } else {
      this.#setState("closed", { code: 1000, reason });
    }
  }

  /** Skips the rest of a backoff wait. */
  reconnectNow() {
    if (this.state === "reconnecting" && !this.stopped) {
      clearTimeout(this.retryTimer);
      this.#open();
    }
  }

  /**
   * Subscribes now, and again after every reconnect. Resolves with the ack; a subscription made
   * while disconnected resolves once it has been replayed.
   */
  subscribe(channel, { includeSenderMetadata = false } = {}) {
    const sub = { includeSenderMetadata, awaitingSnapshot: false, position: null };
    this.subscriptions.set(channel, sub);
    if (this.state !== "connected") return Promise.resolve();
    return this.#sendSubscribe(channel, sub);
  }

  unsubscribe(channel) {
    this.subscriptions.delete(channel);
    if (this.state !== "connected") return Promise.resolve();
    return this.#request({ type: "unsubscribe", channel });
  }

  publish(channel, data) {
    return this.#request({ type: "publish", channel, data }, true);
  }

  send(to, data) {
    return this.#request({ type: "send", to, data }, true);
  }

  // ---- internals ----

  #emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  #setState(state, extra = {}) {
    this.state = state;
    this.#emit("state", {
      state,
      attempt: this.attempt,
      retryAt: this.retryAt,
      code: this.lastClose?.code ?? null,
      reason: this.lastClose?.reason ?? "",
      ...extra,
    });
  }

  async #open() {
    this.retryAt = null;
    this.#setState("connecting");
    let token;
    try {
      token = await withTimeout(Promise.resolve().then(() => this.tokenProvider()), TOKEN_TIMEOUT_MS, "token request");
    } catch (err) {
      if (this.stopped) return;
      if (err instanceof FatalTokenError) {
        this.lastClose = { code: null, reason: err.message };
        this.#setState("closed");
        return;
      }
      this.lastClose = { code: null, reason: `no token: ${err.message}` };
      this.#scheduleReconnect(null);
      return;
    }
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(`${this.url}/v1?token=${encodeURIComponent(token)}`);
    } catch (err) {
      this.lastClose = { code: null, reason: String(err.message || err) };
      this.#scheduleReconnect(null);
      return;
    }
    this.ws = ws;
    this.welcome = null;
    this.goingAwayMs = null;
    ws.onopen = () => {
      this.welcomeTimer = setTimeout(() => ws.close(4000, "welcome timeout"), WELCOME_TIMEOUT_MS);
    };
    ws.onmessage = (ev) => this.#onFrame(ev.data);
    ws.onclose = (ev) => this.#onClose(ws, ev.code, ev.reason);
  }

  #onClose(ws, code, reason) {
    if (ws !== this.ws) return;
    this.ws = null;
    clearTimeout(this.welcomeTimer);
    clearInterval(this.heartbeat);
    for (const [, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new HeraldError("disconnected", "the connection closed before the server answered"));
    }
    this.pending.clear();
    this.lastClose = { code, reason: reason || describeClose(code) };
    if (this.stopped || TERMINAL_CLOSE_CODES.has(code)) {
      this.#setState("closed");
      return;
    }
    this.#scheduleReconnect(code);
  }

  #scheduleReconnect(code) {
    this.attempt += 1;
    let delay = Math.min(BACKOFF_INITIAL_MS * 2 ** (this.attempt - 1), BACKOFF_MAX_MS);
    if (code === 4010) delay = Math.max(delay, OVER_LIMIT_FLOOR_MS);
    delay *= 0.8 + Math.random() * 0.4;
    // After going_away the server has already jittered a retry delay for us.
    if (this.goingAwayMs !== null && this.attempt === 1) delay = this.goingAwayMs;
    this.goingAwayMs = null;
    this.retryAt = Date.now() + delay;
    this.#setState("reconnecting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => this.#open(), delay);
  }

  #onFrame(text) {
    if (typeof text !== "string") return;
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!isObject(frame) || typeof frame.type !== "string") return;
    this.lastInbound = Date.now();
    this.pinged = false;
    switch (frame.type) {
      case "welcome":
        this.#onWelcome(frame);
        break;
      case "ack": {
        const p = this.pending.get(frame.requestId);
        if (p) {
          this.pending.delete(frame.requestId);
          clearTimeout(p.timer);
          p.resolve(frame);
        }
        break;
      }
      case "error": {
        const p = typeof frame.requestId === "string" ? this.pending.get(frame.requestId) : null;
        if (p) {
          this.pending.delete(frame.requestId);
          clearTimeout(p.timer);
          p.reject(new HeraldError(frame.code, frame.message));
        } else if (frame.code !== "unknown_type") {
          this.#emit("server-error", { code: frame.code, message: frame.message ?? "" });
        }
        break;
      }
      case "presence": {
        if (typeof frame.channel !== "string" || !Array.isArray(frame.joined) || !Array.isArray(frame.left)) return;
        const sub = this.subscriptions.get(frame.channel);
        const snapshot = Boolean(sub?.awaitingSnapshot);
        if (sub) sub.awaitingSnapshot = false;
        this.#emit("presence", {
          channel: frame.channel,
          joined: frame.joined.filter(isEntry),
          left: frame.left.filter(isEntry),
          snapshot,
        });
        break;
      }
      case "message":
        if (typeof frame.channel !== "string" || typeof frame.from !== "string" || !("data" in frame)) return;
        if (this.#isRepeat(frame)) return;
        this.#emit("message", {
          channel: frame.channel,
          from: frame.from,
          data: frame.data,
          fromMetadata: isObject(frame.fromMetadata) ? frame.fromMetadata : null,
          // Herald's history position, on channels that keep history (rewind sends the
          // earlier messages as ordinary frames, so only these tell them apart).
          ...positionOf(frame),
        });
        break;
      case "direct":
        if (typeof frame.from !== "string" || !("data" in frame)) return;
        this.#emit("direct", {
          from: frame.from,
          data: frame.data,
          fromMetadata: isObject(frame.fromMetadata) ? frame.fromMetadata : null,
        });
        break;
      case "going_away": {
        const ms = Number(frame.retryAfterMs);
        this.goingAwayMs = Number.isFinite(ms) && ms > 0 ? Math.min(ms, 300_000) : 1000;
        this.#emit("going-away", { retryAfterMs: this.goingAwayMs });
        break;
      }
      default:
        break; // pong and anything unknown
    }
  }

  #onWelcome(frame) {
    if (this.welcome || typeof frame.peerId !== "string") return;
    clearTimeout(this.welcomeTimer);
    this.welcome = frame;
    this.peerId = frame.peerId;
    if (Number.isFinite(frame.maxMessageSize) && frame.maxMessageSize > 0) this.maxMessageSize = frame.maxMessageSize;
    this.attempt = 0;
    this.lastClose = null;
    this.lastInbound = Date.now();
    clearInterval(this.heartbeat);
    this.heartbeat = setInterval(() => this.#checkLiveness(), 2_000);
    this.#setState("connected");
    this.#emit("welcome", frame);
    for (const [channel, sub] of this.subscriptions) {
      this.#sendSubscribe(channel, sub).catch((err) =>
        this.#emit("server-error", { code: err.code || "subscribe_failed", message: `${channel}: ${err.message}` }),
      );
    }
  }

  /** A ping after a third of the inactivity window; a close (4000) after all of it. */
  #checkLiveness() {
    if (!this.ws || this.state !== "connected") return;
    const quiet = Date.now() - this.lastInbound;
    if (quiet > INACTIVITY_MS) {
      this.ws.close(4000, "inactivity");
    } else if (quiet > INACTIVITY_MS / 3 && !this.pinged) {
      this.pinged = true;
      this.ws.send(JSON.stringify({ type: "ping" }));
    }
  }

  #sendSubscribe(channel, sub) {
    sub.awaitingSnapshot = true;
    const frame = { type: "subscribe", channel };
    if (sub.includeSenderMetadata) frame.includeSenderMetadata = true;
    if (sub.position) frame.since = { epoch: sub.position.epoch, offset: sub.position.offset };
    return this.#request(frame).then((ack) => {
      if (typeof ack.recovered === "boolean") this.#emit("resumed", { channel, recovered: ack.recovered });
      return ack;
    });
  }

  /**
   * Whether a message frame is one this client already has: at or below the last position
   * received on its channel, in the same epoch (a resume may repeat the last unconfirmed
   * messages). Otherwise it becomes the channel's position.
   */
  #isRepeat(frame) {
    const sub = this.subscriptions.get(frame.channel);
    const { offset, epoch } = positionOf(frame);
    if (!sub || offset === undefined) return false;
    if (sub.position && sub.position.epoch === epoch && offset <= sub.position.offset) return true;
    sub.position = { epoch, offset };
    return false;
  }

  #request(frame, hasData = false) {
    if (this.state !== "connected" || !this.ws) {
      return Promise.reject(new HeraldError("disconnected", "not connected"));
    }
    if (hasData) {
      if (frame.data === undefined) return Promise.reject(new HeraldError("missing_data", "data is undefined"));
      const size = utf8Length(JSON.stringify(frame.data));
      if (size > this.maxMessageSize) {
        return Promise.reject(new HeraldError("too_large", `payload is ${size} bytes; the limit is ${this.maxMessageSize}`));
      }
    }
    const requestId = `r${++this.seq}`;
    const ws = this.ws;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(requestId);
        reject(new HeraldError("timeout", `no answer to ${frame.type} within 15 s`));
      }, ACK_TIMEOUT_MS);
      this.pending.set(requestId, { resolve, reject, timer });
      ws.send(JSON.stringify({ ...frame, requestId }));
    });
  }
}

/** A short human description of a WebSocket close code (spec §7.1). */
export function describeClose(code) {
  switch (code) {
    case 1000: return "closed normally";
    case 1001: return "server going away";
    case 1006: return "connection lost";
    case 1009: return "message too big";
    case 4000: return "no traffic from the server";
    case 4001: return "invalid token";
    case 4002: return "token expired";
    case 4003: return "channel not authorized";
    case 4010: return "too many connections";
    case 4011: return "sending too fast";
    case 4012: return "account suspended";
    case 4020: return "disconnected by an administrator";
    default: return code ? `closed (${code})` : "connection failed";
  }
}
