"""A local HTTP file server for download tests (127.0.0.1 only), with faults to order.

It serves files under `root` the way OpenAI's blob store does: Content-Length, a base64
Content-MD5 of the whole file, byte ranges, and HEAD (recorded in `heads`). `faults` bends that per file name:
    statuses:   {name: [500, 500]}  answer these codes first, one per request
    drop_after: {name: n}           cut the connection once the file's first n bytes are sent
                                    (on every request: a resumed one gets no further)
    trickle:    {name: seconds}     send the body 16 KiB at a time, pausing this long in between
    no_range:   True                ignore Range headers (send the whole file, 200)
    bad_md5:    {name}              advertise a wrong Content-MD5
"""
import base64
import hashlib
import http.server
import os
import re
import threading
import time


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass

    def do_HEAD(self):
        server = self.server
        server.heads.append(self.path)
        path = os.path.join(server.root, self.path.lstrip("/"))
        if ".." in self.path or not os.path.isfile(path):
            self.send_error(404)
            return
        with open(path, "rb") as f:
            md5 = hashlib.md5(f.read()).digest()
        self.send_response(200)
        self.send_header("Content-MD5", base64.b64encode(md5).decode())
        self.send_header("Content-Length", str(os.path.getsize(path)))
        self.end_headers()

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
        start = self.send_head(name, data)
        if start is not None:
            self.send_body(name, data[start:], start)

    def send_head(self, name, data):
        """The status and headers for the whole file or the range asked for; the offset the body
        starts at, or None if the range cannot be served."""
        server = self.server
        md5 = hashlib.md5(data + (b"x" if name in server.faults.get("bad_md5", ()) else b"")).digest()
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and not server.faults.get("no_range"):
            start = int(match[1])
            if start >= len(data):
                self.send_error(416)
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("x-ms-blob-content-md5", base64.b64encode(md5).decode())
        else:
            self.send_response(200)
            self.send_header("Content-MD5", base64.b64encode(md5).decode())
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        return start

    def send_body(self, name, body, start):
        """The body, cut off or trickled as the faults say."""
        server = self.server
        cut = server.faults.get("drop_after", {}).get(name)
        if cut is not None:
            body = body[:max(0, cut - start)]
        pause = server.faults.get("trickle", {}).get(name)
        step = 16 << 10 if pause else len(body) or 1
        for i in range(0, len(body), step):
            self.wfile.write(body[i:i + step])
            if pause:
                self.wfile.flush()
                time.sleep(pause)
        if cut is not None:
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that hangs up mid-file is what these tests do on purpose


def serve(root, faults=None):
    """Start serving `root` on a free port of 127.0.0.1 in a thread. Returns the server, whose
    .url is the base URL, .requests lists (path, Range) of the GETs received, .heads the paths
    of the HEADs, and .faults can be changed."""
    server = Server(("127.0.0.1", 0), Handler)
    server.root, server.faults, server.requests, server.heads = str(root), faults or {}, [], []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()  # quick to shut down
    return server
