#!/usr/bin/env bash
# Installs what building, testing and benchmarking need on a fresh Debian machine.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    if ! command -v qemu-aarch64 >/dev/null 2>&1 || ! command -v unzip >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-user unzip >/dev/null
    fi
    # Bundle tests: 7z writes the Deflate64 test archive; gcc builds zipfile-deflate64's
    # wheel where PyPI has none for this Python.
    if ! command -v 7z >/dev/null 2>&1 || ! command -v gcc >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq p7zip-full gcc >/dev/null
    fi
    # The chat page's browser test drives the system Chromium (never a downloaded one).
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    fi
fi
python -m pip install -q -e ".[test,native]"
python kernels/build.py
python -m tests.models >/dev/null
# Foreign Pythons (aarch64, riscv64) for running bundles under qemu-user in the tests.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    bash scripts/sysroots.sh
fi
