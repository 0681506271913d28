"""A SentencePiece `tokenizer.model` rebuilt from a GGUF's SPM vocabulary: the
oracle for the runtime's SPM tokenizer (sentencepiece must give the same ids).
The file is SentencePiece's protobuf ModelProto, written by hand (no protobuf
dependency):

  ModelProto      1: pieces (repeated SentencePiece)  2: trainer_spec  3: normalizer_spec
  SentencePiece   1: piece (string)  2: score (float)  3: type (NORMAL=1 UNKNOWN=2
                  CONTROL=3 USER_DEFINED=4 UNUSED=5 BYTE=6 -- GGUF's token_type values)
  TrainerSpec     3: model_type (BPE=2)  4: vocab_size  35: byte_fallback
                  40: unk_id  41: bos_id  42: eos_id  43: pad_id
  NormalizerSpec  1: name  3: add_dummy_prefix  4: remove_extra_whitespaces
                  5: escape_whitespaces

llama.cpp's SPM tokenizer does no Unicode normalization and keeps runs of spaces, so
the normalizer is "identity" with remove_extra_whitespaces off; add_dummy_prefix
follows tokenizer.ggml.add_space_prefix.
"""

import struct

_VARINT, _FIXED32, _BYTES = 0, 5, 2
_BPE = 2
_NORMAL, _BYTE = 1, 6


def _varint(value):
    value &= (1 << 64) - 1  # negative int32s are written as 64-bit two's complement
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _key(field, wire_type):
    return _varint(field << 3 | wire_type)


def _int(field, value):
    return _key(field, _VARINT) + _varint(int(value))


def _float(field, value):
    return _key(field, _FIXED32) + struct.pack("<f", value)


def _bytes(field, data):
    return _key(field, _BYTES) + _varint(len(data)) + data


def _string(field, text):
    return _bytes(field, text.encode("utf-8", errors="surrogateescape"))


def is_spm(gguf):
    return gguf.get("tokenizer.ggml.model") == "llama" and gguf.get("tokenizer.ggml.tokens")


def model_proto(gguf):
    """The serialized ModelProto for the GGUF's vocabulary."""
    tokens = gguf.get("tokenizer.ggml.tokens")
    scores = gguf.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = gguf.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)
    out = bytearray()
    for piece, score, kind in zip(tokens, scores, types):
        out += _bytes(1, _string(1, piece) + _float(2, score) + _int(3, kind))

    def token_id(key, default):
        value = gguf.get(key)
        return default if value is None else int(value)

    trainer = (_int(3, _BPE) + _int(4, len(tokens))
               + _int(35, any(kind == _BYTE for kind in types))
               + _int(40, token_id("tokenizer.ggml.unknown_token_id", 0))
               + _int(41, token_id("tokenizer.ggml.bos_token_id", 1))
               + _int(42, token_id("tokenizer.ggml.eos_token_id", 2))
               + _int(43, token_id("tokenizer.ggml.padding_token_id", -1)))
    add_prefix = bool(gguf.get("tokenizer.ggml.add_space_prefix", True))
    normalizer = (_string(1, "identity") + _int(3, add_prefix) + _int(4, False)
                  + _int(5, True))
    out += _bytes(2, trainer)
    out += _bytes(3, normalizer)
    return bytes(out)
