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

// R rows x T tokens: each block is unpacked once and met by all T tokens (prompt
// batches and batched decoding); per token the sums run as in a one-token dot, so a
// result does not depend on the tile it was computed in.
AI void legacy_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                    size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK;
    const uint8x16_t m4 = vdupq_n_u8(0x0F), h5 = vdupq_n_u8(0x10);
    for (int r = 0; r < R; r++) {
        const uint8_t *row = w + r * ws;
        float32x4_t acc[T];
        float accm[T];
        for (int t = 0; t < T; t++) {
            acc[t] = vdupq_n_f32(0.0f);
            accm[t] = 0.0f;
        }
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk = row + b * bs;
            int8x16_t w0, w1;
            if (type == LZ_Q8_0) {
                w0 = vld1q_s8((const int8_t *)blk + 2);
                w1 = vld1q_s8((const int8_t *)blk + 18);
            } else {
                const int qs = type == LZ_Q4_0 ? 2 : type == LZ_Q4_1 ? 4 : type == LZ_Q5_0 ? 6 : 8;
                uint8x16_t v = vld1q_u8(blk + qs);
                uint8x16_t lo = vandq_u8(v, m4), hi = vshrq_n_u8(v, 4);
                if (type == LZ_Q5_0 || type == LZ_Q5_1) {
                    uint32_t qh = ld32(blk + (type == LZ_Q5_0 ? 2 : 4));
                    lo = vorrq_u8(lo, vandq_u8(bits16(qh), h5));
                    hi = vorrq_u8(hi, vandq_u8(bits16(qh >> 16), h5));
                }
                w0 = s8(lo);
                w1 = s8(hi);
                if (type == LZ_Q4_0) {
                    w0 = vsubq_s8(w0, vdupq_n_s8(8));
                    w1 = vsubq_s8(w1, vdupq_n_s8(8));
                } else if (type == LZ_Q5_0) {
                    w0 = vsubq_s8(w0, vdupq_n_s8(16));
                    w1 = vsubq_s8(w1, vdupq_n_s8(16));
                }
            }
            const float d = h2f(blk), m = with_min ? h2f(blk + 2) : 0.0f;
            for (int t = 0; t < T; t++) {
                const uint8_t *xt = x + t * xs;
                const int8_t *xb = (const int8_t *)xt + 32 * b;
                int32x4_t s = dot16(dot16(vdupq_n_s32(0), w0, vld1q_s8(xb)), w1, vld1q_s8(xb + 16));
                acc[t] = vfmaq_n_f32(acc[t], vcvtq_f32_s32(s), d * xq8_d(xt, k)[b]);
                if (with_min) accm[t] += m * xq8_s(xt, k)[b];   // the minimum meets sum(x)
            }
        }
        for (int t = 0; t < T; t++) y[t * ldy + r] = vaddvq_f32(acc[t]) + accm[t];
    }
}

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
            int32x4_t acc[T];
            for (int t = 0; t < T; t++) acc[t] = vdupq_n_s32(0);
            for (int j = 0; j < 8; j++)
                for (int h = 0; h < 2; h++) {
                    const int8x16_t part = kq_part(type, blk, j, h);
                    for (int t = 0; t < T; t++) {
                        const int8_t *xq = (const int8_t *)(x + t * xs) + sb * QK_K;
                        int32x4_t p = dot16(vdupq_n_s32(0), part, vld1q_s8(xq + 32 * j + 16 * h));
                        acc[t] = vmlaq_n_s32(acc[t], p, sc[2 * j + h]);
                    }
                }
            for (int t = 0; t < T; t++) {
                const int16_t *bs16 = xq8k_bsums(x + t * xs, k) + sb * 16;
                int msum = 0;
                for (int g = 0; g < 16; g++) msum += mn[g] * bs16[g];
                sum[t] += xq8k_d(x + t * xs, k)[sb] * (d * (float)vaddvq_s32(acc[t]) - dmin * (float)msum);
            }
        }
        for (int t = 0; t < T; t++) y[t * ldy + r] = sum[t];
    }
}

// ---------------------------------------------------------------- tiles

// Tiles of 1 row x 4 tokens: a block is unpacked once per 4 tokens (measured under
// qemu only, so no finer tuning; the 32 vector registers would hold wider tiles).
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

void lz_init_neon(lz_kernels *k) { REGISTER_QUANT_TILES(k, 0); }
