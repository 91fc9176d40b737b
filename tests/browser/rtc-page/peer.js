// Test page for the Rust SDK's WebRTC layer: one official MeteredPeer (served unmodified from
// node_modules) joins a room on Herald, optionally publishes the fake camera, takes every data
// channel a remote opens, and records what arrives (binary as base64, so the Rust test can
// compare bytes exactly). The test drives it through tests/browser/rtc-driver.mjs.
import { MeteredPeer } from "/sdk/index.mjs";

const rtc = { events: [], remotes: {}, received: [], error: null, peerId: null };
window.rtc = rtc;
let peer = null;
const channels = new Map(); // remoteId -> [RTCDataChannel]

function note(text) {
  rtc.events.push(`${new Date().toISOString().slice(11, 23)} ${text}`);
}

function toBase64(buffer) {
  const bytes = new Uint8Array(buffer);
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(b64) {
  const s = atob(b64);
  const bytes = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) bytes[i] = s.charCodeAt(i);
  return bytes;
}

function watchChannel(remoteId, channel) {
  channel.binaryType = "arraybuffer";
  const list = channels.get(remoteId) ?? [];
  list.push(channel);
  channels.set(remoteId, list);
  const mark = () => {
    const r = rtc.remotes[remoteId];
    if (r) r.openChannels = (channels.get(remoteId) ?? []).filter((c) => c.readyState === "open").map((c) => c.label);
  };
  channel.addEventListener("open", mark);
  channel.addEventListener("close", mark);
  mark();
  channel.addEventListener("message", (ev) => {
    const isString = typeof ev.data === "string";
    rtc.received.push({ from: remoteId, label: channel.label, isString, data: isString ? ev.data : toBase64(ev.data) });
  });
}

/** Joins `room` on Herald at `url` as `name`; publishes the fake camera when `camera`. */
window.startCall = async ({ url, room, name, camera }) => {
  document.getElementById("who").textContent = name;
  document.getElementById("room").textContent = room;
  peer = new MeteredPeer({ url, tokenProvider: () => window.heraldToken() });
  peer.on("error", (ev) => {
    rtc.error = String(ev?.err?.message ?? ev?.message ?? ev);
    note(`error: ${rtc.error}`);
  });
  peer.on("peer-joined", ({ peer: r }) => {
    rtc.remotes[r.id] = { state: r.state, polite: r.polite, streams: 0, openChannels: [], left: false };
    note(`peer-joined ${r.id} polite=${r.polite}`);
    r.on("state-change", ({ to }) => {
      rtc.remotes[r.id].state = to;
      note(`${r.id} state -> ${to}`);
    });
    r.on("stream-added", () => {
      rtc.remotes[r.id].streams += 1;
    });
    r.on("negotiation-error", (ev) => note(`${r.id} negotiation-error ${ev?.err?.message ?? ev}`));
    r.on("data-channel", ({ channel }) => {
      note(`data-channel "${channel.label}" from ${r.id}`);
      watchChannel(r.id, channel);
    });
  });
  peer.on("peer-left", ({ peer: r }) => {
    if (rtc.remotes[r.id]) rtc.remotes[r.id].left = true;
    channels.delete(r.id);
    note(`peer-left ${r.id}`);
  });
  await peer.join(room, { includeSenderMetadata: true });
  rtc.peerId = peer.peerId;
  note(`joined ${room} as ${peer.peerId}`);
  if (camera) {
    const cam = await navigator.mediaDevices.getUserMedia({ video: { width: 320, height: 240 }, audio: false });
    document.getElementById("local").srcObject = cam;
    peer.addStream(cam, { role: "camera" });
  }
  return peer.peerId;
};

/** Sends on the open channel labelled `label` to `remoteId`: text, or base64 bytes as binary. */
window.sendTo = (remoteId, label, data, isString) => {
  const channel = (channels.get(remoteId) ?? []).find((c) => c.label === label && c.readyState === "open");
  if (!channel) throw new Error(`no open channel "${label}" to ${remoteId}`);
  channel.send(isString ? data : fromBase64(data));
  return true;
};

/** What this browser may send in one message to `remoteId` (from the negotiated SCTP transport). */
window.maxMessageSize = (remoteId) => {
  const remote = (peer?.remotePeers ?? []).find((r) => r.id === remoteId) ?? null;
  return remote?.pc?.sctp?.maxMessageSize ?? null;
};

window.leaveCall = async () => {
  await peer?.close();
  peer = null;
  channels.clear();
  rtc.remotes = {};
  rtc.received = [];
  rtc.peerId = null;
};
