"""An auth service from Python's standard library (`http.server`), for the
forward-auth tests: an implementation independent of the proxy's client.

Prints `listening on PORT` once bound to 127.0.0.1:0, then serves until
its standard input closes. `GET /auth` decides on the `session` cookie or
a bearer token: `alice` is answered `200` with `X-User-Id: alice`; any
other is `401` with `WWW-Authenticate` and a JSON body. Every answer says
in `X-Asked` how many requests it got so far.
"""

import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

asked = 0
lock = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        global asked
        with lock:
            asked += 1
            count = asked
        cookies = dict(
            c.strip().split("=", 1)
            for c in (self.headers.get("Cookie") or "").split(";")
            if "=" in c
        )
        token = (self.headers.get("Authorization") or "").removeprefix("Bearer ")
        session = cookies.get("session") or token
        if session == "alice":
            self.send_response(200)
            self.send_header("X-User-Id", "alice")
            body = b""
        else:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Bearer realm="chat"')
            self.send_header("Content-Type", "application/json")
            body = b'{"error":"log in first"}'
        self.send_header("X-Asked", str(count))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"listening on {server.server_address[1]}", flush=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    sys.stdin.read()
    server.shutdown()


main()
