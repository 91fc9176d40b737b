"""Scenario 6 for MeteredPeer (Python): reconnect reconciliation (spec §8.2, §8.4). Alice's
token_provider mints 3-second tokens, so Herald closes her with 4002 shortly before exp. Her
MeteredPeer goes "reconnecting", reconnects with a fresh token, resubscribes and reconciles
against the snapshot: bob survives (same RemotePeer, no PeerLeft), she is "joined" again and
per-peer data flows both ways."""

from helpers import Data, FatalError, PeerJoined, PeerLeft, StateChange, log, make_peer, mint_token, run

ROOM = "call/reconnect"


async def main() -> None:
    calls = 0

    async def provider() -> str:
        nonlocal calls
        calls += 1
        log(f"token_provider call #{calls}")
        return mint_token("alice", ttl_secs=3, peer_metadata={"username": "Alice"})

    alice, ra = make_peer("alice", token_provider=provider)
    alice.on(StateChange, ra.push)
    bob, rb = make_peer("bob", token=mint_token("bob", peer_metadata={"username": "Bob"}))

    await alice.join(ROOM, include_sender_metadata=True)
    await bob.join(ROOM, include_sender_metadata=True)
    bob_remote = (await ra.wait_for(PeerJoined, lambda e: e.peer.id == "bob", "alice: PeerJoined bob")).peer
    await rb.wait_for(PeerJoined, lambda e: e.peer.id == "alice", "bob: PeerJoined alice")

    rec_ev = await ra.wait_for(StateChange, lambda s: s.to == "reconnecting", "alice: reconnecting", timeout=6)
    idx = ra.events.index(rec_ev)
    await ra.until(lambda: ra.since(idx, StateChange, lambda s: s.to == "joined"), "alice: joined again", 10)
    assert calls >= 2, calls
    assert alice.state == "joined" and alice.peer_id == "alice"
    assert not ra.all(PeerLeft), "bob survived the reconcile: no PeerLeft"
    assert [p.id for p in alice.remote_peers] == ["bob"]
    assert alice.remote_peers[0] is bob_remote, "same RemotePeer instance after reconcile"
    assert not ra.all(FatalError)

    await rb.until(lambda: any(p.id == "alice" for p in bob.remote_peers), "bob: alice in his room again", 5)
    await alice.send_to("bob", {"after": "reconnect"})
    d = await rb.wait_for(Data, lambda e: e.data == {"after": "reconnect"}, "bob gets post-reconnect send_to")
    assert d.sender_peer_id == "alice" and d.sender_metadata == {"username": "Alice"}, d
    await bob.send_to("alice", {"reply": "welcome back"})
    d = await ra.wait_for(Data, lambda e: e.data == {"reply": "welcome back"}, "alice gets bob's reply")
    assert d.sender_peer_id == "bob", d
    await bob.send({"broadcast": "after reconnect"})
    d = await ra.wait_for(Data, lambda e: e.kind == "broadcast", "alice gets bob's broadcast")
    assert d.sender_metadata == {"username": "Bob"}, d

    await alice.close()
    await bob.close()


run("py metered peer reconnect", main)
