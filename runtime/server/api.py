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
    """Ready: 200. Loading, draining or failed: 503. With ?fail_on_no_slot=1, also 503
    while every slot is busy, so a balancer sends the next request elsewhere."""
    engine = app.ready()
    if http.query().get("fail_on_no_slot") and not engine.idle_slots():
        raise ApiError(503, "no slot available", code="no_slot")
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
    connections = app.listener.n_open if app.listener is not None else 0
    http.send_text(200, app.metrics.render(app.engine, connections, app.draining),
                   "text/plain; version=0.0.4; charset=utf-8",
                   extra_headers=[("Process-Start-Time-Unix", str(app.created))])


def slots(app, http):
    if not app.args.slots:
        raise ApiError(501, "This server does not support slots endpoint. Start it with "
                            "`--slots`", code="not_supported")
    engine = app.ready()
    if http.query().get("fail_on_no_slot") and not engine.idle_slots():
        raise ApiError(503, "no slot available", code="no_slot")
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


class Probs:
    """What a request asked to see of each generated token's probabilities (`n`
    alternatives, -1: the chosen token only; llama.cpp's post_sampling_probs), and
    the entries of the tokens of the piece being sent (`latest`)."""

    def __init__(self, n=0, post=False):
        self.n = n
        self.post = post
        self.latest = []

    @property
    def wanted(self):
        return self.n != 0

    def entries(self, tokenizer, ids, probs):
        """llama.cpp's completion_probabilities / OpenAI's logprobs.content items."""
        key = "prob" if self.post else "logprob"
        top_key = "top_probs" if self.post else "top_logprobs"
        shown = max(self.n, 0)
        out = []
        for token, (value, top) in zip(ids, probs):
            e = token_entry(tokenizer, token, key, value)
            e[top_key] = [token_entry(tokenizer, t, key, v) for v, t in top[:shown]]
            out.append(e)
        return out


def token_entry(tokenizer, token, key, value):
    """One token as llama-server writes it: its text (the whole UTF-8 characters of
    its bytes), its bytes, and its log-probability or probability."""
    piece = tokenizer.token_to_piece(token)
    if value == float("-inf"):
        value = -3.4028234663852886e38      # llama.cpp's log(0): the lowest float
    return {"id": token, "token": piece.decode("utf-8", "ignore"), "bytes": list(piece),
            key: value}


def generate(app, http, prompt_tokens, sampling, n_predict, stops, constraint, on_piece,
             probs=None, shown_tokens=(), on_session=None):
    """Run one generation on a slot; `on_piece(text, new_token_ids)` gets the pieces
    (and with `probs` (a Probs), probs.latest holds those tokens' probabilities),
    `on_session(session)` the slot's session once it has one.
    Returns (slot session, text, slot)."""
    engine = app.engine
    slot = engine.acquire(prompt_tokens, http.client_gone)
    session = slot.session
    if on_session is not None:
        on_session(session)
    gone = []

    def should_stop():
        if engine.stopping or app.model_lost():
            return True
        if http.client_gone():
            gone.append(True)
            return True
        return False

    pieces = []
    sent = 0
    wanted = probs is not None and probs.wanted
    try:
        for piece in session.generate(prompt_tokens, sampling, n_predict, stops, should_stop,
                                      constraint, n_probs=abs(probs.n) if wanted else 0,
                                      post_sampling=wanted and probs.post,
                                      shown_tokens=shown_tokens):
            slot.state = "generating"
            pieces.append(piece)
            ids = session.generated[sent:]
            if wanted:
                probs.latest = probs.entries(engine.tokenizer, ids, session.probs[sent:])
            sent = len(session.generated)
            on_piece(piece, ids)
    except ClientGone:
        gone.append(True)
    finally:
        app.metrics.add_generation(session.timings, len(session.generated),
                                   len(session.tokens))
        if gone:
            app.metrics.count_disconnect()
        engine.release(slot)
    if app.model_lost():
        raise ApiError(500, app.guard.message(), code="model_lost")
    if gone:
        raise ClientGone()
    return session, "".join(pieces), slot


def timings(session):
    """llama.cpp's timings object. As there, the generation rate is over the decode
    steps: the first token comes from the prompt's logits and costs none."""
    t = session.timings
    n_gen = len(session.generated)
    steps = max(n_gen - 1, 0)
    pms = t.prompt_seconds * 1000
    gms = round(t.generate_seconds * 1000, 3)      # the rates agree with the ms shown
    return {"prompt_n": t.prompt_tokens, "prompt_ms": round(pms, 3),
            "prompt_per_token_ms": round(pms / t.prompt_tokens, 3) if t.prompt_tokens else 0,
            "prompt_per_second": round(t.prompt_per_second, 3),
            "predicted_n": n_gen, "predicted_ms": gms,
            "predicted_per_token_ms": gms / steps if steps and gms else 0.0,
            "predicted_per_second": 1e3 / gms * steps if steps and gms else 0.0,
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
    sampling = params.sampling(app.defaults, body, openai=True, tokenizer=engine.tokenizer)
    stops = params.stops(body)
    constraint = (request.constraint if chat
                  else params.constraint(engine.tokenizer, body, app.default_grammar))
    shown = request.shown_tokens if chat else ()
    probs = Probs(*params.probs_request(body, openai_chat=chat, openai_completion=not chat))
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = app.model_name
    kind = "chat.completion" if chat else "text_completion"

    def choice(text, finish, delta=None, message=None, logprobs=None):
        lp = {"content": logprobs} if logprobs is not None else None
        if chat:
            c = {"index": 0, "logprobs": lp, "finish_reason": finish}
            if delta is not None:
                c["delta"] = delta
            else:
                c["message"] = message_json(message)
            return c
        return {"index": 0, "text": text, "logprobs": lp, "finish_reason": finish}

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
                                    constraint, lambda piece, ids: None, probs,
                                    shown_tokens=shown)
        logprobs = None
        if probs.wanted:
            logprobs = probs.entries(engine.tokenizer, session.generated, session.probs)
        message = request.stream().parse_all(text) if chat else None
        http.send_json(200, envelope([choice(text, finish_reason(session, message),
                                             message=message, logprobs=logprobs)],
                                     usage=usage(prompt_tokens, session),
                                     timings=timings(session)))
        return

    http.start_events()
    parser = request.stream() if chat else None
    if chat:
        http.send_event(envelope([choice("", None, {"role": "assistant", "content": None})]))

    held_logprobs = []      # entries of tokens whose text the parser still holds back

    def send_deltas(deltas):
        for delta in deltas:
            logprobs = None
            if probs.wanted:
                logprobs = list(held_logprobs)
                held_logprobs.clear()
            http.send_event(envelope([choice("", None, delta_json(delta),
                                             logprobs=logprobs)]))

    def on_piece(piece, ids):
        if chat:
            if probs.wanted:
                held_logprobs.extend(probs.latest)
            send_deltas(parser.feed(piece))
        else:
            logprobs = probs.latest if probs.wanted else None
            http.send_event(envelope([choice(piece, None, logprobs=logprobs)]))

    session, _, _ = generate(app, http, prompt_tokens, sampling, n_predict, stops, constraint,
                             on_piece, probs, shown_tokens=shown)
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
    sampling = params.sampling(app.defaults, body, openai=False, tokenizer=engine.tokenizer)
    stops = params.stops(body)
    stream = params.field(body, "stream", bool, False)
    return_tokens = params.field(body, "return_tokens", bool, False)
    constraint = params.constraint(engine.tokenizer, body, app.default_grammar)
    probs = Probs(*params.probs_request(body))
    if params.field(body, "ignore_eos", bool, False):
        # as llama.cpp: a -inf bias on every end-of-generation token
        sampling.logit_bias.update((t, float("-inf")) for t in engine.tokenizer.eog_ids)

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
        if probs.wanted and not stream:
            out["completion_probabilities"] = probs.entries(engine.tokenizer, session.generated,
                                                            session.probs)
        return out

    if not stream:
        session, text, slot = generate(app, http, prompt_tokens, sampling, n_predict, stops,
                                       constraint, lambda piece, ids: None, probs)
        http.send_json(200, final(session, text, slot))
        return

    http.start_events()

    def on_piece(piece, ids):
        chunk = {"content": piece, "stop": False}
        if return_tokens:
            chunk["tokens"] = list(ids)
        if probs.wanted:
            chunk["completion_probabilities"] = probs.latest
        http.send_event(chunk)

    session, text, slot = generate(app, http, prompt_tokens, sampling, n_predict, stops,
                                   constraint, on_piece, probs)
    http.send_event(final(session, "", slot))
