"""`--server` as a drop-in llama-server (issue 14): the two bugs it had, and every
request field of llama-server's and OpenAI's that we accept, each checked for its
effect or for a clear refusal. One server (2 slots, -n 8, greedy) serves the module."""

import json
import os

import pytest

from tests.models import smollm2
from tests.server_process import ServerProcess, read_until_closed, send_raw

N_PREDICT = 8
N_CTX = 1024            # 2 slots: 512 each
N_BATCH = 64            # prompts longer than this are computed in several batches
PROMPT = "I believe the meaning of life is"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    saves = tmp_path_factory.mktemp("slots")
    srv = ServerProcess(smollm2(), "-c", str(N_CTX), "-np", "2", "-n", str(N_PREDICT),
                        "-b", str(N_BATCH),
                        "--temp", "0", "--seed", "42", "--alias", "smol,tiny",
                        "--tags", "chat,small", "--slot-save-path", str(saves))
    yield srv
    assert srv.stop() == 0, "".join(srv.log)


def completion(server, **fields):
    status, body = server.post("/completion", dict({"prompt": PROMPT}, **fields))
    assert status == 200, body
    return body


def chat(server, path="/v1/chat/completions", **fields):
    body = dict({"messages": [{"role": "user", "content": "Name a fruit."}]}, **fields)
    return server.post(path, body)


def events(server, path, body):
    """The JSON events of a streamed reply."""
    data = json.dumps(body).encode()
    conn = send_raw(server.port, f"POST {path} HTTP/1.1\r\nHost: x\r\n".encode()
                    + b"Content-Type: application/json\r\n", data)
    raw = read_until_closed(conn)
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b" 200 " in head.split(b"\r\n")[0], raw[:500]
    out = []
    for line in rest.decode().split("\n"):
        if line.startswith("data: ") and line[6:] != "[DONE]":
            out.append(json.loads(line[6:]))
    return out


# ---------------------------------------------------------------- the two bugs

def test_server_n_predict_is_the_default_limit(server):
    # ignore_eos: the model cannot stop early, so the limit is what ends it
    r = completion(server, ignore_eos=True)
    assert r["tokens_predicted"] == N_PREDICT and r["stop_type"] == "limit"
    assert r["generation_settings"]["n_predict"] == N_PREDICT
    status, r = chat(server, ignore_eos=True)
    assert status == 200 and r["usage"]["completion_tokens"] == N_PREDICT
    # the request's own limit wins over the server's
    assert completion(server, ignore_eos=True, n_predict=3)["tokens_predicted"] == 3


def test_greedy_output_same_with_and_without_prompt_cache(server):
    first = completion(server, n_predict=12)["content"]
    seen = []
    for slot in (0, 1):
        seen.append(completion(server, n_predict=12, id_slot=slot)["content"])  # fills its cache
        for _ in range(5):
            cached = completion(server, n_predict=12, id_slot=slot)
            fresh = completion(server, n_predict=12, id_slot=slot, cache_prompt=False)
            assert cached["id_slot"] == fresh["id_slot"] == slot
            assert cached["timings"]["cache_n"] > 0         # the prompt came from the cache
            assert fresh["timings"]["cache_n"] == 0         # cache_prompt: false computed it all
            seen += [cached["content"], fresh["content"]]
    assert set(seen) == {first}


def test_session_rows_do_not_depend_on_batch_split():
    """The numbers behind the cache fix: every prompt row is computed in a batch of two
    or more tokens, so batch size and cached prefix do not change the text."""
    from runtime.loader import load_session, open_gguf
    from runtime.sampling import SamplingParams
    from runtime.session import prompt_chunks
    for n in range(1, 12):
        for size in (1, 2, 3, 5, 512):
            chunks = prompt_chunks(list(range(n)), size)
            assert sum(chunks, []) == list(range(n))
            assert n == 1 or min(len(c) for c in chunks) >= 2
    gguf = open_gguf(smollm2())
    greedy = SamplingParams(temperature=0.0)
    texts = set()
    for batch in (512, 5, 2):
        session = load_session(gguf, threads=1, n_ctx=128, batch_size=batch)
        ids = session.tokenizer.encode(PROMPT, add_special=True, parse_special=True)
        for _ in range(2):          # the second time the prompt comes from the cache
            texts.add("".join(session.generate(ids, greedy, 10)))
    assert len(texts) == 1


# ---------------------------------------------------------------- each field

def test_completion_fields(server):
    base = completion(server, n_predict=6)
    assert base["content"] and base["stop"] is True and base["tokens"] == []
    # return_tokens: the ids, which detokenize to the text
    r = completion(server, n_predict=6, return_tokens=True)
    assert len(r["tokens"]) == r["tokens_predicted"]
    assert server.post("/detokenize", {"tokens": r["tokens"]})[1]["content"] == r["content"]
    # stop: cut before the stop string, reported as a word stop
    word = base["content"].split()[1]
    r = completion(server, n_predict=6, stop=[word])
    assert word not in r["content"] and r["stop_type"] == "word"
    assert r["stopping_word"] == word
    # seed and temperature: a fixed seed repeats, another seed differs somewhere
    hot = [completion(server, n_predict=12, temperature=1.5, seed=s)["content"]
           for s in (1, 1, 2, 3)]
    assert hot[0] == hot[1] and len(set(hot[1:])) > 1
    # top_k 1, a tiny top_p and min_p 1 are each greedy whatever the temperature
    for narrow in ({"top_k": 1}, {"top_p": 0.0001}, {"min_p": 1.0}):
        assert completion(server, n_predict=6, temperature=1.5, seed=3,
                          **narrow)["content"] == base["content"], narrow
    # penalties change what greedy decoding repeats
    long = completion(server, n_predict=24)["content"]
    for penalty in ({"repeat_penalty": 2.0}, {"presence_penalty": 2.0},
                    {"frequency_penalty": 2.0}):
        assert completion(server, n_predict=24, **penalty)["content"] != long, penalty
    # response_fields: only those, by path
    r = completion(server, n_predict=4, response_fields=["content", "generation_settings/n_predict"])
    assert set(r) == {"content", "generation_settings/n_predict"}
    assert r["generation_settings/n_predict"] == 4
    # ignore_eos shows as llama.cpp's -inf biases on the end-of-generation tokens
    r = completion(server, n_predict=2, ignore_eos=True)
    assert r["generation_settings"]["logit_bias"] and all(
        b["bias"] is None for b in r["generation_settings"]["logit_bias"])
    # has_new_line, truncated, tokens_cached, timings
    assert r["has_new_line"] == ("\n" in r["content"]) and r["truncated"] is False
    assert r["tokens_cached"] > 0 and r["timings"]["predicted_n"] == 2
    # id_slot out of range: refused
    status, body = server.post("/completion", {"prompt": PROMPT, "id_slot": 7})
    assert status == 400 and "id_slot" in body["error"]["message"]


def test_prompt_forms(server):
    status, ids = server.post("/tokenize", {"content": PROMPT, "add_special": True})
    tokens = ids["tokens"]
    one = completion(server, prompt=tokens, n_predict=5)["content"]
    for prompt in ([tokens, tokens], [tokens, PROMPT], [tokens, {"prompt_string": PROMPT}]):
        r = completion(server, prompt=prompt, n_predict=5)
        assert isinstance(r, list) and [x["content"] for x in r] == [one, one]
        assert [x["index"] for x in r] == [0, 1]
    assert completion(server, prompt={"prompt_string": PROMPT}, n_predict=5)["content"] == one
    # text and ids in one sequence are one prompt
    r = completion(server, prompt=[tokens[0], PROMPT[:10], tokens[1]], n_predict=2)
    assert isinstance(r, dict)
    status, body = server.post("/completion", {"prompt": {"prompt_string": "x",
                                                          "multimodal_data": ["AAAA"]}})
    assert status == 400 and "multimodal" in body["error"]["message"]
    # several prompts on /v1/completions: one choice each
    status, r = server.post("/v1/completions", {"prompt": [PROMPT, "Hello"], "max_tokens": 3})
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1]


def test_chat_fields(server):
    # n: that many choices
    status, r = chat(server, n=2, max_tokens=3)
    assert status == 200 and [c["index"] for c in r["choices"]] == [0, 1]
    # assistant prefill / continue_final_message: the prompt ends inside the reply
    msgs = [{"role": "user", "content": "Name a fruit."},
            {"role": "assistant", "content": "My answer is"}]
    status, r = server.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2,
                                                     "verbose": True})
    assert status == 200 and r["__verbose"]["prompt"].endswith("My answer is")
    status, r = server.post("/apply-template", {"messages": msgs, "continue_final_message": True,
                                                "add_generation_prompt": False})
    assert status == 200 and r["prompt"].endswith("My answer is")
    status, _ = server.post("/v1/chat/completions", {"messages": msgs, "max_tokens": 2,
                                                     "continue_final_message": True,
                                                     "add_generation_prompt": True})
    assert status == 400
    # add_generation_prompt false: the assistant's turn is not opened
    plain = [{"role": "user", "content": "hi"}]
    with_gen = server.post("/apply-template", {"messages": plain})[1]["prompt"]
    without = server.post("/apply-template", {"messages": plain,
                                              "add_generation_prompt": False})[1]["prompt"]
    assert with_gen.startswith(without) and len(with_gen) > len(without)
    # chat_template_kwargs reach the template
    status, r = server.post("/apply-template", {"messages": plain,
                                                "chat_template_kwargs": {"enable_thinking": "x"}})
    assert status == 400
    # verbose off: no __verbose
    status, r = chat(server, max_tokens=2)
    assert "__verbose" not in r
    # input_tokens: the prompt's length
    status, r = chat(server, path="/chat/completions/input_tokens")
    assert status == 200 and r["input_tokens"] > 5
    # fields we do not honour are refused, not ignored
    for field, value in (("best_of", 2), ("echo", True),
                         ("n", 0), ("tools", [{"type": "function"}])):
        status, body = chat(server, **{field: value})
        assert status == 400 and body["error"]["message"], field


def test_streams(server):
    chunks = events(server, "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                     "stream": True, "timings_per_token": True})
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": None}
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:] if c["choices"])
    assert all("timings" in c for c in chunks[1:-2])
    assert chunks[-1]["choices"] == [] and "usage" in chunks[-1] and "timings" in chunks[-1]
    chunks = events(server, "/completion", {"prompt": PROMPT, "n_predict": 4, "stream": True})
    assert all(c["tokens"] for c in chunks[:-1]) and chunks[-1]["stop"] is True
    streamed = "".join(c["content"] for c in chunks)
    assert streamed == completion(server, n_predict=4)["content"]


def test_prompt_progress(server):
    """return_progress on a stream: llama-server's prompt_progress events, one before
    the first prompt batch (processed == cache) and one after each batch, the last
    with everything processed; timings from zero upward; none without the field."""
    text = "This is a test. " * 40
    tokens = server.post("/tokenize", {"content": text, "add_special": True})[1]["tokens"]
    n_batches = -(-len(tokens) // N_BATCH)
    assert n_batches >= 3, len(tokens)
    body = {"prompt": text, "n_predict": 2, "stream": True, "return_progress": True,
            "timings_per_token": True, "cache_prompt": False}
    chunks = events(server, "/completion", body)
    progress = [c for c in chunks if "prompt_progress" in c]
    assert len(progress) == n_batches + 1, [p["prompt_progress"] for p in progress]
    first, last = progress[0]["prompt_progress"], progress[-1]["prompt_progress"]
    assert first["cache"] == first["processed"] == 0 and first["total"] == len(tokens)
    assert last["processed"] == last["total"] == len(tokens)
    done = [p["prompt_progress"]["processed"] for p in progress]
    assert done == sorted(set(done))            # strictly growing
    assert progress[0]["timings"]["prompt_n"] == 0 and progress[0]["timings"]["prompt_ms"] == 0
    ms = [p["timings"]["prompt_ms"] for p in progress]
    assert ms == sorted(ms) and ms[-1] > 0
    assert all(p["content"] == "" and p["tokens"] == [] for p in progress)
    assert chunks.index(progress[-1]) < min(i for i, c in enumerate(chunks) if c["tokens"])
    # again with the cache: it starts from what the cache held, one batch to go
    events(server, "/completion", dict(body, cache_prompt=True, id_slot=0))
    progress = [c["prompt_progress"] for c in events(
        server, "/completion", dict(body, cache_prompt=True, id_slot=0)) if "prompt_progress" in c]
    assert len(progress) == 2 and progress[0]["cache"] == progress[0]["processed"] > 0
    assert progress[-1]["processed"] == len(tokens)
    # chat: the opening delta carries it; without the field, no event has it
    chunks = events(server, "/v1/chat/completions",
                    {"messages": [{"role": "user", "content": text}], "max_tokens": 2,
                     "stream": True, "return_progress": True})
    progress = [c for c in chunks if "prompt_progress" in c]
    assert len(progress) >= 4
    assert all(c["choices"][0]["delta"] == {"role": "assistant", "content": None}
               for c in progress)
    chunks = events(server, "/completion", dict(body, return_progress=False))
    assert not any("prompt_progress" in c for c in chunks)


def test_context_errors(server):
    status, body = server.post("/completion", {"prompt": PROMPT * 200})
    err = body["error"]
    assert status == 400 and err["type"] == "exceed_context_size_error"
    assert err["n_ctx"] == N_CTX // 2 and err["n_prompt_tokens"] > N_CTX // 2


def test_props_models_slots(server):
    status, props = server.get("/props")
    assert status == 200 and props["model_path"].endswith(".gguf")
    assert props["total_slots"] == 2
    assert props["default_generation_settings"]["n_ctx"] == N_CTX // 2
    assert props["default_generation_settings"]["params"]["seed"] == 42
    status, models = server.get("/v1/models")
    model = models["data"][0]
    assert model["id"] == "smol" and model["aliases"] == ["smol", "tiny"]
    assert model["tags"] == ["chat", "small"]
    status, slots = server.get("/slots")
    assert [s["n_ctx"] for s in slots] == [N_CTX // 2] * 2


def test_slot_save_restore_erase(server):
    before = completion(server, n_predict=4, id_slot=1)
    status, r = server.post("/slots/1?action=save", {"filename": "one.json"})
    assert status == 200 and r["n_saved"] > 0
    status, r = server.post("/slots/1?action=erase", {})
    assert status == 200 and r["n_erased"] > 0
    assert server.get("/slots")[1][1]["n_cached"] == 0
    status, r = server.post("/slots/1?action=restore", {"filename": "one.json"})
    assert status == 200 and r["n_restored"] > 0
    after = completion(server, n_predict=4, id_slot=1)
    assert after["timings"]["cache_n"] > 0 and after["content"] == before["content"]
    for body in ({"filename": "../x"}, {"filename": ""}, {}):
        assert server.post("/slots/0?action=save", body)[0] == 400
    assert server.post("/slots/0?action=restore", {"filename": "nope"})[0] == 404
    assert server.post("/slots/0?action=fly", {"filename": "a"})[0] == 400


def test_cors_and_keys(server):
    conn = send_raw(server.port, b"OPTIONS /completion HTTP/1.1\r\nHost: x\r\n"
                    b"Origin: http://web.example\r\nConnection: close\r\n")
    reply = read_until_closed(conn).decode().lower()
    assert " 200 " in reply.split("\r\n")[0]
    assert "access-control-allow-origin: http://web.example" in reply
    assert "access-control-allow-credentials: true" in reply


def test_infill_refused_without_fim_tokens(server):
    status, body = server.post("/infill", {"input_prefix": "def f(", "input_suffix": ")"})
    assert status == 501 and "fill-in-the-middle" in body["error"]["message"]


def test_api_key_header_and_cors_options(tmp_path):
    srv = ServerProcess(smollm2(), "-c", "256", "--cors-origins", "localhost",
                        "--host", "127.0.0.1,::1", api_key="k1")
    try:
        srv.api_key = None
        assert srv.post("/tokenize", {"content": "hi"})[0] == 401
        assert srv.post("/tokenize", {"content": "hi"}, headers={"X-Api-Key": "k1"})[0] == 200
        for origin, allowed in (("http://localhost:3000", True), ("http://[::1]", True),
                                ("http://localhost.evil.com", False)):
            conn = send_raw(srv.port, b"OPTIONS /completion HTTP/1.1\r\nHost: x\r\nOrigin: "
                            + origin.encode() + b"\r\nConnection: close\r\n")
            reply = read_until_closed(conn).decode().lower()
            assert ("access-control-allow-origin: " + origin in reply) == allowed, origin
        if os.path.exists("/proc/net/if_inet6"):
            import socket
            s = socket.create_connection(("::1", srv.port), timeout=10)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert b" 200 " in read_until_closed(s).split(b"\r\n")[0]
    finally:
        assert srv.stop() == 0
