"""Terminal chat, driven as a user would: the real program in a pseudo-terminal.

The model is SmolLM2-135M-Instruct (greedy, a handful of tokens per reply, a small
context), so each conversation takes seconds even on the NumPy backend.
"""

import json
import os
import re
import signal
import subprocess
import sys

import pytest

from tests.models import smollm2

pexpect = pytest.importorskip("pexpect", reason="the terminal chat tests need pexpect "
                                                "(pip install pexpect)")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 240   # per expected line: the NumPy backend on a busy machine is slow
PROMPT = ">>> "
STATS = re.compile(r"prompt: (\d+) tokens processed, (\d+) reused from the cache.*\r?\n"
                   r"reply: (\d+) tokens")


def llamazip_args(*extra):
    return ["-m", "runtime", "-m", smollm2(), "--temp", "0", "-c", "256",
            "-sys", "Be brief."] + list(extra)


def spawn_chat(*extra, sigint=signal.SIG_DFL):
    """The chat in a pseudo-terminal. `sigint`: the SIGINT disposition it inherits
    (set explicitly: a test run launched as a background job, `pytest &` from a
    script, would otherwise pass its ignored SIGINT on)."""
    child = pexpect.spawn(sys.executable, llamazip_args(*extra), cwd=ROOT,
                          encoding="utf-8", timeout=TIMEOUT, dimensions=(50, 400),
                          env=dict(os.environ, TERM="dumb"),
                          preexec_fn=lambda: signal.signal(signal.SIGINT, sigint))
    child.expect_exact(PROMPT)
    return child


def say(child, text):
    """Send a line and wait for the next prompt; return what came before it."""
    child.sendline(text)
    child.expect_exact(PROMPT)
    return child.before


def stats(child):
    m = STATS.search(say(child, "/stats"))
    assert m, "no /stats figures"
    return tuple(int(g) for g in m.groups())


def finish(child):
    child.sendline("/bye")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_second_turn_processes_only_its_new_tokens():
    child = spawn_chat("-n", "6")
    say(child, "Hi")
    processed1, reused1, generated1 = stats(child)
    assert reused1 == 0 and generated1 == 6
    say(child, "Thanks")
    processed2, reused2, generated2 = stats(child)
    # Everything of turn one (its prompt and its reply) came from the cache; only
    # "<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n<|im_start|>assistant\n" and
    # at most the reply's unevaluated last token were computed.
    assert reused2 >= processed1 + generated1 - 1
    assert processed2 <= 14, (processed2, reused2)
    finish(child)


@pytest.mark.parametrize("inherited", [signal.SIG_DFL, signal.SIG_IGN],
                         ids=["sigint-default", "sigint-ignored"])
def test_ctrl_c_stops_the_reply_and_returns_to_the_prompt(inherited):
    # Started with SIGINT ignored too (a background job of a script): on a terminal,
    # Ctrl-C still stops replies and gives a fresh prompt.
    child = spawn_chat("-n", "300", sigint=inherited)
    child.sendline("Write a long story about a brave dragon.")
    child.expect(r"dragon\.\r?\n")            # the terminal's echo of our line
    child.expect(r"\w\w")                       # the reply has started streaming
    child.sendintr()
    # The reply runs to the context's end (~230 tokens) unless Ctrl-C stops it: a
    # prompt before "(stopped)" means it was not stopped.
    assert child.expect_exact(["(stopped)", PROMPT]) == 0, "Ctrl-C did not stop the reply"
    child.expect_exact(PROMPT)
    processed, reused, generated = stats(child)
    assert 0 < generated < 300
    # Ctrl-C at an empty prompt just gives a fresh prompt.
    child.sendintr()
    child.expect_exact(PROMPT)
    # The program is still usable, and Ctrl-D leaves.
    assert "context:" in say(child, "/context")
    child.sendeof()
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_undo_clear_save_and_load(tmp_path):
    saved = tmp_path / "conversation.json"
    child = spawn_chat("-n", "4")
    assert "(no reply yet)" in say(child, "/stats")
    say(child, "Hi")
    context = re.search(r"context: (\d+) / 256 tokens \(2 messages\)", say(child, "/context"))
    assert context, "no /context figures"
    assert "(saved 3 messages" in say(child, f"/save {saved}")
    data = json.loads(saved.read_text())
    assert [m["role"] for m in data["messages"]] == ["system", "user", "assistant"]
    assert data["messages"][0]["content"] == "Be brief."
    assert data["messages"][1]["content"] == "Hi"
    reply = data["messages"][2]["content"]
    assert reply

    assert "(forgot your last message" in say(child, "/undo")
    assert "(0 messages)" in say(child, "/context")
    assert "(nothing to undo)" in say(child, "/undo")

    loaded = say(child, f"/load {saved}")
    assert "(loaded 3 messages" in loaded and "user: Hi" in loaded
    assert context.group(0) in say(child, "/context")

    assert "(conversation cleared)" in say(child, "/clear")
    assert "(0 messages)" in say(child, "/context")
    assert "system prompt: 'Be brief.'" in say(child, "/system")

    assert "(temp = 0.5)" in say(child, "/set temp 0.5")
    assert "usage: /set" in say(child, "/set colour blue")
    assert "unknown command /frobnicate" in say(child, "/frobnicate")
    assert "error: cannot read" in say(child, f"/load {tmp_path / 'missing.json'}")
    finish(child)


def test_keys_typed_during_a_reply_are_not_echoed_into_it():
    child = spawn_chat("-n", "40")
    child.sendline("Tell me about the sea.")
    child.expect(r"sea\.\r?\n")               # the terminal's echo of our line
    child.expect(r"\w\w")                       # the reply has started streaming
    child.send("qzx")                           # typed ahead, no Enter
    child.expect_exact(PROMPT)
    assert "qzx" not in child.before            # not in the reply's text
    child.expect_exact("qzx")                   # but waiting at the next prompt
    child.sendcontrol("u")                      # erase it, then leave
    finish(child)


def test_multi_line_input():
    child = spawn_chat("-n", "2")
    child.sendline('"""')
    child.expect_exact("... ")
    child.sendline("Line one")
    child.expect_exact("... ")
    child.sendline('Line two"""')
    child.expect_exact(PROMPT)
    out = say(child, "/save /dev/stdout")
    assert '"content": "Line one\\nLine two"' in out
    finish(child)


# -- one-shot and piped chat: stdout carries only the answer -------------------------

def run_llamazip(args, stdin=None):
    return subprocess.run([sys.executable] + args, cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=600)


CHATML_HI = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
             "<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def expected_answer():
    """The greedy completion of the hand-formatted ChatML prompt, with chat's default
    repeat penalty (plain completion's default is llama.cpp's 1.0)."""
    r = run_llamazip(["-m", "runtime", "-m", smollm2(), "--temp", "0", "-c", "256",
                      "-n", "5", "--repeat-penalty", "1.1", "-p", CHATML_HI])
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_one_shot_chat_prints_only_the_answer(expected_answer):
    r = run_llamazip(llamazip_args("-n", "5", "--chat", "-p", "Hi"))
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer


def test_piped_chat_prints_only_the_answer(expected_answer, tmp_path):
    r = run_llamazip(llamazip_args("-n", "5", "--chat"), stdin="Hi\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer
    message = tmp_path / "message.txt"
    message.write_text("Hi\n")
    r = run_llamazip(llamazip_args("-n", "5", "--chat", "-f", str(message)))
    assert r.returncode == 0, r.stderr
    assert r.stdout == expected_answer


def test_chat_input_errors_are_one_line():
    r = run_llamazip(llamazip_args("--chat"), stdin="  \n")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().splitlines() == [
        "error: no message to answer: pass -p TEXT or -f FILE, pipe text in, or run on a "
        "terminal to talk"]
    r = run_llamazip(llamazip_args("--chat", "-p", "Hi", "--chat-template", "/nonexistent.jinja"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: --chat-template /nonexistent.jinja: no such file, "
                               "and not a built-in name (")


# -- the turn logic, on a stand-in engine -----------------------------------------------

class _CharTokenizer:
    bos_id = None

    def encode(self, text, add_special=True, parse_special=True):
        return [ord(c) for c in text]


class _EchoSession:
    """Replies "ok" to anything; remembers the prompt it was given."""

    def __init__(self, n_ctx):
        self.n_ctx = n_ctx
        self.tokens = []
        self.timings = None
        self.finish_reason = "stop"

    def generate(self, prompt_tokens, params, n_predict, stops, should_stop=None,
                 constraint=None):
        assert len(prompt_tokens) + n_predict <= self.n_ctx
        self.tokens = list(prompt_tokens)
        yield "ok"


def test_oldest_turns_are_dropped_when_the_context_is_full():
    from runtime.chat import Conversation
    from tests.plain_format import PlainFormat
    from runtime.interactive import ChatTurns
    notices = []
    conversation = Conversation(PlainFormat(), _CharTokenizer(), system_prompt="SYS")
    turns = ChatTurns(_EchoSession(n_ctx=48), conversation, params=None, n_predict=4,
                      notice=notices.append)
    for text in ("first question", "second question", "third question"):
        assert turns.answer(text, write=lambda piece: None) == "ok"
    # "SYS\n\n" + three turns of ~17 characters do not fit in 48 with 4 kept for the reply.
    assert [m["content"] for m in conversation.messages] == \
        ["SYS", "second question", "ok", "third question", "ok"]
    assert notices == ["(the conversation outgrew the context of 48 tokens: dropped the "
                       "oldest 1 turn)"]


def test_a_message_longer_than_the_context_is_refused_and_forgotten():
    from runtime.chat import Conversation
    from tests.plain_format import PlainFormat
    from runtime.errors import UserError
    from runtime.interactive import ChatTurns
    conversation = Conversation(PlainFormat(), _CharTokenizer())
    turns = ChatTurns(_EchoSession(n_ctx=10), conversation, params=None, n_predict=2)
    with pytest.raises(UserError, match="raise -c or write less"):
        turns.answer("x" * 20, write=lambda piece: None)
    assert conversation.messages == []
