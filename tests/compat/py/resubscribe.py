"""Scenario 6 (Python): auto-resubscribe after a server-initiated close.

Alice's token_provider mints short-lived tokens (exp = now + 3 s). Herald closes with 4002 about
250 ms before exp (spec §2.2 step 7); the SDK reconnects with a fresh token, replays the
subscription with the same include_sender_metadata (§8.2) and keeps receiving. Bob, on a
long-lived token, sees alice continue (presence may show left+joined around each gap; his roster
ends with alice in it)."""

from helpers import (
    Connected,
    Disconnected,
    Message,
    Presence,
    SubscribeOptions,
    connect,
    log,
    make_client,
    mint_token,
    roster,
    run,
    token_exp,
)

CH = "news/live"
TTL = 3
CYCLES = 2


async def main() -> None:
    minted: list[int] = []

    async def provider() -> str:
        token = mint_token("alice", ttl_secs=TTL, peer_metadata={"username": "Alice"})
        minted.append(token_exp(token))
        log(f"token_provider call #{len(minted)}: exp={minted[-1]}")
        return token

    alice, ra = make_client("alice", token_provider=provider)
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata={"username": "Bob"}))
    w = await connect(alice, ra)
    assert w.peer_id == "alice" and w.expires_at == minted[0], w
    await connect(bob, rb)
    await alice.subscribe(CH, SubscribeOptions(include_sender_metadata=True))
    await bob.subscribe(CH)
    await bob.publish(CH, {"seq": 0})
    m = await ra.wait_for(Message, lambda m: m.data.get("seq") == 0, "message before reconnect")
    assert m.sender_metadata == {"username": "Bob"}, m

    for cycle in range(1, CYCLES + 1):
        exp = minted[-1]
        mark = len(ra.events) - 1
        drop = await ra.until(lambda: next(iter(ra.since(mark, Disconnected)), None), f"cycle {cycle}: 4002", TTL + 3)
        dropped_at = ra.time_of(drop)
        log(f"cycle {cycle}: dropped {int((dropped_at - exp) * 1000)} ms relative to exp: {drop}")
        assert drop.code == 4002, drop
        assert drop.will_reconnect, drop
        # ~250 ms before exp; the window allows for a loaded machine.
        assert dropped_at <= exp + 0.5, f"closed {dropped_at - exp:.3f}s after exp"
        assert dropped_at >= exp - 1.5, f"closed {exp - dropped_at:.3f}s before exp"

        welcome = await ra.until(
            lambda: next(iter(ra.since(mark, Connected, lambda c: c.is_reconnect)), None), f"cycle {cycle}: reconnect"
        )
        assert welcome.peer_id == "alice", welcome
        assert welcome.expires_at == minted[-1] and welcome.expires_at > exp, (welcome, minted)
        re_idx = ra.events.index(welcome)

        snap = await ra.until(
            lambda: next(iter(ra.since(re_idx, Presence, lambda p: p.channel == CH)), None),
            f"cycle {cycle}: snapshot after the automatic resubscribe",
        )
        assert [(j.peer_id, j.metadata) for j in snap.joined] == [("bob", {"username": "Bob"})], snap

        await bob.publish(CH, {"seq": cycle})
        m = await ra.wait_for(Message, lambda m, c=cycle: m.data.get("seq") == c, f"cycle {cycle}: message after reconnect")
        assert m.sender_peer_id == "bob" and m.sender_metadata == {"username": "Bob"}, m

        await alice.publish(CH, {"from_alice": cycle})
        b = await rb.wait_for(Message, lambda m, c=cycle: m.data.get("from_alice") == c, f"cycle {cycle}: bob hears alice")
        assert b.sender_peer_id == "alice", b
        await rb.until(lambda: "alice" in roster(rb, CH), f"cycle {cycle}: alice in bob's roster", 5)

    assert len(minted) >= CYCLES + 1, minted
    changes = [
        ("+" if which == "j" else "-") + e.peer_id
        for p in rb.all(Presence, lambda p: p.channel == CH)
        for which, lst in (("j", p.joined), ("l", p.left))
        for e in lst
    ]
    log("bob saw alice's presence as", " ".join(changes))
    assert "alice" in roster(rb, CH)
    assert not rb.all(Disconnected), "bob's long-lived connection was never dropped"

    await alice.close()
    await bob.close()


run("py resubscribe", main)
