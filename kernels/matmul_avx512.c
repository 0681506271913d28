// AVX-512 (F, BW, VL, VNNI) kernels for every quantized type.
//
// Each kernel computes a tile of R weight rows x T activation rows, so unpacked
// weights are reused across tokens (prompt batches) and activations across rows.
// R and T are compile-time constants of always-inlined templates; the accumulators
// then live in registers.
//
// 32-blocks (Q4_0 .. Q8_0): two blocks per 512-bit register. VNNI's dpbusd multiplies
// unsigned weight bytes by signed activation bytes, summing 4 products per 32-bit
// lane; lanes 0-7 hold block a, 8-15 block b, scaled by [da*xa x8, db*xb x8]. The
// weights stay unsigned (nibbles 0..15, 5-bit 0..31): the Q4_0/Q5_0 offset (-8, -16)
// and the Q4_1/Q5_1 minimum are per-block constants c times sum(x), so they are
// collected in a small float pass at the end: sum_b c[b] * s[b], s = d * sum(q).
// Q8_0 weights are signed: a single row multiplies |w| by x with w's sign moved onto
// x. Tiles of several tokens instead make Q4_0/Q5_0/Q8_0 weights signed and add 128
// to x (see legacy_tile).
//
// K-quants: 64 weights per register, as unsigned bytes. maddubs gives 16-bit sums of
// pairs; dpwssd multiplies them by the 16-bit sub-block scales and accumulates in
// 32 bits, exact across a whole super-block; one float step per super-block applies
// d * dx. Minimums (Q2_K, Q4_K, Q5_K) and offsets (Q3_K -4, Q6_K -32) again go to the
// float pass, per group of 16: sum_g c[g] * s16[g].
#include <immintrin.h>

#include "quants.h"
#include "tiles.h"

#define AI static inline __attribute__((always_inline))

// Rows longer than this use the portable kernels (the float pass keeps its per-row
// constants on the stack).
#define MAX_K 32768

// How far ahead matrix x vector fetches weights (bytes).
#ifndef LZ_PF_DIST
#define LZ_PF_DIST 3072
#endif

AI uint32_t ld16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
AI uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

AI float dotf(const float *a, const float *b, int64_t n) {
    __m512 acc = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

// 16 bytes of nibbles of blocks a and b -> [a low, a high, b low, b high]: weights
// 0-31 of a, then of b, in order.
AI __m512i nibbles_pair(const uint8_t *qa, const uint8_t *qb) {
    __m256i t = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)qa)),
        _mm_loadu_si128((const __m128i *)qb), 1);
    __m512i v = _mm512_permutexvar_epi64(_mm512_set_epi64(3, 2, 3, 2, 1, 0, 1, 0),
                                         _mm512_castsi256_si512(t));
    v = _mm512_mask_srli_epi16(v, 0xFF00FF00u, v, 4);
    return _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
}

// ---------------------------------------------------------------- 32-blocks

// One pair of blocks (a, b) of a row: weights as unsigned bytes (Q8_0: |w|, with the
// signs in *s), the scale vector [da x8, db x8], and the float-pass constants c[0..1].
AI void legacy_pair(const int type, const uint8_t *pa, const uint8_t *pb, __m512i *wv,
                    __mmask64 *s, __m512 *d, float *c) {
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const __m512i idx_d = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i idx_dm = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    if (type == LZ_Q8_0) {
        __m512i v = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(pa + 2))),
            _mm256_loadu_si256((const __m256i *)(pb + 2)), 1);
        *s = _mm512_movepi8_mask(v);
        *wv = _mm512_abs_epi8(v);
    } else if (type == LZ_Q4_0) {
        *wv = nibbles_pair(pa + 2, pb + 2);
    } else if (type == LZ_Q4_1) {
        *wv = nibbles_pair(pa + 4, pb + 4);
    } else {
        const int qh = type == LZ_Q5_0 ? 2 : 4;
        __m512i v = nibbles_pair(pa + qh + 4, pb + qh + 4);
        __mmask64 hb = (__mmask64)ld32(pa + qh) | ((__mmask64)ld32(pb + qh) << 32);
        *wv = _mm512_mask_add_epi8(v, hb, v, _mm512_set1_epi8(16));
    }
    if (with_min) {
        // [da, ma, db, mb]
        __m128 f = _mm_cvtph_ps(_mm_set_epi32(0, 0, (int)ld32(pb), (int)ld32(pa)));
        *d = _mm512_permutexvar_ps(idx_dm, _mm512_castps128_ps512(f));
        if (c) _mm_storel_pi((__m64 *)c, _mm_shuffle_ps(f, f, _MM_SHUFFLE(3, 1, 3, 1)));
    } else {
        __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(ld16(pa) | ld16(pb) << 16)));
        *d = _mm512_permutexvar_ps(idx_d, _mm512_castps128_ps512(f));
        if (c) _mm_storel_pi((__m64 *)c, f);
    }
}

// [sum(a), sum(b), sum(c), sum(d)]
AI __m256 hi256(__m512 v) { return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1)); }

AI __m128 reduce4(__m512 a, __m512 b, __m512 c, __m512 d) {
    __m256 ra = _mm256_add_ps(_mm512_castps512_ps256(a), hi256(a));
    __m256 rb = _mm256_add_ps(_mm512_castps512_ps256(b), hi256(b));
    __m256 rc = _mm256_add_ps(_mm512_castps512_ps256(c), hi256(c));
    __m256 rd = _mm256_add_ps(_mm512_castps512_ps256(d), hi256(d));
    __m256 t = _mm256_hadd_ps(_mm256_hadd_ps(ra, rb), _mm256_hadd_ps(rc, rd));
    return _mm_add_ps(_mm256_castps256_ps128(t), _mm256_extractf128_ps(t, 1));
}

// Matrix x vector, 4 rows: each row is walked whole before the next, so the weights
// stream through memory in one sequential run (the hardware prefetcher follows it,
// and we fetch ahead too); the 4 rows share one horizontal reduction, and the float
// pass is folded into the accumulators.
AI void legacy_gemv4(const int type, int64_t k, const uint8_t *w, size_t ws, const uint8_t *x,
                     float *y) {
    const int bs = lz_type_size(type);
    const int has_c = type != LZ_Q8_0;
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int64_t nb = k / QK, np = (nb + 1) / 2, nbp = lz_pad64(k) / QK;
    const float *dx = xq8_d(x, k), *sx = xq8_s(x, k);
    const __m512i idx_d = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i idx_q0 = _mm512_set_epi32(2, 2, 2, 2, 2, 2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i idx_q1 = _mm512_set_epi32(6, 6, 6, 6, 6, 6, 6, 6, 4, 4, 4, 4, 4, 4, 4, 4);
    const __m256i pick_c = with_min ? _mm256_setr_epi32(1, 3, 5, 7, 1, 3, 5, 7)
                                    : _mm256_setr_epi32(0, 2, 4, 6, 0, 2, 4, 6);
    const float coef = type == LZ_Q4_0 ? -8.0f : type == LZ_Q5_0 ? -16.0f : 1.0f;
    // the activation scales of each pair, spread over the 16 lanes once for all 4 rows
    __m512 dxe[np];
    for (int64_t p = 0; p < np; p++)
        dxe[p] = _mm512_permutexvar_ps(
            idx_d, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)(dx + 2 * p)))));
    float cb[has_c ? nbp + 4 : 1];
    __m512 acc[4];
    for (int r = 0; r < 4; r++) {
        const uint8_t *row = w + r * ws;
        __m512 a = _mm512_setzero_ps();
        int64_t p = 0;
        // four blocks at a time: one conversion gives [d0 m0 d1 m1 d2 m2 d3 m3]
        // (for the d-only types the odd lanes are data bytes, never used)
        for (; 2 * p + 4 <= nb; p += 2) {
            const uint8_t *b0 = row + 2 * p * bs;
            _mm_prefetch((const char *)b0 + LZ_PF_DIST, _MM_HINT_T0);
            _mm_prefetch((const char *)b0 + LZ_PF_DIST + 64, _MM_HINT_T0);
            __m256 f = _mm256_cvtph_ps(_mm_setr_epi32((int)ld32(b0), (int)ld32(b0 + bs),
                                                      (int)ld32(b0 + 2 * bs), (int)ld32(b0 + 3 * bs)));
            if (has_c)
                _mm_storeu_ps(&cb[2 * p], _mm256_castps256_ps128(_mm256_permutevar8x32_ps(f, pick_c)));
            __m512 d0 = _mm512_permutexvar_ps(idx_q0, _mm512_castps256_ps512(f));
            __m512 d1 = _mm512_permutexvar_ps(idx_q1, _mm512_castps256_ps512(f));
            __m512i w0, w1;
            __mmask64 s0 = 0, s1 = 0;
            __m512 unused;
            legacy_pair(type, b0, b0 + bs, &w0, &s0, &unused, NULL);
            legacy_pair(type, b0 + 2 * bs, b0 + 3 * bs, &w1, &s1, &unused, NULL);
            __m512i x0 = _mm512_loadu_si512((const void *)(x + 64 * p));
            __m512i x1 = _mm512_loadu_si512((const void *)(x + 64 * p + 64));
            if (type == LZ_Q8_0) {
                x0 = _mm512_mask_sub_epi8(x0, s0, _mm512_setzero_si512(), x0);
                x1 = _mm512_mask_sub_epi8(x1, s1, _mm512_setzero_si512(), x1);
            }
            __m512i i0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w0, x0);
            __m512i i1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), w1, x1);
            a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i0), _mm512_mul_ps(d0, dxe[p]), a);
            a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(i1), _mm512_mul_ps(d1, dxe[p + 1]), a);
        }
        for (; p < np; p++) {
            const int64_t ba = 2 * p, bb = 2 * p + 1 < nb ? 2 * p + 1 : 2 * p;
            __m512i wv;
            __mmask64 sg;
            __m512 d;
            legacy_pair(type, row + ba * bs, row + bb * bs, &wv, &sg, &d, has_c ? &cb[2 * p] : NULL);
            __m512i xv = _mm512_loadu_si512((const void *)(x + 64 * p));
            if (type == LZ_Q8_0) xv = _mm512_mask_sub_epi8(xv, sg, _mm512_setzero_si512(), xv);
            __m512i dot = _mm512_dpbusd_epi32(_mm512_setzero_si512(), wv, xv);
            a = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(d, dxe[p]), a);
        }
        if (has_c) {
            // the pad block's s is 0, and its c a copy: harmless
            const __m512 cv = _mm512_set1_ps(coef);
            int64_t i = 0;
            for (; i + 16 <= nb; i += 16)
                a = _mm512_fmadd_ps(_mm512_loadu_ps(cb + i), _mm512_mul_ps(_mm512_loadu_ps(sx + i), cv), a);
            if (i < nb) {
                __mmask16 m = (__mmask16)((1u << (nb - i)) - 1);
                a = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, cb + i),
                                    _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sx + i), cv), a);
            }
        }
        acc[r] = a;
    }
    _mm_storeu_ps(y, reduce4(acc[0], acc[1], acc[2], acc[3]));
}

AI void legacy_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                    size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    // Q4_0/Q5_0/Q8_0 weights are made signed (the offset -8 / -16 subtracted) and meet
    // activations made unsigned by adding 128: sum((x + 128) w) - 128 sum(w) = sum(x w),
    // with the correction computed once per row and block pair instead of per token.
    // Q4_1/Q5_1 keep unsigned weights; their minimum goes to a float pass at the end.
    const int has_c = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int offset = type == LZ_Q4_0 ? 8 : type == LZ_Q5_0 ? 16 : 0;
    const int64_t nb = k / QK, np = (nb + 1) / 2, nbp = lz_pad64(k) / QK;
    const __m512i idx_d = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    float cb[R][has_c ? nbp : 1];
    __m512 acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();

    for (int64_t p = 0; p < np; p++) {
        const int64_t ba = 2 * p, bb = 2 * p + 1 < nb ? 2 * p + 1 : 2 * p; // odd tail: b = a,
        __m512i W[R];                                 // harmless as x's pad block is zero
        __m512i Z[R];   // what each dot product starts from
        __m512 D[R];
        for (int r = 0; r < R; r++) {
            const uint8_t *pa = w + r * ws + ba * bs, *pb = w + r * ws + bb * bs;
            // one row at a time streams from memory (a few tokens): fetch ahead
            if (R == 1) _mm_prefetch((const char *)pa + LZ_PF_DIST, _MM_HINT_T0);
            Z[r] = _mm512_setzero_si512();
            if (type == LZ_Q8_0) {
                W[r] = _mm512_inserti64x4(
                    _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(pa + 2))),
                    _mm256_loadu_si256((const __m256i *)(pb + 2)), 1);
                __m128 f = _mm_cvtph_ps(_mm_cvtsi32_si128((int)(ld16(pa) | ld16(pb) << 16)));
                D[r] = _mm512_permutexvar_ps(idx_d, _mm512_castps128_ps512(f));
            } else {
                __mmask64 unused;
                legacy_pair(type, pa, pb, &W[r], &unused, &D[r], has_c ? &cb[r][2 * p] : NULL);
                if (offset) W[r] = _mm512_sub_epi8(W[r], _mm512_set1_epi8((char)offset));
            }
            if (!has_c)
                Z[r] = _mm512_sub_epi32(Z[r], _mm512_dpbusd_epi32(Z[r], _mm512_set1_epi8((char)0x80), W[r]));
        }
        for (int t = 0; t < T; t++) {
            const uint8_t *xr = x + t * xs;
            __m512i X = _mm512_loadu_si512((const void *)(xr + 64 * p));
            if (!has_c) X = _mm512_xor_si512(X, _mm512_set1_epi8((char)0x80));
            const float *dx = xq8_d(xr, k) + 2 * p;
            __m512 DX = _mm512_permutexvar_ps(
                idx_d, _mm512_castps128_ps512(_mm_castpd_ps(_mm_load_sd((const double *)dx))));
            for (int r = 0; r < R; r++) {
                __m512i dot = !has_c ? _mm512_dpbusd_epi32(Z[r], X, W[r])
                                     : _mm512_dpbusd_epi32(Z[r], W[r], X);
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), _mm512_mul_ps(D[r], DX),
                                            acc[r][t]);
            }
        }
    }
    for (int r = 0; r < R; r++) {
        if (has_c && nb < nbp) cb[r][nb] = 0.0f;
        for (int t = 0; t < T; t++) {
            float v = _mm512_reduce_add_ps(acc[r][t]);
            if (has_c) v += dotf(cb[r], xq8_s(x + t * xs, k), nb);
            y[t * ldy + r] = v;
        }
    }
}

// ---------------------------------------------------------------- Q4_0 matrix x vector
// Generation reads each weight once per token, so this kernel has to keep up with
// memory: four blocks (128 weights, 72 bytes) of a row per step, gathered from the
// file's own layout with one two-source word permute into [qs0 qs1 qs2 qs3]. Their
// low nibbles are weights 0-15 of each block and the high nibbles 16-31, so the
// activations are rearranged to match once per call and shared by every row:
// xl = [x0[0..15] x1[0..15] x2[0..15] x3[0..15]], xh the same for 16..31. dpbusd's
// lanes 4j..4j+3 then hold block j's sum; they start from -8 * the matching partial
// sums of x, which is the -8 offset of Q4_0, exact in integers. One float step per
// four blocks applies d * dx. In cache this runs 1.5x the pair-of-blocks kernel
// (legacy_gemv4); from memory it is what lets one thread keep up with it.

typedef struct { __m512i xl, xh, off; __m512 dx; } q4_group;   // 128 weights of x

// The activations of group g (blocks 4g..4g+3; nb blocks in all), rearranged.
AI void q4_0_prep(const uint8_t *x, int64_t k, int64_t g, int64_t nb, q4_group *out) {
    // 16-byte quarters: xl = quarters 0, 2, 4, 6 of x0:x1, xh = 1, 3, 5, 7
    const __m512i idx_l = _mm512_set_epi64(13, 12, 9, 8, 5, 4, 1, 0);
    const __m512i idx_h = _mm512_set_epi64(15, 14, 11, 10, 7, 6, 3, 2);
    const __m512i idx_4 = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const int64_t left = nb - 4 * g;   // blocks in this group (a short last group reads 0s)
    const uint8_t *xg = x + 128 * g;
    __m512i x0, x1;
    __m128 dx;
    if (left >= 4) {
        x0 = _mm512_loadu_si512((const void *)xg);
        x1 = _mm512_loadu_si512((const void *)(xg + 64));
        dx = _mm_loadu_ps(xq8_d(x, k) + 4 * g);
    } else {
        const int64_t n = 32 * left;
        x0 = _mm512_maskz_loadu_epi8(n >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << n) - 1, xg);
        x1 = _mm512_maskz_loadu_epi8(n > 64 ? ((__mmask64)1 << (n - 64)) - 1 : 0, xg + 64);
        dx = _mm_maskz_loadu_ps((__mmask8)((1u << left) - 1), xq8_d(x, k) + 4 * g);
    }
    out->xl = _mm512_permutex2var_epi64(x0, idx_l, x1);
    out->xh = _mm512_permutex2var_epi64(x0, idx_h, x1);
    const __m512i ones = _mm512_set1_epi8(1);
    __m512i part = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, out->xl),
                                       ones, out->xh);
    out->off = _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_slli_epi32(part, 3));
    out->dx = _mm512_permutexvar_ps(idx_4, _mm512_castps128_ps512(dx));
}

// One row's group at b (72 bytes; `left` < 4 blocks: a short last group), into acc.
AI __m512 q4_0_group(const uint8_t *b, const q4_group *g, int64_t left, __m512 acc) {
    // word i of the result: block i/8, quant word i%8, at word 9 * (i/8) + 1 + i%8 of
    // the group (the quants are word-aligned); words past 31 come from the second
    // load, which starts at byte 8 (word 4): index 32 + word - 4
    const __m512i idx_q = _mm512_set_epi16(
        63, 62, 61, 60, 59, 58, 57, 56, 26, 25, 24, 23, 22, 21, 20, 19,
        17, 16, 15, 14, 13, 12, 11, 10, 8, 7, 6, 5, 4, 3, 2, 1);
    // the four scales (words 0, 9, 18, 27), each four times
    const __m512i idx_d = _mm512_set_epi16(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                                           27, 27, 27, 27, 18, 18, 18, 18, 9, 9, 9, 9, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    __m512i r0, r1;
    if (left >= 4) {
        r0 = _mm512_loadu_si512((const void *)b);
        r1 = _mm512_loadu_si512((const void *)(b + 8));
    } else {
        r0 = _mm512_maskz_loadu_epi8(((__mmask64)1 << (18 * left)) - 1, b);
        r1 = _mm512_setzero_si512();
    }
    __m512i q = _mm512_permutex2var_epi16(r0, idx_q, r1);
    __m512 d = _mm512_cvtph_ps(_mm512_castsi512_si256(_mm512_permutexvar_epi16(idx_d, r0)));
    __m512i s = _mm512_dpbusd_epi32(g->off, _mm512_and_si512(q, m4), g->xl);
    s = _mm512_dpbusd_epi32(s, _mm512_and_si512(_mm512_srli_epi16(q, 4), m4), g->xh);
    return _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), _mm512_mul_ps(d, g->dx), acc);
}

// How far ahead the matrix x vector kernels fetch weights: to L1 and, further, to L2.
// Measured on TinyLlama's FFN weights mapped from the file (4 KiB pages, 1 thread,
// host loaded, CPU time): no software prefetch 9.1 GB/s, one or two lines to L1 at
// 3 KiB 9.3-10.2, two lines to L2 at 6 KiB 15.3, one to L1 at 4 KiB and one to L2
// at 8 KiB 15.0 (the pair-of-blocks kernel legacy_gemv4: 14.5).
#ifndef GEMV_PF_NEAR
#define GEMV_PF_NEAR 4096
#endif
#ifndef GEMV_PF_FAR
#define GEMV_PF_FAR 8192
#endif

// One row over the prepared activations xg (ng groups), walked whole: the weights
// stream through memory in one sequential run. Several rows side by side, sharing
// the activation loads, measured slower from memory (11-13 GB/s against 16-19 for
// one; anonymous memory, 1 thread).
AI float q4_0_row(const uint8_t *w, const q4_group *xg, int64_t ng, int64_t nb) {
    __m512 acc = _mm512_setzero_ps();
    const int64_t full = nb / 4;
    for (int64_t g = 0; g < full; g++) {
        const uint8_t *b = w + 72 * g;
        _mm_prefetch((const char *)b + GEMV_PF_NEAR, _MM_HINT_T0);
        _mm_prefetch((const char *)b + GEMV_PF_FAR, _MM_HINT_T1);
        acc = q4_0_group(b, &xg[g], 4, acc);
    }
    if (full < ng) acc = q4_0_group(w + 72 * full, &xg[full], nb - 4 * full, acc);
    return _mm512_reduce_add_ps(acc);
}

static void gemv_q4_0(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x, float *y) {
    const int64_t nb = k / QK, ng = (nb + 3) / 4;
    q4_group xg[ng];
    for (int64_t g = 0; g < ng; g++) q4_0_prep(x, k, g, nb, &xg[g]);
    for (int r = 0; r < nr; r++) y[r] = q4_0_row(w + r * ws, xg, ng, nb);
}

// ---------------------------------------------------------------- K-quants

// The 64 weights of chunk c (0..3) of super-block b, as unsigned bytes, in order.
AI __m512i kq_chunk(const int type, const uint8_t *b, int c) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    if (type == LZ_Q4_K || type == LZ_Q5_K) {
        const uint8_t *qs = b + (type == LZ_Q4_K ? 16 : 48) + 32 * c;
        __m256i q = _mm256_loadu_si256((const __m256i *)qs);
        __m512i v = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
        v = _mm512_and_si512(v, m4);
        if (type == LZ_Q5_K) {
            __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 16));
            __mmask64 hb = (__mmask64)_mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * c)))) |
                           ((__mmask64)_mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(2 << (2 * c)))) << 32);
            v = _mm512_mask_add_epi8(v, hb, v, _mm512_set1_epi8(16));
        }
        return v;
    }
    if (type == LZ_Q6_K) {
        const int half = c >> 1;
        __m512i ql = _mm512_loadu_si512((const void *)(b + 64 * half));
        __m256i qh = _mm256_loadu_si256((const __m256i *)(b + 128 + 32 * half));
        __m512i h = _mm512_inserti64x4(_mm512_castsi256_si512(qh), _mm256_srli_epi16(qh, 2), 1);
        const __m512i m30 = _mm512_set1_epi8(0x30);
        if (c & 1)
            return _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                                   _mm512_and_si512(h, m30));
        return _mm512_or_si512(_mm512_and_si512(ql, m4),
                               _mm512_and_si512(_mm512_slli_epi16(h, 4), m30));
    }
    // Q2_K / Q3_K: 2-bit planes of a 32-byte half
    const int half = c >> 1, m = c & 1;
    const uint8_t *qs = b + (type == LZ_Q2_K ? 16 : 32) + 32 * half;
    __m256i q = _mm256_loadu_si256((const __m256i *)qs);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 2), 1);
    __m512i v = _mm512_and_si512(_mm512_srli_epi16(z, (unsigned)(4 * m)), _mm512_set1_epi8(3));
    if (type == LZ_Q3_K) {
        __m256i hm = _mm256_loadu_si256((const __m256i *)b);
        const int bit = 4 * half + 2 * m;
        __mmask64 hb = (__mmask64)_mm256_test_epi8_mask(hm, _mm256_set1_epi8((char)(1 << bit))) |
                       ((__mmask64)_mm256_test_epi8_mask(hm, _mm256_set1_epi8((char)(2 << bit))) << 32);
        v = _mm512_mask_add_epi8(v, hb, v, _mm512_set1_epi8(4));
    }
    return v;
}

// Per super-block and row: the 16 group scales as int16 (in the low half of a
// register), d, and the float-pass constants c[16] (minimum or offset per group of
// 16). Built in registers: scalar byte stores reloaded as a vector would stall on
// store forwarding.
AI __m512i kq_scales(const int type, const uint8_t *b, float *d_out, float *c) {
    __m256i sc16;
    __m512 cf;
    if (type == LZ_Q4_K || type == LZ_Q5_K) {
        // the 6-bit scales and mins of lz_k_scales, four at a time
        uint32_t a = ld32(b + 4), m = ld32(b + 8), h = ld32(b + 12);
        uint32_t sc_lo = a & 0x3f3f3f3f, mn_lo = m & 0x3f3f3f3f;
        uint32_t sc_hi = (h & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4);
        uint32_t mn_hi = ((h >> 4) & 0x0f0f0f0f) | (((m >> 6) & 0x03030303) << 4);
        __m128i sc = _mm_cvtsi64_si128((long long)(sc_lo | (uint64_t)sc_hi << 32));
        __m128i mn = _mm_cvtsi64_si128((long long)(mn_lo | (uint64_t)mn_hi << 32));
        sc16 = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(sc, sc)); // one per group of 16
        float d = lz_h2f((lz_half)ld16(b)), dmin = lz_h2f((lz_half)ld16(b + 2));
        cf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpacklo_epi8(mn, mn))),
                           _mm512_set1_ps(-dmin));
        *d_out = d;
    } else if (type == LZ_Q6_K) {
        float d = lz_h2f((lz_half)ld16(b + 208));
        __m128i s8 = _mm_loadu_si128((const __m128i *)(b + 192));
        sc16 = _mm256_cvtepi8_epi16(s8);
        cf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(s8)), _mm512_set1_ps(-32.0f * d));
        *d_out = d;
    } else if (type == LZ_Q3_K) {
        // low nibbles from bytes 0-7 (scales 0-7 low, 8-15 high nibble), top 2 bits
        // from bytes 8-11, two bits per scale group of four
        uint64_t lo = 0, t = ld32(b + 104);
        memcpy(&lo, b + 96, 8);
        uint64_t top_a = (t & 0x03030303) | (((t >> 2) & 0x03030303) << 32);
        uint64_t top_b = ((t >> 4) & 0x03030303) | (((t >> 6) & 0x03030303) << 32);
        uint64_t s_a = (lo & 0x0f0f0f0f0f0f0f0full) | top_a << 4;
        uint64_t s_b = ((lo >> 4) & 0x0f0f0f0f0f0f0f0full) | top_b << 4;
        __m128i u = _mm_set_epi64x((long long)s_b, (long long)s_a);
        sc16 = _mm256_sub_epi16(_mm256_cvtepu8_epi16(u), _mm256_set1_epi16(32));
        float d = lz_h2f((lz_half)ld16(b + 108));
        cf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(sc16)), _mm512_set1_ps(-4.0f * d));
        *d_out = d;
    } else { // Q2_K: scale in the low nibble, min in the high one
        __m128i s8 = _mm_loadu_si128((const __m128i *)b);
        sc16 = _mm256_cvtepu8_epi16(_mm_and_si128(s8, _mm_set1_epi8(0x0F)));
        __m128i mn = _mm_and_si128(_mm_srli_epi16(s8, 4), _mm_set1_epi8(0x0F));
        float d = lz_h2f((lz_half)ld16(b + 80)), dmin = lz_h2f((lz_half)ld16(b + 82));
        cf = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(mn)), _mm512_set1_ps(-dmin));
        *d_out = d;
    }
    _mm512_storeu_ps(c, cf);
    return _mm512_castsi256_si512(sc16);
}

AI void kq_tile(const int type, const int R, const int T, int64_t k, const uint8_t *w,
                size_t ws, const uint8_t *x, size_t xs, float *y, size_t ldy) {
    const int bs = lz_type_size(type);
    const int64_t nsb = k / QK_K;
    float cb[R][k / 16];
    __m512 acc[R][T];
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) acc[r][t] = _mm512_setzero_ps();
    // 16-bit lane i of a maddubs result covers weights 2i, 2i+1: group 4c + i/8
    __m512i idx[4];
    for (int c = 0; c < 4; c++) {
        int16_t v[32];
        for (int i = 0; i < 32; i++) v[i] = (int16_t)(4 * c + i / 8);
        idx[c] = _mm512_loadu_si512((const void *)v);
    }
    for (int64_t sb = 0; sb < nsb; sb++) {
        if (R == 1)   // one row at a time streams from memory (a few tokens): fetch ahead
            for (int l = 0; l < bs; l += 64) _mm_prefetch((const char *)w + sb * bs + LZ_PF_DIST + l, _MM_HINT_T0);
        __m512i S[R];
        float D[R];
        for (int r = 0; r < R; r++) S[r] = kq_scales(type, w + r * ws + sb * bs, &D[r], &cb[r][sb * 16]);
        __m512i isum[R][T];
        for (int r = 0; r < R; r++)
            for (int t = 0; t < T; t++) isum[r][t] = _mm512_setzero_si512();
        for (int c = 0; c < 4; c++) {
            __m512i W[R], SC[R];
            for (int r = 0; r < R; r++) {
                W[r] = kq_chunk(type, w + r * ws + sb * bs, c);
                SC[r] = _mm512_permutexvar_epi16(idx[c], S[r]);
            }
            for (int t = 0; t < T; t++) {
                __m512i X = _mm512_loadu_si512((const void *)(x + t * xs + sb * QK_K + 64 * c));
                for (int r = 0; r < R; r++)
                    isum[r][t] = _mm512_dpwssd_epi32(isum[r][t], _mm512_maddubs_epi16(W[r], X), SC[r]);
            }
        }
        for (int t = 0; t < T; t++) {
            float dx = xq8k_d(x + t * xs, k)[sb];
            for (int r = 0; r < R; r++)
                acc[r][t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[r][t]), _mm512_set1_ps(D[r] * dx),
                                            acc[r][t]);
        }
    }
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++)
            y[t * ldy + r] = _mm512_reduce_add_ps(acc[r][t]) + dotf(cb[r], xq8k_s16(x + t * xs, k), k / 16);
}

// ---------------------------------------------------------------- Q4_K matrix x vector
// A super-block's 128 bytes of quants in two 64-byte loads: bytes 0-31 of the first
// are chunk 0 (low nibbles weights 0-31, high 32-63), bytes 32-63 chunk 1 (64-95,
// 96-127), so the low nibbles of a load pair with x [0..31 | 64..95] and the high
// ones with x [32..63 | 96..127]: the activations are rearranged that way once per
// call (xr, k bytes), and each 64-weight register meets the scales of its two
// sub-blocks (maddubs, then dpwssd with the 16-bit scales: exact across the
// super-block). Against kq_tile's 1 x 1 tile this drops the per-chunk 256-bit
// splits, and the scales' halves convert in hardware.

AI void q4_k_prep(const uint8_t *x, int64_t k, uint8_t *xr) {
    for (int64_t i = 0; i < k; i += 128) {
        __m512i a = _mm512_loadu_si512((const void *)(x + i));
        __m512i b = _mm512_loadu_si512((const void *)(x + i + 64));
        _mm512_storeu_si512((void *)(xr + i), _mm512_shuffle_i64x2(a, b, 0x44));
        _mm512_storeu_si512((void *)(xr + i + 64), _mm512_shuffle_i64x2(a, b, 0xEE));
    }
}

AI float q4_k_row(const uint8_t *w, const uint8_t *xr, const float *dx, const float *s16,
                  int64_t nsb) {
    const __m512i m4 = _mm512_set1_epi8(0x0F);
    // scales of sub-blocks (0, 2), (1, 3), (4, 6), (5, 7), each 16 times, from the 16
    // bytes [sc0..sc7 mn0..mn7] widened to words
    const __m512i idx_a = _mm512_set_epi16(2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,
                                           0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i one16 = _mm512_set1_epi16(1), four16 = _mm512_set1_epi16(4);
    const __m512i idx_b = _mm512_add_epi16(idx_a, one16);
    const __m512i idx_c = _mm512_add_epi16(idx_a, four16);
    const __m512i idx_d = _mm512_add_epi16(idx_b, four16);
    __m512 acc = _mm512_setzero_ps();
    __m512 macc = _mm512_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *b = w + 144 * sb;
        _mm_prefetch((const char *)b + LZ_PF_DIST, _MM_HINT_T0);
        _mm_prefetch((const char *)b + LZ_PF_DIST + 64, _MM_HINT_T0);
        _mm_prefetch((const char *)b + LZ_PF_DIST + 128, _MM_HINT_T0);
        // the 6-bit scales and mins of lz_k_scales, four at a time
        uint32_t a = ld32(b + 4), m = ld32(b + 8), h = ld32(b + 12);
        uint32_t sc_lo = a & 0x3f3f3f3f, mn_lo = m & 0x3f3f3f3f;
        uint32_t sc_hi = (h & 0x0f0f0f0f) | (((a >> 6) & 0x03030303) << 4);
        uint32_t mn_hi = ((h >> 4) & 0x0f0f0f0f) | (((m >> 6) & 0x03030303) << 4);
        __m128i scmn = _mm_set_epi32((int)mn_hi, (int)mn_lo, (int)sc_hi, (int)sc_lo);
        __m512i s16w = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(scmn));
        __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(b)));   // d, dmin
        const uint8_t *xs = xr + 256 * sb;
        __m512i q0 = _mm512_loadu_si512((const void *)(b + 16));
        __m512i q1 = _mm512_loadu_si512((const void *)(b + 80));
        __m512i isum = _mm512_dpwssd_epi32(_mm512_setzero_si512(),
                                           _mm512_maddubs_epi16(_mm512_and_si512(q0, m4),
                                                                _mm512_loadu_si512((const void *)xs)),
                                           _mm512_permutexvar_epi16(idx_a, s16w));
        isum = _mm512_dpwssd_epi32(isum,
                                   _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q0, 4), m4),
                                                        _mm512_loadu_si512((const void *)(xs + 64))),
                                   _mm512_permutexvar_epi16(idx_b, s16w));
        isum = _mm512_dpwssd_epi32(isum,
                                   _mm512_maddubs_epi16(_mm512_and_si512(q1, m4),
                                                        _mm512_loadu_si512((const void *)(xs + 128))),
                                   _mm512_permutexvar_epi16(idx_c, s16w));
        isum = _mm512_dpwssd_epi32(isum,
                                   _mm512_maddubs_epi16(_mm512_and_si512(_mm512_srli_epi16(q1, 4), m4),
                                                        _mm512_loadu_si512((const void *)(xs + 192))),
                                   _mm512_permutexvar_epi16(idx_d, s16w));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), _mm512_set1_ps(_mm_cvtss_f32(dd) * dx[sb]), acc);
        // minimums: -dmin * mn[g/2] * s16[g] over the 16 groups of 16
        __m512 mn = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_unpackhi_epi8(scmn, scmn)));
        macc = _mm512_fmadd_ps(_mm512_mul_ps(mn, _mm512_set1_ps(_mm_cvtss_f32(_mm_movehdup_ps(dd)))),
                               _mm512_loadu_ps(s16 + 16 * sb), macc);
    }
    return _mm512_reduce_add_ps(acc) - _mm512_reduce_add_ps(macc);
}

static void gemv_q4_k(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x, float *y) {
    uint8_t xr[k];
    q4_k_prep(x, k, xr);
    const float *dx = xq8k_d(x, k), *s16 = xq8k_s16(x, k);
    for (int r = 0; r < nr; r++) y[r] = q4_k_row(w + r * ws, xr, dx, s16, k / QK_K);
}

// ---------------------------------------------------------------- packed panels (prompts)
// A prompt multiplies every weight by many tokens, so the weights are worth decoding
// once into the form that makes the arithmetic cheapest: a panel of 16 rows whose
// codes are interleaved by groups of 4 (byte 4r + j of register i holds weight
// 4i + j of row r, for one block of 32), with each row's float scale and offset per
// block. Every token then takes 8 dpbusd per block for all 16 rows at once, its 4
// activation bytes broadcast, and one float step per block covers 16 rows (the
// register tiles above pay a conversion and two float operations per row, token and
// pair of blocks). value = dsc * code + mc per weight, so a block adds
// dsc * dx * sum(code * qx) + mc * sx, with sx = dx * sum(qx) from the activation row.
// The panel covers PANEL_K weights of the row at a time (40 KiB, in L1/L2); longer
// rows add up slice after slice.

#define PANEL 16
#define PANEL_K 2048
#ifndef PANEL_T
#define PANEL_T 4
#endif
// A panel block of bw weights (32; 16 for Q6_K, whose scales cover 16) is bw / 4
// registers of codes, then the 16 rows' dsc and mc: bw / 4 + 2 registers.
AI int panel_regs(const int bw) { return bw / 4 + 2; }

// Row r's bw codes of one block into the panel block p's interleaved registers.
AI void panel_put(const int bw, __m512i *p, int r, const uint8_t *codes, float dsc, float mc) {
    for (int i = 0; i < bw / 4; i++) memcpy((uint8_t *)&p[i] + 4 * r, codes + 4 * i, 4);
    ((float *)&p[bw / 4])[r] = dsc;
    ((float *)&p[bw / 4 + 1])[r] = mc;
}

// The 32 codes of one block of each of 16 rows, two rows a register (z[p] = rows 2p
// and 2p + 1), into the 8 interleaved registers of panel block p_out: dword i of
// row r to lane r of register i. Each z[p] is spread to [a0 b0 a1 b1 .. a7 b7], so
// qword i holds the pair for lanes 2p, 2p + 1 of register i: an 8 x 8 transpose of
// qwords.
AI void panel_transpose(const __m512i z[8], __m512i *out) {
    const __m512i spread = _mm512_set_epi32(15, 7, 14, 6, 13, 5, 12, 4, 11, 3, 10, 2, 9, 1, 8, 0);
    __m512i y[8], t[8], u[8];
    for (int p = 0; p < 8; p++) y[p] = _mm512_permutexvar_epi32(spread, z[p]);
    for (int p = 0; p < 8; p += 2) {
        t[p] = _mm512_unpacklo_epi64(y[p], y[p + 1]);       // qwords 0, 2, 4, 6
        t[p + 1] = _mm512_unpackhi_epi64(y[p], y[p + 1]);   // qwords 1, 3, 5, 7
    }
    for (int q = 0; q < 2; q++)   // q = 0: rows 0-7, 1: rows 8-15
        for (int h = 0; h < 2; h++) {   // h = 0: even qwords, 1: odd
            __m512i a = t[4 * q + h], b = t[4 * q + 2 + h];
            u[4 * q + 2 * h] = _mm512_shuffle_i64x2(a, b, 0x88);       // qwords h, h + 4
            u[4 * q + 2 * h + 1] = _mm512_shuffle_i64x2(a, b, 0xDD);   // h + 2, h + 6
        }
    // u[2h + j] (rows 0-7) with u[4 + 2h + j] (rows 8-15): qwords h + 2j and h + 2j + 4
    for (int h = 0; h < 2; h++)
        for (int j = 0; j < 2; j++) {
            out[h + 2 * j] = _mm512_shuffle_i64x2(u[2 * h + j], u[4 + 2 * h + j], 0x88);
            out[h + 2 * j + 4] = _mm512_shuffle_i64x2(u[2 * h + j], u[4 + 2 * h + j], 0xDD);
        }
}

// Weights [i0, i0 + n) of nr rows (the rest of the 16 zero) into panel blocks.
AI void panel_pack(const int type, const uint8_t *w, size_t ws, int nr, int64_t i0, int64_t n,
                   __m512i *pb) {
    const int bw = type == LZ_Q6_K ? 16 : 32, nreg = panel_regs(bw);
    const __m256i m4 = _mm256_set1_epi8(0x0F), m3 = _mm256_set1_epi8(3);
    if (type != LZ_Q6_K) {
        // rows past nr read row 0 again (their lanes are never stored)
        const uint8_t *rows[PANEL];
        for (int r = 0; r < PANEL; r++) rows[r] = w + (r < nr ? r : 0) * ws;
        float kdsc[8][PANEL], kmc[8][PANEL];   // Q4_K: a super-block's, for its 8 blocks
        for (int64_t b = 0; b < n / 32; b++) {
            const int64_t blk = i0 / 32 + b;   // block of the row
            __m512i z[8];
            float dsc[PANEL], mc[PANEL];
            for (int p = 0; p < 8; p++) {
                const uint8_t *ra = rows[2 * p], *rb = rows[2 * p + 1];
                if (type == LZ_Q4_0) {
                    z[p] = nibbles_pair(ra + blk * 18 + 2, rb + blk * 18 + 2);
                } else if (type == LZ_Q8_0) {   // code = q + 128, unsigned
                    z[p] = _mm512_xor_si512(
                        _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(ra + blk * 34 + 2))),
                                           _mm256_loadu_si256((const __m256i *)(rb + blk * 34 + 2)), 1),
                        _mm512_set1_epi8((char)0x80));
                } else {   // Q4_K: block j of a super-block = low (even j) or high nibbles of chunk j / 2
                    const int64_t sb = blk / 8, j = blk % 8;
                    __m512i v = _mm512_inserti64x4(
                        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)(ra + sb * 144 + 16 + 32 * (j / 2)))),
                        _mm256_loadu_si256((const __m256i *)(rb + sb * 144 + 16 + 32 * (j / 2))), 1);
                    if (j & 1) v = _mm512_srli_epi16(v, 4);
                    z[p] = _mm512_and_si512(v, _mm512_set1_epi8(0x0F));
                }
            }
            if (type == LZ_Q4_K && blk % 8 == 0)   // slices start at super-blocks
                for (int r = 0; r < PANEL; r++) {   // value = d * sc * q - dmin * mn per 32
                    const uint8_t *sbp = rows[r] + blk / 8 * 144;
                    uint8_t sc[8], mn[8];
                    lz_k_scales(sbp + 4, sc, mn);
                    __m128 dd = _mm_cvtph_ps(_mm_cvtsi32_si128((int)ld32(sbp)));
                    for (int j = 0; j < 8; j++) {
                        kdsc[j][r] = _mm_cvtss_f32(dd) * sc[j];
                        kmc[j][r] = -_mm_cvtss_f32(_mm_movehdup_ps(dd)) * mn[j];
                    }
                }
            for (int r = 0; r < PANEL; r++) {
                if (type == LZ_Q4_K) {
                    dsc[r] = kdsc[blk % 8][r];
                    mc[r] = kmc[blk % 8][r];
                } else {
                    const float d = _cvtsh_ss((unsigned short)ld16(rows[r] + blk * lz_type_size(type)));
                    dsc[r] = d;
                    mc[r] = (type == LZ_Q4_0 ? -8.0f : -128.0f) * d;
                }
            }
            __m512i *p = pb + b * nreg;
            panel_transpose(z, p);
            p[8] = _mm512_castps_si512(_mm512_loadu_ps(dsc));
            p[9] = _mm512_castps_si512(_mm512_loadu_ps(mc));
        }
        return;
    }
    memset(pb, 0, sizeof *pb * (size_t)(n / bw * nreg));
    for (int r = 0; r < nr; r++) {
        const uint8_t *row = w + r * ws;
        {   // Q6_K: value = d * sc * (q - 32) per 16, q = 4 low bits (ql) + 2 high (qh)
            for (int64_t sb = 0; sb < n / QK_K; sb++) {
                const uint8_t *blk = row + (i0 / QK_K + sb) * 210;
                const float d = _cvtsh_ss((unsigned short)ld16(blk + 208));
                const int8_t *scales = (const int8_t *)(blk + 192);
                for (int h = 0; h < 2; h++) {
                    __m256i ql0 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h));
                    __m256i ql1 = _mm256_loadu_si256((const __m256i *)(blk + 64 * h + 32));
                    __m256i qh = _mm256_loadu_si256((const __m256i *)(blk + 128 + 32 * h));
                    uint8_t q[128];   // weights 128h + 0..127 in order
                    _mm256_storeu_si256((__m256i *)q, _mm256_or_si256(_mm256_and_si256(ql0, m4),
                                        _mm256_slli_epi16(_mm256_and_si256(qh, m3), 4)));
                    _mm256_storeu_si256((__m256i *)(q + 32), _mm256_or_si256(_mm256_and_si256(ql1, m4),
                                        _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(qh, 2), m3), 4)));
                    _mm256_storeu_si256((__m256i *)(q + 64), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
                                        _mm256_and_si256(qh, _mm256_set1_epi8(0x30))));
                    _mm256_storeu_si256((__m256i *)(q + 96), _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
                                        _mm256_and_si256(_mm256_srli_epi16(qh, 2), _mm256_set1_epi8(0x30))));
                    for (int g = 0; g < 8; g++) {
                        const float dsc = d * (float)scales[8 * h + g];
                        panel_put(16, pb + (16 * sb + 8 * h + g) * nreg, r, q + 16 * g, dsc, -32.0f * dsc);
                    }
                }
            }
        }
    }
}

// T tokens against the panel blocks of weights [i0, i0 + n) of the activation rows:
// y[t][0..nr) set (first slice) or added to.
AI void panel_tokens(const int type, const int T, const __m512i *pb, int64_t i0, int64_t n,
                     int64_t k, const uint8_t *x, size_t xs, float *y, size_t ldy, int nr,
                     int add) {
    const int bw = type == LZ_Q6_K ? 16 : 32, nreg = panel_regs(bw);
    const int xk = type == LZ_Q4_K || type == LZ_Q6_K ? XQ_Q8K : XQ_Q8;
    __m512 acc[T];
    for (int t = 0; t < T; t++) acc[t] = _mm512_setzero_ps();
    for (int64_t b = 0; b < n / bw; b++) {
        const __m512i *p = pb + b * nreg;
        const int64_t i = i0 + b * bw;   // first weight of the block
        for (int t = 0; t < T; t++) {
            const uint8_t *xt = x + t * xs;
            const int32_t *xw = (const int32_t *)(xt + i);
            __m512i s0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), p[0], _mm512_set1_epi32(xw[0]));
            __m512i s1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), p[1], _mm512_set1_epi32(xw[1]));
            s0 = _mm512_dpbusd_epi32(s0, p[2], _mm512_set1_epi32(xw[2]));
            s1 = _mm512_dpbusd_epi32(s1, p[3], _mm512_set1_epi32(xw[3]));
            if (bw == 32) {
                s0 = _mm512_dpbusd_epi32(s0, p[4], _mm512_set1_epi32(xw[4]));
                s1 = _mm512_dpbusd_epi32(s1, p[5], _mm512_set1_epi32(xw[5]));
                s0 = _mm512_dpbusd_epi32(s0, p[6], _mm512_set1_epi32(xw[6]));
                s1 = _mm512_dpbusd_epi32(s1, p[7], _mm512_set1_epi32(xw[7]));
            }
            float dx, sx;
            if (xk == XQ_Q8) {
                dx = xq8_d(xt, k)[i / 32];
                sx = xq8_s(xt, k)[i / 32];
            } else {
                const float *s16 = xq8k_s16(xt, k);
                dx = xq8k_d(xt, k)[i / QK_K];
                sx = bw == 16 ? s16[i / 16] : s16[i / 16] + s16[i / 16 + 1];
            }
            const __m512 dsc = _mm512_castsi512_ps(p[bw / 4]), mc = _mm512_castsi512_ps(p[bw / 4 + 1]);
            acc[t] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_add_epi32(s0, s1)),
                                     _mm512_mul_ps(dsc, _mm512_set1_ps(dx)), acc[t]);
            acc[t] = _mm512_fmadd_ps(mc, _mm512_set1_ps(sx), acc[t]);
        }
    }
    const __mmask16 m = (__mmask16)((1u << nr) - 1);
    for (int t = 0; t < T; t++) {
        float *yt = y + t * ldy;
        __m512 v = acc[t];
        if (add) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(m, yt));
        _mm512_mask_storeu_ps(yt, m, v);
    }
}

// nr <= 16 rows x nt tokens through packed panels, slice by slice.
AI void panel_gemm(const int type, int64_t k, const uint8_t *w, size_t ws, int nr,
                   const uint8_t *x, size_t xs, int nt, float *y, size_t ldy) {
    __m512i pb[PANEL_K / 16 * 6];   // room for the 16-weight blocks' 6 registers each
    for (int64_t i0 = 0; i0 < k; i0 += PANEL_K) {
        const int64_t n = k - i0 < PANEL_K ? k - i0 : PANEL_K;
        const int add = i0 > 0;
        panel_pack(type, w, ws, nr, i0, n, pb);
        int t = 0;
        for (; t + PANEL_T <= nt; t += PANEL_T)
            panel_tokens(type, PANEL_T, pb, i0, n, k, x + t * xs, xs, y + t * ldy, ldy, nr, add);
        switch (nt - t) {
        case 1: panel_tokens(type, 1, pb, i0, n, k, x + t * xs, xs, y + t * ldy, ldy, nr, add); break;
        case 2: panel_tokens(type, 2, pb, i0, n, k, x + t * xs, xs, y + t * ldy, ldy, nr, add); break;
        case 3: panel_tokens(type, 3, pb, i0, n, k, x + t * xs, xs, y + t * ldy, ldy, nr, add); break;
        default: break;
        }
    }
}

// Tokens from which a call packs panels (fewer: the register tiles, no packing).
#ifndef PANEL_MIN_T
#define PANEL_MIN_T 8
#endif
// Tokens per call for the types with panels: a whole token chunk of the driver, so
// each panel is packed once per chunk.
#define PANEL_TOKS 64

// ---------------------------------------------------------------- tiles

// Tile shapes, measured (bench/bench_kernels.py, 2 threads): 2 rows x 8 tokens runs
// the 32-block types 1.5-1.7x faster than 4 x 4, and 1 x 8 the K-quants 1.3-2x
// faster than 4 x 2 (the wider tiles spilled registers).
#ifndef LEGACY_R
#define LEGACY_R 2
#endif
#ifndef LEGACY_T
#define LEGACY_T 8
#endif
#ifndef KQ_R
#define KQ_R 1
#endif
#ifndef KQ_T
#define KQ_T 8
#endif

// Matrix x vector tiles of the 32-block types: 4 rows at a time.
#define DEFINE_LEGACY_TILE(name, type)                                                        \
    static void name(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x,       \
                     size_t xs, int nt, float *y, size_t ldy) {                               \
        if (nt >= PANEL_MIN_T && (type == LZ_Q4_0 || type == LZ_Q8_0) && nr <= PANEL) {      \
            int r = 0;                                                                        \
            for (; r < nr; r += PANEL)                                                        \
                panel_gemm(type, k, w + r * ws, ws, nr - r < PANEL ? nr - r : PANEL, x, xs, nt, \
                           y + r, ldy);                                                       \
            return;                                                                           \
        }                                                                                     \
        if (nt == 1 && type == LZ_Q4_0) {                                                             \
            gemv_q4_0(k, w, ws, nr, x, y);                                                    \
            return;                                                                           \
        }                                                                                     \
        if (nt == 1) {                                                                        \
            int r = 0;                                                                        \
            for (; r + 4 <= nr; r += 4) legacy_gemv4(type, k, w + r * ws, ws, x, y + r);      \
            for (; r < nr; r++) legacy_tile(type, 1, 1, k, w + r * ws, ws, x, xs, y + r, ldy); \
            return;                                                                           \
        }                                                                                     \
        TILES(legacy_tile, type, LEGACY_R, LEGACY_T);                                         \
    }

DEFINE_LEGACY_TILE(tile_q4_0, LZ_Q4_0)
DEFINE_LEGACY_TILE(tile_q4_1, LZ_Q4_1)
DEFINE_LEGACY_TILE(tile_q5_0, LZ_Q5_0)
DEFINE_LEGACY_TILE(tile_q5_1, LZ_Q5_1)
DEFINE_LEGACY_TILE(tile_q8_0, LZ_Q8_0)
DEFINE_TILE(tile_q2_k, kq_tile, LZ_Q2_K, KQ_R, KQ_T)
DEFINE_TILE(tile_q3_k, kq_tile, LZ_Q3_K, KQ_R, KQ_T)
static void tile_q4_k(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x,
                      size_t xs, int nt, float *y, size_t ldy) {
    if (nt == 1) {
        gemv_q4_k(k, w, ws, nr, x, y);
        return;
    }
    if (nt >= PANEL_MIN_T && nr <= PANEL) {
        panel_gemm(LZ_Q4_K, k, w, ws, nr, x, xs, nt, y, ldy);
        return;
    }
    TILES(kq_tile, LZ_Q4_K, KQ_R, KQ_T);
}
DEFINE_TILE(tile_q5_k, kq_tile, LZ_Q5_K, KQ_R, KQ_T)
static void tile_q6_k(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x,
                      size_t xs, int nt, float *y, size_t ldy) {
    if (nt >= PANEL_MIN_T && nr <= PANEL) {
        panel_gemm(LZ_Q6_K, k, w, ws, nr, x, xs, nt, y, ldy);
        return;
    }
    TILES(kq_tile, LZ_Q6_K, KQ_R, KQ_T);
}

#ifndef GEMV_ROWS
#define GEMV_ROWS 16
#endif

void lz_init_avx512(lz_kernels *k) {
    REGISTER_QUANT_TILES(k, MAX_K);
    // the matrix x vector kernels prepare the activations once per call: give them
    // more rows per call (still a multiple of every tile's rows)
    k->types[LZ_Q4_0].rows_pref = GEMV_ROWS;
    k->types[LZ_Q4_K].rows_pref = GEMV_ROWS;
    k->types[LZ_Q8_0].rows_pref = GEMV_ROWS;
    // prompts: whole token chunks per call, so that each packed panel serves them all
    k->types[LZ_Q4_0].toks_pref = PANEL_TOKS;
    k->types[LZ_Q8_0].toks_pref = PANEL_TOKS;
    k->types[LZ_Q4_K].toks_pref = PANEL_TOKS;
    k->types[LZ_Q6_K].toks_pref = PANEL_TOKS;
    k->types[LZ_Q6_K].rows_pref = GEMV_ROWS;
}
