"""Embeddings: the mean of the final hidden states of each input, unit length."""

import array
import base64
import math
import sys

from runtime.server import params
from runtime.server.errors import ApiError


def embeddings(app, http):
    """/v1/embeddings (OpenAI) and /embedding(s) (llama.cpp): one vector per input,
    pooled as --pooling says (mean, last, cls; none: one vector per token, llama.cpp's
    endpoints only)."""
    engine = app.ready()
    body = http.read_json()
    openai = http.path.split("?", 1)[0].rstrip("/") == "/v1/embeddings"
    name = "input" if "input" in body else "content"
    raw = body.get(name)
    if raw is None or raw == [] or raw == "":
        raise ApiError(400, "'input' must be a string, an array of strings, token ids, or "
                            "{\"content\": [text parts]} objects", param="input")
    if app.pooling == "none" and openai:
        raise ApiError(400, "--pooling none gives one vector per token, which OpenAI's "
                            "/v1/embeddings cannot carry; use /embedding", param="input")
    inputs = params.prompt_list(engine.tokenizer, raw, "input")
    if len(inputs) > 64:
        raise ApiError(400, "at most 64 inputs per request", param="input")
    fmt = params.field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be float or base64",
                       param="encoding_format")
    for ids in inputs:
        if len(ids) > engine.n_ctx:
            raise ApiError(400, f"an input is {len(ids)} tokens, too large for the context of "
                                f"{engine.n_ctx}", param="input", code="context_length_exceeded")
    batches = inputs
    slot = engine.acquire(batches[0], http.client_gone)
    data = []
    try:
        for i, ids in enumerate(batches):
            vector = embed(slot, ids, app.pooling)
            if fmt == "base64" and app.pooling != "none":
                packed = array.array("f", vector)
                if sys.byteorder != "little":
                    packed.byteswap()
                vector = base64.b64encode(packed.tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": vector})
    finally:
        engine.release(slot)
    if app.model_lost():
        raise ApiError(500, app.guard.message(), code="model_lost")
    if not openai:      # llama.cpp's own shape: a list, each embedding a list of vectors
        http.send_json(200, [{"index": d["index"], "embedding": d["embedding"]
                              if app.pooling == "none" else [d["embedding"]]} for d in data])
        return
    n = sum(len(ids) for ids in batches)
    http.send_json(200, {"object": "list", "data": data, "model": app.model_name,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


def embed(slot, ids, pooling="mean"):
    """The final (normalised) hidden states pooled: mean, last or cls (first) token,
    scaled to unit length; none: every token's vector as it is."""
    session = slot.session
    session.reset()     # the pass below overwrites the cache from position 0
    try:
        hidden = session.model.forward(ids, 0, last_only=False, hidden=True)
        rows = session.model.backend.to_floats(hidden)
    finally:
        session.reset()
    rows = [list(r) for r in rows]
    if pooling == "none":
        return rows
    if pooling == "last":
        pooled = rows[-1]
    elif pooling == "cls":
        pooled = rows[0]
    else:
        dim = len(rows[0])
        pooled = [sum(row[j] for row in rows) / len(rows) for j in range(dim)]
    norm = math.sqrt(sum(v * v for v in pooled)) or 1.0
    return [v / norm for v in pooled]
