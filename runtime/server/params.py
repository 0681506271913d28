"""Requests to parameters: each field checked (type, range) with an error naming it,
prompts and chat messages to token ids, the sampling, the constraint, the budget."""

import math

from runtime.server.errors import ApiError


def field(body, name, kind, default=None, lo=None, hi=None):
    """body[name] checked against `kind` (int, float, bool, str, list, dict) and range."""
    value = body.get(name, default)
    if value is None:
        return default
    ok = {
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
        and math.isfinite(v),
        bool: lambda v: isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        list: lambda v: isinstance(v, list),
        dict: lambda v: isinstance(v, dict),
    }[kind](value)
    if not ok:
        names = {int: "an integer", float: "a number", bool: "a boolean", str: "a string",
                 list: "an array", dict: "an object"}
        raise ApiError(400, f"'{name}' must be {names[kind]}", param=name)
    if lo is not None and value < lo or hi is not None and value > hi:
        raise ApiError(400, f"'{name}' must be between {lo} and {hi}, got {value}", param=name)
    return value


def stops(body, name="stop"):
    stop = body.get(name)
    if stop is None:
        return []
    if isinstance(stop, str):
        return [stop] if stop else []
    if isinstance(stop, list) and all(isinstance(s, str) for s in stop) and len(stop) <= 16:
        return [s for s in stop if s]
    raise ApiError(400, f"'{name}' must be a string or an array of at most 16 strings", param=name)




class WithoutTokens:
    """A logits row with some tokens masked to -inf, without copying the vocabulary:
    top(k) asks the row for a few more candidates and drops the masked ones."""

    def __init__(self, logits, banned):
        self.logits = logits
        self.banned = banned

    def __len__(self):
        return len(self.logits)

    def __getitem__(self, i):
        return float("-inf") if i in self.banned else self.logits[i]

    def __iter__(self):
        return (self[i] for i in range(len(self.logits)))

    def top(self, k):
        from runtime.sampling import as_logits
        best = as_logits(self.logits).top(k + len(self.banned))
        return [(v, t) for v, t in best if t not in self.banned][:k]


class IgnoreEos:
    """llama.cpp's `ignore_eos`: generate past end-of-generation tokens (benchmarks)."""

    def __init__(self, eog_ids):
        self.eog = eog_ids

    def sample(self, sampler, logits, history):
        return sampler.sample(WithoutTokens(logits, self.eog), history)

    def advance(self, token):
        return False


def token_ids(tokenizer, value, param, allow_empty=False):
    """A list of token ids, each inside the vocabulary."""
    n_vocab = tokenizer.n_vocab
    if not isinstance(value, list) or not all(
            isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ApiError(400, f"'{param}' must be an array of token ids", param=param)
    bad = [t for t in value if not 0 <= t < n_vocab]
    if bad:
        raise ApiError(400, f"token id {bad[0]} is outside the vocabulary (0..{n_vocab - 1})",
                       param=param)
    if not value and not allow_empty:
        raise ApiError(400, f"'{param}' is empty", param=param)
    return value

def prompt_tokens(tokenizer, prompt, param="prompt"):
    """Token ids of a completion prompt: text, [text], or token ids."""
    tok = tokenizer
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        if not prompt:
            raise ApiError(400, f"'{param}' is empty", param=param)
        return tok.encode(prompt, add_special=True, parse_special=True)
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return token_ids(tok, prompt, param)
    if isinstance(prompt, list) and len(prompt) > 1:
        raise ApiError(400, "only one prompt per request is supported (n=1)", param=param)
    raise ApiError(400, f"'{param}' must be a string or an array of token ids", param=param)

def sampling(defaults, body, openai):
    """The request's sampling fields over the server's defaults (the command line's)."""
    from runtime.sampling import SamplingParams
    d = defaults
    return SamplingParams(
        temperature=field(body, "temperature", float, d.temperature, 0.0, 2.0 if openai else 100.0),
        top_k=field(body, "top_k", int, d.top_k, 0, 1 << 30),
        top_p=field(body, "top_p", float, d.top_p, 0.0, 1.0),
        min_p=field(body, "min_p", float, d.min_p, 0.0, 1.0),
        repeat_penalty=field(body, "repeat_penalty", float, d.repeat_penalty, 0.0, 10.0),
        repeat_last_n=field(body, "repeat_last_n", int, d.repeat_last_n, -1, 1 << 20),
        presence_penalty=field(body, "presence_penalty", float, d.presence_penalty, -2.0, 2.0),
        frequency_penalty=field(body, "frequency_penalty", float, d.frequency_penalty,
                                 -2.0, 2.0),
        seed=field(body, "seed", int, d.seed, -(1 << 63), (1 << 64) - 1))

def constraint(tokenizer, body):
    """The response_format as a JsonConstraint, or None."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise ApiError(400, "'response_format' must be an object with a 'type'",
                       param="response_format")
    from runtime.json_constraint import JsonConstraint, SchemaError
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        schema = fmt.get("schema")       # llama.cpp accepts a schema here too
    elif kind == "json_schema":
        spec = fmt.get("json_schema")
        if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), dict):
            raise ApiError(400, "'response_format.json_schema' must be an object with a "
                                "'schema' object", param="response_format")
        schema = spec.get("schema", {})
    else:
        raise ApiError(400, f"response_format type {kind!r} is not supported "
                            "(text, json_object, json_schema)", param="response_format")
    try:
        return JsonConstraint(tokenizer, schema)
    except (SchemaError, TypeError, ValueError) as e:
        raise ApiError(400, f"unsupported JSON schema: {e}", param="response_format") from None

def check_openai(body):
    """Refuse OpenAI fields we do not honour rather than ignore them."""
    n = field(body, "n", int, 1)
    if n != 1:
        raise ApiError(400, "only n=1 is supported", param="n")
    if body.get("logprobs") not in (None, False) or body.get("top_logprobs") is not None:
        raise ApiError(400, "logprobs are not supported", param="logprobs")
    if body.get("functions") or body.get("function_call"):
        raise ApiError(400, "the legacy 'functions' field is not supported; send 'tools'",
                       param="functions")
    if field(body, "best_of", int, 1) != 1:
        raise ApiError(400, "only best_of=1 is supported", param="best_of")
    if field(body, "echo", bool, False):
        raise ApiError(400, "echo is not supported", param="echo")
    field(body, "model", str)
    field(body, "user", str)

def budget(n_ctx, body, prompt_tokens, names, openai):
    """Tokens to generate: the request's limit, checked against the context."""
    limit = None
    for name in names:
        if body.get(name) is not None:
            limit = field(body, name, int, None, -1 if not openai else 1, 1 << 31)
            param = name
            break
    if len(prompt_tokens) >= n_ctx:
        raise ApiError(400, f"the prompt is {len(prompt_tokens)} tokens but the context is "
                            f"{n_ctx}; shorten it", param="messages" if "messages" in body
                       else "prompt", code="context_length_exceeded")
    room = n_ctx - len(prompt_tokens)
    if limit is None or limit < 0:
        return room
    if limit > room:
        if openai:
            raise ApiError(400, f"{param}={limit} does not fit: the context is {n_ctx} tokens "
                                f"and the prompt takes {len(prompt_tokens)}; at most {room} "
                                "tokens can be generated", param=param,
                           code="context_length_exceeded")
        return room
    return limit
