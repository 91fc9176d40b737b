"""Scenario (Python): an attacker publishes JSON nested 5,000 levels deep (and 1,000) into a
channel where an official-SDK subscriber listens.

Python's json module recurses, so such a frame, if forwarded, kills the SDK's reader, which
reconnects: a presence flap, and a new peer id for a publishable-key peer. Herald refuses the
frames (error malformed_message to the attacker), so the subscriber must stay connected: no
Disconnected, no second Connected, the same peer id, no left/joined seen by others, and the
attacker's next ordinary message arrives."""

import asyncio
import json

import websockets

from helpers import PK, URL, Connected, Disconnected, Message, Presence, connect, log, make_client, mint_token, run

CH = "public/deep"


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


async def main() -> None:
    sub, rs = make_client("sub", api_key=PK)
    watcher, rw = make_client("watcher", token=mint_token("watcher"))
    w = await connect(sub, rs)
    sub_id = w.peer_id
    await connect(watcher, rw)
    await watcher.subscribe(CH)
    await sub.subscribe(CH)
    await rw.wait_for(Presence, lambda p: any(j.peer_id == sub_id for j in p.joined), "watcher sees sub")

    async with websockets.connect(f"{URL}/v1?key={PK}", max_size=None) as attacker:
        welcome = json.loads(await attacker.recv())
        assert welcome["type"] == "welcome", welcome
        for i, depth in enumerate([5000, 1000] * 5):
            frame = f'{{"type":"publish","channel":"{CH}","data":{nested(depth)},"requestId":"deep-{i}"}}'
            await attacker.send(frame)
            reply = json.loads(await attacker.recv())
            assert reply == {"type": "error", "requestId": f"deep-{i}", "code": "malformed_message", "message": reply.get("message")}, reply
        await attacker.send(json.dumps({"type": "publish", "channel": CH, "data": {"ok": True}, "requestId": "fine"}))
        assert json.loads(await attacker.recv()) == {"type": "ack", "requestId": "fine"}
        m = await rs.wait_for(Message, lambda m: m.channel == CH, "sub gets the ordinary message")
        assert m.data == {"ok": True}, m

    # Give a crashed reader time to show: the SDK would have reconnected by now.
    await asyncio.sleep(1.0)
    assert len(rs.all(Connected)) == 1, rs.all(Connected)
    assert not rs.all(Disconnected), rs.all(Disconnected)
    assert [x.data for x in rs.all(Message)] == [{"ok": True}], rs.all(Message)
    flaps = rw.all(Presence, lambda p: any(x.peer_id == sub_id for x in p.left))
    assert not flaps, f"the subscriber left and came back: {flaps!r}"
    log("sub stayed connected as", sub_id)
    await sub.close()
    await watcher.close()


run("py deep payload", main)
