// AVX2 (+FMA, F16C) kernels for every quantized type.
//
// The same plan as matmul_avx512.c at 256 bits and without VNNI: one 32-weight
// block (or K-quant chunk of 32) per register; maddubs multiplies unsigned weight
// bytes by signed activation bytes into 16-bit pair sums (no overflow: 2*63*127 <
// 32767), madd with 16-bit ones (or scales) widens to 32 bits. Offsets and minimums
// go through the float pass at the end (see matmul_avx512.c).
#include <immintrin.h>

#include "quants.h"
#include "tiles.h"

#define AI static inline __attribute__((always_inline))

#define MAX_K 32768
#ifndef LZ_PF_DIST
#define LZ_PF_DIST 3072
#endif

AI uint32_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
AI uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
AI float h2f(const uint8_t *p) { return _cvtsh_ss((unsigned short)ld16(p)); }

AI float hsum8(__m256 v) {
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    return _mm_cvtss_f32(h);
}

AI float dotf(const float *a, const float *b, int64_t n) {
    __m256 acc = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    float s = hsum8(acc);
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

// 16 bytes of nibbles -> 32 bytes: low nibbles (weights 0-15), then high (16-31).
AI __m256i nibbles(const uint8_t *q) {
    __m128i v = _mm_loadu_si128((const __m128i *)q);
    __m256i t = _mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1);
    return _mm256_and_si256(t, _mm256_set1_epi8(0x0F));
}

// The 32 bits of u as 32 bytes, 0xFF where the bit is set (bit i -> byte i).
AI __m256i bits_to_bytes(uint32_t u) {
    const __m256i shuf = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                          2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x(0x8040201008040201LL);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)u), shuf);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

// Sum of products of unsigned bytes w and signed bytes x, as 8 int32.
AI __m256i dot_u8s8(__m256i w, __m256i x) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1));
}

// ---------------------------------------------------------------- 32-blocks

// Weights of one block as unsigned bytes (Q8_0: |w|, signs returned in *sign), its
// d, and its float-pass constant (d for the offset types, m for the minimum types).
AI __m256i legacy_block(const int type, const uint8_t *b, __m256i *sign, float *d, float *c) {
    __m256i v;
    *d = h2f(b);
    if (type == LZ_Q8_0) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(b + 2));
        *sign = q;
        return _mm256_sign_epi8(q, q);
    }
    if (type == LZ_Q4_0) {
        v = nibbles(b + 2);
        *c = *d;
    } else if (type == LZ_Q4_1) {
        v = nibbles(b + 4);
        *c = h2f(b + 2);
    } else if (type == LZ_Q5_0) {
        v = _mm256_or_si256(nibbles(b + 6), _mm256_and_si256(bits_to_bytes(ld32(b + 2)), _mm256_set1_epi8(16)));
        *c = *d;
    } else {
        v = _mm256_or_si256(nibbles(b + 8), _mm256_and_si256(bits_to_bytes(ld32(b + 4)), _mm256_set1_epi8(16)));
        *c = h2f(b + 2);
    }
    return v;
}

AI void legacy_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                    size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int has_c = type != LZ_Q8_0;
    const int64_t nb = k / QK;
    float cb[R][has_c ? nb : 1];
    __m256 acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t b = 0; b < nb; b++) {
        __m256i W[R], SG[R];
        float D[R];
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = w + r * ws + b * bs;
            if (T == 1) _mm_prefetch((const char *)blk + LZ_PF_DIST, _MM_HINT_T0);
            float c = 0.0f;
            W[r] = legacy_block(type, blk, &SG[r], &D[r], &c);
            if (has_c) cb[r][b] = c;
        }
        for (int t = 0; t < T; t++) {
            const uint8_t *xr = x + t * xs;
            __m256i X = _mm256_loadu_si256((const __m256i *)(xr + 32 * b));
            float dx = xq8_d(xr, k)[b];
            for (int r = 0; r < R; r++) {
                __m256i xv = type == LZ_Q8_0 ? _mm256_sign_epi8(X, SG[r]) : X;
                __m256 p = _mm256_cvtepi32_ps(dot_u8s8(W[r], xv));
                acc[r][t] = _mm256_fmadd_ps(p, _mm256_set1_ps(D[r] * dx), acc[r][t]);
            }
        }
    }
    const float coef = type == LZ_Q4_0 ? -8.0f : type == LZ_Q5_0 ? -16.0f : 1.0f;
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float v = hsum8(acc[r][t]);
            if (has_c) v += coef * dotf(cb[r], xq8_s(x + t * xs, k), nb);
            y[t * ldy + r] = v;
        }
}

// ---------------------------------------------------------------- K-quants

// Weights 32j..32j+31 (j = 0..7) of super-block b as unsigned bytes, in order.
AI __m256i kq_chunk(const int type, const uint8_t *b, int j) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    if (type == LZ_Q4_K || type == LZ_Q5_K) {
        __m256i q = _mm256_loadu_si256((const __m256i *)(b + (type == LZ_Q4_K ? 16 : 48) + 32 * (j >> 1)));
        __m256i v = _mm256_and_si256(j & 1 ? _mm256_srli_epi16(q, 4) : q, m4);
        if (type == LZ_Q5_K) {
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
            __m256i hb = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j)), _mm256_set1_epi8(1));
            v = _mm256_or_si256(v, _mm256_slli_epi16(hb, 4));
        }
        return v;
    }
    if (type == LZ_Q6_K) {
        const int half = j >> 2, q = j & 3;
        __m256i ql = _mm256_loadu_si256((const __m256i *)(b + 64 * half + 32 * (q & 1)));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half));
        __m256i lo = _mm256_and_si256(q >= 2 ? _mm256_srli_epi16(ql, 4) : ql, m4);
        __m256i hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * q)), m3);
        return _mm256_or_si256(lo, _mm256_slli_epi16(hi, 4));
    }
    // Q2_K / Q3_K: 2-bit plane m of a 32-byte half
    const int half = j >> 2, m = j & 3;
    __m256i q = _mm256_loadu_si256((const __m256i *)(b + (type == LZ_Q2_K ? 16 : 32) + 32 * half));
    __m256i v = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(2 * m)), m3);
    if (type == LZ_Q3_K) {
        __m256i hm = _mm256_loadu_si256((const __m256i *)b);
        __m256i hb = _mm256_and_si256(_mm256_srl_epi16(hm, _mm_cvtsi32_si128(4 * half + m)),
                                      _mm256_set1_epi8(1));
        v = _mm256_or_si256(v, _mm256_slli_epi16(hb, 2));
    }
    return v;
}

// Per super-block and row: the 16 group scales as int32 lanes each holding the scale
// twice as int16 (v[0] groups 0-7, v[1] groups 8-15), d, and the float-pass c[16].
AI void kq_scales(const int type, const uint8_t *b, __m256i v[2], float *d_out, float *c) {
    __m128i s16; // 16 scales as bytes (signed for Q3_K/Q6_K)
    __m256 cf0, cf1;
    float d;
    if (type == LZ_Q4_K || type == LZ_Q5_K) {
        uint32_t a = ld32(b + 4), m = ld32(b + 8), h = ld32(b + 12);
        uint32_t sc_lo = a & 0x3f3f3f3f, mn_lo = m & 0x3f3f3f3f;
        uint32_t sc_hi = (h & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4);
        uint32_t mn_hi = ((h >> 4) & 0x0f0f0f0f) | (((m >> 6) & 0x03030303) << 4);
        __m128i sc = _mm_cvtsi64_si128((long long)(sc_lo | (uint64_t)sc_hi << 32));
        __m128i mn = _mm_cvtsi64_si128((long long)(mn_lo | (uint64_t)mn_hi << 32));
        s16 = _mm_unpacklo_epi8(sc, sc);
        __m128i mn16 = _mm_unpacklo_epi8(mn, mn);
        d = h2f(b);
        __m256 dm = _mm256_set1_ps(-h2f(b + 2));
        cf0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn16)), dm);
        cf1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(mn16, 8))), dm);
        __m256i s32a = _mm256_cvtepu8_epi32(s16), s32b = _mm256_cvtepu8_epi32(_mm_srli_si128(s16, 8));
        v[0] = _mm256_or_si256(s32a, _mm256_slli_epi32(s32a, 16));
        v[1] = _mm256_or_si256(s32b, _mm256_slli_epi32(s32b, 16));
    } else {
        __m256 k;
        if (type == LZ_Q6_K) {
            s16 = _mm_loadu_si128((const __m128i *)(b + 192));
            d = h2f(b + 208);
            k = _mm256_set1_ps(-32.0f * d);
        } else if (type == LZ_Q3_K) {
            uint64_t lo, t = ld32(b + 104);
            memcpy(&lo, b + 96, 8);
            uint64_t top_a = (t & 0x03030303) | (((t >> 2) & 0x03030303) << 32);
            uint64_t top_b = ((t >> 4) & 0x03030303) | (((t >> 6) & 0x03030303) << 32);
            uint64_t s_a = (lo & 0x0f0f0f0f0f0f0f0full) | top_a << 4;
            uint64_t s_b = ((lo >> 4) & 0x0f0f0f0f0f0f0f0full) | top_b << 4;
            s16 = _mm_sub_epi8(_mm_set_epi64x((long long)s_b, (long long)s_a), _mm_set1_epi8(32));
            d = h2f(b + 108);
            k = _mm256_set1_ps(-4.0f * d);
        } else { // Q2_K
            __m128i raw = _mm_loadu_si128((const __m128i *)b);
            s16 = _mm_and_si128(raw, _mm_set1_epi8(0x0F));
            __m128i mn = _mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0F));
            d = h2f(b + 80);
            __m256 dm = _mm256_set1_ps(-h2f(b + 82));
            cf0 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn)), dm);
            cf1 = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(mn, 8))), dm);
        }
        __m256i s32a = _mm256_cvtepi8_epi32(s16), s32b = _mm256_cvtepi8_epi32(_mm_srli_si128(s16, 8));
        if (type != LZ_Q2_K) {
            cf0 = _mm256_mul_ps(_mm256_cvtepi32_ps(s32a), k);
            cf1 = _mm256_mul_ps(_mm256_cvtepi32_ps(s32b), k);
        }
        const __m256i lo16 = _mm256_set1_epi32(0xFFFF);
        v[0] = _mm256_or_si256(_mm256_and_si256(s32a, lo16), _mm256_slli_epi32(s32a, 16));
        v[1] = _mm256_or_si256(_mm256_and_si256(s32b, lo16), _mm256_slli_epi32(s32b, 16));
    }
    _mm256_storeu_ps(c, cf0);
    _mm256_storeu_ps(c + 8, cf1);
    *d_out = d;
}

AI void kq_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int64_t nsb = k / QK_K;
    float cb[R][k / 16];
    __m256 acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        __m256i S[R][2];
        float D[R];
        for (int r = 0; r < R; r++) {
            const uint8_t *blk = w + r * ws + sb * bs;
            if (T == 1) {
                _mm_prefetch((const char *)blk + LZ_PF_DIST, _MM_HINT_T0);
                _mm_prefetch((const char *)blk + LZ_PF_DIST + 64, _MM_HINT_T0);
                _mm_prefetch((const char *)blk + LZ_PF_DIST + 128, _MM_HINT_T0);
            }
            kq_scales(type, blk, S[r], &D[r], &cb[r][sb * 16]);
        }
        __m256i isum[R][T];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) isum[r][t] = _mm256_setzero_si256();
        for (int j = 0; j < 8; j++) {
            // chunk j covers groups 2j (int32 lanes 0-3) and 2j+1 (lanes 4-7)
            const __m256i pick = _mm256_setr_epi32((2 * j) & 7, (2 * j) & 7, (2 * j) & 7, (2 * j) & 7,
                                                   (2 * j + 1) & 7, (2 * j + 1) & 7, (2 * j + 1) & 7,
                                                   (2 * j + 1) & 7);
            __m256i W[R], SC[R];
            for (int r = 0; r < R; r++) {
                W[r] = kq_chunk(type, w + r * ws + sb * bs, j);
                SC[r] = _mm256_permutevar8x32_epi32(S[r][j >> 2], pick);
            }
            for (int t = 0; t < T; t++) {
                __m256i X = _mm256_loadu_si256((const __m256i *)(x + t * xs + sb * QK_K + 32 * j));
                for (int r = 0; r < R; r++)
                    isum[r][t] = _mm256_add_epi32(isum[r][t],
                                                  _mm256_madd_epi16(_mm256_maddubs_epi16(W[r], X), SC[r]));
            }
        }
        for (int t = 0; t < T; t++) {
            float dx = xq8k_d(x + t * xs, k)[sb];
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum[r][t]), _mm256_set1_ps(D[r] * dx),
                                            acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            y[t * ldy + r] = hsum8(acc[r][t]) + dotf(cb[r], xq8k_s16(x + t * xs, k), k / 16);
}

// ---------------------------------------------------------------- f16 / bf16
// Weights and activations are both 16-bit (the activations rounded like the
// reference's); products and sums in f32.

AI __m256 load8(const int type, const uint16_t *p) {
    __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (type == LZ_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

AI float half_dot(const int type, const uint16_t *a, const uint16_t *b, int64_t k) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= k; i += 16) {
        acc0 = _mm256_fmadd_ps(load8(type, a + i), load8(type, b + i), acc0);
        acc1 = _mm256_fmadd_ps(load8(type, a + i + 8), load8(type, b + i + 8), acc1);
    }
    float s = hsum8(_mm256_add_ps(acc0, acc1));
    for (; i < k; i++)
        s += type == LZ_F16 ? lz_h2f(a[i]) * lz_h2f(b[i]) : lz_bf2f(a[i]) * lz_bf2f(b[i]);
    return s;
}

static void tile_f16(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs,
                     int nt, float *y, size_t ldy) {
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[t * ldy + r] = half_dot(LZ_F16, (const uint16_t *)(w + r * ws), (const uint16_t *)(x + t * xs), k);
}

static void tile_bf16(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x, size_t xs,
                      int nt, float *y, size_t ldy) {
    for (int t = 0; t < nt; t++)
        for (int r = 0; r < nr; r++)
            y[t * ldy + r] = half_dot(LZ_BF16, (const uint16_t *)(w + r * ws), (const uint16_t *)(x + t * xs), k);
}

// ---------------------------------------------------------------- tiles

// Tile shapes sized for AVX2's 16 registers, measured (bench/bench_kernels.py, 2
// threads): one row x 4 tokens runs 1.1-1.9x faster than 2 x 3 (Q5_0 most).
#ifndef LEGACY_R
#define LEGACY_R 1
#endif
#ifndef LEGACY_T
#define LEGACY_T 4
#endif
#ifndef KQ_R
#define KQ_R 1
#endif
#ifndef KQ_T
#define KQ_T 4
#endif

DEFINE_TILE(tile_q4_0, legacy_tile, LZ_Q4_0, LEGACY_R, LEGACY_T)
DEFINE_TILE(tile_q4_1, legacy_tile, LZ_Q4_1, LEGACY_R, LEGACY_T)
DEFINE_TILE(tile_q5_0, legacy_tile, LZ_Q5_0, LEGACY_R, LEGACY_T)
DEFINE_TILE(tile_q5_1, legacy_tile, LZ_Q5_1, LEGACY_R, LEGACY_T)
DEFINE_TILE(tile_q8_0, legacy_tile, LZ_Q8_0, LEGACY_R, LEGACY_T)
DEFINE_TILE(tile_q2_k, kq_tile, LZ_Q2_K, KQ_R, KQ_T)
DEFINE_TILE(tile_q3_k, kq_tile, LZ_Q3_K, KQ_R, KQ_T)
DEFINE_TILE(tile_q4_k, kq_tile, LZ_Q4_K, KQ_R, KQ_T)
DEFINE_TILE(tile_q5_k, kq_tile, LZ_Q5_K, KQ_R, KQ_T)
DEFINE_TILE(tile_q6_k, kq_tile, LZ_Q6_K, KQ_R, KQ_T)

void lz_init_avx2(lz_kernels *k) {
    REGISTER_QUANT_TILES(k, MAX_K);
    k->types[LZ_F16].tile = tile_f16;
    k->types[LZ_BF16].tile = tile_bf16;
}
