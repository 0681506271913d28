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

// ---------------------------------------------------------------- activation rows
// The dot products see activations the way llama.cpp's do (runtime/backend_numpy.py,
// quantize_activations): we quantize each activation row once per matmul.
//
// XQ_Q8 (for Q4_0..Q8_0): blocks of 32 int8 with an f16-rounded scale d (= amax/127)
// and s = d * sum(q) (what the Q4_1/Q5_1 minimum and the Q4_0/Q5_0 offset need).
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
enum { XQ_F32 = 0, XQ_Q8 = 1, XQ_Q8K = 2, XQ_F16 = 3, XQ_BF16 = 4 };

static inline int64_t lz_pad64(int64_t k) { return (k + 63) & ~(int64_t)63; }

// Bytes of one quantized activation row (rounded to 64 so rows stay aligned).
static inline size_t xq_row_bytes(int kind, int64_t k) {
    size_t n;
    switch (kind) {
    case XQ_Q8: n = (size_t)lz_pad64(k) + (size_t)lz_pad64(k) / 32 * 8; break;
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
    lz_quant_fn quant[5]; // by XQ kind
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
