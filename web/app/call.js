// One-to-one video calls between two people of the demo, with Herald carrying the signalling.
//
// Ringing is app data over `send`: {kind: "call", action: "invite"|"accept"|"decline"|"busy"|
// "end", callId}. Once the callee accepts, the caller offers. SDP and ICE travel as the payloads
// MeteredPeer uses (spec §17.3): {type: "rtc-description", description: {type, sdp}} and
// {type: "rtc-ice", candidate: {...} | null}, trickled. Media flows browser to browser; Herald
// only relays these small messages. The caller always offers, so there is no offer glare.

const RING_TIMEOUT_MS = 30_000;
const MAX_QUEUED_CANDIDATES = 200;

/** Phases: idle, outgoing (ringing them), incoming (ringing us), connecting, active. */
export class CallManager extends EventTarget {
  /**
   * @param {object} opts
   * @param {import("./herald-client.js").HeraldClient} opts.client
   * @param {() => RTCIceServer[]} opts.iceServers
   */
  constructor({ client, iceServers }) {
    super();
    this.client = client;
    this.iceServers = iceServers;
    this.#reset();
  }

  #reset() {
    this.phase = "idle";
    this.peerId = null;
    this.callId = null;
    this.pc = null;
    this.localStream = null;
    this.remoteStream = null;
    this.pendingCandidates = [];
    this.detail = "";
    clearTimeout(this.ringTimer);
    this.ringTimer = null;
  }

  #changed() {
    this.dispatchEvent(new CustomEvent("change"));
  }

  #ended(message) {
    this.dispatchEvent(new CustomEvent("ended", { detail: { peerId: this.peerId, message } }));
  }

  #signal(data) {
    const to = this.peerId;
    return this.client.send(to, data).catch((err) => {
      if (this.peerId === to && this.phase !== "idle") this.#finish(`Call failed: ${err.message}`);
    });
  }

  async #getMedia() {
    if (!navigator.mediaDevices?.getUserMedia) return null;
    try {
      return await navigator.mediaDevices.getUserMedia({ video: { width: 640, height: 480 }, audio: true });
    } catch {
      try {
        return await navigator.mediaDevices.getUserMedia({ video: true });
      } catch {
        return null; // no camera, or permission denied: we can still receive
      }
    }
  }

  /** Rings `peerId`. */
  async start(peerId) {
    if (this.phase !== "idle") return;
    this.phase = "outgoing";
    this.peerId = peerId;
    this.callId = `${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    this.detail = "";
    this.#changed();
    const stream = await this.#getMedia();
    if (this.phase !== "outgoing" || this.peerId !== peerId) {
      stream?.getTracks().forEach((t) => t.stop());
      return;
    }
    this.localStream = stream;
    if (!stream) this.detail = "No camera available: you will only receive";
    this.#changed();
    this.ringTimer = setTimeout(() => {
      if (this.phase === "outgoing") {
        this.#signal({ kind: "call", action: "end", callId: this.callId });
        this.#finish("No answer");
      }
    }, RING_TIMEOUT_MS);
    await this.#signal({ kind: "call", action: "invite", callId: this.callId });
  }

  /** Accepts the ringing incoming call. */
  async accept() {
    if (this.phase !== "incoming") return;
    clearTimeout(this.ringTimer);
    this.phase = "connecting";
    this.#changed();
    const peerId = this.peerId;
    const stream = await this.#getMedia();
    if (this.peerId !== peerId || this.phase !== "connecting") {
      stream?.getTracks().forEach((t) => t.stop());
      return;
    }
    this.localStream = stream;
    if (!stream) this.detail = "No camera available: you will only receive";
    this.#changed();
    await this.#signal({ kind: "call", action: "accept", callId: this.callId });
  }

  decline() {
    if (this.phase !== "incoming") return;
    this.#signal({ kind: "call", action: "decline", callId: this.callId });
    this.#finish("Call declined");
  }

  hangup() {
    if (this.phase === "idle") return;
    this.#signal({ kind: "call", action: "end", callId: this.callId });
    this.#finish("Call ended");
  }

  /** The other side left every room we share, or went offline. */
  peerGone(peerId) {
    if (this.phase !== "idle" && this.peerId === peerId) this.#finish("The other person left");
  }

  /**
   * Routes a `direct` payload. Returns true when it belonged to calling (ringing or WebRTC
   * signalling), false for anything else.
   */
  handleDirect(from, data) {
    if (data === null || typeof data !== "object") return false;
    if (data.kind === "call" && typeof data.callId === "string") {
      this.#onCallMessage(from, data);
      return true;
    }
    if (data.type === "rtc-description" || data.type === "rtc-ice") {
      if (from === this.peerId && (this.phase === "connecting" || this.phase === "active")) {
        this.#onRtcMessage(data).catch((err) => this.#finish(`Call failed: ${err.message}`));
      }
      return true;
    }
    return false;
  }

  #onCallMessage(from, { action, callId }) {
    if (action === "invite") {
      if (this.phase !== "idle") {
        if (from !== this.peerId) this.client.send(from, { kind: "call", action: "busy", callId }).catch(() => {});
        return;
      }
      this.phase = "incoming";
      this.peerId = from;
      this.callId = callId;
      this.ringTimer = setTimeout(() => {
        if (this.phase === "incoming") this.#finish("Missed call");
      }, RING_TIMEOUT_MS);
      this.#changed();
      return;
    }
    if (from !== this.peerId || callId !== this.callId) return;
    if (action === "accept" && this.phase === "outgoing") {
      clearTimeout(this.ringTimer);
      this.phase = "connecting";
      this.#changed();
      this.#offer().catch((err) => this.#finish(`Call failed: ${err.message}`));
    } else if (action === "decline") {
      this.#finish("Call declined");
    } else if (action === "busy") {
      this.#finish("Busy in another call");
    } else if (action === "end") {
      this.#finish(this.phase === "incoming" ? "Missed call" : "Call ended");
    }
  }

  #createPeerConnection() {
    const servers = this.iceServers();
    const pc = new RTCPeerConnection(servers.length ? { iceServers: servers } : {});
    this.pc = pc;
    pc.addEventListener("icecandidate", (ev) => {
      if (this.pc !== pc) return;
      const candidate = ev.candidate ? ev.candidate.toJSON() : null;
      this.#signal({ type: "rtc-ice", candidate });
    });
    pc.addEventListener("track", (ev) => {
      if (this.pc !== pc) return;
      if (!this.remoteStream) this.remoteStream = ev.streams[0] ?? new MediaStream();
      if (!this.remoteStream.getTracks().includes(ev.track)) this.remoteStream.addTrack(ev.track);
      this.#changed();
    });
    pc.addEventListener("connectionstatechange", () => {
      if (this.pc !== pc) return;
      if (pc.connectionState === "connected") {
        this.phase = "active";
        this.detail = "";
      } else if (pc.connectionState === "disconnected") {
        this.detail = "Connection interrupted…";
      } else if (pc.connectionState === "failed") {
        this.#finish("The connection failed");
        return;
      }
      this.#changed();
    });
    if (this.localStream) {
      for (const track of this.localStream.getTracks()) pc.addTrack(track, this.localStream);
    }
    return pc;
  }

  async #offer() {
    const pc = this.#createPeerConnection();
    if (!this.localStream) {
      pc.addTransceiver("video", { direction: "recvonly" });
      pc.addTransceiver("audio", { direction: "recvonly" });
    }
    await pc.setLocalDescription(await pc.createOffer());
    await this.#signal({ type: "rtc-description", description: { type: "offer", sdp: pc.localDescription.sdp } });
  }

  async #onRtcMessage(data) {
    if (data.type === "rtc-description") {
      const d = data.description;
      if (!d || (d.type !== "offer" && d.type !== "answer") || typeof d.sdp !== "string") return;
      if (d.type === "offer") {
        const pc = this.pc ?? this.#createPeerConnection();
        await pc.setRemoteDescription({ type: "offer", sdp: d.sdp });
        await this.#flushCandidates();
        await pc.setLocalDescription(await pc.createAnswer());
        await this.#signal({ type: "rtc-description", description: { type: "answer", sdp: pc.localDescription.sdp } });
      } else if (this.pc && this.pc.signalingState === "have-local-offer") {
        await this.pc.setRemoteDescription({ type: "answer", sdp: d.sdp });
        await this.#flushCandidates();
      }
      return;
    }
    const c = data.candidate;
    if (c !== null && (typeof c !== "object" || typeof c.candidate !== "string" || c.candidate.length > 1000)) return;
    if (this.pc?.remoteDescription) {
      await this.#addCandidate(c);
    } else if (this.pendingCandidates.length < MAX_QUEUED_CANDIDATES) {
      this.pendingCandidates.push(c);
    }
  }

  async #addCandidate(c) {
    try {
      // null or an empty candidate string marks the end of candidates.
      if (c === null || c.candidate === "") await this.pc.addIceCandidate();
      else await this.pc.addIceCandidate(c);
    } catch {
      // A stale or unparseable candidate is harmless; the others still work.
    }
  }

  async #flushCandidates() {
    const queued = this.pendingCandidates.splice(0);
    for (const c of queued) await this.#addCandidate(c);
  }

  #finish(message) {
    const pc = this.pc;
    const local = this.localStream;
    this.#ended(message);
    this.#reset();
    pc?.close();
    local?.getTracks().forEach((t) => t.stop());
    this.#changed();
  }
}
