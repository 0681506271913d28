"""Build side of llamazip: turns a GGUF model into one self-running file (see build.py).

The run side (runtime/) never imports this package; we reuse its readers here so a
model is checked by exactly the code that will run it.
"""
