"""Issue 13's connection flood: open N idle connections to a running `--server`
(started here on loopback), then time /health and a short completion, and report
the server's threads and RSS. Prints figures; asserts nothing.

    python bench/bench_connections.py [N]        # default 15000
"""

import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.models import smollm2  # noqa: E402
from tests.procfs import status_fields  # noqa: E402
from tests.server_process import ServerProcess, read_events, send_raw  # noqa: E402


def server_state(pid):
    f = status_fields(pid, ("Threads", "VmRSS"))
    return f"threads {f.get('Threads', 0) // 1024}, RSS {f.get('VmRSS', 0) / 2**20:.0f} MB"


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 15000
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    srv = ServerProcess(smollm2(), "-c", "256", "--metrics", "-t", "1")
    try:
        pid = srv.proc.pid
        print(f"server idle: {server_state(pid)}")
        body = {"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}
        for i in range(2):
            (status, reply), dt = timed(lambda: srv.post("/completion", body))
            print(f"completion (8 tokens) before: {status} in {dt * 1000:.0f} ms")
        socks = []
        t0 = time.perf_counter()
        for _ in range(n):
            socks.append(socket.create_connection(("127.0.0.1", srv.port)))
        print(f"{n} idle connections opened in {time.perf_counter() - t0:.1f} s")
        time.sleep(1)
        print(f"with them: {server_state(pid)}")
        (status, _), dt = timed(lambda: srv.get("/health"))
        print(f"/health: {status} in {dt * 1000:.0f} ms")
        (status, reply), dt = timed(lambda: srv.post("/completion", body))
        print(f"completion (8 tokens): {status} in {dt * 1000:.0f} ms: "
              f"{json.dumps(reply.get('content'))}")
        for s in socks:
            s.close()
        time.sleep(1)
        (status, _), dt = timed(lambda: srv.get("/health"))
        print(f"after closing them: /health {status} in {dt * 1000:.0f} ms, "
              f"{server_state(pid)}")
        health_under_generation(srv)
    finally:
        srv.stop()


def health_under_generation(srv):
    """/health while a long generation streams on the only slot."""
    body = json.dumps({"prompt": "Once upon a time", "n_predict": 200, "stream": True,
                       "ignore_eos": True}).encode()
    conn = send_raw(srv.port, b"POST /completion HTTP/1.1\r\nHost: x\r\n", body)
    read_events(conn, 2)
    times = []
    for _ in range(20):
        (status, _), dt = timed(lambda: srv.get("/health"))
        assert status == 200
        times.append(dt * 1000)
        time.sleep(0.05)
    conn.close()
    times.sort()
    print(f"/health during a 200-token generation: median {times[10]:.1f} ms, "
          f"max {times[-1]:.1f} ms (20 calls)")


if __name__ == "__main__":
    main()
