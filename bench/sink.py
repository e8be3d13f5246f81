"""Loopback HTTP peer for the benchmark: PUT reads and discards the body
(chunked or sized), GET serves files from the directory given as argv[1].
Prints its port on the first line."""
import http.server
import os
import sys


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def __init__(self, *a, **kw):
        super().__init__(*a, directory=sys.argv[1], **kw)

    def log_message(self, *a):
        pass

    def do_PUT(self):
        total = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                left = size
                while left:
                    left -= len(self.rfile.read(min(left, 1 << 20)))
                self.rfile.readline()
                total += size
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                n = len(self.rfile.read(min(left, 1 << 20)))
                if n == 0:
                    break
                left -= n
                total += n
        body = str(total).encode()
        self.send_response(201)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()
