"""Embeddings: the mean of the final hidden states of each input, unit length."""

import array
import base64
import math
import sys

from runtime.server import params
from runtime.server.errors import ApiError


def embeddings(app, http):
    """/v1/embeddings (OpenAI) and /embedding (llama.cpp): one vector per input."""
    engine = app.ready()
    body = http.read_json()
    raw = body.get("input", body.get("content"))
    if isinstance(raw, str) or (isinstance(raw, list) and raw and
                                all(isinstance(t, int) for t in raw)):
        inputs = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
        inputs = raw
    else:
        raise ApiError(400, "'input' must be a string, an array of strings, or token ids",
                       param="input")
    if len(inputs) > 64:
        raise ApiError(400, "at most 64 inputs per request", param="input")
    fmt = params.field(body, "encoding_format", str, "float")
    if fmt not in ("float", "base64"):
        raise ApiError(400, "'encoding_format' must be float or base64",
                       param="encoding_format")
    tok = engine.tokenizer
    batches = []
    for x in inputs:
        ids = tok.encode(x, add_special=True, parse_special=True) if isinstance(x, str) \
            else params.token_ids(tok, x, "input")
        if not ids:
            raise ApiError(400, "an input is empty", param="input")
        if len(ids) > engine.n_ctx:
            raise ApiError(400, f"an input is {len(ids)} tokens; the context is "
                                f"{engine.n_ctx}", param="input",
                           code="context_length_exceeded")
        batches.append(ids)
    slot = engine.acquire(batches[0], http.client_gone)
    data = []
    try:
        for i, ids in enumerate(batches):
            vector = embed(slot, ids)
            if fmt == "base64":
                packed = array.array("f", vector)
                if sys.byteorder != "little":
                    packed.byteswap()
                vector = base64.b64encode(packed.tobytes()).decode("ascii")
            data.append({"object": "embedding", "index": i, "embedding": vector})
    finally:
        engine.release(slot)
    if app.model_lost():
        raise ApiError(500, app.guard.message(), code="model_lost")
    n = sum(len(ids) for ids in batches)
    http.send_json(200, {"object": "list", "data": data, "model": app.model_name,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


def embed(slot, ids):
    """Mean of the final (normalised) hidden states, scaled to unit length."""
    session = slot.session
    session.reset()     # the pass below overwrites the cache from position 0
    try:
        hidden = session.model.forward(ids, 0, last_only=False, hidden=True)
        rows = session.model.backend.to_floats(hidden)
    finally:
        session.reset()
    dim = len(rows[0])
    mean = [sum(row[j] for row in rows) / len(rows) for j in range(dim)]
    norm = math.sqrt(sum(v * v for v in mean)) or 1.0
    return [v / norm for v in mean]
