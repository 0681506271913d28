"""The server's structured output and token statistics on SmolLM2: `grammar`,
`json_schema` / `response_format`, compile limits, `logit_bias`, OpenAI `logprobs` and
llama.cpp's `n_probs` / `post_sampling_probs`. One server (2 slots) for the module."""

import json
import math
import subprocess
import sys
import threading

import pytest

from runtime.json_schema import validate
from tests.models import smollm2
from tests.server_process import REPO, ServerProcess, read_until_closed, send_raw
from tests.test_grammar import Recogniser

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def server():
    srv = ServerProcess(smollm2(), "-c", "1024", "-np", "2")
    yield srv
    assert srv.stop() == 0, "".join(srv.log)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0, timeout=300)


def completion_events(server, body):
    """The parsed SSE events of a streamed /completion."""
    head = b"POST /completion HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    raw = read_until_closed(send_raw(server.port, head + b"Connection: close\r\n",
                                     json.dumps(dict(body, stream=True)).encode()))
    return [json.loads(line[6:]) for line in raw.decode().split("\n")
            if line.startswith("data: ") and line[6:].strip() != "[DONE]"]


# ---------------------------------------------------------------- grammars and schemas

LIST = 'root ::= item{2,3}\nitem ::= "- " [a-z ]{1,12} "\\n"'


def test_grammar_on_completion_and_chat(server):
    rec = Recogniser(LIST)
    status, r = server.post("/completion", {"prompt": "Groceries:\n", "grammar": LIST,
                                            "n_predict": 64, "temperature": 0.8, "seed": 5})
    assert status == 200 and rec.check(r["content"].encode()) == "full", r
    assert r["stop_type"] == "eos"
    status, r = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "List two fruits."}], "grammar": LIST,
        "max_tokens": 64, "temperature": 0})
    assert status == 200
    assert rec.check(r["choices"][0]["message"]["content"].encode()) == "full"
    assert r["choices"][0]["finish_reason"] == "stop"


def test_grammar_streamed(server):
    events = completion_events(server, {"prompt": "Groceries:\n", "grammar": LIST,
                                        "n_predict": 64, "temperature": 0})
    text = "".join(e["content"] for e in events)
    assert Recogniser(LIST).check(text.encode()) == "full"


def test_malformed_grammar_is_400_with_position(server):
    status, r = server.post("/completion", {"prompt": "x", "grammar": 'root ::= "a" [b-'})
    assert status == 400 and "line 1, column 14" in r["error"]["message"], r
    status, r = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "x"}], "grammar": "root ::= x y"})
    assert status == 400 and "undefined rule 'x'" in r["error"]["message"], r


SCHEMA = {"type": "object", "properties": {
    "city": {"type": "string", "maxLength": 20}, "population": {"type": "integer", "minimum": 0},
    "coastal": {"type": "boolean"}}, "required": ["city", "population", "coastal"]}


def test_json_schema_everywhere(server, client):
    status, r = server.post("/completion", {"prompt": "A city as JSON:", "json_schema": SCHEMA,
                                            "n_predict": 80, "temperature": 0.7, "seed": 2})
    assert status == 200 and validate(json.loads(r["content"]), SCHEMA) == []
    r = client.chat.completions.create(
        model="x", messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        max_tokens=80, temperature=0.7, seed=4,
        response_format={"type": "json_schema", "json_schema": {"name": "c", "schema": SCHEMA}})
    assert validate(json.loads(r.choices[0].message.content), SCHEMA) == []
    status, r = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Answer."}], "max_tokens": 6,
        "json_schema": {"const": "42"}})
    assert status == 200 and r["choices"][0]["message"]["content"] == '"42"'


def test_schema_compile_limits_leave_other_slots_alone(server):
    """A 20,000-value enum (1.2 MB) is refused with 413 at once, while the other slot
    streams on and a normal request is answered."""
    body = {"prompt": "Pick one:", "n_predict": 4, "json_schema": {
        "enum": [f"value-{i:06d}-" + "x" * 46 for i in range(20000)]}}
    assert len(json.dumps(body)) > 1_000_000
    streamed = []
    t = threading.Thread(target=lambda: streamed.extend(completion_events(
        server, {"prompt": "Once upon a time", "n_predict": 48, "temperature": 0})))
    t.start()
    status, r = server.post("/completion", body)
    assert status == 413 and "too large" in r["error"]["message"], r
    t.join()
    assert sum(1 for e in streamed if not e["stop"]) > 10 and streamed[-1]["stop"]
    status, r = server.post("/completion", {"prompt": "Hi", "n_predict": 2})
    assert status == 200


@pytest.mark.parametrize("schema", [
    {"required": 5}, {"enum": 5}, {"type": "string", "minLength": "a"},
    {"type": "array", "items": 5}, {"properties": [{"a": {}}]}, {"type": "array", "maxItems": "3"},
])
def test_bad_schemas_are_400(server, schema):
    for path, body in [("/completion", {"prompt": "x", "json_schema": schema}),
                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}],
                                                 "response_format": {"type": "json_schema",
                                                                     "json_schema": {
                                                                         "schema": schema}}})]:
        status, r = server.post(path, body)
        assert status == 400 and "schema" in r["error"]["message"], (path, r)


def test_lone_surrogate_is_400(server):
    raw = b'{"prompt": "a\\ud800b", "n_predict": 1}'
    status, r = server.post("/completion", raw)
    assert status == 400 and "surrogate" in r["error"]["message"]
    status, r = server.post("/completion", b'{"prompt": "a\\ud83d\\ude00b", "n_predict": 1}')
    assert status == 200


# ---------------------------------------------------------------- logit_bias

def test_logit_bias_forms(server):
    _, tok = server.post("/tokenize", {"content": " the"})
    the = tok["tokens"][0]
    base = {"prompt": "I think that the", "n_predict": 24, "temperature": 0}
    status, plain = server.post("/completion", dict(base, return_tokens=True))
    assert status == 200
    for bias in ([[the, False]], {str(the): -100}, [[" the", False]], {" the": False}):
        status, r = server.post("/completion", dict(base, logit_bias=bias, return_tokens=True))
        assert status == 200 and the not in r["tokens"], bias
    # a large positive bias makes a token the greedy choice every time
    _, tok = server.post("/tokenize", {"content": " banana"})
    banana = tok["tokens"][0]
    status, r = server.post("/completion", dict(base, n_predict=3, return_tokens=True,
                                                logit_bias={str(banana): 100}))
    assert r["tokens"] == [banana] * 3
    # OpenAI's form on chat
    status, r = server.post("/v1/chat/completions", {
        "messages": [{"role": "user", "content": "Say something."}], "max_tokens": 3,
        "temperature": 0, "logit_bias": {str(banana): 100}})
    assert status == 200 and r["choices"][0]["message"]["content"] == " banana" * 3


# ---------------------------------------------------------------- probabilities

def check_logprob_entry(e, n):
    assert e["logprob"] <= 0.0 and isinstance(e["bytes"], list)
    tops = e["top_logprobs"]
    assert len(tops) == n
    assert all(a["logprob"] >= b["logprob"] for a, b in zip(tops, tops[1:]))
    assert sum(math.exp(t["logprob"]) for t in tops) <= 1.0 + 1e-6
    assert bytes(e["bytes"]).decode("utf-8", "ignore") == e["token"]


def test_chat_logprobs(client):
    kw = dict(model="x", messages=[{"role": "user", "content": "What is the best book?"}],
              max_tokens=8, temperature=0, logprobs=True, top_logprobs=5)
    r = client.chat.completions.create(**kw)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        e = t.model_dump()
        check_logprob_entry(e, 5)
        # greedy: the chosen token is the most likely one
        assert e["top_logprobs"][0]["token"] == e["token"]
        assert e["top_logprobs"][0]["logprob"] == pytest.approx(e["logprob"])
    streamed = []
    text = ""
    for chunk in client.chat.completions.create(stream=True, **kw):
        if chunk.choices and chunk.choices[0].logprobs:
            streamed += chunk.choices[0].logprobs.content
            text += chunk.choices[0].delta.content or ""
    assert [t.token for t in streamed] == [t.token for t in content]
    assert [t.logprob for t in streamed] == pytest.approx([t.logprob for t in content], abs=0.15)
    r = client.chat.completions.create(**dict(kw, top_logprobs=None))
    assert all(t.top_logprobs == [] for t in r.choices[0].logprobs.content)


def test_completion_logprobs_openai(client):
    r = client.completions.create(model="x", prompt="The capital of France is", max_tokens=4,
                                  temperature=0, logprobs=3)
    entries = r.choices[0].logprobs.model_extra["content"]
    assert len(entries) == 4
    for e in entries:
        check_logprob_entry(e, 3)


def test_n_probs(server):
    body = {"prompt": "I believe the meaning of life is", "n_probs": 10, "temperature": 0,
            "n_predict": 5}
    status, r = server.post("/completion", body)
    assert status == 200 and len(r["completion_probabilities"]) == 5
    for e in r["completion_probabilities"]:
        check_logprob_entry(e, 10)
    # streamed: each chunk carries the entries of its own tokens
    events = completion_events(server, dict(body, prompt="The meaning of life is",
                                            return_tokens=True))
    chunks = [e for e in events if not e["stop"]]
    assert sum(len(e["tokens"]) for e in chunks) == 5
    for e in chunks:
        assert [p["id"] for p in e["completion_probabilities"]] == e["tokens"]
        for p in e["completion_probabilities"]:
            check_logprob_entry(p, 10)


def test_post_sampling_probs(server):
    status, r = server.post("/completion", {
        "prompt": "Today was the day. Today I would finally become a", "n_probs": 10,
        "temperature": 1.0, "n_predict": 5, "post_sampling_probs": True, "seed": 3})
    assert status == 200
    for i, e in enumerate(r["completion_probabilities"]):
        assert 0.0 < e["prob"] <= 1.0
        tops = e["top_probs"]
        assert all(0.0 < p["prob"] <= 1.0 for p in tops)
        assert e["id"] in [p["id"] for p in tops] or len(tops) == 10
        if len(tops) < 10:
            assert sum(p["prob"] for p in tops) == pytest.approx(1.0)


# ---------------------------------------------------------------- the command line

def test_cli_grammar_errors_are_one_line():
    for flags, words in [(["--grammar", 'root ::= ("a"'], "line 1, column 10"),
                         (["-j", '{"type": "array", "items": 5}'], "items must be"),
                         (["--grammar-file", "/nonexistent.gbnf"], "cannot read")]:
        p = subprocess.run([sys.executable, "-m", "runtime", "-m", "/nonexistent.gguf",
                            "-p", "x"] + flags, cwd=REPO, capture_output=True, text=True)
        assert p.returncode == 2 and p.stderr.count("\n") == 1 and words in p.stderr, p.stderr


def test_cli_grammar_output():
    p = subprocess.run([sys.executable, "-m", "runtime", "-m", smollm2(), "-p", "Groceries:\n",
                        "-n", "64", "--temp", "0", "-t", "1", "--grammar", LIST], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert Recogniser(LIST).check(p.stdout[:-1].encode()) == "full", p.stdout


def test_cli_token_reference_errors_need_the_vocabulary():
    """<text> must be one token of this model's vocabulary: checked once it is loaded,
    still one line and exit 2."""
    p = subprocess.run([sys.executable, "-m", "runtime", "-m", smollm2(), "-p", "x", "-n", "2",
                        "--grammar", 'root ::= "a" <not one token>'], cwd=REPO,
                       capture_output=True, text=True)
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert "'<not one token>' is not a single token" in p.stderr
    assert "line 1, column 14" in p.stderr
    p = subprocess.run([sys.executable, "-m", "runtime", "-m", smollm2(), "-p", "Say yes:",
                        "-n", "8", "--temp", "0", "-t", "1", "--grammar",
                        'root ::= "Yes" <|im_start|>'], cwd=REPO, capture_output=True, text=True)
    # The control token is not printed (as llama-cli without --special); the grammar ends there.
    assert p.returncode == 0 and p.stdout.strip() == "Yes", (p.stdout, p.stderr)
