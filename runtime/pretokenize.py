"""Pre-tokenization for byte-level BPE vocabularies, as llama.cpp does it.

llama.cpp splits text into words with a list of regexes chosen by the GGUF key
`tokenizer.ggml.pre`. Each regex splits every piece the previous one produced;
stretches a regex does not match stay pieces of their own. Python's `re` has no
`\\p{L}`, so we use llama.cpp's own trick (unicode.cpp, "collapsed" text): every
code point >= 128 is replaced by one placeholder character naming its class,

    letter -> \\xd2   number -> \\xd1   punctuation -> \\xd3   mark -> \\xd4
    symbol -> \\xd5   whitespace -> \\x0b   anything else -> \\xd0

and `\\p{L}` becomes `[\\xd2A-Za-z]` and so on. ASCII keeps its own identity, so
the regexes see exactly the classes llama.cpp's std::regex sees. Regexes without
`\\p{..}` run on the real text, with non-ASCII whitespace turned into \\x0b as well
(llama.cpp's std::wregex path does the same, because its `\\s` is ASCII-only).

The classes come from `unicodedata`, corrected to Unicode 15.1, the version of
llama.cpp's tables (Python 3.9-3.12 ship older Unicode data).
"""

import bisect
import re
import unicodedata

# Code points whose class differs between the unicodedata of Python 3.9-3.12
# (Unicode 13.0-15.0) and Unicode 15.1, which llama.cpp's unicode-data.cpp
# encodes (and Python 3.13 ships): characters assigned in 14.0, 15.0 and 15.1.
# (first, last, class) with class the first letter of the general category.
_NEWER_UNICODE = [
    (0x61D, 0x61D, "P"), (0x870, 0x887, "L"), (0x888, 0x888, "S"), (0x889, 0x88E, "L"),
    (0x890, 0x891, "C"), (0x898, 0x89F, "M"), (0x8B5, 0x8B5, "L"), (0x8C8, 0x8C9, "L"),
    (0x8CA, 0x8D2, "M"), (0xC3C, 0xC3C, "M"), (0xC5D, 0xC5D, "L"), (0xCDD, 0xCDD, "L"),
    (0xCF3, 0xCF3, "M"), (0xECE, 0xECE, "M"), (0x170D, 0x170D, "L"), (0x1715, 0x1715, "M"),
    (0x171F, 0x171F, "L"), (0x180F, 0x180F, "M"), (0x1AC1, 0x1ACE, "M"), (0x1B4C, 0x1B4C, "L"),
    (0x1B7D, 0x1B7E, "P"), (0x1DFA, 0x1DFA, "M"), (0x20C0, 0x20C0, "S"), (0x2C2F, 0x2C2F, "L"),
    (0x2C5F, 0x2C5F, "L"), (0x2E53, 0x2E5D, "P"), (0x2FFC, 0x2FFF, "S"), (0x31EF, 0x31EF, "S"),
    (0x9FFD, 0x9FFF, "L"), (0xA7C0, 0xA7C1, "L"), (0xA7D0, 0xA7D1, "L"), (0xA7D3, 0xA7D3, "L"),
    (0xA7D5, 0xA7D9, "L"), (0xA7F2, 0xA7F4, "L"), (0xFBC2, 0xFBC2, "S"), (0xFD40, 0xFD4F, "S"),
    (0xFDCF, 0xFDCF, "S"), (0xFDFE, 0xFDFF, "S"), (0x10570, 0x1057A, "L"), (0x1057C, 0x1058A, "L"),
    (0x1058C, 0x10592, "L"), (0x10594, 0x10595, "L"), (0x10597, 0x105A1, "L"),
    (0x105A3, 0x105B1, "L"), (0x105B3, 0x105B9, "L"), (0x105BB, 0x105BC, "L"),
    (0x10780, 0x10785, "L"), (0x10787, 0x107B0, "L"), (0x107B2, 0x107BA, "L"),
    (0x10EFD, 0x10EFF, "M"), (0x10F70, 0x10F81, "L"), (0x10F82, 0x10F85, "M"),
    (0x10F86, 0x10F89, "P"), (0x11070, 0x11070, "M"), (0x11071, 0x11072, "L"),
    (0x11073, 0x11074, "M"), (0x11075, 0x11075, "L"), (0x110C2, 0x110C2, "M"),
    (0x1123F, 0x11240, "L"), (0x11241, 0x11241, "M"), (0x116B9, 0x116B9, "P"),
    (0x11740, 0x11746, "L"), (0x11AB0, 0x11ABF, "L"), (0x11B00, 0x11B09, "P"),
    (0x11F00, 0x11F01, "M"), (0x11F02, 0x11F02, "L"), (0x11F03, 0x11F03, "M"),
    (0x11F04, 0x11F10, "L"), (0x11F12, 0x11F33, "L"), (0x11F34, 0x11F3A, "M"),
    (0x11F3E, 0x11F42, "M"), (0x11F43, 0x11F4F, "P"), (0x11F50, 0x11F59, "N"),
    (0x12F90, 0x12FF0, "L"), (0x12FF1, 0x12FF2, "P"), (0x1342F, 0x1342F, "L"),
    (0x13439, 0x1343F, "C"), (0x13440, 0x13440, "M"), (0x13441, 0x13446, "L"),
    (0x13447, 0x13455, "M"), (0x16A70, 0x16ABE, "L"), (0x16AC0, 0x16AC9, "N"),
    (0x1AFF0, 0x1AFF3, "L"), (0x1AFF5, 0x1AFFB, "L"), (0x1AFFD, 0x1AFFE, "L"),
    (0x1B11F, 0x1B122, "L"), (0x1B132, 0x1B132, "L"), (0x1B155, 0x1B155, "L"),
    (0x1CF00, 0x1CF2D, "M"), (0x1CF30, 0x1CF46, "M"), (0x1CF50, 0x1CFC3, "S"),
    (0x1D1E9, 0x1D1EA, "S"), (0x1D2C0, 0x1D2D3, "N"), (0x1DF00, 0x1DF1E, "L"),
    (0x1DF25, 0x1DF2A, "L"), (0x1E030, 0x1E06D, "L"), (0x1E08F, 0x1E08F, "M"),
    (0x1E290, 0x1E2AD, "L"), (0x1E2AE, 0x1E2AE, "M"), (0x1E4D0, 0x1E4EB, "L"),
    (0x1E4EC, 0x1E4EF, "M"), (0x1E4F0, 0x1E4F9, "N"), (0x1E7E0, 0x1E7E6, "L"),
    (0x1E7E8, 0x1E7EB, "L"), (0x1E7ED, 0x1E7EE, "L"), (0x1E7F0, 0x1E7FE, "L"),
    (0x1F6DC, 0x1F6DF, "S"), (0x1F774, 0x1F776, "S"), (0x1F77B, 0x1F77F, "S"),
    (0x1F7D9, 0x1F7D9, "S"), (0x1F7F0, 0x1F7F0, "S"), (0x1F979, 0x1F979, "S"),
    (0x1F9CC, 0x1F9CC, "S"), (0x1FA75, 0x1FA77, "S"), (0x1FA7B, 0x1FA7C, "S"),
    (0x1FA87, 0x1FA88, "S"), (0x1FAA9, 0x1FAAF, "S"), (0x1FAB7, 0x1FABD, "S"),
    (0x1FABF, 0x1FABF, "S"), (0x1FAC3, 0x1FAC5, "S"), (0x1FACE, 0x1FACF, "S"),
    (0x1FAD7, 0x1FADB, "S"), (0x1FAE0, 0x1FAE8, "S"), (0x1FAF0, 0x1FAF8, "S"),
    (0x2A6DE, 0x2A6DF, "L"), (0x2B735, 0x2B739, "L"), (0x2EBF0, 0x2EE5D, "L"),
    (0x31350, 0x323AF, "L"),
]
_NEWER_STARTS = [r[0] for r in _NEWER_UNICODE]

# Unicode White_Space (PropList.txt): what llama.cpp calls whitespace. Unlike
# str.isspace() it leaves out U+001C..U+001F.
WHITESPACE = frozenset(
    [0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x85, 0xA0, 0x1680, 0x2028, 0x2029, 0x202F,
     0x205F, 0x3000] + list(range(0x2000, 0x200B)))

_PLACEHOLDER = {"N": "\xd1", "L": "\xd2", "P": "\xd3", "M": "\xd4", "S": "\xd5"}


def unicode_class(cp):
    """First letter of the general category as llama.cpp sees it; 'U' if unassigned."""
    i = bisect.bisect_right(_NEWER_STARTS, cp) - 1
    if i >= 0 and cp <= _NEWER_UNICODE[i][1]:
        return _NEWER_UNICODE[i][2]
    category = unicodedata.category(chr(cp))
    return "U" if category == "Cn" else category[0]


class _CollapseTable(dict):
    """str.translate table that fills itself in: code point -> placeholder."""

    def __missing__(self, cp):
        if cp < 128:
            out = cp
        elif cp in WHITESPACE:
            out = "\x0b"
        else:
            out = _PLACEHOLDER.get(unicode_class(cp), "\xd0")
        self[cp] = out
        return out


class _SpaceTable(dict):
    """str.translate table: non-ASCII whitespace -> \\x0b, all else unchanged."""

    def __missing__(self, cp):
        out = "\x0b" if cp >= 128 and cp in WHITESPACE else cp
        self[cp] = out
        return out


_collapse_table = _CollapseTable()
_space_table = _SpaceTable()

# What the \p{..} classes become on collapsed text: the placeholder plus the ASCII
# members llama.cpp lists for them (unicode.cpp k_ucat_map; note it has no `~`
# among the symbols, so neither do we).
_CATEGORY_MEMBERS = {
    "N": "\xd10-9",
    "L": "\xd2A-Za-z",
    "P": "\xd3!-#%-*,-/:-;?-@\\[-\\]_\\{\\}",
    "M": "\xd4",
    "S": "\xd5\\$\\+<->\\^`\\|",
}
# std::regex `\s` in the C locale: ASCII whitespace only (Python's `\s` would
# also take U+001C..U+001F).
_SPACE_MEMBERS = "\\t\\n\\x0b\\x0c\\r "


def _to_python_regex(expr):
    """Rewrite one of llama.cpp's ECMAScript regexes for Python `re` on collapsed text."""
    out = []
    inside = False  # inside [...]
    i = 0
    while i < len(expr):
        c = expr[i]
        if c == "\\":
            escaped = expr[i + 1]
            if escaped == "p":
                members = _CATEGORY_MEMBERS[expr[i + 3]]
                out.append(members if inside else "[" + members + "]")
                i += 5
                continue
            if escaped == "s":
                out.append(_SPACE_MEMBERS if inside else "[" + _SPACE_MEMBERS + "]")
                i += 2
                continue
            if escaped == "S":
                out.append("[^" + _SPACE_MEMBERS + "]")
                i += 2
                continue
            out.append(expr[i:i + 2])
            i += 2
            continue
        if c == "[" and not inside:
            inside = True
        elif c == "]" and inside:
            inside = False
        elif c == "$" and not inside:
            c = "\\Z"  # ECMAScript `$` is end of input only; Python's also takes a final \n
        out.append(c)
        i += 1
    return "".join(out)


# The regexes, as llama.cpp writes them (llama-vocab.cpp, llm_tokenizer_bpe).
GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
LLAMA3 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
          r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = (r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+"
         r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
TEKKEN = (r"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+"
          r"|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*"
          r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+")
def _char_class(ranges):
    """A regex character class body from (first, last) code point ranges."""
    return "".join("\\U%08x" % a if a == b else "\\U%08x-\\U%08x" % (a, b) for a, b in ranges)


# Written as code points: several of these characters have canonical
# equivalents (U+1F7D vs U+03CE, U+212A KELVIN SIGN vs K) that editors and
# copy-paste silently normalize, which would change the ranges.
CJK = "[" + _char_class([(0x4E00, 0x9FA5), (0x0800, 0x4E00), (0xAC00, 0xD7FF)]) + "]+"
DEEPSEEK_LETTERS = r"\s?[" + _char_class([
    (0x41, 0x5A), (0x61, 0x7A), (0xB5, 0xB5), (0xC0, 0xD6), (0xD8, 0xF6), (0xF8, 0x1BA),
    (0x1BC, 0x1BF), (0x1C4, 0x293), (0x295, 0x2AF), (0x370, 0x373), (0x376, 0x376), (0x377, 0x377),
    (0x37B, 0x37D), (0x37F, 0x37F), (0x386, 0x386), (0x388, 0x38A), (0x38C, 0x38C), (0x38E, 0x3A1),
    (0x3A3, 0x3F5), (0x3F7, 0x481), (0x48A, 0x52F), (0x531, 0x556), (0x10A0, 0x10C5),
    (0x13A0, 0x13F5), (0x13F8, 0x13FD), (0x1C90, 0x1CBA), (0x1CBD, 0x1CBF), (0x1D00, 0x1D2B),
    (0x1D6B, 0x1D77), (0x1D79, 0x1D9A), (0x1E00, 0x1F15), (0x1F18, 0x1F1D), (0x1F20, 0x1F45),
    (0x1F48, 0x1F4D), (0x1F50, 0x1F57), (0x1F59, 0x1F59), (0x1F5B, 0x1F5B), (0x1F5D, 0x1F5D),
    (0x1F5F, 0x1F7D), (0x1F80, 0x1FB4), (0x1FB6, 0x1FBC), (0x1FBE, 0x1FBE), (0x1FC2, 0x1FC4),
    (0x1FC6, 0x1FCC), (0x1FD0, 0x1FD3), (0x1FD6, 0x1FDB), (0x1FE0, 0x1FEC), (0x1FF2, 0x1FF4),
    (0x1FF6, 0x1FFC), (0x2102, 0x2102), (0x2107, 0x2107), (0x210A, 0x2113), (0x2115, 0x2115),
    (0x2119, 0x211D), (0x2124, 0x2124), (0x2126, 0x2126), (0x2128, 0x2128), (0x212A, 0x212D),
    (0x212F, 0x2134), (0x2139, 0x2139), (0x213C, 0x213F), (0x2145, 0x2149), (0x214E, 0x214E),
    (0x2183, 0x2183), (0x2184, 0x2184), (0x2C00, 0x2C7B), (0x2C7E, 0x2CE4), (0x2CEB, 0x2CEE),
    (0x2CF2, 0x2CF2), (0x2CF3, 0x2CF3), (0xA640, 0xA66D), (0xA680, 0xA69B), (0xA722, 0xA76F),
    (0xA771, 0xA787), (0xA78B, 0xA78E), (0xAB70, 0xABBF), (0xFB00, 0xFB06), (0xFB13, 0xFB17),
    (0xFF21, 0xFF3A), (0xFF41, 0xFF5A), (0x10400, 0x1044F), (0x104B0, 0x104D3), (0x104D8, 0x104FB),
    (0x10C80, 0x10CB2), (0x10CC0, 0x10CF2), (0x118A0, 0x118DF), (0x1E900, 0x1E943),
]) + "]+"
# ASCII and fullwidth punctuation, quotation marks U+2018..U+201F, U+3000..U+3002
DEEPSEEK_PUNCT = r"\s?[!-/:-~" + _char_class([(0xFF01, 0xFF0F), (0xFF1A, 0xFF5E), (0x2018, 0x201F),
                                             (0x3000, 0x3002)]) + "]+"
# anything up to whitespace or . , ! ? and … 。 ， 、 । ۔ ، (the ( | ) are literal: llama.cpp's regex)
PORO = r" ?[^(\s|.,!?" + _char_class([(0x2026, 0x2026), (0x3002, 0x3002), (0xFF0C, 0xFF0C),
                                       (0x3001, 0x3001), (0x0964, 0x0964), (0x06D4, 0x06D4),
                                       (0x060C, 0x060C)]) + ")]+"

_REGEXES = {
    "default": [r"[\p{P}\$\+<=>\^~\|]+", GPT2, r"\p{N}+", r"[0-9][0-9][0-9]"],
    "llama3": [LLAMA3],
    "deepseek-llm": ["[\r\n]", DEEPSEEK_LETTERS, DEEPSEEK_PUNCT, r"\s+$", CJK, r"\p{N}+"],
    "deepseek-coder": ["[\r\n]", r"\s?\p{L}+", r"\s?\p{P}+", CJK, r"\p{N}"],
    "falcon": [r"[\p{P}\$\+<=>\^~\|`]+", GPT2, r"[0-9][0-9][0-9]"],
    "starcoder": [r"\p{N}", GPT2],
    "gpt2": [GPT2],
    "qwen2": [QWEN2],
    "poro": [PORO],
    "viking": [PORO, r"\p{N}"],
    "tekken": [TEKKEN],
}

# tokenizer.ggml.pre -> (regex family, flags llama.cpp sets with it)
# clean_spaces: detokenize removes spaces before punctuation (HF's
# clean_up_tokenization_spaces); add_bos: BOS unless the GGUF says otherwise;
# ignore_merges: a word that is itself a token is taken whole.
PRE_TOKENIZERS = {}


def _register(names, family, clean_spaces=True, add_bos=False, ignore_merges=False):
    for name in names:
        PRE_TOKENIZERS[name] = dict(family=family, clean_spaces=clean_spaces, add_bos=add_bos,
                                    ignore_merges=ignore_merges)


_register(["default"], "default")
_register(["llama3", "llama-v3", "llama-bpe", "falcon3", "falcon-h1", "pixtral", "midm-2.0",
           "lfm2"], "llama3", add_bos=True, ignore_merges=True)
_register(["dbrx", "smaug-bpe"], "llama3")
_register(["chatglm-bpe", "glm4"], "llama3")
_register(["deepseek-llm"], "deepseek-llm", clean_spaces=False)
_register(["deepseek-coder"], "deepseek-coder", clean_spaces=False)
_register(["falcon"], "falcon")
_register(["starcoder", "refact", "codeshell", "exaone", "minerva-7b"], "starcoder")
_register(["command-r", "smollm"], "starcoder", clean_spaces=False)
_register(["gpt-2", "phi-2", "jina-es", "jina-de", "gigachat", "jina-v2-es", "jina-v2-de",
           "mpt", "olmo", "jais", "exaone4", "a.x-4.0", "mellum"], "gpt2")
_register(["trillion", "granite-docling"], "gpt2", clean_spaces=False)
_register(["stablelm2", "megrez"], "qwen2")
_register(["qwen2", "deepseek-r1-qwen", "hunyuan"], "qwen2", clean_spaces=False)
_register(["poro-chat"], "poro", clean_spaces=False)
_register(["bloom", "gpt3-finnish"], "poro")
_register(["viking"], "viking", clean_spaces=False)
_register(["tekken"], "tekken", clean_spaces=False, add_bos=True, ignore_merges=True)


class PreTokenizer:
    """Splits text into words with one of llama.cpp's regex lists."""

    def __init__(self, family):
        self.steps = []  # (compiled regex, runs on collapsed text?)
        for expr in _REGEXES[family]:
            uses_categories = "\\p{" in expr
            self.steps.append((re.compile(_to_python_regex(expr)), uses_categories))
        self.needs_collapse = any(c for _, c in self.steps)

    def split(self, text):
        """The words of `text` (a str), in order; they concatenate back to `text`."""
        if not text:
            return []
        collapsed = text.translate(_collapse_table) if self.needs_collapse else None
        spaced = None
        pieces = [(0, len(text))]
        for regex, uses_categories in self.steps:
            if uses_categories:
                view = collapsed
            else:
                if spaced is None:
                    spaced = text.translate(_space_table)
                view = spaced
            new_pieces = []
            for start, end in pieces:
                pos = start
                for m in regex.finditer(view, start, end):
                    m_start, m_end = m.span()
                    if m_start == m_end:
                        continue  # empty matches split nothing
                    if m_start > pos:
                        new_pieces.append((pos, m_start))
                    new_pieces.append((m_start, m_end))
                    pos = m_end
                if pos < end:
                    new_pieces.append((pos, end))
            pieces = new_pieces
        return [text[a:b] for a, b in pieces]
