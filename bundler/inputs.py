"""The model to bundle: find its GGUF bytes and check them with the runtime's own reader.

Three kinds of input:
  x.gguf       the model itself;
  x.zip        a ZIP holding exactly one .gguf. A stored member is used in place; a
               compressed one (deflate, or Deflate64 through zipfile-deflate64) is
               streamed to a temporary file first, never loaded whole;
  x.llamafile  an existing bundle (ours or llamafile's): its model is re-bundled.
Everything is checked before the output is touched.
"""

import os
import zipfile

from runtime.errors import UserError

_DEFLATE64 = 9
_GGUF_MAGIC = b"GGUF"


class ModelSource:
    """The GGUF bytes: `length` bytes of `path` from `offset`; `name` is its file name."""

    def __init__(self, path, offset, length, name, temp_path=None):
        self.path = path
        self.offset = offset
        self.length = length
        self.name = name
        self.temp_path = temp_path  # a decompressed copy we made and must delete

    def open(self):
        f = open(self.path, "rb")
        f.seek(self.offset)
        return f

    def cleanup(self):
        if self.temp_path and os.path.exists(self.temp_path):
            os.unlink(self.temp_path)


def _member_name(name):
    """A safe top-level member name for the model, from its original file name."""
    base = os.path.basename(name.replace("\\", "/"))
    safe = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_" for c in base)
    return safe if safe.lower().endswith(".gguf") and len(safe) > 5 else "model.gguf"


def resolve(path, temp_dir):
    """ModelSource for a .gguf, a .zip holding one, or a bundle."""
    if not os.path.exists(path):
        raise UserError(f"model not found: {path}; check the --model path")
    if os.path.isdir(path):
        raise UserError(f"{path} is a directory; pass a .gguf, .zip or .llamafile file")
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    size = os.path.getsize(path)
    if magic == _GGUF_MAGIC:
        return ModelSource(path, 0, size, _member_name(path))
    if zipfile.is_zipfile(path):
        return _from_zip(path, temp_dir)
    raise UserError(f"{path} is not a GGUF model (no GGUF magic) nor a ZIP or llamafile "
                    "holding one; pass a .gguf file")


def _from_zip(path, temp_dir):
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise UserError(f"{path}: cannot read the ZIP ({e}); check the file") from None
    with zf:
        models = [i for i in zf.infolist() if i.filename.lower().endswith(".gguf")
                  and not i.is_dir()]
        if len(models) != 1:
            listed = ", ".join(i.filename for i in models[:4])
            raise UserError(f"{path} holds {len(models)} .gguf files{': ' + listed if listed else ''}; "
                            "it must hold exactly one")
        info = models[0]
        if info.compress_type == zipfile.ZIP_STORED:
            # Use the bytes in place, as the runtime would: offset from the local header.
            from runtime.archive import Bundle
            offset = Bundle(path, zf).data_offset(info.filename)
            return ModelSource(path, offset, info.file_size, _member_name(info.filename))
        if info.compress_type == _DEFLATE64:
            try:
                import zipfile_deflate64  # noqa: F401  (teaches zipfile Deflate64)
            except ImportError:
                raise UserError(f"{path} is compressed with Deflate64; install "
                                "zipfile-deflate64 (pip install zipfile-deflate64) or "
                                "unzip it first") from None
        return _extract(zf, info, path, temp_dir)


def _extract(zf, info, path, temp_dir):
    """Stream a compressed member to a temporary file next to the output."""
    import tempfile
    fd, temp_path = tempfile.mkstemp(prefix=".llamazip-model-", suffix=".gguf", dir=temp_dir)
    try:
        with os.fdopen(fd, "wb") as out, zf.open(info) as src:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
    except NotImplementedError as e:
        os.unlink(temp_path)
        raise UserError(f"{path}: {info.filename} uses a compression zipfile cannot read "
                        f"({e}); unzip it first") from None
    except (zipfile.BadZipFile, EOFError, ValueError) as e:
        os.unlink(temp_path)
        raise UserError(f"{path}: {info.filename} is damaged ({e}); check the file") from None
    except BaseException:
        os.unlink(temp_path)
        raise
    return ModelSource(temp_path, 0, info.file_size, _member_name(info.filename), temp_path)


def validate(source):
    """Parse with the runtime's reader; check architecture, tensor types and extents.

    Returns the facts the manifest records about the model.
    """
    from runtime import ggml_types
    from runtime.gguf import GGUFFile
    from runtime.model import SUPPORTED_ARCHITECTURES
    from runtime.loader import check_model

    display = source.path if source.offset == 0 and not source.temp_path else \
        f"{source.path} ({source.name})"
    try:
        gguf = GGUFFile.open(source.path, source.offset, source.length)
    except UserError as e:
        raise UserError(str(e).replace(source.path, display, 1)) from None
    gguf.source = display
    arch = gguf.architecture
    if arch not in SUPPORTED_ARCHITECTURES:
        raise UserError(f"{display}: unsupported model architecture {arch!r}; llamazip runs: "
                        f"{', '.join(SUPPORTED_ARCHITECTURES)}")
    # the runtime's own checks, all of them: build.py refuses what a run would refuse
    config = check_model(gguf)
    types = {}
    n_params = 0
    for t in gguf.tensors.values():
        name = ggml_types.type_name(t.type)
        types[name] = types.get(name, 0) + 1
        n_params += t.n_elements
    return {
        "file": source.name,
        "size": source.length,
        "architecture": arch,
        "name": gguf.get("general.name"),
        "parameters": n_params,
        "tensor_types": dict(sorted(types.items())),
        "layers": config.n_layers,
        "embedding": config.dim,
        "context_length": config.n_ctx_train,
        "vocab_size": config.vocab_size,
        "tokenizer": gguf.get("tokenizer.ggml.model"),
    }, gguf
