"""Replicas of `llamazip --server` behind HAProxy on loopback, for the tests and the
benchmark: deploy/haproxy.cfg itself, with the replicas' and the frontend's ports
put in, and a stats page to read the servers' states from."""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time

from tests.server_process import REPO, ServerProcess

CONFIG = os.path.join(REPO, "deploy", "haproxy.cfg")


def haproxy_binary():
    return shutil.which("haproxy") or (os.path.exists("/usr/sbin/haproxy") and "/usr/sbin/haproxy")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_replicas(model, n, *flags):
    """n servers on their own loopback ports, started one after another (loading all at
    once on two cores only makes each slower)."""
    replicas = []
    try:
        for _ in range(n):
            replicas.append(ServerProcess(model, "--port", str(free_port()), *flags))
    except BaseException:
        for r in replicas:
            r.stop()
        raise
    return replicas


def haproxy_config(replica_ports, front_port, stats_port):
    """deploy/haproxy.cfg for these ports: replica i takes the place of 127.0.0.1:808{i+1};
    servers beyond the replicas given are removed."""
    with open(CONFIG) as f:
        text = f.read()
    text = text.replace("bind :8080", f"bind 127.0.0.1:{front_port}")
    lines = []
    for line in text.splitlines():
        m = re.search(r"127\.0\.0\.1:808(\d)", line)
        if m:
            i = int(m.group(1)) - 1
            if i >= len(replica_ports):
                continue
            line = line.replace(m.group(0), f"127.0.0.1:{replica_ports[i]}")
        lines.append(line)
    lines += ["", "frontend stats", f"    bind 127.0.0.1:{stats_port}", "    stats enable",
              "    stats uri /stats", ""]
    return "\n".join(lines)


class HAProxy:
    """HAProxy in the foreground with deploy/haproxy.cfg adapted to these replicas."""

    def __init__(self, replica_ports):
        self.port = free_port()
        self.stats_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="llamazip-haproxy-")
        self.config = os.path.join(self.dir, "haproxy.cfg")
        with open(self.config, "w") as f:
            f.write(haproxy_config(replica_ports, self.port, self.stats_port))
        check = subprocess.run([haproxy_binary(), "-c", "-f", self.config],
                               capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy -c refused the config:\n{check.stdout}{check.stderr}")
        self.proc = subprocess.Popen([haproxy_binary(), "-db", "-f", self.config],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.n = len(replica_ports)
        self.wait_up([f"r{i + 1}" for i in range(self.n)], 60)

    def stats(self):
        """{(backend, server): row} from the CSV stats page."""
        conn = http.client.HTTPConnection("127.0.0.1", self.stats_port, timeout=10)
        conn.request("GET", "/stats;csv")
        text = conn.getresponse().read().decode()
        conn.close()
        header, *rows = [line for line in text.splitlines() if line]
        keys = header.lstrip("# ").split(",")
        out = {}
        for row in rows:
            d = dict(zip(keys, row.split(",")))
            out[(d["pxname"], d["svname"])] = d
        return out

    def status(self, backend, server):
        return self.stats()[(backend, server)]["status"]

    def sessions(self, name):
        """Requests HAProxy has sent to replica `name` (its main and backup entries)."""
        st = self.stats()
        return sum(int(st[("llamazip", s)]["stot"] or 0) for s in (name, f"{name}-ready"))

    def in_flight(self, name):
        st = self.stats()
        return sum(int(st[("llamazip", s)]["scur"] or 0) for s in (name, f"{name}-ready"))

    def wait_up(self, names, seconds):
        deadline = time.monotonic() + seconds
        while True:
            try:
                if all(self.status("ready", n) == "UP" for n in names):
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError("haproxy exited:\n" + self.proc.stderr.read().decode())
            if time.monotonic() > deadline:
                raise RuntimeError(f"replicas not UP in HAProxy: {self.stats()}")
            time.sleep(0.2)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def one_request(port, i, n_predict):
    """Request number i through the frontend: even ones a streamed chat completion,
    odd ones a plain /completion. (ok, detail, tokens generated)."""
    stream = i % 2 == 0
    if stream:
        path = "/v1/chat/completions"
        body = {"messages": [{"role": "user", "content": f"Say a word about the number {i}."}],
                "max_tokens": n_predict, "stream": True, "temperature": 0.7, "seed": i}
    else:
        path = "/completion"
        body = {"prompt": f"The number {i} is", "n_predict": n_predict, "temperature": 0.7,
                "seed": i}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
    try:
        conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
        r = conn.getresponse()
        raw = r.read()
    except (OSError, http.client.HTTPException) as e:
        return False, f"{path}: {type(e).__name__}: {e}", 0
    finally:
        conn.close()
    if r.status != 200:
        return False, f"{path}: HTTP {r.status}: {raw[:200]!r}", 0
    try:
        if stream:
            events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
            if not events or events[-1] != "[DONE]":
                return False, f"{path}: stream cut: {raw[-200:]!r}", 0
            chunks = [json.loads(e) for e in events[:-1]]
            if any("error" in c for c in chunks):
                return False, f"{path}: error event: {raw[-300:]!r}", 0
            finish = [c["choices"][0]["finish_reason"] for c in chunks if c.get("choices")]
            if finish[-1] not in ("stop", "length"):
                return False, f"{path}: no finish_reason: {raw[-200:]!r}", 0
            return True, "", sum(1 for c in chunks if c.get("choices") and
                                 c["choices"][0].get("delta", {}).get("content"))
        reply = json.loads(raw)
        if not reply.get("stop") or "content" not in reply:
            return False, f"{path}: not a finished completion: {raw[:200]!r}", 0
        return True, "", reply["tokens_predicted"]
    except (ValueError, KeyError, IndexError) as e:
        return False, f"{path}: bad reply ({e}): {raw[:200]!r}", 0


class Load:
    """`clients` threads, each sending `per_client` requests one after another."""

    def __init__(self, port, clients, per_client, n_predict):
        self.results = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._client, args=(port, c, per_client,
                                                                    n_predict), daemon=True)
                        for c in range(clients)]
        self.t0 = time.monotonic()
        for t in self.threads:
            t.start()

    def _client(self, port, c, per_client, n_predict):
        for k in range(per_client):
            result = one_request(port, c * per_client + k, n_predict)
            with self.lock:
                self.results.append(result)

    def done(self):
        return len(self.results)

    def wait(self, timeout=900):
        for t in self.threads:
            t.join(max(0.0, timeout - (time.monotonic() - self.t0)))
        self.seconds = time.monotonic() - self.t0
        return self.results

    def failures(self):
        return [detail for ok, detail, _ in self.results if not ok]
