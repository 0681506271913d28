"""llama.cpp's own test material, from the llama-cpp-python sdist on PyPI.

The tests check our grammar engine against llama.cpp's grammars/*.gbnf and our
tool-call parsers against the chat templates of models/templates/. Both ship in the
llama-cpp-python sdist (vendor/llama.cpp/...). `python -m tests.llama_cpp_sdist`
(scripts/setup-tests.sh runs it) fetches the sdist with pip (no build, no
dependencies) into ~/.cache/llamazip/wheels and unpacks only those folders into
~/.cache/llamazip/llama.cpp-0.3.36/.

Where the folders come from when a test asks (first found wins):
  LLAMA_CPP_DIR        a llama.cpp checkout (its grammars/, models/templates/)
  the cache            what `python -m tests.llama_cpp_sdist` unpacked
  ../peer/...          the lead's unpacked sdist beside the checkout
Absent everywhere: the test skips with the command that fetches it, except under CI
(CI=true), where it fails: a skipped check must not pass for a passed one there.
"""

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

from bundler.demo import CACHE

VERSION = "0.3.36"
SDIST = f"llama_cpp_python-{VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
INSIDE = f"llama_cpp_python-{VERSION}/vendor/llama.cpp/"
WANTED = ("grammars/", "models/templates/", "tests/test-chat.cpp")
UNPACKED = os.path.join(CACHE, f"llama.cpp-{VERSION}")
PEER = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                     "peer", f"llama_cpp_python-{VERSION}", "vendor",
                                     "llama.cpp"))
HOW = "run `python -m tests.llama_cpp_sdist` (scripts/setup-tests.sh does) or set LLAMA_CPP_DIR"


def _candidates():
    env = os.environ.get("LLAMA_CPP_DIR")
    return ([env] if env else []) + [UNPACKED, PEER]


def find(relative):
    """Path of `relative` (e.g. "grammars") in the first llama.cpp tree that has it, or None."""
    for root in _candidates():
        path = os.path.join(root, relative)
        if os.path.exists(path):
            return path
    return None


def require(relative):
    """Path of `relative`; skips the test when absent (fails it under CI)."""
    path = find(relative)
    if path is None:
        message = (f"llama.cpp's {relative} not found in {', '.join(_candidates())}; {HOW}")
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    return path


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def fetch():
    """Download the sdist (once) and unpack the wanted files; returns UNPACKED."""
    if os.path.isdir(os.path.join(UNPACKED, "grammars")):
        return UNPACKED
    wheels = os.path.join(CACHE, "wheels")
    sdist = os.path.join(wheels, SDIST)
    if not os.path.exists(sdist):
        os.makedirs(wheels, exist_ok=True)
        # --no-binary: the sdist, not a wheel (the wheels hold no llama.cpp sources).
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q",
                        "--disable-pip-version-check", "--no-binary", ":all:", "-d", wheels,
                        f"llama-cpp-python=={VERSION}"], check=True, stdout=subprocess.DEVNULL)
    if _sha256(sdist) != SDIST_SHA256:
        raise RuntimeError(f"{sdist} has the wrong sha256; delete it and fetch again")
    tmp = UNPACKED + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            if not member.isfile() or not member.name.startswith(INSIDE):
                continue
            relative = member.name[len(INSIDE):]
            parts = relative.split("/")
            if not relative.startswith(WANTED) or ".." in parts or "" in parts:
                continue
            out = os.path.join(tmp, *parts)
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with tar.extractfile(member) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst)
    shutil.rmtree(UNPACKED, ignore_errors=True)      # a leftover without grammars/
    os.replace(tmp, UNPACKED)
    return UNPACKED


if __name__ == "__main__":
    print(fetch())
