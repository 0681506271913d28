#!/bin/sh
# Cross-build llama.cpp's llama-bench for aarch64 and riscv64 (static, musl), with zig's
# clang, for bench/bench_cross_arch.py:
#
#     bench/build_cross_llama_bench.sh LLAMA_CPP_SOURCE OUT_PREFIX [aarch64] [riscv64]
#
# gives OUT_PREFIX-aarch64/bin/llama-bench and OUT_PREFIX-riscv64/bin/llama-bench
# (e.g. /work/peer/cross: /work/peer/cross-aarch64/...). Needs cmake, ninja and
# `pip install ziglang`. The first link per target builds zig's musl and libc++ (a few
# minutes); then about 130 files per target.
#
# aarch64: Armv8.6-A with dotprod and i8mm (what qemu-aarch64 -cpu max runs; ggml
# picks its i8mm kernels from the compiler's flags). riscv64: rv64gc + V (RVV 1.0),
# without Zfh/Zvfh/Zicbop/Zihintpause, which our own rvv variant does not use either.
# zig rejects GCC's -march/-mabi spellings, so a wrapper drops them and passes the
# target's -mcpu instead. No OpenMP (zig ships no runtime): ggml's own thread pool.
set -e
SRC=$1
OUT=$2
shift 2
[ -f "$SRC/CMakeLists.txt" ] || { echo "usage: $0 LLAMA_CPP_SOURCE OUT_PREFIX [aarch64] [riscv64]" >&2; exit 2; }
[ $# -gt 0 ] || set -- aarch64 riscv64
TOOLS=$OUT-toolchain
mkdir -p "$TOOLS"
PY=$(command -v python3)

for arch in "$@"; do
  case $arch in
    aarch64) mcpu="generic+v8_6a+dotprod+i8mm+fullfp16"
             extra="-DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+i8mm" ;;
    riscv64) mcpu="baseline_rv64+v"
             extra="-DGGML_RVV=ON -DGGML_RV_ZFH=OFF -DGGML_RV_ZVFH=OFF -DGGML_RV_ZICBOP=OFF -DGGML_RV_ZIHINTPAUSE=OFF" ;;
    *) echo "unknown arch $arch (aarch64, riscv64)" >&2; exit 2 ;;
  esac
  for tool in cc c++; do
    cat > "$TOOLS/$arch-$tool" <<EOF
#!/bin/sh
for a in "\$@"; do
  shift
  case "\$a" in
    -march=*|-mabi=*|-mfp16-format=*) ;;
    *) set -- "\$@" "\$a" ;;
  esac
done
exec $PY -m ziglang $tool -target $arch-linux-musl -mcpu=$mcpu "\$@"
EOF
  done
  for tool in ar ranlib; do
    printf '#!/bin/sh\nexec %s -m ziglang %s "$@"\n' "$PY" $tool > "$TOOLS/$arch-$tool"
  done
  chmod +x "$TOOLS/$arch"-*
  cat > "$TOOLS/$arch.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR $arch)
set(CMAKE_C_COMPILER $TOOLS/$arch-cc)
set(CMAKE_CXX_COMPILER $TOOLS/$arch-c++)
set(CMAKE_AR $TOOLS/$arch-ar)
set(CMAKE_RANLIB $TOOLS/$arch-ranlib)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_EXE_LINKER_FLAGS_INIT "-static")
EOF
  # shellcheck disable=SC2086
  nice -n 19 cmake -S "$SRC" -B "$OUT-$arch" -G Ninja -DCMAKE_TOOLCHAIN_FILE="$TOOLS/$arch.cmake" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF \
    -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DGGML_BACKEND_DL=OFF -DGGML_CCACHE=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF \
    -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON $extra
  nice -n 19 cmake --build "$OUT-$arch" -j2 --target llama-bench
  echo "$OUT-$arch/bin/llama-bench"
done
