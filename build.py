#!/usr/bin/env python3
"""Build a llamazip bundle: `python build.py --model x.gguf -o x.llamafile`.

See bundler/build.py for the options; `python build.py --help` lists them.
"""

import sys

from bundler.build import main

if __name__ == "__main__":
    sys.exit(main())
