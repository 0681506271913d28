"""Hostile input: crafted GGUFs, fuzzed headers, the kernel cache, damaged bundles,
unbounded memory, hangs and signals. Each case is run the way a user meets it (the
command line in a subprocess) and must end in one clear line and exit 2, or a run."""

import json
import os
import subprocess
import sys

import pytest

from runtime import ggml_types as T
from tests import fuzz_gguf as F
from tests import synthetic
from tests.models import smollm2

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = ["-p", "Hi", "-n", "2", "--temp", "0", "--backend", "c", "-c", "32"]


def cli(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "-m", "runtime"] + [str(a) for a in args],
                          capture_output=True, text=True, cwd=REPO, timeout=timeout, **kw)


def one_line_error(result, *fragments):
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return synthetic.spm_llama(str(tmp_path_factory.mktemp("harden")), weight_type=T.Q8_0)


# ---------------------------------------------------------------- crafted GGUFs

def _shape(name, change):
    def edit(h):
        for t in h.tensors:
            if t[0] == name:
                change(t)
    return edit


def _shorten(key):
    def edit(h):
        i = h.index(key)
        et, items = h.kv[i][2]
        h.kv[i][2] = (et, items[:-1])
    return edit


def _rename(key, new):
    def edit(h):
        h.kv[h.index(key)][0] = new
    return edit


CRAFTED = {
    # name: (edit of the header, words the one-line error must hold)
    "alignment_string": (lambda h: F.set_key(h, b"general.alignment", F.STRING, b"x"),
                         ["general.alignment", "power of two"]),
    "nested_5000": (lambda h: F.set_key(h, b"x.deep", F.ARRAY, F._nested(5000)),
                    ["x.deep", "nests arrays"]),
    "bos_string": (lambda h: F.set_key(h, b"tokenizer.ggml.bos_token_id", F.STRING, b"1"),
                   ["bos_token_id", "integer"]),
    "head_count_0": (lambda h: F.set_key(h, b"llama.attention.head_count", F.UINT32, 0),
                     ["llama.attention.head_count", "from 1"]),
    "head_count_kv_0": (lambda h: F.set_key(h, b"llama.attention.head_count_kv", F.UINT32, 0),
                        ["head_count_kv", "from 1"]),
    "head_count_kv_3": (lambda h: F.set_key(h, b"llama.attention.head_count_kv", F.UINT32, 3),
                        ["head_count_kv", "divisor"]),
    # the real crash: one flipped byte in this key name made kv heads = heads
    "head_count_kv_renamed": (_rename(b"llama.attention.head_count_kv",
                                      b"llama.attention.head_count_kw"),
                              ["attn_k.weight", "shape"]),
    "token_type_short": (_shorten(b"tokenizer.ggml.token_type"), ["token_type", "tokens"]),
    # found by the fuzzer: Config counted a vocabulary that was a number
    "tokens_float": (lambda h: F.set_key(h, b"tokenizer.ggml.tokens", F.FLOAT32, 1.5),
                     ["tokenizer.ggml.tokens", "array of strings"]),
    "embedding_1e9": (lambda h: F.set_key(h, b"llama.embedding_length", F.UINT32, 10**9),
                      ["embedding_length", "integer from 1"]),
    "key_length_2048": (lambda h: F.set_key(h, b"llama.attention.key_length", F.UINT32, 2048),
                        ["key_length"]),
    "rope_dims_odd": (lambda h: F.set_key(h, b"llama.rope.dimension_count", F.UINT32, 7),
                      ["rope.dimension_count", "even"]),
    "eps_nan": (lambda h: F.set_key(h, b"llama.attention.layer_norm_rms_epsilon", F.FLOAT32,
                                    float("nan")), ["layer_norm_rms_epsilon", "finite"]),
    "norm_shape": (_shape(b"blk.0.attn_norm.weight", lambda t: t[1].__setitem__(0, 32)),
                   ["blk.0.attn_norm.weight", "shape"]),
    "q_rows": (_shape(b"blk.1.attn_q.weight", lambda t: t.__setitem__(1, [64, 32])),
               ["blk.1.attn_q.weight", "shape"]),
    "embd_rows": (_shape(b"token_embd.weight", lambda t: t.__setitem__(1, [64, 1024])),
                  ["token_embd.weight"]),
    "dim_zero": (_shape(b"output.weight", lambda t: t[1].__setitem__(1, 0)),
                 ["output.weight", "dimension"]),
    "offset_huge": (_shape(b"blk.0.ffn_up.weight", lambda t: t.__setitem__(3, 2**63)),
                    ["blk.0.ffn_up.weight", "ends at byte"]),
    "offset_unaligned": (_shape(b"blk.0.ffn_up.weight", lambda t: t.__setitem__(3, t[3] + 1)),
                         ["blk.0.ffn_up.weight", "alignment"]),
    "vocab_size": (lambda h: F.set_key(h, b"llama.vocab_size", F.UINT32, 100000),
                   ["vocab_size"]),
    "bias_alone": (lambda h: h.tensors.append([b"blk.0.attn_q.bias", [64], 0, 0]),
                   ["attn_q.bias"]),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_gguf_one_line_exit_2(case, spm_model, tmp_path):
    edit, words = CRAFTED[case]
    path = F.write_case(spm_model, str(tmp_path / f"{case}.gguf"), edit)
    one_line_error(cli("-m", path, *RUN), *words)


def test_unchanged_header_runs(spm_model, tmp_path):
    """The harness itself: a header written back unchanged is the same model."""
    path = F.write_case(spm_model, str(tmp_path / "same.gguf"), lambda h: None)
    a, b = cli("-m", path, *RUN), cli("-m", spm_model, *RUN)
    assert a.returncode == 0, a.stderr
    assert a.stdout == b.stdout and a.stdout.strip()


def test_flipped_key_of_real_smollm2(tmp_path):
    """The reported segfault: head_count_kv's name damaged in the real SmolLM2 file."""
    path = F.write_case(smollm2(), str(tmp_path / "smol.gguf"),
                        _rename(b"llama.attention.head_count_kv",
                                b"llama.attention.head_count_kX"))
    one_line_error(cli("-m", path, *RUN), "attn_k.weight", "shape")


def test_build_refuses_what_the_runtime_refuses(spm_model, tmp_path):
    out = tmp_path / "x.llamafile"
    for case in ("head_count_kv_renamed", "token_type_short", "bos_string"):
        path = F.write_case(spm_model, str(tmp_path / f"{case}.gguf"), CRAFTED[case][0])
        result = subprocess.run([sys.executable, "build.py", "--model", path, "-o", str(out),
                                 "--arch", "x86_64"], capture_output=True, text=True, cwd=REPO,
                                timeout=300)
        one_line_error(result, *CRAFTED[case][1])
        assert not out.exists()


# ---------------------------------------------------------------- fuzzing

def test_fuzzed_headers_never_crash(spm_model, tmp_path):
    """Structured mutations and byte flips of SmolLM2's and a synthetic header, each
    run through the command line on the C backend in a child process: every one
    ends in exit 2 with one line, or a run; never a signal, traceback or hang.
    (bench/fuzz_gguf.py runs 10,000 of these.)"""
    out = tmp_path / "fuzz.json"
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_gguf", "--count", "60", "--seed", "3", "--timeout",
         "120", "--model", smollm2(), "--model", spm_model, "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=1800)
    report = json.loads(out.read_text())
    assert report["findings"] == [], result.stdout[-5000:]
    counts = report["counts"]
    assert sum(counts.values()) == 60
    # both kinds of ending occur, so the cases reach the model as well as the checks
    assert counts["error"] > 0 and counts["ok"] > 0, counts


# ---------------------------------------------------------------- sanitizers

def _sanitizer_build(driver):
    """The ASan+UBSan build of the host's best kernel variant, or a skip reason."""
    import shutil
    from runtime import kernels
    from tests.test_kernels import build
    arch = kernels.machine_arch()
    if arch not in kernels.VARIANTS or not shutil.which(build.host_cc()):
        return None, f"no host C compiler ({build.host_cc()}) for a sanitizer build"
    try:
        runtimes = build.sanitizer_runtimes()
    except RuntimeError as e:
        return None, str(e)
    variant = kernels.choose_variant(arch, kernels.detect_features(arch))
    out = build.sanitized_path(arch, variant, driver)
    sources = [os.path.join(build.HERE, s) for s in build.COMMON + build.HEADERS +
               list(build.VARIANTS[arch][variant][1]) + ["test_driver.c"]]
    if not os.path.exists(out) or os.path.getmtime(out) < max(map(os.path.getmtime, sources)):
        out = build.build_sanitized(arch, variant, driver)
    return (out, runtimes), None


def test_kernels_under_asan_and_ubsan():
    """The kernel test driver's whole script (every op, every type) built with ASan
    and UBSan: no report, and the same results the plain build is checked against."""
    import numpy as np
    from tests import test_kernels as TK
    built, why = _sanitizer_build(driver=True)
    if built is None:
        pytest.skip(why)
    driver, _ = built
    os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
    results = TK.script().run([driver])
    for name, _, ref, how in TK.script().outputs:
        if isinstance(ref, str) or name == "variant" or how is None:
            continue
        TK.check(name, results[name], np.asarray(ref, np.float32).ravel(), how)


def test_fuzzed_headers_under_asan(spm_model, tmp_path):
    """A sample of fuzzed files through the command line with the sanitized kernels
    loaded (python itself runs with the sanitizer runtimes preloaded)."""
    built, why = _sanitizer_build(driver=False)
    if built is None:
        pytest.skip(why)
    library, runtimes = built
    out = tmp_path / "asan.json"
    env = dict(os.environ, LD_PRELOAD=" ".join(runtimes),
               ASAN_OPTIONS="detect_leaks=0:abort_on_error=1",
               UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1")
    result = subprocess.run(
        [sys.executable, "-m", "tests.fuzz_gguf", "--count", "16", "--seed", "11",
         "--timeout", "300", "--model", spm_model, "--asan", library, "--json", str(out)],
        capture_output=True, text=True, cwd=REPO, timeout=1800, env=env)
    report = json.loads(out.read_text())
    assert report["findings"] == [], result.stdout[-5000:] + result.stderr[-3000:]
    assert sum(report["counts"].values()) == 16


# ---------------------------------------------------------------- kernel cache

def _planted_library(tmp_path, marker):
    """A shared library whose constructor creates `marker`: what an attacker plants."""
    import shutil
    cc = os.environ.get("CC", "cc")
    if not shutil.which(cc):
        return None
    src = tmp_path / "planted.c"
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void run(void) '
                   '{ FILE *f = fopen("%s", "w"); if (f) fclose(f); }\n' % marker)
    out = tmp_path / "planted.so"
    subprocess.run([cc, "-shared", "-fPIC", str(src), "-o", str(out)], check=True)
    return out.read_bytes()


def test_kernel_cache_private_verified_no_symlinks(monkeypatch, tmp_path):
    import stat
    from runtime import kernels
    arch = kernels.machine_arch()
    if arch not in kernels.VARIANTS:
        pytest.skip("no kernels for this host")
    variant = kernels.VARIANTS[arch][0]
    data, dev_path = kernels.library_bytes(arch, variant)
    if data is None:   # the development tree hands out the path, not the bytes
        with open(dev_path, "rb") as f:
            data = f.read()
    monkeypatch.setenv("LLAMAZIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.delattr(os, "memfd_create")      # the path that uses the disk cache

    lib, path = kernels._open_bytes(data, arch, variant)
    folder = os.path.dirname(path)
    assert lib.lz_abi_version() == kernels.ABI_VERSION
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700
    assert open(path, "rb").read() == data
    assert [n for n in os.listdir(folder)] == [os.path.basename(path)]   # no temp left

    # a library planted under the cached name is replaced, and never run
    marker = tmp_path / "constructor-ran"
    planted = _planted_library(tmp_path, marker)
    if planted is not None:
        # a new file under the name (writing into the old one would pull the pages
        # from under the copy this process has loaded)
        with open(path + ".new", "wb") as f:
            f.write(planted)
        os.replace(path + ".new", path)
        kernels._open_bytes(data, arch, variant)
        assert not marker.exists()
        assert open(path, "rb").read() == data

    # a symlink under the name is not written through
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep me")
    os.unlink(path)
    os.symlink(victim, path)
    kernels._open_bytes(data, arch, variant)
    assert victim.read_bytes() == b"keep me"
    assert not os.path.islink(path) and open(path, "rb").read() == data

    # a folder others may write is made private again
    os.chmod(folder, 0o777)
    kernels._open_bytes(data, arch, variant)
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700


# ---------------------------------------------------------------- unbounded memory

def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


def test_tokenizer_word_cache_is_bounded():
    import random
    from runtime.gguf import GGUFFile
    from runtime.tokenizer import Tokenizer, WordCache
    tok = Tokenizer.from_gguf(GGUFFile.open(smollm2()))
    rng = random.Random(0)
    before = len(tok._word_cache)
    text = " ".join("".join(rng.choice("abcdefghijklmnop") for _ in range(4096))
                    for _ in range(60))   # 60 distinct long words
    tok.encode(text, add_special=False)
    assert len(tok._word_cache) - before <= 60 and all(
        len(w) <= WordCache.MAX_WORD_CHARS for w in tok._word_cache._words)
    # LRU: a flood of distinct short words keeps MAX_WORDS, the recent ones
    cache = WordCache()
    for i in range(WordCache.MAX_WORDS + 5000):
        cache.put(f"w{i}", [i])
    assert len(cache) == WordCache.MAX_WORDS
    assert cache.get("w0") is None and cache.get(f"w{WordCache.MAX_WORDS + 4999}") == \
        [WordCache.MAX_WORDS + 4999]
    # and the same ids as without a cache
    words = "the cat sat on the mat " * 3
    assert tok.encode(words, add_special=False) == Tokenizer.from_gguf(
        GGUFFile.open(smollm2())).encode(words, add_special=False)


BIG_TEMPLATES = {
    "repeat": "{{ 'a' * 300000000 }}",
    "center": "{{ 'a'|center(300000000) }}",
    "ljust": "{{ 'a'.ljust(300000000) }}",
    "doubling": "{% set ns = namespace(x='ab') %}{% for i in range(40) %}"
                "{% set ns.x = ns.x ~ ns.x %}{% endfor %}{{ ns.x }}",
    "power": "{{ 10 ** 100000000 }}",
}


@pytest.mark.parametrize("case", sorted(BIG_TEMPLATES))
def test_chat_template_limits_from_the_command_line(case, spm_model, tmp_path):
    """--chat-template with a huge output: one line, exit 2, and RSS well under 1 GB
    (the child's peak, from its rusage)."""
    import resource
    template = tmp_path / "t.jinja"
    template.write_text(BIG_TEMPLATES[case])
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = cli("-m", spm_model, "--chat", "-p", "hi", "--chat-template", template, "-n", "1",
                 "--backend", "c")
    one_line_error(result, "chat template")
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    assert max(peak_kb, before) < 1 << 20, f"peak RSS {peak_kb} KB"


def test_chat_template_from_gguf_metadata_is_bounded(spm_model, tmp_path):
    path = F.write_case(spm_model, str(tmp_path / "tpl.gguf"),
                        lambda h: F.set_key(h, b"tokenizer.chat_template", F.STRING,
                                            BIG_TEMPLATES["repeat"].encode()))
    one_line_error(cli("-m", path, "--chat", "-p", "hi", "-n", "1", "--backend", "c"),
                   "chat template", "repetition")


def test_chat_template_time_limit(monkeypatch):
    from runtime import chat
    from runtime.errors import UserError
    monkeypatch.setattr(chat, "MAX_RENDER_SECONDS", 0.5)
    t = chat.ChatTemplate("{% for i in range(100000) %}{% for j in range(100000) %}"
                          "{% endfor %}{% endfor %}x")
    with pytest.raises(UserError, match="ran for over"):
        t.render([{"role": "user", "content": "hi"}])
    # real templates are untouched by the guard
    ok = chat.ChatTemplate("{% for m in messages %}<{{ m.role }}>{{ m.content * 2 }}"
                           "{% endfor %}")
    assert ok.render([{"role": "user", "content": "ab"}]) == "<user>abab"


# ---------------------------------------------------------------- the command line

def test_model_that_is_a_fifo_or_a_directory(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    one_line_error(cli("-m", fifo, "-p", "hi", timeout=60), "FIFO")
    one_line_error(cli("-m", tmp_path, "-p", "hi", timeout=60), "directory")


def test_stdout_on_dev_full(spm_model):
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "runtime", "-m", spm_model, "-p", "hi",
                                 "-n", "4", "--temp", "0"], stdout=full, stderr=subprocess.PIPE,
                                text=True, cwd=REPO, timeout=300)
    one_line_error(result, "cannot write the output", "No space left")


def _start_streaming(args, path_env=None):
    """A CLI process streaming a long answer; returns it once output has begun. It
    starts with SIGINT at its default whatever this process inherited: run as a
    background job of a script, pytest has SIGINT ignored, and a one-shot command
    rightly keeps an inherited ignore (as nohup expects)."""
    import signal
    proc = subprocess.Popen([sys.executable, "-u", "-m", "runtime"] + [str(a) for a in args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    first = proc.stdout.read(1)
    assert first, proc.stderr.read().decode()
    return proc


def test_sigint_during_chat_exits_130(spm_model):
    import signal
    proc = _start_streaming(["-m", spm_model, "--chat", "-p", "hi", "-n", "1000", "-c", "1024",
                             "--temp", "1.5", "-s", "1"])
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert b"Traceback" not in err


def test_model_truncated_while_running(tmp_path):
    """The mapped file shrinks under a running generation: SIGBUS becomes one line
    and exit 2 (kernels/sigbus.c, runtime/faults.py), not a crash."""
    import shutil
    model = tmp_path / "smol.gguf"
    shutil.copyfile(smollm2(), model)
    proc = _start_streaming(["-m", model, "-p", "Once upon a time", "-n", "400", "-c", "512",
                             "--temp", "0", "--backend", "c"])
    os.truncate(model, 2 << 20)      # the weights are past 2 MB
    _, err = proc.communicate(timeout=300)
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert proc.returncode == 2, err.decode()[-2000:]
    assert len(lines) == 1 and "truncated or changed while in use" in lines[0], lines


# ---------------------------------------------------------------- damaged bundles

@pytest.fixture(scope="module")
def bundle(spm_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("bundle") / "m.llamafile"
    subprocess.run([sys.executable, "build.py", "--model", spm_model, "-o", str(out), "--arch",
                    "x86_64"], check=True, cwd=REPO, capture_output=True, timeout=900)
    return out


def run_bundle(path, *args, timeout=300):
    return subprocess.run([str(path)] + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, cwd=os.path.dirname(str(path)))


def _copy(bundle, tmp_path, name="b.llamafile"):
    import shutil
    out = tmp_path / name
    shutil.copyfile(bundle, out)
    os.chmod(out, 0o755)
    return out


def _data_span(path, member):
    """(offset, length) of a member's stored or compressed bytes in the file."""
    import struct
    import zipfile
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
    name_len, extra_len = struct.unpack_from("<HH", head, 26)
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip(path, member, at=0.5):
    offset, length = _data_span(path, member)
    with open(path, "r+b") as f:
        f.seek(offset + int(length * at))
        b = f.read(1)
        f.seek(offset + int(length * at))
        f.write(bytes([b[0] ^ 0x55]))


def _rezip(bundle, tmp_path, replace=None, drop=()):
    """A copy of the bundle with members replaced or dropped (the launcher kept)."""
    import zipfile
    replace = replace or {}
    out = tmp_path / "r.llamafile"
    with zipfile.ZipFile(bundle) as src:
        infos = src.infolist()
        prefix = open(bundle, "rb").read(min(i.header_offset for i in infos))
        with open(out, "wb") as f:
            f.write(prefix)
            with zipfile.ZipFile(f, "w") as dst:
                for info in infos:
                    if info.filename in drop or info.filename.split("/")[0] in drop:
                        continue
                    data = replace.get(info.filename, None)
                    dst.writestr(info, src.read(info.filename) if data is None else data)
                for name, data in replace.items():
                    if name not in src.namelist():
                        dst.writestr(name, data)
    os.chmod(out, 0o755)
    return out


def test_bundle_runs_and_verifies(bundle):
    result = run_bundle(bundle, "-p", "hi", "-n", "2", "--temp", "0")
    assert result.returncode == 0, result.stderr
    result = run_bundle(bundle, "--verify")
    assert result.returncode == 0 and result.stdout.startswith("ok:"), result.stderr


def test_damaged_runtime_member(bundle, tmp_path):
    path = _copy(bundle, tmp_path)
    _flip(path, "runtime/cli.py")
    one_line_error(run_bundle(path, "-p", "hi", "-n", "2"), "runtime/cli.py", "damaged")
    result = run_bundle(path, "--verify")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "damaged: runtime/cli.py:" in result.stderr


def test_damaged_kernel_member(bundle, tmp_path):
    from runtime import kernels
    variant = kernels.choose_variant("x86_64", kernels.detect_features("x86_64"))
    member = f"kernels/x86_64/{variant}.so"
    path = _copy(bundle, tmp_path)
    _flip(path, member)
    one_line_error(run_bundle(path, "-p", "hi", "-n", "2", "--backend", "c"), member, "damaged")
    result = run_bundle(path, "--verify")
    assert result.returncode == 2 and f"damaged: {member}:" in result.stderr, result.stderr


def test_central_directory_size_of_the_model(bundle, tmp_path):
    import struct
    path = _copy(bundle, tmp_path)
    import zipfile
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        model = [i.filename for i in z.infolist() if i.filename.endswith(".gguf")][0]
    at = data.rindex(model.encode()) - 46          # its central directory record
    assert data[at:at + 4] == b"PK\x01\x02"
    size = struct.unpack_from("<I", data, at + 24)[0]
    struct.pack_into("<I", data, at + 24, size - 4096)
    path.write_bytes(bytes(data))
    result = run_bundle(path, "--verify")
    assert result.returncode == 2 and f"damaged: {model}:" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    one_line_error(run_bundle(path, "-p", "hi", "-n", "2"))


@pytest.mark.parametrize("case", ["args_not_utf8", "args_200000_lines", "manifest_list",
                                  "manifest_nested", "no_jinja2"])
def test_tampered_bundle_one_line(case, bundle, tmp_path):
    if case == "args_not_utf8":
        path = _rezip(bundle, tmp_path, {".args": b"-n\n\xff\xfe\n"})
        one_line_error(run_bundle(path, "-p", "hi"), ".args", "UTF-8")
    elif case == "args_200000_lines":
        path = _rezip(bundle, tmp_path, {".args": b"-v\n" * 200000})
        one_line_error(run_bundle(path, "-p", "hi", timeout=60), ".args", "lines")
        result = run_bundle(path, "--verify", timeout=60)
        assert result.returncode == 2 and "damaged: .args:" in result.stderr, result.stderr
    elif case in ("manifest_list", "manifest_nested"):
        manifest = b"[]" if case == "manifest_list" else b"[" * 100000 + b"]" * 100000
        path = _rezip(bundle, tmp_path, {"manifest.json": manifest})
        one_line_error(run_bundle(path, "--verify"), "manifest.json")
        one_line_error(run_bundle(path, "--info"), "manifest.json")
    else:
        # the vendored jinja2 is gone: never the host's copy instead
        path = _rezip(bundle, tmp_path, drop=("jinja2",))
        template = tmp_path / "t.jinja"
        template.write_text("{% for m in messages %}{{ m.content }}{% endfor %}")
        one_line_error(run_bundle(path, "--chat", "-p", "hi", "-n", "1", "--chat-template",
                                  template), "no module jinja2")


def test_native_launcher_killed_leaves_nothing(spm_model, tmp_path):
    """SIGKILL to the PyInstaller bootloader: its child (our Python) stops within
    seconds and removes the _MEI folder the bootloader would have removed."""
    import glob
    import signal
    import time
    pytest.importorskip("PyInstaller")
    out = tmp_path / "n.llamafile"
    subprocess.run([sys.executable, "build.py", "--model", spm_model, "-o", str(out), "--arch",
                    "x86_64", "--launcher", "native"], check=True, cwd=REPO,
                   capture_output=True, timeout=1800)
    work = tmp_path / "run"
    work.mkdir()
    env = dict(os.environ, TMPDIR=str(work))    # where the bootloader unpacks
    proc = subprocess.Popen([str(out), "-p", "hi", "-n", "60000", "-c", "65536", "--temp", "1.5"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert proc.stdout.read(1)
    children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                              text=True).stdout.split()
    assert len(children) == 1 and glob.glob(str(work / "_MEI*"))
    child = int(children[0])
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for _ in range(200):
        if not os.path.exists(f"/proc/{child}") and not glob.glob(str(work / "_MEI*")):
            break
        time.sleep(0.1)
    assert not os.path.exists(f"/proc/{child}"), "the child kept running"
    assert not glob.glob(str(work / "_MEI*")), "the _MEI folder was left behind"
