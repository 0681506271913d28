"""The bytes in front of the ZIP: what makes a bundle executable.

portable: a POSIX sh script that finds python3 and runs BOOT on the bundle. Tiny, and
  runs on every architecture, but needs a python3 >= 3.9 on the machine.
native: a PyInstaller one-file executable for the build machine's architecture with
  its own Python inside; it runs the same BOOT on itself (sys.executable).

BOOT opens the bundle with zipfile (which reads ZIP64 on every Python we support) and
executes its __main__.py (bundler/bundle_main.py).
"""

import ast
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import sys
import tempfile

from runtime.errors import UserError

# The bootstrap, in double quotes only so the shell header can single-quote it.
# `path` is the bundle's path. '' (the current directory) leaves sys.path first, so a
# stray zipfile.py or runtime/ where the user stands cannot shadow ours.
BOOT = """import sys
sys.path = [d for d in sys.path if d]
import zipfile
path = {path}
try:
    z = zipfile.ZipFile(path)
    main = z.read("__main__.py")
except Exception as e:
    sys.exit("error: cannot read the bundle %s (%s); download or build it again" % (path, e))
exec(compile(main, path + "/__main__.py", "exec"), {{"__name__": "__main__", "__archive__": path, "__zip__": z}})
"""

PORTABLE_TEMPLATE = """#!/bin/sh
# llamazip bundle: this shell header, then a ZIP archive (see `unzip -l`).
# It runs the model with Python 3.9 or newer; set LLAMAZIP_PYTHON to choose one.
for py in "${{LLAMAZIP_PYTHON:-python3}}" python3 python3.13 python3.12 python3.11 python3.10 python3.9; do
    if command -v "$py" >/dev/null 2>&1; then
        exec "$py" -c '{boot}' "$0" "$@"
    fi
done
echo "$0: needs Python 3.9 or newer (python3 on PATH); install python3, or get the native build" >&2
exit 127
"""


def portable():
    """(launcher bytes, pad byte) of the sh header; newlines pad it harmlessly."""
    boot = BOOT.format(path="sys.argv.pop(1)\nsys.argv[0] = path")
    assert "'" not in boot
    return PORTABLE_TEMPLATE.format(boot=boot).encode("ascii"), b"\n"


# --- native: PyInstaller -------------------------------------------------------------

_COOKIE_MAGIC = b"MEI\014\013\012\013\016"
_COOKIE = struct.Struct("!8sIIII64s")  # PyInstaller's CArchive cookie (88 bytes)


def _imported_modules(paths):
    """Top-level modules imported anywhere in the given .py files (static scan)."""
    names = set()
    for path in paths:
        with open(path, "rb") as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module)
    return names


def stdlib_imports(py_files):
    """The standard-library modules the bundled code imports: PyInstaller cannot see
    them (the code is loaded from the ZIP at run time), so we name them."""
    stdlib = sys.stdlib_module_names
    wanted = {"zipfile", "zlib", "importlib.util", "json", "hashlib", "ctypes", "mmap"}
    for name in _imported_modules(py_files):
        if name.split(".")[0] in stdlib:
            wanted.add(name)
    # Never needed at run time, and large: keep them out.
    return sorted(n for n in wanted if n.split(".")[0] not in ("tkinter", "idlelib", "test"))


def native(py_files, cache_dir):
    """(launcher bytes, pad byte): a PyInstaller one-file launcher, cached by its inputs."""
    try:
        import PyInstaller
    except ImportError:
        raise UserError("--launcher native needs PyInstaller; install it with "
                        "`pip install pyinstaller` (or pip install '.[native]')") from None
    hidden = stdlib_imports(py_files)
    entry = BOOT.format(path="sys.executable")
    key = hashlib.sha256("\n".join([entry, PyInstaller.__version__, sys.version,
                                    platform.machine()] + hidden).encode()).hexdigest()[:16]
    cached = os.path.join(cache_dir, "launchers", f"native-{platform.machine()}-{key}")
    if not os.path.exists(cached):
        _run_pyinstaller(entry, hidden, cached)
    with open(cached, "rb") as f:
        exe = f.read()
    return exe, b"\0"


def _run_pyinstaller(entry, hidden, out):
    work = tempfile.mkdtemp(prefix="llamazip-pyinstaller-")
    try:
        script = os.path.join(work, "llamazip_native.py")
        with open(script, "w") as f:
            f.write('"""llamazip native launcher: runs the bundle appended to this file."""\n')
            f.write(entry)
        cmd = [sys.executable, "-m", "PyInstaller", "--onefile", "--noconfirm", "--log-level",
               "ERROR", "--name", "llamazip", "--distpath", os.path.join(work, "dist"),
               "--workpath", os.path.join(work, "build"), "--specpath", work]
        for name in hidden:
            cmd += ["--hidden-import", name]
        cmd.append(script)
        print(f"building the native launcher with PyInstaller ({len(hidden)} stdlib modules)",
              file=sys.stderr)
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = result.stdout.decode(errors="replace").strip().splitlines()[-1:]
            raise UserError(f"PyInstaller failed: {' '.join(tail)}; run it by hand to see why")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        tmp = out + ".tmp"
        shutil.copyfile(os.path.join(work, "dist", "llamazip"), tmp)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def native_cookie(exe, size_before):
    """PyInstaller's cookie rewritten to end a file of `size_before` bytes plus itself.

    The bootloader finds its archive by scanning backwards from the end of the file
    for the cookie, which would read the whole appended model at every start. We end
    the ZIP with a copy of the cookie (as the ZIP comment) whose length field is grown
    so that the archive start the bootloader derives (cookie end - length) stays
    where PyInstaller put it; the scan then stops at once. The field is 32-bit.
    """
    cookie_at = exe.rfind(_COOKIE_MAGIC)
    if cookie_at < 0 or cookie_at + _COOKIE.size > len(exe):
        raise UserError("the PyInstaller launcher has no cookie; PyInstaller's layout "
                        "changed, use --launcher portable")
    magic, length, toc_offset, toc_length, pyvers, pylib = _COOKIE.unpack_from(exe, cookie_at)
    archive_start = cookie_at + _COOKIE.size - length
    new_length = size_before + _COOKIE.size - archive_start
    if new_length > 0xFFFFFFFF:
        raise UserError("a native bundle must stay under 4 GiB (PyInstaller's 32-bit "
                        "archive length); use --launcher portable for this model")
    return _COOKIE.pack(magic, new_length, toc_offset, toc_length, pyvers, pylib)
