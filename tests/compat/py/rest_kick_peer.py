"""REST admin kick of a MeteredPeer (Python, aiortc backend), spec §7.2: 4020 is terminal and
"fatal surfaced by MeteredPeer". The kicked peer emits FatalError (naming admin_disconnect and
4020) and then Left, ends "closed" with no remote peers, and never reconnects (no token_provider
call, no connection in Herald's admin API for 3 s). The other peer gets PeerLeft and stays joined.
"""

import asyncio
import time

from helpers import (
    FatalError,
    Joined,
    Left,
    PeerJoined,
    PeerLeft,
    admin_connections,
    log,
    make_peer,
    mint_token,
    rest_ok,
    run,
)

ROOM = "call/kick"
QUIET = 3.0


async def main() -> None:
    import aiortc  # noqa: F401 - the webrtc extra must be installed (spec §20.2)

    calls: list[int] = []

    async def provider() -> str:
        calls.append(1)
        log(f"alice token_provider call #{len(calls)}")
        return mint_token("alice", peer_metadata={"username": "Alice"})

    alice, ra = make_peer("alice", token_provider=provider)
    bob, rb = make_peer("bob", token=mint_token("bob", peer_metadata={"username": "Bob"}))
    await alice.join(ROOM, include_sender_metadata=True)
    await bob.join(ROOM, include_sender_metadata=True)
    await rb.wait_for(PeerJoined, lambda e: e.peer.id == "alice", "bob: PeerJoined alice")
    await ra.wait_for(PeerJoined, lambda e: e.peer.id == "bob", "alice: PeerJoined bob")

    kicked = await rest_ok("DELETE", "/v1/peers/alice")
    assert kicked == {"peerId": "alice", "closed": 1}, kicked

    fatal = await ra.wait_for(FatalError, label="alice: FatalError", timeout=5)
    text = str(fatal.err)
    assert "admin_disconnect" in text and "4020" in text, f"FatalError names the kick: {fatal.err!r}"
    left = await ra.wait_for(Left, label="alice: Left", timeout=5)
    assert left.peer_id == "alice" and left.channel == ROOM, left
    assert ra.events.index(fatal) < ra.events.index(left), "FatalError comes before Left (spec §7.2)"
    assert alice.state == "closed", alice.state
    assert alice.remote_peers == [], alice.remote_peers

    gone = await rb.wait_for(PeerLeft, lambda e: e.peer.id == "alice", "bob: PeerLeft alice", timeout=5)
    assert gone.peer.id == "alice"
    assert bob.remote_peers == [], bob.remote_peers

    start = time.monotonic()
    while time.monotonic() - start < QUIET:
        conns = await admin_connections()
        assert [c["peerId"] for c in conns] == ["bob"], f"only bob may be connected after the kick: {conns}"
        await asyncio.sleep(0.25)
    assert len(calls) == 1, f"alice's token_provider was called again ({len(calls)} calls)"
    assert len(ra.all(Joined)) == 1, "alice never rejoined"
    assert len(ra.all(Left)) == 1 and len(ra.all(FatalError)) == 1, ra.events
    assert alice.state == "closed"

    assert bob.state == "joined", bob.state
    assert not rb.all(FatalError) and not rb.all(Left)
    await bob.close()
    assert bob.state == "closed"


run("py rest kick metered peer", main)
