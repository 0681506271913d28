"""Perplexity the way llama.cpp's llama-perplexity measures it.

The text is tokenized once (with BOS when the model adds one) and cut into chunks
of n_ctx tokens; each chunk starts from an empty cache, its first token is replaced
by BOS when the model adds one, and only the second half of each chunk is scored
(every scored token has at least n_ctx/2 tokens of context).
"""

import math
import sys

from runtime.errors import UserError


def perplexity(session, text, n_ctx, out=sys.stderr):
    tok = session.tokenizer
    tokens = tok.encode(text, add_special=True, parse_special=False)
    n_chunks = len(tokens) // n_ctx
    if n_chunks < 1 or len(tokens) < 2 * n_ctx:
        raise UserError(f"the text is {len(tokens)} tokens; perplexity with -c {n_ctx} "
                        f"needs at least {2 * n_ctx}: give a longer file or a smaller -c")
    first = n_ctx // 2
    nll = nll2 = 0.0
    count = 0
    for i in range(n_chunks):
        chunk = tokens[i * n_ctx:(i + 1) * n_ctx]
        inputs = list(chunk)
        if tok.add_bos:
            inputs[0] = tok.bos_id
        session.reset()
        logits = session.eval(inputs, all_logits=True)
        b = session.model.backend
        scored = b.take_rows(logits, first, n_ctx - 1)
        for lp in b.logprobs_rows(scored, chunk[first + 1:n_ctx]):
            nll -= lp
            nll2 += lp * lp
            count += 1
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end=" ", file=out, flush=True)
    print(file=out)
    mean = nll / count
    ppl = math.exp(mean)
    var = nll2 / count - mean * mean
    err = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return ppl, err

