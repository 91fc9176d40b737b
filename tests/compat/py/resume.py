"""Lossless reconnect as the official Python SDK lives it (crates/server/tests/sdk_resume.rs).

One SignallingClient with a JWT (a stable peer id) joins RESUME_CHANNEL as RESUME_PEER and prints
``@READY``. The Rust side publishes, cuts the socket under it (a TCP proxy: no close frame),
publishes more and sends a direct while it is away, then lets it back; the SDK reconnects and
resubscribes on its own, knowing nothing of resume. A ``dump`` line on stdin waits for message
n = RESUME_LAST and one direct after the reconnect, then prints ``@RESULT`` with every ``n``
received in arrival order, and ``@DONE`` after a clean close.
"""

import asyncio
import json
import os
import sys

from helpers import Connected, Direct, Message, connect, make_client, mint_token, run

PEER = os.environ["RESUME_PEER"]
CHANNEL = os.environ["RESUME_CHANNEL"]
LAST = int(os.environ["RESUME_LAST"])


async def main() -> None:
    client, rec = make_client(PEER, token=mint_token(PEER))
    await connect(client, rec)
    await client.subscribe(CHANNEL)
    print("@READY", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    assert line.strip() == "dump", line
    back = await rec.wait_for(Connected, lambda c: c.is_reconnect, "the reconnect", timeout=20.0)
    back_idx = rec.events.index(back)
    await rec.wait_for(
        Message, lambda m: m.channel == CHANNEL and m.data.get("n") == LAST, f"message {LAST}", timeout=20.0
    )
    await rec.until(lambda: rec.since(back_idx, Direct), "the held direct", timeout=20.0)
    ns = [m.data["n"] for m in rec.all(Message, lambda m: m.channel == CHANNEL)]
    directs = [d.data for d in rec.since(back_idx, Direct)]
    print("@RESULT " + json.dumps({"ns": ns, "directs": directs}), flush=True)
    await client.close()
    print("@DONE", flush=True)


run("py resume", main, timeout=60.0)
