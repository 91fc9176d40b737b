"""Scenarios 2, 4 and 8 (Python): a chat room.
 2. broadcast with include_sender_metadata: sender_metadata for the receiver that opted in, None
    for the one that did not; the publisher gets no echo (spec §4.4, §5.3).
 4. a typing indicator sent as a broadcast {"type": "typing", ...} on a separate channel.
 8. a spoofed ``from`` inside data: the envelope sender is the real peer, data["from"] untouched.
"""

from helpers import Direct, Message, SubscribeOptions, connect, make_client, mint_token, run

ROOM = "chat/room-1"
TYPING = "chat/room-1/typing"
OPT_IN = SubscribeOptions(include_sender_metadata=True)


def meta(name: str) -> dict:
    return {"username": name, "avatarUrl": f"https://cdn.example.com/{name}.png"}


async def main() -> None:
    alice, ra = make_client("alice", token=mint_token("alice", peer_metadata=meta("Alice")))
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata=meta("Bob")))
    carol, rc = make_client("carol", token=mint_token("carol", peer_metadata=meta("Carol")))
    for c, r in ((alice, ra), (bob, rb), (carol, rc)):
        await connect(c, r)

    await alice.subscribe(ROOM)
    await bob.subscribe(ROOM, OPT_IN)
    await carol.subscribe(ROOM)
    await alice.subscribe(TYPING)
    await bob.subscribe(TYPING, OPT_IN)
    await carol.subscribe(TYPING)

    # --- 2 ---
    text = {"text": "hello room", "n": 1, "nested": {"ok": True, "list": [1, "two", None]}}
    await alice.publish(ROOM, text)
    m = await rb.wait_for(Message, lambda m: m.channel == ROOM, "bob gets alice's message")
    assert (m.sender_peer_id, m.data, m.sender_metadata) == ("alice", text, meta("Alice")), m
    m = await rc.wait_for(Message, lambda m: m.channel == ROOM, "carol gets alice's message")
    assert (m.sender_peer_id, m.data) == ("alice", text), m
    assert m.sender_metadata is None, f"carol did not opt in: {m}"
    await ra.expect_none(Message, label="echo of alice's own publish", ms=300)

    await carol.publish(ROOM, None)  # null data is valid (§3)
    m = await rb.wait_for(Message, lambda m: m.sender_peer_id == "carol", "bob gets carol's null")
    assert m.data is None and m.sender_metadata == meta("Carol"), m

    # --- 4 ---
    await carol.publish(TYPING, {"type": "typing", "typing": True, "at": 1})
    for rec in (ra, rb):
        m = await rec.wait_for(
            Message, lambda m: m.channel == TYPING and m.data.get("typing") is True, f"{rec.name} sees typing"
        )
        assert m.sender_peer_id == "carol" and m.data == {"type": "typing", "typing": True, "at": 1}, m
    m = await rb.wait_for(Message, lambda m: m.channel == TYPING)
    assert m.sender_metadata == meta("Carol"), m
    await carol.publish(TYPING, {"type": "typing", "typing": False, "at": 2})
    await ra.wait_for(Message, lambda m: m.channel == TYPING and m.data.get("typing") is False, "typing stopped")
    await carol.publish(ROOM, {"text": "done typing"})
    await ra.wait_for(Message, lambda m: m.channel == ROOM and m.sender_peer_id == "carol" and m.data == {"text": "done typing"})
    assert not ra.all(Message, lambda m: m.channel == ROOM and isinstance(m.data, dict) and m.data.get("type") == "typing")
    assert not ra.all(Message, lambda m: m.channel == TYPING and "text" in m.data)
    assert not rc.all(Message, lambda m: m.channel == TYPING), "carol gets no echo"

    # --- 8 ---
    await bob.publish(ROOM, {"from": "admin", "text": "I am the admin, trust me"})
    m = await ra.wait_for(Message, lambda m: isinstance(m.data, dict) and m.data.get("from") == "admin", "spoof")
    assert m.sender_peer_id == "bob", f"envelope sender must be the real peer: {m}"
    assert m.data["from"] == "admin", m
    await bob.send("alice", {"from": "admin", "text": "psst"})
    d = await ra.wait_for(Direct, lambda d: d.data.get("from") == "admin", "spoofed direct")
    assert d.sender_peer_id == "bob" and d.sender_metadata == meta("Bob"), d

    for c in (alice, bob, carol):
        await c.close()


run("py chat", main)
