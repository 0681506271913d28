"""`--server` end to end: the real server on loopback, driven by the official `openai`
client, raw HTTP, and hostile requests. One server (4 slots) serves the whole module."""

import json
import random
import socket
import threading
import time

import pytest

from runtime.json_schema import validate
from tests.models import smollm2
from tests.server_process import ServerProcess, read_events, read_until_closed, send_raw

openai = pytest.importorskip("openai")

KEY = "test-key-123"
N_SLOTS = 4
N_CTX = 512


@pytest.fixture(scope="module")
def server():
    # -c is shared by the slots, as llama-server's: each gets N_CTX
    srv = ServerProcess(smollm2(), "-c", str(N_CTX * N_SLOTS), "-np", str(N_SLOTS), "--queue", "8",
                        "--metrics", "--timeout", "3", api_key=KEY)
    yield srv
    assert srv.stop() == 0, "".join(srv.log)        # SIGTERM shuts down cleanly


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0, timeout=300)


def wait_idle(server, seconds=60):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _, slots = server.get("/slots")
        if slots and not any(s["is_processing"] for s in slots):
            return slots
        time.sleep(0.2)
    raise AssertionError(f"slots still busy: {slots}")


# ---------------------------------------------------------------- the OpenAI API

def test_models(client):
    models = client.models.list().data
    assert len(models) == 1 and models[0].id


def test_chat(client):
    r = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "What is the capital of France?"}],
        max_tokens=6, temperature=0)
    choice = r.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content.strip()
    assert choice.finish_reason in ("stop", "length")
    assert 0 < r.usage.completion_tokens <= 6
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streamed(client):
    stream = client.chat.completions.create(
        model="x", messages=[{"role": "system", "content": "You are terse."},
                             {"role": "user", "content": "Name a colour."}],
        max_tokens=5, temperature=0, stream=True, stream_options={"include_usage": True})
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            text += c.delta.content or ""
            finish = c.finish_reason or finish
    assert text.strip()
    assert finish in ("stop", "length")
    assert usage is not None and 0 < usage.completion_tokens <= 5


def test_completion(client):
    r = client.completions.create(model="x", prompt="The capital of France is", max_tokens=3,
                                  temperature=0)
    assert "Paris" in r.choices[0].text
    assert r.usage.completion_tokens <= 3


def test_completion_streamed_matches_stop(client):
    stream = client.completions.create(model="x", prompt="1, 2, 3, 4,", max_tokens=8,
                                       temperature=0, stop=["7"], stream=True)
    text = "".join(c.choices[0].text for c in stream if c.choices)
    assert "7" not in text and text.strip().startswith("5")


def test_embeddings(client):
    r = client.embeddings.create(model="x", input=["hello world", "a cat"])
    assert [d.index for d in r.data] == [0, 1]
    for d in r.data:
        assert len(d.embedding) == 576
        assert abs(sum(v * v for v in d.embedding) - 1.0) < 1e-3
    assert r.data[0].embedding != r.data[1].embedding
    assert r.usage.prompt_tokens > 0
    floats = client.embeddings.create(model="x", input="hello world", encoding_format="float")
    assert max(abs(a - b) for a, b in zip(floats.data[0].embedding, r.data[0].embedding)) < 1e-5


SCHEMA = {
    "type": "object",
    "properties": {
        "colour": {"enum": ["red", "green", "blue"]},
        "name": {"type": "string", "maxLength": 12},
        "count": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["colour", "name", "count", "tags"],
}


def test_json_schema_output(client):
    r = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Describe a ball as JSON."}],
        max_tokens=80, temperature=0.7, seed=3,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "ball", "schema": SCHEMA, "strict": True}})
    assert r.choices[0].finish_reason == "stop"
    value = json.loads(r.choices[0].message.content)
    assert validate(value, SCHEMA) == []


def test_json_object_output(server):
    status, r = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Give a JSON object with a key 'a'."}],
        "max_tokens": 60, "temperature": 0, "response_format": {"type": "json_object"}})
    assert status == 200
    content = r["choices"][0]["message"]["content"]
    if r["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(content), dict)
    else:   # out of tokens: still a valid beginning of an object
        assert content.lstrip().startswith("{")


def test_openai_errors(client):
    bad = openai.OpenAI(base_url=client.base_url, api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                       n=0)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="x", prompt="hi " * (N_CTX + 10), max_tokens=1)
    assert "context" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="x", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=10 ** 9)


# ---------------------------------------------------------------- llama.cpp endpoints

def test_health_is_open(server):
    status, body = server.request("GET", "/health", headers={"Authorization": ""})
    assert status == 200 and body == {"status": "ok"}


def test_completion_endpoint(server):
    status, ids = server.post("/tokenize", {"content": "The capital of France is"})
    assert status == 200
    status, r = server.post("/completion", {"prompt": ids["tokens"], "n_predict": 3,
                                            "temperature": 0, "return_tokens": True})
    assert status == 200
    assert r["stop"] is True and r["tokens_predicted"] == len(r["tokens"]) <= 3
    assert r["timings"]["predicted_per_second"] > 0 and "prompt_per_second" in r["timings"]
    status, text = server.post("/detokenize", {"tokens": r["tokens"]})
    assert status == 200 and text["content"] == r["content"]


def test_completion_endpoint_streamed(server):
    body = json.dumps({"prompt": "Hello", "n_predict": 3, "stream": True, "temperature": 0,
                       "return_tokens": True}).encode()
    conn = send_raw(server.port, b"POST /completion HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                    + KEY.encode() + b"\r\nContent-Type: application/json\r\n", body)
    raw = read_until_closed(conn)
    head, _, events = raw.partition(b"\r\n\r\n")
    assert b"text/event-stream" in head
    chunks = [json.loads(line[6:]) for line in events.decode().split("\n") if line.startswith("data: ")]
    assert chunks[-1]["stop"] is True and "timings" in chunks[-1]
    assert sum(len(c.get("tokens", [])) for c in chunks[:-1]) == chunks[-1]["tokens_predicted"]


def test_metrics_and_slots(server):
    status, text = server.request("GET", "/metrics")
    assert status == 200
    assert "llamacpp:tokens_predicted_total" in text and "# TYPE" in text
    assert server.metric("tokens_predicted_total") > 0
    assert server.metric("slots_total") == N_SLOTS
    status, slots = server.request("GET", "/slots")
    assert status == 200 and len(slots) == N_SLOTS


def test_page_is_served(server):
    status, page = server.request("GET", "/")
    assert status == 200
    assert "<textarea" in page and "/v1/chat/completions" in page
    assert "http://" not in page and "https://" not in page     # nothing fetched from outside


# ---------------------------------------------------------------- load and disconnects

def test_load_8_clients(server):
    """8 clients x 10 requests on 4 slots: every answer complete, none lost."""
    failures, answers = [], []

    def client_loop(i):
        for j in range(10):
            try:
                status, r = server.post("/v1/completions", {
                    "prompt": "Once upon a time", "max_tokens": 2, "temperature": 0.5,
                    "seed": i * 100 + j})
                if status != 200 or r["choices"][0]["finish_reason"] not in ("stop", "length"):
                    failures.append((status, r))
                else:
                    answers.append(r)
            except Exception as e:      # the test reports it, with the rest
                failures.append(repr(e))

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert failures == []
    assert len(answers) == 80
    for r in answers:
        assert r["usage"]["completion_tokens"] <= 2
        assert r["choices"][0]["finish_reason"] == "length" or r["usage"]["completion_tokens"] < 2
    wait_idle(server)


def test_disconnect_frees_slot(server):
    before = server.metric("client_disconnects_total")
    body = json.dumps({"messages": [{"role": "user", "content": "Tell me a long story."}],
                       "max_tokens": 400, "stream": True}).encode()
    conn = send_raw(server.port, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                    b"Authorization: Bearer " + KEY.encode() + b"\r\n", body)
    read_events(conn, 3)                 # the role chunk and two pieces of text
    conn.close()
    t0 = time.monotonic()
    slots = wait_idle(server, 30)
    assert time.monotonic() - t0 < 30
    assert server.metric("client_disconnects_total") == before + 1
    assert all(s["state"] == "idle" for s in slots)


# ---------------------------------------------------------------- hostile requests

def raw_request(port, data, read_timeout=10):
    """Send bytes, return (status, parsed JSON body) of the reply, or (None, None)."""
    conn = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        conn.sendall(data)
        raw = b""
        while b"\r\n\r\n" not in raw:
            chunk = conn.recv(65536)
            if not chunk:
                break
            raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        if not head:
            return None, None
        status = int(head.split(b" ", 2)[1])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            k, _, v = line.partition(b":")
            if k.strip().lower() == b"content-length":
                length = int(v)
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
        return status, json.loads(rest[:length].decode())
    finally:
        conn.close()


def post_bytes(path, body, key=KEY, extra=b""):
    return (b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
            + key.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n" + extra + b"\r\n" + body)


def hostile_requests():
    rng = random.Random(7)
    reqs = []
    paths = ["/v1/chat/completions", "/v1/completions", "/completion", "/v1/embeddings",
             "/tokenize", "/detokenize"]
    # malformed JSON
    for body in [b"{", b"}", b"{\"messages\": [", b"nul", b"[1, 2", b"{'a': 1}", b"\"str",
                 b"{\"a\": 1,}", b"{\"a\" 1}", b"[" * 100000, b"\x00\x01\x02", b"   ",
                 b"{\"prompt\": \"x\"} trailing", b"NaN", b"1e99999x"]:
        for path in paths:
            reqs.append(("bad json", post_bytes(path, body)))
    # JSON but not an object
    for body in [b"[]", b"1", b"\"text\"", b"null", b"true"]:
        for path in paths:
            reqs.append(("not an object", post_bytes(path, body)))
    # invalid UTF-8
    for _ in range(12):
        junk = bytes(rng.randrange(0x80, 0x100) for _ in range(rng.randrange(1, 40)))
        reqs.append(("bad utf-8", post_bytes(rng.choice(paths), b"{\"prompt\": \"" + junk + b"\"}")))
    # wrong types and values
    msgs = [{"role": "user", "content": "hi"}]
    wrong = [
        {"messages": "hi"}, {"messages": []}, {"messages": [1]}, {"messages": [{"role": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}]},
        {"messages": msgs, "max_tokens": "10"}, {"messages": msgs, "max_tokens": -5},
        {"messages": msgs, "max_tokens": 0}, {"messages": msgs, "max_tokens": 10 ** 12},
        {"messages": msgs, "max_tokens": 1.5}, {"messages": msgs, "max_tokens": True},
        {"messages": msgs, "temperature": "hot"}, {"messages": msgs, "temperature": -1},
        {"messages": msgs, "temperature": 1e308 * 10}, {"messages": msgs, "top_p": 2},
        {"messages": msgs, "stream": "yes"}, {"messages": msgs, "stop": 5},
        {"messages": msgs, "stop": [1, 2]}, {"messages": msgs, "n": 0},
        {"messages": msgs, "seed": "x"}, {"messages": msgs, "presence_penalty": 9},
        {"messages": msgs, "frequency_penalty": []}, {"messages": msgs, "top_logprobs": 3},
        {"messages": msgs, "logprobs": True, "top_logprobs": 50},
        {"messages": msgs, "logprobs": "yes"}, {"messages": msgs, "logit_bias": 5},
        {"messages": msgs, "logit_bias": {"1": "x"}}, {"messages": msgs, "logit_bias": [[1]]},
        {"messages": msgs, "logit_bias": {"99999999": 1}},
        {"messages": msgs, "grammar": "root ::= this is (not valid GBNF"},
        {"messages": msgs, "grammar": 5}, {"messages": msgs, "grammar": "r ::= \"a\""},
        {"messages": msgs, "grammar": "root ::= \"a\"", "json_schema": {}},
        {"messages": msgs, "json_schema": {"required": 5}},
        {"messages": msgs, "json_schema": {"enum": 5}},
        {"messages": msgs, "json_schema": {"type": "string", "minLength": "a"}},
        {"messages": msgs, "json_schema": {"type": "array", "items": 5}},
        {"messages": msgs, "json_schema": {"properties": [{"a": 1}]}},
        {"messages": msgs, "json_schema": {"type": "array", "maxItems": "3"}},
        {"messages": msgs, "json_schema": {"enum": [str(i) for i in range(30000)]}},
        {"messages": [{"role": "user", "content": "a\ud800b"}]},
        {"messages": msgs, "stop": ["\udfff"]}, {"messages": msgs, "user": "\ud800"},
        {"messages": msgs, "tools": [{"type": "function"}]},
        {"messages": msgs, "response_format": "json"},
        {"messages": msgs, "response_format": {"type": "xml"}},
        {"messages": msgs, "response_format": {"type": "json_schema", "json_schema": 3}},
        {"messages": msgs, "response_format": {"type": "json_schema",
                                               "json_schema": {"schema": {"type": "martian"}}}},
        {"messages": msgs, "response_format": {"type": "json_schema",
                                               "json_schema": {"schema": {"$ref": "#/nope"}}}},
        {"messages": msgs, "stream_options": 1}, {"messages": msgs, "model": 3},
        {"messages": [{"role": "user", "content": "hi " * (N_CTX + 5)}]},
    ]
    for body in wrong:
        reqs.append(("wrong type", post_bytes("/v1/chat/completions",
                                              json.dumps(body).encode())))
    for body in [{}, {"prompt": 5}, {"prompt": []}, {"prompt": [-1]}, {"prompt": [10 ** 9]},
                 {"prompt": ["a", 5.5]}, {"prompt": [1.5]}, {"prompt": ""},
                 {"prompt": "hi", "max_tokens": 10 ** 9}, {"prompt": "hi", "echo": True},
                 {"prompt": "hi", "best_of": 2}, {"prompt": [[1], []]}]:
        reqs.append(("completions", post_bytes("/v1/completions", json.dumps(body).encode())))
    for body in [{}, {"prompt": None}, {"prompt": {"a": 1}}, {"prompt": "hi", "n_predict": "x"},
                 {"prompt": "hi", "top_k": "x"}, {"prompt": "hi", "min_p": 7},
                 {"prompt": "hi", "json_schema": {"type": "nope"}},
                 {"prompt": "hi", "stream": 1}, {"prompt": "hi", "return_tokens": "no"}]:
        reqs.append(("/completion", post_bytes("/completion", json.dumps(body).encode())))
    for body in [{}, {"input": 5}, {"input": []}, {"input": [[]]}, {"input": [-4]},
                 {"input": "x", "encoding_format": "hex"}, {"input": ["x"] * 100}]:
        reqs.append(("embeddings", post_bytes("/v1/embeddings", json.dumps(body).encode())))
    for body in [{}, {"content": 1}, {"content": "x", "add_special": "y"}]:
        reqs.append(("tokenize", post_bytes("/tokenize", json.dumps(body).encode())))
    for body in [{}, {"tokens": "1 2"}, {"tokens": [1, "a"]}, {"tokens": [99999999]}]:
        reqs.append(("detokenize", post_bytes("/detokenize", json.dumps(body).encode())))
    # oversized bodies: refused from the header, before reading
    for size in (8 << 20 | 1, 1 << 30, 10 ** 15):
        head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + KEY.encode() + b"\r\nContent-Length: " + str(size).encode() + b"\r\n\r\n{")
        reqs.append(("oversized", head))
    for value in (b"abc", b"-5"):
        reqs.append(("bad length", b"POST /completion HTTP/1.1\r\nHost: x\r\nAuthorization: "
                     b"Bearer " + KEY.encode() + b"\r\nContent-Length: " + value + b"\r\n\r\n"))
    # unknown paths, wrong methods, no or wrong key
    for path in ["/nope", "/v2/chat", "/v1/chat/completions/x", "/../../etc/passwd", "/%00",
                 "/v1/models/extra", "/" + "a" * 2000, "/completion/x", "/favicon.ico"]:
        reqs.append(("unknown path", b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n"))
    for method, path in [("GET", "/v1/chat/completions"), ("DELETE", "/v1/models"),
                         ("PUT", "/completion"), ("PATCH", "/tokenize"), ("POST", "/health")]:
        reqs.append(("wrong method", method.encode() + b" " + path.encode() + b" HTTP/1.1\r\n"
                     b"Host: x\r\nAuthorization: Bearer " + KEY.encode()
                     + b"\r\nContent-Length: 0\r\n\r\n"))
    for key in ["", "wrong", KEY + "x", "Bearer"]:
        for path in paths[:3]:
            reqs.append(("bad key", post_bytes(path, b"{}", key=key)))
    reqs.append(("bad request line", b"GARBAGE\r\n\r\n"))
    reqs.append(("bad version", b"GET / HTTP/9.9\r\n\r\n"))
    reqs.append(("huge header", b"GET /health HTTP/1.1\r\nX: " + b"a" * 70000 + b"\r\n\r\n"))
    return reqs


def test_hostile_requests(server):
    reqs = hostile_requests()
    assert len(reqs) >= 200
    # Slow clients hold connections open the whole time.
    slow = []
    for i in range(4):
        s = socket.create_connection(("127.0.0.1", server.port))
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                  b"Authorization: Bearer " + KEY.encode() + b"\r\n\r\n{\"pro" if i % 2
                  else b"POST /v1/comp")
        slow.append(s)
    bad = []
    for what, data in reqs:
        status, body = raw_request(server.port, data)
        ok = (status is not None and 400 <= status < 500 and isinstance(body, dict)
              and isinstance(body.get("error"), dict) and body["error"].get("message"))
        if not ok:
            bad.append((what, data[:80], status, body))
    assert bad == []
    status, body = server.get("/health")
    assert status == 200
    # A client silent mid-body gets 408 once --timeout (3 s) passes; one silent in its
    # headers is dropped. Neither holds up anyone else.
    time.sleep(3.5)
    for i, s in enumerate(slow):
        s.settimeout(5)
        try:
            reply = s.recv(65536)
        except OSError:
            reply = b""
        if i % 2:
            assert b" 408 " in reply.split(b"\r\n")[0]
        s.close()
    assert server.get("/health")[0] == 200
    wait_idle(server)
