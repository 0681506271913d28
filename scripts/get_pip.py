"""Put pip into a virtual environment made without it (`python3 -m venv --without-pip`).

Stock Debian and Ubuntu ship python3 without ensurepip (it lives in python3-venv, which
only root can install), so `python3 -m venv` cannot seed pip there. We fetch pip's own
wheel from PyPI, check its sha256, and let that wheel install itself: a pip wheel is
runnable as `python pip-X.whl/pip install pip-X.whl`. Standard library only.

Usage: VENV/bin/python scripts/get_pip.py
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request

INDEX = os.environ.get("LLAMAZIP_PYPI_JSON", "https://pypi.org/pypi/pip/json")


def _version_key(version):
    return tuple(int(p) if p.isdigit() else -1 for p in version.split("."))


def _python_ok(requires):
    """Whether this Python meets a `>=X.Y` requirement (pip's only form of it)."""
    for clause in (requires or "").split(","):
        clause = clause.strip()
        if clause.startswith(">="):
            if sys.version_info[:2] < _version_key(clause[2:])[:2]:
                return False
    return True


def newest_wheel(index):
    """(url, sha256) of the newest pip wheel that supports this Python."""
    releases = index["releases"]
    for version in sorted(releases, key=_version_key, reverse=True):
        for f in releases[version]:
            if f["filename"].endswith("-py3-none-any.whl") and not f.get("yanked") \
                    and _python_ok(f.get("requires_python")):
                return f["url"], f["digests"]["sha256"], f["filename"]
    raise SystemExit("get_pip.py: PyPI lists no pip wheel for this Python")


def main():
    if sys.prefix == sys.base_prefix:
        raise SystemExit("get_pip.py: run it with a virtual environment's python")
    try:
        with urllib.request.urlopen(INDEX, timeout=60) as r:
            url, sha256, filename = newest_wheel(json.load(r))
        url = urllib.parse.urljoin(INDEX, url)   # mirrors may list files by relative URL
        with urllib.request.urlopen(url, timeout=120) as r:
            data = r.read()
    except (OSError, ValueError, KeyError) as e:
        raise SystemExit(f"get_pip.py: cannot fetch pip from PyPI ({e}); check the network, "
                         "or install python3-venv (apt install python3-venv)") from None
    with tempfile.TemporaryDirectory() as tmp:
        wheel = os.path.join(tmp, filename)
        if hashlib.sha256(data).hexdigest() != sha256:
            raise SystemExit(f"get_pip.py: {filename} does not match PyPI's sha256")
        with open(wheel, "wb") as f:
            f.write(data)
        subprocess.run([sys.executable, os.path.join(wheel, "pip"), "install", "-q",
                        "--no-index", wheel], check=True)


if __name__ == "__main__":
    main()
