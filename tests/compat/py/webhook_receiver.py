"""A webhook receiver that misbehaves on purpose, for crates/server/tests/webhooks.rs.

It listens on 127.0.0.1 (a free port, printed as `listening <port>`), and for each POST:
  - about FAIL (default 0.30, 30 %) of requests get a 500 without being looked at;
  - about 5 % more (when FAIL > 0) are held for HOLD seconds (past Herald's timeout) and then
    accepted;
  - every other request is verified with the Standard Webhooks reference library
    (`standardwebhooks`), and its events are appended to OUT as JSON lines, with the
    webhook-id; a bad signature gets a 400 and a line {"bad_signature": true}.
Usage: webhook_receiver.py SECRET OUT HOLD SEED [FAIL]
"""

import json
import random
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

secret, out_path, hold, seed = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
fail = float(sys.argv[5]) if len(sys.argv) > 5 else 0.30
held = fail + 0.05 if fail > 0 else 0.0
webhook = Webhook(secret)
rng = random.Random(seed)
rng_lock = threading.Lock()
out_lock = threading.Lock()


def record(line):
    with out_lock, open(out_path, "a") as f:
        f.write(json.dumps(line) + "\n")


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        with rng_lock:
            roll = rng.random()
        if roll < fail:
            self.send_response(500)
            self.end_headers()
            return
        if roll < held:
            time.sleep(hold)
        try:
            payload = webhook.verify(body, dict(self.headers))
        except WebhookVerificationError:
            record({"bad_signature": True})
            self.send_response(400)
            self.end_headers()
            return
        for event in payload["events"]:
            record({"webhook_id": self.headers["webhook-id"], "event": event})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(f"listening {server.server_address[1]}", flush=True)
server.serve_forever()
