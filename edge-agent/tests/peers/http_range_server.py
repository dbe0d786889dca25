#!/usr/bin/env python3
"""Serves one file over HTTP with Range support, cutting the first N transfers short, for the
edge-agent's resumable-download test.

  http_range_server.py --file F --port P [--cut-first N] [--cut-at BYTES]

stdout, one line per request, flushed:  GET path range=<Range header or ->
"""
import argparse
import http.server
import os
import socketserver

args = None
cuts_left = 0


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def do_GET(self):
        global cuts_left
        rng = self.headers.get("Range")
        print(f"GET {self.path} range={rng or '-'}", flush=True)
        with open(args.file, "rb") as f:
            data = f.read()
        start = 0
        if rng and rng.startswith("bytes="):
            start = int(rng[6:].split("-")[0])
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        if cuts_left > 0:
            cuts_left -= 1
            # Promise the whole body, deliver part of it, drop the connection.
            self.wfile.write(body[: args.cut_at])
            self.wfile.flush()
            self.connection.shutdown(2)
            self.close_connection = True
            return
        self.wfile.write(body)


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--file", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--cut-first", type=int, default=0)
    ap.add_argument("--cut-at", type=int, default=1000)
    args = ap.parse_args()
    cuts_left = args.cut_first
    assert os.path.exists(args.file)
    Server(("127.0.0.1", args.port), Handler).serve_forever()
