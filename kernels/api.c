// The exported C ABI that runtime/backend_c.py calls through ctypes.
//
// All functions are plain C with no callbacks into Python, so ctypes releases the
// GIL around them. Arrays are passed as pointers with explicit lengths and row
// strides (counted in elements); weights are raw GGUF tensor bytes, in place.
// Errors are negative return values, never aborts.
//
// Version 3 (2 less lz_mul_rows, lz_argmax, lz_set_spin_ns, lz_h2f_row, lz_f2h_row;
// the runtime calls only the positions forms of rope and attention, the others
// serve kernels/test_driver.c):
//   int  lz_abi_version(void)
//   const char *lz_variant(void)            "generic", "avx2", "avx512", "neon", ...
//   void lz_set_threads(int n); int lz_get_threads(void)
//   int  lz_type_supported(int type)
//   int  lz_block_geometry(type, *block, *size)   weights and bytes per block (0: known)
//   int  lz_matmul(type, w, rows, k, x, ldx, n, y, ldy)   y[t][r] = W[r,:] . x[t,:]
//   void lz_dequantize(type, src, dst, n)
//   int  lz_quantize_act(type, x, out, k)      the activation row as the dot sees it (tests)
//   void lz_embed(type, table, n, ids, n_ids, out)
//   void lz_rmsnorm(x, y, count, w, group, eps); lz_add; lz_add_bias; lz_scale
//   void lz_rope_table(cs, pos0, n_tokens, inv_freq, half); lz_rope(x, n_tokens, ldx, ...)
//   int  lz_attention(q, ldq, k, v, ldkv, kc, vc, n_tokens, pos0, n_heads, n_kv_heads,
//                     head_dim, scale, window, out, ldo)
//   void lz_rope_table_at(cs, positions, n_rows, inv_freq, half)   rows at any positions
//   int  lz_attention_rows(q, ldq, k, v, ldkv, k_bases, v_bases, layer_off, positions,
//                          n_rows, n_heads, n_kv_heads, head_dim, scale, window, out, ldo)
//                                            one step of n_rows sequences, each its own cache
//   void lz_swiglu(g, u, out, n); lz_geglu(g, u, out, n)
//   int64_t lz_topk(x, n, k, idx, val)           the k largest entries, largest first
//   double lz_logprob(x, n, target)              log softmax(x)[target]
//   uint64_t lz_stream_read(buf, nbytes)     read a buffer with all threads (benchmarks)
#include <stdatomic.h>

#include "ops.h"
#include "quants.h"
#include "threads.h"

#ifndef LZ_VARIANT
#define LZ_VARIANT "generic"
#endif

__attribute__((constructor)) static void lz_init(void) {
    lz_init_portable(&lz_k);
#if defined(LZ_AVX2)
    lz_init_avx2(&lz_k);
#endif
#if defined(LZ_AVX512)
    lz_init_avx512(&lz_k);
#endif
#if defined(LZ_NEON)
    lz_init_neon(&lz_k);
#endif
#if defined(LZ_RVV)
    lz_init_rvv(&lz_k);
#endif
    lz_k.name = LZ_VARIANT;
}

LZ_API int lz_abi_version(void) { return 3; }
LZ_API const char *lz_variant(void) { return lz_k.name; }
LZ_API void lz_set_threads(int n) { lz_pool_set_threads(n); }
LZ_API int lz_get_threads(void) { return lz_pool_threads(); }

LZ_API int lz_type_supported(int type) {
    return type >= 0 && type < LZ_NTYPES && lz_k.types[type].tile != 0;
}

LZ_API int lz_block_geometry(int type, int *block, int *size) {
    if (type < 0 || type >= LZ_NTYPES || !LZ_GEOMETRY[type].size) return -1;
    *block = LZ_GEOMETRY[type].block;
    *size = LZ_GEOMETRY[type].size;
    return 0;
}

LZ_API void lz_dequantize(int type, const void *src, float *dst, int64_t n) {
    if (lz_type_supported(type) && n >= 0 && n % lz_k.types[type].block == 0)
        lz_k.types[type].dequant(src, dst, n);
}

// Write the activation row x (k values) the way `type`'s dot product sees it,
// as floats: for tests comparing with the oracle's quantize_activations.
LZ_API int lz_quantize_act(int type, const float *x, float *out, int64_t k) {
    if (!lz_type_supported(type)) return -1;
    if (k <= 0 || k > (1 << 20) || k % lz_k.types[type].block) return -2;   // buf is on the stack
    int kind = lz_k.types[type].xq;
    uint8_t buf[xq_row_bytes(kind, k) + 64];
    lz_k.quant[kind](x, buf, k);
    const int8_t *qs = (const int8_t *)buf;
    switch (kind) {
    case XQ_Q8: case XQ_Q81: {
        const float *d = xq8_d(buf, k);
        for (int64_t i = 0; i < k; i++) out[i] = qs[i] * d[i / 32];
        break;
    }
    case XQ_Q8K: {
        const float *d = xq8k_d(buf, k);
        for (int64_t i = 0; i < k; i++) out[i] = qs[i] * d[i / 256];
        break;
    }
    case XQ_F16:
        for (int64_t i = 0; i < k; i++) out[i] = lz_h2f(((const lz_half *)buf)[i]);
        break;
    case XQ_BF16:
        for (int64_t i = 0; i < k; i++) out[i] = lz_bf2f(((const uint16_t *)buf)[i]);
        break;
    default:
        for (int64_t i = 0; i < k; i++) out[i] = x[i];
    }
    return 0;
}

// ---------------------------------------------------------------- benchmarking

#define READ_CHUNK ((int64_t)1 << 17)   // words claimed at a time (1 MiB)

typedef struct { const uint64_t *p; int64_t n; uint64_t out[256]; atomic_llong next; } read_job;

static void read_worker(void *arg, int ith, int nth) {
    (void)nth;
    read_job *j = (read_job *)arg;
    uint64_t a = 0, b = 0, c = 0, d = 0;
    for (;;) {
        int64_t lo = atomic_fetch_add_explicit(&j->next, READ_CHUNK, memory_order_relaxed);
        if (lo >= j->n) break;
        int64_t hi = lo + READ_CHUNK < j->n ? lo + READ_CHUNK : j->n;
        for (int64_t i = lo; i + 4 <= hi; i += 4) {
            a += j->p[i]; b += j->p[i + 1]; c += j->p[i + 2]; d += j->p[i + 3];
        }
    }
    j->out[ith & 255] = a + b + c + d;
}

// Read nbytes from buf with every pool thread: the machine's streaming read rate,
// the yardstick for the matrix x vector kernels (bench/bench_kernels.py).
LZ_API uint64_t lz_stream_read(const void *buf, int64_t nbytes) {
    read_job j;
    j.p = (const uint64_t *)buf;
    j.n = nbytes / 8;
    memset(j.out, 0, sizeof j.out);
    atomic_init(&j.next, 0);
    lz_pool_run(read_worker, &j);
    uint64_t s = 0;
    for (int i = 0; i < 256; i++) s += j.out[i];
    return s;
}
