"""REST admin kick (Python SignallingClient), spec §13.6 and §7.2.

- ``DELETE /v1/peers/alice`` closes EVERY connection of alice (two SDK clients, like two tabs)
  with 4020 and answers {peerId, closed: 2}.
- 4020 is terminal for the SDK: Disconnected(code=4020, will_reconnect=False), state "closed",
  and no reconnect: the token_provider is not called again and Herald's admin API
  (``GET /admin/api/connections``) shows no connection of alice for the next 3 s.
- The other subscriber sees alice leave exactly once (presence is reference-counted, §12).
- The peerId in the path is URL-encoded (``team%2Fcarol``); kicking an offline peer answers
  ``closed: 0`` (not 404); bystanders are untouched.
"""

import asyncio
import time
import urllib.parse
from typing import Any

from helpers import (
    Connected,
    Disconnected,
    Message,
    Presence,
    admin_connections,
    connect,
    log,
    make_client,
    mint_token,
    rest_ok,
    run,
)

CH = "lobby"
QUIET = 3.0


def counted_client(name: str, sub: str) -> tuple[Any, Any, list[int]]:
    """A client whose token_provider counts its calls (one per (re)connect attempt)."""
    calls: list[int] = []

    async def provider() -> str:
        calls.append(1)
        log(f"{name} token_provider call #{len(calls)}")
        return mint_token(sub, peer_metadata={"username": sub})

    client, rec = make_client(name, token_provider=provider)
    return client, rec, calls


async def expect_no_connection(banned: set[str], seconds: float, label: str) -> None:
    """Polls the admin API for ``seconds`` and fails if a connection of ``banned`` shows up."""
    start = time.monotonic()
    polls = 0
    while time.monotonic() - start < seconds:
        conns = await admin_connections()
        polls += 1
        hits = [c for c in conns if c["peerId"] in banned]
        assert not hits, f"{label}: a new connection appeared {time.monotonic() - start:.2f}s after the kick: {hits}"
        await asyncio.sleep(0.25)
    log(f"{label}: no connection of {sorted(banned)} in {polls} polls over {seconds}s")


def left_ids(rec: Any) -> list[str]:
    return [x.peer_id for p in rec.all(Presence) for x in p.left]


async def main() -> None:
    tab1, r1, calls1 = counted_client("alice-tab1", "alice")
    tab2, r2, calls2 = counted_client("alice-tab2", "alice")
    carol, rc, calls_c = counted_client("carol", "team/carol")
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata={"username": "bob"}))
    for c, r in ((bob, rb), (tab1, r1), (tab2, r2), (carol, rc)):
        await connect(c, r)
        await c.subscribe(CH)

    def bob_sees_both() -> bool:
        ids = {j.peer_id for p in rb.all(Presence, lambda p: p.channel == CH) for j in p.joined}
        return {"alice", "team/carol"} <= ids

    await rb.until(bob_sees_both, "bob sees alice and team/carol")
    conns = sorted(c["peerId"] for c in await admin_connections())
    assert conns == ["alice", "alice", "bob", "team/carol"], conns

    kicked = await rest_ok("DELETE", "/v1/peers/alice")
    assert kicked == {"peerId": "alice", "closed": 2}, kicked
    for tab, rec in ((tab1, r1), (tab2, r2)):
        d = await rec.wait_for(Disconnected, label=f"{rec.name}: disconnected", timeout=5)
        assert d.code == 4020 and d.will_reconnect is False, f"{rec.name}: {d}"
        await rec.until(lambda tab=tab: tab.state == "closed", f"{rec.name}: state closed", 2)
    await rb.wait_for(Presence, lambda p: any(x.peer_id == "alice" for x in p.left), "bob sees alice leave")

    await expect_no_connection({"alice"}, QUIET, "after kicking alice")
    for tab, rec, calls in ((tab1, r1, calls1), (tab2, r2, calls2)):
        assert len(calls) == 1, f"{rec.name}: token_provider called again ({len(calls)} calls): a reconnect attempt"
        assert len(rec.all(Connected)) == 1, f"{rec.name}: no second welcome"
        assert len(rec.all(Disconnected)) == 1, f"{rec.name}: exactly one disconnect"
        assert tab.state == "closed", tab.state
    assert left_ids(rb).count("alice") == 1, f"bob saw alice leave once: {left_ids(rb)}"

    kc = await rest_ok("DELETE", f"/v1/peers/{urllib.parse.quote('team/carol', safe='')}")
    assert kc == {"peerId": "team/carol", "closed": 1}, kc
    d = await rc.wait_for(Disconnected, label="carol: disconnected", timeout=5)
    assert d.code == 4020 and d.will_reconnect is False, d
    await rb.wait_for(Presence, lambda p: any(x.peer_id == "team/carol" for x in p.left), "bob sees team/carol leave")

    assert await rest_ok("DELETE", "/v1/peers/nobody") == {"peerId": "nobody", "closed": 0}
    assert await rest_ok("DELETE", "/v1/peers/alice") == {"peerId": "alice", "closed": 0}

    await expect_no_connection({"alice", "team/carol"}, 1.0, "after kicking team/carol")
    assert len(calls_c) == 1, "carol: no reconnect attempt"
    assert carol.state == "closed", carol.state

    assert not rb.all(Disconnected), "bob stayed connected"
    assert [c["peerId"] for c in await admin_connections()] == ["bob"]
    pub = await rest_ok("POST", f"/v1/channels/{CH}/publish", {"data": {"still": "here"}})
    assert pub["delivered"] == 1, pub
    await rb.wait_for(Message, lambda m: m.data == {"still": "here"}, "bob still receives")
    await bob.close()


run("py rest kick", main)
