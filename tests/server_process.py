"""Start `llamazip --server` on loopback for tests and benchmarks, and stop it."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send_raw(port, head, body=b"", timeout=120):
    """Connect to the server on loopback and send an HTTP request as raw bytes: `head`
    (request line and headers, each ending in CRLF; Content-Length is added when there
    is a body) and `body`. Returns the open socket."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    if body:
        head += b"Content-Length: " + str(len(body)).encode() + b"\r\n"
    conn.sendall(head + b"\r\n" + body)
    return conn


def read_until_closed(conn):
    """Everything the server sends until it closes the connection."""
    raw = b""
    while True:
        data = conn.recv(65536)
        if not data:
            break
        raw += data
    conn.close()
    return raw


def read_events(conn, count):
    """Read a streamed reply until `count` SSE events ("data: ") have arrived."""
    got = b""
    while got.count(b"data: ") < count:
        data = conn.recv(4096)
        assert data, "the stream ended early"
        got += data
    return got


class ServerProcess:
    def __init__(self, model, *flags, api_key=None, load_seconds=300):
        cmd = [sys.executable, "-m", "runtime", "-m", model, "--server", "--host", "127.0.0.1",
               "--port", "0", "--nobrowser"] + list(flags)
        if api_key:
            cmd += ["--api-key", api_key]
        self.api_key = api_key
        env = dict(os.environ, PYTHONPATH=REPO)
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        self.log = []
        self.port = None
        found = threading.Event()

        def read_stderr():
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace")
                self.log.append(line)
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)/", line)
                if m:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        threading.Thread(target=read_stderr, daemon=True).start()
        try:
            if not found.wait(60) or self.port is None:
                raise RuntimeError("the server did not start:\n" + "".join(self.log))
            self.url = f"http://127.0.0.1:{self.port}"
            deadline = time.monotonic() + load_seconds
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError("the server exited:\n" + "".join(self.log))
                status, _ = self.get("/health")
                if status == 200:
                    return
                time.sleep(0.5)
            raise RuntimeError("the model did not load in time:\n" + "".join(self.log))
        except BaseException:
            self.stop()
            raise

    def request(self, method, path, body=None, headers=None, timeout=120):
        """(status, parsed JSON or text) of one request."""
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"}
        if self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        h.update(headers or {})
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                status, raw, kind = r.status, r.read(), r.headers.get("Content-Type", "")
        except urllib.error.HTTPError as e:
            status, raw, kind = e.code, e.read(), e.headers.get("Content-Type", "")
        text = raw.decode("utf-8", "replace")
        return status, json.loads(text) if "json" in kind else text

    def get(self, path, **kw):
        try:
            return self.request("GET", path, **kw)
        except OSError:
            return None, None

    def post(self, path, body, **kw):
        return self.request("POST", path, body, **kw)

    def metric(self, name):
        """A figure of /metrics by name (llama-server's llamacpp: ones, then our own)."""
        _, text = self.request("GET", "/metrics")
        for line in text.splitlines():
            for prefix in ("llamacpp:", "llamazip:"):
                if line.startswith(f"{prefix}{name} ") or line.startswith(f"{prefix}{name}{{"):
                    return float(line.rsplit(" ", 1)[1])
        raise KeyError(name)

    def stop(self, timeout=20):
        """SIGTERM, as a service manager would; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode
