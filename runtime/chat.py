"""Chat formatting: a conversation (a list of {"role", "content"} messages) to the
prompt text a model was trained on.

Instruct models carry their format as a Jinja template in `tokenizer.chat_template`.
We render it the way Hugging Face's `apply_chat_template` does (a sandboxed, immutable
environment with trim_blocks and lstrip_blocks, and the helpers real templates call),
so the text matches what the model saw in training. A model without a template gets
llama.cpp's fallback, chatml (runtime/chat_builtin.py holds llama.cpp's built-in
formats by name).

jinja2 is pure Python and travels inside the bundle; it is imported only when a
template is actually rendered, so plain completion never pays for it.
"""

import datetime
import json
import sys
import time

from runtime.errors import UserError

# A template is code from the model file or the command line, so its rendering is
# bounded: no value or output over MAX_RENDER_CHARS, no more than MAX_RENDER_SECONDS
# and MAX_RENDER_GROWTH bytes of new memory. Real templates render a conversation in
# milliseconds and its size in characters.
MAX_RENDER_CHARS = 16 << 20
MAX_RENDER_SECONDS = 10.0
MAX_RENDER_GROWTH = 512 << 20

# Gemma 3's own template folds a system message into the first user turn this way;
# we do the same for templates that reject or drop the system role.
SYSTEM_FOLD_SEPARATOR = "\n\n"


class TemplateRejected(UserError):
    """The template called raise_exception(): it does not accept this conversation."""


class TemplateLimit(UserError):
    """The template went past a rendering limit (size, time or memory)."""


def _too_big(what, n):
    raise TemplateLimit(f"the chat template makes {what} of {n} characters (the limit is "
                        f"{MAX_RENDER_CHARS}); fix the template or pass another with "
                        "--chat-template")


def _rss_bytes():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return 0


# Jinja compiles a template from a string into code with this file name.
TEMPLATE_FILENAME = "<template>"


class _RenderGuard:
    """A trace function that stops a render past the time or memory limit, checked
    every 256 trace events. Only the template's own code is traced line by line (a
    loop in a template produces line events as it runs); Jinja's and Python's library
    frames are seen as calls only, which keeps the guard's cost near a tenth of
    tracing every line (measured: 20.5 ms vs 2.6 ms unguarded over nine real templates
    before, see the commit)."""

    def __init__(self):
        self.deadline = time.monotonic() + MAX_RENDER_SECONDS
        self.rss0 = _rss_bytes()
        self.events = 0

    def _tick(self):
        self.events += 1
        if not self.events & 255:
            if time.monotonic() > self.deadline:
                raise TemplateLimit(f"the chat template ran for over {MAX_RENDER_SECONDS:g} s; "
                                    "fix the template or pass another with --chat-template")
            if _rss_bytes() - self.rss0 > MAX_RENDER_GROWTH:
                raise TemplateLimit(f"the chat template used over {MAX_RENDER_GROWTH >> 20} MB "
                                    "of memory; fix the template or pass another with "
                                    "--chat-template")

    def trace(self, frame, event, arg):
        # The global trace function: called as each frame starts.
        self._tick()
        return self.trace_lines if frame.f_code.co_filename == TEMPLATE_FILENAME else None

    def trace_lines(self, frame, event, arg):
        self._tick()
        return self.trace_lines

    def __enter__(self):
        self.previous = sys.gettrace()
        sys.settrace(self.trace)
        return self

    def __exit__(self, *exc):
        sys.settrace(self.previous)
        return False


def _sized(value):
    return isinstance(value, (str, list, tuple))


def _check_args(args, kwargs):
    """A count argument (center(300000000), ljust, zfill, repeat...) past the limit."""
    for a in list(args) + list(kwargs.values()):
        if type(a) is int and a > MAX_RENDER_CHARS:
            _too_big("a value", a)


def _raise_exception(message):
    raise TemplateRejected(f"the chat template rejects this conversation: {message}")


def _tojson(value, indent=None, separators=None, sort_keys=False, ensure_ascii=False):
    # Jinja's own tojson HTML-escapes <, >, & and '; chat templates want plain JSON.
    # Filters such as map() hand over generators: written as the arrays they yield.
    return json.dumps(value, indent=indent, separators=separators, sort_keys=sort_keys,
                      ensure_ascii=ensure_ascii, default=_json_default)


def _json_default(value):
    if hasattr(value, "__iter__") and not isinstance(value, (str, bytes, dict)):
        return list(value)
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _make_environment():
    try:
        import jinja2
        import jinja2.ext
        import jinja2.nodes
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError as e:
        from runtime import archive
        if archive.current() is not None:   # a bundle's own copy is missing: damage
            raise UserError(f"chat templates need jinja2, and {e}") from None
        raise UserError("chat templates need jinja2, which this python lacks; install it "
                        "(pip install jinja2) or run a llamazip bundle, which carries "
                        "its own copy") from None

    class GenerationTag(jinja2.ext.Extension):
        """`{% generation %}...{% endgeneration %}` marks the assistant's part for
        training masks (HF's AssistantTracker); for rendering it is transparent."""
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, with every result that could be huge checked before it is
        made: repetition, concatenation and powers, and calls with a huge count."""
        intercepted_binops = frozenset(["*", "+", "**"])

        def call_binop(self, context, operator, left, right):
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if _sized(seq) and type(n) is int and len(seq) * n > MAX_RENDER_CHARS:
                        _too_big("a repetition", len(seq) * n)
            elif operator == "+" and _sized(left) and _sized(right):
                if len(left) + len(right) > MAX_RENDER_CHARS:
                    _too_big("a concatenation", len(left) + len(right))
            elif operator == "**" and type(right) is int and abs(right) > 1024 \
                    and type(left) in (int, float) and abs(left) > 1:
                _too_big("a power", right)
            return super().call_binop(context, operator, left, right)

        def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 (Jinja's names)
            _check_args(args, kwargs)
            return super().call(__context, __obj, *args, **kwargs)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[GenerationTag, jinja2.ext.loopcontrols])
    # filters are called directly, not through call(): the ones taking a width
    for name in ("center", "indent", "wordwrap", "truncate", "batch", "slice"):
        env.filters[name] = _bounded_filter(env.filters[name])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    return env


def _bounded_filter(fn):
    def bounded(*args, **kwargs):
        _check_args(args[1:], kwargs)
        return fn(*args, **kwargs)
    # keep Jinja's pass_context / pass_environment markers
    for attr in ("jinja_pass_arg",):
        if hasattr(fn, attr):
            setattr(bounded, attr, getattr(fn, attr))
    return bounded


def _bound_concatenation(template):
    """`a ~ b` compiles to a call of str_join / markup_join from the template module's
    own globals, which no sandbox hook sees; wrap them there."""
    names = template.root_render_func.__globals__
    for name in ("str_join", "markup_join"):
        join = names.get(name)
        if join is not None and not getattr(join, "bounded", False):
            names[name] = _bounded_join(join)


def _bounded_join(join):
    def bounded(seq):
        items = list(seq)
        total = sum(len(x) for x in items if isinstance(x, str))
        if total > MAX_RENDER_CHARS:
            _too_big("a concatenation", total)
        return join(items)
    bounded.bounded = True
    return bounded


class ChatTemplate:
    """A Jinja chat template with the model's BOS/EOS token texts."""

    def __init__(self, source, bos_token="", eos_token="", now=None):
        self.source = source
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.now = now or datetime.datetime.now   # strftime_now's clock; tests fix it
        env = _make_environment()
        import jinja2
        try:
            self.template = env.from_string(source)
        except jinja2.TemplateSyntaxError as e:
            raise UserError(f"the chat template has a syntax error at line {e.lineno}: "
                            f"{e.message}") from None
        _bound_concatenation(self.template)
        self._system_supported = None

    def _render_raw(self, messages, add_generation_prompt, context=None):
        import jinja2
        variables = dict(context or {})
        variables.update(messages=messages, add_generation_prompt=add_generation_prompt,
                         bos_token=self.bos_token, eos_token=self.eos_token,
                         strftime_now=lambda fmt: self.now().strftime(fmt))
        try:
            with _RenderGuard():
                text = self.template.render(**variables)
            if len(text) > MAX_RENDER_CHARS:
                _too_big("a prompt", len(text))
            return text
        except UserError:
            raise
        except jinja2.TemplateError as e:
            raise UserError(f"the chat template failed: {e}") from None
        except Exception as e:  # a template is code: any failure in it is the template's
            raise UserError(f"the chat template failed: {type(e).__name__}: {e}") from None

    @property
    def supports_system(self):
        """Whether a system message shows up in the rendered text (probed once)."""
        if self._system_supported is None:
            needle = "<<system needle 7d1f>>"
            probe = [{"role": "system", "content": needle}, {"role": "user", "content": "hi"}]
            try:
                self._system_supported = needle in self._render_raw(probe, True)
            except UserError:
                self._system_supported = False
        return self._system_supported

    def render(self, messages, add_generation_prompt=True, context=None):
        """The prompt text for `messages`; `context` holds more template variables
        (tools, enable_thinking, chat_template_kwargs). A system message that the
        template cannot take is folded into the first user message instead of being lost."""
        messages = [dict(m) for m in messages]
        if messages and messages[0]["role"] == "system" and not self.supports_system:
            system = messages.pop(0)["content"]
            if messages and messages[0]["role"] == "user":
                messages[0]["content"] = system + SYSTEM_FOLD_SEPARATOR + messages[0]["content"]
            elif system:
                messages.insert(0, {"role": "user", "content": system})
        return self._render_raw(messages, add_generation_prompt, context)


# Reasoning markers: (opening, closing). With thinking off, a prompt that leaves the
# model inside an opened block gets it closed, and a template that thinks without an
# enable_thinking switch gets an empty block, as llama.cpp does.
THINKING_TAGS = (("<think>", "</think>"), ("<|START_THINKING|>", "<|END_THINKING|>"))


def render_chat(fmt, messages, add_generation_prompt=True, continue_final=False, context=None):
    """The prompt text of a chat request. `continue_final`: the last (assistant)
    message is left open for the model to continue (prefill). `context`: template
    variables beyond the messages (tools, enable_thinking, chat_template_kwargs)."""
    context = dict(context or {})

    def render(msgs, gen):
        if isinstance(fmt, ChatTemplate):
            return fmt.render(msgs, gen, context)
        return fmt.render(msgs, gen)

    if continue_final and messages and messages[-1]["role"] == "assistant":
        prefill = messages[-1]["content"]
        if not prefill:
            return render(messages[:-1], True)
        full = render(messages, False)
        at = full.rfind(prefill)
        if at < 0:
            raise UserError("the chat template changes the final assistant message, so it "
                            "cannot be continued; send it without continue_final_message")
        return full[:at + len(prefill)]
    text = render(messages, add_generation_prompt)
    if add_generation_prompt and context.get("enable_thinking") is False:
        text = _close_thinking(fmt, text)
    return text


def _close_thinking(fmt, text):
    source = getattr(fmt, "source", "") or ""
    tail = text.rstrip()
    for opening, closing in THINKING_TAGS:
        if opening not in source:
            continue
        if tail.endswith(closing):
            return text                                  # the template closed it already
        if tail.endswith(opening):
            return text + closing
        if "enable_thinking" not in source:
            return text + opening + closing
    return text


def token_text(gguf, token_id):
    """The text of a special token (BOS/EOS) as templates write it, or ""."""
    tokens = gguf.get("tokenizer.ggml.tokens") or []
    if token_id is not None and 0 <= token_id < len(tokens):
        return tokens[token_id]
    return ""


def load_chat_format(gguf, template=None, now=None, notice=None):
    """The chat format: --chat-template NAME (llama.cpp's built-in formats) or FILE (a
    Jinja template), else the GGUF's template. A model without one gets llama.cpp's
    fallback, chatml, and `notice` (a callable taking one line) is told so once."""
    from runtime import chat_builtin
    if template and template in chat_builtin.FORMATS:
        return chat_builtin.BuiltinFormat(template)
    if template:
        try:
            with open(template, encoding="utf-8") as f:
                source = f.read()
        except FileNotFoundError:
            raise UserError(f"--chat-template {template}: no such file, and not a built-in "
                            f"name ({', '.join(sorted(chat_builtin.FORMATS))})") from None
        except OSError as e:
            raise UserError(f"cannot read chat template {template}: {e.strerror}") from None
        except UnicodeDecodeError:
            raise UserError(f"chat template {template} is not UTF-8 text") from None
    else:
        source = gguf.get("tokenizer.chat_template")
    if not source:
        if notice is not None:
            notice(f"note: this model has no chat template; formatting the chat as "
                   f"{chat_builtin.FALLBACK} (pass --chat-template NAME or FILE to choose)")
        return chat_builtin.BuiltinFormat(chat_builtin.FALLBACK)
    bos = token_text(gguf, gguf.get("tokenizer.ggml.bos_token_id"))
    eos = token_text(gguf, gguf.get("tokenizer.ggml.eos_token_id"))
    return ChatTemplate(source, bos_token=bos, eos_token=eos, now=now)


class Conversation:
    """The messages so far, and how they become prompt tokens.

    The whole conversation is re-rendered and re-tokenized each turn; the session's
    cache reuse then computes only what differs from last time, which for every
    template that renders earlier turns the same way is just the new turn.
    """

    def __init__(self, fmt, tokenizer, system_prompt=None):
        self.fmt = fmt
        self.tokenizer = tokenizer
        self.messages = []
        self.set_system(system_prompt)

    def set_system(self, text):
        if self.messages and self.messages[0]["role"] == "system":
            self.messages.pop(0)
        if text:
            self.messages.insert(0, {"role": "system", "content": text})

    @property
    def system(self):
        return self.messages[0]["content"] if self.messages and \
            self.messages[0]["role"] == "system" else None

    @property
    def turns(self):
        """Messages after the system prompt."""
        return self.messages[1:] if self.system is not None else self.messages

    def clear(self):
        del self.messages[len(self.messages) - len(self.turns):]

    def undo(self):
        """Drop the last user message and its reply; False when there is none."""
        turns = self.turns
        for i in range(len(turns) - 1, -1, -1):
            if turns[i]["role"] == "user":
                del self.messages[len(self.messages) - len(turns) + i:]
                return True
        return False

    def drop_oldest_turn(self):
        """Drop the first user message and the replies up to the next one."""
        start = len(self.messages) - len(self.turns)
        if start >= len(self.messages):
            return False
        end = start + 1
        while end < len(self.messages) and self.messages[end]["role"] != "user":
            end += 1
        del self.messages[start:end]
        return True

    def tokens(self, add_generation_prompt=True):
        return self.text_tokens(self.fmt.render(self.messages, add_generation_prompt))

    def text_tokens(self, text):
        """Token ids of a rendered conversation."""
        ids = self.tokenizer.encode(text, add_special=True, parse_special=True)
        # Templates that write bos_token themselves, on a tokenizer that adds BOS too:
        # keep one, as llama.cpp does.
        bos = self.tokenizer.bos_id
        if len(ids) >= 2 and bos is not None and ids[0] == bos and ids[1] == bos:
            ids = ids[1:]
        return ids

    def to_json(self):
        return {"messages": self.messages}

    def load_json(self, data, source):
        messages = data.get("messages") if isinstance(data, dict) else data
        if not isinstance(messages, list):
            raise UserError(f"{source} holds no conversation (expected {{\"messages\": [...]}})")
        clean = []
        for i, m in enumerate(messages):
            if not (isinstance(m, dict) and m.get("role") in ("system", "user", "assistant")
                    and isinstance(m.get("content"), str)):
                raise UserError(f"{source}: message {i} is not a {{role, content}} object "
                                "with role system, user or assistant")
            if m["role"] == "system" and i != 0:
                raise UserError(f"{source}: message {i}: a system message may only come first")
            clean.append({"role": m["role"], "content": m["content"]})
        self.messages = clean
