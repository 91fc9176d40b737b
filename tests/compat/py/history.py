"""Channel history through the official Python SDK (Herald runs with `chat/*` keeping history and
rewinding 20 on subscribe; the SDK is unmodified and knows nothing of history).

1. A client that subscribes after 30 messages were published receives exactly the last 20, in
   order, with their original sender and metadata (it asked for it), then live messages, none
   twice.
2. With a publisher running during the subscribe, the subscriber's messages are consecutive from
   its first to the publisher's last: nothing lost or duplicated at the seam.
"""

import asyncio
from urllib.parse import quote

from helpers import Message, SubscribeOptions, connect, make_client, mint_token, rest_ok, run

META = {"username": "Pub"}


async def main() -> None:
    pub, rp = make_client("pub", token=mint_token("pub", peer_metadata=META))
    await connect(pub, rp)

    # 1. Thirty before anyone listens, then a subscriber.
    ch = "chat/rewind"
    for n in range(1, 31):
        await pub.publish(ch, {"n": n})
    sub, rs = make_client("sub", token=mint_token("sub"))
    await connect(sub, rs)
    await sub.subscribe(ch, SubscribeOptions(include_sender_metadata=True))
    await rs.until(lambda: len(rs.all(Message)) >= 20, "the rewound 20")
    for n in range(31, 36):
        await pub.publish(ch, {"n": n})
    # Messages of one sender arrive in order: n = 35 last means everything before it is in.
    await rs.wait_for(Message, lambda m: m.data.get("n") == 35, "live message 35")
    got = rs.all(Message)
    assert [m.data["n"] for m in got] == list(range(11, 36)), [m.data for m in got]
    for m in got:
        assert (m.channel, m.sender_peer_id, m.sender_metadata) == (ch, "pub", META), m
    page = await rest_ok("GET", f"/v1/channels/{quote(ch, safe='')}/messages?limit=5")
    assert [m["data"]["n"] for m in page["messages"]] == [31, 32, 33, 34, 35], page
    assert page["hasMore"] is True, page

    # 2. A publisher keeps going while a second subscriber joins.
    seam = "chat/seam"
    total = 400
    state = {"published": 0}
    forty = asyncio.Event()

    async def publish_all() -> None:
        for n in range(1, total + 1):
            await pub.publish(seam, {"n": n})
            state["published"] = n
            if n == 40:
                forty.set()

    running = asyncio.create_task(publish_all())
    await forty.wait()
    late, rl = make_client("late", token=mint_token("late"))
    await connect(late, rl)
    await late.subscribe(seam)
    published_at_ack = state["published"]
    await running
    await rl.wait_for(Message, lambda m: m.data.get("n") == total, "the last live message")
    seen = [m.data["n"] for m in rl.all(Message)]
    first = seen[0]
    assert seen == list(range(first, total + 1)), f"gap or duplicate at the seam: {seen}"
    assert first >= 21, f"at least 40 were published before the subscribe, rewind is 20: {first}"
    assert published_at_ack < total, f"the publisher was still running ({published_at_ack})"

    await pub.close()
    await sub.close()
    await late.close()


run("py history rewind", main)
