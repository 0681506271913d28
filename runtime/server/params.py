"""Requests to parameters: each field checked (type, range) with an error naming it,
prompts and chat messages to token ids, the sampling, the constraint, the budget."""

import datetime
import json
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

PROMPT_STRING_KEY = "prompt_string"        # llama.cpp's JSON-object prompt
MULTIMODAL_KEY = "multimodal_data"


def _is_token(t):
    return isinstance(t, int) and not isinstance(t, bool)


def one_prompt(tokenizer, prompt, param="prompt"):
    """Token ids of one prompt: text, token ids, text and ids mixed in one array, or
    llama.cpp's {"prompt_string": ...} object."""
    if isinstance(prompt, dict) and "content" in prompt and PROMPT_STRING_KEY not in prompt:
        prompt = {PROMPT_STRING_KEY: content_parts_text(prompt["content"], param)}
    if isinstance(prompt, dict):
        if MULTIMODAL_KEY in prompt:
            raise ApiError(400, "multimodal_data was sent, but this model takes text only",
                           param=param)
        if PROMPT_STRING_KEY not in prompt:
            raise ApiError(400, f"a prompt object needs '{PROMPT_STRING_KEY}'", param=param)
        prompt = prompt[PROMPT_STRING_KEY]
    if isinstance(prompt, str):
        prompt = [prompt]
    if not isinstance(prompt, list) or not all(_is_token(t) or isinstance(t, str)
                                               for t in prompt):
        raise ApiError(400, f"'{param}' must be a string, token ids, text and token ids "
                            f"mixed, or an object with '{PROMPT_STRING_KEY}'", param=param)
    ids = []
    for i, part in enumerate(prompt):
        if isinstance(part, str):
            # as llama.cpp: only text at the very start gets the BOS token
            ids += tokenizer.encode(part, add_special=i == 0, parse_special=True)
        else:
            ids.append(part)
    token_ids(tokenizer, ids, param)
    return ids


def content_parts_text(content, param):
    """The text of a {"content": [{"type": "text", "text": ...}, ...]} input (embeddings'
    multipart form); this model reads text only."""
    if not isinstance(content, list) or not content:
        raise ApiError(400, f"'{param}' content must be a non-empty array of parts",
                       param=param)
    texts = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in ("image_url", "input_audio", "input_video", "input_image"):
            raise ApiError(400, f"a {kind} part was sent, but this model takes text only",
                           param=param)
        else:
            raise ApiError(400, f"'{param}' content parts must be {{\"type\": \"text\", "
                                f"\"text\": ...}}", param=param)
    return "".join(texts)


def prompt_list(tokenizer, prompt, param="prompt"):
    """Token ids of each prompt of a request: an array that holds no token id at its top
    level is several prompts (each any form one_prompt takes); anything else is one."""
    if isinstance(prompt, list) and prompt and not any(_is_token(t) for t in prompt):
        if len(prompt) > MAX_PROMPTS:
            raise ApiError(400, f"at most {MAX_PROMPTS} prompts per request", param=param)
        return [one_prompt(tokenizer, p, param) for p in prompt]
    return [one_prompt(tokenizer, prompt, param)]


MAX_PROMPTS = 64
MAX_CHOICES = 16


class ChatPrompt:
    """What a chat request renders: the messages, whether the model's turn is opened
    (add_generation_prompt) or the last assistant message continued (prefill /
    continue_final_message), the template's extra variables (tools,
    chat_template_kwargs, enable_thinking)."""

    def __init__(self, app, body, messages, tools=None):
        self.messages = messages        # checked and normalised by chat.ChatRequest
        add_gen = field(body, "add_generation_prompt", bool, None)
        cont = field(body, "continue_final_message", bool, None)
        last_is_assistant = bool(self.messages) and self.messages[-1]["role"] == "assistant"
        if cont and add_gen:
            raise ApiError(400, "add_generation_prompt and continue_final_message cannot both "
                                "be true", param="continue_final_message")
        if cont is None and last_is_assistant and not add_gen:
            cont = True             # llama-server's assistant prefill
        if cont and last_is_assistant and len(self.messages) >= 2 \
                and self.messages[-2]["role"] == "assistant":
            raise ApiError(400, "cannot have 2 or more assistant messages at the end of the "
                                "list", param="messages")
        self.continue_final = bool(cont and last_is_assistant)
        self.add_generation_prompt = (not self.continue_final) if add_gen is None else add_gen
        kwargs = field(body, "chat_template_kwargs", dict, {})
        enable = app.reasoning != "off"
        if "enable_thinking" in kwargs:
            if not isinstance(kwargs["enable_thinking"], bool):
                raise ApiError(400, "chat_template_kwargs.enable_thinking must be a boolean",
                               param="chat_template_kwargs")
            enable = kwargs["enable_thinking"]
        if body.get("reasoning_effort") == "none":
            enable = False
        # llama-server gives every template today's date (Llama 3.x print it; without it
        # they print their own default), then the request's chat_template_kwargs.
        now = datetime.datetime.now()
        self.context = {"datetime": now.strftime("%b %d %Y"),
                        "date_string": now.strftime("%d %b %Y")}
        self.context.update(kwargs)
        self.context["enable_thinking"] = enable
        if tools:
            self.context["tools"] = tools
        # Templates of the FireFunction kind read the tools as one JSON text, `functions`.
        self.context.setdefault("functions", json.dumps(tools, indent=2) if tools else "")

    def text(self, fmt):
        """The prompt text through chat format `fmt`."""
        from runtime.chat import render_chat
        return render_chat(fmt, self.messages, self.add_generation_prompt,
                           self.continue_final, self.context)


def chat_text_tokens(tokenizer, text):
    ids = tokenizer.encode(text, add_special=True, parse_special=True)
    # Templates that write bos_token themselves, on a tokenizer that adds BOS too: one.
    bos = tokenizer.bos_id
    if len(ids) >= 2 and bos is not None and ids[0] == bos and ids[1] == bos:
        ids = ids[1:]
    return ids


def sampling(defaults, body, openai, tokenizer=None):
    """The request's sampling fields over the server's defaults (the command line's)."""
    from runtime.sampling import SamplingParams
    d = defaults
    return SamplingParams(
        logit_bias=logit_bias(tokenizer, body) if tokenizer is not None else {},
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

def constraint(tokenizer, body, default_grammar=None):
    """The request's `grammar`, `json_schema` or `response_format` as a Constraint
    (runtime/constraint.py), else the server's --grammar, else None. A malformed one
    is a 400 naming where; one too large to compile is a 413."""
    from runtime import constraint as engine
    grammar = field(body, "grammar", str)
    schema = body.get("json_schema")
    param = "json_schema"
    fmt = body.get("response_format")
    if fmt is not None:
        if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
            raise ApiError(400, "'response_format' must be an object with a 'type'",
                           param="response_format")
        kind = fmt["type"]
        if kind == "json_object":
            if "schema" in fmt or schema is None:     # llama.cpp accepts a schema here too
                schema = fmt.get("schema", {})
                param = "response_format"
        elif kind == "json_schema":
            spec = fmt.get("json_schema")
            if not isinstance(spec, dict) or not isinstance(spec.get("schema", {}), (dict, bool)):
                raise ApiError(400, "'response_format.json_schema' must be an object with a "
                                    "'schema' object", param="response_format")
            schema = spec.get("schema", {})
            param = "response_format"
        elif kind != "text":
            raise ApiError(400, f"response_format type {kind!r} is not supported "
                                "(text, json_object, json_schema)", param="response_format")
    if grammar and schema is not None:
        raise ApiError(400, "give either 'grammar' or a JSON schema, not both", param="grammar")
    try:
        if schema is not None:
            if not isinstance(schema, (dict, bool)):
                raise engine.SchemaError(f"the schema must be an object, got "
                                         f"{type(schema).__name__}")
            return engine.from_schema(tokenizer, schema if schema != {} else {"type": "object"})
        if grammar:
            param = "grammar"
            return engine.from_grammar(tokenizer, grammar)
        if default_grammar:
            return engine.from_grammar(tokenizer, default_grammar)
    except (engine.SchemaError, engine.GrammarError) as e:
        what = "JSON schema" if param != "grammar" else "grammar"
        if engine.is_limit_error(e):
            raise ApiError(413, f"the {what} is too large: {e}", param=param) from None
        raise ApiError(400, f"invalid {what}: {e}", param=param) from None
    return None


MAX_LOGIT_BIAS = 4096       # entries in one request's logit_bias


def logit_bias(tokenizer, body):
    """OpenAI's {"id": bias} or llama.cpp's [[id | text, bias]] as {token id: bias};
    a text key biases each of its tokens; `false` bans (-inf)."""
    raw = body.get("logit_bias")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        pairs = list(raw.items())
    elif isinstance(raw, list) and all(isinstance(e, list) and len(e) == 2 for e in raw):
        pairs = [tuple(e) for e in raw]
    else:
        raise ApiError(400, "'logit_bias' must be an object {token: bias} or an array of "
                            "[token, bias] pairs", param="logit_bias")
    if len(pairs) > MAX_LOGIT_BIAS:
        raise ApiError(400, f"'logit_bias' has {len(pairs)} entries; the limit is "
                            f"{MAX_LOGIT_BIAS}", param="logit_bias")
    n_vocab = tokenizer.n_vocab
    out = {}
    for key, value in pairs:
        if value is False:
            bias = float("-inf")
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and \
                math.isfinite(value):
            bias = float(value)
        else:
            raise ApiError(400, f"logit_bias for {key!r} must be a number or false",
                           param="logit_bias")
        if isinstance(key, str) and key.lstrip("-").isdigit() and isinstance(raw, dict):
            key = int(key)
        if isinstance(key, int) and not isinstance(key, bool):
            if not 0 <= key < n_vocab:
                raise ApiError(400, f"logit_bias token id {key} is outside the vocabulary "
                                    f"(0..{n_vocab - 1})", param="logit_bias")
            ids = [key]
        elif isinstance(key, str):
            ids = tokenizer.encode(key, add_special=False, parse_special=False)
        else:
            raise ApiError(400, "logit_bias keys must be token ids or text", param="logit_bias")
        for t in ids:
            out[t] = out.get(t, 0.0) + bias
    return out


def probs_request(body, openai_chat=False, openai_completion=False):
    """(n_probs, post_sampling): how many alternatives to report per generated token,
    0 for none; llama.cpp's n_probs / post_sampling_probs, OpenAI's logprobs /
    top_logprobs. Returns n_probs = -1 for "the chosen token only" (OpenAI's
    logprobs without top_logprobs)."""
    if openai_chat:
        wanted = field(body, "logprobs", bool, False)
        top = field(body, "top_logprobs", int, None, 0, 20)
        if top is not None and not wanted:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
        if not wanted:
            return 0, False
        return (top if top else -1), False
    if openai_completion:
        value = body.get("logprobs")
        if value is None or value is False:
            return 0, False
        if value is True:
            return -1, False
        n = field(body, "logprobs", int, 0, 0, 20)
        return (n if n else -1), False
    n = field(body, "n_probs", int, 0, 0, 1000)
    return n, field(body, "post_sampling_probs", bool, False)


def check_openai(body):
    """Refuse OpenAI fields we do not honour rather than ignore them."""
    field(body, "n", int, 1, 1, MAX_CHOICES)
    if body.get("functions") or body.get("function_call"):
        raise ApiError(400, "the legacy 'functions' field is not supported; send 'tools'",
                       param="functions")
    if field(body, "best_of", int, 1) != 1:
        raise ApiError(400, "only best_of=1 is supported", param="best_of")
    if field(body, "echo", bool, False):
        raise ApiError(400, "echo is not supported", param="echo")
    field(body, "model", str)
    field(body, "user", str)


def budget(n_ctx, body, prompt_tokens, names, openai, server_default=-1):
    """Tokens to generate: the request's limit (else the server's --n-predict), checked
    against the slot's context."""
    limit = None
    param = names[0]
    for name in names:
        if body.get(name) is not None:
            limit = field(body, name, int, None, -1 if not openai else 1, 1 << 31)
            param = name
            break
    if len(prompt_tokens) >= n_ctx:
        from runtime.server.errors import context_exceeded
        raise context_exceeded(len(prompt_tokens), n_ctx,
                               "messages" if "messages" in body else "prompt")
    room = n_ctx - len(prompt_tokens)
    if limit is None or limit < 0:
        limit = server_default
    if limit is None or limit < 0:
        return room
    if limit > room:
        if openai and body.get(param) is not None:
            raise ApiError(400, f"{param}={limit} does not fit: the context is {n_ctx} tokens "
                                f"and the prompt takes {len(prompt_tokens)}; at most {room} "
                                "tokens can be generated", param=param,
                           code="context_length_exceeded")
        return room
    return limit
