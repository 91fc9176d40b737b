"""Scenario 9 (Python): two official MeteredPeers (aiortc backend from the ``webrtc`` extra) in
one room. Each sees the other's PeerJoined with its metadata, receives per-peer data
(``send_to`` and ``remote.send``) as Data(kind="direct") with sender_metadata, and the room
broadcast (``peer.send``) as Data(kind="broadcast"). When one leaves the other gets PeerLeft."""

import asyncio

from helpers import Data, FatalError, PeerJoined, PeerLeft, make_peer, mint_token, run

ROOM = "call/room-9"


def meta(name: str) -> dict:
    return {"username": name, "avatarUrl": f"https://cdn.example.com/{name}.png"}


async def main() -> None:
    import aiortc  # noqa: F401 - the webrtc extra must be installed (spec §20.2)

    alice, ra = make_peer("alice", token=mint_token("alice", peer_metadata=meta("Alice")))
    bob, rb = make_peer("bob", token=mint_token("bob", peer_metadata=meta("Bob")))

    await alice.join(ROOM, include_sender_metadata=True)
    assert alice.state == "joined" and alice.peer_id == "alice" and alice.channel == ROOM
    await bob.join(ROOM, include_sender_metadata=True)

    bj = await rb.wait_for(PeerJoined, lambda e: e.peer.id == "alice", "bob: PeerJoined alice")
    assert bj.peer.metadata == meta("Alice"), bj.peer.metadata
    aj = await ra.wait_for(PeerJoined, lambda e: e.peer.id == "bob", "alice: PeerJoined bob")
    assert aj.peer.metadata == meta("Bob"), aj.peer.metadata
    assert [p.id for p in alice.remote_peers] == ["bob"]
    assert [p.id for p in bob.remote_peers] == ["alice"]
    assert aj.peer.polite is True and bj.peer.polite is False

    await alice.send_to("bob", {"text": "hi bob (send_to)"})
    d = await rb.wait_for(Data, lambda e: e.data == {"text": "hi bob (send_to)"}, "bob gets send_to")
    assert (d.sender_peer_id, d.kind, d.sender_metadata) == ("alice", "direct", meta("Alice")), d

    await bj.peer.send({"text": "hi alice (remote.send)"})
    d = await ra.wait_for(Data, lambda e: e.data == {"text": "hi alice (remote.send)"}, "alice gets remote.send")
    assert (d.sender_peer_id, d.kind, d.sender_metadata) == ("bob", "direct", meta("Bob")), d

    await alice.send({"text": "hello room", "price": 1500.0})
    d = await rb.wait_for(Data, lambda e: e.kind == "broadcast", "bob gets broadcast")
    assert d.sender_peer_id == "alice" and d.sender_metadata == meta("Alice"), d
    assert isinstance(d.data["price"], float), d  # scenario 10 through MeteredPeer too
    await asyncio.sleep(0.2)
    assert not ra.all(Data, lambda e: e.kind == "broadcast"), "no echo"
    assert not ra.all(FatalError) and not rb.all(FatalError)

    await alice.close()
    gone = await rb.wait_for(PeerLeft, lambda e: e.peer.id == "alice", "bob: PeerLeft alice")
    assert gone.peer.id == "alice"
    assert bob.remote_peers == []
    await bob.close()
    assert bob.state == "closed"


run("py metered peer", main)
