"""A tiny HTTP app for the ops walkthrough: `/` says which release answers, `/health` is 200
unless the release carries a file named BROKEN. Listens on 127.0.0.1:$PORT."""

import json
import os
import pathlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = pathlib.Path(__file__).resolve().parent
VERSION_FILE = HERE / "VERSION"
VERSION = VERSION_FILE.read_text().strip() if VERSION_FILE.exists() else "dev"
BROKEN = (HERE / "BROKEN").exists()


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            status = 500 if BROKEN else 200
            body = {"status": "broken" if BROKEN else "ok"}
        else:
            status = 200
            body = {"app": "sample", "version": VERSION, "pid": os.getpid()}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, fmt, *args):
        print("%s %s" % (self.address_string(), fmt % args), flush=True)


if __name__ == "__main__":
    port = int(os.environ.get("PORT", "8080"))
    print("sample app %s listening on 127.0.0.1:%d" % (VERSION, port), flush=True)
    ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
