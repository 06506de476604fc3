#!/usr/bin/env python3
"""A stand-in Datadog intake for benchmarks: accepts every POST on 127.0.0.1.

In: `intake.py PORT SUMMARY_FILE [MAX_SECONDS]`. It answers 202 to every POST,
decodes gzip/deflate bodies of /api/v2/series, and sums the points of
`dynostat.lines` and `dynostat.packets` (value x interval, since they are
RATEs), so the benchmark can compare what dynostat says it received with what
was sent.
Out: SUMMARY_FILE, rewritten as one JSON object after every request.
Never: listens on anything but 127.0.0.1, or runs longer than MAX_SECONDS
(default 3600).
"""

import gzip
import json
import sys
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORT = int(sys.argv[1])
SUMMARY = sys.argv[2]
MAX_SECONDS = float(sys.argv[3]) if len(sys.argv) > 3 else 3600.0

lock = threading.Lock()
state = {"requests": 0, "bytes": 0, "series_points": 0, "lines": 0.0, "packets": 0.0, "by_path": {}}


def decode(body, encoding):
    if encoding == "gzip":
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    return body


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        path = self.path.split("?")[0]
        lines = packets = 0.0
        points = 0
        if path == "/api/v2/series":
            try:
                doc = json.loads(decode(body, self.headers.get("Content-Encoding")))
                for s in doc.get("series", []):
                    pts = s.get("points", [])
                    points += len(pts)
                    interval = s.get("interval") or 1
                    if s.get("metric") == "dynostat.lines":
                        lines += sum(p.get("value", 0) for p in pts) * interval
                    elif s.get("metric") == "dynostat.packets":
                        packets += sum(p.get("value", 0) for p in pts) * interval
            except (OSError, ValueError, zlib.error):
                pass
        with lock:
            state["requests"] += 1
            state["bytes"] += n
            state["series_points"] += points
            state["lines"] += lines
            state["packets"] += packets
            state["by_path"][path] = state["by_path"].get(path, 0) + 1
            with open(SUMMARY, "w") as f:
                json.dump(state, f)
        self.send_response(202)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    timer = threading.Timer(MAX_SECONDS, server.shutdown)
    timer.daemon = True
    timer.start()
    server.serve_forever()


if __name__ == "__main__":
    main()
