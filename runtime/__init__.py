"""llamazip run side: reads GGUF models and runs them on a bare python3.

Nothing in this package may need numpy or sentencepiece to import; both are
optional fast paths and test oracles, imported lazily where they are used.
"""

__version__ = "0.1.0"
