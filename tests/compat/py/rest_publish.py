"""REST publish and peers list (Python), spec §13.4 and §13.5, as seen by SDK subscribers.

- ``POST /v1/channels/news%2Flive/publish`` (URL-encoded id) reaches every subscriber as a normal
  message from "system" (the default ``from``); the REST ``peerMetadata`` becomes sender_metadata
  for the subscriber that opted in with include_sender_metadata, and for no one else.
- An explicit ``from`` is stamped as the sender; without peerMetadata there is no sender_metadata.
- The unencoded path form names the same channel. Answers are ``{channel, delivered}``.
- ``data`` is forwarded verbatim: a REST body with ``1500.0`` arrives as a float (spec §20.3).
- ``GET /v1/channels/news%2Flive/peers`` lists the SDK peers with their peerMetadata (no
  ``metadata`` key for a peer without it), and drops a peer once it has left.
"""

import asyncio
import json
import urllib.parse

from helpers import (
    Disconnected,
    Message,
    Presence,
    ServerError,
    SubscribeOptions,
    connect,
    make_client,
    mint_token,
    rest_ok,
    run,
)

CH = "news/live"
ENC = urllib.parse.quote(CH, safe="")
SYSTEM_META = {"kind": "moderation-bot", "displayName": "System"}


def meta(name: str) -> dict:
    return {"username": name, "avatarUrl": f"https://cdn.example.com/{name}.png"}


def n_of(m: Message) -> object:
    return m.data.get("n") if isinstance(m.data, dict) else None


def by_id(peers: list) -> list:
    return sorted(peers, key=lambda p: p["peerId"])


async def main() -> None:
    assert ENC == "news%2Flive"
    alice, ra = make_client("alice", token=mint_token("alice", peer_metadata=meta("Alice")))
    bob, rb = make_client("bob", token=mint_token("bob", peer_metadata=meta("Bob")))
    carol, rc = make_client("carol", token=mint_token("carol"))  # no peerMetadata
    for c, r in ((alice, ra), (bob, rb), (carol, rc)):
        await connect(c, r)
    await alice.subscribe(CH, SubscribeOptions(include_sender_metadata=True))
    await bob.subscribe(CH)
    await carol.subscribe(CH)
    await ra.until(
        lambda: len([j for p in ra.all(Presence, lambda p: p.channel == CH) for j in p.joined]) >= 2,
        "alice sees bob and carol subscribed",
    )

    # 1. Default sender "system"; REST peerMetadata -> sender_metadata for alice only. The body is
    #    sent as raw bytes so `1500.0` reaches Herald spelled that way.
    news1 = {"headline": "Herald ships", "n": 1, "price": 1500.0, "nested": {"ok": True, "list": [1, "two", None]}}
    raw = (
        '{"data":{"headline":"Herald ships","n":1,"price":1500.0,"nested":{"ok":true,"list":[1,"two",null]}},'
        '"peerMetadata":' + json.dumps(SYSTEM_META) + "}"
    ).encode()
    r1 = await rest_ok("POST", f"/v1/channels/{ENC}/publish", raw=raw)
    assert r1 == {"channel": CH, "delivered": 3}, r1
    m = await ra.wait_for(Message, lambda m: n_of(m) == 1, "alice gets REST publish #1")
    assert (m.channel, m.sender_peer_id, m.data, m.sender_metadata) == (CH, "system", news1, SYSTEM_META), m
    assert isinstance(m.data["price"], float), f"1500.0 must stay a float: {m.data!r}"
    for rec in (rb, rc):
        m = await rec.wait_for(Message, lambda m: n_of(m) == 1, f"{rec.name} gets REST publish #1")
        assert (m.channel, m.sender_peer_id, m.data) == (CH, "system", news1), m
        assert m.sender_metadata is None, f"{rec.name} did not opt in: {m}"

    # 2. Explicit `from`, no peerMetadata: no sender_metadata even for the opted-in subscriber.
    r2 = await rest_ok("POST", f"/v1/channels/{ENC}/publish", {"data": {"n": 2}, "from": "ops-bot"})
    assert r2 == {"channel": CH, "delivered": 3}, r2
    m = await ra.wait_for(Message, lambda m: m.data == {"n": 2}, "alice gets REST publish #2")
    assert m.sender_peer_id == "ops-bot" and m.sender_metadata is None, m

    # 3. The unencoded path names the same channel; data may be any JSON (here an array).
    r3 = await rest_ok("POST", f"/v1/channels/{CH}/publish", {"data": [3, "three"]})
    assert r3 == {"channel": CH, "delivered": 3}, r3
    m = await ra.wait_for(Message, lambda m: m.data == [3, "three"], "alice gets REST publish #3")
    assert m.sender_peer_id == "system" and m.sender_metadata is None, m

    await asyncio.sleep(0.2)
    for rec in (ra, rb, rc):
        got = [x.data for x in rec.all(Message)]
        assert got == [news1, {"n": 2}, [3, "three"]], f"{rec.name}'s messages: {got}"

    # 4. The peers list: both path forms, metadata only where present.
    want = [
        {"peerId": "alice", "metadata": meta("Alice")},
        {"peerId": "bob", "metadata": meta("Bob")},
        {"peerId": "carol"},
    ]
    for path in (f"/v1/channels/{ENC}/peers", f"/v1/channels/{CH}/peers"):
        body = await rest_ok("GET", path)
        assert body["channel"] == CH, body
        assert by_id(body["peers"]) == want, f"{path}: {body}"

    # 5. Bob leaves; once alice has seen it, the REST list no longer has him.
    await bob.close()
    await ra.wait_for(
        Presence, lambda p: p.channel == CH and any(x.peer_id == "bob" for x in p.left), "alice sees bob leave"
    )
    after = await rest_ok("GET", f"/v1/channels/{ENC}/peers")
    assert by_id(after["peers"]) == [want[0], want[2]], after
    r4 = await rest_ok("POST", f"/v1/channels/{ENC}/publish", {"data": {"n": 4}})
    assert r4 == {"channel": CH, "delivered": 2}, r4

    # 6. A channel nobody is subscribed to: delivered 0, an empty peers list.
    empty = urllib.parse.quote("news/empty", safe="")
    assert await rest_ok("POST", f"/v1/channels/{empty}/publish", {"data": 0}) == {"channel": "news/empty", "delivered": 0}
    assert await rest_ok("GET", f"/v1/channels/{empty}/peers") == {"channel": "news/empty", "peers": []}

    for rec in (ra, rc):
        assert not rec.all(ServerError) and not rec.all(Disconnected), rec.name
    await alice.close()
    await carol.close()


run("py rest publish", main)
