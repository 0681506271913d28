#!/usr/bin/env bash
# What building and running a bundle need, in a virtual environment .venv/ beside this
# file's folder: pip, jinja2 + markupsafe (bundled for chat templates) and ziglang (its
# `cc` compiles the kernels for x86-64, aarch64 and riscv64), then the kernels.
# Works with a bare python3 (3.9+), root or not, PEP 668 or not: nothing is installed
# outside .venv/. Where python3 lacks ensurepip (Debian/Ubuntu without python3-venv),
# pip comes from its PyPI wheel (scripts/get_pip.py). Set PYTHON to use another python3.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    if "$PYTHON" -c "import ensurepip" 2>/dev/null; then
        "$PYTHON" -m venv .venv
    else
        "$PYTHON" -m venv --without-pip .venv
    fi
fi
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
    .venv/bin/python scripts/get_pip.py
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -e .
.venv/bin/python kernels/build.py
