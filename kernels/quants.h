// Block layouts of the GGML weight types, the 8-bit activation rows we multiply
// them with, and the table of per-type kernels that each instruction set fills in.
//
// A weight row of n values is n/block blocks laid end to end; blocks are packed
// (no padding, 2-byte alignment at best), so kernels use unaligned loads.
#ifndef LZ_QUANTS_H
#define LZ_QUANTS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

// GGML type ids as stored in GGUF (runtime/ggml_types.py has the same table).
enum {
    LZ_F32 = 0, LZ_F16 = 1, LZ_Q4_0 = 2, LZ_Q4_1 = 3, LZ_Q5_0 = 6, LZ_Q5_1 = 7,
    LZ_Q8_0 = 8, LZ_Q2_K = 10, LZ_Q3_K = 11, LZ_Q4_K = 12, LZ_Q5_K = 13, LZ_Q6_K = 14,
    LZ_BF16 = 30, LZ_NTYPES = 31
};

#define QK 32    // weights per block of the "legacy" types
#define QK_K 256 // weights per super-block of the K-quants

// Symbols of the exported ABI; everything else is hidden (-fvisibility=hidden).
#define LZ_API __attribute__((visibility("default")))

typedef uint16_t lz_half; // IEEE binary16 bits

// ---------------------------------------------------------------- weight blocks
// value = d * (q - 8), q a nibble; byte j holds weight j (low) and j+16 (high)
typedef struct { lz_half d; uint8_t qs[QK / 2]; } block_q4_0;
// value = d * q + m
typedef struct { lz_half d, m; uint8_t qs[QK / 2]; } block_q4_1;
// as Q4_0 plus a fifth bit per weight: bit j of qh (little-endian u32) is weight j's
typedef struct { lz_half d; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_0;   // d*(q-16)
typedef struct { lz_half d, m; uint8_t qh[4]; uint8_t qs[QK / 2]; } block_q5_1; // d*q+m
typedef struct { lz_half d; int8_t qs[QK]; } block_q8_0;                        // d*q

// 16 sub-blocks of 16; scales[i] = 4-bit scale | 4-bit min << 4.
// value = d*sc*q - dmin*mn, q 2 bits: qs byte l of a 128-half holds 4 weights,
// weight 32*j + l at bits 2j (l < 32 per half, see dequant_q2_k).
typedef struct { uint8_t scales[QK_K / 16]; uint8_t qs[QK_K / 4]; lz_half d, dmin; } block_q2_k;
// 3 bits: 2 low bits like Q2_K, high bit in hmask (set means +0, clear means -4);
// 16 signed 6-bit scales (minus 32) packed in 12 bytes.
typedef struct { uint8_t hmask[QK_K / 8]; uint8_t qs[QK_K / 4]; uint8_t scales[12]; lz_half d; } block_q3_k;
// 8 sub-blocks of 32 with 6-bit scale and min packed in 12 bytes; value = d*sc*q - dmin*mn
typedef struct { lz_half d, dmin; uint8_t scales[12]; uint8_t qs[QK_K / 2]; } block_q4_k;
typedef struct { lz_half d, dmin; uint8_t scales[12]; uint8_t qh[QK_K / 8]; uint8_t qs[QK_K / 2]; } block_q5_k;
// 16 sub-blocks of 16 with int8 scales; 6-bit q = 4 low bits in ql, 2 high bits in qh; value d*sc*(q-32)
typedef struct { uint8_t ql[QK_K / 2]; uint8_t qh[QK_K / 4]; int8_t scales[QK_K / 16]; lz_half d; } block_q6_k;

_Static_assert(sizeof(block_q4_0) == 18, "q4_0");
_Static_assert(sizeof(block_q4_1) == 20, "q4_1");
_Static_assert(sizeof(block_q5_0) == 22, "q5_0");
_Static_assert(sizeof(block_q5_1) == 24, "q5_1");
_Static_assert(sizeof(block_q8_0) == 34, "q8_0");
_Static_assert(sizeof(block_q2_k) == 84, "q2_k");
_Static_assert(sizeof(block_q3_k) == 110, "q3_k");
_Static_assert(sizeof(block_q4_k) == 144, "q4_k");
_Static_assert(sizeof(block_q5_k) == 176, "q5_k");
_Static_assert(sizeof(block_q6_k) == 210, "q6_k");

// ---------------------------------------------------------------- block geometry
// Weights per block and bytes per block of every type we compute with: the one table
// every kernel file reads (runtime/ggml_types.py keeps its own; tests/test_kernels.py
// checks they agree through lz_block_geometry). Kernels index it with a compile-time
// type, so the sizes fold to constants.
typedef struct { int block, size; } lz_geometry;
static const lz_geometry LZ_GEOMETRY[LZ_NTYPES] = {
    [LZ_F32] = {1, 4},
    [LZ_F16] = {1, 2},
    [LZ_BF16] = {1, 2},
    [LZ_Q4_0] = {QK, sizeof(block_q4_0)},
    [LZ_Q4_1] = {QK, sizeof(block_q4_1)},
    [LZ_Q5_0] = {QK, sizeof(block_q5_0)},
    [LZ_Q5_1] = {QK, sizeof(block_q5_1)},
    [LZ_Q8_0] = {QK, sizeof(block_q8_0)},
    [LZ_Q2_K] = {QK_K, sizeof(block_q2_k)},
    [LZ_Q3_K] = {QK_K, sizeof(block_q3_k)},
    [LZ_Q4_K] = {QK_K, sizeof(block_q4_k)},
    [LZ_Q5_K] = {QK_K, sizeof(block_q5_k)},
    [LZ_Q6_K] = {QK_K, sizeof(block_q6_k)},
};

// Bytes of one block of `type` (0 for types the table does not hold).
static inline int lz_type_size(int type) { return LZ_GEOMETRY[type].size; }

// ---------------------------------------------------------------- activation rows
// The dot products see activations the way llama.cpp's do (runtime/backend_numpy.py,
// quantize_activations): we quantize each activation row once per matmul.
//
// XQ_Q8 (for Q4_0..Q8_0): blocks of 32 int8 with an f16-rounded scale d (= amax/127)
// and s = d * sum(q) (what the Q4_0/Q5_0 offset needs on AVX2).
// XQ_Q81 (for Q4_1/Q5_1): the same layout, but s is rounded to f16 as llama.cpp's
// block_q8_1 stores it: the minimum m meets f16(d * sum(q)), d unrounded.
// A row of k values, k padded to kp = a multiple of 64 with zero blocks:
//     int8  qs[kp]; float d[kp/32]; float s[kp/32]
// The padding to pairs of blocks lets 512-bit kernels take two blocks per register.
//
// XQ_Q8K (for the K-quants): super-blocks of 256, one f32 scale each:
//     int8  qs[k]; float d[k/256]; int16 bsums[k/16] (sum of each 16 values);
//     float s16[k/16] (d * bsums: the minimums and offsets need them as floats)
//
// XQ_F32 / XQ_F16 / XQ_BF16: the row as f32, or rounded to f16 or bf16 like the
// reference does for F16/BF16 weights (stored as that 16-bit type).
enum { XQ_F32 = 0, XQ_Q8 = 1, XQ_Q8K = 2, XQ_F16 = 3, XQ_BF16 = 4, XQ_Q81 = 5 };

static inline int64_t lz_pad64(int64_t k) { return (k + 63) & ~(int64_t)63; }

// Bytes of one quantized activation row (rounded to 64 so rows stay aligned).
static inline size_t xq_row_bytes(int kind, int64_t k) {
    size_t n;
    switch (kind) {
    case XQ_Q8: case XQ_Q81: n = (size_t)lz_pad64(k) + (size_t)lz_pad64(k) / 32 * 8; break;
    case XQ_Q8K: n = (size_t)k + (size_t)k / 256 * 4 + (size_t)k / 16 * 6; break;
    case XQ_F16: case XQ_BF16: n = (size_t)k * 2; break;
    default: n = (size_t)k * 4; break;
    }
    return (n + 63) & ~(size_t)63;
}

static inline const float *xq8_d(const void *row, int64_t k) {
    return (const float *)((const int8_t *)row + lz_pad64(k));
}
static inline const float *xq8_s(const void *row, int64_t k) {
    return xq8_d(row, k) + lz_pad64(k) / 32;
}
static inline const float *xq8k_d(const void *row, int64_t k) {
    return (const float *)((const int8_t *)row + k);
}
static inline const int16_t *xq8k_bsums(const void *row, int64_t k) {
    return (const int16_t *)((const int8_t *)row + k + k / 256 * 4);
}
static inline const float *xq8k_s16(const void *row, int64_t k) {
    return (const float *)((const int8_t *)row + k + k / 256 * 4 + k / 16 * 2);
}

// ---------------------------------------------------------------- half precision
static inline float lz_bits_f32(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t lz_f32_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

// binary16 -> binary32, exact. Normal numbers only need the exponent rebiased
// (15 -> 127, i.e. +112 << 23); subnormals are m * 2^-24, computed in float.
static inline float lz_h2f(lz_half h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t em = h & 0x7fff;
    if (em >= 0x7c00) return lz_bits_f32(sign | 0x7f800000 | ((em & 0x3ff) << 13));
    if (em >= 0x0400) return lz_bits_f32(sign | ((em << 13) + (112u << 23)));
    return lz_bits_f32(sign | lz_f32_bits((float)em * 5.9604644775390625e-8f));
}

// binary32 -> binary16, round to nearest even (what F16C's vcvtps2ph and NumPy do).
static inline lz_half lz_f2h(float f) {
    uint32_t x = lz_f32_bits(f);
    uint32_t sign = (x >> 16) & 0x8000;
    uint32_t ax = x & 0x7fffffff;
    if (ax >= 0x7f800000) return (lz_half)(sign | 0x7c00 | (ax > 0x7f800000 ? 0x200 : 0));
    if (ax >= 0x477ff000) return (lz_half)(sign | 0x7c00); // rounds to >= 65520: inf
    if (ax < 0x38800000) {
        // below the smallest normal half: let float addition do the rounding, since
        // adding 0.5 aligns the result's mantissa with binary16 subnormal steps (2^-24)
        float r = lz_bits_f32(ax) + 0.5f;
        return (lz_half)(sign | (lz_f32_bits(r) - lz_f32_bits(0.5f)));
    }
    uint32_t mant_odd = (ax >> 13) & 1;
    ax += 0xc8000fff + mant_odd; // rebias exponent (-112 << 23) and round half to even
    return (lz_half)(sign | (ax >> 13));
}

static inline float lz_bf2f(uint16_t b) { return lz_bits_f32((uint32_t)b << 16); }
static inline uint16_t lz_f2bf(float f) {
    uint32_t x = lz_f32_bits(f);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 64); // quiet NaN
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

// 6-bit scales and mins of Q4_K/Q5_K: 8 of each in 12 bytes. Scales 0-3 and mins
// 0-3 are the low 6 bits of bytes 0-3 and 4-7; scales/mins 4-7 take their low 4 bits
// from the nibbles of bytes 8-11 and their top 2 bits from the spare bits of 0-7.
static inline void lz_k_scales(const uint8_t *s, uint8_t sc[8], uint8_t mn[8]) {
    for (int j = 0; j < 4; j++) {
        sc[j] = s[j] & 63;
        mn[j] = s[j + 4] & 63;
        sc[j + 4] = (uint8_t)((s[j + 8] & 0xf) | ((s[j] >> 6) << 4));
        mn[j + 4] = (uint8_t)((s[j + 8] >> 4) | ((s[j + 4] >> 6) << 4));
    }
}

// Q3_K's 16 scales: low nibbles in bytes 0-7 (scale i < 8 low nibble of byte i,
// i >= 8 high nibble of byte i-8), top 2 bits in bytes 8-11.
static inline void lz_q3_scales(const uint8_t *s, int8_t out[16]) {
    for (int i = 0; i < 16; i++) {
        int low = i < 8 ? (s[i] & 0xf) : (s[i - 8] >> 4);
        int high = (s[8 + i % 4] >> (2 * (i / 4))) & 3;
        out[i] = (int8_t)((low | (high << 4)) - 32);
    }
}

// ---------------------------------------------------------------- unpacked blocks
// A block's integer codes in weight order, and its scales, for the code that works
// on them one block at a time: the portable dot products (matmul.c),
// dequantization (quants.c) and the scalar parts of the NEON and RVV files.

// The 32 codes of a legacy block: value = d * code (+ m for Q4_1/Q5_1). The codes of
// Q4_0 and Q5_0 include their offset (-8, -16).
static inline void lz_legacy_codes(int type, const uint8_t *blk, int8_t q[QK]) {
    if (type == LZ_Q8_0) {
        memcpy(q, ((const block_q8_0 *)blk)->qs, QK);
        return;
    }
    const uint8_t *qs;
    uint32_t qh = 0;
    int offset = 0;
    if (type == LZ_Q4_0) {
        qs = ((const block_q4_0 *)blk)->qs;
        offset = 8;
    } else if (type == LZ_Q4_1) {
        qs = ((const block_q4_1 *)blk)->qs;
    } else if (type == LZ_Q5_0) {
        qs = ((const block_q5_0 *)blk)->qs;
        memcpy(&qh, ((const block_q5_0 *)blk)->qh, 4);
        offset = 16;
    } else {
        qs = ((const block_q5_1 *)blk)->qs;
        memcpy(&qh, ((const block_q5_1 *)blk)->qh, 4);
    }
    // byte j holds weight j (low nibble) and j + 16 (high); bit j of qh is weight j's fifth
    for (int j = 0; j < 16; j++) {
        q[j] = (int8_t)(((qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4)) - offset);
        q[j + 16] = (int8_t)(((qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - offset);
    }
}

// The 256 codes of a K-quant super-block, with the offsets of Q3_K (a clear high bit
// means -4) and Q6_K (-32) included.
static inline void lz_kq_codes(int type, const uint8_t *blk, int8_t q[QK_K]) {
    if (type == LZ_Q2_K || type == LZ_Q3_K) {
        // 2-bit planes: byte l of a 128-weight half holds weights 32j + l at bits 2j
        const uint8_t *qs = type == LZ_Q2_K ? ((const block_q2_k *)blk)->qs : ((const block_q3_k *)blk)->qs;
        for (int half = 0; half < 2; half++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    int v = (qs[half * 32 + l] >> (2 * j)) & 3;
                    if (type == LZ_Q3_K && !((((const block_q3_k *)blk)->hmask[l] >> (half * 4 + j)) & 1))
                        v -= 4;
                    q[half * 128 + j * 32 + l] = (int8_t)v;
                }
    } else if (type == LZ_Q4_K || type == LZ_Q5_K) {
        // chunk c of 64: the low nibbles of 32 bytes, then their high nibbles
        const uint8_t *qs = type == LZ_Q4_K ? ((const block_q4_k *)blk)->qs : ((const block_q5_k *)blk)->qs;
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int lo = qs[c * 32 + l] & 0xf, hi = qs[c * 32 + l] >> 4;
                if (type == LZ_Q5_K) {
                    uint8_t h = ((const block_q5_k *)blk)->qh[l];
                    lo |= ((h >> (2 * c)) & 1) << 4;
                    hi |= ((h >> (2 * c + 1)) & 1) << 4;
                }
                q[c * 64 + l] = (int8_t)lo;
                q[c * 64 + 32 + l] = (int8_t)hi;
            }
    } else { // Q6_K: 4 low bits in ql, 2 high bits in qh
        const block_q6_k *b = (const block_q6_k *)blk;
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = b->ql + half * 64, *qh = b->qh + half * 32;
            int8_t *o = q + half * 128;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
    }
}

// A K-quant super-block's scale and minimum for each group of 16 weights, and its
// d and dmin: value = d * sc[g] * code - dmin * mn[g]. Q3_K and Q6_K have no
// minimums (mn = 0, dmin = 0).
static inline void lz_kq_scales(int type, const uint8_t *blk, int sc[16], int mn[16], float *d,
                                float *dmin) {
    for (int g = 0; g < 16; g++) mn[g] = 0;
    *dmin = 0.0f;
    if (type == LZ_Q2_K) {   // a 4-bit scale and a 4-bit minimum per group
        const block_q2_k *b = (const block_q2_k *)blk;
        for (int g = 0; g < 16; g++) {
            sc[g] = b->scales[g] & 0xf;
            mn[g] = b->scales[g] >> 4;
        }
        *d = lz_h2f(b->d);
        *dmin = lz_h2f(b->dmin);
    } else if (type == LZ_Q3_K) {
        const block_q3_k *b = (const block_q3_k *)blk;
        int8_t s[16];
        lz_q3_scales(b->scales, s);
        for (int g = 0; g < 16; g++) sc[g] = s[g];
        *d = lz_h2f(b->d);
    } else if (type == LZ_Q4_K || type == LZ_Q5_K) {   // one scale and minimum per 32
        const block_q4_k *b = (const block_q4_k *)blk;    // Q5_K starts the same way
        uint8_t s[8], m[8];
        lz_k_scales(b->scales, s, m);
        for (int g = 0; g < 16; g++) {
            sc[g] = s[g >> 1];
            mn[g] = m[g >> 1];
        }
        *d = lz_h2f(b->d);
        *dmin = lz_h2f(b->dmin);
    } else {
        const block_q6_k *b = (const block_q6_k *)blk;
        for (int g = 0; g < 16; g++) sc[g] = b->scales[g];
        *d = lz_h2f(b->d);
    }
}

// ---------------------------------------------------------------- kernel table
// A tile kernel computes y[t*ldy + r] = dot(weight row r, activation row t) for
// r < nr, t < nt. Weight rows are w_stride bytes apart; activation rows (in the
// type's XQ format) x_stride bytes apart; k values per row.
typedef void (*lz_tile_fn)(int64_t k, const uint8_t *w, size_t w_stride, int nr,
                           const uint8_t *x, size_t x_stride, int nt, float *y, size_t ldy);
// Quantize one f32 row of k values into its XQ format.
typedef void (*lz_quant_fn)(const float *x, void *out, int64_t k);
typedef void (*lz_dequant_fn)(const void *src, float *dst, int64_t n);

typedef struct {
    int block, type_size, xq;
    lz_tile_fn tile;
    lz_dequant_fn dequant;
    // Tile shape the kernel likes (rows, tokens): the driver hands it nr <= rows_pref
    // rows and nt <= toks_pref tokens at a time.
    int rows_pref, toks_pref;
    // SIMD kernels may cap the row length (0: none); longer rows use `portable`.
    int64_t max_k;
    lz_tile_fn portable;
} lz_type_ops;

typedef struct {
    lz_type_ops types[LZ_NTYPES];
    lz_quant_fn quant[6]; // by XQ kind
    const char *name;
} lz_kernels;

extern lz_kernels lz_k;

void lz_init_portable(lz_kernels *k);
#if defined(LZ_AVX2)
void lz_init_avx2(lz_kernels *k);
#endif
#if defined(LZ_AVX512)
void lz_init_avx512(lz_kernels *k);
#endif
#if defined(LZ_NEON)
void lz_init_neon(lz_kernels *k);
#endif
#if defined(LZ_RVV)
void lz_init_rvv(lz_kernels *k);
#endif

// Portable pieces other files reuse.
void lz_quant_q8(const float *x, void *out, int64_t k);
void lz_quant_q8k(const float *x, void *out, int64_t k);
void lz_dequant_row(int type, const void *src, float *dst, int64_t n);

#endif
