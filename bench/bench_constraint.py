"""Constrained decoding speed on SmolLM2: generation tokens/s with and without a JSON
schema constraint (the goal is >= 0.8x unconstrained), a GBNF grammar, and the time a
20,000-value enum takes to be refused.

Each run decodes N tokens from the same prompt (greedy and sampled); the constrained
schema is an array of many small objects, so it too runs for N tokens. The first
constrained run includes compiling the grammar and filling its state caches; the
figure reported is the median of --rounds runs with fresh Constraint objects (the
compiled automaton is shared, as in the server).

    python bench/bench_constraint.py [--tokens 96] [--rounds 3] [--threads 1]
"""

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from runtime.constraint import from_grammar, from_schema, is_limit_error  # noqa: E402
from runtime.loader import load_session, open_gguf  # noqa: E402
from runtime.sampling import SamplingParams  # noqa: E402
from tests.models import smollm2  # noqa: E402

PROMPT = ("<|im_start|>user\nList many people as JSON objects with a name, an age and a "
          "city.<|im_end|>\n<|im_start|>assistant\n")
SCHEMA = {"type": "array", "minItems": 40, "items": {
    "type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer"},
                                     "city": {"type": "string"}},
    "required": ["name", "age", "city"]}}
GRAMMAR = ('root ::= "[" person ("," ws person){39,} "]"\nws ::= [ \\n]?\n'
           'person ::= "{\\"name\\": \\"" [A-Za-z ]+ "\\", \\"age\\": " [0-9]{1,2} "}"')


def rate(session, tokens, params, n, make):
    rates = []
    for _ in range(ROUNDS):
        session.reset()
        session.prefill(tokens)
        c = make()
        for _ in session.generate(tokens, params, n, constraint=c):
            pass
        t = session.timings
        rates.append(t.generated_tokens / t.generate_seconds)
    return statistics.median(rates), t.generated_tokens


def main():
    global ROUNDS
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    ROUNDS = args.rounds
    session = load_session(open_gguf(smollm2()), threads=args.threads, n_ctx=512)
    tok = session.tokenizer
    tokens = tok.encode(PROMPT, add_special=True, parse_special=True)
    t0 = time.perf_counter()
    from_schema(tok, SCHEMA)
    print(f"first schema compile (with the vocabulary index): "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms")
    for label, params in [("greedy", SamplingParams(temperature=0, seed=1)),
                          ("sampled", SamplingParams(temperature=0.8, seed=1))]:
        plain, n0 = rate(session, tokens, params, args.tokens, lambda: None)
        schema, n1 = rate(session, tokens, params, args.tokens,
                          lambda: from_schema(tok, SCHEMA))
        gbnf, n2 = rate(session, tokens, params, args.tokens,
                        lambda: from_grammar(tok, GRAMMAR))
        print(f"{label:8s} unconstrained {plain:6.1f} t/s ({n0} tok) | json schema "
              f"{schema:6.1f} t/s ({n1} tok) = {schema / plain:.2f}x | gbnf {gbnf:6.1f} t/s "
              f"({n2} tok) = {gbnf / plain:.2f}x")
    enum = {"enum": [f"value-{i:06d}-" + "x" * 46 for i in range(20000)]}
    body = json.dumps({"json_schema": enum})
    t0 = time.perf_counter()
    try:
        from_schema(tok, json.loads(body)["json_schema"])
        verdict = "accepted"
    except ValueError as e:
        verdict = "refused (413)" if is_limit_error(e) else "refused (400)"
    print(f"20,000-value enum ({len(body) / 1e6:.1f} MB): {verdict} in "
          f"{(time.perf_counter() - t0) * 1000:.0f} ms (parse included)")


if __name__ == "__main__":
    main()
