"""Slots and the wait queue: one slot, room for one waiting request, then 503."""

import json
import threading
import time

from tests.models import smollm2
from tests.server_process import ServerProcess, read_events, read_until_closed, send_raw


def open_stream(port, max_tokens):
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": max_tokens,
                       "stream": True, "temperature": 0.8}).encode()
    conn = send_raw(port, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n", body)
    read_events(conn, 2)
    return conn


def test_queue_then_503_and_cors_default():
    srv = ServerProcess(smollm2(), "-c", "128", "-np", "1", "--queue", "1", "--metrics")
    try:
        streaming = open_stream(srv.port, 100)        # holds the only slot
        waited = {}

        def queued():
            waited["reply"] = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1})

        t = threading.Thread(target=queued)
        t.start()
        deadline = time.monotonic() + 30
        while srv.metric("requests_deferred") < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert srv.metric("requests_deferred") == 1
        status, body = srv.post("/v1/completions", {"prompt": "Hi", "max_tokens": 1})
        assert status == 503 and body["error"]["code"] == "server_busy"
        streaming.close()                              # frees the slot for the waiting one
        t.join(120)
        status, body = waited["reply"]
        assert status == 200 and body["choices"][0]["text"] is not None
        assert srv.metric("client_disconnects_total") == 1
        # CORS as llama-server's default: the caller's origin is echoed.
        conn = send_raw(srv.port, b"GET /health HTTP/1.1\r\nHost: x\r\n"
                        b"Origin: http://web.example\r\nConnection: close\r\n", timeout=10)
        reply = read_until_closed(conn)
        assert b" 200 " in reply.split(b"\r\n")[0]
        assert b"access-control-allow-origin: http://web.example" in reply.lower()
    finally:
        assert srv.stop() == 0
