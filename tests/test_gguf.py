"""The GGUF reader against gguf's own reader and writer, and on damaged files."""

import os
import struct

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")

from runtime import ggml_types as T  # noqa: E402
from runtime.errors import UserError  # noqa: E402
from runtime.gguf import GGUFFile  # noqa: E402
from tests.models import smollm2  # noqa: E402


def _write_all_types(path):
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 200)
    w.add_int8("t.i8", -100)
    w.add_uint16("t.u16", 60000)
    w.add_int16("t.i16", -30000)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -2_000_000_000)
    w.add_float32("t.f32", 1.5)
    w.add_uint64("t.u64", 2**63 + 5)
    w.add_int64("t.i64", -(2**62))
    w.add_float64("t.f64", 3.141592653589793)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo ✓")
    w.add_array("t.arr_i32", [1, -2, 3])
    w.add_array("t.arr_str", ["a", "", "ünï"])
    w.add_array("t.nested", [[1, 2], [3, 4, 5]])
    w.add_array("t.arr_f32", [0.5, -0.25])
    w.add_tensor("a", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("b", np.ones((3, 64), dtype=np.float16))
    w.add_tensor("c", gguf.quants.quantize(np.linspace(-1, 1, 256, dtype=np.float32).reshape(4, 64),
                                           gguf.GGMLQuantizationType.Q8_0),
                 raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture
def all_types(tmp_path):
    return _write_all_types(str(tmp_path / "all.gguf"))


def test_every_metadata_type(all_types):
    g = GGUFFile.open(all_types)
    m = g.metadata
    assert g.version == 3
    assert (m["t.u8"], m["t.i8"], m["t.u16"], m["t.i16"]) == (200, -100, 60000, -30000)
    assert (m["t.u32"], m["t.i32"]) == (4_000_000_000, -2_000_000_000)
    assert m["t.f32"] == 1.5 and m["t.f64"] == 3.141592653589793
    assert (m["t.u64"], m["t.i64"]) == (2**63 + 5, -(2**62))
    assert m["t.bool"] is True
    assert m["t.str"] == "héllo ✓"
    assert m["t.arr_i32"] == [1, -2, 3]
    assert m["t.arr_str"] == ["a", "", "ünï"]
    assert m["t.nested"] == [[1, 2], [3, 4, 5]]
    assert m["t.arr_f32"] == [0.5, -0.25]
    assert m["general.architecture"] == "llama"


def test_tensors_match_gguf_reader_and_are_views(all_types):
    g = GGUFFile.open(all_types)
    ref = gguf.GGUFReader(all_types)
    assert [t.name for t in ref.tensors] == list(g.tensors)
    for t in ref.tensors:
        info = g.tensors[t.name]
        assert list(info.shape) == [int(x) for x in t.shape]
        assert info.type == int(t.tensor_type)
        assert bytes(g.tensor_bytes(t.name)) == t.data.tobytes()
        # zero copy: the view's bytes are the map's bytes at the tensor's address
        view = g.tensor_bytes(t.name)
        assert view.obj is g.buf.obj
        raw = (np.ctypeslib.as_array((__import__("ctypes").c_ubyte * info.nbytes)
                                     .from_address(g.tensor_addr(t.name))))
        assert raw.tobytes() == t.data.tobytes()


def test_version_2_and_region_inside_a_larger_file(all_types, tmp_path):
    data = bytearray(open(all_types, "rb").read())
    struct.pack_into("<I", data, 4, 2)  # v2 has the same little-endian layout as v3
    prefix = b"\x7fjunk" * 13107 + b"xyz"  # not page aligned on purpose
    big = tmp_path / "big.bin"
    big.write_bytes(prefix + bytes(data) + b"trailing")
    g = GGUFFile.open(str(big), offset=len(prefix), length=len(data))
    assert g.version == 2
    assert g.metadata["t.nested"] == [[1, 2], [3, 4, 5]]
    ref = GGUFFile.open(all_types)
    for name in ref.tensors:
        assert bytes(g.tensor_bytes(name)) == bytes(ref.tensor_bytes(name))


def test_real_model_tensor_table():
    path = smollm2()
    g = GGUFFile.open(path)
    ref = gguf.GGUFReader(path)
    assert len(g.tensors) == len(ref.tensors) == 272
    g.check_tensors()
    for t in ref.tensors[:20]:
        assert bytes(g.tensor_bytes(t.name)) == t.data.tobytes()
    assert len(g.metadata["tokenizer.ggml.tokens"]) == 49152
    assert g.arch_key("block_count") == 30


def _expect_error(fn, *words):
    with pytest.raises(UserError) as e:
        fn()
    msg = str(e.value)
    assert "\n" not in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_damaged_files(all_types, tmp_path):
    data = open(all_types, "rb").read()
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "nope.gguf")), "not found")
    (tmp_path / "text.gguf").write_bytes(b"hello, not a model")
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "text.gguf")), "not a GGUF")
    (tmp_path / "empty.gguf").write_bytes(b"")
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "empty.gguf")), "empty")
    (tmp_path / "trunc.gguf").write_bytes(data[:200])
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "trunc.gguf")), "truncated")
    # tensors cut off: the header parses, the data does not fit
    (tmp_path / "short.gguf").write_bytes(data[:-100])
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "short.gguf")), "truncated", "'c'")
    bad_version = bytearray(data)
    struct.pack_into("<I", bad_version, 4, 9)
    (tmp_path / "v9.gguf").write_bytes(bytes(bad_version))
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "v9.gguf")), "version 9")


def test_unknown_metadata_type(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "u.gguf"), "llama")
    w.add_uint32("zz.key", 7)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    data = bytearray((tmp_path / "u.gguf").read_bytes())
    key = b"zz.key"
    at = data.index(key) + len(key)
    assert struct.unpack_from("<I", data, at)[0] == 4  # UINT32
    struct.pack_into("<I", data, at, 99)
    (tmp_path / "u.gguf").write_bytes(bytes(data))
    _expect_error(lambda: GGUFFile.open(str(tmp_path / "u.gguf")), "zz.key", "unknown value type 99")


def test_unsupported_tensor_type(tmp_path):
    w = gguf.GGUFWriter(str(tmp_path / "iq.gguf"), "llama")
    w.add_tensor("x", np.zeros((1, 18), np.uint8), raw_dtype=gguf.GGMLQuantizationType.IQ4_NL)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    g = GGUFFile.open(str(tmp_path / "iq.gguf"))
    msg = _expect_error(g.check_tensors, "IQ4_NL", "not support")
    assert "Q4_K" in msg  # names what is supported


def test_type_table_matches_gguf():
    for type_id, (name, block, size) in T.TYPES.items():
        qt = gguf.GGMLQuantizationType[name]
        assert int(qt) == type_id
        assert gguf.GGML_QUANT_SIZES[qt] == (block, size)
    assert os.path.exists(smollm2())
