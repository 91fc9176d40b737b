#!/usr/bin/env python3
"""Closed-loop fan-out probe: N subscribers, one publisher, one publish in flight at a time.

Each publish is sent only after every subscriber received the previous one, so every delivery
meets an idle connection (the moderate-load regime: one wake-up, one write per delivery).
Prints the deliveries made; a profiler attached to the server divides its counts by them.

usage: fanout_probe.py HOST:PORT SUBSCRIBERS PUBLISHES [--wait-file F]
"""
import base64, os, selectors, socket, struct, sys, time

addr, subs, pubs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
wait_file = sys.argv[5] if len(sys.argv) > 5 and sys.argv[4] == "--wait-file" else None
host, port = addr.rsplit(":", 1)
port = int(port)


def mask_frame(text):
    payload = text.encode()
    key = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, 0x80 | n)
    else:
        head = struct.pack("!BBH", 0x81, 0x80 | 126, n)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def connect():
    s = socket.create_connection((host, port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        (f"GET /v1?key=pk_bench HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n"
         f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert b" 101 " in head.split(b"\r\n")[0], head
    return s, rest


class Reader:
    def __init__(self, sock, rest):
        self.sock, self.buf, self.texts = sock, rest, []
        self.parse()

    def feed(self):
        data = self.sock.recv(65536)
        if not data:
            raise SystemExit("server closed")
        self.buf += data
        self.parse()

    def parse(self):
        while len(self.buf) >= 2:
            b0, b1 = self.buf[0], self.buf[1]
            n, off = b1 & 0x7F, 2
            if n == 126:
                if len(self.buf) < 4:
                    return
                n, off = struct.unpack("!H", self.buf[2:4])[0], 4
            elif n == 127:
                if len(self.buf) < 10:
                    return
                n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
            if len(self.buf) < off + n:
                return
            payload, self.buf = self.buf[off:off + n], self.buf[off + n:]
            if b0 & 0x0F == 1:
                self.texts.append(payload)


def wait_for(reader, pred):
    while True:
        for i, t in enumerate(reader.texts):
            if pred(t):
                del reader.texts[: i + 1]
                return t
        reader.feed()


readers = []
for i in range(subs + 1):
    s, rest = connect()
    r = Reader(s, rest)
    wait_for(r, lambda t: b'"welcome"' in t)
    readers.append(r)
pub, subr = readers[0], readers[1:]
for i, r in enumerate(subr):
    r.sock.sendall(mask_frame('{"type":"subscribe","channel":"probe","requestId":"s%d"}' % i))
    wait_for(r, lambda t: b'"ack"' in t)
    wait_for(r, lambda t: b'"presence' in t or b'snapshot' in t)
# Drain presence deltas of later joiners.
time.sleep(0.5)
for r in readers:
    r.sock.setblocking(False)
    try:
        while True:
            r.feed()
    except BlockingIOError:
        pass
    r.texts.clear()
    r.sock.setblocking(True)

if wait_file:
    print("ready", flush=True)
    while not os.path.exists(wait_file):
        time.sleep(0.1)

sel = selectors.DefaultSelector()
for r in subr:
    sel.register(r.sock, selectors.EVENT_READ, r)
payload = "x" * 40
start = time.time()
for p in range(pubs):
    pub.sock.sendall(mask_frame(
        '{"type":"publish","channel":"probe","data":"%s%04d"}' % (payload, p)))
    pending = set(range(len(subr)))
    got = {i: False for i in pending}
    index = {id(r): i for i, r in enumerate(subr)}
    while pending:
        for key, _ in sel.select():
            r = key.data
            r.feed()
            if r.texts:
                i = index[id(r)]
                if any(b'"message"' in t for t in r.texts):
                    pending.discard(i)
                r.texts.clear()
elapsed = time.time() - start
print(f"deliveries {pubs * subs} in {elapsed:.2f}s ({pubs * subs / elapsed:.0f}/s)", flush=True)
