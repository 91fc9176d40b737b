// Herald's demo: presence & chat in the browser, and video calls signalled through Herald.
//
// One connection (herald-client.js) carries everything:
//   rooms    channel `demo/<room>`, subscribed with includeSenderMetadata so every message
//            carries its sender's name and avatar; the roster is the presence snapshot, then
//            the joined/left deltas;
//   payloads {kind: "chat", id, text} · {kind: "typing"} · {kind: "reaction", target, emoji, on}
//            published to a room, or sent to one person (`send` → `direct`) for direct messages;
//   calls    ringing and WebRTC signalling over `send` (call.js);
//   history  rooms keep their messages on the server: on join Herald sends the recent ones
//            again (rewind, as ordinary messages carrying an offset), and "Load older" pages
//            back through GET /v1/channels/{channel}/messages with the connection's token;
//            after a dropped connection each room resumes from the last message received
//            (herald-client.js), and a room whose gap is gone says so.
// Everything that came from another person is rendered as text (ui.js).

import { HeraldClient, FatalTokenError, describeClose } from "./herald-client.js";
import { CallManager } from "./call.js";
import { el, avatar, displayName, formatTime, nameList, toast, PALETTE, safeAvatarUrl } from "./ui.js";

const CHANNEL_PREFIX = "demo/";
const DEFAULT_ROOMS = ["lobby", "random"];
const REACTIONS = ["👍", "❤️", "😂", "🎉", "😮", "👀"];
const TYPING_SEND_EVERY_MS = 1500;
const TYPING_TTL_MS = 3500;
const TYPING_STALE_MS = 10_000;
const MAX_MESSAGES = 300;
const MAX_TEXT = 2000;
const PROFILE_KEY = "herald-demo-profile";
const ROOM_NAME = /^[a-z0-9-]{1,24}$/;
const HISTORY_PAGE = 50;

const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------- state

const state = {
  profile: null, // {username, color, avatarUrl, peerId}
  me: null, // {peerId, meta}
  client: null,
  calls: null,
  rooms: new Map(), // name -> conversation
  dms: new Map(), // peerId -> conversation
  people: new Map(), // peerId -> latest known metadata
  active: null, // conversation
  lastTypingSent: 0,
  connection: { state: "connecting" },
  token: null, // the token of the current connection, also our REST credential for history
};

function newConversation(kind, id) {
  return {
    kind, // "room" | "dm"
    id, // room name or peer id
    key: `${kind}:${id}`,
    roster: new Map(), // rooms only: peerId -> metadata
    rosterKnown: false,
    messages: new Map(), // id -> message, in arrival order
    typing: new Map(), // peerId -> expiry time
    unread: 0,
    history: null, // rooms: {epoch, oldest, more, loading} from the messages' positions
  };
}

const channelOf = (room) => `${CHANNEL_PREFIX}${room}`;
const roomOfChannel = (channel) =>
  channel.startsWith(CHANNEL_PREFIX) ? state.rooms.get(channel.slice(CHANNEL_PREFIX.length)) : undefined;
const metaOf = (peerId) => state.people.get(peerId) ?? null;
const nameOf = (peerId) => displayName(metaOf(peerId), peerId);
const isObject = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

function rememberPerson(peerId, meta) {
  if (peerId === state.me?.peerId) return;
  if (isObject(meta)) state.people.set(peerId, meta);
  else if (!state.people.has(peerId)) state.people.set(peerId, null);
}

function isOnline(peerId) {
  for (const room of state.rooms.values()) if (room.roster.has(peerId)) return true;
  return false;
}

// ---------------------------------------------------------------- sign-in

function showSignin(error = "") {
  $("app").hidden = true;
  $("signin").hidden = false;
  const err = $("signin-error");
  err.textContent = error;
  err.hidden = !error;
  $("signin-submit").disabled = false;
  $("signin-name").focus();
}

function buildSwatches(selected) {
  const host = $("signin-colors");
  PALETTE.forEach((color, i) => {
    const input = el("input", {
      type: "radio",
      name: "color",
      value: color,
      id: `swatch-${i}`,
      checked: color === selected,
      attrs: { "aria-label": `Colour ${i + 1}` },
      on: { change: updatePreview },
    });
    const label = el("label", { className: "swatch", attrs: { for: `swatch-${i}` } });
    label.style.backgroundColor = color;
    host.append(input, label);
  });
}

function formProfile() {
  const color = document.querySelector('input[name="color"]:checked')?.value ?? PALETTE[0];
  return {
    username: $("signin-name").value.trim(),
    color,
    avatarUrl: $("signin-avatar").value.trim(),
  };
}

function updatePreview() {
  const p = formProfile();
  const meta = { username: p.username || "?", color: p.color, avatarUrl: p.avatarUrl };
  $("signin-preview-avatar").replaceChildren(avatar(meta, "preview", "lg"));
  $("signin-preview-name").textContent = p.username || "Your name";
}

/** Asks Herald's dev endpoint for a token. Throws FatalTokenError when sign-in is refused. */
async function fetchToken(profile) {
  const body = { username: profile.username, color: profile.color };
  if (profile.avatarUrl) body.avatarUrl = profile.avatarUrl;
  // The server keeps our peer id only when we prove it is ours with the last token it gave us.
  if (profile.peerId && profile.proof) {
    body.peerId = profile.peerId;
    body.previousToken = profile.proof;
  }
  const res = await fetch("/dev/token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
    cache: "no-store",
  });
  let json = null;
  try {
    json = await res.json();
  } catch {
    // not JSON: handled below
  }
  if (res.status === 403 || res.status === 400 || res.status === 404) {
    throw new FatalTokenError(json?.message || `sign-in refused (HTTP ${res.status})`);
  }
  if (!res.ok || !json || typeof json.token !== "string") {
    throw new Error(json?.message || `token endpoint answered HTTP ${res.status}`);
  }
  return json;
}

async function signIn(profile) {
  $("signin-submit").disabled = true;
  let minted;
  try {
    minted = await fetchToken(profile);
  } catch (err) {
    showSignin(err instanceof FatalTokenError ? err.message : `Cannot reach Herald: ${err.message}`);
    return;
  }
  const stored = { ...profile, peerId: minted.peerId, proof: minted.token };
  sessionStorage.setItem(PROFILE_KEY, JSON.stringify(stored));
  start(stored, minted);
}

function signOut() {
  sessionStorage.removeItem(PROFILE_KEY);
  state.calls?.hangup();
  state.client?.close("signed out");
  location.reload();
}

// ---------------------------------------------------------------- connection

function start(profile, firstToken) {
  state.profile = profile;
  state.me = { peerId: profile.peerId, meta: firstToken.peerMetadata ?? { username: profile.username } };
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-avatar").replaceChildren(avatar(state.me.meta, state.me.peerId, "sm"));
  $("me-name").textContent = displayName(state.me.meta, state.me.peerId);

  let pending = firstToken.token;
  const origin = `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`;
  const client = new HeraldClient({
    url: origin,
    tokenProvider: async () => {
      if (pending) {
        const t = pending;
        pending = null;
        state.token = t;
        return t;
      }
      const minted = await fetchToken(state.profile);
      state.profile.proof = minted.token;
      sessionStorage.setItem(PROFILE_KEY, JSON.stringify(state.profile));
      state.token = minted.token;
      return minted.token;
    },
  });
  state.client = client;
  state.calls = new CallManager({
    client,
    iceServers: () => {
      const servers = client.welcome?.metadata?.iceServers;
      return Array.isArray(servers) ? servers : [];
    },
  });

  client.addEventListener("state", (ev) => onConnectionState(ev.detail));
  client.addEventListener("presence", (ev) => onPresence(ev.detail));
  client.addEventListener("message", (ev) => onMessage(ev.detail));
  client.addEventListener("direct", (ev) => onDirect(ev.detail));
  client.addEventListener("server-error", (ev) => toast(`Server: ${ev.detail.code} ${ev.detail.message}`, "error"));
  client.addEventListener("going-away", () => toast("Herald is restarting; reconnecting shortly"));
  client.addEventListener("resumed", (ev) => onResumed(ev.detail));
  state.calls.addEventListener("change", renderCall);
  state.calls.addEventListener("ended", (ev) => {
    if (ev.detail.message) toast(`${ev.detail.message} (${nameOf(ev.detail.peerId)})`);
  });

  for (const room of DEFAULT_ROOMS) joinRoom(room, { activate: room === DEFAULT_ROOMS[0] });
  client.connect().catch(() => {});
  setInterval(tick, 250);
}

function onConnectionState(detail) {
  state.connection = detail;
  if (detail.state !== "connected") {
    // Until the snapshots after the reconnect arrive, who is here and who is typing is unknown.
    for (const conv of [...state.rooms.values(), ...state.dms.values()]) {
      conv.rosterKnown = false;
      conv.typing.clear();
    }
  }
  if (detail.state === "closed" && state.client?.stopped === false && detail.code === null && detail.reason) {
    // The token endpoint refused us (for example dev tokens were switched off).
    toast(detail.reason, "error");
  }
  renderConnection();
  renderHeader();
  renderRoster();
  renderTyping();
  renderComposer();
}

function renderConnection() {
  const c = state.connection;
  const status = $("conn-status");
  status.dataset.state = c.state;
  const banner = $("conn-banner");
  let text;
  let bannerText = "";
  if (c.state === "connected") {
    text = "Connected";
  } else if (c.state === "connecting") {
    text = "Connecting…";
    bannerText = c.reason ? `Connecting… (last: ${c.reason})` : "";
  } else if (c.state === "reconnecting") {
    const secs = Math.max(0, Math.ceil((c.retryAt - Date.now()) / 1000));
    text = `Reconnecting in ${secs} s…`;
    bannerText = `Connection lost (${c.reason || describeClose(c.code)}). Reconnecting in ${secs} s…`;
  } else {
    const why = c.reason || describeClose(c.code);
    text = `Closed: ${why}`;
    bannerText = `Disconnected: ${why}${c.code ? ` (code ${c.code})` : ""}.`;
  }
  $("conn-text").textContent = text;
  $("conn-banner-text").textContent = bannerText;
  banner.hidden = !bannerText;
  banner.dataset.state = c.state;
  $("conn-retry").textContent = c.state === "closed" ? "Sign in again" : "Retry now";
  $("conn-retry").hidden = c.state === "connecting";
}

// ---------------------------------------------------------------- rooms and presence

function joinRoom(name, { activate = true } = {}) {
  let room = state.rooms.get(name);
  if (!room) {
    room = newConversation("room", name);
    state.rooms.set(name, room);
    state.client
      .subscribe(channelOf(name), { includeSenderMetadata: true })
      .catch((err) => toast(`Cannot join #${name}: ${err.message}`, "error"));
  }
  if (activate) activate_(room);
  renderSidebar();
}

function leaveRoom(room) {
  if (room.kind !== "room" || room.id === DEFAULT_ROOMS[0]) return;
  state.client.unsubscribe(channelOf(room.id)).catch(() => {});
  state.rooms.delete(room.id);
  for (const peerId of room.roster.keys()) if (!isOnline(peerId)) state.calls.peerGone(peerId);
  activate_(state.rooms.get(DEFAULT_ROOMS[0]));
}

function onPresence({ channel, joined, left, snapshot }) {
  const room = roomOfChannel(channel);
  if (!room) return;
  const me = state.me.peerId;
  if (snapshot) {
    const before = room.roster;
    room.roster = new Map();
    for (const entry of joined) {
      if (entry.peerId === me) continue;
      room.roster.set(entry.peerId, entry.metadata ?? null);
      rememberPerson(entry.peerId, entry.metadata);
    }
    room.rosterKnown = true;
    for (const peerId of before.keys()) {
      if (!room.roster.has(peerId)) {
        room.typing.delete(peerId);
        if (!isOnline(peerId)) state.calls.peerGone(peerId);
      }
    }
  } else {
    for (const entry of joined) {
      if (entry.peerId === me) continue;
      const fresh = !room.roster.has(entry.peerId);
      room.roster.set(entry.peerId, entry.metadata ?? null);
      rememberPerson(entry.peerId, entry.metadata);
      if (fresh) addNote(room, `${nameOf(entry.peerId)} joined`);
    }
    for (const entry of left) {
      if (!room.roster.delete(entry.peerId)) continue;
      room.typing.delete(entry.peerId);
      addNote(room, `${nameOf(entry.peerId)} left`);
      if (!isOnline(entry.peerId)) state.calls.peerGone(entry.peerId);
    }
  }
  renderRoster();
  renderSidebar();
  renderHeader();
  renderTyping();
}

// ---------------------------------------------------------------- inbound payloads

function onMessage({ channel, from, data, fromMetadata, offset, epoch, ts }) {
  const room = roomOfChannel(channel);
  if (!room || !isObject(data)) return;
  if (offset !== undefined) notePosition(room, epoch, offset);
  // Our own messages matter only from history (rewind after a reload, another tab): those
  // we sent from here are drawn already, and chat is deduplicated by its id.
  if (from === state.me.peerId && offset === undefined) return;
  if (from !== state.me.peerId) rememberPerson(from, fromMetadata ?? room.roster.get(from));
  handlePayload(room, from, data, { ts });
}

/** After a reconnect: a room whose gap could not be replayed says so. */
function onResumed({ channel, recovered }) {
  const room = roomOfChannel(channel);
  if (room && !recovered) toast(`#${room.id}: messages sent while you were away may be missing`, "error");
}

/** Remembers the oldest offset seen in a room, so "Load older" knows where to page from. */
function notePosition(room, epoch, offset) {
  const h = room.history;
  if (!h || h.epoch !== epoch) {
    // A new epoch: the room's history was reset on the server; page from here.
    room.history = { epoch, oldest: offset, more: offset > 1, loading: false };
  } else if (offset < h.oldest) {
    h.oldest = offset;
    h.more = offset > 1;
  }
  if (room === state.active) renderHistoryBar();
}

function onDirect({ from, data, fromMetadata }) {
  if (from === state.me.peerId) return;
  rememberPerson(from, fromMetadata);
  if (state.calls.handleDirect(from, data)) return;
  if (!isObject(data)) return;
  if (data.kind === "chat" || data.kind === "reaction" || data.kind === "typing") {
    handlePayload(dmWith(from), from, data);
    renderSidebar();
  }
}

/** A chat message from a payload, or null when it is not one we show. */
function chatOf(from, data, ts) {
  if (data.kind !== "chat" || typeof data.text !== "string" || typeof data.id !== "string" || data.id.length > 100) {
    return null;
  }
  const text = data.text.slice(0, MAX_TEXT);
  if (!text.trim()) return null;
  const mine = from === state.me.peerId;
  return { id: data.id, from, text, ts: ts ?? Date.now(), mine, status: "sent" };
}

/** `ts`: the server's time of the message, on channels that keep history. */
function handlePayload(conv, from, data, { ts } = {}) {
  if (data.kind === "chat") {
    const msg = chatOf(from, data, ts);
    if (!msg || conv.messages.has(msg.id)) return;
    conv.typing.delete(from);
    addMessage(conv, msg);
    renderTyping();
  } else if (data.kind === "typing") {
    // Every message of a room carries its server time; one well past its lifetime came from
    // history (rewind), not from someone typing now. The margin allows for clock skew.
    if (from === state.me.peerId || (ts !== undefined && Date.now() - ts > TYPING_STALE_MS)) return;
    conv.typing.set(from, Date.now() + TYPING_TTL_MS);
    renderTyping();
  } else if (data.kind === "reaction") {
    if (typeof data.target !== "string" || !REACTIONS.includes(data.emoji)) return;
    applyReaction(conv, data.target, data.emoji, from, data.on !== false);
  }
}

function dmWith(peerId) {
  let dm = state.dms.get(peerId);
  if (!dm) {
    dm = newConversation("dm", peerId);
    state.dms.set(peerId, dm);
  }
  return dm;
}

// ---------------------------------------------------------------- history

/** Pages back through the room's history with our own token, and puts the page in front. */
async function loadOlder(conv) {
  const h = conv.history;
  if (!h || !h.more || h.loading || !state.token) return;
  h.loading = true;
  renderHistoryBar();
  try {
    const url = `/v1/channels/${encodeURIComponent(channelOf(conv.id))}/messages?before=${h.oldest}&limit=${HISTORY_PAGE}`;
    const res = await fetch(url, { headers: { authorization: `Bearer ${state.token}` } });
    const body = await res.json().catch(() => null);
    if (!res.ok || !body || !Array.isArray(body.messages)) {
      throw new Error(body?.message || `HTTP ${res.status}`);
    }
    if (body.epoch !== h.epoch) {
      // The room's history was reset since we joined: what we would page is gone.
      h.more = false;
      return;
    }
    const older = [];
    const reactions = [];
    for (const m of body.messages) {
      if (!isObject(m) || !Number.isSafeInteger(m.offset) || typeof m.from !== "string" || !isObject(m.data)) continue;
      h.oldest = Math.min(h.oldest, m.offset);
      if (m.from !== state.me.peerId && isObject(m.fromMetadata)) rememberPerson(m.from, m.fromMetadata);
      if (m.data.kind === "reaction") reactions.push(m);
      const msg = chatOf(m.from, m.data, Number.isFinite(m.ts) ? m.ts : undefined);
      if (msg && !conv.messages.has(msg.id)) older.push([msg.id, msg]);
    }
    h.more = Boolean(body.hasMore) && h.oldest > 1;
    conv.messages = new Map([...older, ...conv.messages]);
    for (const m of reactions) {
      if (typeof m.data.target === "string" && REACTIONS.includes(m.data.emoji)) {
        const msg = conv.messages.get(m.data.target);
        if (msg && msg.kind !== "note") {
          msg.reactions ??= new Map();
          const who = msg.reactions.get(m.data.emoji) ?? new Set();
          if (m.data.on !== false) who.add(m.from);
          else who.delete(m.from);
          if (who.size) msg.reactions.set(m.data.emoji, who);
          else msg.reactions.delete(m.data.emoji);
        }
      }
    }
    if (conv === state.active) {
      const list = $("messages");
      const fromBottom = list.scrollHeight - list.scrollTop;
      renderMessages();
      list.scrollTop = list.scrollHeight - fromBottom; // keep what was on screen in place
    }
  } catch (err) {
    toast(`Cannot load older messages: ${err.message}`, "error");
  } finally {
    h.loading = false;
    if (conv === state.active) renderHistoryBar();
  }
}

function renderHistoryBar() {
  const conv = state.active;
  const h = conv?.kind === "room" ? conv.history : null;
  $("history-bar").hidden = !h?.more;
  $("load-older").disabled = Boolean(h?.loading);
  $("load-older").textContent = h?.loading ? "Loading…" : "Load older messages";
}

// ---------------------------------------------------------------- outbound

function newId() {
  return `${state.me.peerId}-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
}

function deliver(conv, data) {
  return conv.kind === "room"
    ? state.client.publish(channelOf(conv.id), data)
    : state.client.send(conv.id, data);
}

function sendChat(text) {
  const conv = state.active;
  const msg = { id: newId(), from: state.me.peerId, text: text.slice(0, MAX_TEXT), ts: Date.now(), mine: true, status: "sending" };
  addMessage(conv, msg);
  state.lastTypingSent = 0;
  deliver(conv, { kind: "chat", id: msg.id, text: msg.text })
    .then(() => {
      msg.status = "sent";
    })
    .catch((err) => {
      msg.status = "failed";
      msg.error = err.code === "peer_not_found" ? `${nameOf(conv.id)} is offline` : err.message;
    })
    .finally(() => renderMessage(conv, msg));
}

function sendTyping() {
  const conv = state.active;
  const now = Date.now();
  if (!conv || state.connection.state !== "connected" || now - state.lastTypingSent < TYPING_SEND_EVERY_MS) return;
  if (conv.kind === "dm" && !isOnline(conv.id)) return;
  state.lastTypingSent = now;
  deliver(conv, { kind: "typing" }).catch(() => {});
}

function toggleReaction(conv, msg, emoji) {
  const mine = msg.reactions?.get(emoji)?.has(state.me.peerId) ?? false;
  applyReaction(conv, msg.id, emoji, state.me.peerId, !mine);
  deliver(conv, { kind: "reaction", target: msg.id, emoji, on: !mine }).catch((err) =>
    toast(`Reaction not sent: ${err.message}`, "error"),
  );
}

// ---------------------------------------------------------------- conversation model

function addMessage(conv, msg) {
  conv.messages.set(msg.id, msg);
  if (conv.messages.size > MAX_MESSAGES) conv.messages.delete(conv.messages.keys().next().value);
  if (conv !== state.active) conv.unread += msg.kind === "note" ? 0 : 1;
  renderMessage(conv, msg);
  renderSidebar();
}

function addNote(conv, text) {
  const id = `note-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
  addMessage(conv, { id, kind: "note", text, ts: Date.now() });
}

function applyReaction(conv, target, emoji, peerId, on) {
  const msg = conv.messages.get(target);
  if (!msg || msg.kind === "note") return;
  msg.reactions ??= new Map();
  const who = msg.reactions.get(emoji) ?? new Set();
  if (on) who.add(peerId);
  else who.delete(peerId);
  if (who.size) msg.reactions.set(emoji, who);
  else msg.reactions.delete(emoji);
  renderMessage(conv, msg);
}

function activate_(conv) {
  state.active = conv;
  conv.unread = 0;
  state.lastTypingSent = 0;
  renderAll();
  $("composer-input").focus();
}

// ---------------------------------------------------------------- rendering

function renderAll() {
  renderSidebar();
  renderHeader();
  renderMessages();
  renderHistoryBar();
  renderTyping();
  renderRoster();
  renderComposer();
  renderCall();
}

function renderSidebar() {
  const rooms = [...state.rooms.values()].map((room) =>
    el(
      "li",
      {},
      el(
        "button",
        {
          type: "button",
          className: `nav-item${room === state.active ? " active" : ""}`,
          dataset: { room: room.id },
          on: { click: () => activate_(room) },
        },
        el("span", { className: "hash", text: "#" }),
        el("span", { className: "nav-name", text: room.id }),
        el("span", { className: "count", text: room.rosterKnown ? String(room.roster.size + 1) : "" }),
        room.unread ? el("span", { className: "badge", text: String(room.unread) }) : null,
      ),
    ),
  );
  $("rooms").replaceChildren(...rooms);
  const dms = [...state.dms.values()].map((dm) =>
    el(
      "li",
      {},
      el(
        "button",
        {
          type: "button",
          className: `nav-item${dm === state.active ? " active" : ""}${isOnline(dm.id) ? "" : " offline"}`,
          dataset: { dm: dm.id },
          on: { click: () => activate_(dm) },
        },
        avatar(metaOf(dm.id), dm.id, "xs"),
        el("span", { className: "nav-name", text: nameOf(dm.id) }),
        dm.unread ? el("span", { className: "badge", text: String(dm.unread) }) : null,
      ),
    ),
  );
  $("dms").replaceChildren(...dms);
  $("dms-empty").hidden = dms.length > 0;
}

function renderHeader() {
  const conv = state.active;
  if (!conv) return;
  if (conv.kind === "room") {
    $("conv-title").textContent = `# ${conv.id}`;
    const n = conv.roster.size + 1;
    $("conv-sub").textContent = conv.rosterKnown ? `${n} ${n === 1 ? "person" : "people"} here` : "…";
    $("conv-call").hidden = true;
    $("conv-leave").hidden = conv.id === DEFAULT_ROOMS[0];
    $("composer-input").placeholder = `Message #${conv.id}`;
  } else {
    $("conv-title").textContent = nameOf(conv.id);
    $("conv-sub").textContent = `Direct message · ${isOnline(conv.id) ? "online" : "offline"}`;
    $("conv-call").hidden = false;
    $("conv-leave").hidden = true;
    $("composer-input").placeholder = `Message ${nameOf(conv.id)}`;
  }
  document.title = `${$("conv-title").textContent} · Herald`;
}

function messageNode(conv, msg) {
  if (msg.kind === "note") {
    return el("li", { className: "note", dataset: { id: msg.id } }, el("span", { text: msg.text }));
  }
  const author = msg.mine ? state.me.meta : metaOf(msg.from);
  const reactions = [...(msg.reactions ?? new Map())].map(([emoji, who]) =>
    el(
      "button",
      {
        type: "button",
        className: `reaction${who.has(state.me.peerId) ? " mine" : ""}`,
        dataset: { emoji },
        title: nameList([...who].map((p) => (p === state.me.peerId ? "you" : nameOf(p)))),
        on: { click: () => toggleReaction(conv, msg, emoji) },
      },
      el("span", { text: emoji }),
      el("span", { className: "reaction-count", text: String(who.size) }),
    ),
  );
  const picker = el(
    "div",
    { className: "msg-actions", attrs: { role: "group", "aria-label": "React" } },
    REACTIONS.map((emoji) =>
      el("button", {
        type: "button",
        className: "react-btn",
        dataset: { emoji },
        text: emoji,
        title: `React with ${emoji}`,
        on: { click: () => toggleReaction(conv, msg, emoji) },
      }),
    ),
  );
  return el(
    "li",
    { className: `msg${msg.mine ? " mine" : ""} ${msg.status}`, dataset: { id: msg.id, from: msg.from } },
    avatar(author, msg.from, "md"),
    el(
      "div",
      { className: "msg-body" },
      el(
        "div",
        { className: "msg-meta" },
        el("span", { className: "author", text: displayName(author, msg.from) }),
        el("time", { className: "time", text: formatTime(msg.ts), attrs: { datetime: new Date(msg.ts).toISOString() } }),
        msg.status === "sending" ? el("span", { className: "msg-state", text: "sending…" }) : null,
        msg.status === "failed" ? el("span", { className: "msg-state error", text: `not sent: ${msg.error}` }) : null,
      ),
      el("p", { className: "text", text: msg.text }),
      reactions.length ? el("div", { className: "reactions" }, reactions) : null,
    ),
    picker,
  );
}

function renderMessage(conv, msg) {
  if (conv !== state.active) return;
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  const node = messageNode(conv, msg);
  const existing = [...list.children].find((li) => li.dataset.id === msg.id);
  if (existing) existing.replaceWith(node);
  else list.append(node);
  list.querySelector(":scope > li.empty")?.remove();
  while (list.children.length > MAX_MESSAGES) list.firstElementChild.remove();
  if (atBottom || msg.mine) list.scrollTop = list.scrollHeight;
}

function renderMessages() {
  const conv = state.active;
  const list = $("messages");
  const nodes = [...conv.messages.values()].map((m) => messageNode(conv, m));
  if (nodes.length === 0) {
    const hint = conv.kind === "room" ? `Nothing yet in #${conv.id}. Say hello!` : `This is the start of your conversation with ${nameOf(conv.id)}.`;
    nodes.push(el("li", { className: "note empty", text: hint }));
  }
  list.replaceChildren(...nodes);
  list.scrollTop = list.scrollHeight;
}

function renderTyping() {
  const conv = state.active;
  if (!conv) return;
  const now = Date.now();
  const names = [];
  for (const [peerId, until] of conv.typing) {
    if (until < now) conv.typing.delete(peerId);
    else names.push(nameOf(peerId));
  }
  const text = names.length === 0 ? "" : names.length <= 3 ? `${nameList(names)} ${names.length === 1 ? "is" : "are"} typing…` : "Several people are typing…";
  const node = $("typing");
  if (node.textContent !== text) node.textContent = text;
}

function renderRoster() {
  const conv = state.active;
  if (!conv || !state.me) return;
  const room = conv.kind === "room" ? conv : state.rooms.get(DEFAULT_ROOMS[0]);
  $("roster-scope").textContent = `in #${room.id}`;
  const entries = [[state.me.peerId, state.me.meta, true], ...[...room.roster].map(([id, meta]) => [id, meta, false])];
  $("roster-count").textContent = room.rosterKnown ? String(entries.length) : "";
  const items = entries.map(([peerId, meta, isMe]) =>
    el(
      "li",
      { className: `person${isMe ? " me" : ""}`, dataset: { peer: peerId } },
      avatar(meta, peerId, "md"),
      el("span", { className: "name", text: displayName(meta, peerId) }),
      isMe ? el("span", { className: "you muted", text: "you" }) : null,
      isMe
        ? null
        : el(
            "span",
            { className: "person-actions" },
            el("button", {
              type: "button",
              className: "btn btn-small dm-btn",
              text: "Message",
              title: `Message ${displayName(meta, peerId)}`,
              on: { click: () => activate_(dmWith(peerId)) },
            }),
            el("button", {
              type: "button",
              className: "btn btn-small call-btn",
              text: "Call",
              title: `Video call ${displayName(meta, peerId)}`,
              disabled: state.calls.phase !== "idle",
              on: { click: () => state.calls.start(peerId) },
            }),
          ),
    ),
  );
  const list = $("roster");
  list.replaceChildren(...items);
  list.classList.toggle("stale", !room.rosterKnown);
}

function renderComposer() {
  const ok = state.connection.state === "connected";
  $("composer-send").disabled = !ok;
}

function renderCall() {
  const calls = state.calls;
  if (!calls) return;
  const incoming = calls.phase === "incoming";
  $("incoming-call").hidden = !incoming;
  if (incoming) {
    $("incoming-avatar").replaceChildren(avatar(metaOf(calls.peerId), calls.peerId, "lg"));
    $("incoming-name").textContent = nameOf(calls.peerId);
  }
  const panel = $("call-panel");
  const inCall = calls.phase === "outgoing" || calls.phase === "connecting" || calls.phase === "active";
  panel.hidden = !inCall;
  panel.dataset.phase = calls.phase;
  const remote = $("remote-video");
  const local = $("local-video");
  if (remote.srcObject !== calls.remoteStream) remote.srcObject = calls.remoteStream;
  if (local.srcObject !== calls.localStream) local.srcObject = calls.localStream;
  const who = calls.peerId ? nameOf(calls.peerId) : "";
  const phaseText = {
    outgoing: `Calling ${who}…`,
    connecting: `Connecting to ${who}…`,
    active: `In a call with ${who}`,
  }[calls.phase] ?? "";
  $("call-status").textContent = calls.detail ? `${phaseText} · ${calls.detail}` : phaseText;
  for (const btn of document.querySelectorAll(".call-btn")) btn.disabled = calls.phase !== "idle";
  $("conv-call").disabled = calls.phase !== "idle";
}

/** Four times a second: the reconnect countdown and typing expiry. */
function tick() {
  if (state.connection.state === "reconnecting") renderConnection();
  const now = Date.now();
  for (const conv of [...state.rooms.values(), ...state.dms.values()]) {
    for (const [peerId, until] of conv.typing) if (until < now) conv.typing.delete(peerId);
  }
  renderTyping();
}

// ---------------------------------------------------------------- wiring

function wire() {
  buildSwatches(PALETTE[Math.floor(Math.random() * PALETTE.length)]);
  $("signin-name").addEventListener("input", updatePreview);
  $("signin-avatar").addEventListener("input", updatePreview);
  updatePreview();
  $("signin-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const profile = formProfile();
    const chars = [...profile.username].length;
    if (chars < 1 || chars > 40) return showSignin("Pick a display name of 1 to 40 characters.");
    if (profile.avatarUrl && !safeAvatarUrl(profile.avatarUrl)) {
      return showSignin("The avatar URL must start with https://, http:// or / (a path on this server).");
    }
    signIn(profile);
  });
  $("signout").addEventListener("click", signOut);
  $("conn-retry").addEventListener("click", () => {
    if (state.connection.state === "closed") signOut();
    else state.client.reconnectNow();
  });
  $("composer").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("composer-input");
    const text = input.value.trim();
    if (!text || state.connection.state !== "connected") return;
    input.value = "";
    sendChat(text);
  });
  $("composer-input").addEventListener("input", (ev) => {
    if (ev.target.value.trim()) sendTyping();
  });
  $("join-room").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const input = $("join-room-name");
    const name = input.value.trim().toLowerCase();
    if (!ROOM_NAME.test(name)) return toast("Room names are 1-24 characters: a-z, 0-9 and -", "error");
    input.value = "";
    joinRoom(name);
  });
  $("conv-leave").addEventListener("click", () => leaveRoom(state.active));
  $("load-older").addEventListener("click", () => state.active && loadOlder(state.active));
  $("conv-call").addEventListener("click", () => state.active?.kind === "dm" && state.calls.start(state.active.id));
  $("accept-call").addEventListener("click", () => state.calls.accept());
  $("decline-call").addEventListener("click", () => state.calls.decline());
  $("hangup").addEventListener("click", () => state.calls.hangup());
  window.addEventListener("online", () => state.client?.reconnectNow());

  const saved = (() => {
    try {
      return JSON.parse(sessionStorage.getItem(PROFILE_KEY) ?? "null");
    } catch {
      return null;
    }
  })();
  if (saved && typeof saved.username === "string") {
    $("signin-name").value = saved.username;
    signIn(saved);
  } else {
    showSignin();
  }
}

wire();
