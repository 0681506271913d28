// RISC-V vector (RVV 1.0) kernels for every quantized type.
//
// Vector-length agnostic: we work on 16 weights at a time (one register group of
// e8, m1 holds 16 bytes at the minimum VLEN of 128 that the V extension requires),
// setting vl explicitly, so larger VLENs run the same code. Weights are unpacked to
// signed bytes with their offset applied; vwmul and vwmacc widen the products of a
// 32-weight block to 16-bit lanes and one vwredsum sums them into 32 bits. Q5's fifth bits are loaded straight into a mask
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

// sum(a[i] * x[i]) + sum(b[i] * x[16 + i]) over 16 + 16 signed bytes: one widening
// multiply and one widening multiply-add into 16-bit lanes (|a x + b y| <= 2 * 128 *
// 127 < 2^15), one widening sum into 32 bits.
AI int32_t dot32(vint8m1_t a, vint8m1_t b, vint8m1_t x0, vint8m1_t x1, vint32m1_t zero) {
    const size_t vl = 16;
    vint16m2_t p = __riscv_vwmul_vv_i16m2(a, x0, vl);
    p = __riscv_vwmacc_vv_i16m2(p, b, x1, vl);
    return __riscv_vmv_x_s_i32m1_i32(__riscv_vwredsum_vs_i16m2_i32m1(p, zero, vl));
}

// sum(a[i] * x[i]) over 16 signed bytes
AI int32_t dot16(vint8m1_t a, vint8m1_t x0, vint32m1_t zero) {
    const size_t vl = 16;
    vint16m2_t p = __riscv_vwmul_vv_i16m2(a, x0, vl);
    return __riscv_vmv_x_s_i32m1_i32(__riscv_vwredsum_vs_i16m2_i32m1(p, zero, vl));
}

AI vint8m1_t s8(vuint8m1_t v) { return __riscv_vreinterpret_v_u8m1_i8m1(v); }

// X(0), and X(1..3) for a tile of 4 rows (R is 1 or 4). Vector types have no size, so
// they make no arrays: the tiles keep one named variable per row instead.
#define FOR_ROWS(R, X)                                                                    \
    do {                                                                                  \
        X(0);                                                                             \
        if ((R) > 1) {                                                                    \
            X(1);                                                                         \
            X(2);                                                                         \
            X(3);                                                                         \
        }                                                                                 \
    } while (0)

// ---------------------------------------------------------------- 32-blocks

// One block's 32 weights as signed bytes (w0: weights 0-15, w1: 16-31), offsets
// applied; its d and (Q4_1/Q5_1) its minimum m.
AI void legacy_block(const int type, const uint8_t *blk, vint8m1_t *w0, vint8m1_t *w1, float *d,
                     float *m) {
    const size_t vl = 16;
    if (type == LZ_Q8_0) {
        *w0 = __riscv_vle8_v_i8m1((const int8_t *)blk + 2, vl);
        *w1 = __riscv_vle8_v_i8m1((const int8_t *)blk + 18, vl);
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
        *w0 = s8(lo);
        *w1 = s8(hi);
        if (type == LZ_Q4_0 || type == LZ_Q5_0) {
            const int off = type == LZ_Q4_0 ? 8 : 16;
            *w0 = __riscv_vsub_vx_i8m1(*w0, off, vl);
            *w1 = __riscv_vsub_vx_i8m1(*w1, off, vl);
        }
    }
    *d = h2f(blk);
    *m = type == LZ_Q4_1 || type == LZ_Q5_1 ? h2f(blk + 2) : 0.0f;
}

// R rows (1 or 4) x T tokens: the R rows' blocks are unpacked once for all T tokens,
// and each token's block is loaded once for the R rows; per row and token the sums
// run as in a one-token dot, so a result does not depend on its tile.
AI void legacy_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                    size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const size_t vl = 16;
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK;
    const vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, 1);
    float sum[4][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) sum[r][t] = 0.0f;
    for (int64_t b = 0; b < nb; b++) {
        vint8m1_t w0_0, w0_1, w0_2, w0_3, w1_0, w1_1, w1_2, w1_3;
        float d[4], m[4];
#define DECODE(i) legacy_block(type, w + i * ws + b * bs, &w0_##i, &w1_##i, &d[i], &m[i])
        FOR_ROWS(R, DECODE);
#undef DECODE
        for (int t = 0; t < T; t++) {
            const uint8_t *xt = x + t * xs;
            const int8_t *xb = (const int8_t *)xt + 32 * b;
            const vint8m1_t x0 = __riscv_vle8_v_i8m1(xb, vl), x1 = __riscv_vle8_v_i8m1(xb + 16, vl);
            const float dx = xq8_d(xt, k)[b], sx = with_min ? xq8_s(xt, k)[b] : 0.0f;
            // the minimum meets sum(x)
#define ACC(i)                                                                            \
    do {                                                                                  \
        if (with_min) sum[i][t] += m[i] * sx;                                             \
        sum[i][t] += d[i] * dx * (float)dot32(w0_##i, w1_##i, x0, x1, zero);              \
    } while (0)
            FOR_ROWS(R, ACC);
#undef ACC
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ldy + r] = sum[r][t];
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

// R rows (1 or 4) x T tokens; each super-block's scales and weights are unpacked once
// for all T tokens, and each token's values are loaded once for the R rows. Q4_K and
// Q5_K scale by 32: both halves of a part go into one sum.
AI void kq_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const size_t vl = 16;
    const int bs = lz_type_size(type);
    const int64_t nsb = k / QK_K;
    const int pair = type == LZ_Q4_K || type == LZ_Q5_K;
    const vint32m1_t zero = __riscv_vmv_v_x_i32m1(0, 1);
    float sum[4][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) sum[r][t] = 0.0f;
    for (int64_t sb = 0; sb < nsb; sb++) {
        int sc[4][16], mn[4][16];
        float d[4], dmin[4];
        for (int r = 0; r < R; r++) lz_kq_scales(type, w + r * ws + sb * bs, sc[r], mn[r], &d[r], &dmin[r]);
        int isum[4][T];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) isum[r][t] = 0;
        for (int j = 0; j < 8; j++) {
            vint8m1_t p0_0, p0_1, p0_2, p0_3, p1_0, p1_1, p1_2, p1_3;
#define DECODE(i)                                                                         \
    do {                                                                                  \
        p0_##i = kq_part(type, w + i * ws + sb * bs, j, 0);                               \
        p1_##i = kq_part(type, w + i * ws + sb * bs, j, 1);                               \
    } while (0)
            FOR_ROWS(R, DECODE);
#undef DECODE
            for (int t = 0; t < T; t++) {
                const int8_t *xq = (const int8_t *)(x + t * xs) + sb * QK_K + 32 * j;
                const vint8m1_t x0 = __riscv_vle8_v_i8m1(xq, vl), x1 = __riscv_vle8_v_i8m1(xq + 16, vl);
#define ACC(i)                                                                            \
    do {                                                                                  \
        if (pair)                                                                         \
            isum[i][t] += sc[i][2 * j] * dot32(p0_##i, p1_##i, x0, x1, zero);             \
        else                                                                              \
            isum[i][t] += sc[i][2 * j] * dot16(p0_##i, x0, zero) +                        \
                          sc[i][2 * j + 1] * dot16(p1_##i, x1, zero);                     \
    } while (0)
                FOR_ROWS(R, ACC);
#undef ACC
            }
        }
        for (int t = 0; t < T; t++) {
            const int16_t *bs16 = xq8k_bsums(x + t * xs, k) + sb * 16;
            const float dx = xq8k_d(x + t * xs, k)[sb];
            for (int r = 0; r < R; r++) {
                int msum = 0;
                for (int g = 0; g < 16; g++) msum += mn[r][g] * bs16[g];
                sum[r][t] += dx * (d[r] * (float)isum[r][t] - dmin[r] * (float)msum);
            }
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) y[t * ldy + r] = sum[r][t];
}

// ---------------------------------------------------------------- tiles

// An output block of nr rows x nt tokens: tiles of 4 rows x TT tokens, the leftover
// tokens in one narrower column of 4-row tiles, the last nr % 4 rows one at a time
// (tiles.h's TILES_KEEPING_ROWS). A single token also takes 4 rows at a time: its
// values are loaded once for the four rows.

// Tiles of 4 rows x 8 tokens for the 32-blocks (measured under qemu only, VLEN 256,
// Q4_1 1536 x 576 x 64 tokens, CPU time: 4 x 8 517 ms, 4 x 4 582 ms, main's 1 x 4
// 876 ms), 4 x 4 for the K-quants.
#ifndef LEGACY_T
#define LEGACY_T 8
#endif
#ifndef KQ_T
#define KQ_T 4
#endif
DEFINE_TILE_KEEPING_ROWS(tile_q4_0, legacy_tile, LZ_Q4_0, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q4_1, legacy_tile, LZ_Q4_1, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q5_0, legacy_tile, LZ_Q5_0, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q5_1, legacy_tile, LZ_Q5_1, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q8_0, legacy_tile, LZ_Q8_0, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q2_k, kq_tile, LZ_Q2_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q3_k, kq_tile, LZ_Q3_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q4_k, kq_tile, LZ_Q4_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q5_k, kq_tile, LZ_Q5_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q6_k, kq_tile, LZ_Q6_K, 4, KQ_T)

void lz_init_rvv(lz_kernels *k) { REGISTER_QUANT_TILES(k, 0); }
