"""Scenario 9 (cross-SDK, Python side): a Python MeteredPeer in the same room as a JS MeteredPeer
(tests/compat/js/interop_peer.mjs, started at the same time by the Rust test). Each side waits for
the other's PeerJoined with metadata, sends it per-peer data (send_to and remote.send) and a room
broadcast, and waits for the same three from the other side before leaving."""

from helpers import Data, FatalError, PeerJoined, make_peer, mint_token, run

ROOM = "interop/room"
ME, OTHER = "py-peer", "js-peer"
META = {"username": "Python", "avatarUrl": "https://cdn.example.com/py.png", "sdk": "python"}
OTHER_META = {"username": "Node", "avatarUrl": "https://cdn.example.com/js.png", "sdk": "js"}


async def main() -> None:
    peer, rec = make_peer(ME, token=mint_token(ME, peer_metadata=META))
    await peer.join(ROOM, include_sender_metadata=True)

    joined = await rec.wait_for(PeerJoined, lambda e: e.peer.id == OTHER, f"PeerJoined {OTHER}", timeout=30)
    assert joined.peer.metadata == OTHER_META, joined.peer.metadata

    await peer.send_to(OTHER, {"hello": "send_to", "from_sdk": "python", "price": 1500.0})
    await joined.peer.send({"hello": "remote.send", "from_sdk": "python"})
    await peer.send({"hello": "broadcast", "from_sdk": "python"})

    for kind, hello in (("direct", "send_to"), ("direct", "remote.send"), ("broadcast", "broadcast")):
        d = await rec.wait_for(
            Data,
            lambda e, h=hello: isinstance(e.data, dict) and e.data.get("hello") == h,
            f"{hello} from {OTHER}",
            timeout=20,
        )
        assert (d.sender_peer_id, d.kind, d.sender_metadata) == (OTHER, kind, OTHER_META), d
        assert d.data["from_sdk"] == "js", d
    assert not rec.all(FatalError)
    await peer.close()


run("py interop peer", main)
