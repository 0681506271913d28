"""/infill: fill-in-the-middle prompts, laid out as llama-server lays them out.

    [FIM_REP]myproject\n [FIM_SEP]file\n extra ... [FIM_SEP]filename\n
    [FIM_PRE]prefix prompt [FIM_SUF]suffix [FIM_MID]

The prefix and suffix are cut to fit one batch (3:1), the extra chunks to the rest of
the context; models without the FIM tokens are refused with 501.
"""

from runtime.server import params
from runtime.server.errors import ApiError

CHUNK_SEPARATOR = "\n\n--- snippet ---\n\n"   # between extra chunks when there is no FIM_SEP


def infill_tokens(tokenizer, body, n_batch, n_ctx=None, n_predict=0):
    fim = tokenizer.fim_ids
    missing = [k for k in ("pre", "suf", "mid") if fim.get(k) is None]
    if missing:
        raise ApiError(501, f"this model has no fill-in-the-middle tokens ({', '.join(missing)} "
                            "missing); /infill needs a code model trained for it",
                       kind="not_supported_error")
    prefix = params.field(body, "input_prefix", str, "")
    suffix = params.field(body, "input_suffix", str, "")
    extra = params.field(body, "input_extra", list, [])
    prompt = body.get("prompt", "")
    prompt_ids = params.one_prompt(tokenizer, prompt, "prompt") if prompt not in ("", [], None) \
        else []
    if prompt_ids and tokenizer.add_bos and prompt_ids[0] == tokenizer.bos_id:
        prompt_ids = prompt_ids[1:]

    def enc(text):
        return tokenizer.encode(text, add_special=False, parse_special=False)

    extra_ids = []
    if fim.get("rep") is not None:
        extra_ids += [fim["rep"]] + enc("myproject\n")
    for i, chunk in enumerate(extra):
        if not (isinstance(chunk, dict) and isinstance(chunk.get("text", ""), str)
                and isinstance(chunk.get("filename", "tmp"), str)):
            raise ApiError(400, f"input_extra[{i}] must be an object with a 'text' string "
                                "and an optional 'filename' string", param="input_extra")
        if fim.get("sep") is not None:
            extra_ids += [fim["sep"]] + enc(chunk.get("filename", "tmp") + "\n")
        else:
            extra_ids += enc(CHUNK_SEPARATOR)
        extra_ids += enc(chunk.get("text", ""))
    if fim.get("sep") is not None:
        extra_ids += [fim["sep"]] + enc("filename\n")

    prefix_ids, suffix_ids = enc(prefix), enc(suffix)
    n_prefix = min(len(prefix_ids), 3 * (n_batch // 4))
    n_suffix = min(len(suffix_ids), max(0, n_batch // 4 - (2 + len(prompt_ids))))
    prefix_ids = prefix_ids[len(prefix_ids) - n_prefix:]
    suffix_ids = suffix_ids[:n_suffix]
    if n_ctx is not None:
        n_extra = min(max(0, n_ctx - n_batch - 2 * max(0, n_predict)), len(extra_ids))
    else:
        n_extra = len(extra_ids)
    ids = extra_ids[len(extra_ids) - n_extra:]
    if tokenizer.add_bos and tokenizer.bos_id is not None:
        ids.append(tokenizer.bos_id)      # after the extra chunks, as llama-server puts it
    ids += [fim["pre"]] + prefix_ids + prompt_ids + [fim["suf"]] + suffix_ids + [fim["mid"]]
    return ids
