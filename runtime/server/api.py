"""The API: each endpoint reads its request (through params), runs it on the engine,
and answers in the shape its clients expect: OpenAI's chat and completion objects and
stream chunks, llama.cpp's /completion, /tokenize, /props, /slots.

Every endpoint is `name(app, http)`: `app` is the server's state (App), `http` the
connection (read_json, send_json, send_text, start_events, send_event, client_gone).
"""

import time
import uuid

from runtime.server import params
from runtime.server.chat import ChatRequest, delta_json, message_json
from runtime.server.errors import ApiError, ClientGone


def health(app, http):
    app.ready()
    http.send_json(200, {"status": "ok"})


def models(app, http):
    app.ready()
    http.send_json(200, {"object": "list", "data": [
        {"id": app.model_name, "object": "model", "created": app.created,
         "owned_by": "llamazip", "meta": {"n_ctx": app.engine.n_ctx,
                                          "n_vocab": app.engine.tokenizer.n_vocab}}]})


def metrics(app, http):
    if not app.args.metrics:
        raise ApiError(501, "This server does not support metrics endpoint. Start it with "
                            "`--metrics`", code="not_supported")
    http.send_text(200, app.metrics.render(app.engine),
                   "text/plain; version=0.0.4; charset=utf-8",
                   extra_headers=[("Process-Start-Time-Unix", str(app.created))])


def slots(app, http):
    if not app.args.slots:
        raise ApiError(501, "This server does not support slots endpoint. Start it with "
                            "`--slots`", code="not_supported")
    engine = app.ready()
    http.send_json(200, [s.describe() for s in engine.slots])


def props(app, http):
    engine = app.ready()
    http.send_json(200, {"model": app.model_name, "n_ctx": engine.n_ctx,
                         "total_slots": len(engine.slots),
                         "chat_template": getattr(app.chat_format, "source", "")})


def tokenize(app, http):
    engine = app.ready()
    body = http.read_json()
    content = params.field(body, "content", str)
    if content is None:
        raise ApiError(400, "'content' (a string) is required", param="content")
    add_special = params.field(body, "add_special", bool, False)
    with_pieces = params.field(body, "with_pieces", bool, False)
    tok = engine.tokenizer
    ids = tok.encode(content, add_special=add_special, parse_special=True)
    if with_pieces:
        out = []
        for i in ids:
            piece = tok.token_to_piece(i)
            try:
                out.append({"id": i, "piece": piece.decode("utf-8")})
            except UnicodeDecodeError:
                out.append({"id": i, "piece": list(piece)})
        http.send_json(200, {"tokens": out})
    else:
        http.send_json(200, {"tokens": ids})


def detokenize(app, http):
    engine = app.ready()
    body = http.read_json()
    ids = params.token_ids(engine.tokenizer, body.get("tokens"), "tokens", allow_empty=True)
    http.send_json(200, {"content": engine.tokenizer.decode(ids)})


def generate(app, http, prompt_tokens, sampling, n_predict, stops, constraint, on_piece,
             shown_tokens=(), on_session=None):
    """Run one generation on a slot; `on_piece(text, new_token_ids)` gets the pieces,
    `on_session(session)` the slot's session once it has one.
    Returns (slot session, text, slot)."""
    engine = app.engine
    slot = engine.acquire(prompt_tokens, http.client_gone)
    session = slot.session
    if on_session is not None:
        on_session(session)
    gone = []

    def should_stop():
        if engine.stopping:
            return True
        if http.client_gone():
            gone.append(True)
            return True
        return False

    pieces = []
    sent = 0
    try:
        for piece in session.generate(prompt_tokens, sampling, n_predict, stops, should_stop,
                                      constraint, shown_tokens):
            slot.state = "generating"
            pieces.append(piece)
            ids = session.generated[sent:]
            sent = len(session.generated)
            on_piece(piece, ids)
    except ClientGone:
        gone.append(True)
    finally:
        app.metrics.add_generation(session.timings, len(session.generated))
        if gone:
            app.metrics.count_disconnect()
        engine.release(slot)
    if gone:
        raise ClientGone()
    return session, "".join(pieces), slot


def timings(session):
    """llama.cpp's timings object."""
    t = session.timings
    n_gen = len(session.generated)
    pms = t.prompt_seconds * 1000
    gms = t.generate_seconds * 1000
    return {"prompt_n": t.prompt_tokens, "prompt_ms": round(pms, 3),
            "prompt_per_token_ms": round(pms / t.prompt_tokens, 3) if t.prompt_tokens else 0,
            "prompt_per_second": round(t.prompt_per_second, 3),
            "predicted_n": n_gen, "predicted_ms": round(gms, 3),
            "predicted_per_token_ms": round(gms / n_gen, 3) if n_gen else 0,
            "predicted_per_second": round(n_gen / t.generate_seconds, 3)
            if t.generate_seconds and n_gen else 0.0,
            "cache_n": t.reused_tokens}


def usage(prompt_tokens, session):
    """OpenAI's usage object."""
    n = len(session.generated)
    return {"prompt_tokens": len(prompt_tokens), "completion_tokens": n,
            "total_tokens": len(prompt_tokens) + n}


def chat(app, http):
    """OpenAI's /v1/chat/completions."""
    openai_generate(app, http, chat=True)


def openai_completion(app, http):
    """OpenAI's /v1/completions."""
    openai_generate(app, http, chat=False)


def openai_generate(app, http, chat):
    engine = app.ready()
    body = http.read_json()
    params.check_openai(body)
    stream = params.field(body, "stream", bool, False)
    options = params.field(body, "stream_options", dict, {})
    include_usage = params.field(options, "include_usage", bool, False)
    request = None
    if chat:
        request = ChatRequest(app, body)
        prompt_tokens = request.prompt_tokens
    else:
        if "prompt" not in body:
            raise ApiError(400, "'prompt' is required", param="prompt")
        prompt_tokens = params.prompt_tokens(engine.tokenizer, body["prompt"])
    n_predict = params.budget(engine.n_ctx, body, prompt_tokens,
                              ("max_completion_tokens", "max_tokens"), openai=True)
    sampling = params.sampling(app.defaults, body, openai=True)
    stops = params.stops(body)
    constraint = request.constraint if chat else params.constraint(engine.tokenizer, body)
    shown = request.shown_tokens if chat else ()
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = app.model_name
    kind = "chat.completion" if chat else "text_completion"

    def choice(text, finish, delta=None, message=None):
        if chat:
            c = {"index": 0, "logprobs": None, "finish_reason": finish}
            if delta is not None:
                c["delta"] = delta
            else:
                c["message"] = message_json(message)
            return c
        return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}

    def envelope(choices, **extra):
        obj = {"id": ident, "object": kind + (".chunk" if stream and chat else ""),
               "created": created, "model": model, "system_fingerprint": "llamazip",
               "choices": choices}
        obj.update(extra)
        return obj

    def finish_reason(session, message):
        if message is not None and message.tool_calls and session.finish_reason == "stop":
            return "tool_calls"
        return session.finish_reason

    if not stream:
        session, text, _ = generate(app, http, prompt_tokens, sampling, n_predict, stops,
                                    constraint, lambda piece, ids: None, shown)
        message = request.stream().parse_all(text) if chat else None
        http.send_json(200, envelope([choice(text, finish_reason(session, message),
                                             message=message)],
                                     usage=usage(prompt_tokens, session),
                                     timings=timings(session)))
        return

    http.start_events()
    parser = request.stream() if chat else None
    if chat:
        http.send_event(envelope([choice("", None, {"role": "assistant", "content": None})]))

    def send_deltas(deltas):
        for delta in deltas:
            http.send_event(envelope([choice("", None, delta_json(delta))]))

    def on_piece(piece, ids):
        if chat:
            send_deltas(parser.feed(piece))
        else:
            http.send_event(envelope([choice(piece, None)]))

    session, _, _ = generate(app, http, prompt_tokens, sampling, n_predict, stops, constraint,
                             on_piece, shown)
    if chat:
        send_deltas(parser.finish())
    final = envelope([choice("", finish_reason(session, parser and parser.message),
                             {} if chat else None)],
                     timings=timings(session))
    http.send_event(final)
    if include_usage:
        http.send_event(envelope([], usage=usage(prompt_tokens, session)))
    http.send_event("[DONE]")


def completion(app, http):
    """llama.cpp's /completion: prompt text or ids, n_predict, its sampling fields."""
    engine = app.ready()
    body = http.read_json()
    if "prompt" not in body:
        raise ApiError(400, "'prompt' is required", param="prompt")
    prompt_tokens = params.prompt_tokens(engine.tokenizer, body["prompt"])
    n_predict = params.budget(engine.n_ctx, body, prompt_tokens, ("n_predict", "max_tokens"),
                              openai=False)
    sampling = params.sampling(app.defaults, body, openai=False)
    stops = params.stops(body)
    stream = params.field(body, "stream", bool, False)
    return_tokens = params.field(body, "return_tokens", bool, False)
    constraint = params.constraint(engine.tokenizer, body)
    if body.get("json_schema") is not None:
        constraint = params.constraint(engine.tokenizer, {"response_format": {
            "type": "json_schema", "json_schema": {"schema": body["json_schema"]}}})
    if params.field(body, "ignore_eos", bool, False) and constraint is None:
        constraint = params.IgnoreEos(engine.tokenizer.eog_ids)

    def final(session, text, slot):
        stop_type = "limit"
        if session.finish_reason == "stop":
            last = session.generated[-1:] if session.generated else []
            stop_type = "word" if stops and len(session.generated) < n_predict else "eos"
            if last and last[0] in engine.tokenizer.eog_ids:
                stop_type = "eos"
        out = {"content": text, "id_slot": slot.id, "stop": True, "model": app.model_name,
               "tokens_predicted": len(session.generated),
               "tokens_evaluated": len(prompt_tokens), "stop_type": stop_type,
               "tokens_cached": len(session.tokens), "truncated": False,
               "timings": timings(session)}
        if return_tokens:
            out["tokens"] = list(session.generated)
        return out

    if not stream:
        session, text, slot = generate(app, http, prompt_tokens, sampling, n_predict, stops,
                                       constraint, lambda piece, ids: None)
        http.send_json(200, final(session, text, slot))
        return

    http.start_events()

    def on_piece(piece, ids):
        chunk = {"content": piece, "stop": False}
        if return_tokens:
            chunk["tokens"] = list(ids)
        http.send_event(chunk)

    session, text, slot = generate(app, http, prompt_tokens, sampling, n_predict, stops,
                                   constraint, on_piece)
    http.send_event(final(session, "", slot))
