// Test page: one official MeteredPeer (served to this page by the test harness from
// node_modules, unmodified) joins a room on Herald, publishes the fake camera, and reports what
// it sees to the test through window.call. The test mints tokens through window.heraldToken,
// which the harness exposes (it calls Herald's POST /dev/token).
import { MeteredPeer } from "/sdk/index.mjs";

const call = {
  events: [],
  remoteId: null,
  remoteMetadata: null,
  remoteStreams: 0,
  remoteState: "new",
  channelMessages: [],
  error: null,
};
window.call = call;
let peer = null;
let remote = null;

function note(text) {
  call.events.push(text);
  const li = document.createElement("li");
  li.textContent = text;
  document.getElementById("events").append(li);
}

function watchChannel(channel) {
  channel.addEventListener("message", (ev) => {
    call.channelMessages.push(String(ev.data));
    note(`data channel "${channel.label}" <- ${ev.data}`);
  });
}

/** Joins `room` on Herald at `url` (an origin, e.g. ws://127.0.0.1:PORT) as `name`. */
window.startCall = async ({ url, room, name }) => {
  document.getElementById("who").textContent = name;
  document.getElementById("room").textContent = room;
  peer = new MeteredPeer({ url, tokenProvider: () => window.heraldToken() });
  peer.on("error", (ev) => {
    call.error = String(ev?.err?.message ?? ev?.message ?? ev);
    note(`error: ${call.error}`);
  });
  peer.on("peer-joined", ({ peer: r }) => {
    remote = r;
    call.remoteId = r.id;
    call.remoteMetadata = r.metadata ?? null;
    note(`peer-joined ${r.id} (${r.metadata?.username ?? "?"})`);
    document.getElementById("remote-label").textContent = `remote: ${r.metadata?.username ?? r.id}`;
    r.on("state-change", ({ to }) => {
      call.remoteState = to;
      note(`remote state -> ${to}`);
    });
    r.on("stream-added", ({ stream, metadata }) => {
      call.remoteStreams += 1;
      // Chrome gives received tracks ids of its own (unified plan), so SDK 1.2.0's per-track
      // metadata, keyed by the sender's track id, does not resolve here: `role` stays unset.
      // That is a property of the SDK in Chrome, not of the signalling Herald relays.
      note(`stream-added ${stream.getTracks().map((t) => `${t.kind}:${t.id}`).join(" ")} role=${metadata?.role ?? "-"}`);
      document.getElementById("remote").srcObject = stream;
    });
    r.on("data-channel", ({ channel }) => {
      note(`data-channel "${channel.label}" opened by the remote`);
      watchChannel(channel);
      const reply = () => channel.send(`hello back from ${name}`);
      if (channel.readyState === "open") reply();
      else channel.addEventListener("open", reply, { once: true });
    });
  });
  peer.on("peer-left", ({ peer: r }) => note(`peer-left ${r.id}`));
  await peer.join(room, { includeSenderMetadata: true });
  note(`joined ${room} as ${peer.peerId}`);
  const cam = await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
  document.getElementById("local").srcObject = cam;
  note(`local tracks ${cam.getTracks().map((t) => `${t.kind}:${t.id}`).join(" ")}`);
  peer.addStream(cam, { role: "camera" });
  return peer.peerId;
};

/** Opens a data channel on the connection to the remote and sends one message once it is open. */
window.openDataChannel = (text) => {
  const channel = remote.pc.createDataChannel("chat");
  watchChannel(channel);
  channel.addEventListener("open", () => {
    note(`data channel "chat" open; sending`);
    channel.send(text);
  });
};

/** The selected ICE candidate pair of the connection to the remote, from getStats(). */
window.selectedPair = async () => {
  const stats = await remote.pc.getStats();
  const byId = new Map();
  stats.forEach((s) => byId.set(s.id, s));
  let pair = null;
  stats.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId) pair = byId.get(s.selectedCandidatePairId);
  });
  if (!pair) {
    stats.forEach((s) => {
      if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
  }
  if (!pair) return null;
  const pick = (c) => c && { type: c.candidateType, address: c.address ?? c.ip, protocol: c.protocol };
  return {
    state: pair.state,
    local: pick(byId.get(pair.localCandidateId)),
    remote: pick(byId.get(pair.remoteCandidateId)),
    connectionState: remote.pc.connectionState,
  };
};

window.leaveCall = async () => {
  await peer?.close();
};
