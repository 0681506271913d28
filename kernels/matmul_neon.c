// AArch64 NEON kernels for every quantized type (variants `neon` and `dotprod`).
//
// Weights are unpacked to signed bytes with their offset already applied (q - 8,
// q - 16, q - 32 all fit in int8), 16 at a time, and multiplied with the int8
// activations: with the dot product extension (variant dotprod) by sdot, four
// products per 32-bit lane; on baseline Armv8 by widening multiplies (products fit
// int16: 128 * 127) and pairwise accumulation into 32 bits. Q4_1/Q5_1 minimums use
// the activation block sums (m * s); K-quant minimums the 16-value sums (bsums), in
// integers.
#include <arm_neon.h>

#include "quants.h"
#include "tiles.h"

#define AI static inline __attribute__((always_inline))

AI uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
AI float h2f(const uint8_t *p) { __fp16 h; memcpy(&h, p, 2); return (float)h; }

AI int32x4_t dot16(int32x4_t acc, int8x16_t a, int8x16_t b) {
#if defined(__ARM_FEATURE_DOTPROD)
    return vdotq_s32(acc, a, b);
#else
    acc = vpadalq_s16(acc, vmull_s8(vget_low_s8(a), vget_low_s8(b)));
    return vpadalq_s16(acc, vmull_high_s8(a, b));
#endif
}

// 0xFF in byte i where bit i of u is set (i < 16).
AI uint8x16_t bits16(uint32_t u) {
    static const uint8_t m[16] = {1, 2, 4, 8, 16, 32, 64, 128, 1, 2, 4, 8, 16, 32, 64, 128};
    uint8x16_t v = vcombine_u8(vdup_n_u8((uint8_t)u), vdup_n_u8((uint8_t)(u >> 8)));
    return vtstq_u8(v, vld1q_u8(m));
}

AI int8x16_t s8(uint8x16_t v) { return vreinterpretq_s8_u8(v); }

// ---------------------------------------------------------------- 32-blocks

// One block's 32 weights as signed bytes (w0: weights 0-15, w1: 16-31), offsets
// applied; its d and (Q4_1/Q5_1) its minimum m.
AI void legacy_block(const int type, const uint8_t *blk, int8x16_t *w0, int8x16_t *w1,
                     float *d, float *m) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), h5 = vdupq_n_u8(0x10);
    if (type == LZ_Q8_0) {
        *w0 = vld1q_s8((const int8_t *)blk + 2);
        *w1 = vld1q_s8((const int8_t *)blk + 18);
    } else {
        const int qs = type == LZ_Q4_0 ? 2 : type == LZ_Q4_1 ? 4 : type == LZ_Q5_0 ? 6 : 8;
        uint8x16_t v = vld1q_u8(blk + qs);
        uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
        if (type == LZ_Q5_0 || type == LZ_Q5_1) {
            uint32_t qh = ld32(blk + (type == LZ_Q5_0 ? 2 : 4));
            lo = vorrq_u8(lo, vandq_u8(bits16(qh), h5));
            hi = vorrq_u8(hi, vandq_u8(bits16(qh >> 16), h5));
        }
        *w0 = s8(lo);
        *w1 = s8(hi);
        if (type == LZ_Q4_0 || type == LZ_Q5_0) {
            const int8x16_t off = vdupq_n_s8(type == LZ_Q4_0 ? 8 : 16);
            *w0 = vsubq_s8(*w0, off);
            *w1 = vsubq_s8(*w1, off);
        }
    }
    *d = h2f(blk);
    *m = type == LZ_Q4_1 || type == LZ_Q5_1 ? h2f(blk + 2) : 0.0f;
}

AI float dotf(const float *a, const float *b, int64_t n) {
    float32x4_t acc = vdupq_n_f32(0.0f);
    int64_t i = 0;
    for (; i + 4 <= n; i += 4) acc = vfmaq_f32(acc, vld1q_f32(a + i), vld1q_f32(b + i));
    float s = vaddvq_f32(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// 1 row x T tokens: the block is unpacked once and met by all T tokens.
AI void legacy_tile(const int type, const int T, int64_t k, const uint8_t *w,
                    const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK;
    float32x4_t acc[T];
    float accm[T];
    for (int t = 0; t < T; t++) {
        acc[t] = vdupq_n_f32(0.0f);
        accm[t] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t w0, w1;
        float d, m;
        legacy_block(type, w + b * bs, &w0, &w1, &d, &m);
        for (int t = 0; t < T; t++) {
            const uint8_t *xt = x + t * xs;
            const int8_t *xb = (const int8_t *)xt + 32 * b;
            int32x4_t s = dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(xb)), w1, vld1q_s8(xb + 16));
            acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * xq8_d(xt, k)[b]);
            if (with_min) accm[t] += m * xq8_s(xt, k)[b];   // the minimum meets sum(x)
        }
    }
    for (int t = 0; t < T; t++) y[t * ldy] = vaddvq_f32(acc[t]) + accm[t];
}

// 4 rows x T tokens: the four rows' blocks are unpacked once for all T tokens, each
// token's block is loaded once for the four rows, and the four rows' integer sums
// are folded into one vector (pairwise adds) that takes one convert and one
// multiply-add by the four rows' d times the token's scale. A token's four results
// are adjacent in y. The minimums (Q4_1/Q5_1) are kept per row and block and meet
// the tokens' block sums in one dot product per row and token at the end.
AI void legacy_tile4(const int type, const int T, int64_t k, const uint8_t *w, size_t ws,
                     const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK;
    float mins[4][with_min ? nb : 1];
    float32x4_t acc[T];
    for (int t = 0; t < T; t++) acc[t] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t w0[4], w1[4];
        float d[4];
        for (int r = 0; r < 4; r++)
            legacy_block(type, w + r * ws + b * bs, &w0[r], &w1[r], &d[r], &mins[r][with_min ? b : 0]);
        const float32x4_t dv = vld1q_f32(d);
        for (int t = 0; t < T; t++) {
            const uint8_t *xt = x + t * xs;
            const int8x16_t x0 = vld1q_s8((const int8_t *)xt + 32 * b);
            const int8x16_t x1 = vld1q_s8((const int8_t *)xt + 32 * b + 16);
            int32x4_t s[4];
            for (int r = 0; r < 4; r++) s[r] = dot16(dot16(vdupq_n_s32(0), w0[r], x0), w1[r], x1);
            const int32x4_t s4 = vpaddq_s32(vpaddq_s32(s[0], s[1]), vpaddq_s32(s[2], s[3]));
            acc[t] = vfmaq_f32(acc[t], vcvtq_f32_s32(s4), vmulq_n_f32(dv, xq8_d(xt, k)[b]));
        }
    }
    for (int t = 0; t < T; t++) {
        float32x4_t out = acc[t];
        if (with_min) {
            const float *st = xq8_s(x + t * xs, k);
            const float m4[4] = {dotf(mins[0], st, nb), dotf(mins[1], st, nb),
                                 dotf(mins[2], st, nb), dotf(mins[3], st, nb)};
            out = vaddq_f32(out, vld1q_f32(m4));
        }
        vst1q_f32(y + t * ldy, out);
    }
}

#if defined(__ARM_FEATURE_MATMUL_INT8)
// 4 rows x 2P tokens with the int8 matrix multiply (smmla, variant i8mm): one smmla
// multiplies 2 rows x 8 weights by 2 tokens x 8 values into the 2 x 2 sums, so four
// of them cover a block for a pair of rows and a pair of tokens. The operands are
// the two rows' (tokens') 8-byte pieces side by side, made with 64-bit zips. Sums
// come as (row a, token c), (a, e), (b, c), (b, e), scaled by d_a dx_c, ...
AI void zip_pairs(int8x16_t a0, int8x16_t a1, int8x16_t b0, int8x16_t b1, int8x16_t out[4]) {
    const int64x2_t p0 = vreinterpretq_s64_s8(a0), p1 = vreinterpretq_s64_s8(a1);
    const int64x2_t q0 = vreinterpretq_s64_s8(b0), q1 = vreinterpretq_s64_s8(b1);
    out[0] = vreinterpretq_s8_s64(vzip1q_s64(p0, q0));
    out[1] = vreinterpretq_s8_s64(vzip2q_s64(p0, q0));
    out[2] = vreinterpretq_s8_s64(vzip1q_s64(p1, q1));
    out[3] = vreinterpretq_s8_s64(vzip2q_s64(p1, q1));
}

AI void legacy_tile4_mm(const int type, const int P, int64_t k, const uint8_t *w, size_t ws,
                        const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK;
    float mins[4][with_min ? nb : 1];
    float32x4_t acc[2][P];
    for (int h = 0; h < 2; h++)
        for (int p = 0; p < P; p++) acc[h][p] = vdupq_n_f32(0.0f);
    for (int64_t b = 0; b < nb; b++) {
        int8x16_t w0[4], w1[4], W[2][4];
        float d[4];
        for (int r = 0; r < 4; r++)
            legacy_block(type, w + r * ws + b * bs, &w0[r], &w1[r], &d[r], &mins[r][with_min ? b : 0]);
        zip_pairs(w0[0], w1[0], w0[1], w1[1], W[0]);
        zip_pairs(w0[2], w1[2], w0[3], w1[3], W[1]);
        const float32x4_t d01 = vcombine_f32(vdup_n_f32(d[0]), vdup_n_f32(d[1]));
        const float32x4_t d23 = vcombine_f32(vdup_n_f32(d[2]), vdup_n_f32(d[3]));
        for (int p = 0; p < P; p++) {
            const uint8_t *xc = x + 2 * p * xs, *xe = xc + xs;
            const int8_t *bc = (const int8_t *)xc + 32 * b, *be = (const int8_t *)xe + 32 * b;
            int8x16_t X[4];
            zip_pairs(vld1q_s8(bc), vld1q_s8(bc + 16), vld1q_s8(be), vld1q_s8(be + 16), X);
            const float dxv[2] = {xq8_d(xc, k)[b], xq8_d(xe, k)[b]};
            const float32x2_t dx = vld1_f32(dxv);
            const float32x4_t dx2 = vcombine_f32(dx, dx);
            for (int h = 0; h < 2; h++) {
                int32x4_t s = vdupq_n_s32(0);
                for (int i = 0; i < 4; i++) s = vmmlaq_s32(s, W[h][i], X[i]);
                acc[h][p] = vfmaq_f32(acc[h][p], vcvtq_f32_s32(s), vmulq_f32(h ? d23 : d01, dx2));
            }
        }
    }
    for (int p = 0; p < P; p++)
        for (int h = 0; h < 2; h++) {
            float v[4];
            vst1q_f32(v, acc[h][p]);
            for (int i = 0; i < 4; i++) {
                const int r = 2 * h + (i >> 1), t = 2 * p + (i & 1);
                if (with_min) v[i] += dotf(mins[r], xq8_s(x + t * xs, k), nb);
                y[t * ldy + r] = v[i];
            }
        }
}
#endif

// ---------------------------------------------------------------- K-quants

// Weights 32j + 16h .. +15 (j = 0..7, h = 0..1) of super-block b, signed.
AI int8x16_t kq_part(const int type, const uint8_t *b, int j, int h) {
    const uint8x16_t m4 = vdupq_n_u8(0x0F), m3 = vdupq_n_u8(3);
    const int l = 16 * h; // position inside the 32-byte source rows
    if (type == LZ_Q4_K || type == LZ_Q5_K) {
        uint8x16_t q = vld1q_u8(b + (type == LZ_Q4_K ? 16 : 48) + 32 * (j >> 1) + l);
        uint8x16_t v = j & 1 ? vshrq_n_u8(q, 4) : vandq_u8(q, m4);
        if (type == LZ_Q5_K) {
            uint8x16_t qh = vld1q_u8(b + 16 + l);
            uint8x16_t hb = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)-j)), vdupq_n_u8(1));
            v = vorrq_u8(v, vshlq_n_u8(hb, 4));
        }
        return s8(v);
    }
    if (type == LZ_Q6_K) {
        const int half = j >> 2, q = j & 3;
        uint8x16_t ql = vld1q_u8(b + 64 * half + 32 * (q & 1) + l);
        uint8x16_t qh = vld1q_u8(b + 128 + 32 * half + l);
        uint8x16_t lo = q >= 2 ? vshrq_n_u8(ql, 4) : vandq_u8(ql, m4);
        uint8x16_t hi = vandq_u8(vshlq_u8(qh, vdupq_n_s8((int8_t)(-2 * q))), m3);
        return vsubq_s8(s8(vorrq_u8(lo, vshlq_n_u8(hi, 4))), vdupq_n_s8(32));
    }
    const int half = j >> 2, m = j & 3;
    uint8x16_t q = vld1q_u8(b + (type == LZ_Q2_K ? 16 : 32) + 32 * half + l);
    uint8x16_t v = vandq_u8(vshlq_u8(q, vdupq_n_s8((int8_t)(-2 * m))), m3);
    if (type == LZ_Q2_K) return s8(v);
    // Q3_K: a clear high bit means -4
    uint8x16_t hm = vld1q_u8(b + l);
    uint8x16_t hb = vandq_u8(vshlq_u8(hm, vdupq_n_s8((int8_t)-(4 * half + m))), vdupq_n_u8(1));
    return vsubq_s8(s8(vorrq_u8(v, vshlq_n_u8(hb, 2))), vdupq_n_s8(4));
}

// Sums over the weights of part j (two halves of 16, one or two group scales) for one
// row and one token; Q4_K/Q5_K scale by 32, so both halves take one multiply.
AI int32x4_t kq_dot(const int type, const int8x16_t p0, const int8x16_t p1, const int8_t *xq,
                    int j, const int *sc, int32x4_t acc) {
    const int8x16_t x0 = vld1q_s8(xq + 32 * j), x1 = vld1q_s8(xq + 32 * j + 16);
    if (type == LZ_Q4_K || type == LZ_Q5_K)
        return vmlaq_n_s32(acc, dot16(dot16(vdupq_n_s32(0), p0, x0), p1, x1), sc[2 * j]);
    acc = vmlaq_n_s32(acc, dot16(vdupq_n_s32(0), p0, x0), sc[2 * j]);
    return vmlaq_n_s32(acc, dot16(vdupq_n_s32(0), p1, x1), sc[2 * j + 1]);
}

// The minimums' part for one row and token: sum of mn[g] * bsums[g] over 16 groups.
AI int32_t kq_msum(const int *mn, const int16_t *bsums) {
    const int16x8_t b0 = vld1q_s16(bsums), b1 = vld1q_s16(bsums + 8);
    int32x4_t s = vmulq_s32(vld1q_s32(mn), vmovl_s16(vget_low_s16(b0)));
    s = vmlaq_s32(s, vld1q_s32(mn + 4), vmovl_high_s16(b0));
    s = vmlaq_s32(s, vld1q_s32(mn + 8), vmovl_s16(vget_low_s16(b1)));
    s = vmlaq_s32(s, vld1q_s32(mn + 12), vmovl_high_s16(b1));
    return vaddvq_s32(s);
}

// R rows (1 or 4) x T tokens: each super-block's scales and weights are unpacked once
// for all T tokens, and each token's values are loaded once for the R rows. With four
// rows, the rows' integer sums fold into one vector (pairwise adds) scaled by the
// four rows' d at once, and a token's four results are adjacent in y.
AI void kq_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q2_K || type == LZ_Q4_K || type == LZ_Q5_K;
    const int64_t nsb = k / QK_K;
    float32x4_t out[T];
    float out1[T];
    for (int t = 0; t < T; t++) {
        out[t] = vdupq_n_f32(0.0f);
        out1[t] = 0.0f;
    }
    for (int64_t sb = 0; sb < nsb; sb++) {
        int sc[R][16], mn[R][16];
        float d[4] = {0}, dmin[4] = {0};
        for (int r = 0; r < R; r++)
            lz_kq_scales(type, w + r * ws + sb * bs, sc[r], mn[r], &d[r], &dmin[r]);
        int32x4_t acc[R][T];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) acc[r][t] = vdupq_n_s32(0);
        for (int j = 0; j < 8; j++) {
            int8x16_t p0[R], p1[R];
            for (int r = 0; r < R; r++) {
                p0[r] = kq_part(type, w + r * ws + sb * bs, j, 0);
                p1[r] = kq_part(type, w + r * ws + sb * bs, j, 1);
            }
            for (int t = 0; t < T; t++) {
                const int8_t *xq = (const int8_t *)(x + t * xs) + sb * QK_K;
                for (int r = 0; r < R; r++) acc[r][t] = kq_dot(type, p0[r], p1[r], xq, j, sc[r], acc[r][t]);
            }
        }
        for (int t = 0; t < T; t++) {
            const int16_t *bsums = xq8k_bsums(x + t * xs, k) + sb * 16;
            const float dx = xq8k_d(x + t * xs, k)[sb];
            if (R == 1) {
                const float msum = with_min ? (float)kq_msum(mn[0], bsums) : 0.0f;
                out1[t] += dx * (d[0] * (float)vaddvq_s32(acc[0][t]) - dmin[0] * msum);
                continue;
            }
            const int32x4_t s4 = vpaddq_s32(vpaddq_s32(acc[0][t], acc[R > 1][t]),
                                            vpaddq_s32(acc[R > 2 ? 2 : 0][t], acc[R > 3 ? 3 : 0][t]));
            float32x4_t v = vmulq_f32(vld1q_f32(d), vcvtq_f32_s32(s4));
            if (with_min) {
                const int32_t ms[4] = {kq_msum(mn[0], bsums), kq_msum(mn[R > 1], bsums),
                                       kq_msum(mn[R > 2 ? 2 : 0], bsums), kq_msum(mn[R > 3 ? 3 : 0], bsums)};
                v = vsubq_f32(v, vmulq_f32(vld1q_f32(dmin), vcvtq_f32_s32(vld1q_s32(ms))));
            }
            out[t] = vfmaq_n_f32(out[t], v, dx);
        }
    }
    for (int t = 0; t < T; t++) {
        if (R == 1) y[t * ldy] = out1[t];
        else vst1q_f32(y + t * ldy, out[t]);
    }
}

// ---------------------------------------------------------------- tiles

#if defined(__ARM_FEATURE_MATMUL_INT8)
// Pairs of tokens go through smmla; an odd one left over takes the dot products.
AI void legacy_tile4_i8mm(const int type, const int T, int64_t k, const uint8_t *w, size_t ws,
                          const uint8_t *x, size_t xs, float *y, size_t ldy) {
    if (T >= 2) legacy_tile4_mm(type, T / 2, k, w, ws, x, xs, y, ldy);
    if (T & 1) legacy_tile4(type, 1, k, w, ws, x + (T - 1) * xs, xs, y + (T - 1) * ldy, ldy);
}
#define LEGACY_TILE4 legacy_tile4_i8mm
#else
#define LEGACY_TILE4 legacy_tile4
#endif

// An output block of nr rows x nt tokens: tiles of 4 rows x TT tokens, the leftover
// tokens in one narrower column of 4-row tiles, the last nr % 4 rows one at a time
// (tiles.h's TILES_KEEPING_ROWS). A single token also takes 4 rows at a time: four
// weight streams, and the token's values loaded once. legacy_tiles is the R-row form
// tiles.h calls, over the 4-row and 1-row kernels (R is a compile-time constant).
AI void legacy_tiles(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                     size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    if (R == 4) LEGACY_TILE4(type, T, k, w, ws, x, xs, y, ldy);
    else legacy_tile(type, T, k, w, x, xs, y, ldy);
}

// Tiles of 4 rows x 8 tokens with the dot products, 4 x 4 with smmla (measured under
// qemu only, Q4_1 1536 x 576 x 64 tokens, CPU time: dotprod 4 x 8 100.6 ms, 4 x 4
// 113.4 ms; i8mm 4 x 4 84.1 ms, 4 x 8 85.5 ms). Within NEON's 32 registers: 4 x 8
// dot products hold 8 sums, 8 weight and 2 + 4 activation/partial registers.
#ifndef LEGACY_T
#if defined(__ARM_FEATURE_MATMUL_INT8)
#define LEGACY_T 4
#else
#define LEGACY_T 8
#endif
#endif
#ifndef KQ_T
#define KQ_T 4
#endif
DEFINE_TILE_KEEPING_ROWS(tile_q4_0, legacy_tiles, LZ_Q4_0, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q4_1, legacy_tiles, LZ_Q4_1, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q5_0, legacy_tiles, LZ_Q5_0, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q5_1, legacy_tiles, LZ_Q5_1, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q8_0, legacy_tiles, LZ_Q8_0, 4, LEGACY_T)
DEFINE_TILE_KEEPING_ROWS(tile_q2_k, kq_tile, LZ_Q2_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q3_k, kq_tile, LZ_Q3_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q4_k, kq_tile, LZ_Q4_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q5_k, kq_tile, LZ_Q5_K, 4, KQ_T)
DEFINE_TILE_KEEPING_ROWS(tile_q6_k, kq_tile, LZ_Q6_K, 4, KQ_T)

// The 4-row tiles keep the rows' minimums on the stack (4 x k/32 floats): rows longer
// than 2^20 take the portable kernels (threads.c gives 4 MiB stacks).
void lz_init_neon(lz_kernels *k) { REGISTER_QUANT_TILES(k, 1 << 20); }
