"""Scenario 3 (Python): direct messages carry sender_metadata whenever the sender has
peerMetadata (no channel, no opt-in) and none when it has not; sending to an offline peer raises
ServerRequestError("peer_not_found") and the connection stays usable (spec §4.5, §5.4)."""

from helpers import Direct, connect, expect_reject, make_client, mint_token, run


def meta(name: str) -> dict:
    return {"username": name, "avatarUrl": f"https://cdn.example.com/{name}.png", "role": "member"}


async def main() -> None:
    alice, ra = make_client("alice", token=mint_token("alice", peer_metadata=meta("Alice")))
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata=meta("Bob")))
    dave, rd = make_client("dave", token=mint_token("dave"))  # no peerMetadata
    for c, r in ((alice, ra), (bob, rb), (dave, rd)):
        await connect(c, r)

    await alice.send("bob", {"text": "hi bob", "seq": 1})
    d = await rb.wait_for(Direct, label="bob gets alice's direct")
    assert (d.sender_peer_id, d.data, d.sender_metadata) == ("alice", {"text": "hi bob", "seq": 1}, meta("Alice")), d

    await bob.send("alice", {"text": "hi alice", "seq": 2})
    d = await ra.wait_for(Direct, lambda d: d.sender_peer_id == "bob", "alice gets bob's reply")
    assert (d.data, d.sender_metadata) == ({"text": "hi alice", "seq": 2}, meta("Bob")), d

    await dave.send("alice", "plain string payload")
    d = await ra.wait_for(Direct, lambda d: d.sender_peer_id == "dave", "alice gets dave's direct")
    assert d.data == "plain string payload" and d.sender_metadata is None, d

    for i in range(20):
        await bob.send("alice", {"seq": 100 + i})
    await ra.until(
        lambda: len(ra.all(Direct, lambda d: isinstance(d.data, dict) and d.data.get("seq", 0) >= 100)) == 20,
        "20 ordered directs",
    )
    seqs = [d.data["seq"] for d in ra.all(Direct, lambda d: isinstance(d.data, dict) and d.data.get("seq", 0) >= 100)]
    assert seqs == list(range(100, 120)), seqs

    await expect_reject(alice.send("ghost", {"text": "anyone?"}), "peer_not_found", "never-connected peer")
    await bob.close()
    await expect_reject(alice.send("bob", {"text": "still there?"}), "peer_not_found", "peer that closed")

    await alice.send("dave", {"text": "still connected"})
    d = await rd.wait_for(Direct, label="dave gets alice's direct")
    assert d.sender_metadata == meta("Alice"), d
    assert alice.state == "connected", alice.state

    await alice.close()
    await dave.close()


run("py direct", main)
