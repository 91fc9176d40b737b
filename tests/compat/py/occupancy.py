"""Occupancy mode (Herald's large rooms): the server caps ``stadium-*`` at 2 members. Above the
cap a new subscriber's snapshot lists 2 members plus an extra ``occupancy`` field, and watchers
get count frames (presence with empty joined/left and ``occupancy``) instead of deltas. The
official SignallingClient and MeteredPeer must survive both: no error, no reconnect, and a
roster equal to the capped snapshot."""

import asyncio

from helpers import (
    Disconnected,
    FatalError,
    PeerLeft,
    Presence,
    ServerError,
    connect,
    make_client,
    make_peer,
    mint_token,
    roster,
    run,
)

CH = "stadium-1"


def is_count(p) -> bool:
    return p.channel == CH and p.joined == () and p.left == ()


async def main() -> None:
    import aiortc  # noqa: F401 - the webrtc extra must be installed (spec §20.2)

    fans = []
    for pid in ("p1", "p2", "p3"):
        c, rec = make_client(pid, token=mint_token(pid))
        await connect(c, rec)
        await c.subscribe(CH)
        await rec.wait_for(Presence, lambda p: p.channel == CH, f"{pid} snapshot")
        fans.append(c)

    watcher, rw = make_client("w", token=mint_token("w"))
    await connect(watcher, rw)
    await watcher.subscribe(CH)
    snap = await rw.wait_for(Presence, lambda p: p.channel == CH, "w snapshot")
    assert sorted(j.peer_id for j in snap.joined) == ["p1", "p2"], snap

    mp, rm = make_peer("mp", token=mint_token("mp"))
    await mp.join(CH)
    await rm.until(lambda: len(mp.remote_peers) == 2, "mp: two remote peers")
    assert sorted(p.id for p in mp.remote_peers) == ["p1", "p2"]

    p4, r4 = make_client("p4", token=mint_token("p4"))
    await connect(p4, r4)
    await p4.subscribe(CH)
    await fans[0].close()
    await rw.wait_for(Presence, is_count, "w: a count frame", timeout=5.0)
    await asyncio.sleep(0.3)  # mp's socket gets the same frame
    assert sorted(roster(rw, CH)) == ["p1", "p2"], roster(rw, CH)
    assert sorted(p.id for p in mp.remote_peers) == ["p1", "p2"]
    assert mp.state == "joined", mp.state
    assert not rm.all(FatalError) and not rm.all(PeerLeft)
    assert not rw.all(Disconnected) and not rw.all(ServerError)

    await mp.close()
    for c in (watcher, p4, fans[1], fans[2]):
        await c.close()


if __name__ == "__main__":
    run("py occupancy frames", main)
