"""A local HTTP file server for download tests (127.0.0.1 only), with faults to order.

It serves files under `root` the way OpenAI's blob store does: Content-Length, a base64
Content-MD5 of the whole file, and byte ranges. `faults` bends that per file name:
    statuses:   {name: [500, 500]}  answer these codes first, one per request
    drop_after: {name: n}           send n bytes of the body, then cut the connection
    no_range:   True                ignore Range headers (send the whole file, 200)
    bad_md5:    {name}              advertise a wrong Content-MD5
"""
import base64
import hashlib
import http.server
import os
import re
import threading


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_GET(self):
        server = self.server
        name = os.path.basename(self.path)
        server.requests.append((self.path, self.headers.get("Range")))
        path = os.path.join(server.root, self.path.lstrip("/"))
        statuses = server.faults.get("statuses", {}).get(name)
        if statuses:
            self.send_error(statuses.pop(0))
            return
        if ".." in self.path or not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            data = f.read()
        md5 = hashlib.md5(data + (b"x" if name in server.faults.get("bad_md5", ()) else b"")).digest()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not server.faults.get("no_range"):
            start = int(match[1])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("x-ms-blob-content-md5", base64.b64encode(md5).decode())
        else:
            self.send_response(200)
            self.send_header("Content-MD5", base64.b64encode(md5).decode())
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = server.faults.get("drop_after", {}).get(name)
        self.wfile.write(body if cut is None else body[:cut])
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


def serve(root, faults=None):
    """Start serving `root` on a free port of 127.0.0.1 in a thread. Returns the server, whose
    .url is the base URL, .requests lists (path, Range) received, and .faults can be changed."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.root, server.faults, server.requests = str(root), faults or {}, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
