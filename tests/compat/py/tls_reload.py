"""TLS: the official Python SDK over wss:// across a certificate reload.

The SDK opens its socket with ``websockets.connect(url)``, whose default SSL context reads
``SSL_CERT_FILE`` (set by the Rust test to the test CA), so the SDK itself is unchanged. Alice
connects under the first certificate; the script moves the staged second pair over the live
files; once a new TLS connection is served the second certificate, Bob connects, and messages
go both ways on Alice's untouched socket.
"""

import asyncio
import os
import socket
import ssl
from urllib.parse import urlparse

from helpers import URL, Connected, Disconnected, Message, Presence, connect, log, make_client, mint_token, run

LIVE_CERT = os.environ["HERALD_TLS_CERT"]
LIVE_KEY = os.environ["HERALD_TLS_KEY"]
NEXT_CERT = os.environ["HERALD_TLS_NEXT_CERT"]
NEXT_KEY = os.environ["HERALD_TLS_NEXT_KEY"]
ROOM = "tls/room"


def leaf_of(path: str) -> bytes:
    """The first certificate of a PEM chain file, as DER."""
    with open(path) as f:
        pem = f.read()
    end = "-----END CERTIFICATE-----"
    return ssl.PEM_cert_to_DER_cert(pem[: pem.index(end) + len(end)])


def served_leaf() -> bytes:
    """The leaf certificate a fresh TLS connection to Herald is served (verified against the CA)."""
    u = urlparse(URL)
    context = ssl.create_default_context(cafile=os.environ["SSL_CERT_FILE"])
    with socket.create_connection((u.hostname, u.port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname=u.hostname) as tls:
            return tls.getpeercert(binary_form=True)


async def main() -> None:
    assert URL.startswith("wss://"), URL
    assert await asyncio.to_thread(served_leaf) == leaf_of(LIVE_CERT), "the first certificate is served"

    alice, ra = make_client("alice", token=mint_token("alice"))
    await connect(alice, ra)
    await alice.subscribe(ROOM)

    os.rename(NEXT_KEY, LIVE_KEY)
    os.rename(NEXT_CERT, LIVE_CERT)
    want = leaf_of(LIVE_CERT)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while await asyncio.to_thread(served_leaf) != want:
        assert loop.time() < deadline, "the new certificate was not served within 10 s"
        await asyncio.sleep(0.05)
    log("new connections are served the second certificate")

    bob, rb = make_client("bob", token=mint_token("bob"))
    await connect(bob, rb)
    await bob.subscribe(ROOM)
    await ra.wait_for(Presence, lambda p: any(j.peer_id == "bob" for j in p.joined), "alice sees bob join")
    await alice.publish(ROOM, {"text": "from before the reload"})
    m = await rb.wait_for(Message, lambda m: m.channel == ROOM, "bob gets alice's message")
    assert m.data == {"text": "from before the reload"}, m
    await bob.publish(ROOM, {"text": "from after the reload"})
    m = await ra.wait_for(Message, lambda m: m.channel == ROOM, "alice gets bob's message")
    assert m.data == {"text": "from after the reload"}, m
    assert not ra.all(Disconnected), "alice never disconnected"
    assert len(ra.all(Connected)) == 1, "alice connected once"
    await alice.close()
    await bob.close()


run("py tls reload", main)
