"""REST token minting (Python): the SDK's token_provider is a customer backend's token endpoint
that calls Herald's ``POST /v1/tokens`` (spec §13.3) with urllib in a worker thread.

- The minted token is what the docs show: header {alg HS256, kid <sk_id>, typ JWT}, claims
  sub/exp/iat plus the requested channels, permissions and peerMetadata, signed with the secret.
- The SDK connects with it: welcome peer_id is the requested peerId, expires_at the REST
  expiresAt, and another SDK client sees the peer's presence with exactly that peerMetadata.
- The requested channels/permissions narrow the connection (channel_not_authorized,
  action_not_permitted).
- The first token is short-lived (expiresInSec 3): Herald closes with 4002, the SDK calls the
  token_provider again, which fetches a new REST token with changed peerMetadata. The reconnect
  comes within Herald's reconnect grace, so the other client sees no left/joined flap (and keeps
  the metadata it was told); ``GET /v1/channels/:id/peers``, like every later snapshot, shows the
  refreshed metadata (§12: the most recently subscribed connection's).
"""

import time
import urllib.parse
from typing import Any

from helpers import (
    SK_ID,
    Connected,
    Direct,
    Disconnected,
    Message,
    Presence,
    SubscribeOptions,
    TokenProviderError,
    connect,
    decode_jwt,
    expect_reject,
    log,
    make_client,
    rest,
    rest_ok,
    rest_token,
    roster,
    run,
    verifies_with_secret,
)

CH = "lobby/rest-tokens"
SHORT_TTL = 3
BOB_META = {"userId": "u_bob_456", "username": "Bob"}


def alice_meta(status: str) -> dict:
    return {
        "userId": "u_alice_123",
        "username": "Alice",
        "avatarUrl": "https://cdn.example.com/alice.png",
        "status": status,
    }


def check_minted(label: str, m: dict[str, Any]) -> None:
    """Checks one ``POST /v1/tokens`` answer against its request."""
    request, response, before, after = m["request"], m["response"], m["before"], m["after"]
    assert sorted(response) == ["expiresAt", "token"], f"{label}: response keys {sorted(response)}"
    ttl = request.get("expiresInSec", 3600)
    exp = response["expiresAt"]
    assert isinstance(exp, int) and not isinstance(exp, bool), f"{label}: expiresAt {exp!r}"
    assert before + ttl <= exp <= after + ttl, f"{label}: expiresAt {exp} not within now + {ttl}"
    header, claims = decode_jwt(response["token"])
    assert header == {"alg": "HS256", "kid": SK_ID, "typ": "JWT"}, f"{label}: header {header}"
    assert verifies_with_secret(response["token"]), f"{label}: not signed with the secret key"
    assert claims["sub"] == request["peerId"], f"{label}: sub {claims}"
    assert claims["exp"] == exp, f"{label}: exp {claims['exp']} != expiresAt {exp}"
    assert isinstance(claims.get("iat"), int) and before <= claims["iat"] <= after, f"{label}: iat {claims}"
    for k in ("channels", "permissions", "peerMetadata", "metadata"):
        assert claims.get(k) == request.get(k), f"{label}: claim {k}: {claims.get(k)!r} != {request.get(k)!r}"
        assert (k in claims) == (k in request), f"{label}: claim {k} present only when requested: {claims}"


async def main() -> None:
    # The provider only fetches and records; the checks run in the scenario body, because an
    # assertion raised inside a token_provider would count as a provider failure for the SDK.
    minted: list[dict[str, Any]] = []

    async def provider() -> str:
        first = not minted
        request = {
            "peerId": "alice",
            "channels": ["lobby/*"],
            "permissions": ["subscribe", "publish", "presence"],
            "expiresInSec": SHORT_TTL if first else 600,
            "peerMetadata": alice_meta("online" if first else "away"),
        }
        before = int(time.time())
        response = await rest_token(request)
        minted.append({"request": request, "response": response, "before": before, "after": int(time.time())})
        log(f"token_provider call #{len(minted)}: expiresAt={response['expiresAt']}")
        return response["token"]

    alice, ra = make_client("alice", token_provider=provider)

    # Bob's backend mints with only peerId + peerMetadata: default lifetime, no narrowing.
    bob_req = {"peerId": "bob", "peerMetadata": BOB_META}
    before = int(time.time())
    bob_tok = await rest_token(bob_req)
    check_minted("bob's token", {"request": bob_req, "response": bob_tok, "before": before, "after": int(time.time())})
    bob, rb = make_client("bob", token=bob_tok["token"])

    wb = await connect(bob, rb)
    assert wb.peer_id == "bob" and wb.expires_at == bob_tok["expiresAt"], wb
    await bob.subscribe(CH)
    await rb.wait_for(Presence, lambda p: p.channel == CH, "bob's (empty) snapshot")

    wa = await connect(alice, ra)
    assert len(minted) == 1, "one token_provider call for the first connect"
    check_minted("alice's token #1", minted[0])
    assert wa.peer_id == "alice", wa
    assert wa.expires_at == minted[0]["response"]["expiresAt"], (wa, minted[0]["response"])

    await alice.subscribe(CH, SubscribeOptions(include_sender_metadata=True))
    seen = await rb.wait_for(
        Presence, lambda p: p.channel == CH and any(j.peer_id == "alice" for j in p.joined), "bob sees alice join"
    )
    assert [(j.peer_id, j.metadata) for j in seen.joined] == [("alice", alice_meta("online"))], seen
    snap = await ra.wait_for(Presence, lambda p: p.channel == CH, "alice's snapshot")
    assert [(j.peer_id, j.metadata) for j in snap.joined] == [("bob", BOB_META)], snap

    await alice.publish(CH, {"hello": "from a REST token"})
    m = await rb.wait_for(Message, lambda m: m.data == {"hello": "from a REST token"}, "bob gets alice's publish")
    assert m.sender_peer_id == "alice", m
    # Bob's token has no narrowing: the key's full action set applies, so he can `send`.
    await bob.send("alice", {"dm": 1})
    d = await ra.wait_for(Direct, lambda d: d.data == {"dm": 1}, "alice gets bob's direct")
    assert d.sender_metadata == BOB_META, d

    # Token rotation through the REST endpoint.
    drop = await ra.wait_for(Disconnected, label="alice: 4002 before her short token's exp", timeout=SHORT_TTL + 3)
    assert drop.code == 4002 and drop.will_reconnect, drop
    re = await ra.wait_for(Connected, lambda c: c.is_reconnect, "alice reconnects with a new REST token")
    assert len(minted) == 2, f"token_provider called again: {len(minted)} calls"
    check_minted("alice's token #2", minted[1])
    assert re.peer_id == "alice" and re.expires_at == minted[1]["response"]["expiresAt"], re

    re_idx = next(i for i, e in enumerate(ra.events) if e is re)
    await ra.until(
        lambda: ra.since(re_idx, Presence, lambda p: p.channel == CH),
        "alice's snapshot after the automatic resubscribe",
    )
    flaps = rb.all(Presence, lambda p: any(e.peer_id == "alice" for e in p.left))
    assert flaps == [], f"a reconnect within the grace shows bob no left: {flaps}"
    assert roster(rb, CH)["alice"] == alice_meta("online"), "bob keeps alice, unflapped"
    peers = await rest_ok("GET", f"/v1/channels/{urllib.parse.quote(CH, safe='')}/peers")
    assert peers["channel"] == CH, peers
    by_id = {p["peerId"]: p for p in peers["peers"]}
    assert by_id == {
        "alice": {"peerId": "alice", "metadata": alice_meta("away")},
        "bob": {"peerId": "bob", "metadata": BOB_META},
    }, peers

    # The REST `channels` and `permissions` narrow the connection (checked after the rotation:
    # the SDK replays even a rejected subscribe after every reconnect, spec §8.2).
    await expect_reject(alice.subscribe("elsewhere/room"), "channel_not_authorized", "subscribe outside the channels")
    await expect_reject(alice.send("bob", {"hi": 1}), "action_not_permitted", "send without the send permission")

    status, body = await rest("POST", "/v1/tokens", {"peerId": "mallory"}, auth=False)
    assert status == 401 and body.get("error") == "unauthorized", (status, body)

    assert not ra.all(TokenProviderError)
    assert not rb.all(Disconnected), "bob's connection was never dropped"
    await alice.close()
    await bob.close()


run("py rest tokens", main)
