"""The attack replay of issue 11 ("Hostile clients"); `scripts/attacks` runs it (see there).

Each attack starts its own Herald (and, for `redis`, its own redis-server) on free loopback
ports with a config written to a temporary directory, runs the attack with short bounds, prints
one line of measured figures, and stops what it started. Standard library only: raw sockets, a
minimal WebSocket client (client frames use the all-zero mask key, which RFC 6455 allows, so
payloads go out unchanged) and HS256 tokens signed with the secret of the config it writes.
"""

import argparse
import base64
import hashlib
import hmac
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
SK_ID = "sk_id_attack"
SK_SECRET = "sk_secret_attack-replay-0123456789abcdef"
PK_ALL = "pk_live_attack_all"


# ---------------------------------------------------------------- processes and measurements


def debug(msg):
    if os.environ.get("ATTACKS_DEBUG"):
        print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(pid):
    """utime + stime of a process, in seconds (fields 14 and 15 of /proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def known_keys(binary):
    """The config keys a binary knows, per section, from `herald config default`."""
    out = subprocess.run([binary, "config", "default"], capture_output=True, text=True,
                         timeout=10).stdout
    keys, section = {}, ""
    for line in out.splitlines():
        m = re.match(r"^\[([a-z_]+)\]$", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^([a-z_]+) =", line)
        if m:
            keys.setdefault(section, set()).add(m.group(1))
    return keys


def toml_value(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    return "[" + ", ".join(toml_value(x) for x in v) + "]"


class Herald:
    """One Herald node. Only keys the binary knows go into its config; the rest are reported."""

    def __init__(self, ctx, name, settings=None, apps=None, dev_mode=False):
        self.ctx = ctx
        self.port = free_port()
        self.addr = ("127.0.0.1", self.port)
        settings = settings or {}
        apps = apps if apps is not None else default_apps()
        lines = [f'listen = "127.0.0.1:{self.port}"']
        sections = {"": {}, "limits": {}, "timing": {"shutdown_deadline_secs": 10},
                    "log": {"level": "warn"}, "engine": {}, "web": {}}
        for key, value in settings.items():
            section, _, name_ = key.rpartition(".")
            sections.setdefault(section, {})[name_] = value
        for section, values in sections.items():
            if section:
                lines.append(f"[{section}]")
            for key, value in values.items():
                if key in ctx.keys.get(section, set()):
                    lines.append(f"{key} = {toml_value(value)}")
                else:
                    ctx.unknown.add(f"{section}.{key}")
        for app in apps:
            lines.append("[[apps]]")
            lines.append(f'id = "{app["id"]}"')
            for sk in app.get("secret_keys", []):
                lines.append("[[apps.secret_keys]]")
                for k, v in sk.items():
                    lines.append(f"{k} = {toml_value(v)}")
            for pk in app.get("publishable_keys", []):
                lines.append("[[apps.publishable_keys]]")
                for k, v in pk.items():
                    lines.append(f"{k} = {toml_value(v)}")
        self.dir = tempfile.mkdtemp(prefix=f"herald-{name}-", dir=ctx.work)
        self.dev_keys = os.path.join(self.dir, "dev-keys.json")
        args = [ctx.binary, "serve", "--dev-keys", self.dev_keys]
        if dev_mode:
            args += ["--listen", f"127.0.0.1:{self.port}"]
        else:
            path = os.path.join(self.dir, "herald.toml")
            with open(path, "w") as f:
                f.write("\n".join(lines) + "\n")
            args += ["--config", path]
        self.log = open(os.path.join(self.dir, "log"), "w")
        env = dict(os.environ)
        env.pop("HERALD_CONFIG", None)
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     cwd=self.dir, env=env)
        self.pid = self.proc.pid
        ctx.procs.append(self.proc)
        deadline = time.time() + 15
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"herald exited at start: {open(self.log.name).read()[-800:]}")
            try:
                if http_request(self.addr, "GET", "/healthz", timeout=1)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("herald did not answer /healthz within 15 s")

    def sigterm_exit_time(self, cap):
        """Seconds from SIGTERM to exit, or None when it is still running after `cap` s."""
        started = time.time()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=cap)
            return time.time() - started
        except subprocess.TimeoutExpired:
            return None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def default_apps(pk_patterns=("**",), pk_actions=("subscribe", "publish", "presence", "send"),
                 extra_sks=()):
    return [{
        "id": "app_attack",
        "secret_keys": [{"id": SK_ID, "secret": SK_SECRET, "channel_patterns": ["**"],
                         "actions": ["publish", "subscribe", "presence", "send"]}] + list(extra_sks),
        "publishable_keys": [{"id": PK_ALL, "channel_patterns": list(pk_patterns),
                              "actions": list(pk_actions)}],
    }]


def http_request(addr, method, path, headers=None, body=None, timeout=5):
    conn = http.client.HTTPConnection(addr[0], addr[1], timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class HealthProbe:
    """GETs /healthz in a loop on fresh connections and keeps the slowest answer."""

    def __init__(self, addr, every=0.05):
        self.addr, self.every = addr, every
        self.max = 0.0
        self.failures = 0
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_flag.is_set():
            started = time.time()
            try:
                http_request(self.addr, "GET", "/healthz", timeout=30)
            except OSError:
                self.failures += 1
            self.max = max(self.max, time.time() - started)
            time.sleep(self.every)

    def stop(self):
        self.stop_flag.set()
        self.thread.join(35)
        return self.max


def healthz_time(addr, cap=30):
    started = time.time()
    try:
        http_request(addr, "GET", "/healthz", timeout=cap)
    except OSError:
        return None
    return time.time() - started


# ---------------------------------------------------------------- tokens and WebSocket


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt(sub, secret=SK_SECRET, kid=SK_ID, ttl=3600, **claims):
    header = b64url(json.dumps({"alg": "HS256", "kid": kid, "typ": "JWT"}).encode())
    now = int(time.time())
    body = {"sub": sub, "exp": now + ttl, "iat": now}
    body.update(claims)
    payload = b64url(json.dumps(body, separators=(",", ":")).encode())
    signing = f"{header}.{payload}".encode()
    sig = b64url(hmac.new(secret.encode(), signing, hashlib.sha256).digest())
    return f"{header}.{payload}.{sig}"


class Closed(Exception):
    pass


class WS:
    """A minimal blocking WebSocket client: text frames out, frames in, close codes kept."""

    def __init__(self, addr, key=None, token=None, rcvbuf=None, timeout=10):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(timeout)
        self.sock.connect(addr)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        query = f"key={key}" if key else f"token={token}"
        nonce = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /v1?{query} HTTP/1.1\r\nHost: 127.0.0.1:{addr[1]}\r\n"
                           "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n\r\n")
                          .encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise Closed("closed during the handshake")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise Closed(status.decode(errors="replace"))
        self.close_code = None
        self.peer_id = None
        if key or token:
            welcome = self.recv_json()
            if welcome.get("type") != "welcome":
                raise Closed(f"no welcome: {welcome}")
            self.peer_id = welcome.get("peerId")

    def send_raw(self, payload):
        if isinstance(payload, str):
            payload = payload.encode()
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x81, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x81, 0x80 | 127, n)
        self.sock.sendall(head + b"\0\0\0\0" + payload)

    def send(self, obj):
        self.send_raw(json.dumps(obj, separators=(",", ":")))

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise Closed("eof")
            self.buf += chunk

    def recv_frame(self):
        """(opcode, payload) of the next complete frame; pings are answered."""
        while True:
            self._need(2)
            b0, b1 = self.buf[0], self.buf[1]
            n, at = b1 & 0x7F, 2
            if n == 126:
                self._need(4)
                n, at = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                self._need(10)
                n, at = struct.unpack("!Q", self.buf[2:10])[0], 10
            self._need(at + n)
            payload, self.buf = self.buf[at:at + n], self.buf[at + n:]
            op = b0 & 0x0F
            if op == 0x9:
                self.sock.sendall(struct.pack("!BB", 0x8A, 0x80 | len(payload)) + b"\0\0\0\0"
                                  + payload)
                continue
            if op == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                raise Closed(f"close {self.close_code}")
            return op, payload

    def recv_json(self):
        while True:
            op, payload = self.recv_frame()
            if op == 0x1:
                return json.loads(payload)

    def recv_json_until(self, deadline):
        self.sock.settimeout(max(0.01, deadline - time.time()))
        try:
            return self.recv_json()
        except socket.timeout:
            return None

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def connect_many(n, addr, **kw):
    out = []
    for _ in range(n):
        out.append(WS(addr, **kw))
    return out


def replies(ws, count, deadline):
    """Counts acks and errors (by code) until `count` replies, the deadline or a close."""
    acks, errors, seen = 0, {}, 0
    try:
        while seen < count and time.time() < deadline:
            frame = ws.recv_json_until(deadline)
            if frame is None:
                break
            if frame.get("type") == "ack":
                acks += 1
                seen += 1
            elif frame.get("type") == "error":
                errors[frame.get("code")] = errors.get(frame.get("code"), 0) + 1
                seen += 1
    except Closed:
        errors[f"close {ws.close_code}"] = errors.get(f"close {ws.close_code}", 0) + 1
    except OSError as e:
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    return acks, errors


def merge(total, part):
    for k, v in part.items():
        total[k] = total.get(k, 0) + v
    return total


def fmt_counts(d):
    return ",".join(f"{k}:{v}" for k, v in sorted(d.items(), key=lambda kv: str(kv[0]))) or "-"


def secs(v):
    return "n/a" if v is None else f"{v:.2f}s"


# ---------------------------------------------------------------- attacks


def crafted_wildcard(i):
    return f"**{i}*{'a' * 70}/**{'b' * 70}**{'c' * 40}*/*x*a*"


def lookalike_channel(i):
    return f"{i}{'a' * 80}/{'b' * 80}{'c' * 50}/x"


def attack_wildcard(ctx):
    """1. 100 connections x 100 distinct crafted wildcards, then 8 publishes to a lookalike."""
    h = Herald(ctx, "wildcard")
    conns = connect_many(100, h.addr, key=PK_ALL)
    for c, ws in enumerate(conns):
        for i in range(100):
            ws.send({"type": "subscribe", "channel": crafted_wildcard(c * 100 + i),
                     "requestId": f"s{i}"})
    acks, errors = 0, {}
    deadline = time.time() + 30
    for ws in conns:
        a, e = replies(ws, 100, deadline)
        acks += a
        merge(errors, e)
    publisher = WS(h.addr, key=PK_ALL)
    probe = HealthProbe(h.addr)
    time.sleep(0.2)
    cpu0, started = cpu_seconds(h.pid), time.time()
    for i in range(8):
        publisher.send({"type": "publish", "channel": lookalike_channel(i), "data": {"n": i},
                        "requestId": f"p{i}"})
    pub_acks, pub_err = replies(publisher, 8, time.time() + 30)
    publish_wall = time.time() - started
    cpu = cpu_seconds(h.pid) - cpu0
    health = probe.stop()
    closed_at = time.time()
    for ws in conns:
        ws.close()
    after_close = healthz_time(h.addr)
    recovered = time.time() - closed_at
    ctx.report("1 wildcard", [
        ("subscribes acked", acks), ("refused", fmt_counts(errors)),
        ("publish acks", f"{pub_acks}/8 {fmt_counts(pub_err)}"),
        ("CPU per publish", f"{cpu / 8:.3f}s"), ("8 publishes wall", secs(publish_wall)),
        ("healthz max", secs(health)),
        ("healthz after disconnect", secs(after_close if after_close is None else recovered)),
    ])
    publisher.close()
    h.stop()


def start_redis(ctx):
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx.procs.append(proc)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


def attack_redis(ctx):
    """2. A flood published on node A at the rate limit to subscribers on node B."""
    if not shutil.which("redis-server"):
        ctx.report("2 redis", [("skipped", "no redis-server")])
        return
    redis, rport = start_redis(ctx)
    settings = {"engine.kind": "redis", "engine.redis_url": f"redis://127.0.0.1:{rport}/0"}
    a = Herald(ctx, "redis-a", dict(settings, **{"engine.node_id": "a"}))
    b = Herald(ctx, "redis-b", dict(settings, **{"engine.node_id": "b"}))
    # On B: 2 subscribers that read (and discard) everything, 16 that never read.
    readers = [WS(b.addr, key=PK_ALL) for _ in range(2)]
    sleepers = [WS(b.addr, key=PK_ALL, rcvbuf=4096) for _ in range(16)]
    for ws in readers + sleepers:
        ws.send({"type": "subscribe", "channel": "flood/1", "requestId": "s"})
    calm_sub = WS(b.addr, key=PK_ALL)
    calm_sub.send({"type": "subscribe", "channel": "calm/1", "requestId": "s"})
    time.sleep(0.5)
    stop = threading.Event()

    drained = [0]

    def drain(ws):
        ws.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                chunk = ws.sock.recv(1 << 20)
                if not chunk:
                    return
                drained[0] += len(chunk)
            except socket.timeout:
                continue
            except OSError:
                return

    threads = [threading.Thread(target=drain, args=(ws,), daemon=True) for ws in readers]
    latencies, sent = {}, {}

    def calm_reader():
        calm_sub.sock.settimeout(0.5)
        while not stop.is_set():
            try:
                frame = calm_sub.recv_json()
            except socket.timeout:
                continue
            except (Closed, OSError, ValueError):
                return
            if frame.get("type") == "message" and isinstance(frame.get("data"), dict):
                n = frame["data"].get("n")
                if n in sent:
                    latencies[n] = time.time() - sent[n]

    threads.append(threading.Thread(target=calm_reader, daemon=True))
    attackers = [WS(a.addr, key=PK_ALL) for _ in range(30)]
    calm_pub = WS(a.addr, key=PK_ALL)
    for t in threads:
        t.start()
    debug("redis setup done")
    rss0 = rss_mb(b.pid)
    blob = "x" * 8000
    frame = json.dumps({"type": "publish", "channel": "flood/1", "data": {"blob": blob}},
                       separators=(",", ":")).encode()
    frame = struct.pack("!BBH", 0x81, 0x80 | 126, len(frame)) + b"\0\0\0\0" + frame
    flood_errors = {}
    for ws in attackers:
        ws.sock.settimeout(2)

    def flood(seconds):
        """Each attacker: 150 of its burst of 200 at once, then 9 frames every 100 ms (90/s,
        just under the limit, so that timer jitter does not get it closed for its rate)."""
        end = time.time() + seconds
        first = True
        while time.time() < end and not stop.is_set():
            tick = time.time()
            for ws in attackers:
                if ws.sock.fileno() < 0:
                    continue
                try:
                    ws.sock.sendall(frame * (150 if first else 9))
                except OSError as e:
                    flood_errors[type(e).__name__] = flood_errors.get(type(e).__name__, 0) + 1
                    ws.close()
            first = False
            time.sleep(max(0, 0.1 - (time.time() - tick)))

    flooder = threading.Thread(target=flood, args=(40,), daemon=True)
    started = time.time()
    flooder.start()
    rss_max, n = rss0, 0
    while time.time() - started < 10:
        sent[n] = time.time()
        try:
            calm_pub.send({"type": "publish", "channel": "calm/1", "data": {"n": n}})
        except OSError:
            pass
        n += 1
        rss_max = max(rss_max, rss_mb(b.pid))
        time.sleep(0.2)
    rss_end = rss_mb(b.pid)
    flooders_alive = sum(1 for ws in attackers if alive(ws))
    delivered_mb = drained[0] / len(readers) / 1e6
    sleepers_alive = sum(1 for ws in sleepers if alive(ws))
    # Unrelated messages: the slowest delivered, and how long the undelivered have waited.
    time.sleep(1.0)
    delivered = len(latencies)
    slowest = max(latencies.values()) if latencies else None
    waiting = [time.time() - sent[k] for k in sent if k not in latencies]
    debug(f"flood phase done; errors {flood_errors}")
    exit_time = b.sigterm_exit_time(30)
    debug("B exited or cap")
    stop.set()
    flooder.join(5)
    for ws in attackers + readers + sleepers + [calm_pub, calm_sub]:
        ws.close()
    ctx.report("2 redis", [
        ("B RSS before", f"{rss0:.0f}MB"), ("B RSS max", f"{rss_max:.0f}MB"),
        ("B RSS at 10s", f"{rss_end:.0f}MB"),
        ("flood MB per reader", f"{delivered_mb:.0f}"), ("flooders alive", f"{flooders_alive}/{len(attackers)}"),
        ("non-readers alive", f"{sleepers_alive}/{len(sleepers)}"),
        ("unrelated delivered", f"{delivered}/{len(sent)}"),
        ("unrelated slowest", secs(slowest)),
        ("undelivered waited", f">{max(waiting):.1f}s" if waiting else "-"),
        ("B exit after SIGTERM", secs(exit_time) if exit_time is not None else ">30s"),
    ])
    debug("reported")
    a.stop()
    b.stop()
    redis.kill()
    redis.wait()


def half_requests(addr, n, source="127.0.0.1"):
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind((source, 0))
        s.connect(addr)
        s.sendall(b"GET /v1?key=pk HTT")
        s.setblocking(False)
        socks.append(s)
    return socks


def still_open(socks):
    """Sockets the server has not closed (a read would block)."""
    n = 0
    for s in socks:
        if s.fileno() < 0:
            continue
        try:
            if s.recv(4096) == b"":
                s.close()
                continue
            n += 1  # an answer (e.g. a 408) but still open
        except BlockingIOError:
            n += 1
        except OSError:
            s.close()
    return n


def attack_slowloris(ctx):
    """3. 300 sockets with half a request line: how long they stay; SIGTERM with them open."""
    h = Herald(ctx, "slowloris")
    started = time.time()
    socks = half_requests(h.addr, 300)
    all_closed = None
    health = HealthProbe(h.addr, every=0.2)
    while time.time() - started < 30:
        if still_open(socks) == 0:
            all_closed = time.time() - started
            break
        time.sleep(0.25)
    left = still_open(socks)
    health_max = health.stop()
    for s in socks:
        s.close()
    h.stop()
    h2 = Herald(ctx, "slowloris-term")
    socks = half_requests(h2.addr, 300)
    time.sleep(1)
    exit_time = h2.sigterm_exit_time(30)
    for s in socks:
        s.close()
    ctx.report("3 half request", [
        ("300 half-open sockets", f"all closed after {all_closed:.1f}s" if all_closed is not None
         else f"{left} open at 30s"),
        ("healthz max", secs(health_max)),
        ("exit after SIGTERM", secs(exit_time) if exit_time is not None else ">30s"),
    ])
    h2.stop()


def attack_snapshots(ctx):
    """4. Repeated subscribe snapshots of a big roster, and big directs, to non-readers."""
    h = Herald(ctx, "snapshots")
    meta = {"bio": "m" * 3900}
    # Members hold no presence action, so they get no presence frames themselves.
    members = []
    for i in range(300):
        tok = jwt(f"member-{i:03d}", permissions=["subscribe"], peerMetadata=meta)
        ws = WS(h.addr, token=tok)
        ws.send({"type": "subscribe", "channel": "room/big", "requestId": "s"})
        members.append(ws)
    for ws in members:
        replies(ws, 1, time.time() + 10)
    attackers = [WS(h.addr, token=jwt(f"snooper-{i}"), rcvbuf=4096) for i in range(2)]
    time.sleep(0.5)
    rss0 = rss_mb(h.pid)
    started = time.time()
    for ws in attackers:
        for i in range(64):
            try:
                ws.send({"type": "subscribe", "channel": "room/big", "requestId": f"r{i}"})
            except OSError:
                break
    rss_max = rss0
    while time.time() - started < 10:
        rss_max = max(rss_max, rss_mb(h.pid))
        time.sleep(0.1)
    rss_end = rss_mb(h.pid)
    closed = sum(1 for ws in attackers if not alive(ws))
    for ws in attackers + members:
        ws.close()
    time.sleep(0.5)
    # Directs of about 75 KB (64 KB data + 4 KB fromMetadata + envelope) to one non-reader.
    target = WS(h.addr, token=jwt("target"), rcvbuf=4096)
    senders = [WS(h.addr, token=jwt(f"sender-{i}", peerMetadata=meta)) for i in range(6)]
    data = "d" * 65000
    frame = json.dumps({"type": "send", "to": "target", "data": data}, separators=(",", ":"))
    time.sleep(0.3)
    drss0 = rss_mb(h.pid)
    started = time.time()
    sent = 0

    def send_share(ws, count):
        nonlocal sent
        for k in range(count):
            if k and k % 90 == 0:
                time.sleep(1.0)  # stay under the 100/s rate limit
            try:
                ws.send_raw(frame)
                sent += 1
            except OSError:
                return

    threads = [threading.Thread(target=send_share, args=(ws, 184), daemon=True) for ws in senders]
    for t in threads:
        t.start()
    drss_max = drss0
    while time.time() - started < 12 and any(t.is_alive() for t in threads):
        drss_max = max(drss_max, rss_mb(h.pid))
        time.sleep(0.1)
    time.sleep(0.5)
    drss_max = max(drss_max, rss_mb(h.pid))
    target_alive = alive(target)
    for ws in senders + [target]:
        ws.close()
    ctx.report("4 snapshots", [
        ("RSS before", f"{rss0:.0f}MB"), ("RSS growth 2x64 subscribes (max)",
                                           f"+{rss_max - rss0:.0f}MB"),
        ("growth at 10s", f"+{rss_end - rss0:.0f}MB"), ("snoopers closed", f"{closed}/2"),
        ("directs sent", sent), ("RSS growth directs (max)", f"+{drss_max - drss0:.0f}MB"),
        ("target still connected", target_alive),
    ])
    h.stop()


def alive(ws, cap=16 << 20):
    """True unless the server closed the socket. Reads (and drops) what is buffered to find out,
    up to `cap` bytes: a socket with more unread data than that is counted as open."""
    read = 0
    try:
        while read < cap:
            if not select.select([ws.sock], [], [], 0)[0]:
                return True
            chunk = ws.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            if not chunk:
                return False
            read += len(chunk)
        return True
    except (BlockingIOError, socket.timeout):
        return True
    except (OSError, ValueError):
        return False


def attack_scope(ctx):
    """5. Subscribe-time scope checks of crafted patterns against a `fleet/*/telemetry` key."""
    h = Herald(ctx, "scope", apps=default_apps(pk_patterns=("fleet/*/telemetry", "fleet/*/status"),
                                                pk_actions=("subscribe", "publish")))
    alphabet = [chr(0x100 + i) for i in range(100)]
    conns = [WS(h.addr, key=PK_ALL) for _ in range(2)]
    probe = HealthProbe(h.addr)
    time.sleep(0.2)
    cpu0, started = cpu_seconds(h.pid), time.time()
    for c, ws in enumerate(conns):
        for i in range(100):
            if i % 2 == 0:
                # 58 distinct literals each behind `**`: the costliest shape found for the
                # unbounded check (a wildcard-count bound refuses it outright).
                body = "".join(f"**{alphabet[(i + c * 7 + k) % 100]}" for k in range(58))
                channel = f"fleet/{body}*/telemetry"
            else:
                # Within a wildcard-count bound of 8: 60 distinct literals in one segment.
                body = "".join(alphabet[(i + c + k) % 100] for k in range(60))
                channel = f"fleet/*{body}*a*b*c*d*e*/telemetry"
            try:
                ws.send({"type": "subscribe", "channel": channel, "requestId": f"s{i}"})
            except OSError:
                break  # closed by the server: its replies below say why
    acks, errors = 0, {}
    deadline = time.time() + 30
    for ws in conns:
        a, e = replies(ws, 100, deadline)
        acks += a
        merge(errors, e)
    wall = time.time() - started
    cpu = cpu_seconds(h.pid) - cpu0
    health = probe.stop()
    ctx.report("5 scope check", [
        ("acked", acks), ("refused", fmt_counts(errors)), ("server CPU", f"{cpu:.2f}s"),
        ("wall", secs(wall)), ("healthz max", secs(health)),
    ])
    for ws in conns:
        ws.close()
    h.stop()


def attack_deep_json(ctx):
    """6. A publish whose data nests 5,000 levels deep."""
    h = Herald(ctx, "deep")
    sub = WS(h.addr, key=PK_ALL)
    sub.send({"type": "subscribe", "channel": "deep/1", "requestId": "s"})
    replies(sub, 1, time.time() + 5)
    pub = WS(h.addr, key=PK_ALL)
    data = "[" * 5000 + "]" * 5000
    pub.send_raw('{"type":"publish","channel":"deep/1","requestId":"p","data":' + data + "}")
    outcome = "?"
    try:
        frame = pub.recv_json_until(time.time() + 5)
        outcome = ("no reply" if frame is None else
                   frame.get("type") + (f" {frame.get('code')}" if frame.get("code") else ""))
    except Closed:
        outcome = f"close {pub.close_code}"
    # Python's json module cannot parse 5,000 levels either: look at the raw frame.
    received = False
    sub.sock.settimeout(2)
    try:
        while not received:
            op, payload = sub.recv_frame()
            received = op == 0x1 and b'"type":"message"' in payload
    except (Closed, OSError):
        pass
    ctx.report("6 deep JSON", [("publisher got", outcome), ("subscriber received", received)])
    pub.close()
    sub.close()
    h.stop()


def attack_scoped_key(ctx):
    """7. A `public/*` publish-only secret key against the admin and REST endpoints."""
    scoped = {"id": "sk_id_scoped", "secret": "sk_secret_scoped-0123456789abcdefghij",
              "channel_patterns": ["public/*"], "actions": ["publish"]}
    h = Herald(ctx, "scoped", apps=default_apps(extra_sks=[scoped]))
    victim = WS(h.addr, token=jwt("victim"))
    victim.send({"type": "subscribe", "channel": "room/x", "requestId": "s"})
    replies(victim, 1, time.time() + 5)
    auth = {"Authorization": f"Bearer {scoped['id']}:{scoped['secret']}"}
    roster, _ = http_request(h.addr, "GET", "/admin/api/channels/room%2Fx", auth)
    listing, _ = http_request(h.addr, "GET", "/admin/api/connections", auth)
    peer, _ = http_request(h.addr, "GET", "/admin/api/peers/victim", auth)
    kick, body = http_request(h.addr, "DELETE", "/v1/peers/victim", auth)
    time.sleep(0.3)
    ctx.report("7 scoped key", [
        ("roster room/x", roster), ("list connections", listing), ("peer lookup", peer),
        ("kick", kick), ("victim still connected", alive(victim)),
    ])
    victim.close()
    h.stop()


def attack_dev_token(ctx):
    """8. Dev mode: ask /dev/token for the id of a connected peer."""
    h = Herald(ctx, "dev", dev_mode=True)
    with open(h.dev_keys) as f:
        keys = json.load(f)
    victim_tok = jwt("u-victim", secret=keys["secret"], kid=keys["secretKeyId"])
    victim = WS(h.addr, token=victim_tok)
    status, body = http_request(h.addr, "POST", "/dev/token",
                                {"Content-Type": "application/json"},
                                json.dumps({"username": "mallory", "peerId": "u-victim"}))
    minted = "no"
    try:
        token = json.loads(body).get("token", "")
        payload = token.split(".")[1]
        sub = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"]
        minted = "yes, for u-victim" if sub == "u-victim" else f"no (got {sub})"
    except (ValueError, IndexError, KeyError, AttributeError):
        pass
    ctx.report("8 dev token", [("status", status), ("token for the victim's id", minted)])
    victim.close()
    h.stop()


def attack_per_ip(ctx):
    """9. Per-source concurrent socket cap, from 127.0.0.2, with the loopback exemption off."""
    h = Herald(ctx, "per-ip", {"limits.connect_limit_exempt_loopback": False})
    socks = []
    for _ in range(300):
        s = socket.socket()
        s.bind(("127.0.0.2", 0))
        try:
            s.connect(h.addr)
        except OSError:
            s.close()
            continue
        s.setblocking(False)
        socks.append(s)
    time.sleep(1.5)
    open_ = still_open(socks)
    other = None
    try:
        s = socket.create_connection(h.addr, timeout=5, source_address=("127.0.0.3", 0))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        other = s.recv(64).split(b"\r\n", 1)[0].decode(errors="replace")
        s.close()
    except OSError as e:
        other = type(e).__name__
    ctx.report("9 per-IP sockets", [
        ("127.0.0.2 sockets open of 300", open_), ("127.0.0.3 /healthz", other),
        ("note", "IPv6 /64 rotation not testable on loopback"),
    ])
    for s in socks:
        s.close()
    h.stop()


ATTACKS = {
    "wildcard": attack_wildcard, "redis": attack_redis, "slowloris": attack_slowloris,
    "snapshots": attack_snapshots, "scope": attack_scope, "deep": attack_deep_json,
    "scopedkey": attack_scoped_key, "devtoken": attack_dev_token, "perip": attack_per_ip,
}


class Context:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.keys = known_keys(binary)
        self.unknown = set()
        self.procs = []

    def report(self, name, figures):
        line = f"{name:<18} " + "; ".join(f"{k}={v}" for k, v in figures)
        print(line, flush=True)

    def cleanup(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    parser = argparse.ArgumentParser(description="Replays the attacks of issue 11.")
    parser.add_argument("--herald", required=True)
    parser.add_argument("--only", default=",".join(ATTACKS))
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    for n in names:
        if n not in ATTACKS:
            sys.exit(f"unknown attack {n}; known: {', '.join(ATTACKS)}")
    # `timeout` sends SIGTERM: unwind, so the servers started are stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = tempfile.mkdtemp(prefix="herald-attacks-")
    ctx = Context(os.path.abspath(args.herald), work)
    version = subprocess.run([ctx.binary, "--version"], capture_output=True, text=True).stdout
    print(f"# {version.strip()} ({ctx.binary}); load average {os.getloadavg()[0]:.2f} "
          f"{os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}; {os.cpu_count()} cores", flush=True)
    try:
        for n in names:
            started = time.time()
            try:
                ATTACKS[n](ctx)
            except Exception as e:  # one attack's failure must not hide the others' figures
                print(f"{n:<18} FAILED: {type(e).__name__}: {e}", flush=True)
            finally:
                ctx.cleanup()
            print(f"#   {n}: {time.time() - started:.1f}s, load {os.getloadavg()[0]:.2f}",
                  flush=True)
        if ctx.unknown:
            print(f"# keys this binary does not know (left out): {', '.join(sorted(ctx.unknown))}")
    finally:
        ctx.cleanup()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
