"""An app server from Python's standard library (`http.server`), an
implementation independent of hyper for the plain-HTTP forwarding tests.

Prints `listening on PORT` once bound to 127.0.0.1:0, then serves until
its standard input closes. Every request is answered `200` with a body of
lines: `method M`, `path P`, `body N` (bytes read), then `header name:
value` for each header it got; HTTP/1.1 with keep-alive.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        lines = [f"method {self.command}", f"path {self.path}", f"body {len(body)}"]
        lines += [f"header {k.lower()}: {v}" for k, v in self.headers.items()]
        out = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(out)))
        self.send_header("X-App", "python")
        self.end_headers()
        self.wfile.write(out)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


main()
