"""The API: each endpoint reads its request (through params), runs it on the engine,
and answers in the shape its clients expect: OpenAI's chat and completion objects and
stream chunks, llama.cpp's /completion, /infill, /tokenize, /apply-template, /props,
/slots.

Every endpoint is `name(app, http)`: `app` is the server's state (App), `http` the
connection (read_json, send_json, send_text, start_events, send_event, client_gone).

A request may hold several prompts (an array of prompts) and ask for several choices
(`n`): each pair is one generation, run one after the other on a slot, answered in
one reply (or one stream whose chunks carry their `index`).
"""

import time
import uuid

from runtime.server import params, slots_io
from runtime.server.chat import ChatRequest, delta_json, message_json
from runtime.server.errors import ApiError, ClientGone

FINGERPRINT = "b-llamazip"      # llama-server's fingerprints are its build, "b" + number


def health(app, http):
    """Ready: 200. Loading, draining or failed: 503. With ?fail_on_no_slot=1, also 503
    while every slot is busy, so a balancer sends the next request elsewhere."""
    engine = app.ready()
    if http.query().get("fail_on_no_slot") and not engine.idle_slots():
        raise ApiError(503, "no slot available", code="no_slot")
    http.send_json(200, {"status": "ok"})


def models(app, http):
    app.ready()
    model = {"id": app.model_name, "object": "model", "created": app.created,
             "owned_by": "llamazip", "aliases": app.aliases, "tags": app.tags,
             "meta": {"n_ctx": app.engine.n_ctx, "n_ctx_train": app.engine.model.config.n_ctx_train,
                      "n_vocab": app.engine.tokenizer.n_vocab}}
    http.send_json(200, {"object": "list", "data": [model],
                         "models": [{"name": app.model_name, "model": app.model_name,
                                     "type": "model", "tags": app.tags}]})


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


def slot_action(app, http):
    """POST /slots/ID?action=save|restore|erase."""
    slots_io.slot_action(app, http)


def props(app, http):
    engine = app.ready()
    tok = engine.tokenizer
    http.send_json(200, {
        "default_generation_settings": {
            "id": 0, "id_task": -1, "n_ctx": engine.n_ctx, "speculative": False,
            "is_processing": False,
            "params": generation_settings(app, app.defaults, app.n_predict, [], False, None)},
        "total_slots": len(engine.slots), "model_alias": app.model_name,
        "model_path": app.model_path, "model": app.model_name, "n_ctx": engine.n_ctx,
        "modalities": {"vision": False, "audio": False},
        "chat_template": getattr(app.chat_format, "source", ""),
        "bos_token": _token_text(tok, tok.bos_id), "eos_token": _token_text(tok, tok.eos_id),
        "build_info": FINGERPRINT, "is_sleeping": False})


def _token_text(tok, token_id):
    if token_id is None:
        return ""
    return tok.token_to_piece(token_id).decode("utf-8", "replace")


def tokenize(app, http):
    engine = app.ready()
    body = http.read_json()
    content = params.field(body, "content", str)
    if content is None:
        raise ApiError(400, "'content' (a string) is required", param="content")
    add_special = params.field(body, "add_special", bool, False)
    parse_special = params.field(body, "parse_special", bool, True)
    with_pieces = params.field(body, "with_pieces", bool, False)
    tok = engine.tokenizer
    ids = tok.encode(content, add_special=add_special, parse_special=parse_special)
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


def apply_template(app, http):
    """llama-server's /apply-template: the chat prompt text, nothing generated."""
    app.ready()
    body = http.read_json()
    http.send_json(200, {"prompt": ChatRequest(app, body).prompt_text})


def input_tokens(app, http):
    """How many prompt tokens a chat request would take."""
    app.ready()
    body = http.read_json()
    http.send_json(200, {"input_tokens": len(ChatRequest(app, body).prompt_tokens)})


# ---------------------------------------------------------------- generation

class Request:
    """The generation fields of a request, checked once for all its prompts."""

    def __init__(self, app, body, openai, chat=False, chat_request=None):
        engine = app.engine
        self.body = body
        self.openai = openai
        self.sampling = params.sampling(app.defaults, body, openai=openai,
                                        tokenizer=engine.tokenizer)
        self.stops = params.stops(body)
        self.stream = params.field(body, "stream", bool, False)
        self.cache_prompt = params.field(body, "cache_prompt", bool, True)
        self.id_slot = params.field(body, "id_slot", int, -1, -1, 1 << 20)
        self.return_tokens = params.field(body, "return_tokens", bool, False)
        self.timings_per_token = params.field(body, "timings_per_token", bool, False)
        # prompt_progress events while the prompt is computed (streams only, as llama-server)
        self.return_progress = params.field(body, "return_progress", bool, False)
        self.verbose = params.field(body, "verbose", bool, False) or app.verbose
        self.response_fields = params.field(body, "response_fields", list, [])
        if not all(isinstance(f, str) for f in self.response_fields):
            raise ApiError(400, "'response_fields' must be an array of strings",
                           param="response_fields")
        self.ignore_eos = params.field(body, "ignore_eos", bool, False)
        if self.ignore_eos:
            # as llama.cpp: a -inf bias on every end-of-generation token
            self.sampling.logit_bias.update((t, float("-inf")) for t in engine.tokenizer.eog_ids)
        self.probs = Probs(*params.probs_request(body, openai_chat=openai and chat,
                                                 openai_completion=openai and not chat))
        self.chat_request = chat_request
        self.shown_tokens = chat_request.shown_tokens if chat_request is not None else ()
        self.default_grammar = app.default_grammar
        self.tokenizer = engine.tokenizer
        self.constraint()       # checked now (a bad grammar is a 400), built per generation

    @classmethod
    def of_chat(cls, app, chat_request, sampling, stops):
        """A Request for the APIs that read their own fields into `sampling` and `stops`
        (Anthropic Messages, OpenAI Responses): slot choice, cache and probabilities
        at their defaults."""
        req = cls.__new__(cls)
        req.body, req.openai, req.sampling, req.stops = {}, True, sampling, stops
        req.stream = req.return_tokens = req.timings_per_token = req.verbose = False
        req.return_progress = False
        req.cache_prompt, req.id_slot, req.response_fields = True, -1, []
        req.ignore_eos = False
        req.probs = Probs()
        req.chat_request = chat_request
        req.shown_tokens = chat_request.shown_tokens
        req.default_grammar = app.default_grammar
        req.tokenizer = app.engine.tokenizer
        return req

    def constraint(self):
        """A fresh constraint for one generation (they hold state), or None."""
        if self.chat_request is not None:
            return self.chat_request.make_constraint()
        return params.constraint(self.tokenizer, self.body, self.default_grammar)


class Outcome:
    """One finished generation, copied out of the slot's session."""

    def __init__(self, session, slot, prompt_tokens, text, n_predict):
        self.text = text
        self.tokens = list(session.generated)
        self.finish_reason = session.finish_reason
        self.timings = timings(session)
        self.n_prompt = len(prompt_tokens)
        self.n_cached = len(session.tokens)
        self.slot_id = slot.id
        self.n_predict = n_predict
        self.session_timings = session.timings
        self.truncated = False
        self.stop_type = "limit"
        self.stopping_word = ""
        if self.finish_reason == "stop":
            if self.tokens and session.last_token_eog:
                self.stop_type = "eos"
            elif session.stop_word is not None:
                self.stop_type, self.stopping_word = "word", session.stop_word
            else:
                self.stop_type = "eos"
        elif len(self.tokens) < n_predict:
            self.truncated = True           # the slot's context ran out first


def generate(app, http, req, prompt_tokens, n_predict, on_piece, on_session=None,
             on_progress=None):
    """Run one generation on a slot; `on_piece(text, new_token_ids, slot)` gets the
    pieces (req.probs.latest holds those tokens' probabilities when asked for),
    `on_session(session)` the slot's session once it has one, `on_progress(progress,
    slot)` llama-server's prompt_progress object as each prompt batch is done when the
    request streams with return_progress. Returns its Outcome."""
    engine = app.engine
    slot = engine.acquire(prompt_tokens, http.client_gone,
                          None if req.id_slot < 0 else req.id_slot)
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

    if not req.cache_prompt:
        session.reset()         # the whole prompt is computed afresh
    pieces = []
    sent = 0
    probs = req.probs
    wanted = probs.wanted

    def report_progress(total, cached, processed):
        on_progress({"total": total, "cache": cached, "processed": processed,
                     "time_ms": int(session.timings.prompt_seconds * 1000)}, slot)

    progress = (report_progress if on_progress is not None and req.stream
                and req.return_progress else None)
    try:
        for piece in session.generate(prompt_tokens, req.sampling, n_predict, req.stops,
                                      should_stop, req.constraint(),
                                      n_probs=abs(probs.n) if wanted else 0,
                                      post_sampling=wanted and probs.post,
                                      shown_tokens=req.shown_tokens, on_progress=progress):
            slot.state = "generating"
            pieces.append(piece)
            ids = session.generated[sent:]
            if wanted:
                probs.latest = probs.entries(engine.tokenizer, ids, session.probs[sent:])
            sent = len(session.generated)
            on_piece(piece, ids, slot)
        outcome = Outcome(session, slot, prompt_tokens, "".join(pieces), n_predict)
        outcome.prob_entries = (probs.entries(engine.tokenizer, session.generated, session.probs)
                                if wanted else None)
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
    return outcome


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


def generation_settings(app, sampling, n_predict, stops, stream, req):
    """llama.cpp's generation_settings: the parameters a generation ran with."""
    s = sampling
    eog = sorted(app.engine.tokenizer.eog_ids) if req is not None and req.ignore_eos else []
    return {"n_predict": n_predict, "seed": s.seed if s.seed is not None else -1,
            "temperature": s.temperature, "top_k": s.top_k, "top_p": s.top_p, "min_p": s.min_p,
            "repeat_last_n": s.repeat_last_n, "repeat_penalty": s.repeat_penalty,
            "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
            "stop": list(stops), "stream": stream,
            "cache_prompt": req.cache_prompt if req is not None else True,
            "ignore_eos": bool(req is not None and req.ignore_eos),
            # ignore_eos works as llama.cpp's: end-of-generation tokens biased to -inf (null)
            "logit_bias": [{"token": t, "bias": None} for t in eog],
            "id_slot": req.id_slot if req is not None else -1,
            "samplers": ["penalties", "top_k", "top_p", "min_p", "temperature"]}


def usage(outcomes):
    """OpenAI's usage object over a request's generations."""
    prompt = sum(o.n_prompt for o in _first_per_prompt(outcomes))
    completion = sum(len(o.tokens) for o in outcomes)
    cached = sum(o.timings["cache_n"] for o in outcomes)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


def _first_per_prompt(outcomes):
    seen, out = set(), []
    for o in outcomes:
        if o.prompt_index not in seen:
            seen.add(o.prompt_index)
            out.append(o)
    return out


def finish_reason(outcome):
    return "stop" if outcome.finish_reason == "stop" else "length"


def run_all(app, http, req, prompts, n_choices, names, on_piece):
    """Every (prompt, choice) generation in order; `on_piece(index, piece, ids, slot)`.
    Budgets are checked for every prompt before anything is generated."""
    engine = app.engine
    budgets = [params.budget(engine.n_ctx, req.body, p, names, req.openai, app.n_predict)
               for p in prompts]
    outcomes = []
    for pi, (prompt, n_predict) in enumerate(zip(prompts, budgets)):
        for ci in range(n_choices):
            index = pi * n_choices + ci
            o = generate(app, http, req, prompt, n_predict,
                         lambda piece, ids, slot, i=index: on_piece(i, piece, ids, slot))
            o.index, o.prompt_index = index, pi
            o.prompt_tokens = prompt
            outcomes.append(o)
    return outcomes


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
    n_choices = params.field(body, "n", int, 1, 1, params.MAX_CHOICES)
    options = params.field(body, "stream_options", dict, {})
    include_usage = params.field(options, "include_usage", bool, True)
    request = None
    if chat:
        request = ChatRequest(app, body)
        prompts = [request.prompt_tokens]
    else:
        if "prompt" not in body:
            raise ApiError(400, "'prompt' is required", param="prompt")
        prompts = params.prompt_list(engine.tokenizer, body["prompt"])
    req = Request(app, body, openai=True, chat=chat, chat_request=request)
    names = ("max_completion_tokens", "max_tokens", "n_predict")
    ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
    created = int(time.time())
    model = app.model_name
    kind = "chat.completion" if chat else "text_completion"

    def finish_of(o, message=None):
        if message is not None and message.tool_calls and o.finish_reason == "stop":
            return "tool_calls"
        return finish_reason(o)

    def logprobs_of(entries):
        return {"content": entries} if entries is not None else None

    def envelope(choices, **extra):
        obj = {"id": ident, "object": kind + (".chunk" if req.stream and chat else ""),
               "created": created, "model": model, "system_fingerprint": FINGERPRINT,
               "choices": choices}
        obj.update(extra)
        return obj

    def verbose_of(outcomes):
        o = outcomes[0]
        return {"prompt": engine.tokenizer.decode(o.prompt_tokens), "content": o.text,
                "tokens": o.tokens, "generation_settings": generation_settings(
                    app, req.sampling, o.n_predict, req.stops, req.stream, req)}

    if not req.stream:
        outcomes = run_all(app, http, req, prompts, n_choices, names,
                           lambda i, piece, ids, slot: None)
        choices = []
        for o in outcomes:
            if chat:
                message = request.stream().parse_all(o.text)
                choices.append({"index": o.index, "logprobs": logprobs_of(o.prob_entries),
                                "finish_reason": finish_of(o, message),
                                "message": message_json(message)})
            else:
                choices.append({"index": o.index, "text": o.text,
                                "logprobs": logprobs_of(o.prob_entries),
                                "finish_reason": finish_reason(o)})
        reply = envelope(choices, usage=usage(outcomes), timings=outcomes[-1].timings)
        if req.verbose:
            reply["__verbose"] = verbose_of(outcomes)
        http.send_json(200, reply)
        return

    for p in prompts:       # every budget is checked before the stream opens (400, not an event)
        params.budget(engine.n_ctx, body, p, names, True, app.n_predict)
    http.start_events()
    opened = set()
    parsers = {}
    held = {}           # per choice: logprob entries of text the parser still holds back

    def send(index, delta=None, text=None, logprobs=None, finish=None, extra=None):
        if chat:
            c = {"index": index, "logprobs": logprobs_of(logprobs), "finish_reason": finish,
                 "delta": delta}
        else:
            c = {"index": index, "text": text, "logprobs": logprobs_of(logprobs),
                 "finish_reason": finish}
        http.send_event(envelope([c], **(extra or {})))

    def open_choice(index):
        if chat and index not in opened:      # the role comes first, even for no text
            opened.add(index)
            parsers[index] = request.stream()
            held[index] = []
            send(index, delta={"role": "assistant", "content": None})

    def on_progress(index, progress, slot):
        extra = {"prompt_progress": progress}
        if req.timings_per_token:
            extra["timings"] = timings(slot.session)
        if chat:        # llama-server repeats the opening delta with each progress event
            send(index, delta={"role": "assistant", "content": None}, extra=extra)
        else:
            send(index, text="", extra=extra)

    def on_piece(index, piece, ids, slot):
        open_choice(index)
        extra = {"timings": timings(slot.session)} if req.timings_per_token else {}
        latest = req.probs.latest if req.probs.wanted else None
        if chat:
            if latest:
                held[index].extend(latest)
            for delta in parsers[index].feed(piece):
                logprobs = None
                if req.probs.wanted:
                    logprobs = list(held[index])
                    held[index].clear()
                send(index, delta=delta_json(delta), logprobs=logprobs, extra=extra)
        elif piece:
            send(index, text=piece, logprobs=latest, extra=extra)

    outcomes = []
    for pi, prompt in enumerate(prompts):
        n_predict = params.budget(engine.n_ctx, body, prompt, names, True, app.n_predict)
        for ci in range(n_choices):
            index = pi * n_choices + ci
            open_choice(index)
            o = generate(app, http, req, prompt, n_predict,
                         lambda piece, ids, slot, i=index: on_piece(i, piece, ids, slot),
                         on_progress=lambda progress, slot, i=index: on_progress(i, progress, slot))
            o.index, o.prompt_index, o.prompt_tokens = index, pi, prompt
            outcomes.append(o)
            if chat:
                parser = parsers[index]
                for delta in parser.finish():
                    send(index, delta=delta_json(delta))
                send(index, delta={}, finish=finish_of(o, parser.message))
            else:
                send(index, text="", finish=finish_reason(o))
    if include_usage:
        final = envelope([], usage=usage(outcomes), timings=outcomes[-1].timings)
        if req.verbose:
            final["__verbose"] = verbose_of(outcomes)
        http.send_event(final)
    http.send_event("[DONE]")


def completion(app, http):
    """llama.cpp's /completion: prompt text or ids (or several), n_predict, its fields."""
    engine = app.ready()
    body = http.read_json()
    if "prompt" not in body:
        raise ApiError(400, "'prompt' is required", param="prompt")
    prompts = params.prompt_list(engine.tokenizer, body["prompt"])
    complete(app, http, body, prompts)


def infill(app, http):
    """llama.cpp's /infill: fill in the middle between input_prefix and input_suffix."""
    from runtime.server import infill as fim
    engine = app.ready()
    body = http.read_json()
    n_predict = params.field(body, "n_predict", int, app.n_predict, -1, 1 << 31)
    prompt = fim.infill_tokens(engine.tokenizer, body, app.batch_size, engine.n_ctx, n_predict)
    complete(app, http, body, [prompt])


def complete(app, http, body, prompts):
    engine = app.engine
    req = Request(app, body, openai=False)
    n_choices = params.field(body, "n", int, 1, 1, params.MAX_CHOICES)
    names = ("n_predict", "max_tokens")

    def final(o):
        out = {"index": o.index, "content": o.text,
               "tokens": o.tokens if req.return_tokens else [], "id_slot": o.slot_id,
               "stop": True, "model": app.model_name, "tokens_predicted": len(o.tokens),
               "tokens_evaluated": o.n_prompt,
               "generation_settings": generation_settings(app, req.sampling, o.n_predict,
                                                          req.stops, req.stream, req),
               "prompt": engine.tokenizer.decode(o.prompt_tokens),
               "has_new_line": "\n" in o.text, "truncated": o.truncated,
               "stop_type": o.stop_type, "stopping_word": o.stopping_word,
               "tokens_cached": o.n_cached, "timings": o.timings}
        if o.prob_entries is not None and not req.stream:
            out["completion_probabilities"] = o.prob_entries
        if req.response_fields:
            return {path: _nested(out, path) for path in req.response_fields
                    if _nested(out, path) is not _MISSING}
        return out

    if not req.stream:
        outcomes = run_all(app, http, req, prompts, n_choices, names,
                           lambda i, piece, ids, slot: None)
        results = [final(o) for o in outcomes]
        http.send_json(200, results[0] if len(results) == 1 else results)
        return

    for p in prompts:
        params.budget(engine.n_ctx, body, p, names, False, app.n_predict)
    http.start_events()

    def on_piece(index, piece, ids, slot, progress=None):
        chunk = {"index": index, "content": piece, "tokens": list(ids), "stop": False,
                 "id_slot": slot.id, "tokens_predicted": len(slot.session.generated),
                 "tokens_evaluated": slot.n_prompt}
        if req.timings_per_token:
            chunk["timings"] = timings(slot.session)
        if progress is not None:
            chunk["prompt_progress"] = progress
        elif req.probs.wanted:
            chunk["completion_probabilities"] = req.probs.latest
        http.send_event(chunk)

    for pi, prompt in enumerate(prompts):
        n_predict = params.budget(engine.n_ctx, body, prompt, names, False, app.n_predict)
        for ci in range(n_choices):
            index = pi * n_choices + ci
            o = generate(app, http, req, prompt, n_predict,
                         lambda piece, ids, slot, i=index: on_piece(i, piece, ids, slot),
                         on_progress=lambda progress, slot, i=index: on_piece(
                             i, "", (), slot, progress))
            o.index, o.prompt_index, o.prompt_tokens = index, pi, prompt
            last = final(o)
            if "content" in last:
                last["content"] = ""        # the text went out in the chunks
            http.send_event(last)


_MISSING = object()


def _nested(obj, path):
    """obj["a"]["b"] for the path "a/b" (llama.cpp's response_fields)."""
    for key in path.split("/"):
        if not isinstance(obj, dict) or key not in obj:
            return _MISSING
        obj = obj[key]
    return obj
