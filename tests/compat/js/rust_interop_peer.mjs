// Rust SDK interop, Peer side (JS half). Started by crates/client/tests/interop.rs at the same
// time as a Rust `herald_client::Peer` named "rust-peer" in the same room.
// The official MeteredPeer (stub RTCPeerConnection, spec §20.2) waits for rust-peer's
// peer-joined with metadata, sends it per-peer data (sendTo and remote.send) and a broadcast,
// then two payloads in MeteredPeer's own signalling shapes (rtc-ice end-of-candidates and
// __meteredTrackMeta: the Rust peer must route them, not surface them as data) and a marker.
// It waits for the same three kinds of data from rust-peer, then for rust-peer to leave.
import { assert, makePeer, mintToken, scenario } from "./helpers.mjs";

const ROOM = "interop/rust-room";
const JS_META = { username: "Node", sdk: "js" };
const RUST_META = { username: "Rust", sdk: "rust" };

scenario("rust interop: MeteredPeer", async () => {
  const peer = makePeer("js-peer", { token: mintToken({ sub: "js-peer", peerMetadata: JS_META }) });
  await peer.join(ROOM, { includeSenderMetadata: true });

  const joined = await peer.rec.waitFor("peer-joined", (e) => e.peer.id === "rust-peer", "peer-joined rust-peer", 30_000);
  assert.deepEqual(joined.peer.metadata, RUST_META);

  await peer.sendTo("rust-peer", { hello: "send_to", from_sdk: "js" });
  await joined.peer.send({ hello: "remote.send", from_sdk: "js" });
  await peer.send({ hello: "broadcast", from_sdk: "js" });
  await peer.sendTo("rust-peer", { type: "rtc-ice", candidate: null });
  await peer.sendTo("rust-peer", { __meteredTrackMeta: { trackId: "js-track", metadata: { role: "camera" } } });
  await peer.sendTo("rust-peer", { hello: "marker", from_sdk: "js" });

  for (const [kind, hello] of [["direct", "send_to"], ["direct", "remote.send"], ["broadcast", "broadcast"]]) {
    const d = await peer.rec.waitFor("data", (e) => e.data?.hello === hello, `${hello} from rust-peer`, 20_000);
    assert.equal(d.senderPeerId, "rust-peer");
    assert.equal(d.kind, kind);
    assert.deepEqual(d.senderMetadata, RUST_META);
    assert.equal(d.data.from_sdk, "rust");
  }

  const left = await peer.rec.waitFor("peer-left", (e) => e.peer.id === "rust-peer", "peer-left rust-peer", 20_000);
  assert.equal(left.peer.id, "rust-peer");
  assert.equal(peer.rec.all("error").length, 0);
  await peer.close();
});
