"""Terminal chat: one-shot chat turns and the interactive `>>> ` loop.

The conversation lives in runtime.chat.Conversation; each turn re-renders all of it
and hands the tokens to Session.generate, whose cache reuse makes a new turn cost
only its new tokens. Replies stream to stdout; notices go to stderr so a piped
`--chat` run prints nothing but the answer.
"""

import json
import shutil
import signal
import sys
import unicodedata

from runtime.errors import UserError

HELP = """\
commands:
  /help                 this list
  /clear                forget the conversation (the system prompt stays)
  /undo                 forget your last message and its reply
  /stats                tokens and speed of the last reply
  /context              tokens the conversation uses, of the context size
  /system TEXT          set the system prompt (no TEXT: show it)
  /set NAME VALUE       sampling: temp, top_k, top_p, min_p, seed, repeat_penalty
  /save FILE            write the conversation as JSON
  /load FILE            read a conversation written by /save
  /exit, /bye           leave (Ctrl-D too)
Ctrl-C stops a reply. Enclose multi-line input in lines of \"\"\"."""

# /set names -> (SamplingParams attribute, parser)
SETTABLE = {
    "temp": ("temperature", float), "temperature": ("temperature", float),
    "top_k": ("top_k", int), "top_p": ("top_p", float), "min_p": ("min_p", float),
    "seed": ("seed", int), "repeat_penalty": ("repeat_penalty", float),
}


class ChatTurns:
    """Runs chat turns: fits the conversation into the context, generates, records."""

    def __init__(self, session, conversation, params, n_predict=-1, stops=(), notice=None,
                 constraint=None):
        self.session = session
        self.constraint = constraint    # a () -> Constraint for each reply (--grammar), or None
        self.conversation = conversation
        self.params = params
        self.n_predict = n_predict
        self.stops = list(stops)
        self.notice = notice or (lambda text: print(text, file=sys.stderr, flush=True))
        self.last_timings = None
        self.last_finish = None

    @property
    def n_ctx(self):
        return self.session.n_ctx

    def _reply_room(self):
        """Tokens kept free for the reply when deciding whether the prompt fits."""
        if self.n_predict > 0:
            return min(self.n_predict, self.n_ctx // 2)
        return self.n_ctx // 4

    def _fit(self):
        """Prompt tokens for the conversation, dropping the oldest turns until it fits."""
        tokens = self.conversation.tokens()
        dropped = 0
        while len(tokens) + self._reply_room() > self.n_ctx and len(self.conversation.turns) > 1:
            self.conversation.drop_oldest_turn()
            dropped += 1
            tokens = self.conversation.tokens()
        if dropped:
            self.notice(f"(the conversation outgrew the context of {self.n_ctx} tokens: "
                        f"dropped the oldest {dropped} turn{'s' if dropped > 1 else ''})")
        if len(tokens) >= self.n_ctx:
            raise UserError(f"the message is {len(tokens)} tokens with the chat format, but "
                            f"the context is {self.n_ctx}; raise -c or write less")
        return tokens

    def answer(self, user_text, write, should_stop=None):
        """Add the user's message, stream the reply through `write`, record it.
        Returns the reply text; `last_finish` says "stop", "length" or "interrupted"."""
        self.conversation.messages.append({"role": "user", "content": user_text})
        try:
            tokens = self._fit()
        except UserError:
            self.conversation.messages.pop()
            raise
        pieces = []
        interrupted = False
        try:
            constraint = self.constraint() if self.constraint else None
            for piece in self.session.generate(tokens, self.params, self.n_predict,
                                               self.stops, should_stop, constraint):
                pieces.append(piece)
                write(piece)
        except KeyboardInterrupt:      # a second Ctrl-C while the first was being handled
            interrupted = True
        reply = "".join(pieces)
        # The reply as generated stays in the conversation (a stopped one too): its
        # tokens are what the cache holds, so the next turn reuses them.
        self.conversation.messages.append({"role": "assistant", "content": reply})
        self.last_timings = self.session.timings
        self.last_finish = "interrupted" if interrupted or (
            should_stop is not None and should_stop()) else self.session.finish_reason
        return reply


def one_turn(turns, text, out=None):
    """`--chat -p TEXT`, `--chat -f FILE`, or text piped with --chat: one reply, stdout only."""
    out = out or sys.stdout

    def write(piece):
        out.write(piece)
        out.flush()
    # Ctrl-C sets a flag the generator checks between tokens: a KeyboardInterrupt
    # raised wherever the signal lands could land in a finalizer, which swallows it
    with _Interrupt() as stop:
        turns.answer(text, write, stop)
    out.write("\n")
    out.flush()
    if turns.last_finish == "interrupted":   # Ctrl-C: a cut answer is not a success (130)
        raise KeyboardInterrupt


class _Interrupt:
    """SIGINT while a reply streams: ask the generator to stop instead of raising."""

    def __init__(self):
        self.requested = False
        self.previous = None

    def __enter__(self):
        self.requested = False
        self.previous = signal.signal(signal.SIGINT, self._handle)
        if self.previous == signal.SIG_IGN:   # inherited ignored (a background job): stays so
            signal.signal(signal.SIGINT, signal.SIG_IGN)
        return self

    def _handle(self, signum, frame):
        if self.requested:             # pressed again: the reply is not stopping fast enough
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.previous)
        return False

    def __call__(self):
        return self.requested


class _CtrlCAtThePrompt:
    """For the whole `>>> ` loop, Ctrl-C raises KeyboardInterrupt (a fresh prompt),
    whatever SIGINT disposition the program inherited. A program started as a
    background job of a script (`cmd &` without job control) inherits SIGINT
    *ignored*; the loop only runs on a terminal, where Ctrl-C is the key /help
    promises, so it must not work during replies (_Interrupt) but not at the prompt.
    The inherited disposition comes back when the loop ends."""

    def __enter__(self):
        self.inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
        return self

    def __exit__(self, *exc):
        signal.signal(signal.SIGINT, self.inherited)
        return False


class _QuietKeys:
    """While a reply streams, keys typed ahead are not echoed into its text: the
    terminal's echo is off, and what was typed stays queued for the next prompt (which
    shows it, since line editing echoes for itself). A no-op when stdin is no terminal."""

    def __init__(self, stream):
        self.fd = None
        self.saved = None
        try:
            import termios
            if stream is not None and stream.isatty():
                self.fd = stream.fileno()
                self.termios = termios
        except (ImportError, OSError, ValueError):
            self.fd = None

    def __enter__(self):
        if self.fd is not None:
            t = self.termios
            try:
                self.saved = t.tcgetattr(self.fd)
                quiet = list(self.saved)
                quiet[3] &= ~t.ECHO
                t.tcsetattr(self.fd, t.TCSANOW, quiet)   # TCSANOW: keep what was typed
            except t.error:
                self.saved = None
        return self

    def __exit__(self, *exc):
        if self.saved is not None:
            try:
                self.termios.tcsetattr(self.fd, self.termios.TCSANOW, self.saved)
            except self.termios.error:
                pass
        return False


def cell_width(text):
    """Terminal columns of text: East Asian wide characters take two, combining marks none."""
    width = 0
    for ch in text:
        if unicodedata.combining(ch):
            continue
        width += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return width


class WordWrap:
    """Streams text to a terminal of `width` columns, breaking lines between words.

    A word is held back until the space or newline after it arrives (or finish()), so
    it can move to the next line whole; a word wider than a line is broken where it
    must be. Only the display wraps: the reply's text is kept as generated.
    """

    def __init__(self, out, width):
        self.out = out
        self.width = max(8, width)
        self.column = 0
        self.word = ""

    def write(self, text):
        for ch in text:
            if ch == "\n":
                self._put_word()
                self.out.write("\n")
                self.column = 0
            elif ch in " \t":
                self._put_word()
                if self.column < self.width:   # a space at the line's end becomes the break
                    self.out.write(ch)
                    self.column += 1
            else:
                self.word += ch
                if cell_width(self.word) >= self.width:
                    self._put_word()
        self.out.flush()

    def _put_word(self):
        if not self.word:
            return
        w = cell_width(self.word)
        if self.column > 0 and self.column + w > self.width:
            self.out.write("\n")
            self.column = 0
        self.out.write(self.word)
        self.column += w
        self.word = ""

    def finish(self):
        self._put_word()
        self.out.flush()


def _enable_line_editing():
    try:
        import readline  # noqa: F401  (importing it gives input() editing and history)
    except ImportError:
        pass


class Repl:
    """The `>>> ` loop."""

    def __init__(self, turns, model_name=""):
        self.turns = turns
        self.model_name = model_name
        self.out = sys.stdout
        self.err = sys.stderr

    def say(self, text):
        print(text, file=self.err, flush=True)

    def read_message(self):
        """One message: a line, or the lines between \"\"\" markers. None at end of input."""
        try:
            line = input(">>> ")
        except EOFError:
            return None
        if not line.lstrip().startswith('"""'):
            return line
        first = line.lstrip()[3:]
        if first.endswith('"""'):
            return first[:-3]
        lines = [first] if first else []
        while True:
            try:
                line = input("... ")
            except EOFError:
                return None
            if line.rstrip().endswith('"""'):
                last = line.rstrip()[:-3]
                if last:
                    lines.append(last)
                return "\n".join(lines)
            lines.append(line)

    def run(self):
        _enable_line_editing()
        name = f"{self.model_name}, " if self.model_name else ""
        self.say(f"chatting with {name}context {self.turns.n_ctx} tokens. "
                 "/help lists commands; /bye or Ctrl-D leaves.")
        with _CtrlCAtThePrompt():
            while True:
                try:
                    if self.step() == "exit":
                        return 0
                except KeyboardInterrupt:   # Ctrl-C at the prompt (or between replies)
                    self.out.write("\n")
                    self.out.flush()

    def step(self):
        """Read one message or command and act on it; "exit" when the user leaves."""
        text = self.read_message()
        if text is None:
            self.out.write("\n")
            return "exit"
        if not text.strip():
            return None
        if text.startswith("/"):
            return self.command(text)
        self.reply(text)
        return None

    def reply(self, text):
        if self.out.isatty():
            screen = WordWrap(self.out, shutil.get_terminal_size().columns)
        else:
            screen = WordWrap(self.out, 1 << 30)   # no terminal: no wrapping
        try:
            with _Interrupt() as interrupt, _QuietKeys(sys.stdin):
                self.turns.answer(text, screen.write, should_stop=interrupt)
        except UserError as e:
            screen.finish()
            self.say(f"error: {e}")
            return
        screen.finish()
        self.out.write("\n")
        if self.turns.last_finish == "interrupted":
            self.say("(stopped)")
        elif self.turns.last_finish == "length" and \
                len(self.turns.session.tokens) >= self.turns.n_ctx - 1:
            self.say("(the reply filled the context; the next turn drops old ones)")
        self.out.flush()

    # -- slash commands --------------------------------------------------------

    def command(self, line):
        name, _, arg = line.strip().partition(" ")
        arg = arg.strip()
        conv = self.turns.conversation
        if name in ("/exit", "/bye", "/quit"):
            return "exit"
        if name in ("/help", "/?"):
            self.say(HELP)
        elif name == "/clear":
            conv.clear()
            self.say("(conversation cleared)")
        elif name == "/undo":
            self.say("(forgot your last message and its reply)" if conv.undo()
                     else "(nothing to undo)")
        elif name == "/stats":
            self.show_stats()
        elif name == "/context":
            self.say(f"context: {self.context_used()} / {self.turns.n_ctx} tokens "
                     f"({len(conv.turns)} messages)")
        elif name == "/system":
            if arg:
                conv.set_system(arg)
                self.say("(system prompt set)")
            else:
                self.say(f"system prompt: {conv.system!r}" if conv.system
                         else "(no system prompt; the template's default applies)")
        elif name == "/set":
            self.set_param(arg)
        elif name == "/save":
            self.save(arg)
        elif name == "/load":
            self.load(arg)
        else:
            self.say(f"unknown command {name}; /help lists the commands")
        return None

    def show_stats(self):
        t = self.turns.last_timings
        if t is None:
            self.say("(no reply yet)")
            return
        self.say(f"prompt: {t.prompt_tokens} tokens processed, {t.reused_tokens} reused "
                 f"from the cache, {t.prompt_per_second:.1f} t/s")
        self.say(f"reply: {t.generated_tokens} tokens, {t.generate_per_second:.1f} t/s")

    def context_used(self):
        conv = self.turns.conversation
        if not conv.messages:
            return 0
        try:
            return len(conv.tokens(add_generation_prompt=False))
        except UserError:   # templates that need a user turn to render at all
            return len(self.turns.session.tokens)

    def set_param(self, arg):
        parts = arg.split()
        if len(parts) != 2 or parts[0].replace("-", "_") not in SETTABLE:
            self.say(f"usage: /set NAME VALUE, NAME one of {', '.join(sorted(SETTABLE))}")
            return
        attr, parse = SETTABLE[parts[0].replace("-", "_")]
        try:
            value = parse(parts[1])
        except ValueError:
            self.say(f"{parts[0]} needs a{'n integer' if parse is int else ' number'}, "
                     f"not {parts[1]!r}")
            return
        setattr(self.turns.params, attr, value)
        self.say(f"({parts[0]} = {value})")

    def save(self, path):
        if not path:
            self.say("usage: /save FILE")
            return
        try:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.turns.conversation.to_json(), f, ensure_ascii=False, indent=2)
                f.write("\n")
        except OSError as e:
            self.say(f"error: cannot write {path}: {e.strerror}")
            return
        self.say(f"(saved {len(self.turns.conversation.messages)} messages to {path})")

    def load(self, path):
        if not path:
            self.say("usage: /load FILE")
            return
        try:
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            self.turns.conversation.load_json(data, path)
        except OSError as e:
            self.say(f"error: cannot read {path}: {e.strerror}")
            return
        except (ValueError, UnicodeDecodeError) as e:
            self.say(f"error: {path} is not JSON: {e}")
            return
        except UserError as e:
            self.say(f"error: {e}")
            return
        conv = self.turns.conversation
        self.say(f"(loaded {len(conv.messages)} messages from {path})")
        for m in conv.messages:
            self.say(f"{m['role']}: {m['content']}")
