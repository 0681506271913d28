"""What a new user meets first: bad flag values, a prompt piped in, chat's defaults, a
model without a chat template, the setup commands the README gives."""

import json
import os
import re
import subprocess
import sys

import pytest

from runtime.cli import CHAT_REPLY_MAX, build_parser
from runtime.interactive import WordWrap, cell_width
from runtime.loader import usable_cpus
from tests import synthetic
from tests.models import gemma3, smollm2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, stdin=None, timeout=900):
    return subprocess.run([sys.executable, "-m", "runtime", *args], cwd=ROOT, input=stdin,
                          capture_output=True, timeout=timeout)


def one_line_error(r, *words):
    err = r.stderr.decode("utf-8", "replace")
    assert r.returncode == 2, (r.returncode, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and not r.stdout, err
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A small llama with random weights and no chat template: it rarely ends a reply."""
    return synthetic.spm_llama(str(tmp_path_factory.mktemp("tiny")))


# ------------------------------------------------------------------ flag values

BAD_FLAGS = [
    (["-n", "-5"], "-n -5"),
    (["--top-k", "-4"], "--top-k -4"),
    (["--top-p", "7"], "--top-p 7"),
    (["--min-p", "-0.1"], "--min-p"),
    (["--temp", "nan"], "--temp nan"),
    (["-c", "-1"], "-c -1"),
    (["-c", "1000000000000"], "-c 1000000000000"),
    (["-t", "-2"], "-t -2"),
    (["-b", "0"], "-b 0"),
    (["--repeat-penalty", "0"], "--repeat-penalty 0"),
    (["--repeat-last-n", "-3"], "--repeat-last-n -3"),
    (["--presence-penalty", "inf"], "--presence-penalty inf"),
    (["--seed", "-7"], "--seed -7"),
    (["-r", "0"], "-r 0"),
    (["--port", "99999"], "--port 99999"),
    (["-np", "0"], "-np 0"),
    (["--timeout", "nan"], "--timeout nan"),
    (["--perplexity", "-c", "1"], "--perplexity -c 1"),
]


@pytest.mark.parametrize("flags,named", BAD_FLAGS, ids=[" ".join(f) for f, _ in BAD_FLAGS])
def test_bad_flag_values_get_one_line_naming_the_flag(flags, named, tiny_model):
    one_line_error(run_cli("-m", tiny_model, "-p", "hi", *flags), named)


def test_a_context_larger_than_memory_is_refused():
    """-c 2^24 on SmolLM2: keys and values in f16 for 30 layers of 3 x 64 = 386 GB."""
    need = 2 * 2 * 30 * (1 << 24) * 3 * 64
    if os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") >= need:
        pytest.skip("this machine has memory for a 386 GB KV cache")
    line = one_line_error(run_cli("-m", smollm2(), "-p", "hi", "-c", str(1 << 24)), "GiB")
    assert "smaller -c" in line


def test_invalid_utf8_in_the_prompt_is_refused(tiny_model):
    r = subprocess.run([sys.executable, "-m", "runtime", "-m", tiny_model, "-p",
                        b"caf\xe9 \xff"], cwd=ROOT, capture_output=True, timeout=300)
    one_line_error(r, "-p", "UTF-8")


def test_invalid_utf8_on_stdin_is_refused(tiny_model):
    one_line_error(run_cli("-m", tiny_model, stdin=b"caf\xe9\n"), "stdin", "UTF-8")


# ------------------------------------------------------------------ prompts, defaults

def test_text_piped_in_is_one_chat_message(tiny_model):
    """`echo hi | ./x.llamafile` answers like `--chat -p hi`, stdout only the answer."""
    args = ("-m", tiny_model, "--temp", "0", "-n", "6")
    piped = run_cli(*args, stdin=b"hi\n")
    assert piped.returncode == 0, piped.stderr
    given = run_cli(*args, "--chat", "-p", "hi")
    assert given.returncode == 0, given.stderr
    assert piped.stdout == given.stdout and piped.stdout.strip()


def test_nothing_piped_in_is_one_line_error(tiny_model):
    one_line_error(run_cli("-m", tiny_model, stdin=b""), "-p")


def generated(r):
    m = re.search(r"generation: (\d+) tokens", r.stderr.decode())
    assert m, r.stderr
    return int(m.group(1))


def test_chat_replies_stop_at_the_default_cap_and_n_overrides_it(tiny_model):
    """Random weights rarely say end-of-text: with -n 700 the reply runs past the cap
    (here), and by default it is the same reply cut at CHAT_REPLY_MAX tokens."""
    common = ("-m", tiny_model, "--temp", "0", "-c", "1024", "-v", "--chat", "-p", "hi")
    long_reply = run_cli(*common, "-n", "700")
    assert long_reply.returncode == 0, long_reply.stderr
    default = run_cli(*common)
    assert default.returncode == 0, default.stderr
    assert generated(default) == min(CHAT_REPLY_MAX, generated(long_reply))
    assert long_reply.stdout.startswith(default.stdout.rstrip(b"\n"))
    assert generated(run_cli(*common, "-n", "7")) == 7


def test_defaults_depend_on_the_mode():
    """Chat: capped replies, repeat penalty 1.1; completion: llama.cpp's (no cap, 1.0)."""
    from runtime.cli import apply_mode_defaults
    for chat, n_predict, penalty in ((True, CHAT_REPLY_MAX, 1.1), (False, -1, 1.0)):
        args = build_parser().parse_args(["-p", "x"])
        apply_mode_defaults(args, chat)
        assert (args.n_predict, args.repeat_penalty, args.repeat_last_n, args.temp) == \
            (n_predict, penalty, 64, 0.8)
    args = build_parser().parse_args(["-n", "9", "--repeat-penalty", "1.3"])
    apply_mode_defaults(args, True)
    assert (args.n_predict, args.repeat_penalty) == (9, 1.3)


def test_help_shows_the_chat_defaults():
    text = build_parser().format_help()
    for default in (f"at most {CHAT_REPLY_MAX}", "default 1.1 in chat", "default 0.8",
                    "default 64"):
        assert default in " ".join(text.split()), default


def test_a_bundles_help_has_no_model_flag():
    bundle_help = build_parser(bundle=True).format_help()
    assert "--model" not in bundle_help and "--chat-template" in bundle_help
    assert "--model" in build_parser().format_help()


def test_info_reports_the_threads_a_run_uses(tiny_model):
    r = run_cli("-m", tiny_model, "--info")
    assert json.loads(r.stdout)["threads"] == usable_cpus()
    r = run_cli("-m", tiny_model, "--info", "-t", "1")
    assert json.loads(r.stdout)["threads"] == 1
    r = run_cli("-m", tiny_model, "--info", "-t", "999")   # capped, with a note
    assert json.loads(r.stdout)["threads"] == usable_cpus()
    assert b"-t 999 capped" in r.stderr


# ------------------------------------------------------------------ no chat template

def test_a_model_without_template_chats_as_chatml_with_one_notice():
    """Gemma 3 270M (the base model) has no template: one notice on stderr, and the
    reply is the completion of the chatml-formatted message, as llama.cpp does."""
    settings = ("-m", gemma3(), "--temp", "0", "-n", "12", "--repeat-penalty", "1")
    chat = run_cli(*settings, stdin=b"What is the capital of France?\n")
    assert chat.returncode == 0, chat.stderr
    notes = [line for line in chat.stderr.decode().splitlines() if "chat template" in line]
    assert notes == ["note: this model has no chat template; formatting the chat as chatml "
                     "(pass --chat-template NAME or FILE to choose)"]
    chatml = ("<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
              "<|im_start|>assistant\n")
    completion = run_cli(*settings, "-p", chatml)
    assert completion.returncode == 0, completion.stderr
    assert chat.stdout == completion.stdout
    named = run_cli(*settings, "--chat-template", "gemma", stdin=b"Hi\n")
    assert named.returncode == 0 and b"chat template" not in named.stderr


def test_an_unknown_template_name_lists_the_built_in_ones(tiny_model):
    line = one_line_error(run_cli("-m", tiny_model, "--chat", "-p", "hi",
                                  "--chat-template", "chatm1"), "chatm1")
    assert "chatml" in line and "llama3" in line and "mistral-v7" in line


# ------------------------------------------------------------------ terminal output

class _Screen:
    def __init__(self):
        self.text = ""

    def write(self, s):
        self.text += s

    def flush(self):
        pass


def test_word_wrap_breaks_between_words_however_the_text_streams():
    text = ("The quick brown fox jumps over the lazy dog; a remarkably long word "
            "like pneumonoultramicroscopicsilicovolcanoconiosis still fits.\nNew line.")
    for chunk in (1, 3, 7, len(text)):
        screen = _Screen()
        wrap = WordWrap(screen, 20)
        for i in range(0, len(text), chunk):
            wrap.write(text[i:i + chunk])
        wrap.finish()
        lines = screen.text.split("\n")
        assert all(cell_width(line) <= 20 for line in lines), lines
        assert "".join(screen.text.split()) == "".join(text.split())   # nothing lost
        out_words = screen.text.split()
        for word in text.split():             # lines break between words...
            assert len(word) > 20 or word in out_words, (word, screen.text)
        assert "pneumonoultramicrosc\nopicsilicovolcanocon\niosis" in screen.text  # ...or in one too wide
        assert lines[0] == "The quick brown fox "


def test_wide_characters_take_two_columns():
    assert cell_width("日本語") == 6 and cell_width("cafe\u0301") == 4


# ------------------------------------------------------------------ setup commands

def test_ci_runs_exactly_the_readme_commands():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    commands = [line for line in ci.splitlines() if line.startswith("scripts/")]
    assert len(commands) == 2
    for command in commands:
        assert f"\n{command}\n" in readme, command
