"""Tokenizer that gives the same ids as llama.cpp, in pure Python.

Two vocabulary kinds, chosen by the GGUF key `tokenizer.ggml.model`:

  "llama"  SentencePiece-style (SPM): spaces become U+2581 "▁", then adjacent
           pieces are merged greedily, highest vocabulary score first; pieces
           that are not tokens fall back to byte tokens <0xHH>.
  "gpt2"   byte-level BPE: text is split into words by a regex pre-tokenizer
           (see pretokenize.py), each word's UTF-8 bytes are spelled with the
           GPT-2 byte->character map, and merges are applied by rank.

Before either runs, special tokens are cut out of the text (llama.cpp's
tokenizer_st_partition): longest token text first, every occurrence. Control
tokens only when parse_special is set; user-defined tokens always.

Everything here follows llama.cpp's llama-vocab.cpp, quirks included, because
the goal is the same ids, not the "right" ones.
"""

import codecs
import collections
import heapq

from runtime import validate
from runtime.errors import UserError
from runtime.pretokenize import PRE_TOKENIZERS, PreTokenizer

# token attributes (llama.h llama_token_attr); a token can have several
ATTR_UNDEFINED = 0
ATTR_UNKNOWN = 1 << 0
ATTR_UNUSED = 1 << 1
ATTR_NORMAL = 1 << 2
ATTR_CONTROL = 1 << 3
ATTR_USER_DEFINED = 1 << 4
ATTR_BYTE = 1 << 5
ATTR_NORMALIZED = 1 << 6
ATTR_LSTRIP = 1 << 7
ATTR_RSTRIP = 1 << 8

# GGUF tokenizer.ggml.token_type values -> attributes
_TYPE_TO_ATTR = {1: ATTR_NORMAL, 2: ATTR_UNKNOWN, 3: ATTR_CONTROL, 4: ATTR_USER_DEFINED,
                 5: ATTR_UNUSED, 6: ATTR_BYTE}

SPM_SPACE = "\u2581"  # ▁

# Token texts llama.cpp treats as end of generation whatever their type
# (llama-vocab.cpp, "maintain a list of tokens that cause end-of-generation").
_EOG_TEXTS = frozenset([
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>",
    "<end_of_turn>", "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]",
    "<|end_of_text|>", "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>",
])
# Token texts llama.cpp recognises as end-of-turn / fill-in-the-middle tokens when
# the GGUF does not name them. They are made control tokens; the FIM pad, repo
# and file-separator tokens also end generation.
_EOT_TEXTS = ["<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
              "<|end_of_text|>", "<EOT>", "_<EOT>", "[EOT]", "<end_of_utterance>"]
_FIM_TEXTS = {
    "pre": ["<|fim_prefix|>", "<fim-prefix>", "<fim_prefix>", "<PRE>", "<|code_prefix|>",
            "<|prefix|>"],
    "suf": ["<|fim_suffix|>", "<fim-suffix>", "<fim_suffix>", "<SUF>", "<|code_suffix|>",
            "<|suffix|>"],
    "mid": ["<|fim_middle|>", "<fim-middle>", "<fim_middle>", "<MID>", "<|code_middle|>",
            "<|middle|>"],
    "pad": ["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    "rep": ["<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>"],
    "sep": ["<|file_sep|>"],
}


def _bytes_to_unicode():
    """GPT-2's byte -> printable character map used by byte-level BPE vocabularies.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space,
    DEL, NBSP, soft hyphen) are moved to U+0100 and up, in byte order.
    """
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    mapping = {}
    shifted = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shifted)
            shifted += 1
    return mapping


BYTE_TO_CHAR = _bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in BYTE_TO_CHAR.items()}


def _raw_byte_text(b):
    """The str our GGUF reader gives a token whose text is the single byte `b`."""
    return bytes([b]).decode("utf-8", errors="surrogateescape")


def _merge_adjacent(symbols, priority):
    """Merge adjacent symbols, best pair first, until no adjacent pair has a priority.

    `priority(a, b)` is a sort key (lower merges first; ties go to the leftmost pair)
    or None when a and b may not merge. This is the loop of llama.cpp's SPM and BPE
    sessions: a heap of candidate pairs over a doubly linked list of symbols; an
    entry whose sides changed since it was pushed is stale and skipped. Returns the
    merged symbols in order.
    """
    n = len(symbols)                          # symbols[i] becomes "" once merged away
    if n < 2:
        return symbols
    prev = list(range(-1, n - 1))
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    queue = []                                # (priority, left, right, merged text)

    def try_pair(left, right):
        if left < 0 or right < 0:
            return
        key = priority(symbols[left], symbols[right])
        if key is not None:
            heapq.heappush(queue, (key, left, right, symbols[left] + symbols[right]))

    for i in range(n - 1):
        try_pair(i, i + 1)
    while queue:
        _, left, right, merged = heapq.heappop(queue)
        a, b = symbols[left], symbols[right]
        if not a or not b or a + b != merged:
            continue  # stale: one side was merged since
        symbols[left] = merged
        symbols[right] = ""
        nxt[left] = nxt[right]
        if nxt[right] >= 0:
            prev[nxt[right]] = left
        try_pair(prev[left], left)
        try_pair(left, nxt[left])
    return [s for s in symbols if s]

class WordCache:
    """Word -> token ids for words seen before: a bounded LRU.

    Text repeats its words, so a cache saves most merge work; but a server tokenizes
    whatever it is sent, so the cache must not grow with it. Only words up to
    MAX_WORD_CHARS are kept (a long word is rare, and would be most of the memory),
    and at most MAX_WORDS of them, the least recently used leaving first: at most a
    few MB whatever the input.
    """

    MAX_WORDS = 16384
    MAX_WORD_CHARS = 64

    def __init__(self):
        self._words = collections.OrderedDict()

    def __len__(self):
        return len(self._words)

    def get(self, word):
        ids = self._words.get(word)
        if ids is not None:
            self._words.move_to_end(word)
        return ids

    def put(self, word, ids):
        if len(word) > self.MAX_WORD_CHARS:
            return
        self._words[word] = ids
        if len(self._words) > self.MAX_WORDS:
            self._words.popitem(last=False)


class Tokenizer:
    """llama.cpp-compatible tokenizer built from GGUF metadata."""

    def __init__(self, metadata):
        validate.check_tokenizer(metadata)
        model = metadata.get("tokenizer.ggml.model")
        tokens = metadata.get("tokenizer.ggml.tokens")
        if tokens is None:
            raise UserError("the model has no tokenizer.ggml.tokens; it cannot tokenize text")
        if model not in ("llama", "gpt2"):
            raise UserError(f"tokenizer model {model!r} is not supported "
                            "(llamazip supports 'llama' (SentencePiece) and 'gpt2' (BPE))")
        self.model = model
        self.is_spm = model == "llama"
        n = len(tokens)
        self.n_vocab = n

        # Vocabulary. Empty texts get a placeholder, as llama.cpp does; with
        # duplicate texts the later id wins the text -> id lookup.
        self.texts = list(tokens)
        for i, text in enumerate(self.texts):
            if not text:
                self.texts[i] = f"[EMPTY_{i}]"
        self.token_to_id = dict(zip(self.texts, range(n)))
        scores = metadata.get("tokenizer.ggml.scores")
        self.scores = list(scores) if scores is not None else [0.0] * n
        types = metadata.get("tokenizer.ggml.token_type")
        if types is None:
            self.attrs = [ATTR_NORMAL] * n
        else:
            self.attrs = [_TYPE_TO_ATTR.get(t, ATTR_UNDEFINED) for t in types]

        # Flags and their defaults per vocabulary kind (llama_vocab::impl::load).
        if self.is_spm:
            self.bos_id, self.eos_id, self.unk_id = 1, 2, 0
            self.add_space_prefix, self.add_bos, self.add_eos = True, True, False
            self.clean_spaces = False
            self.ignore_merges = False
            self.pre = None
        else:
            self.bos_id, self.eos_id, self.unk_id = 11, 11, None
            pre_name = metadata.get("tokenizer.ggml.pre") or "default"
            if pre_name not in PRE_TOKENIZERS:
                raise UserError(f"pre-tokenizer {pre_name!r} (tokenizer.ggml.pre) is not "
                                f"supported; known: {', '.join(sorted(PRE_TOKENIZERS))}")
            pre = PRE_TOKENIZERS[pre_name]
            self.add_space_prefix, self.add_bos, self.add_eos = False, pre["add_bos"], False
            self.clean_spaces = pre["clean_spaces"]
            self.ignore_merges = pre["ignore_merges"]
            self.pre = PreTokenizer(pre["family"])
            if pre_name in ("chatglm-bpe", "glm4"):
                self.bos_id = None
        self.add_space_prefix = bool(metadata.get("tokenizer.ggml.add_space_prefix",
                                                  self.add_space_prefix))
        self.add_bos = bool(metadata.get("tokenizer.ggml.add_bos_token", self.add_bos))
        self.add_eos = bool(metadata.get("tokenizer.ggml.add_eos_token", self.add_eos))

        def special_id(key, default):
            value = metadata.get(f"tokenizer.ggml.{key}_token_id")
            if value is not None and 0 <= value < n:
                return value
            # llama.cpp's defaults, unless the vocabulary is too small to hold them
            return default if default is not None and default < n else None

        self.bos_id = special_id("bos", self.bos_id)
        self.eos_id = special_id("eos", self.eos_id)
        self.unk_id = special_id("unknown", self.unk_id)
        self.eot_id = special_id("eot", None)
        self.eom_id = special_id("eom", None)
        self.fim_ids = {kind: special_id(f"fim_{kind}", None) for kind in _FIM_TEXTS}
        for kind, old_key in (("pre", "prefix"), ("suf", "suffix"), ("mid", "middle")):
            self.fim_ids[kind] = special_id(old_key, self.fim_ids[kind])

        self._find_special_tokens()
        self._set_per_model_attrs(metadata)

        # Special-token texts to cut out of the input, longest first.
        special = [i for i in range(n)
                   if self.attrs[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN)]
        special.sort(key=lambda i: -len(self.texts[i].encode("utf-8", "surrogateescape")))
        self._special_order = {token_id: k for k, token_id in enumerate(special)}
        # Index by the first two characters (or the only one) so a text only
        # searches for the special tokens whose start it contains (Gemma has
        # thousands).
        self._special_by_prefix = {}
        for i in special:
            self._special_by_prefix.setdefault(self.texts[i][:2], []).append(i)

        if self.is_spm:
            # Tokens with ▁ after another character can join two words; if the
            # vocabulary has none (or few) we can merge word by word and cache.
            self._spm_inner_space = [t for t in self.token_to_id
                                     if SPM_SPACE in t.lstrip(SPM_SPACE)]
            self._byte_ids = [self._spm_byte_token(b) for b in range(256)]
        else:
            # Merge rules "left right" -> rank, looked up as left + " " + right.
            # llama.cpp splits a rule at its first space after the first character;
            # the two agree because BPE symbols never hold a raw space. Built in
            # reverse so that of duplicate rules the first rank wins, as there.
            merges = metadata.get("tokenizer.ggml.merges") or []
            self.bpe_ranks = dict(zip(reversed(merges), range(len(merges) - 1, -1, -1)))
        self._word_cache = WordCache()
        self._pieces = [None] * n

    @classmethod
    def from_gguf(cls, gguf):
        """Build from a GGUFFile (or a plain metadata dict)."""
        metadata = gguf if isinstance(gguf, dict) else gguf.metadata
        return cls(metadata)


    # ---- special tokens, as llama.cpp finds them ----

    def _make_control(self, i):
        self.attrs[i] |= ATTR_CONTROL

    def _find_special_tokens(self):
        """EOT/FIM detection by text, unused tokens and the end-of-generation set.

        llama.cpp walks a hash map, so when several texts of one list are in the
        vocabulary the one it picks is arbitrary; we take the lowest id.
        """
        def first_in_vocab(texts):
            ids = [self.token_to_id[t] for t in texts if t in self.token_to_id]
            return min(ids) if ids else None

        if self.eot_id is None:
            self.eot_id = first_in_vocab(_EOT_TEXTS)
            if self.eot_id is not None:
                self._make_control(self.eot_id)
        if self.eom_id is None:
            self.eom_id = first_in_vocab(["<|eom_id|>"])
            if self.eom_id is not None:
                self._make_control(self.eom_id)
        for kind, texts in _FIM_TEXTS.items():
            if self.fim_ids[kind] is None:
                self.fim_ids[kind] = first_in_vocab(texts)
                if self.fim_ids[kind] is not None:
                    self._make_control(self.fim_ids[kind])
        for text, i in self.token_to_id.items():
            if self.attrs[i] & ATTR_CONTROL and "unused" in text:
                self.attrs[i] |= ATTR_UNUSED

        eog = set()
        for kind in ("pad", "rep", "sep"):
            if self.fim_ids[kind] is not None:
                eog.add(self.fim_ids[kind])
        for text in _EOG_TEXTS:
            i = self.token_to_id.get(text)
            if i is not None:
                eog.add(i)
                self._make_control(i)
        for i in (self.eos_id, self.eot_id, self.eom_id):
            if i is not None:
                eog.add(i)
        by_text = {self.texts[i]: i for i in eog}
        # gpt-oss / solar-open: "<|end|>" ends a message there, not generation
        has_call = "<|call|>" in by_text or "<|calls|>" in by_text
        if "<|end|>" in by_text and has_call and ("<|return|>" in by_text or "<|flush|>" in by_text):
            eog.discard(by_text["<|end|>"])
            self.attrs[by_text["<|end|>"]] = ATTR_USER_DEFINED
        # gemma4: "</s>" is text there
        if "<|tool_response>" in by_text and "</s>" in by_text:
            eog.discard(by_text["</s>"])
            self.attrs[by_text["</s>"]] = ATTR_NORMAL
        self.eog_ids = eog

    def _set_per_model_attrs(self, metadata):
        """Whitespace stripping around special tokens that llama.cpp sets by model name."""
        name = str(metadata.get("general.name", "")).lower()
        pre = str(metadata.get("tokenizer.ggml.pre", ""))
        arch = str(metadata.get("general.architecture", ""))

        def set_attr(text, attr, on):
            i = self.token_to_id.get(text)
            if i is not None:
                self.attrs[i] = self.attrs[i] | attr if on else self.attrs[i] & ~attr

        if any(s in pre for s in ("jina-v2-de", "jina-v2-es", "jina-v2-code")) or \
                any(s in arch for s in ("nomic-bert-moe", "jina-bert-v3")):
            set_attr("<mask>", ATTR_LSTRIP, True)
        elif "phi-3" in name or "phi3" in name:
            for i in range(self.n_vocab):
                if self.attrs[i] & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN):
                    self.attrs[i] |= ATTR_RSTRIP
            set_attr("</s>", ATTR_RSTRIP, True)
            for text in ("<unk>", "<s>", "<|endoftext|>"):
                set_attr(text, ATTR_RSTRIP, False)
        elif "modern-bert" in name:
            set_attr("[MASK]", ATTR_LSTRIP, True)

    def is_control(self, token_id):
        return bool(self.attrs[token_id] & ATTR_CONTROL)

    # ---- encoding ----

    def _partition(self, text, parse_special):
        """Cut special tokens out of text: a list of str (raw text) and int (token id)."""
        fragments = [text]
        starts = set(text) | {text[i:i + 2] for i in range(len(text) - 1)}
        candidates = []
        for start in starts:
            candidates.extend(self._special_by_prefix.get(start, ()))
        if not candidates:
            return fragments
        candidates.sort(key=self._special_order.__getitem__)
        for token_id in candidates:
            attr = self.attrs[token_id]
            if not parse_special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
                continue
            special = self.texts[token_id]
            if special not in text:
                continue
            new_fragments = []
            for fragment in fragments:
                if not isinstance(fragment, str) or special not in fragment:
                    new_fragments.append(fragment)
                    continue
                start = 0
                while True:
                    at = fragment.find(special, start)
                    if at < 0:
                        break
                    left = fragment[start:at]
                    if attr & ATTR_LSTRIP:
                        left = left.rstrip(" \t\n\v\f\r")
                    if left:
                        new_fragments.append(left)
                    new_fragments.append(token_id)
                    start = at + len(special)
                    if attr & ATTR_RSTRIP:
                        while start < len(fragment) and fragment[start] in " \t\n\v\f\r":
                            start += 1
                if start < len(fragment):
                    new_fragments.append(fragment[start:])
            fragments = new_fragments
        return fragments

    def encode(self, text, add_special=True, parse_special=True):
        """Token ids of `text`, like llama_tokenize(add_special, parse_special)."""
        out = []
        if self.is_spm:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            prev_special = True  # a space prefix goes on the first text, and after specials
            for fragment in (self._partition(text, parse_special) if text else []):
                if isinstance(fragment, int):
                    out.append(fragment)
                    prev_special = True
                    continue
                if self.add_space_prefix and prev_special:
                    fragment = " " + fragment
                out.extend(self._spm_encode(fragment.replace(" ", SPM_SPACE)))
                prev_special = False
        else:
            if add_special and self.add_bos:
                out.append(self.bos_id)
            for fragment in (self._partition(text, parse_special) if text else []):
                if isinstance(fragment, int):
                    out.append(fragment)
                else:
                    for word in self.pre.split(fragment):
                        out.extend(self._bpe_word(word))
        if add_special and self.add_eos:
            out.append(self.eos_id)
        return out

    # SPM

    def _spm_byte_token(self, b):
        token_id = self.token_to_id.get("<0x%02X>" % b)
        if token_id is None:
            token_id = self.token_to_id.get(_raw_byte_text(b), self.unk_id)
        return token_id

    def _spm_encode(self, text):
        """SPM ids of escaped text, word by word when no token can span two words."""
        if len(self._spm_inner_space) > 64:
            return self._spm_merge(text)
        # A word is a run of ▁ and the characters after it. A boundary before a
        # ▁ is safe unless a token with an inner ▁ occurs across it.
        unsafe = set()
        for token in self._spm_inner_space:
            at = text.find(token)
            while at >= 0:
                unsafe.update(range(at + 1, at + len(token)))
                at = text.find(token, at + 1)
        out = []
        start = 0
        for i in range(1, len(text)):
            if text[i] == SPM_SPACE and text[i - 1] != SPM_SPACE and i not in unsafe:
                out.extend(self._spm_word(text[start:i]))
                start = i
        out.extend(self._spm_word(text[start:]))
        return out

    def _spm_word(self, word):
        ids = self._word_cache.get(word)
        if ids is None:
            ids = self._spm_merge(word)
            self._word_cache.put(word, ids)
        return ids

    def _spm_merge(self, text):
        """llm_tokenizer_spm_session: merge the best-scoring adjacent pair until none is a token."""
        token_to_id, scores = self.token_to_id, self.scores

        def priority(a, b):                    # the higher score merges first
            token_id = token_to_id.get(a + b)
            return None if token_id is None else -scores[token_id]

        symbols = _merge_adjacent(list(text), priority)
        out = []
        for piece in symbols:
            token_id = token_to_id.get(piece)
            if token_id is not None:
                out.append(token_id)
            else:
                out.extend(self._byte_ids[b] for b in piece.encode("utf-8"))
        return out

    # BPE

    def _bpe_word(self, word):
        ids = self._word_cache.get(word)
        if ids is not None:
            return ids
        spelled = word.encode("utf-8").decode("latin-1").translate(BYTE_TO_CHAR)
        token_to_id = self.token_to_id
        if self.ignore_merges and spelled in token_to_id:
            ids = [token_to_id[spelled]]
        else:
            ids = []
            for piece in self._bpe_merge(spelled):
                token_id = token_to_id.get(piece)
                if token_id is not None:
                    ids.append(token_id)
                else:
                    # not a token: llama.cpp looks up each UTF-8 byte of the piece as a
                    # one-byte text, and drops the bytes that are not tokens either
                    for b in piece.encode("utf-8"):
                        token_id = token_to_id.get(_raw_byte_text(b))
                        if token_id is not None:
                            ids.append(token_id)
        self._word_cache.put(word, ids)
        return ids

    def _bpe_merge(self, spelled):
        """llm_tokenizer_bpe_session: merge the lowest-ranked adjacent pair (leftmost
        among equals) until no adjacent pair has a merge rule."""
        ranks = self.bpe_ranks

        def priority(a, b):                    # the lowest rank merges first
            return ranks.get(a + " " + b)

        return _merge_adjacent(list(spelled), priority)

    # ---- decoding ----

    def token_to_piece(self, token_id, special=True):
        """The bytes token_id stands for (llama_token_to_piece).

        With special=False, control and unknown tokens give b"" (llama.cpp's
        rendering when special tokens are hidden).
        """
        attr = self.attrs[token_id]
        if not special and attr & (ATTR_CONTROL | ATTR_UNKNOWN):
            return b""
        piece = self._pieces[token_id]
        if piece is None:
            piece = self._make_piece(token_id, attr)
            self._pieces[token_id] = piece
        return piece

    def _make_piece(self, token_id, attr):
        text = self.texts[token_id]
        if attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED):
            return text.encode("utf-8", "surrogateescape")
        if self.is_spm:
            if attr & ATTR_NORMAL:
                return text.replace(SPM_SPACE, " ").encode("utf-8", "surrogateescape")
            if attr & ATTR_BYTE:
                try:
                    return bytes([int(text[3:5], 16)])
                except ValueError:
                    return b""
            return b""
        if attr & ATTR_NORMAL:
            out = bytearray()
            for c in text:
                b = CHAR_TO_BYTE.get(c)
                if b is not None:
                    out.append(b)
                else:
                    # llama_decode_text's marker for a character outside the byte map
                    out += b"[UNK_BYTE_0x" + c.encode("utf-8", "surrogateescape").hex().encode() + \
                        text.encode("utf-8", "surrogateescape") + b"]"
            return bytes(out)
        return b""

    def decode_bytes(self, ids, remove_special=False, unparse_special=True):
        """llama_detokenize: the bytes of ids joined, as llama.cpp cleans them up."""
        ids = list(ids)
        remove_space = self.add_space_prefix
        if remove_special and self.add_bos and ids and ids[0] == self.bos_id:
            remove_space = False
            ids = ids[1:]
        if remove_special and self.add_eos and ids and ids[-1] == self.eos_id:
            ids = ids[:-1]
        parts = []
        for token_id in ids:
            piece = self.token_to_piece(token_id, special=unparse_special)
            if remove_space and piece.startswith(b" "):
                piece = piece[1:]
            remove_space = False
            parts.append(piece)
        text = b"".join(parts)
        if self.clean_spaces:
            text = _clean_spaces(text)
        return text

    def decode(self, ids, remove_special=False, unparse_special=True):
        """Text of ids (invalid UTF-8 becomes U+FFFD)."""
        return self.decode_bytes(ids, remove_special, unparse_special).decode("utf-8", "replace")


def _clean_spaces(text):
    """llama.cpp's clean_up_tokenization_spaces, three passes over the bytes."""
    # 1: " ?", " !", " .", " ," lose their space
    out = bytearray(text[:1])
    for i in range(1, len(text)):
        if text[i - 1] == 0x20 and text[i] in b"?!.,":
            out.pop()
        out.append(text[i])
    # 2: a single apostrophe between spaces, " ' ", loses both spaces. llama.cpp
    # blanks the space after it in place, so that space no longer counts as the
    # space before the next character: hence the mutable copy.
    text, out = bytearray(out), bytearray(out[:1])
    i = 1
    while i < len(text):
        x = text[i]
        if x == 0x27 and i + 1 < len(text) and text[i - 1] == 0x20 and text[i + 1] == 0x20:
            out.pop()
            out.append(x)
            text[i + 1] = 0
            i += 2  # the space after it goes too
            continue
        out.append(x)
        i += 1
    # 3: " 's", " 'm", " 're", " 've" lose their space
    text, out = bytes(out), bytearray(out[:1])
    for i in range(1, len(text)):
        x = text[i]
        if text[i - 1] == 0x20 and x == 0x27 and i + 1 < len(text):
            x1 = text[i + 1]
            if x1 in b"sm":
                out.pop()
            elif i + 2 < len(text) and (text[i + 1:i + 3] in (b"re", b"ve")):
                out.pop()
        out.append(x)
    return bytes(out)


class StreamDecoder:
    """Turns a stream of token ids into text, one complete character at a time.

    A character whose UTF-8 bytes are split over several tokens (byte tokens,
    emoji in BPE vocabularies) comes out once its last byte arrives. Like
    llama-cli (without --special), control tokens print as nothing unless
    special=True.
    """

    def __init__(self, tokenizer, special=False, shown=()):
        self.tokenizer = tokenizer
        self.special = special
        self.shown = frozenset(shown)   # control tokens shown anyway (tool-call markers)
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id):
        special = self.special or token_id in self.shown
        return self._utf8.decode(self.tokenizer.token_to_piece(token_id, special))

    def flush(self):
        """Whatever is left; an unfinished character becomes U+FFFD."""
        return self._utf8.decode(b"", final=True)
