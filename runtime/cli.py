"""Command line: the same flags on a bare GGUF (`python -m runtime -m x.gguf`) and in
the bundled file. Flag names follow llama.cpp. stdout carries only the answer (the
completion, the token ids, the perplexity line); everything else goes to stderr.
"""

import argparse
import errno
import json
import math
import os
import sys

from runtime.errors import UserError, exit_code_of


# Largest -c we take (16M tokens); the KV cache of a real -c is checked against memory.
MAX_CONTEXT = 1 << 24
# --perplexity scores tokens n_ctx/2+1 .. n_ctx-1 of each window: at least one.
MIN_PERPLEXITY_CONTEXT = 3

_WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO)


def _drop_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    sys.stdout = open(os.devnull, "w")


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see --help)")


# Chat defaults (Ollama's): a reply stops at this many tokens unless -n says otherwise,
# and repeats are penalised, so that a small model cannot loop for minutes. Plain
# completion keeps llama.cpp's defaults (no cap, no penalty) and so its greedy text.
CHAT_REPLY_MAX = 512
CHAT_REPEAT_PENALTY = 1.1
COMPLETION_REPEAT_PENALTY = 1.0


def counts(text):
    """A number, or with --bench a comma list of them (llama-bench's `-n 32,128`)."""
    values = [int(v) for v in text.split(",")]
    return values[0] if len(values) == 1 else values


def pair(text):
    """`-pg 512,128`: a prompt and a generation length."""
    values = [int(v) for v in text.split(",")]
    if len(values) != 2 or min(values) < 0:
        raise ValueError(text)
    return tuple(values)


def build_parser(bundle=False):
    """The flags; a bundle carries its model, so it has no -m."""
    what = "the language model this file carries" if bundle else "a GGUF language model"
    p = _Parser(prog=_program_name(bundle), description=f"Run {what} on the CPU.",
                allow_abbrev=False)
    if not bundle:
        p.add_argument("-m", "--model", help="path of a .gguf model")
    p.add_argument("-p", "--prompt", help="prompt text to complete (without -p or -f: chat, taking text "
                   "piped in as one message)")
    p.add_argument("-f", "--file", help="read the prompt (or perplexity text) from a file")
    p.add_argument("-n", "--n-predict", type=counts, default=None,
                   help=f"tokens to generate; -1: until end of text or full context (the "
                        f"default), in chat per reply at most {CHAT_REPLY_MAX} by default")
    p.add_argument("-c", "--ctx-size", type=int, default=0,
                   help="context size in tokens (0: the model's, at most 4096)")
    p.add_argument("-b", "--batch-size", type=counts, default=512, help="prompt batch size")
    p.add_argument("-t", "--threads", type=int, default=0,
                   help="threads (0: every CPU this process may use; more is capped to that)")
    p.add_argument("--temp", type=float, default=0.8, help="temperature (0: greedy; default 0.8)")
    p.add_argument("--top-k", type=int, default=40, help="keep the K likeliest tokens "
                   "(0: all; default 40)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling, 0..1 "
                   "(1: off; default 0.95)")
    p.add_argument("--min-p", type=float, default=0.05, help="drop tokens below this share "
                   "of the likeliest one's probability, 0..1 (default 0.05)")
    p.add_argument("--repeat-penalty", type=float, default=None,
                   help=f"penalise tokens seen in the last --repeat-last-n (1: off; default "
                        f"{CHAT_REPEAT_PENALTY} in chat, {COMPLETION_REPEAT_PENALTY} otherwise)")
    p.add_argument("--repeat-last-n", type=int, default=64,
                   help="tokens the repeat penalty looks back over (-1: the context; "
                        "default 64)")
    p.add_argument("--presence-penalty", type=float, default=0.0)
    p.add_argument("--frequency-penalty", type=float, default=0.0)
    p.add_argument("-s", "--seed", type=int, default=-1, help="random seed (-1: random)")
    p.add_argument("--stop", action="append", default=[], help="stop string (repeatable)")
    p.add_argument("--grammar", help="GBNF grammar the output must follow (llama.cpp syntax)")
    p.add_argument("--grammar-file", help="read the GBNF grammar from a file")
    p.add_argument("-j", "--json-schema", help="JSON schema the output must follow")
    p.add_argument("--json-schema-file", help="read the JSON schema from a file")
    p.add_argument("--chat", "-cnv", action="store_true",
                   help="chat: with -p/-f or piped text, answer one turn; on a terminal, "
                        "talk (the default without -p or -f)")
    p.add_argument("-sys", "--system-prompt", help="system prompt for chat")
    p.add_argument("--chat-template", metavar="NAME|FILE",
                   help="chat format instead of the model's: a Jinja file, or one of "
                        "llama.cpp's built-in names (chatml, llama3, gemma, mistral-v7, "
                        "phi3, ...; an unknown name lists them); a model without a "
                        "template gets chatml")
    p.add_argument("--tokenize", action="store_true", help="print the prompt's token ids as JSON")
    p.add_argument("--perplexity", action="store_true", help="perplexity of the -f text")
    p.add_argument("--info", action="store_true", help="print model facts and the kernel choice")
    p.add_argument("--verify", action="store_true",
                   help="check every member of this bundle against its manifest")
    p.add_argument("--backend", default=os.environ.get("LLAMAZIP_BACKEND", "auto"),
                   choices=("auto", "c", "numpy"), help="compute backend (default: auto)")
    p.add_argument("-v", "--verbose", action="store_true")
    bench = p.add_argument_group("benchmark (--bench, llama-bench's measure)")
    bench.add_argument("--bench", action="store_true",
                       help="time prompt processing (-p N tokens, default 128) and "
                            "generation (-n N tokens, default 64); -p, -n, -b and -d "
                            "take comma lists, as llama-bench's do")
    bench.add_argument("-d", "--n-depth", type=str, metavar="D[,D...]",
                       help="tokens already in the cache when each test starts (default 0)")
    bench.add_argument("-pg", type=pair, action="append", default=[], metavar="P,N",
                       help="a prompt of P tokens then N generated, timed together "
                            "(repeatable)")
    bench.add_argument("-r", "--repetitions", type=int, default=5)
    bench.add_argument("--json", action="store_true", help="llama-bench -o json output")
    server = p.add_argument_group("server (--server)")
    server.add_argument("--server", action="store_true",
                        help="serve the OpenAI API, llama.cpp's endpoints and a chat page")
    server.add_argument("--host", default="127.0.0.1",
                        help="address(es) to listen on, comma-separated")
    server.add_argument("--port", type=int, default=8080, help="port (0: any free one)")
    server.add_argument("--api-key", help="require 'Authorization: Bearer KEY'")
    server.add_argument("--api-key-file", help="file with API keys, one a line")
    server.add_argument("--cors-origins", "--cors", dest="cors", metavar="ORIGINS",
                        default="*",
                        help="origins browsers may call the API from: *, localhost (any "
                             "loopback origin), a comma-separated list, or none (default *, "
                             "as llama-server)")
    server.add_argument("-np", "--parallel", type=int, default=1,
                        help="requests generated at once, each with its own KV cache")
    server.add_argument("--queue", type=int, default=16,
                        help="requests that may wait for a slot; beyond that, 503")
    server.add_argument("-to", "--timeout", type=float, default=600,
                        help="seconds a client may stay silent (sending a request, reading "
                             "a reply, or idle between requests)")
    server.add_argument("--threads-http", type=int, default=-1,
                        help="workers answering requests (default -1: slots + queue + 4); "
                             "/health, /metrics, /slots have 4 of their own")
    server.add_argument("--max-connections", type=int, default=-1,
                        help="open connections at most; past it the longest-idle one is "
                             "closed (default -1: what the open-file limit allows)")
    server.add_argument("--drain-timeout", type=float, default=30,
                        help="on SIGTERM, seconds the requests in flight may take to finish "
                             "(default 30)")
    server.add_argument("--metrics", action=argparse.BooleanOptionalAction, default=False,
                        help="serve Prometheus metrics on /metrics (off unless given, as "
                             "llama-server)")
    server.add_argument("--slots", action=argparse.BooleanOptionalAction, default=True,
                        help="serve the slots' state on /slots")
    server.add_argument("--reasoning-format", default="auto",
                        choices=("auto", "deepseek", "deepseek-legacy", "none"),
                        help="reasoning models' <think> text: in reasoning_content (auto, "
                             "deepseek) or left in the content (none)")
    server.add_argument("--nobrowser", action="store_true",
                        help="do not open the chat page in a browser")
    add_llama_server_flags(server)
    return p


def _program_name(bundle):
    if bundle:
        return os.path.basename(sys.argv[0]) or "llamafile"
    return "llamazip"


def _need(ok, message):
    if not ok:
        raise UserError(message)


def validate(args):
    """Every numeric flag in its range, every text flag UTF-8: one line naming the flag
    and what it takes, before any model is read."""
    n = args.n_predict   # lists (--bench only) are checked by cmd_bench
    _need(n is None or isinstance(n, list) or n >= -1,
          f"-n {n}: pass -1 (until the end) or a number of tokens >= 0")
    _need(0 <= args.ctx_size <= MAX_CONTEXT,
          f"-c {args.ctx_size}: pass 0 (the model's size) or 1..{MAX_CONTEXT} tokens")
    _need(isinstance(args.batch_size, list) or args.batch_size >= 1,
          f"-b {args.batch_size}: the batch size must be 1 or more")
    _need(args.threads >= 0, f"-t {args.threads}: pass 0 (every CPU this process may use) "
          "or a number of threads")
    _need(math.isfinite(args.temp) and args.temp >= 0,
          f"--temp {args.temp}: pass 0 (greedy) or a positive number")
    _need(args.top_k >= 0, f"--top-k {args.top_k}: pass 0 (all tokens) or a positive count")
    _need(math.isfinite(args.top_p) and 0 <= args.top_p <= 1, f"--top-p {args.top_p}: pass 0..1")
    _need(math.isfinite(args.min_p) and 0 <= args.min_p <= 1, f"--min-p {args.min_p}: pass 0..1")
    rp = args.repeat_penalty
    _need(rp is None or (math.isfinite(rp) and rp > 0),
          f"--repeat-penalty {rp}: pass a positive number (1: off)")
    _need(args.repeat_last_n >= -1,
          f"--repeat-last-n {args.repeat_last_n}: pass -1 (the context), 0 (off) or a count")
    for flag, value in (("--presence-penalty", args.presence_penalty),
                        ("--frequency-penalty", args.frequency_penalty)):
        _need(math.isfinite(value), f"{flag} {value}: pass a finite number")
    _need(args.seed >= -1, f"--seed {args.seed}: pass -1 (random) or a number >= 0")
    _need(args.repetitions >= 1, f"-r {args.repetitions}: pass 1 or more repetitions")
    _need(0 <= args.port <= 65535, f"--port {args.port}: pass 0..65535 (0: any free port)")
    _need(args.parallel >= 1, f"-np {args.parallel}: pass 1 or more")
    _need(args.queue >= 0, f"--queue {args.queue}: pass 0 or more")
    _need(math.isfinite(args.timeout) and args.timeout > 0,
          f"--timeout {args.timeout}: pass a positive number of seconds")
    _need(math.isfinite(args.drain_timeout) and args.drain_timeout >= 0,
          f"--drain-timeout {args.drain_timeout}: pass 0 or more seconds")
    _need(args.threads_http == -1 or 1 <= args.threads_http <= 4096,
          f"--threads-http {args.threads_http}: pass 1..4096 (or -1: slots + queue + 4)")
    _need(args.max_connections == -1 or args.max_connections >= 1,
          f"--max-connections {args.max_connections}: pass 1 or more "
          "(or -1: what the open-file limit allows)")
    if args.perplexity:
        _need(args.ctx_size == 0 or args.ctx_size >= MIN_PERPLEXITY_CONTEXT,
              f"--perplexity -c {args.ctx_size}: it scores the second half of each window, "
              f"so -c must be {MIN_PERPLEXITY_CONTEXT} or more")
    texts = [("-p", args.prompt), ("-sys", args.system_prompt)] + \
        [("--stop", s) for s in args.stop]
    for flag, text in texts:
        if text is not None:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise UserError(f"{flag} is not valid UTF-8 (character {e.start}); "
                                "pass UTF-8 text") from None


def apply_mode_defaults(args, chat):
    """The defaults that depend on the mode: capped, penalised chat replies."""
    if args.n_predict is None:
        args.n_predict = CHAT_REPLY_MAX if chat else -1
    if args.repeat_penalty is None:
        args.repeat_penalty = CHAT_REPEAT_PENALTY if chat else COMPLETION_REPEAT_PENALTY


def read_stdin():
    """Text piped to stdin, or None when stdin is a terminal or closed."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    data = sys.stdin.buffer.read()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"the text on stdin is not UTF-8 (byte {e.start}); "
                        "convert it to UTF-8") from None


def add_llama_server_flags(server):
    """llama-server's own flags, spelled as it spells them (a drop-in)."""
    server.add_argument("--alias", help="model name(s) the API reports, comma-separated")
    server.add_argument("--tags", help="model tags /models reports, comma-separated")
    server.add_argument("-ub", "--ubatch-size", type=int, default=None,
                        help="prompt tokens per forward pass (default: the batch size)")
    server.add_argument("--pooling", choices=("mean", "none", "last", "cls"), default=None,
                        help="how /embedding pools the token vectors (default: mean)")
    server.add_argument("--slot-save-path", metavar="DIR",
                        help="folder for /slots/ID?action=save|restore")
    server.add_argument("--embedding", "--embeddings", action="store_true",
                        help="accepted: embeddings are always served")
    server.add_argument("-cb", "--cont-batching", action="store_true",
                        help="accepted: parallel slots are always batched")
    server.add_argument("--jinja", action="store_true",
                        help="accepted: chat templates are always rendered with Jinja")
    server.add_argument("--chat-template-file", metavar="FILE",
                        help="Jinja chat template file (the same as --chat-template FILE)")
    server.add_argument("--reasoning", choices=("on", "off", "auto"), default="auto",
                        help="whether templates that can think are asked to (default auto)")
    server.add_argument("-kvu", "--kv-unified", action="store_true",
                        help="every slot may use the whole context (-c) instead of -c / -np")


def read_prompt(args):
    """-f FILE, -p TEXT, or else the text piped to stdin (None on a terminal)."""
    if args.file:
        try:
            with open(args.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise UserError(f"cannot read {args.file}: {e.strerror}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{args.file} is not UTF-8 text (byte {e.start}); "
                            "convert it to UTF-8") from None
    if args.prompt is not None:
        return args.prompt
    return read_stdin()


def session_for(args, gguf, n_ctx=None):
    """The loader's Session for these flags; `n_ctx` overrides -c (perplexity, bench)."""
    from runtime.faults import ModelGuard
    from runtime.loader import load_session
    session = load_session(gguf, backend=args.backend, threads=args.threads,
                           n_ctx=args.ctx_size if n_ctx is None else n_ctx,
                           batch_size=args.batch_size, verbose=args.verbose)
    ModelGuard(getattr(session.model.backend, "lib", None), gguf, exit_on_fault=True)
    return session


def print_timings(session):
    t = session.timings
    print(f"prompt: {t.prompt_tokens} tokens, {t.prompt_per_second:.1f} t/s; "
          f"generation: {t.generated_tokens} tokens, {t.generate_per_second:.1f} t/s",
          file=sys.stderr)


def sampling_params(args):
    from runtime.sampling import SamplingParams
    return SamplingParams.from_flags(args)


def grammar_text(args):
    """The GBNF text of --grammar / --grammar-file / --json-schema(-file), checked
    (a malformed one is one line naming where), or None."""
    from runtime.constraint import GrammarError, SchemaError, automaton
    from runtime.json_schema import to_grammar
    given = [f for f in ("grammar", "grammar_file", "json_schema", "json_schema_file")
             if getattr(args, f) is not None]
    if not given:
        return None
    if len(given) > 1:
        raise UserError("give one of --grammar, --grammar-file, --json-schema, "
                        "--json-schema-file")
    flag = "--" + given[0].replace("_", "-")
    text = getattr(args, given[0])
    if given[0].endswith("_file"):
        try:
            with open(text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read {flag} {text}: {getattr(e, 'strerror', None) or e}") \
                from None
    try:
        if given[0].startswith("json_schema"):
            try:
                schema = json.loads(text)
            except ValueError as e:
                raise UserError(f"{flag}: not valid JSON: {e}") from None
            text = to_grammar(schema)
        automaton(text)
    except (GrammarError, SchemaError) as e:
        raise UserError(f"{flag}: {e}") from None
    return text


def constraint_maker(args, tokenizer):
    """A () -> fresh Constraint for the grammar flags, or None."""
    if not args.grammar_text:
        return None
    from runtime.constraint import GrammarError, from_grammar
    try:
        from_grammar(tokenizer, args.grammar_text)   # token references need the vocabulary
    except GrammarError as e:
        raise UserError(f"grammar: {e}") from None
    return lambda: from_grammar(tokenizer, args.grammar_text)


def cmd_tokenize(args, gguf):
    from runtime.tokenizer import Tokenizer
    text = read_prompt(args)
    if text is None:
        raise UserError("--tokenize needs -p TEXT or -f FILE")
    ids = Tokenizer.from_gguf(gguf).encode(text, add_special=True, parse_special=True)
    print(json.dumps(ids))
    return 0


def cmd_perplexity(args, gguf):
    from runtime.perplexity import perplexity
    text = read_prompt(args)
    if text is None:
        raise UserError("--perplexity needs -f FILE")
    n_ctx = args.ctx_size or 512
    session = session_for(args, gguf, n_ctx)
    ppl, err = perplexity(session, text, n_ctx)
    print(f"PPL = {ppl:.4f} +/- {err:.4f}")
    return 0


def cmd_info(args, gguf):
    from runtime import ggml_types
    meta = {k: v for k, v in gguf.metadata.items()
            if not (isinstance(v, list) and len(v) > 16)}
    types = {}
    for t in gguf.tensors.values():
        name = ggml_types.type_name(t.type)
        types[name] = types.get(name, 0) + 1
    from runtime.loader import decide_threads
    info = {"model": gguf.source, "gguf_version": gguf.version, "tensors": len(gguf.tensors),
            "tensor_types": types, "metadata": meta, "threads": decide_threads(args.threads)}
    from runtime import archive
    if archive.current() is not None:  # running from a bundle: what it was built with
        manifest = dict(archive.current().manifest() or {})
        manifest["members"] = len(manifest.get("members", {}))
        info["bundle"] = manifest
    try:
        from runtime import kernels
        info["kernels"] = kernels.describe()
    except Exception as e:  # no kernels for this machine: say so rather than fail --info
        info["kernels"] = f"unavailable: {e}"
    print(json.dumps(info, indent=2, ensure_ascii=False, default=str))
    return 0


def cmd_complete(args, gguf):
    prompt = read_prompt(args)
    if prompt is None:
        raise UserError("no prompt; pass -p TEXT or -f FILE")
    session = session_for(args, gguf)
    tokens = session.tokenizer.encode(prompt, add_special=True, parse_special=True)
    out = sys.stdout
    make = constraint_maker(args, session.tokenizer)
    for piece in session.generate(tokens, sampling_params(args), args.n_predict, args.stop,
                                  constraint=make() if make else None):
        out.write(piece)
        out.flush()
    out.write("\n")
    if args.verbose:
        print_timings(session)
    return 0


def cmd_chat(args, gguf):
    """One chat turn (-p, -f, or text piped in), or the interactive loop on a terminal."""
    from runtime.chat import Conversation, load_chat_format
    from runtime.interactive import ChatTurns, Repl, one_turn
    text = read_prompt(args)
    interactive = text is None and sys.stdin is not None and sys.stdin.isatty()
    if text is not None:
        text = text.rstrip("\r\n")   # `echo`'s and editors' final newline is not the message
    if not interactive and not (text or "").strip():
        raise UserError("no message to answer: pass -p TEXT or -f FILE, pipe text in, or "
                        "run on a terminal to talk")
    fmt = load_chat_format(gguf, args.chat_template,
                           notice=lambda line: print(line, file=sys.stderr, flush=True))
    session = session_for(args, gguf)
    conversation = Conversation(fmt, session.tokenizer, args.system_prompt)
    turns = ChatTurns(session, conversation, sampling_params(args), args.n_predict, args.stop,
                      constraint=constraint_maker(args, session.tokenizer))
    if interactive:
        return Repl(turns, gguf.get("general.name") or "").run()
    one_turn(turns, text)
    if args.verbose:
        print_timings(session)
    return 0


def wants_chat(args):
    """--chat, or no -p/-f: talk on a terminal (llamafile's default), or answer the text
    piped in as one message (Ollama's `echo hi | ollama run`)."""
    return args.chat or (args.prompt is None and args.file is None)


def _bench_list(text, flag, default):
    if text is None:
        return list(default)
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise UserError(f"with --bench, {flag} takes numbers, comma separated "
                        f"(e.g. {flag} 128,512); got {text!r}") from None
    if min(values) < 0:
        raise UserError(f"{flag} {text}: counts cannot be negative")
    return values


def cmd_bench(args, gguf):
    from runtime.bench import context_needed, plan, run_bench
    as_list = lambda v: None if v is None else ",".join(map(str, v)) if isinstance(v, list) else str(v)
    prompts = _bench_list(args.prompt, "-p", [128] if not args.pg else [])
    gens = _bench_list(None if args.n_predict == -1 else as_list(args.n_predict), "-n",
                       [64] if not args.pg else [])
    depths = _bench_list(args.n_depth, "-d", [0])
    batches = _bench_list(as_list(args.batch_size), "-b", [512])
    if min(batches) < 1:
        raise UserError("-b: the batch size must be at least 1")
    tests = plan(prompts, gens, args.pg, depths, batches)
    if not tests:
        raise UserError("--bench has no test to run: give -p or -n above 0, or -pg")
    n_ctx = args.ctx_size or context_needed(tests)
    if n_ctx < context_needed(tests):
        raise UserError(f"--bench needs a context of {context_needed(tests)} tokens; raise -c")
    from runtime.loader import load_session
    session = load_session(gguf, backend=args.backend, threads=args.threads, n_ctx=n_ctx,
                           batch_size=max(batches), verbose=args.verbose)
    threads = session.model.backend.n_threads
    size = sum(t.nbytes for t in gguf.tensors.values())
    n_params = sum(t.n_elements for t in gguf.tensors.values())
    run_bench(session.model, tests, args.repetitions, threads, args.json,
              model_name=os.path.basename(gguf.source), model_size=size, n_params=n_params)
    return 0


def refuse_bench_only_flags(args):
    """Comma lists, -d and -pg mean something only to --bench: elsewhere say so."""
    if args.bench:
        return
    for flag, value in (("-n", args.n_predict), ("-b", args.batch_size)):
        if isinstance(value, list):
            raise UserError(f"{flag} takes one number; comma lists are for --bench")
    if args.n_depth is not None or args.pg:
        raise UserError(f"{'-d' if args.n_depth is not None else '-pg'} is a --bench option; "
                        "add --bench or drop it")


def run(argv=None, bundle=None):
    """Run the command line; inside a bundle, `bundle` is (path, open ZipFile or None)
    and its stored arguments and model come first."""
    model_region = None
    if bundle is not None:
        from runtime.archive import open_current
        argv, model_region = open_current(bundle[0], argv, bundle[1])
    args = build_parser(bundle=model_region is not None).parse_args(argv)
    refuse_bench_only_flags(args)
    validate(args)
    chat = not (args.verify or args.tokenize or args.server or args.info or args.bench
                or args.perplexity) and wants_chat(args)
    apply_mode_defaults(args, chat)
    if args.verify:  # before parsing the model, which may be the damaged part
        from runtime.archive import verify_bundle
        return verify_bundle(model_region[0] if model_region else args.model)
    args.grammar_text = grammar_text(args)      # a bad grammar fails before loading
    from runtime.loader import open_gguf
    gguf = open_gguf(getattr(args, "model", None), model_region)
    if args.tokenize:
        return cmd_tokenize(args, gguf)
    if args.server:
        from runtime.server.http import serve
        return serve(args, gguf)
    if args.info:
        return cmd_info(args, gguf)
    if args.bench:
        return cmd_bench(args, gguf)
    if args.perplexity:
        return cmd_perplexity(args, gguf)
    if chat:
        return cmd_chat(args, gguf)
    return cmd_complete(args, gguf)


def main(argv=None, bundle=None):
    try:
        code = exit_code_of(run, argv, bundle)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        # The reader went away (`| head`): not an error worth a traceback.
        try:
            sys.stdout = None
        finally:
            return 0
    except OSError as e:
        if e.errno not in _WRITE_ERRNOS:
            raise
        # stdout on a full disk (/dev/full) or a dead device: say so once, and drop
        # stdout so that Python's own flush at exit does not print it again
        _drop_stdout()
        print(f"error: cannot write the output: {e.strerror}; free some space or send "
              "the output elsewhere", file=sys.stderr)
        return 2
