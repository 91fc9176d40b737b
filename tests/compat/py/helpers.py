"""Shared helpers for the Python SDK compatibility scenarios. Not a scenario itself.

The scenarios run the official ``metered-realtime`` SDK unmodified against a Herald started by
crates/server/tests/sdk_compat.rs, which passes the connection details in environment variables.
Everything here is test scaffolding: HS256 JWT minting, event recording with waits, a raw frame
trace (the ``websockets`` library's own debug log) and a scenario runner with a watchdog.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import sys
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

from metered_realtime import (
    Connected,
    Data,
    Direct,
    Disconnected,
    FatalError,
    GoingAway,
    Joined,
    Left,
    Message,
    MeteredPeer,
    PeerJoined,
    PeerLeft,
    Presence,
    ServerError,
    ServerRequestError,
    SignallingClient,
    StateChange,
    SubscribeOptions,
    TokenProviderError,
)


def _require_env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        print(f"missing environment variable {name} (run through cargo test --test sdk_compat)")
        sys.exit(2)
    return value


URL = _require_env("HERALD_URL")
SK_ID = _require_env("HERALD_SK_ID")
SK_SECRET = _require_env("HERALD_SK_SECRET")
PK = _require_env("HERALD_PK")
APP = os.environ.get("HERALD_APP", "")

_T0 = time.monotonic()


def log(*args: Any) -> None:
    ms = int((time.monotonic() - _T0) * 1000)
    print(f"[{ms:6d}ms]", *args, flush=True)


class _Fmt(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        ms = int((time.monotonic() - _T0) * 1000)
        return f"[{ms:6d}ms] {record.name}: {record.getMessage()[:400]}"


def _install_frame_trace() -> None:
    # The websockets library logs every frame at DEBUG ("< TEXT '…'", "> TEXT '…'").
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Fmt())
    for name in ("websockets.client",):
        lg = logging.getLogger(name)
        lg.setLevel(logging.DEBUG)
        lg.addHandler(handler)
        lg.propagate = False


_install_frame_trace()


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def mint_token(
    sub: str,
    *,
    ttl_secs: int = 3600,
    peer_metadata: dict[str, Any] | None = None,
    metadata: dict[str, Any] | None = None,
) -> str:
    """An HS256 JWT with header kid = the secret key id, as a customer backend would mint."""
    now = int(time.time())
    header = {"alg": "HS256", "typ": "JWT", "kid": SK_ID}
    claims: dict[str, Any] = {"sub": sub, "iat": now, "exp": now + ttl_secs}
    if peer_metadata is not None:
        claims["peerMetadata"] = peer_metadata
    if metadata is not None:
        claims["metadata"] = metadata
    signing_input = (
        _b64url(json.dumps(header, separators=(",", ":")).encode())
        + "."
        + _b64url(json.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(SK_SECRET.encode(), signing_input.encode("ascii"), hashlib.sha256).digest()
    return signing_input + "." + _b64url(sig)


def token_exp(token: str) -> int:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return int(json.loads(base64.urlsafe_b64decode(payload))["exp"])


class SdkLogger:
    """SDK logger: warnings and errors go to the scenario output."""

    def __init__(self, name: str) -> None:
        self.name = name

    def debug(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        pass

    def info(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        pass

    def warning(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        log(f"{self.name} SDK WARNING", msg, ctx or "")

    def error(self, msg: str, ctx: dict[str, Any] | None = None) -> None:
        log(f"{self.name} SDK ERROR", msg, ctx or "")


def _describe(ev: Any) -> str:
    if isinstance(ev, (PeerJoined, PeerLeft)):
        return f"{type(ev).__name__}(peer={ev.peer.id!r}, metadata={ev.peer.metadata!r})"
    return repr(ev)


class Recorder:
    """Records events and lets a scenario wait for them."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.events: list[Any] = []
        self.times: list[float] = []  # time.time() at which each event was recorded
        self._changed = asyncio.Event()

    def push(self, ev: Any) -> None:
        log(f"{self.name} event", _describe(ev))
        self.events.append(ev)
        self.times.append(time.time())
        self._changed.set()

    def time_of(self, ev: Any) -> float:
        return self.times[next(i for i, e in enumerate(self.events) if e is ev)]

    def all(self, cls: type, pred: Callable[[Any], bool] = lambda _e: True) -> list[Any]:
        return [e for e in self.events if isinstance(e, cls) and pred(e)]

    def since(self, idx: int, cls: type, pred: Callable[[Any], bool] = lambda _e: True) -> list[Any]:
        return [e for e in self.events[idx + 1 :] if isinstance(e, cls) and pred(e)]

    async def until(self, cond: Callable[[], Any], label: str, timeout: float = 10.0) -> Any:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            value = cond()
            if value:
                return value
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"{self.name}: timed out after {timeout}s waiting for {label}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def wait_for(
        self,
        cls: type,
        pred: Callable[[Any], bool] = lambda _e: True,
        label: str | None = None,
        timeout: float = 10.0,
    ) -> Any:
        def first() -> Any:
            hits = self.all(cls, pred)
            return hits[0] if hits else None

        return await self.until(first, label or cls.__name__, timeout)

    async def expect_none(
        self, cls: type, pred: Callable[[Any], bool] = lambda _e: True, label: str = "", ms: int = 400
    ) -> None:
        await asyncio.sleep(ms / 1000)
        hits = self.all(cls, pred)
        assert not hits, f"{self.name}: expected no {label or cls.__name__}, got {hits!r}"


CLIENT_EVENTS = (Connected, Disconnected, Message, Direct, Presence, ServerError, GoingAway, TokenProviderError)
PEER_EVENTS = (Joined, Left, PeerJoined, PeerLeft, Data, FatalError, StateChange)


def make_client(name: str, *, token: str | None = None, **kwargs: Any) -> tuple[SignallingClient, Recorder]:
    """A SignallingClient for Herald with a recorder. Pass ``token`` (fixed JWT),
    ``token_provider`` or ``api_key``."""
    if token is not None:

        async def provider() -> str:
            return token

        kwargs["token_provider"] = provider
    client = SignallingClient(url=URL, logger=SdkLogger(name), **kwargs)
    rec = Recorder(name)
    for cls in CLIENT_EVENTS:
        client.on(cls, rec.push)
    return client, rec


def make_peer(name: str, *, token: str | None = None, **kwargs: Any) -> tuple[MeteredPeer, Recorder]:
    """An official MeteredPeer (aiortc backend from the `webrtc` extra) with a recorder."""
    if token is not None:

        async def provider() -> str:
            return token

        kwargs["token_provider"] = provider
    peer = MeteredPeer(url=URL, logger=SdkLogger(name), **kwargs)
    rec = Recorder(name)
    for cls in PEER_EVENTS:
        if cls is StateChange:
            continue  # noisy; not asserted on
        peer.on(cls, rec.push)
    return peer, rec


async def connect(client: SignallingClient, rec: Recorder) -> Connected:
    await client.connect()
    return await rec.wait_for(Connected, label="connected", timeout=2.0)


def roster(rec: Recorder, channel: str) -> dict[str, Any]:
    """peerId -> metadata for ``channel``, replayed from presence snapshot + deltas."""
    members: dict[str, Any] = {}
    for p in rec.all(Presence, lambda p: p.channel == channel):
        for j in p.joined:
            members[j.peer_id] = j.metadata
        for gone in p.left:
            members.pop(gone.peer_id, None)
    return members


async def expect_reject(awaitable: Awaitable[Any], code: str, label: str) -> ServerRequestError:
    try:
        await awaitable
    except ServerRequestError as err:
        assert err.code == code, f"{label}: expected {code}, got {err.code}: {err}"
        return err
    raise AssertionError(f"{label}: expected rejection with {code}, but it succeeded")


# ---------------------------------------------------------------------------------------------
# Herald's REST control plane (spec §13) and admin API, called the way a customer backend would:
# plain urllib (in a worker thread, so the event loop keeps running) with
# ``Authorization: Bearer <sk_id>:<sk_secret>``.
# ---------------------------------------------------------------------------------------------

HTTP_ORIGIN = "http" + URL[len("ws") :] if URL.startswith("ws") else URL
# Loopback only: never route through a proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _scrub_tokens(text: str) -> str:
    return re.sub(r'("token"\s*:\s*")[^"]+', r"\1…", text)


def _http(method: str, path: str, payload: bytes | None, auth: bool, timeout: float) -> tuple[int, str]:
    headers = {}
    if auth:
        headers["Authorization"] = f"Bearer {SK_ID}:{SK_SECRET}"
    if payload is not None:
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(HTTP_ORIGIN + path, data=payload, method=method, headers=headers)
    try:
        with _OPENER.open(req, timeout=timeout) as resp:
            return resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode("utf-8", "replace")


async def rest(
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    auth: bool = True,
    timeout: float = 5.0,
) -> tuple[int, Any]:
    """One REST call; ``body`` is JSON-encoded, ``raw`` sent verbatim. Returns (status, parsed
    JSON body, or the raw text when it is not JSON). Every call is traced."""
    payload = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    status, text = await asyncio.to_thread(_http, method, path, payload, auth, timeout)
    shown = f" {_scrub_tokens(payload.decode('utf-8', 'replace'))[:300]}" if payload is not None else ""
    log(f"REST {method} {path}{shown} -> {status} {_scrub_tokens(text)[:400]}")
    try:
        parsed: Any = json.loads(text) if text else None
    except ValueError:
        parsed = text
    return status, parsed


async def rest_ok(method: str, path: str, body: Any = None, **kwargs: Any) -> Any:
    """A REST call that must answer 200; returns the parsed body."""
    status, parsed = await rest(method, path, body, **kwargs)
    assert status == 200, f"{method} {path}: expected 200, got {status} {parsed!r}"
    return parsed


async def rest_token(request: dict[str, Any]) -> dict[str, Any]:
    """``POST /v1/tokens`` (spec §13.3): ``{"token", "expiresAt"}``."""
    return await rest_ok("POST", "/v1/tokens", request)


async def admin_connections() -> list[dict[str, Any]]:
    """The app's live connections, from ``GET /admin/api/connections`` (same Bearer auth)."""
    body = await rest_ok("GET", "/admin/api/connections")
    assert isinstance(body, dict) and isinstance(body.get("connections"), list), body
    return body["connections"]


def _b64url_decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def decode_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A JWT's (header, claims), without verification."""
    parts = token.split(".")
    assert len(parts) == 3, f"not a compact JWS: {token!r}"
    return json.loads(_b64url_decode(parts[0])), json.loads(_b64url_decode(parts[1]))


def verifies_with_secret(token: str) -> bool:
    """True when ``token`` carries a valid HS256 signature by the test secret key."""
    h, c, sig = token.split(".")
    want = hmac.new(SK_SECRET.encode(), f"{h}.{c}".encode("ascii"), hashlib.sha256).digest()
    return hmac.compare_digest(_b64url_decode(sig), want)


def run(name: str, main: Callable[[], Awaitable[None]], timeout: float = 45.0) -> None:
    """Runs a scenario with a watchdog; exits 0 on success, 1 on failure or timeout."""
    log(f"START {name} against {URL}")

    async def guarded() -> None:
        await asyncio.wait_for(main(), timeout)

    try:
        asyncio.run(guarded())
    except asyncio.TimeoutError:
        log(f"FAIL {name}: scenario watchdog fired after {timeout}s")
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        os._exit(1)
    except BaseException:  # noqa: BLE001 - report everything, including AssertionError
        log(f"FAIL {name}:")
        traceback.print_exc(file=sys.stdout)
        sys.stdout.flush()
        os._exit(1)
    log(f"PASS {name}")
    sys.stdout.flush()
    os._exit(0)
