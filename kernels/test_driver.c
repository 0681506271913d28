// Static test driver: the kernel library's ABI driven through stdin/stdout, so the
// tests (tests/test_kernels.py) can check foreign-architecture builds under
// qemu-user without a foreign Python.
//
// Input: a sequence of commands, each an int32 opcode followed by its arguments
// (little-endian, packed; arrays follow their sizes). Output: each command's
// results, raw, in order. Opcodes:
//   0 END
//   1 THREADS  i32 n
//   2 MATMUL   i32 type, i64 rows, k, n; u8 w[rows*row_bytes]; f32 x[n*k] -> f32 y[n*rows]
//   3 DEQUANT  i32 type, i64 n; u8 w[row_bytes(n)]                    -> f32 [n]
//   4 QACT     i32 type, i64 k; f32 x[k]                              -> f32 [k]
//   5 RMSNORM  i64 count, group; f32 eps; i32 has_w; f32 x[count], w[group] -> f32 [count]
//   6 ROPE     i64 n_tokens, pos0; i32 n_heads, head_dim, n_rot, neox; f64 inv[n_rot/2];
//              f32 x[n_tokens*n_heads*head_dim]                       -> f32 (same)
//   7 KVCACHE  i64 n_ctx, kv_dim                                      (fresh zeroed cache)
//   8 ATTN     i64 n, pos0; i32 n_heads, n_kv_heads, head_dim; f32 scale; i64 window;
//              f32 q[n*n_heads*hd], k[n*kv_dim], v[n*kv_dim]          -> f32 [n*n_heads*hd]
//   9 GLU      i32 gelu; i64 n; f32 g[n], u[n]                        -> f32 [n]
//  10 HWCAP                                                           -> u64 getauxval(AT_HWCAP)
//  11 VARIANT                                                         -> char[32]
//  12 HWCAP2                                                          -> u64 getauxval(AT_HWCAP2)
#define _GNU_SOURCE // getauxval
#include <stdio.h>
#include <stdlib.h>
#include <sys/auxv.h>

#include "ops.h"
#include "quants.h"

#ifndef AT_HWCAP2
#define AT_HWCAP2 26
#endif

LZ_API void lz_set_threads(int n);
LZ_API const char *lz_variant(void);
LZ_API void lz_dequantize(int type, const void *src, float *dst, int64_t n);
LZ_API int lz_quantize_act(int type, const float *x, float *out, int64_t k);

static void rd(void *p, size_t n) {
    if (n && fread(p, 1, n, stdin) != n) {
        fprintf(stderr, "test_driver: short input\n");
        exit(2);
    }
}
static int32_t rd_i32(void) { int32_t v; rd(&v, 4); return v; }
static int64_t rd_i64(void) { int64_t v; rd(&v, 8); return v; }
static float rd_f32(void) { float v; rd(&v, 4); return v; }
static void *rd_arr(size_t n) {
    void *p = malloc(n ? n : 1);
    if (!p) exit(3);
    rd(p, n);
    return p;
}
static void *zeros(size_t n) {
    void *p = calloc(1, n ? n : 1);
    if (!p) exit(3);
    return p;
}
static void wr(const void *p, size_t n) { fwrite(p, 1, n, stdout); }

static size_t row_bytes(int type, int64_t n) {
    const lz_type_ops *o = &lz_k.types[type];
    return (size_t)(n / o->block) * (size_t)o->type_size;
}

int main(void) {
    lz_half *kc = NULL, *vc = NULL;
    for (;;) {
        int32_t op = rd_i32();
        if (op == 0) break;
        switch (op) {
        case 1: lz_set_threads(rd_i32()); break;
        case 2: {
            int type = rd_i32();
            int64_t rows = rd_i64(), k = rd_i64(), n = rd_i64();
            uint8_t *w = rd_arr(row_bytes(type, k) * (size_t)rows);
            float *x = rd_arr((size_t)(n * k) * 4), *y = zeros((size_t)(n * rows) * 4);
            if (lz_matmul(type, w, rows, k, x, k, n, y, rows) != 0) exit(4);
            wr(y, (size_t)(n * rows) * 4);
            free(w); free(x); free(y);
            break;
        }
        case 3: {
            int type = rd_i32();
            int64_t n = rd_i64();
            uint8_t *w = rd_arr(row_bytes(type, n));
            float *y = zeros((size_t)n * 4);
            lz_dequantize(type, w, y, n);
            wr(y, (size_t)n * 4);
            free(w); free(y);
            break;
        }
        case 4: {
            int type = rd_i32();
            int64_t k = rd_i64();
            float *x = rd_arr((size_t)k * 4), *y = zeros((size_t)k * 4);
            lz_quantize_act(type, x, y, k);
            wr(y, (size_t)k * 4);
            free(x); free(y);
            break;
        }
        case 5: {
            int64_t count = rd_i64(), group = rd_i64();
            float eps = rd_f32();
            int has_w = rd_i32();
            float *x = rd_arr((size_t)count * 4), *w = rd_arr((size_t)group * 4);
            float *y = zeros((size_t)count * 4);
            lz_rmsnorm(x, y, count, has_w ? w : NULL, group, eps);
            wr(y, (size_t)count * 4);
            free(x); free(w); free(y);
            break;
        }
        case 6: {
            int64_t nt = rd_i64(), pos0 = rd_i64();
            int nh = rd_i32(), hd = rd_i32(), n_rot = rd_i32(), neox = rd_i32();
            double *inv = rd_arr((size_t)(n_rot / 2) * 8);
            size_t nx = (size_t)(nt * nh * hd);
            float *x = rd_arr(nx * 4), *cs = zeros((size_t)(nt * n_rot) * 4);
            lz_rope_table(cs, pos0, nt, inv, n_rot / 2);
            lz_rope(x, nt, (int64_t)nh * hd, nh, hd, n_rot, neox, cs);
            wr(x, nx * 4);
            free(inv); free(x); free(cs);
            break;
        }
        case 7: {
            int64_t n_ctx = rd_i64(), kv_dim = rd_i64();
            free(kc); free(vc);
            kc = zeros((size_t)(n_ctx * kv_dim) * 2);
            vc = zeros((size_t)(n_ctx * kv_dim) * 2);
            break;
        }
        case 8: {
            int64_t n = rd_i64(), pos0 = rd_i64();
            int nh = rd_i32(), nkv = rd_i32(), hd = rd_i32();
            float scale = rd_f32();
            int64_t window = rd_i64();
            size_t nq = (size_t)(n * nh * hd), nk = (size_t)(n * nkv * hd);
            float *q = rd_arr(nq * 4), *k = rd_arr(nk * 4), *v = rd_arr(nk * 4);
            float *o = zeros(nq * 4);
            if (lz_attention(q, (int64_t)nh * hd, k, v, (int64_t)nkv * hd, kc, vc, n, pos0, nh,
                             nkv, hd, scale, window, o, (int64_t)nh * hd) != 0)
                exit(5);
            wr(o, nq * 4);
            free(q); free(k); free(v); free(o);
            break;
        }
        case 9: {
            int gelu = rd_i32();
            int64_t n = rd_i64();
            float *g = rd_arr((size_t)n * 4), *u = rd_arr((size_t)n * 4), *o = zeros((size_t)n * 4);
            if (gelu) lz_geglu(g, u, o, n);
            else lz_swiglu(g, u, o, n);
            wr(o, (size_t)n * 4);
            free(g); free(u); free(o);
            break;
        }
        case 10: {
            uint64_t h = getauxval(AT_HWCAP);
            wr(&h, 8);
            break;
        }
        case 12: {
            uint64_t h = getauxval(AT_HWCAP2);
            wr(&h, 8);
            break;
        }
        case 11: {
            char name[32] = {0};
            snprintf(name, sizeof name, "%s", lz_variant());
            wr(name, 32);
            break;
        }
        default:
            fprintf(stderr, "test_driver: unknown opcode %d\n", op);
            return 2;
        }
    }
    fflush(stdout);
    return 0;
}
