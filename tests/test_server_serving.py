"""The serving core and the server's life cycle: connection floods, the connection
cap and idle timeout, cheap endpoints beside busy generations, /health for balancers,
/metrics in llama-server's names, the switches of /metrics and /slots, draining on
SIGTERM, and server flags refused with one line."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import pytest

from tests.models import smollm2
from tests.procfs import status_fields
from tests.server_process import REPO, ServerProcess, read_events, read_until_closed, send_raw

MAX_CONNECTIONS = 200
TIMEOUT = 3


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(smollm2(), "-c", "256", "-np", "2", "--queue", "2", "--metrics",
                        "--timeout", str(TIMEOUT), "--max-connections", str(MAX_CONNECTIONS))
    yield srv
    assert srv.stop() == 0, "".join(srv.log)


def threads_of(pid):
    return status_fields(pid, ("Threads",))["Threads"] // 1024


def open_stream(port, n_predict, prompt="Once upon a time"):
    """A streamed /completion that has started generating (two events read)."""
    body = json.dumps({"prompt": prompt, "n_predict": n_predict, "stream": True,
                       "temperature": 0, "ignore_eos": True}).encode()
    conn = send_raw(port, b"POST /completion HTTP/1.1\r\nHost: x\r\n", body)
    read_events(conn, 2)
    return conn


def closed_by_peer(sock, wait):
    sock.settimeout(wait)
    try:
        return sock.recv(1) == b""
    except socket.timeout:
        return False
    except OSError:
        return True


def test_idle_connections_cost_no_threads_and_the_cap_evicts_the_oldest(server):
    threads = threads_of(server.proc.pid)
    socks = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(600)]
    try:
        time.sleep(0.5)
        assert threads_of(server.proc.pid) == threads     # no thread per connection
        # Past the cap the longest-idle connections were closed to make room...
        assert closed_by_peer(socks[0], 5) and closed_by_peer(socks[100], 5)
        assert server.metric("connections_open") <= MAX_CONNECTIONS
        assert not closed_by_peer(socks[-1], 0.2)         # the newest are still open
        # ... so new clients are still served, generations included.
        assert server.get("/health")[0] == 200
        status, reply = server.post("/completion", {"prompt": "Hello", "n_predict": 2})
        assert status == 200 and reply["tokens_predicted"] == 2
    finally:
        for s in socks:
            s.close()


def test_silent_connections_are_closed_after_the_timeout(server):
    idle = socket.create_connection(("127.0.0.1", server.port))
    partial = send_raw(server.port, b"GET /health HTTP/1.1\r\nHost")   # a head never finished
    kept = socket.create_connection(("127.0.0.1", server.port))
    kept.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")          # keep-alive, then silent
    kept.settimeout(10)
    reply = b""
    while not reply.endswith(b"}"):        # the whole answer: head, then the JSON body
        reply += kept.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200")
    t0 = time.monotonic()
    for s in (idle, partial, kept):
        assert closed_by_peer(s, TIMEOUT + 30)
        s.close()
    assert time.monotonic() - t0 >= TIMEOUT - 1.5
    print(f"closed after {time.monotonic() - t0:.1f} s")


def test_cheap_endpoints_answer_while_every_slot_generates(server):
    streams = [open_stream(server.port, 200, prompt) for prompt in ("Once upon a time",
                                                                    "The weather today")]
    try:
        _, slots = server.get("/slots")
        assert all(s["is_processing"] for s in slots)
        assert server.get("/health")[0] == 200
        assert server.get("/health?fail_on_no_slot=1")[0] == 503   # a balancer goes elsewhere
        assert server.get("/slots?fail_on_no_slot=1")[0] == 503
        assert server.metric("requests_processing") == 2
        assert server.metric("slots_idle") == 0
    finally:
        for s in streams:
            s.close()
    deadline = time.monotonic() + 60
    while server.get("/health?fail_on_no_slot=1")[0] != 200:
        assert time.monotonic() < deadline, "the slots stayed busy after their clients left"
        time.sleep(0.2)


def test_metrics_in_llama_server_names(server):
    before = {k: server.metric(k) for k in ("prompt_tokens_total", "prompt_tokens_cached_total",
                                            "tokens_predicted_total")}
    status, r = server.post("/completion", {"prompt": "the quick brown fox", "n_predict": 3,
                                            "temperature": 0})
    assert status == 200
    with urllib.request.urlopen(server.url + "/metrics", timeout=30) as resp:
        text = resp.read().decode()
        assert 0 < int(resp.headers["Process-Start-Time-Unix"]) <= time.time()
    for name in ("prompt_tokens_total", "prompt_tokens_cached_total", "prompt_seconds_total",
                 "tokens_predicted_total", "tokens_predicted_seconds_total", "n_decode_total",
                 "n_tokens_max"):
        assert f"# TYPE llamacpp:{name} counter" in text and f"# HELP llamacpp:{name} " in text
    for name in ("prompt_tokens_seconds", "predicted_tokens_seconds", "requests_processing",
                 "requests_deferred", "n_busy_slots_per_decode"):
        assert f"# TYPE llamacpp:{name} gauge" in text and f"# HELP llamacpp:{name} " in text
    after = {k: server.metric(k) for k in before}
    assert after["prompt_tokens_total"] - before["prompt_tokens_total"] == r["timings"]["prompt_n"]
    assert (after["prompt_tokens_cached_total"] - before["prompt_tokens_cached_total"]
            == r["timings"]["cache_n"])
    assert after["tokens_predicted_total"] - before["tokens_predicted_total"] == 3
    assert server.metric("n_decode_total") > 0
    assert server.metric("n_tokens_max") >= r["tokens_evaluated"] + 3 - 1
    assert server.metric("requests_processing") == 0


def test_endpoints_switched_off_answer_501():
    srv = ServerProcess(smollm2(), "-c", "128", "--no-slots")
    try:
        for path in ("/metrics", "/slots"):
            status, body = srv.get(path)
            assert status == 501 and body["error"]["type"] == "not_supported_error", body
        assert srv.get("/health")[0] == 200
    finally:
        assert srv.stop() == 0


def test_sigterm_drains_in_flight_requests_then_exits_0():
    srv = ServerProcess(smollm2(), "-c", "256", "-np", "2", "--drain-timeout", "120")
    try:
        stream = open_stream(srv.port, 160)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert srv.proc.poll() is None                      # still finishing the stream
        status, body = srv.get("/health")
        assert status == 503
        status, body = srv.post("/completion", {"prompt": "Hi", "n_predict": 2})
        assert status == 503 and "shutting down" in body["error"]["message"]
        rest = read_until_closed(stream)
        events = [json.loads(line[6:]) for line in rest.decode().split("\n")
                  if line.startswith("data: ")]
        assert events[-1]["stop"] is True and events[-1]["tokens_predicted"] > 2
        assert srv.proc.wait(60) == 0
        assert any("draining" in line for line in srv.log)
    finally:
        srv.stop()


def test_drain_timeout_cuts_long_requests_and_second_sigint_is_immediate():
    srv = ServerProcess(smollm2(), "-c", "4096", "--drain-timeout", "1")
    try:
        stream = open_stream(srv.port, -1)
        srv.proc.send_signal(signal.SIGTERM)
        assert srv.proc.wait(60) == 0
        stream.close()
        assert any("drain timeout" in line for line in srv.log)
    finally:
        srv.stop()
    srv = ServerProcess(smollm2(), "-c", "256", "--drain-timeout", "120")
    try:
        stream = open_stream(srv.port, -1)
        srv.proc.send_signal(signal.SIGINT)
        time.sleep(1.0)
        assert srv.proc.poll() is None
        srv.proc.send_signal(signal.SIGINT)
        assert srv.proc.wait(30) == 130
        stream.close()
    finally:
        srv.stop()


@pytest.mark.parametrize("flags, named", [
    (["--timeout", "nan"], "--timeout nan"),
    (["--timeout", "0"], "--timeout 0"),
    (["--drain-timeout", "-1"], "--drain-timeout -1"),
    (["--drain-timeout", "inf"], "--drain-timeout inf"),
    (["--threads-http", "0"], "--threads-http 0"),
    (["--max-connections", "0"], "--max-connections 0"),
    (["--port", "99999"], "--port 99999"),
])
def test_bad_server_flags_are_one_line_and_exit_2(flags, named):
    r = subprocess.run([sys.executable, "-m", "runtime", "-m", smollm2(), "--server",
                        "--port", "0"] + flags, cwd=REPO, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], r.stderr


def test_model_truncated_under_the_server_is_an_error_not_a_crash(tmp_path):
    model = tmp_path / "model.gguf"
    shutil.copyfile(smollm2(), model)
    srv = ServerProcess(str(model), "-c", "128", "--backend", "c")
    try:
        status, r = srv.post("/completion", {"prompt": "Hello", "n_predict": 2})
        assert status == 200
        os.truncate(model, os.path.getsize(model) // 2)    # weights' second half gone
        status, r = srv.post("/completion", {"prompt": "Goodbye", "n_predict": 2})
        assert status == 500 and "truncated" in r["error"]["message"], r
        assert srv.proc.poll() is None                      # still up, and says why
        status, r = srv.get("/health")
        assert status == 503 and "truncated" in r["error"]["message"]
        status, r = srv.post("/completion", {"prompt": "Hello", "n_predict": 2})
        assert status == 503 and "restart" in r["error"]["message"]
    finally:
        assert srv.stop() == 0


def test_a_long_prompt_does_not_stall_another_slot():
    """The compute lock is taken in turn: a 400-token prompt, read in 32-token
    chunks, lets the other slot's decode steps in between its chunks."""
    srv = ServerProcess(smollm2(), "-c", "1024", "-np", "2", "-b", "32", "-t", "1")
    try:
        stream = open_stream(srv.port, -1)
        arrivals = []
        stop = threading.Event()

        def watch():
            stream.settimeout(120)
            while not stop.is_set():
                try:
                    data = stream.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                arrivals.extend([time.monotonic()] * data.count(b"data: "))

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t0 = time.monotonic()
        status, r = srv.post("/completion", {"prompt": "tea and " * 200, "n_predict": 1},
                             timeout=600)
        t1 = time.monotonic()
        stop.set()
        stream.close()
        watcher.join(10)
        assert status == 200 and r["timings"]["prompt_n"] > 320
        prefill = r["timings"]["prompt_ms"] / 1000
        during = [t for t in arrivals if t0 <= t <= t1]
        gaps = [b - a for a, b in zip([t0] + during, during + [t1])]
        # ~12 chunks: the other stream moved on between them, not only after the prompt
        assert len(during) >= 5, (len(during), prefill)
        assert max(gaps) < prefill / 3, (max(gaps), prefill)
    finally:
        srv.stop()
