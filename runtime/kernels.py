"""Pick, find and load the C kernel library for this CPU (stdlib only).

Variants, best last, per architecture (kernels/build.py builds them all):
    x86_64   generic (portable C), avx2 (+FMA, F16C), avx512 (+BW, VL, VNNI)
    aarch64  neon (baseline Armv8), dotprod (+dot product, fp16), i8mm (+int8 matrix multiply)
    riscv64  rv64gc, rvv (RVV 1.0, vector-length agnostic)

Choice: `detect_features()` reads the CPU's features (x86: /proc/cpuinfo flags;
aarch64 and riscv64: getauxval(AT_HWCAP, AT_HWCAP2) through ctypes, /proc/cpuinfo as a fallback),
`choose_variant(arch, features)` takes the best variant they allow; the environment
variable LLAMAZIP_KERNEL=<variant> overrides it. `describe()` says what was chosen,
for --info.

Where the library bytes come from (`library_bytes(arch, variant)`):
  - inside a bundle, the runtime package is imported from a ZIP (its `__loader__` is
    a zipimport.zipimporter): the kernels are members `kernels/<arch>/<variant>.so`
    of that same archive, read with the loader's get_data;
  - in the development tree: `kernels/build/<arch>/<variant>.so` next to `runtime/`,
    made by `python kernels/build.py` (we never build on demand: a missing library is
    an error that names that command).

How it is loaded (`load()`): a library that is a plain file in the development tree
is opened in place. Bytes from a bundle go into an anonymous memory file
(os.memfd_create) opened as /proc/self/fd/N, so nothing is written to disk; where
that is unavailable they are written once to a per-user cache,
~/.cache/llamazip/<version>/kernels/<arch>/ (0700; a new O_EXCL|O_NOFOLLOW temporary
file, then rename), checked against the library's SHA-256 at every load.
"""

import ctypes
import hashlib
import os
import platform
import secrets
import shutil
import stat
import tempfile

from runtime import __version__
from runtime.errors import UserError

VARIANTS = {
    "x86_64": ("generic", "avx2", "avx512"),
    "aarch64": ("neon", "dotprod", "i8mm"),
    "riscv64": ("rv64gc", "rvv"),
}

# Features each variant needs, in the names /proc/cpuinfo uses.
REQUIRES = {
    ("x86_64", "generic"): set(),
    ("x86_64", "avx2"): {"avx2", "fma", "f16c"},
    ("x86_64", "avx512"): {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
                           "avx512_vnni"},
    ("aarch64", "neon"): set(),
    ("aarch64", "dotprod"): {"asimddp", "asimdhp"},
    ("aarch64", "i8mm"): {"asimddp", "asimdhp", "i8mm"},
    ("riscv64", "rv64gc"): set(),
    ("riscv64", "rvv"): {"v"},
}

ABI_VERSION = 3

_AT_HWCAP = 16
_AT_HWCAP2 = 26
# aarch64 AT_HWCAP and AT_HWCAP2 bits (Linux arch/arm64/include/uapi/asm/hwcap.h)
_ARM_HWCAP = {"fp": 0, "asimd": 1, "fphp": 9, "asimdhp": 10, "asimddp": 20, "sve": 22}
_ARM_HWCAP2 = {"i8mm": 13}


def machine_arch():
    """Our name for the running architecture, or the raw machine name if unknown."""
    m = platform.machine().lower()
    return {"amd64": "x86_64", "x86_64": "x86_64", "arm64": "aarch64",
            "aarch64": "aarch64", "riscv64": "riscv64"}.get(m, m)


def _cpuinfo():
    try:
        with open("/proc/cpuinfo", "r", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _getauxval(kind):
    try:
        libc = ctypes.CDLL(None)
        fn = libc.getauxval
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_ulong
    fn.argtypes = [ctypes.c_ulong]
    return fn(kind)


def detect_features(arch=None, cpuinfo=None, hwcap=None, hwcap2=None):
    """The CPU features relevant to our variants, as a set of lowercase names.

    `cpuinfo` (the text of /proc/cpuinfo), `hwcap` and `hwcap2` (the AT_HWCAP and
    AT_HWCAP2 words) default to this machine's; tests pass others.
    """
    arch = arch or machine_arch()
    features = set()
    info = _cpuinfo() if cpuinfo is None else cpuinfo
    if hwcap is None and cpuinfo is None and arch in ("aarch64", "riscv64"):
        hwcap = _getauxval(_AT_HWCAP)
        if arch == "aarch64":
            hwcap2 = _getauxval(_AT_HWCAP2)
    if arch == "x86_64":
        for line in info.splitlines():
            if line.startswith("flags"):
                features.update(line.split(":", 1)[1].split())
                break
    elif arch == "aarch64":
        if hwcap:
            features.update(name for name, bit in _ARM_HWCAP.items() if hwcap >> bit & 1)
            features.update(name for name, bit in _ARM_HWCAP2.items() if (hwcap2 or 0) >> bit & 1)
        else:
            for line in info.splitlines():
                if line.startswith("Features"):
                    features.update(line.split(":", 1)[1].split())
                    break
    elif arch == "riscv64":
        if hwcap:
            # single-letter extensions: bit (letter - 'a')
            features.update(chr(ord("a") + i) for i in range(26) if hwcap >> i & 1)
        else:
            for line in info.splitlines():
                if line.startswith("isa"):
                    isa = line.split(":", 1)[1].strip().lower()
                    base = isa.split("_")[0]
                    if base.startswith("rv64"):
                        features.update(base[4:])
                    break
    return features


def choose_variant(arch, features, override=None):
    """The best variant of `arch` that `features` allow, or `override` if given."""
    if arch not in VARIANTS:
        raise UserError(f"no C kernels for the {arch} architecture (they exist for "
                        f"{', '.join(VARIANTS)}); use --backend numpy")
    if override:
        if override not in VARIANTS[arch]:
            raise UserError(f"LLAMAZIP_KERNEL={override} is not a {arch} kernel variant; "
                            f"choose one of {', '.join(VARIANTS[arch])}")
        return override
    best = VARIANTS[arch][0]
    for variant in VARIANTS[arch]:
        if REQUIRES[(arch, variant)] <= set(features):
            best = variant
    return best


def fallbacks(arch, variant):
    """`variant` and then every lesser variant of `arch`, best first."""
    order = VARIANTS[arch]
    return list(reversed(order[:order.index(variant) + 1]))


# ---------------------------------------------------------------- library bytes

def _dev_root():
    return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _zip_loader():
    """The zipimporter that loaded this package, when running from a bundle."""
    loader = globals().get("__loader__")
    try:
        import zipimport
    except ImportError:
        return None
    return loader if isinstance(loader, zipimport.zipimporter) else None


def dev_library_path(arch, variant):
    return os.path.join(_dev_root(), "kernels", "build", arch, f"{variant}.so")


def library_bytes(arch, variant):
    """The bytes of kernels/<arch>/<variant>.so, from the bundle or the dev tree.

    Returns (data, None) from a bundle, or (None, path) in the dev tree, where the
    file is opened in place and never read here. Raises FileNotFoundError naming
    what is missing.
    """
    loader = _zip_loader()
    if loader is not None:
        member = f"kernels/{arch}/{variant}.so"
        try:
            return loader.get_data(os.path.join(loader.archive, member)), None
        except OSError as e:   # missing (a lesser variant may do), or damaged (stop)
            if "damaged" in str(e):
                raise UserError(f"{e}; run the bundle with --verify, then download or "
                                "build it again") from None
            raise FileNotFoundError(f"the bundle has no {member}") from None
    path = dev_library_path(arch, variant)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{os.path.relpath(path, _dev_root())} is missing; "
                                "build the kernels with `python kernels/build.py`")
    return None, path


def _open_bytes(data, arch, variant):
    """dlopen a library held in memory: memfd first, else a cached file on disk."""
    if hasattr(os, "memfd_create") and os.path.isdir("/proc/self/fd"):
        try:
            fd = os.memfd_create(f"llamazip-{variant}", getattr(os, "MFD_CLOEXEC", 1))
        except OSError:
            fd = None
        if fd is not None:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                return ctypes.CDLL(f"/proc/self/fd/{fd}"), "memfd"
            except OSError:
                pass
            finally:
                os.close(fd)  # the loaded mapping keeps the file alive
    return _open_cached(data, arch, variant)


def cache_folder(arch):
    """This user's kernel cache for `arch`: LLAMAZIP_CACHE or ~/.cache/llamazip, then
    <version>/kernels/<arch>, every level we create made 0700."""
    root = os.environ.get("LLAMAZIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "llamazip")
    return os.path.join(root, __version__, "kernels", arch)


def _private_folder(folder):
    """Make `folder` (mode 0700) and check that it is a real directory of ours that no
    one else can write: only then may a library in it be trusted between our write
    and our load. Returns whether it is."""
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        st = os.lstat(folder)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return False
    if st.st_mode & 0o077:
        try:
            os.chmod(folder, 0o700)
        except OSError:
            return False
    return True


def _read_verified(path, digest):
    """An fd open on `path` (not through a symlink) whose bytes hash to `digest`, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    h = hashlib.sha256()
    try:
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
    except OSError:
        os.close(fd)
        return None
    if h.hexdigest() != digest:
        os.close(fd)
        return None
    return fd


def _write_atomic(folder, name, data):
    """Write `data` to folder/name: a new temporary file (O_EXCL, O_NOFOLLOW, 0600, so
    nothing planted under its name is followed or reused), then a rename over name."""
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.replace(tmp, os.path.join(folder, name))


def _open_cached(data, arch, variant):
    """dlopen `data` through the per-user disk cache (where memfd is unavailable).

    The cached file is named by the library's hash and checked against the full hash
    on every load (anything else under that name is replaced); the library loaded is
    the very file that was checked (through /proc/self/fd where there is one).
    """
    digest = hashlib.sha256(data).hexdigest()
    folder = cache_folder(arch)
    ephemeral = not _private_folder(folder)
    if ephemeral:
        # not ours or not private: a fresh private folder, removed once loaded
        folder = tempfile.mkdtemp(prefix="llamazip-kernels-")
    name = f"{variant}-{digest[:16]}.so"
    path = os.path.join(folder, name)
    fd = _read_verified(path, digest)
    if fd is None:
        _write_atomic(folder, name, data)
        fd = _read_verified(path, digest)
        if fd is None:
            raise UserError(f"the kernel cache {folder} changed while writing {name}; "
                            "remove it and run again")
    try:
        proc_path = f"/proc/self/fd/{fd}"
        lib = ctypes.CDLL(proc_path if os.path.exists(proc_path) else path)
    finally:
        os.close(fd)
        if ephemeral:
            shutil.rmtree(folder, ignore_errors=True)   # the loaded map outlives the file
    return lib, path


# ---------------------------------------------------------------- the ABI

_P = ctypes.c_void_p
_I64 = ctypes.c_int64
_F = ctypes.c_float
_INT = ctypes.c_int

SIGNATURES = {
    "lz_abi_version": (_INT, []),
    "lz_variant": (ctypes.c_char_p, []),
    "lz_set_threads": (None, [_INT]),
    "lz_get_threads": (_INT, []),
    "lz_type_supported": (_INT, [_INT]),
    "lz_block_geometry": (_INT, [_INT, _P, _P]),
    "lz_matmul": (_INT, [_INT, _P, _I64, _I64, _P, _I64, _I64, _P, _I64]),
    "lz_dequantize": (None, [_INT, _P, _P, _I64]),
    "lz_quantize_act": (_INT, [_INT, _P, _P, _I64]),
    "lz_embed": (None, [_INT, _P, _I64, _P, _I64, _P]),
    "lz_rmsnorm": (None, [_P, _P, _I64, _P, _I64, _F]),
    "lz_add": (None, [_P, _P, _I64]),
    "lz_add_bias": (None, [_P, _I64, _I64, _P]),
    "lz_scale": (None, [_P, _I64, _F]),
    "lz_swiglu": (None, [_P, _P, _P, _I64]),
    "lz_geglu": (None, [_P, _P, _P, _I64]),
    "lz_topk": (_I64, [_P, _I64, _I64, _P, _P]),
    "lz_logprob": (ctypes.c_double, [_P, _I64, _I64]),
    "lz_rope": (None, [_P, _I64, _I64, _INT, _INT, _INT, _INT, _P]),
    "lz_rope_table_at": (None, [_P, _P, _I64, _P, _INT]),
    "lz_attention_rows": (_INT, [_P, _I64, _P, _P, _I64, _P, _P, _I64, _P, _I64, _INT, _INT,
                                 _INT, _F, _I64, _P, _I64]),
    "lz_stream_read": (ctypes.c_uint64, [_P, _I64]),
}


class Kernels:
    """A loaded kernel library: `lib` (ctypes, signatures set), `arch`, `variant`, `source`."""

    def __init__(self, lib, arch, variant, source, chosen_by):
        self.lib = lib
        self.arch = arch
        self.variant = variant
        self.source = source
        self.chosen_by = chosen_by
        for name, (res, args) in SIGNATURES.items():
            fn = getattr(lib, name)
            fn.restype = res
            fn.argtypes = args
        if lib.lz_abi_version() != ABI_VERSION:
            raise UserError(f"kernel library {variant} has ABI {lib.lz_abi_version()}, "
                            f"the runtime wants {ABI_VERSION}; rebuild with "
                            "`python kernels/build.py`")


def load_variant(arch, variant, chosen_by="explicit"):
    data, path = library_bytes(arch, variant)
    if path is not None:
        lib, source = ctypes.CDLL(path), path
    else:
        lib, source = _open_bytes(data, arch, variant)
    return Kernels(lib, arch, variant, source, chosen_by)


_loaded = None


def load():
    """The kernel library for this machine (loaded once per process)."""
    global _loaded
    if _loaded is not None:
        return _loaded
    arch = machine_arch()
    override = os.environ.get("LLAMAZIP_KERNEL") or None
    variant = choose_variant(arch, detect_features(arch), override)
    chosen_by = "LLAMAZIP_KERNEL" if override else "cpu features"
    missing = []
    for candidate in fallbacks(arch, variant) if not override else [variant]:
        try:
            _loaded = load_variant(arch, candidate, chosen_by)
            return _loaded
        except FileNotFoundError as e:
            missing.append(str(e))
    raise UserError("no kernel library: " + "; ".join(missing))


def describe():
    """One line for --info: which library runs, why, and from where."""
    k = load()
    return (f"{k.variant} ({k.arch}, chosen by {k.chosen_by}, "
            f"{k.lib.lz_get_threads()} thread(s), from {k.source})")
