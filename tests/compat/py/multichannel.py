"""Scenario 5 (Python): three channels on one connection, each message arrives tagged with the
channel it was published to; an unsubscribe stops exactly one channel."""

import asyncio

from helpers import Message, Presence, connect, make_client, mint_token, run

CHANNELS = ["team/eng", "team/ops", "alerts/prod"]


async def main() -> None:
    alice, ra = make_client("alice", token=mint_token("alice", peer_metadata={"username": "Alice"}))
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata={"username": "Bob"}))
    await connect(alice, ra)
    await connect(bob, rb)

    for ch in CHANNELS:
        await alice.subscribe(ch)
    for ch in CHANNELS:
        snap = await ra.wait_for(Presence, lambda p, ch=ch: p.channel == ch, f"snapshot {ch}")
        assert snap.joined == () and snap.left == (), snap
    await bob.subscribe("team/ops")
    p = await ra.wait_for(Presence, lambda p: len(p.joined) > 0, "alice sees bob join")
    assert p.channel == "team/ops", p

    for i, ch in enumerate(CHANNELS):
        await bob.publish(ch, {"for": ch, "i": i})
    await ra.until(lambda: len(ra.all(Message)) >= 3, "3 messages")
    got = ra.all(Message)
    assert [m.channel for m in got] == CHANNELS, got
    for m in got:
        assert m.sender_peer_id == "bob" and m.data["for"] == m.channel, m

    await alice.publish("team/eng", {"for": "team/eng"})
    await alice.publish("team/ops", {"for": "team/ops"})
    m = await rb.wait_for(Message, label="bob gets team/ops")
    assert (m.channel, m.sender_peer_id, m.data) == ("team/ops", "alice", {"for": "team/ops"}), m
    await asyncio.sleep(0.2)
    assert len(rb.all(Message)) == 1, rb.all(Message)

    await alice.unsubscribe("team/ops")
    await rb.wait_for(Presence, lambda p: any(x.peer_id == "alice" for x in p.left), "bob sees alice leave")
    for ch in CHANNELS:
        await bob.publish(ch, {"for": ch, "round": 2})
    await ra.until(lambda: len(ra.all(Message, lambda m: m.data.get("round") == 2)) >= 2, "round 2")
    await asyncio.sleep(0.2)
    chans = [m.channel for m in ra.all(Message, lambda m: m.data.get("round") == 2)]
    assert chans == ["team/eng", "alerts/prod"], chans

    await alice.close()
    await bob.close()


run("py multichannel", main)
