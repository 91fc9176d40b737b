// Scenario 9 (cross-SDK, JS side): a JS MeteredPeer (stub rtcPeerConnectionFactory) in the same
// room as a Python MeteredPeer (tests/compat/py/interop_peer.py, started at the same time by the
// Rust test). Each side waits for the other's peer-joined with metadata, sends it per-peer data
// (sendTo and remote.send) and a room broadcast, and waits for the same three from the other side.
import { assert, makePeer, mintToken, scenario } from "./helpers.mjs";

const ROOM = "interop/room";
const ME = "js-peer";
const OTHER = "py-peer";
const META = { username: "Node", avatarUrl: "https://cdn.example.com/js.png", sdk: "js" };
const OTHER_META = { username: "Python", avatarUrl: "https://cdn.example.com/py.png", sdk: "python" };

scenario("js interop peer", async () => {
  const peer = makePeer(ME, { token: mintToken({ sub: ME, peerMetadata: META }) });
  await peer.join(ROOM, { includeSenderMetadata: true });

  const joined = await peer.rec.waitFor("peer-joined", (e) => e.peer.id === OTHER, `peer-joined ${OTHER}`, 30_000);
  assert.deepEqual(joined.peer.metadata, OTHER_META);

  await peer.sendTo(OTHER, { hello: "send_to", from_sdk: "js" });
  await joined.peer.send({ hello: "remote.send", from_sdk: "js" });
  await peer.send({ hello: "broadcast", from_sdk: "js" });

  for (const [kind, hello] of [["direct", "send_to"], ["direct", "remote.send"], ["broadcast", "broadcast"]]) {
    const d = await peer.rec.waitFor("data", (e) => e.data?.hello === hello, `${hello} from ${OTHER}`, 20_000);
    assert.equal(d.senderPeerId, OTHER);
    assert.equal(d.kind, kind);
    assert.deepEqual(d.senderMetadata, OTHER_META);
    assert.equal(d.data.from_sdk, "python");
  }
  assert.equal(peer.rec.all("error").length, 0);
  await peer.close();
});
