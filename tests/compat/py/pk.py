"""Scenario 7 (Python): a publishable-key (``api_key="pk_…"``) connection (spec §2.1).

UUID peer id, Connected.expires_at is None, no metadata on its presence entries, no
sender_metadata on its messages/directs even for a receiver that opted in; it still sees JWT
peers' metadata."""

import re

from helpers import (
    PK,
    Connected,
    Direct,
    Message,
    Presence,
    SubscribeOptions,
    connect,
    make_client,
    mint_token,
    run,
)

CH = "public/lobby"
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BOB = {"username": "Bob", "avatarUrl": "https://cdn.example.com/bob.png"}
OPT_IN = SubscribeOptions(include_sender_metadata=True)
# Private connection metadata (JWT `metadata`): only its iceServers are surfaced by the SDK (§2.3).
ICE = [{"urls": ["stun:stun.example.com:3478"]}, {"urls": "turn:turn.example.com:3478", "username": "u", "credential": "c"}]


async def main() -> None:
    anon, rn = make_client("anon", api_key=PK)
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata=BOB, metadata={"iceServers": ICE, "plan": "pro"}))

    w: Connected = await connect(anon, rn)
    assert UUID.match(w.peer_id), w
    assert w.expires_at is None, f"pk connections never expire: {w}"
    assert w.max_message_size > 0, w
    assert w.ice_servers is None or isinstance(w.ice_servers, tuple), w
    anon_id = w.peer_id
    wb = await connect(bob, rb)
    assert wb.ice_servers is not None and len(wb.ice_servers) == 2, wb
    got = [(e.urls, e.username, e.credential) for e in wb.ice_servers]
    assert got == [(["stun:stun.example.com:3478"], None, None), ("turn:turn.example.com:3478", "u", "c")], got

    await bob.subscribe(CH, OPT_IN)
    await anon.subscribe(CH, OPT_IN)
    snap = await rn.wait_for(Presence, lambda p: p.channel == CH, "anon snapshot")
    assert [(j.peer_id, j.metadata) for j in snap.joined] == [("bob", BOB)], snap
    j = await rb.wait_for(Presence, lambda p: any(x.peer_id == anon_id for x in p.joined), "bob sees anon")
    assert [(x.peer_id, x.metadata) for x in j.joined] == [(anon_id, None)], j

    await anon.publish(CH, {"text": "hello from a pk"})
    m = await rb.wait_for(Message, label="bob gets anon's message")
    assert (m.channel, m.sender_peer_id, m.data, m.sender_metadata) == (CH, anon_id, {"text": "hello from a pk"}, None), m

    await anon.send("bob", {"text": "direct from a pk"})
    d = await rb.wait_for(Direct, label="bob gets anon's direct")
    assert (d.sender_peer_id, d.data, d.sender_metadata) == (anon_id, {"text": "direct from a pk"}, None), d

    await bob.publish(CH, {"text": "hi anon"})
    m = await rn.wait_for(Message, label="anon gets bob's message")
    assert m.sender_metadata == BOB, m
    await bob.send(anon_id, {"text": "hi anon, directly"})
    d = await rn.wait_for(Direct, label="anon gets bob's direct")
    assert (d.sender_peer_id, d.sender_metadata) == ("bob", BOB), d

    anon2, rn2 = make_client("anon2", api_key=PK)
    w2 = await connect(anon2, rn2)
    assert UUID.match(w2.peer_id) and w2.peer_id != anon_id, w2

    await anon.close()
    await rb.wait_for(Presence, lambda p: any(x.peer_id == anon_id for x in p.left), "bob sees anon leave")
    await anon2.close()
    await bob.close()


run("py pk", main)
