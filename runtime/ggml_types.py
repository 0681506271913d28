"""GGML tensor types: ids as stored in GGUF, and their block geometry.

A quantized row is a sequence of blocks; each block packs `block_size` weights
into `type_size` bytes. Block layouts are documented in the kernels (kernels/quants.h)
and in the NumPy oracle (runtime/backend_numpy.py).
"""

F32, F16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 = 0, 1, 2, 3, 6, 7, 8, 9
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K = 10, 11, 12, 13, 14, 15
BF16 = 30

# type id -> (name, weights per block, bytes per block)
TYPES = {
    F32: ("F32", 1, 4),
    F16: ("F16", 1, 2),
    BF16: ("BF16", 1, 2),
    Q4_0: ("Q4_0", 32, 18),
    Q4_1: ("Q4_1", 32, 20),
    Q5_0: ("Q5_0", 32, 22),
    Q5_1: ("Q5_1", 32, 24),
    Q8_0: ("Q8_0", 32, 34),
    Q2_K: ("Q2_K", 256, 84),
    Q3_K: ("Q3_K", 256, 110),
    Q4_K: ("Q4_K", 256, 144),
    Q5_K: ("Q5_K", 256, 176),
    Q6_K: ("Q6_K", 256, 210),
}

# Types we know the geometry of but cannot compute with (named in error messages).
_OTHER_NAMES = {
    Q8_1: "Q8_1", Q8_K: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S",
    20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32",
    27: "I64", 28: "F64", 29: "IQ1_M", 34: "TQ1_0", 35: "TQ2_0", 39: "MXFP4",
}


def type_name(type_id):
    if type_id in TYPES:
        return TYPES[type_id][0]
    return _OTHER_NAMES.get(type_id, f"type {type_id}")


def supported_names():
    return ", ".join(name for name, _, _ in TYPES.values())


def row_bytes(type_id, n):
    """Bytes taken by a row of n weights of this type (n a multiple of the block)."""
    _, block, size = TYPES[type_id]
    return n // block * size
