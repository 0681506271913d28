"""The tokenizer gives llama.cpp's ids.

Three kinds of evidence:
- llama.cpp's own vocab test vectors in ../shared/testdata/vocab (7 vocabularies);
- hard cases on the two test models, whose expected ids are literals produced once
  with llama.cpp (llama-cpp-python 0.3.36: Llama(vocab_only=True).tokenize(text,
  add_bos=..., special=...), and llama_vocab_is_eog), so CI needs no llama_cpp;
- behaviour checks: BOS/EOS, decoding, streaming, speed, no heavy imports.
"""

import os
import random
import subprocess
import sys
import time

import pytest

from runtime.gguf import GGUFFile
from runtime.pretokenize import unicode_class
from runtime.tokenizer import StreamDecoder, Tokenizer
from tests.models import SHARED, gemma3, smollm2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB_DIR = os.path.join(SHARED, "testdata", "vocab")
VOCABS = ["llama-spm", "phi-3", "llama-bpe", "gpt-2", "qwen2", "starcoder", "deepseek-llm"]


# -- llama.cpp's vocab test vectors --------------------------------------------------

def read_vocab_cases(name):
    """(text, ids) pairs of ggml-vocab-NAME.gguf.inp/.out.

    The .inp file is every text followed by "\\n__ggml_vocab_test__\\n" (so a text's
    own trailing newline stays part of it); .out has one line of ids per text,
    without BOS.
    """
    base = os.path.join(VOCAB_DIR, f"ggml-vocab-{name}.gguf")
    with open(base + ".inp", encoding="utf-8", newline="") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")
    assert texts[-1] == ""
    texts = texts[:-1]
    with open(base + ".out", encoding="utf-8", newline="") as f:
        lines = f.read().split("\n")
    assert len(lines) >= len(texts)
    return base, [(t, [int(x) for x in line.split()]) for t, line in zip(texts, lines)]


@pytest.mark.parametrize("name", VOCABS)
def test_llama_cpp_vocab_vectors(name):
    if not os.path.isdir(VOCAB_DIR):
        pytest.skip(f"../shared/testdata/vocab is absent ({VOCAB_DIR}); "
                    "llama.cpp's tokenizer test vectors live in the shared test data")
    path, cases = read_vocab_cases(name)
    assert len(cases) == 46
    tok = Tokenizer.from_gguf(GGUFFile.open(path))
    wrong = [(text, tok.encode(text, add_special=False, parse_special=False), ids)
             for text, ids in cases
             if tok.encode(text, add_special=False, parse_special=False) != ids]
    assert not wrong, wrong[:3]


# -- hard cases on the test models, expected ids from llama.cpp ----------------------
SMOLLM2_CASES = [
    ('', []),
    (' ', [216]),
    ('  ', [256]),
    ('   ', [333]),
    ('\t', [197]),
    ('\n', [198]),
    ('\n\n', [1116]),
    ('\n\n\n', [16506]),
    (' \n ', [3717, 216]),
    ('\t\tx\t', [197, 197, 104, 197]),
    ('\r\n', [2738]),
    ('Hello', [19556]),
    (' Hello', [38699]),
    ('Hello ', [19556, 216]),
    ('  Hello  world  ', [216, 38699, 216, 905, 256]),
    ('Hello\nworld\n', [19556, 198, 6693, 198]),
    ('a  \n  b', [81, 256, 3805, 278]),
    ('1', [33]),
    ('12', [33, 34]),
    ('123', [33, 34, 35]),
    ('1234', [33, 34, 35, 36]),
    ('12345678901234567890', [33, 34, 35, 36, 37, 38, 39, 40, 41, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 32]),
    ('3.14159', [35, 30, 33, 36, 33, 37, 41]),
    ('1,000,000', [33, 28, 32, 32, 32, 28, 32, 32, 32]),
    ('٣٤٥', [164, 113, 164, 114, 164, 115]),
    ('①②', [173, 235, 250, 173, 235, 111]),
    ('你好，世界', [18645, 250, 48392, 138, 12831, 7906, 240, 178, 239, 230]),
    ('日本語のテキスト', [23274, 115, 40993, 179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226]),
    ('한국어', [33085, 246, 181, 130, 251, 183, 240, 129]),
    ('😀', [10813, 242, 218]),
    ('👍🏽', [10813, 235, 231, 10813, 233, 138]),
    ('\U0001f468\u200d\U0001f469\u200d\U0001f467', [10813, 235, 118, 321, 231, 10813, 235, 119, 321, 231, 10813, 235, 117]),
    ('🇯🇵', [10813, 225, 124, 10813, 225, 130]),
    ('café', [83, 1939, 2756]),
    ('naïve résumé', [3546, 46494, 412, 2756, 5422, 2756]),
    ('Ångström', [142, 223, 863, 1321, 45682]),
    ('e\u0301', [85, 151, 219]),
    ('ﬁ', [27141]),
    ('\u212a\u212b', [13993, 120, 13993, 121]),
    ('def add(a, b):\n    return a + b\n', [1604, 803, 24, 81, 28, 278, 727, 472, 1003, 253, 1232, 278, 198]),
    ('for (int i = 0; i < n; ++i) {\n\tx[i] = 0;\n}', [1710, 365, 591, 2056, 446, 216, 32, 43, 2056, 2067, 304, 43, 1232, 27, 89, 25, 1662, 198, 197, 104, 75, 89, 77, 446, 216, 32, 43, 198, 109]),
    ('<div class="x">&nbsp;</div>', [44, 10014, 1128, 2671, 104, 15889, 22, 94, 32093, 43, 9617, 10014, 46]),
    ('<|im_start|>user\nHi<|im_end|>\n', [1, 4093, 198, 26843, 2, 198]),
    ('<s>', [44, 99, 46]),
    ('</s>', [9617, 99, 46]),
    ('<start_of_turn>user\nHi<end_of_turn>\n', [44, 3738, 79, 1714, 79, 20589, 46, 4093, 198, 26843, 44, 486, 79, 1714, 79, 20589, 46, 198]),
    ('<bos><eos>', [44, 34761, 21198, 85, 395, 46]),
    ('<|endoftext|>', [0]),
    ('<unused0>', [44, 419, 3447, 32, 46]),
    ('<0x41>', [44, 32, 104, 36, 33, 46]),
    ('[multimodal]', [75, 10593, 306, 32058, 77]),
    ('<b>bold</b>', [44, 82, 46, 30471, 9617, 82, 46]),
    ('a> </b', [81, 46, 22577, 82]),
    ("I'm here, you're there. It's ok; we'll see! DON'T", [57, 5248, 1535, 28, 346, 2316, 665, 30, 657, 506, 10907, 43, 392, 3060, 963, 17, 422, 2154, 23, 68]),
    ('mixed 中文 and English 123 😀!', [35781, 216, 28589, 29184, 284, 2321, 216, 33, 34, 35, 40303, 218, 17]),
    ('▁ literal ▁▁', [11007, 219, 19620, 29566, 219, 11007, 219]),
    ('\xa0nbsp\u2009thin\u3000ideo', [15442, 94, 32093, 321, 227, 39200, 12109, 218, 8496]),
    ('\u200bzero\ufeffwidth', [321, 229, 13723, 186, 136, 140, 6930]),
    ('\x00\x01\x1f\x7f', [190, 191, 215, 217]),
    ('tab\tsep\tvalues', [15999, 197, 29070, 197, 6347]),
    (" ' ", [637, 216]),
    ('Hello , world !', [19556, 3297, 905, 5728]),
    ('\U0001fae8 \U00011f50 \u2ffc', [10813, 121, 118, 216, 187, 235, 138, 234, 4636, 140, 137]),
]
SMOLLM2_NO_PARSE_SPECIAL = [
    ('<|im_start|>user\nHi<|im_end|>\n', [44, 108, 306, 79, 3738, 108, 46, 4093, 198, 26843, 44, 108, 306, 79, 486, 108, 46, 198]),
    ('<start_of_turn>user\nHi<end_of_turn>\n', [44, 3738, 79, 1714, 79, 20589, 46, 4093, 198, 26843, 44, 486, 79, 1714, 79, 20589, 46, 198]),
    ('<s></s><b>', [44, 99, 29299, 99, 21198, 82, 46]),
    ('<bos>x', [44, 34761, 46, 104]),
]
SMOLLM2_ADD_SPECIAL = [
    ('', []),
    ('Hello', [19556]),
    ('<bos>Hello', [44, 34761, 46, 19556]),
    ('<|im_start|>Hi', [1, 26843]),
]
SMOLLM2_EOG = [0, 2, 4]
GEMMA3_CASES = [
    ('', []),
    (' ', [236743]),
    ('  ', [138]),
    ('   ', [139]),
    ('\t', [255968]),
    ('\n', [107]),
    ('\n\n', [108]),
    ('\n\n\n', [109]),
    (' \n ', [236743, 107, 236743]),
    ('\t\tx\t', [255969, 236781, 255968]),
    ('\r\n', [251, 107]),
    ('Hello', [9259]),
    (' Hello', [26352]),
    ('Hello ', [9259, 236743]),
    ('  Hello  world  ', [138, 9259, 138, 12392, 138]),
    ('Hello\nworld\n', [9259, 107, 12392, 107]),
    ('a  \n  b', [236746, 138, 107, 138, 236763]),
    ('1', [236770]),
    ('12', [236770, 236778]),
    ('123', [236770, 236778, 236800]),
    ('1234', [236770, 236778, 236800, 236812]),
    ('12345678901234567890', [236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819, 236771, 236770, 236778, 236800, 236812, 236810, 236825, 236832, 236828, 236819, 236771]),
    ('3.14159', [236800, 236761, 236770, 236812, 236770, 236810, 236819]),
    ('1,000,000', [236770, 236764, 236771, 236771, 236771, 236764, 236771, 236771, 236771]),
    ('٣٤٥', [242044, 242090, 242323]),
    ('①②', [240366, 240567]),
    ('你好，世界', [144626, 236900, 12811]),
    ('日本語のテキスト', [94951, 236945, 95830]),
    ('한국어', [114216, 237430]),
    ('😀', [242398]),
    ('👍🏽', [240493, 242713]),
    ('\U0001f468\u200d\U0001f469\u200d\U0001f467', [243874, 237243, 243767, 237243, 244814]),
    ('🇯🇵', [247994, 245707]),
    ('café', [123125, 236859]),
    ('naïve résumé', [1789, 238527, 560, 118515]),
    ('Ångström', [239685, 829, 80406]),
    ('e\u0301', [236744, 238288]),
    ('ﬁ', [240811]),
    ('\u212a\u212b', [464, 370, 408, 464, 370, 409]),
    ('def add(a, b):\n    return a + b\n', [2063, 1138, 236769, 236746, 236764, 518, 1473, 107, 140, 2060, 496, 900, 518, 107]),
    ('for (int i = 0; i < n; ++i) {\n\tx[i] = 0;\n}', [1708, 568, 720, 858, 578, 236743, 236771, 236793, 858, 655, 538, 236793, 12215, 236747, 236768, 642, 107, 255968, 236781, 236840, 236747, 236842, 578, 236743, 236771, 236793, 107, 236783]),
    ('<div class="x">&nbsp;</div>', [236820, 1928, 1012, 718, 236781, 40697, 11539, 236793, 235]),
    ('<|im_start|>user\nHi<|im_end|>\n', [236820, 236909, 548, 236779, 3041, 111038, 2364, 107, 10979, 236820, 236909, 548, 236779, 643, 111038, 107]),
    ('<s>', [203]),
    ('</s>', [212]),
    ('<start_of_turn>user\nHi<end_of_turn>\n', [105, 2364, 107, 10979, 106, 107]),
    ('<bos><eos>', [2, 1]),
    ('<|endoftext|>', [236820, 236909, 643, 1340, 1005, 111038]),
    ('<unused0>', [6]),
    ('<0x41>', [236820, 236771, 236781, 236812, 236770, 236813]),
    ('[multimodal]', [5]),
    ('<b>bold</b>', [200, 15640, 209]),
    ('a> </b', [236746, 107068, 236763]),
    ("I'm here, you're there. It's ok; we'll see! DON'T", [236777, 236789, 236757, 1590, 236764, 611, 236789, 500, 993, 236761, 1030, 236789, 236751, 7546, 236793, 692, 236789, 859, 1460, 236888, 52402, 236789, 236774]),
    ('mixed 中文 and English 123 😀!', [63258, 17346, 237364, 532, 5422, 236743, 236770, 236778, 236800, 163543, 236888]),
    ('▁ literal ▁▁', [236743, 37087, 236743, 236743, 236743]),
    ('\xa0nbsp\u2009thin\u3000ideo', [432, 398, 11539, 464, 366, 375, 46910, 465, 366, 366, 2159]),
    ('\u200bzero\ufeffwidth', [237141, 13321, 237922, 2690]),
    ('\x00\x01\x1f\x7f', [238, 249732, 253998, 251541]),
    ('tab\tsep\tvalues', [4823, 255968, 30868, 255968, 7558]),
    (" ' ", [756, 236743]),
    ('Hello , world !', [9259, 1031, 1902, 1717]),
    ('\U0001fae8 \U00011f50 \u2ffc', [478, 397, 409, 406, 236743, 478, 383, 427, 382, 236743, 464, 429, 426]),
]
GEMMA3_NO_PARSE_SPECIAL = [
    ('<|im_start|>user\nHi<|im_end|>\n', [236820, 236909, 548, 236779, 3041, 111038, 2364, 107, 10979, 236820, 236909, 548, 236779, 643, 111038, 107]),
    ('<start_of_turn>user\nHi<end_of_turn>\n', [236820, 3041, 236779, 1340, 236779, 887, 236813, 2364, 107, 10979, 236820, 643, 236779, 1340, 236779, 887, 236813, 107]),
    ('<s></s><b>', [203, 954, 236751, 236813, 200]),
    ('<bos>x', [236820, 46757, 236813, 236781]),
]
GEMMA3_ADD_SPECIAL = [
    ('', [2]),
    ('Hello', [2, 9259]),
    ('<bos>Hello', [2, 2, 9259]),
    ('<|im_start|>Hi', [2, 236820, 236909, 548, 236779, 3041, 111038, 10979]),
]
GEMMA3_EOG = [1, 106, 212]


@pytest.fixture(scope="module")
def smol():
    return Tokenizer.from_gguf(GGUFFile.open(smollm2()))


@pytest.fixture(scope="module")
def gemma():
    return Tokenizer.from_gguf(GGUFFile.open(gemma3()))


MODELS = {
    "smollm2": (SMOLLM2_CASES, SMOLLM2_NO_PARSE_SPECIAL, SMOLLM2_ADD_SPECIAL, SMOLLM2_EOG),
    "gemma3": (GEMMA3_CASES, GEMMA3_NO_PARSE_SPECIAL, GEMMA3_ADD_SPECIAL, GEMMA3_EOG),
}


@pytest.fixture(params=list(MODELS))
def model(request):
    tok = request.getfixturevalue("smol" if request.param == "smollm2" else "gemma")
    return tok, MODELS[request.param]


def test_hard_cases_match_llama_cpp(model):
    tok, (cases, _, _, _) = model
    wrong = [(text, tok.encode(text, add_special=False), ids) for text, ids in cases
             if tok.encode(text, add_special=False) != ids]
    assert not wrong, wrong[:3]


def test_special_looking_text_without_parse_special(model):
    tok, (_, cases, _, _) = model
    for text, ids in cases:
        assert tok.encode(text, add_special=False, parse_special=False) == ids, text


def test_add_special_like_llama_tokenize(model):
    """--tokenize: BOS only where the model's metadata asks for it (Gemma yes, SmolLM2 no)."""
    tok, (_, _, cases, _) = model
    for text, ids in cases:
        assert tok.encode(text) == ids, text


def test_end_of_generation_ids(model):
    tok, (_, _, _, eog) = model
    assert sorted(tok.eog_ids) == eog
    assert tok.eos_id in tok.eog_ids


def test_special_token_facts(smol, gemma):
    assert (smol.bos_id, smol.eos_id, smol.add_bos, smol.add_eos) == (1, 2, False, False)
    assert (gemma.bos_id, gemma.eos_id, gemma.add_bos, gemma.add_eos) == (2, 1, True, False)
    assert smol.n_vocab == 49152 and gemma.n_vocab == 262144
    assert smol.is_control(1) and smol.is_control(2) and not smol.is_control(19556)
    assert gemma.is_control(106) and not gemma.is_control(9259)
    assert gemma.is_control(212)  # "</s>": user-defined, made control as an EOG text


# -- decoding ------------------------------------------------------------------------

ROUND_TRIP = ["Hello world", "  two  spaces  ", "\n\ttabs\n", "caf\u00e9 na\u00efve", "\u4f60\u597d",
              "\U0001F600 \U0001F44D\U0001F3FD", "<start_of_turn>user\nHi<end_of_turn>",
              "<|im_start|>assistant\nok<|im_end|>", "x = [1, 2, 3]  # list", "\u212a\x00\x7f"]


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_round_trip(smol, gemma, text):
    # neither model adds a space prefix or cleans up spaces, so text comes back exactly
    for tok in (smol, gemma):
        assert tok.decode(tok.encode(text, add_special=False)) == text


def test_spm_space_symbol_in_text_is_a_space(gemma):
    # SPM spells spaces as \u2581, so a \u2581 in the text comes back as a space
    assert gemma.decode(gemma.encode("a\u2581b", add_special=False)) == "a b"


def test_decode_like_llama_detokenize(gemma, smol):
    # llama_detokenize(remove_special=false, unparse_special=true)
    assert gemma.decode([2, 9259, 1902]) == "<bos>Hello world"
    assert gemma.decode([2, 9259], remove_special=True) == "Hello"
    assert gemma.decode([105, 2364, 107]) == "<start_of_turn>user\n"
    assert gemma.decode([105, 2364], unparse_special=False) == "user"
    assert smol.decode([1, 4093, 198]) == "<|im_start|>user\n"


def test_token_to_piece(gemma, smol):
    assert gemma.token_to_piece(9259) == b"Hello"
    assert gemma.token_to_piece(1902) == b" world"          # SPM: \u2581 is a space
    assert gemma.token_to_piece(238 + 0x41) == b"A"         # byte token <0x41>
    assert gemma.texts[238 + 0x41] == "<0x41>"
    assert gemma.token_to_piece(106) == b"<end_of_turn>"
    assert smol.token_to_piece(38699) == b" Hello"          # BPE: \u0120 is a space
    assert smol.token_to_piece(216) == b" "
    assert smol.token_to_piece(2) == b"<|im_end|>"


def test_clean_spaces_on_bpe_vocab():
    """gpt-2 style vocabularies tidy " ," and " 's" when detokenizing, like llama.cpp."""
    if not os.path.isdir(VOCAB_DIR):
        pytest.skip(f"../shared/testdata/vocab is absent ({VOCAB_DIR})")
    tok = Tokenizer.from_gguf(GGUFFile.open(os.path.join(VOCAB_DIR, "ggml-vocab-gpt-2.gguf")))
    ids = tok.encode("Hello , world ! it 's ' quoted ' ok", add_special=False)
    assert tok.decode(ids) == "Hello, world! it's'quoted'ok"


def test_stream_decoder_waits_for_whole_characters(smol, gemma):
    # the emoji are byte-level pieces in SmolLM2, the Kelvin sign byte tokens in Gemma
    text = "a\U0001F600b \u00e9\u4f60\u597d\U0001F44D\U0001F3FD \u212a!"
    for tok in (smol, gemma):
        ids = tok.encode(text, add_special=False)
        decoder = StreamDecoder(tok)
        pieces = [decoder.feed(i) for i in ids] + [decoder.flush()]
        assert "".join(pieces) == text
        assert "" in pieces[:-1], "some character should span several tokens"
        assert "\ufffd" not in "".join(pieces)
    # an unfinished character is flushed as U+FFFD
    decoder = StreamDecoder(gemma)
    assert decoder.feed(gemma.token_to_id["<0xF0>"]) == ""
    assert decoder.flush() == "\ufffd"


# -- the rest --------------------------------------------------------------------------

def english_text(n_chars, seed=0):
    words = ("the of and to in is that for it as was with be by on not he this are or his from "
             "at which but have an they you were her she there been one all we their has would "
             "when if so no will more can about said what out up time into only other new some "
             "could these two may first then do any like my now over such our man me even most "
             "made after also did many before must through back years where much your way well "
             "down should because each just those people how too little state good very make "
             "world still own see men work long get here between both life being under never "
             "day same another know while last might us great old year off come since against "
             "go came right used take three tokenizer llama model weights context").split()
    rng = random.Random(seed)
    out, sentence = [], []
    while sum(map(len, out)) < n_chars:
        sentence.append(rng.choice(words))
        if len(sentence) > rng.randint(6, 18):
            out.append(" ".join(sentence).capitalize() + rng.choice([". ", ", ", "? ", ".\n\n"]))
            sentence = []
    return "".join(out)[:n_chars]


def test_encoding_20kb_of_english_is_fast():
    text = english_text(20_000)
    for path in (smollm2(), gemma3()):
        tok = Tokenizer.from_gguf(GGUFFile.open(path))  # fresh: nothing cached
        t0 = time.perf_counter()
        ids = tok.encode(text)
        elapsed = time.perf_counter() - t0
        assert len(ids) > 3000
        assert elapsed < 1.0, f"{os.path.basename(path)}: {elapsed:.2f}s for 20 KB"


def test_unicode_classes_are_llama_cpps():
    """llama.cpp's tables are Unicode 15.1, whatever Python's unicodedata is."""
    assert unicode_class(ord("a")) == "L" and unicode_class(ord("7")) == "N"
    assert unicode_class(0x11F50) == "N"   # KAWI DIGIT ZERO, Unicode 15.0
    assert unicode_class(0x31350) == "L"   # CJK Extension H, Unicode 15.0
    assert unicode_class(0x2FFC) == "S"    # ideographic description character, 15.1
    assert unicode_class(0x1E030) == "L"   # Cyrillic modifier letter, 15.0
    assert unicode_class(0x0378) == "U"    # unassigned


def test_runtime_imports_no_numpy_or_sentencepiece():
    code = ("import sys, runtime.tokenizer, runtime.pretokenize; "
            "print(sorted(m for m in ('numpy', 'sentencepiece') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_unsupported_tokenizer_is_a_user_error():
    from runtime.errors import UserError
    with pytest.raises(UserError):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "bert", "tokenizer.ggml.tokens": ["a"]})
    with pytest.raises(UserError):
        Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "nope",
                             "tokenizer.ggml.tokens": ["a"], "tokenizer.ggml.merges": []})
