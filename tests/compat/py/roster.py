"""Scenario 1 (Python): a roster built from presence — snapshot first, then deltas, with names
and avatars from the JWT ``peerMetadata`` ({username, avatarUrl}); a ``left`` when a peer closes
its connection and when a peer unsubscribes (spec §5.1, §5.2, §12)."""

from helpers import Presence, connect, log, make_client, mint_token, roster, run

CH = "lobby"


def meta(name: str) -> dict:
    return {"username": name, "avatarUrl": f"https://cdn.example.com/avatars/{name.lower()}.png"}


def entries(presence_peers) -> list:
    return [(p.peer_id, p.metadata) for p in presence_peers]


async def main() -> None:
    alice, ra = make_client("alice", token=mint_token("alice", peer_metadata=meta("Alice")))
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata=meta("Bob")))
    carol, rc = make_client("carol", token=mint_token("carol", peer_metadata=meta("Carol")))

    w = await connect(alice, ra)
    assert w.peer_id == "alice"
    assert isinstance(w.expires_at, int), w
    await connect(bob, rb)
    await connect(carol, rc)

    await alice.subscribe(CH)
    snap = await ra.wait_for(Presence, lambda p: p.channel == CH, "alice snapshot")
    assert snap.joined == () and snap.left == (), snap

    await bob.subscribe(CH)
    snap = await rb.wait_for(Presence, lambda p: p.channel == CH, "bob snapshot")
    assert entries(snap.joined) == [("alice", meta("Alice"))], snap
    assert snap.left == ()
    delta = await ra.wait_for(Presence, lambda p: any(j.peer_id == "bob" for j in p.joined), "alice sees bob")
    assert entries(delta.joined) == [("bob", meta("Bob"))] and delta.left == (), delta

    await carol.subscribe(CH)
    snap = await rc.wait_for(Presence, lambda p: p.channel == CH, "carol snapshot")
    assert dict(entries(snap.joined)) == {"alice": meta("Alice"), "bob": meta("Bob")}, snap
    for c, rec in ((alice, ra), (bob, rb)):
        d = await rec.wait_for(Presence, lambda p: any(j.peer_id == "carol" for j in p.joined), f"{rec.name} sees carol")
        assert entries(d.joined) == [("carol", meta("Carol"))] and d.channel == CH, d
    for rec, me in ((ra, "alice"), (rb, "bob"), (rc, "carol")):
        assert not rec.all(Presence, lambda p, me=me: any(j.peer_id == me for j in p.joined)), f"{me} saw itself"

    # What a roster UI renders for alice.
    names = sorted((pid, m["username"], m["avatarUrl"]) for pid, m in roster(ra, CH).items())
    assert names == [
        ("bob", "Bob", meta("Bob")["avatarUrl"]),
        ("carol", "Carol", meta("Carol")["avatarUrl"]),
    ], names

    await bob.close()
    for rec in (ra, rc):
        d = await rec.wait_for(Presence, lambda p: any(x.peer_id == "bob" for x in p.left), f"{rec.name} sees bob leave")
        assert d.channel == CH and d.joined == () and [x.peer_id for x in d.left] == ["bob"], d

    await carol.unsubscribe(CH)
    d = await ra.wait_for(Presence, lambda p: any(x.peer_id == "carol" for x in p.left), "alice sees carol leave")
    assert [x.peer_id for x in d.left] == ["carol"], d
    assert roster(ra, CH) == {}
    log("alice's final roster is empty, as expected")

    await alice.close()
    await carol.close()


run("py roster", main)
