"""Bundles (build.py): they run like the bare GGUF, on x86-64 and under qemu-user on
aarch64 and riscv64; the ZIP is valid, aligned and ZIP64 when needed; builds are
deterministic; --verify finds damage; bad input gets one line and leaves nothing.
"""

import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import zipfile

import pytest

from tests import models, synthetic
from tests.procfs import status_fields

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYSROOTS = os.path.join(models.CACHE, "sysroots")
PROMPT = "Once upon a time, there was"
# qemu runs of the foreign Pythons (scripts/sysroots.sh builds the sysroots).
FOREIGN = {
    "aarch64": ("qemu-aarch64", [], "python3.11"),
    "riscv64": ("qemu-riscv64", ["-cpu", "rv64,v=true,vext_spec=v1.0,vlen=256"], "python3.13"),
}


def run(cmd, timeout=600, env=None, cwd=None):
    # errors="replace": `unzip -l` prints the native bundle's ZIP comment, which is
    # PyInstaller's binary cookie (see bundler/launcher.py).
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          errors="replace", timeout=timeout, env=env, cwd=cwd)


def build(*args, check=True):
    result = run([sys.executable, os.path.join(REPO, "build.py")] + [str(a) for a in args],
                 cwd=REPO)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def bare(model, *args):
    """The engine on the bare GGUF: `python -m runtime -m MODEL ARGS`."""
    result = run([sys.executable, "-m", "runtime", "-m", str(model)] + list(args), cwd=REPO)
    assert result.returncode == 0, result.stderr
    return result.stdout


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def foreign_python_dir(tmp_path, arch):
    """A bin/ folder whose python3 is the foreign Python under qemu (skip if missing)."""
    qemu, flags, python = FOREIGN[arch]
    root = os.path.join(SYSROOTS, arch)
    if not shutil.which(qemu) or not os.path.exists(os.path.join(root, "usr/bin", python)):
        pytest.skip(f"no {arch} sysroot/qemu: run scripts/sysroots.sh (apt-get install qemu-user)")
    folder = tmp_path / f"bin-{arch}"
    folder.mkdir(exist_ok=True)
    wrapper = folder / "python3"
    wrapper.write_text("#!/bin/sh\nexec %s %s -L %s %s/usr/bin/%s \"$@\"\n"
                       % (qemu, " ".join(flags), root, root, python))
    wrapper.chmod(0o755)
    return str(folder)


# --- fixtures --------------------------------------------------------------------

@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def spm_model(work):
    folder = work / "spm"
    folder.mkdir()
    return synthetic.spm_llama(str(folder))


@pytest.fixture(scope="module")
def spm_bundle(work, spm_model):
    out = work / "spm.llamafile"
    build("--model", spm_model, "-o", out)
    return out


@pytest.fixture(scope="module")
def smol_model():
    return models.smollm2()


@pytest.fixture(scope="module")
def smol_bundle(work, smol_model):
    out = work / "smol.llamafile"
    build("--model", smol_model, "-o", out)
    return out


@pytest.fixture(scope="module")
def smol_native(work, smol_model):
    pytest.importorskip("PyInstaller")
    out = work / "smol-native.llamafile"
    build("--model", smol_model, "-o", out, "--launcher", "native")
    return out


# --- running ---------------------------------------------------------------------

@pytest.mark.parametrize("which", ["spm", "smol"])
def test_bundle_prints_what_the_bare_gguf_prints(request, which):
    model = request.getfixturevalue(f"{which}_model")
    bundle = request.getfixturevalue(f"{which}_bundle")
    args = ["-p", PROMPT, "-n", "16", "--temp", "0"]
    result = run([str(bundle)] + args)
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare(model, *args)
    assert result.stdout.strip()


def test_native_runs_without_python(smol_native, smol_model, tmp_path):
    args = ["-p", PROMPT, "-n", "16", "--temp", "0"]
    result = run(["env", "-i", str(smol_native)] + args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare(smol_model, *args)


@pytest.mark.parametrize("arch,variant", [("aarch64", "i8mm"), ("riscv64", "rvv")])
def test_foreign_arch_under_qemu(spm_bundle, spm_model, tmp_path, arch, variant):
    """The portable header finds the foreign python3 and the runtime loads that arch's
    kernels from the bundle (numpy is not installed there)."""
    path = foreign_python_dir(tmp_path, arch) + ":/usr/bin:/bin"
    args = ["-p", PROMPT, "-n", "16", "--temp", "0"]
    env = {"PATH": path, "HOME": str(tmp_path)}
    result = run([str(spm_bundle), "-v"] + args, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    assert f"C kernels {variant} ({arch}" in result.stderr
    assert result.stdout == bare(spm_model, *args)


# --- the archive -----------------------------------------------------------------

@pytest.mark.parametrize("which", ["spm_bundle", "smol_native"])
def test_unzip_accepts_it_without_warnings(request, which):
    bundle = request.getfixturevalue(which)
    for flag in ("-l", "-t"):
        result = run(["unzip", flag, str(bundle)])
        assert result.returncode == 0, result.stdout + result.stderr
        assert "warning" not in (result.stdout + result.stderr).lower()


def test_layout_and_manifest(spm_bundle, spm_model):
    from runtime.archive import Bundle
    bundle = Bundle(str(spm_bundle))
    path, offset, length = bundle.model_region()
    assert offset % 65536 == 0 and length == os.path.getsize(spm_model)
    with open(spm_bundle, "rb") as f:
        f.seek(offset)
        assert f.read(length) == open(spm_model, "rb").read()
    names = bundle.names()
    for member in ("__main__.py", "runtime/cli.py", "runtime/archive.py", "jinja2/__init__.py",
                   "markupsafe/__init__.py", "kernels/x86_64/generic.so",
                   "kernels/aarch64/neon.so", "kernels/riscv64/rvv.so", "manifest.json"):
        assert member in names
    assert "tokenizer.model" not in names   # nothing reads it
    assert not [n for n in names if n.endswith((".so", ".pyd")) and n.startswith("markupsafe")]
    manifest = bundle.manifest()
    assert manifest["model"]["data_offset"] == offset
    assert manifest["model"]["sha256"] == sha256(spm_model)
    assert set(manifest["members"]) == set(names) - {"manifest.json"}
    with zipfile.ZipFile(spm_bundle) as zf:
        info = zf.getinfo("runtime/cli.py")
        assert info.date_time == (1980, 1, 1, 0, 0, 0)


def test_two_builds_are_identical(spm_model, tmp_path):
    a, b = tmp_path / "a.llamafile", tmp_path / "b.llamafile"
    build("--model", spm_model, "-o", a, "--args", "-n 8 ...")
    build("--model", spm_model, "-o", b, "--args", "-n 8 ...")
    assert sha256(a) == sha256(b)


def test_verify_names_a_flipped_weight_byte(spm_bundle, tmp_path):
    assert run([str(spm_bundle), "--verify"]).returncode == 0
    from runtime.archive import Bundle
    _, offset, length = Bundle(str(spm_bundle)).model_region()
    damaged = tmp_path / "damaged.llamafile"
    shutil.copy(spm_bundle, damaged)
    with open(damaged, "r+b") as f:
        f.seek(offset + length - 1000)  # inside the last tensor's data
        byte = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([byte[0] ^ 0x10]))
    result = run([str(damaged), "--verify"])
    assert result.returncode != 0
    assert "model.gguf" in result.stderr and "Traceback" not in result.stderr


def test_info_shows_model_manifest_and_kernels(spm_bundle):
    result = run([str(spm_bundle), "--info"])
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["metadata"]["general.architecture"] == "llama"
    assert info["bundle"]["format"] == "llamazip-bundle/1"
    assert "kernels" in info


def test_default_args(spm_model, tmp_path):
    out = tmp_path / "args.llamafile"
    build("--model", spm_model, "-o", out, "--args", "--temp 0 -n 4 ... -p 'Once upon'")
    with zipfile.ZipFile(out) as zf:
        assert zf.read(".args").decode() == "--temp\n0\n-n\n4\n...\n-p\nOnce upon\n"
    result = run([str(out), "--seed", "3"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare(spm_model, "--temp", "0", "-n", "4", "--seed", "3",
                                 "-p", "Once upon")


def test_merge_args():
    from runtime.archive import merge_args
    assert merge_args(["-n", "4"], ["-p", "x"]) == ["-n", "4", "-p", "x"]
    assert merge_args(["-a", "...", "-b"], ["-p", "x"]) == ["-a", "-p", "x", "-b"]


def test_spm_tokenizer_model_gives_the_runtime_ids(spm_model):
    spm = pytest.importorskip("sentencepiece")
    from runtime.gguf import GGUFFile
    from runtime.tokenizer import Tokenizer
    from tests.spm_proto import model_proto
    gguf = GGUFFile.open(spm_model)
    sp = spm.SentencePieceProcessor(model_proto=model_proto(gguf))
    tok = Tokenizer.from_gguf(gguf)
    texts = ["Hello world", "The GNU General Public License is a free, copyleft license.",
             "  two  spaces and\ttabs\nnewlines", "numbers 1234567 and symbols #@$%^&*()",
             "unicode: héllo wörld, 日本語, emoji 🦙", ""]
    for text in texts:
        ours = tok.encode(text, add_special=False, parse_special=False)
        assert sp.encode(text) == ours, text


# --- inputs ----------------------------------------------------------------------

def _zip_with(path, members, method=zipfile.ZIP_DEFLATED):
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, src in members:
            zf.write(src, name)
    return path


def _model_sha(bundle):
    from runtime.archive import Bundle
    return Bundle(str(bundle)).manifest()["model"]["sha256"]


@pytest.mark.parametrize("kind", ["stored", "deflated", "deflate64", "llamafile"])
def test_model_from_zip_or_llamafile(kind, spm_model, spm_bundle, tmp_path):
    if kind == "llamafile":
        source = spm_bundle
    elif kind == "deflate64":
        if not shutil.which("7z"):
            pytest.skip("7z (p7zip-full) makes the Deflate64 archive")
        pytest.importorskip("zipfile_deflate64")
        source = tmp_path / "in.zip"
        shutil.copy(spm_model, tmp_path / "inner.gguf")
        r = run(["7z", "a", "-tzip", "-mm=Deflate64", str(source), "inner.gguf"], cwd=tmp_path)
        assert r.returncode == 0, r.stdout
        with zipfile.ZipFile(source) as zf:
            assert zf.infolist()[0].compress_type == 9
    else:
        method = zipfile.ZIP_STORED if kind == "stored" else zipfile.ZIP_DEFLATED
        source = _zip_with(tmp_path / "in.zip", [("readme.txt", __file__),
                                                 ("models/x.gguf", spm_model)], method)
    out = tmp_path / "out.llamafile"
    build("--model", source, "-o", out)
    assert _model_sha(out) == sha256(spm_model)
    assert sorted(os.listdir(tmp_path)) == sorted(set(os.listdir(tmp_path)))  # no temp left
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]


# --- > 4 GiB ---------------------------------------------------------------------

def _write_sparse_big_gguf(path, n_bytes):
    """A complete llama (one layer of one 32-wide head, an SPM vocabulary) whose F32
    token embedding makes the file about n_bytes long; all weights are a hole. It has
    to be complete: build.py refuses what the runtime could not run."""
    import gguf
    import numpy as np
    dim, head, ffn = 4096, 32, 32
    n_vocab = -(-n_bytes // (4 * dim))
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(1)
    w.add_head_count_kv(1)
    w.add_key_length(head)
    w.add_value_length(head)
    w.add_rope_dimension_count(head)
    w.add_context_length(256)
    w.add_tokenizer_model("llama")
    w.add_token_list(["<unk>", "<s>", "</s>"] + [f"t{i}" for i in range(n_vocab - 3)])
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types([2, 3, 3] + [1] * (n_vocab - 3))
    shapes = [("token_embd.weight", (n_vocab, dim)), ("output_norm.weight", (dim,)),
              ("blk.0.attn_norm.weight", (dim,)), ("blk.0.ffn_norm.weight", (dim,)),
              ("blk.0.attn_q.weight", (head, dim)), ("blk.0.attn_k.weight", (head, dim)),
              ("blk.0.attn_v.weight", (head, dim)), ("blk.0.attn_output.weight", (dim, head)),
              ("blk.0.ffn_gate.weight", (ffn, dim)), ("blk.0.ffn_up.weight", (ffn, dim)),
              ("blk.0.ffn_down.weight", (dim, ffn))]
    data_bytes = 0
    for name, shape in shapes:
        nbytes = 4 * int(np.prod(shape))
        w.add_tensor_info(name, shape, np.float32, nbytes)
        data_bytes += nbytes              # every size is a multiple of the alignment
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()
    header = os.path.getsize(path)
    total = header + (-header % 32) + data_bytes
    with open(path, "r+b") as f:
        f.truncate(total)
    return total


def test_model_over_4_gib_is_zip64_and_mapped_in_place(tmp_path):
    total = _write_sparse_big_gguf(tmp_path / "big.gguf", (4 << 30) + (16 << 20))
    assert total > 1 << 32
    out = tmp_path / "big.llamafile"
    build("--model", tmp_path / "big.gguf", "-o", out, "--arch", "x86_64", "--args", "-n 1")
    from runtime.archive import Bundle
    from runtime.gguf import GGUFFile
    bundle = Bundle(str(out))
    path, offset, length = bundle.model_region()
    assert offset % 65536 == 0 and length == total
    gguf = GGUFFile.open(path, offset, length)
    last = max(gguf.tensors.values(), key=lambda t: t.offset)
    assert last.offset + last.nbytes == length
    assert bundle.default_args() == ["-n", "1"]
    with zipfile.ZipFile(out) as zf:
        assert zf.getinfo("manifest.json").header_offset > 1 << 32  # ZIP64 offsets
    with open(out, "rb") as f:
        f.seek(-22 - 20, 2)
        assert f.read(4) == b"PK\x06\x07"  # the ZIP64 end locator precedes the end record
    # The launcher and the importer read the ZIP64 directory (zipimport could not).
    result = run([str(out), "--info"])
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["bundle"]["model"]["size"] == total
    assert run(["unzip", "-l", str(out)]).returncode == 0


# --- bad input -------------------------------------------------------------------

def _bad_gguf_type(spm_model, path):
    """The synthetic model with one tensor's type id changed to IQ4_NL (unsupported)."""
    data = bytearray(open(spm_model, "rb").read())
    name = b"blk.0.attn_q.weight"
    i = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    n_dims = struct.unpack_from("<I", data, i)[0]
    type_at = i + 4 + 8 * n_dims
    struct.pack_into("<I", data, type_at, 20)
    path.write_bytes(bytes(data))
    return path


def _expect_one_line_error(result, out_dir, fragment):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not [n for n in os.listdir(out_dir) if n.endswith(".llamafile") or n.startswith(".")]


@pytest.mark.parametrize("case", ["missing", "not_gguf", "truncated", "zip_none", "zip_two",
                                  "arch", "tensor_type", "no_folder"])
def test_bad_input_one_line_no_output(case, spm_model, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "x.llamafile"
    data = open(spm_model, "rb").read()
    fragment = {"missing": "not found", "not_gguf": "not a GGUF", "truncated": "truncated",
                "zip_none": "holds 0 .gguf", "zip_two": "holds 2 .gguf",
                "arch": "unsupported model architecture", "tensor_type": "IQ4_NL",
                "no_folder": "does not exist"}[case]
    if case == "missing":
        model = src / "nope.gguf"
    elif case == "not_gguf":
        model = src / "text.gguf"
        model.write_text("hello\n")
    elif case == "truncated":
        model = src / "cut.gguf"
        model.write_bytes(data[:len(data) // 2])
    elif case == "zip_none":
        model = _zip_with(src / "none.zip", [("readme.txt", __file__)])
    elif case == "zip_two":
        model = _zip_with(src / "two.zip", [("a.gguf", spm_model), ("b.gguf", spm_model)])
    elif case == "arch":
        model = src / "arch.gguf"
        model.write_bytes(data.replace(b"\x05\x00\x00\x00\x00\x00\x00\x00llama",
                                       b"\x05\x00\x00\x00\x00\x00\x00\x00bloom", 1))
    elif case == "tensor_type":
        model = _bad_gguf_type(spm_model, src / "type.gguf")
    elif case == "no_folder":
        model, out = spm_model, out_dir / "missing" / "x.llamafile"
    _expect_one_line_error(build("--model", model, "-o", out, check=False), out_dir, fragment)


def _mount_tmpfs(path, options):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    path.mkdir()
    r = run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)])
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")


@pytest.mark.parametrize("options,fragment", [("size=256k", "no space left"),
                                              ("ro,size=1m", "cannot write")])
def test_full_or_read_only_disk(spm_model, tmp_path, options, fragment):
    mount = tmp_path / "mnt"
    _mount_tmpfs(mount, options)
    try:
        result = build("--model", spm_model, "-o", mount / "x.llamafile", check=False)
        _expect_one_line_error(result, mount, fragment)
        assert os.listdir(mount) == []
    finally:
        run(["umount", str(mount)])


# --- memory and start-up ---------------------------------------------------------

def test_weights_stay_in_the_page_cache(smol_bundle):
    """After generating, the weights are file-backed (RssFile), not copied (RssAnon)."""
    model_size = json.loads(zipfile.ZipFile(smol_bundle).read("manifest.json"))["model"]["size"]
    proc = subprocess.Popen([str(smol_bundle), "-p", PROMPT, "-n", "16", "--temp", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {}
    python_pid = None
    while proc.poll() is None:
        # The sh launcher execs python3, so the pid stays the same.
        python_pid = proc.pid
        sample = status_fields(python_pid, ("RssAnon", "RssFile", "VmRSS"))
        if sample.get("RssFile", 0) >= peak.get("RssFile", 0):
            peak = sample
        time.sleep(0.02)
    out, err = proc.communicate()
    assert proc.returncode == 0, err
    print(f"\nmodel {model_size / 2**20:.0f} MiB: RssAnon {peak['RssAnon'] / 2**20:.0f} MiB, "
          f"RssFile {peak['RssFile'] / 2**20:.0f} MiB at the RssFile peak")
    assert peak["RssFile"] > 0.8 * model_size
    assert peak["RssAnon"] < 0.5 * model_size
