"""Build a bundle: launcher + ZIP (model first, 64 KiB aligned; runtime; kernels;
jinja2; .args; manifest.json last).

Nothing is written until the model has passed the runtime's own checks, and the
output appears only when complete: we write a temporary file beside it and rename.
"""

import argparse
import errno
import hashlib
import importlib.util
import json
import os
import shlex
import subprocess
import sys
import tempfile

from bundler import inputs, launcher
from bundler.zipwriter import ZipWriter
from runtime import __version__ as RUNTIME_VERSION
from runtime.archive import ARGS_MEMBER, MANIFEST_MEMBER
from runtime.errors import UserError, exit_code_of

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARCHES = ("x86_64", "aarch64", "riscv64")
MODEL_ALIGN = 65536
MANIFEST_FORMAT = "llamazip-bundle/1"
# Pure-Python packages the runtime uses (jinja2 for chat templates); sources only, so
# markupsafe's optional C speedups stay out and its pure-Python fallback is used.
VENDORED = ("jinja2", "markupsafe")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="build.py", description="Bundle a GGUF model and the llamazip runtime into one "
        "executable file.")
    p.add_argument("--model", help="a .gguf, a .zip holding one, or a .llamafile to re-bundle "
                   "(default: the demo model SmolLM2-135M-Instruct)")
    p.add_argument("-o", "--output", help="output file (default: NAME.llamafile)")
    p.add_argument("--launcher", choices=("portable", "native"), default="portable",
                   help="portable: a sh header that uses the machine's python3 (default); "
                   "native: a PyInstaller executable with its own Python, for this "
                   "machine's architecture")
    p.add_argument("--arch", default=",".join(ARCHES),
                   help="kernel architectures to include (default: all three)")
    p.add_argument("--args", default=None,
                   help="default arguments, shell-quoted; '...' marks where the user's go "
                   "(default: none; for the demo model '--temp 0.8 --repeat-penalty 1.1 "
                   "--repeat-last-n 64')")
    p.add_argument("--name", help="bundle name (default: the model file's name)")
    return p.parse_args(argv)


# --- members -----------------------------------------------------------------------

def _read(path):
    with open(path, "rb") as f:
        return f.read()


def runtime_members():
    """The bundle's __main__.py and everything in runtime/ (code and its data files)."""
    return [("__main__.py", _read(os.path.join(REPO, "bundler", "bundle_main.py")))] + [
        (os.path.relpath(path, REPO).replace(os.sep, "/"), _read(path))
        for path in _package_files(os.path.join(REPO, "runtime"))]


def _package_files(root, suffix=""):
    """Files under root in a fixed order, without caches."""
    paths = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        paths += [os.path.join(folder, n) for n in sorted(files)
                  if n.endswith(suffix) and not n.endswith(".pyc")]
    return paths


def vendored_members():
    """The installed jinja2 and markupsafe sources (.py only) and their licenses."""
    import importlib.metadata
    members = []
    for package in VENDORED:
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise UserError(f"{package} is not installed; it is bundled for chat templates: "
                            f"pip install {package}")
        root = list(spec.submodule_search_locations)[0]
        for path in _package_files(root, ".py"):
            rel = os.path.relpath(path, os.path.dirname(root)).replace(os.sep, "/")
            members.append((rel, _read(path)))
        try:
            dist = importlib.metadata.distribution(package)
            for f in dist.files or []:
                if "license" in f.name.lower() and "dist-info" in str(f):
                    members.append((f"{package}/{f.name}", _read(str(f.locate()))))
        except importlib.metadata.PackageNotFoundError:
            pass
    return members


def kernel_members(arches):
    """kernels/<arch>/<variant>.so for each arch, built first if missing."""
    build_dir = os.path.join(REPO, "kernels", "build")

    def variants(arch):
        folder = os.path.join(build_dir, arch)
        if not os.path.isdir(folder):
            return []
        return sorted(n for n in os.listdir(folder) if n.endswith(".so"))

    missing = [a for a in arches if not variants(a)]
    build_script = os.path.join(REPO, "kernels", "build.py")
    if missing and os.path.exists(build_script):
        print(f"building kernels for {', '.join(missing)}", file=sys.stderr)
        subprocess.run([sys.executable, build_script] + missing, stdout=subprocess.DEVNULL)
    members, table = [], {}
    for arch in arches:
        names = variants(arch)
        if not names:
            print(f"warning: no kernels for {arch} (kernels/build/{arch}/ is empty); bundles "
                  f"will fall back to numpy there", file=sys.stderr)
        table[arch] = [n[:-3] for n in names]
        for name in names:
            members.append((f"kernels/{arch}/{name}", _read(os.path.join(build_dir, arch, name))))
    return members, table


def args_member(args_text):
    """.args: one argument per line, from a shell-quoted string."""
    if args_text is None:
        return None, []
    try:
        args = shlex.split(args_text)
    except ValueError as e:
        raise UserError(f"--args cannot be parsed ({e}); quote it as a shell would") from None
    if any("\n" in a for a in args):
        raise UserError("--args: an argument contains a newline; .args holds one per line")
    return ("\n".join(args) + "\n").encode("utf-8"), args


# --- output ------------------------------------------------------------------------

class Progress:
    """A progress bar on stderr while the model is copied, only when stderr is a tty."""

    def __init__(self, label, total):
        self.label, self.total = label, total
        self.active = sys.stderr.isatty() and total > 0
        self.shown = -1

    def __call__(self, done):
        if not self.active:
            return
        percent = done * 100 // self.total
        if percent != self.shown:
            self.shown = percent
            bar = "#" * (percent // 4)
            sys.stderr.write(f"\r{self.label} [{bar:<25}] {percent:3d}% "
                             f"{done / 2**20:.0f}/{self.total / 2**20:.0f} MiB")
            sys.stderr.flush()

    def finish(self):
        if self.active:
            sys.stderr.write("\n")


def _output_error(out, e):
    if e.errno == errno.ENOSPC:
        return UserError(f"no space left on the device while writing {out}; free some space "
                         "or choose another -o")
    reason = e.strerror or str(e)
    return UserError(f"cannot write {out}: {reason}; choose another -o")


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            chunk = f.read(1 << 20)
            if not chunk:
                return digest.hexdigest()
            digest.update(chunk)


def build(model=None, output=None, launcher_kind="portable", arches=ARCHES, args_text=None,
          name=None):
    """Build the bundle; returns the summary dict."""
    if model is None:
        from bundler.demo import DEMO_ARGS, demo_model
        model = demo_model()
        if args_text is None:
            args_text = DEMO_ARGS
    unknown = [a for a in arches if a not in ARCHES]
    if unknown or not arches:
        raise UserError(f"unknown --arch {','.join(unknown) or '(empty)'}; choose from "
                        f"{','.join(ARCHES)}")
    args_bytes, default_args = args_member(args_text)

    stem = name or os.path.basename(model)
    for suffix in (".gguf", ".zip", ".llamafile"):
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
    output = os.path.abspath(output or stem + ".llamafile")
    out_dir = os.path.dirname(output)
    if os.path.isdir(output):
        raise UserError(f"{output} is a directory; pass a file name with -o")
    if not os.path.isdir(out_dir):
        raise UserError(f"cannot write {output}: the folder {out_dir} does not exist; "
                        "create it or choose another -o")

    # The temporary output goes first: it proves the folder is writable before work.
    try:
        fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(output) + ".", suffix=".tmp",
                                   dir=out_dir)
    except OSError as e:
        raise _output_error(output, e) from None
    source = None
    try:
        source = inputs.resolve(model, out_dir)
        facts, gguf = inputs.validate(source)
        members = runtime_members() + vendored_members()
        kernels, kernel_table = kernel_members(arches)
        members += kernels
        gguf._region.close()
        if args_bytes is not None:
            members.append((ARGS_MEMBER, args_bytes))
        if launcher_kind == "native":
            from bundler.demo import CACHE
            prefix, pad = launcher.native(runtime_paths() + vendored_paths(), CACHE)
        else:
            prefix, pad = launcher.portable()

        with os.fdopen(fd, "wb") as f:
            fd = None
            writer = ZipWriter(f, prefix, pad)
            progress = Progress("copying model", source.length)
            with source.open() as src:
                model_entry = writer.add_stream(source.name, src, source.length,
                                                align=MODEL_ALIGN, progress=progress)
            progress.finish()
            for member_name, data in members:
                writer.add_bytes(member_name, data)
            manifest = {
                "format": MANIFEST_FORMAT,
                "tool": {"name": "llamazip", "version": RUNTIME_VERSION},
                "name": stem,
                "launcher": launcher_kind,
                "model": dict(facts, member=model_entry.name, sha256=model_entry.sha256,
                              data_offset=model_entry.data_offset),
                "arches": list(arches),
                "kernels": kernel_table,
                "args": default_args,
                "members": {e.name: e.sha256 for e in writer.entries},
            }
            text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
            writer.add_bytes(MANIFEST_MEMBER, text.encode("utf-8"))
            if launcher_kind == "native":
                writer.close(lambda size: launcher.native_cookie(prefix, size))
            else:
                writer.close()
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o755)
        os.replace(tmp, output)
        tmp = None
    except OSError as e:
        raise _output_error(output, e) from None
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if source is not None:
            source.cleanup()
    return {
        "output": output,
        "size": os.path.getsize(output),
        "sha256": sha256_file(output),
        "launcher": launcher_kind,
        "arches": list(arches),
        "kernels": kernel_table,
        "model": manifest["model"],
        "args": default_args,
    }


def runtime_paths():
    return [os.path.join(REPO, "bundler", "bundle_main.py")] + _package_files(
        os.path.join(REPO, "runtime"), ".py")


def vendored_paths():
    paths = []
    for package in VENDORED:
        spec = importlib.util.find_spec(package)
        if spec and spec.submodule_search_locations:
            paths += _package_files(list(spec.submodule_search_locations)[0], ".py")
    return paths


def _count(n):
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)


def print_summary(s):
    model = s["model"]
    kernels = "; ".join(f"{arch}: {', '.join(v) or 'none'}" for arch, v in s["kernels"].items())
    print(f"wrote {s['output']}")
    print(f"  size      {s['size']:,} bytes ({s['size'] / 2**20:.1f} MiB)")
    print(f"  sha256    {s['sha256']}")
    print(f"  model     {model['member']} ({model['architecture']}, "
          f"{_count(model['parameters'])} parameters, "
          f"{', '.join(model['tensor_types'])}; {model['size']:,} bytes at offset "
          f"{model['data_offset']})")
    print(f"  launcher  {s['launcher']}")
    print(f"  arches    {', '.join(s['arches'])}")
    print(f"  kernels   {kernels}")
    if s["args"]:
        print(f"  args      {shlex.join(s['args'])}")


def build_from_args(argv):
    a = parse_args(argv)
    arches = tuple(x.strip() for x in a.arch.split(",") if x.strip())
    return build(a.model, a.output, a.launcher, arches, a.args, a.name)


def main(argv=None):
    summary = exit_code_of(build_from_args, argv)
    if isinstance(summary, int):
        return summary
    try:
        print_summary(summary)
    except BrokenPipeError:  # `| head`: the bundle is written; nothing more to say
        sys.stdout = None
    return 0
