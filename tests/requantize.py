"""Requantize a GGUF's weights to another type (test data: SmolLM2 Q8_0 from its Q4_1).

Dequantizes with our NumPy oracle and quantizes with gguf.quants; metadata and
norms (F32) are copied as they are.
"""

import numpy as np


def requantize(src, dst, type_name):
    import gguf
    from runtime.backend_numpy import dequantize
    from runtime.gguf import GGUFFile
    from runtime import ggml_types as T

    g = GGUFFile.open(src)
    target = gguf.GGMLQuantizationType[type_name]
    w = gguf.GGUFWriter(dst + ".tmp", g.architecture)
    skip = {"GGUF.version", "GGUF.tensor_count", "GGUF.kv_count", "general.architecture"}
    ref = gguf.GGUFReader(src)
    for name, field in ref.fields.items():
        if name in skip or name.startswith("GGUF."):
            continue
        vtype = field.types[0]
        value = field.contents()
        if vtype == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, value, vtype, sub_type=field.types[-1])
        else:
            w.add_key_value(name, value, vtype)
    for info in g.tensors.values():
        values = dequantize(g.tensor_bytes(info.name), info.type, info.n_elements)
        shape = tuple(reversed(info.shape))
        values = values.reshape(shape)
        if info.type == T.F32 or len(info.shape) == 1:
            w.add_tensor(info.name, values.astype(np.float32))
        else:
            w.add_tensor(info.name, gguf.quants.quantize(values, target), raw_dtype=target)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    import os
    os.replace(dst + ".tmp", dst)
    return dst
