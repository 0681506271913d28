#!/usr/bin/env python3
"""Build every kernel library variant for every architecture, from any host.

    python kernels/build.py                 all variants -> kernels/build/<arch>/<variant>.so
    python kernels/build.py x86_64          one architecture (or arch/variant)
    python kernels/build.py --drivers       also the static test drivers (tests/test_kernels.py)
    python kernels/build.py --force         rebuild even when up to date
    python kernels/build.py --sanitize [x86_64/avx2]  ASan+UBSan builds for this host, with its
                            own cc: build/sanitize/<arch>/<variant>-asan.so, <variant>-asan-test

The compiler is zig's clang (`pip install ziglang`, run as `python -m ziglang cc`),
which cross-compiles to every target with its own libc headers. Builds are cached:
a variant is skipped when the hash of its sources, flags and compiler version matches
the one recorded next to the library. Outputs are reproducible: no paths (file-prefix
map), no build id, no timestamps, so two builds give the same bytes.
"""

import concurrent.futures
import hashlib
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
BUILD = os.path.join(HERE, "build")

COMMON = ["api.c", "threads.c", "quants.c", "matmul.c", "ops.c", "sigbus.c"]
HEADERS = ["quants.h", "ops.h", "threads.h", "tiles.h"]

# arch -> (glibc target for the .so, musl target for static test drivers)
TARGETS = {
    "x86_64": ("x86_64-linux-gnu.2.17", "x86_64-linux-musl"),
    "aarch64": ("aarch64-linux-gnu.2.17", "aarch64-linux-musl"),
    "riscv64": ("riscv64-linux-gnu.2.27", "riscv64-linux-musl"),
}

# arch -> variant -> (cpu flags, extra sources, defines); best variant last.
VARIANTS = {
    "x86_64": {
        "generic": (["-mcpu=x86_64"], [], []),
        "avx2": (["-mcpu=x86_64", "-mavx2", "-mfma", "-mf16c"], ["matmul_avx2.c"], ["LZ_AVX2"]),
        "avx512": (["-mcpu=x86_64", "-mavx2", "-mfma", "-mf16c", "-mavx512f", "-mavx512bw",
                    "-mavx512vl", "-mavx512vnni"],
                   ["matmul_avx2.c", "matmul_avx512.c"], ["LZ_AVX2", "LZ_AVX512"]),
    },
    "aarch64": {
        "neon": (["-mcpu=generic"], ["matmul_neon.c"], ["LZ_NEON"]),
        "dotprod": (["-mcpu=generic+dotprod+fullfp16"], ["matmul_neon.c"], ["LZ_NEON"]),
        # Armv8.6's int8 matrix multiply (smmla): the same file's 2x2-per-instruction tiles
        "i8mm": (["-mcpu=generic+dotprod+fullfp16+i8mm"], ["matmul_neon.c"], ["LZ_NEON"]),
    },
    "riscv64": {
        "rv64gc": (["-mcpu=baseline_rv64"], [], []),
        # Plain C stays scalar here: qemu-user before 8.1 (Debian 12 has 7.2) aborts on
        # some vector instructions the auto-vectorizer emits (qemu issue 1441); the
        # RVV kernels are explicit intrinsics (matmul_rvv.c), tested under qemu.
        "rvv": (["-mcpu=baseline_rv64+v", "-fno-vectorize", "-fno-slp-vectorize"],
                ["matmul_rvv.c"], ["LZ_RVV"]),
    },
}

CFLAGS = ["-std=c11", "-O2", "-fPIC", "-fvisibility=hidden", "-fno-math-errno",
          # a*b+c rounds twice, as in the NumPy oracle (intrinsics still fuse when asked)
          "-ffp-contract=off",
          "-Wall", "-Wextra", "-Wno-unused-function", "-Wno-sign-compare",
          # reproducible: no build paths in the output
          "-ffile-prefix-map=" + HERE + "=kernels", "-fdebug-prefix-map=" + HERE + "=kernels",
          "-g0"]
LDFLAGS = ["-Wl,--build-id=none", "-pthread", "-lm"]


def zig_cc():
    return [sys.executable, "-m", "ziglang", "cc"]


_zig_version = None


def zig_version():
    global _zig_version
    if _zig_version is None:
        try:
            out = subprocess.run([sys.executable, "-m", "ziglang", "version"], check=True,
                                 capture_output=True, text=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError) as e:
            raise SystemExit("kernels/build.py needs zig's C compiler: pip install ziglang "
                             f"({e})")
        _zig_version = out
    return _zig_version


def output_path(arch, variant, driver=False):
    name = f"{variant}-test" if driver else f"{variant}.so"
    return os.path.join(BUILD, arch, name)


def _command(arch, variant, out, driver):
    cpu, extra, defines = VARIANTS[arch][variant]
    target = TARGETS[arch][1 if driver else 0]
    sources = COMMON + extra + (["test_driver.c"] if driver else [])
    cmd = zig_cc() + ["-target", target] + cpu + CFLAGS
    cmd += ["-D" + d for d in defines] + [f'-DLZ_VARIANT="{variant}"']
    cmd += [os.path.join(HERE, s) for s in sources]
    cmd += (["-static"] if driver else ["-shared"]) + LDFLAGS + ["-o", out]
    return cmd, sources


def _digest(cmd, sources):
    h = hashlib.sha256()
    h.update(zig_version().encode())
    h.update("\0".join(cmd).encode())
    for name in sorted(set(sources + HEADERS)):
        with open(os.path.join(HERE, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def build(arch, variant, driver=False, force=False, quiet=False):
    """Build one library (or static test driver); returns its path. Cached by content hash."""
    out = output_path(arch, variant, driver)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    cmd, sources = _command(arch, variant, out + ".tmp", driver)
    digest = _digest(cmd, sources)
    stamp = out + ".sha256"
    if not force and os.path.exists(out) and os.path.exists(stamp):
        with open(stamp) as f:
            if f.read().strip() == digest:
                return out
    if not quiet:
        print(f"building {os.path.relpath(out, os.path.dirname(HERE))}", flush=True)
    env = dict(os.environ)
    # zig would otherwise embed nothing time-dependent, but keep any tool honest
    env["SOURCE_DATE_EPOCH"] = "0"
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"building {arch}/{variant} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    if proc.stderr.strip() and not quiet:
        sys.stderr.write(proc.stderr)
    os.replace(out + ".tmp", out)
    with open(stamp, "w") as f:
        f.write(digest + "\n")
    return out


# --sanitize: the host's own compiler (zig ships no sanitizer runtimes), ASan and
# UBSan, for the test driver and for a library the fuzzer loads (tests/fuzz_gguf.py).
SANITIZE_FLAGS = ["-std=c11", "-O1", "-g", "-fPIC", "-fno-omit-frame-pointer",
                  "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                  "-fvisibility=hidden", "-fno-math-errno", "-ffp-contract=off"]
# zig's -mcpu names, as GCC/Clang flags
_HOST_CPU_FLAGS = {"-mcpu=generic+dotprod+fullfp16": ["-march=armv8.2-a+dotprod+fp16"],
                   "-mcpu=generic+dotprod+fullfp16+i8mm": ["-march=armv8.6-a+dotprod+fp16+i8mm"]}


def host_cc():
    return os.environ.get("CC", "cc")


def sanitizer_runtimes(cc=None):
    """Paths of the ASan and UBSan runtimes to LD_PRELOAD into a python that loads a
    sanitized library (a python binary is not built with them)."""
    cc = cc or host_cc()
    paths = []
    for lib in ("libasan.so", "libubsan.so"):
        out = subprocess.run([cc, f"-print-file-name={lib}"], capture_output=True, text=True)
        path = out.stdout.strip()
        if out.returncode != 0 or not os.path.isabs(path):
            raise RuntimeError(f"{cc} has no {lib}; install the compiler's sanitizer runtime")
        paths.append(path)
    return paths


def sanitized_path(arch, variant, driver):
    """Apart from the release builds, so that no bundle ever picks one up."""
    return os.path.join(BUILD, "sanitize", arch, f"{variant}-asan" + ("-test" if driver else ".so"))


def build_sanitized(arch, variant, driver):
    """An ASan+UBSan build with the host compiler: <variant>-asan.so or <variant>-asan-test."""
    cpu, extra, defines = VARIANTS[arch][variant]
    flags = []
    for f in cpu:
        flags += _HOST_CPU_FLAGS.get(f, [] if f.startswith("-mcpu=") else [f])
    out = sanitized_path(arch, variant, driver)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    sources = COMMON + extra + (["test_driver.c"] if driver else [])
    cmd = [host_cc()] + flags + SANITIZE_FLAGS + ["-D" + d for d in defines]
    cmd += [f'-DLZ_VARIANT="{variant}"'] + [os.path.join(HERE, s) for s in sources]
    cmd += ([] if driver else ["-shared"]) + ["-pthread", "-lm", "-o", out + ".tmp"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE)
    if proc.returncode != 0:
        raise RuntimeError(f"sanitized build of {arch}/{variant} failed:\n{' '.join(cmd)}\n"
                           f"{proc.stderr}")
    os.replace(out + ".tmp", out)
    return out


def all_jobs(selection=None, drivers=False):
    jobs = []
    for arch, variants in VARIANTS.items():
        for variant in variants:
            name = f"{arch}/{variant}"
            if selection and not any(name == s or arch == s for s in selection):
                continue
            jobs.append((arch, variant, False))
            if drivers:
                jobs.append((arch, variant, True))
    return jobs


def main(argv):
    if "--sanitize" in argv:
        import platform
        arch = {"amd64": "x86_64", "arm64": "aarch64"}.get(platform.machine().lower(),
                                                           platform.machine().lower())
        variants = [a.split("/")[1] for a in argv if "/" in a] or list(VARIANTS[arch])
        for variant in variants:
            for driver in (False, True):
                print(os.path.relpath(build_sanitized(arch, variant, driver),
                                      os.path.dirname(HERE)))
        return 0
    force = "--force" in argv
    drivers = "--drivers" in argv
    selection = [a for a in argv if not a.startswith("--")]
    jobs = all_jobs(selection, drivers)
    if not jobs:
        raise SystemExit(f"nothing matches {selection}; arches: {', '.join(VARIANTS)}")
    zig_version()
    workers = max(1, min(len(jobs), os.cpu_count() or 1))
    failed = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(build, a, v, d, force): (a, v, d) for a, v, d in jobs}
        for fut in concurrent.futures.as_completed(futures):
            try:
                fut.result()
            except RuntimeError as e:
                failed.append(str(e))
    for msg in failed:
        print(msg, file=sys.stderr)
    if failed:
        return 1
    for a, v, d in jobs:
        print(os.path.relpath(output_path(a, v, d), os.path.dirname(HERE)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
