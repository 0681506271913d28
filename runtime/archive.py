"""The bundle seen from inside: a ZIP archive behind a launcher, holding the runtime,
the kernels, default arguments, a manifest and the GGUF model.

The model is a stored (uncompressed) member whose data starts on a 64 KiB boundary,
so it is mapped in place: we read the central directory (zipfile parses the end
records, ZIP64 included, from the end of the file) and the member's local header to
find where its data starts, and never read the model itself. Small members (.args,
manifest.json, kernels) are read whole.
"""

import struct
import zipfile

from runtime import bundle_verify
from runtime.errors import UserError

MODEL_SUFFIX = ".gguf"
ARGS_MEMBER = ".args"
MANIFEST_MEMBER = "manifest.json"
USER_ARGS_MARK = "..."  # in .args: where the user's arguments go (else they are appended)
MAX_ARGS_LINES = 4096   # .args is a handful of flags; a huge one is damage, not defaults
MAX_ARGS_BYTES = 1 << 20

_LOCAL_HEADER = struct.Struct("<IHHHHHIIIHH")
_LOCAL_SIGNATURE = 0x04034B50

_current = None  # the Bundle this process runs from, once run_bundle has opened it


def current():
    """The Bundle this process was started from, or None when running a bare GGUF."""
    return _current


class Bundle:
    """An open bundle: `path` and its ZIP directory (`zip_file`, a zipfile.ZipFile)."""

    def __init__(self, path, zip_file=None):
        self.path = path
        try:
            self.zip = zip_file if zip_file is not None else zipfile.ZipFile(path)
        except FileNotFoundError:
            raise UserError(f"bundle not found: {path}; check the path") from None
        except bundle_verify.READ_ERRORS as e:
            raise UserError(f"{path} is not a readable llamazip bundle ({e}); "
                            "download or build it again") from None
        self._infos = {info.filename: info for info in self.zip.infolist()}

    def names(self):
        return list(self._infos)

    def has(self, name):
        return name in self._infos

    def read(self, name):
        """The bytes of a small member (decompressed, CRC checked)."""
        if name not in self._infos:
            raise UserError(f"{self.path} has no member {name}; the bundle is incomplete, "
                            "build it again")
        try:
            return self.zip.read(name)
        except bundle_verify.READ_ERRORS as e:
            raise UserError(f"{self.path}: member {name} is damaged ({e}); "
                            "download or build the bundle again") from None

    def data_offset(self, name):
        """Absolute file offset of a stored member's first data byte, from its local header."""
        info = self._infos[name]
        with open(self.path, "rb") as f:
            f.seek(info.header_offset)
            raw = f.read(_LOCAL_HEADER.size)
        if len(raw) < _LOCAL_HEADER.size or _LOCAL_HEADER.unpack(raw)[0] != _LOCAL_SIGNATURE:
            raise UserError(f"{self.path}: the local header of {name} is damaged; "
                            "download or build the bundle again")
        fields = _LOCAL_HEADER.unpack(raw)
        name_len, extra_len = fields[9], fields[10]
        return info.header_offset + _LOCAL_HEADER.size + name_len + extra_len

    def model_name(self):
        models = [n for n in self._infos if n.endswith(MODEL_SUFFIX) and "/" not in n]
        if len(models) != 1:
            raise UserError(f"{self.path} holds {len(models)} .gguf models, not one; "
                            "build the bundle again")
        return models[0]

    def model_region(self):
        """(path, offset, length) of the GGUF data, for GGUFFile.open / FileRegion."""
        name = self.model_name()
        info = self._infos[name]
        if info.compress_type != zipfile.ZIP_STORED:
            raise UserError(f"{self.path}: the model member {name} is compressed, so it "
                            "cannot be mapped; build the bundle with build.py")
        return (self.path, self.data_offset(name), info.file_size)

    def default_args(self):
        """The arguments stored in .args, one per line (llamafile's convention)."""
        if not self.has(ARGS_MEMBER):
            return []
        if self._infos[ARGS_MEMBER].file_size > MAX_ARGS_BYTES:
            raise UserError(f"{self.path}: {ARGS_MEMBER} is over {MAX_ARGS_BYTES} bytes; "
                            "build the bundle again with fewer default arguments")
        try:
            text = self.read(ARGS_MEMBER).decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"{self.path}: {ARGS_MEMBER} is not UTF-8 text (byte {e.start}); "
                            "build the bundle again") from None
        lines = text.split("\n")
        if len(lines) > MAX_ARGS_LINES + 1:
            raise UserError(f"{self.path}: {ARGS_MEMBER} has {len(lines)} lines, more than "
                            f"{MAX_ARGS_LINES}; build the bundle again with fewer default "
                            "arguments")
        if lines and lines[-1] == "":
            lines.pop()
        return lines

    def manifest(self):
        """manifest.json as a dict (checked to hold a members table), or None if absent."""
        if not self.has(MANIFEST_MEMBER):
            return None
        try:
            return bundle_verify.read_manifest(self.zip, self.path)
        except bundle_verify.BundleDamaged as e:
            raise UserError(str(e)) from None

    def verify(self):
        """[(member, problem)] for every member that is damaged, missing or unlisted."""
        if self.manifest() is None:
            return [(MANIFEST_MEMBER, "missing")]
        return bundle_verify.problems(self.path, self.zip)[0]


def merge_args(default_args, user_args):
    """llamafile semantics: user arguments replace the `...` line, or follow the defaults."""
    if USER_ARGS_MARK in default_args:
        i = default_args.index(USER_ARGS_MARK)
        return default_args[:i] + list(user_args) + default_args[i + 1:]
    return list(default_args) + list(user_args)


def verify_bundle(path):
    """--verify: check every member against the manifest; one line per damaged member."""
    if not path:
        raise UserError("--verify checks a bundle; run it as ./MODEL.llamafile --verify")
    return bundle_verify.verify(path)


def open_current(path, argv, zip_file=None):
    """Open the bundle this process runs from (for current()); returns the arguments
    to run with (its .args merged with `argv`) and the model's region."""
    global _current
    bundle = Bundle(path, zip_file)
    _current = bundle
    return merge_args(bundle.default_args(), argv), bundle.model_region()
