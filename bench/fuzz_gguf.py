"""10,000 fuzzed GGUFs through the command line (C backend), with the counts of each
ending: exit 0, one-line exit 2, and the findings (signals, tracebacks, hangs).

    python bench/fuzz_gguf.py                       10,000 cases, 2 processes
    python bench/fuzz_gguf.py --count 500 --asan kernels/build/sanitize/x86_64/avx2-asan.so
        (under LD_PRELOAD of the sanitizer runtimes: kernels/build.py --sanitize, and
        `cc -print-file-name=libasan.so` / libubsan.so)

The cases and their classification are tests/fuzz_gguf.py's; the suite runs a few
dozen of them (tests/test_hardening.py).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests import fuzz_gguf  # noqa: E402

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--count" not in argv:
        argv = ["--count", "10000"] + argv
    if "--jobs" not in argv:
        argv = ["--jobs", "2"] + argv
    sys.exit(fuzz_gguf.main(argv))
