// RISC-V vector (RVV 1.0) kernels for every quantized type.
//
// Vector-length agnostic: we work on 16 weights at a time (one register group of
// e8, m1 holds 16 bytes at the minimum VLEN of 128 that the V extension requires),
// setting vl explicitly, so larger VLENs run the same code. Weights are unpacked to
// signed bytes with their offset applied; vwmul widens the products to 16 bits and
// vwredsum sums them into 32. Q5's fifth bits are loaded straight into a mask
// register (vlm: bit i of the bytes is element i's mask bit), as the layout matches.
//
// Only unit-stride loads and plain arithmetic: qemu-user before 8.1 mistranslates
// some other vector instructions, and the tests run under it.
#include <riscv_vector.h>

#include "quants.h"
#include "tiles.h"

#define AI static inline __attribute__((always_inline))

AI uint16_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
AI float h2f(const uint8_t *p) { return lz_h2f(ld16(p)); }

// sum(a[i] * b[i]) over 16 signed bytes
AI int32_t dot16(vint8m1_t a, const int8_t *x) {
    const size_t vl = 16;
    vint16m2_t p = __riscv_vwmul_vv_i16m2(a, __riscv_vle8_v_i8m1(x, vl), vl);
    vint32m1_t z = __riscv_vmv_v_x_i32m1(0, 1);
    return __riscv_vmv_x_s_i32m1_i32(__riscv_vwredsum_vs_i16m2_i32m1(p, z, vl));
}

AI vint8m1_t s8(vuint8m1_t v) { return __riscv_vreinterpret_v_u8m1_i8m1(v); }

// ---------------------------------------------------------------- 32-blocks

// R rows x T tokens: each block is unpacked once and met by all T tokens; per token
// the sums run as in a one-token dot, so a result does not depend on its tile.
AI void legacy_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                    size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const size_t vl = 16;
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK;
    for (int r = 0; r < R; r++) {
        float sum[T];
        for (int t = 0; t < T; t++) sum[t] = 0.0f;
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = w + r * ws + b * bs;
            vint8m1_t w0, w1;
            if (type == LZ_Q8_0) {
                w0 = __riscv_vle8_v_i8m1((const int8_t *)blk + 2, vl);
                w1 = __riscv_vle8_v_i8m1((const int8_t *)blk + 18, vl);
            } else {
                const int qs = type == LZ_Q4_0 ? 2 : type == LZ_Q4_1 ? 4 : type == LZ_Q5_0 ? 6 : 8;
                vuint8m1_t v = __riscv_vle8_v_u8m1(blk + qs, vl);
                vuint8m1_t lo = __riscv_vand_vx_u8m1(v, 0x0F, vl);
                vuint8m1_t hi = __riscv_vsrl_vx_u8m1(v, 4, vl);
                if (type == LZ_Q5_0 || type == LZ_Q5_1) {
                    const uint8_t *qh = blk + (type == LZ_Q5_0 ? 2 : 4);
                    vbool8_t m0 = __riscv_vlm_v_b8(qh, vl), m1 = __riscv_vlm_v_b8(qh + 2, vl);
                    lo = __riscv_vor_vx_u8m1_mu(m0, lo, lo, 0x10, vl);
                    hi = __riscv_vor_vx_u8m1_mu(m1, hi, hi, 0x10, vl);
                }
                w0 = s8(lo);
                w1 = s8(hi);
                if (type == LZ_Q4_0 || type == LZ_Q5_0) {
                    const int off = type == LZ_Q4_0 ? 8 : 16;
                    w0 = __riscv_vsub_vx_i8m1(w0, off, vl);
                    w1 = __riscv_vsub_vx_i8m1(w1, off, vl);
                }
            }
            const float d = h2f(blk), m = with_min ? h2f(blk + 2) : 0.0f;
            for (int t = 0; t < T; t++) {
                const uint8_t *xt = x + t * xs;
                const int8_t *xb = (const int8_t *)xt + 32 * b;
                if (with_min) sum[t] += m * xq8_s(xt, k)[b];   // the minimum meets sum(x)
                int32_t isum = dot16(w0, xb) + dot16(w1, xb + 16);
                sum[t] += d * xq8_d(xt, k)[b] * (float)isum;
            }
        }
        for (int t = 0; t < T; t++) y[t * ldy + r] = sum[t];
    }
}

// ---------------------------------------------------------------- K-quants

// Weights 32j + 16h .. +15 (j = 0..7, h = 0..1) of super-block b, signed.
AI vint8m1_t kq_part(const int type, const uint8_t *b, int j, int h) {
    const size_t vl = 16;
    const int l = 16 * h;
    if (type == LZ_Q4_K || type == LZ_Q5_K) {
        vuint8m1_t q = __riscv_vle8_v_u8m1(b + (type == LZ_Q4_K ? 16 : 48) + 32 * (j >> 1) + l, vl);
        vuint8m1_t v = j & 1 ? __riscv_vsrl_vx_u8m1(q, 4, vl) : __riscv_vand_vx_u8m1(q, 0x0F, vl);
        if (type == LZ_Q5_K) {
            vuint8m1_t qh = __riscv_vle8_v_u8m1(b + 16 + l, vl);
            vuint8m1_t hb = __riscv_vand_vx_u8m1(__riscv_vsrl_vx_u8m1(qh, j, vl), 1, vl);
            v = __riscv_vor_vv_u8m1(v, __riscv_vsll_vx_u8m1(hb, 4, vl), vl);
        }
        return s8(v);
    }
    if (type == LZ_Q6_K) {
        const int half = j >> 2, q = j & 3;
        vuint8m1_t ql = __riscv_vle8_v_u8m1(b + 64 * half + 32 * (q & 1) + l, vl);
        vuint8m1_t qh = __riscv_vle8_v_u8m1(b + 128 + 32 * half + l, vl);
        vuint8m1_t lo = q >= 2 ? __riscv_vsrl_vx_u8m1(ql, 4, vl) : __riscv_vand_vx_u8m1(ql, 0x0F, vl);
        vuint8m1_t hi = __riscv_vand_vx_u8m1(__riscv_vsrl_vx_u8m1(qh, 2 * q, vl), 3, vl);
        vuint8m1_t v = __riscv_vor_vv_u8m1(lo, __riscv_vsll_vx_u8m1(hi, 4, vl), vl);
        return __riscv_vsub_vx_i8m1(s8(v), 32, vl);
    }
    const int half = j >> 2, m = j & 3;
    vuint8m1_t q = __riscv_vle8_v_u8m1(b + (type == LZ_Q2_K ? 16 : 32) + 32 * half + l, vl);
    vuint8m1_t v = __riscv_vand_vx_u8m1(__riscv_vsrl_vx_u8m1(q, 2 * m, vl), 3, vl);
    if (type == LZ_Q2_K) return s8(v);
    // Q3_K: a clear high bit means -4
    vuint8m1_t hm = __riscv_vle8_v_u8m1(b + l, vl);
    vuint8m1_t hb = __riscv_vand_vx_u8m1(__riscv_vsrl_vx_u8m1(hm, 4 * half + m, vl), 1, vl);
    v = __riscv_vor_vv_u8m1(v, __riscv_vsll_vx_u8m1(hb, 2, vl), vl);
    return __riscv_vsub_vx_i8m1(s8(v), 4, vl);
}

// R rows x T tokens; each super-block's scales and weights are unpacked once for
// all T tokens.
AI void kq_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int64_t nsb = k / QK_K;
    for (int r = 0; r < R; r++) {
        float sum[T];
        for (int t = 0; t < T; t++) sum[t] = 0.0f;
        for (int64_t sb = 0; sb < nsb; sb++) {
            const uint8_t *blk = w + r * ws + sb * bs;
            int sc[16], mn[16];
            float d, dmin;
            lz_kq_scales(type, blk, sc, mn, &d, &dmin);
            int isum[T];
            for (int t = 0; t < T; t++) isum[t] = 0;
            for (int j = 0; j < 8; j++)
                for (int h = 0; h < 2; h++) {
                    const vint8m1_t part = kq_part(type, blk, j, h);
                    for (int t = 0; t < T; t++) {
                        const int8_t *xq = (const int8_t *)(x + t * xs) + sb * QK_K;
                        isum[t] += sc[2 * j + h] * dot16(part, xq + 32 * j + 16 * h);
                    }
                }
            for (int t = 0; t < T; t++) {
                const int16_t *bs16 = xq8k_bsums(x + t * xs, k) + sb * 16;
                int msum = 0;
                for (int g = 0; g < 16; g++) msum += mn[g] * bs16[g];
                sum[t] += xq8k_d(x + t * xs, k)[sb] * (d * (float)isum[t] - dmin * (float)msum);
            }
        }
        for (int t = 0; t < T; t++) y[t * ldy + r] = sum[t];
    }
}

// ---------------------------------------------------------------- tiles

// Tiles of 1 row x 4 tokens: a block is unpacked once per 4 tokens (measured under
// qemu only, so no finer tuning).
#define LEGACY_T 4
#define KQ_T 4
DEFINE_TILE(tile_q4_0, legacy_tile, LZ_Q4_0, 1, LEGACY_T)
DEFINE_TILE(tile_q4_1, legacy_tile, LZ_Q4_1, 1, LEGACY_T)
DEFINE_TILE(tile_q5_0, legacy_tile, LZ_Q5_0, 1, LEGACY_T)
DEFINE_TILE(tile_q5_1, legacy_tile, LZ_Q5_1, 1, LEGACY_T)
DEFINE_TILE(tile_q8_0, legacy_tile, LZ_Q8_0, 1, LEGACY_T)
DEFINE_TILE(tile_q2_k, kq_tile, LZ_Q2_K, 1, KQ_T)
DEFINE_TILE(tile_q3_k, kq_tile, LZ_Q3_K, 1, KQ_T)
DEFINE_TILE(tile_q4_k, kq_tile, LZ_Q4_K, 1, KQ_T)
DEFINE_TILE(tile_q5_k, kq_tile, LZ_Q5_K, 1, KQ_T)
DEFINE_TILE(tile_q6_k, kq_tile, LZ_Q6_K, 1, KQ_T)

void lz_init_rvv(lz_kernels *k) { REGISTER_QUANT_TILES(k, 0); }
