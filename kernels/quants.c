// Portable dequantization of every weight type, and the activation quantizers.
//
// The quantizers must reproduce runtime/backend_numpy.py's quantize_activations
// bit for bit (same scale, same rounding), because greedy decoding is compared
// token for token with llama.cpp. All arithmetic here is plain float32.
#include "quants.h"

// Round half to even for |v| < 2^22: adding 1.5*2^23 pushes the fraction bits out
// and the FPU's default rounding (to nearest even) does the rest.
static inline float round_even(float v) {
    // (strict IEEE semantics, no -ffast-math, keep the compiler from folding this)
    return (v + 12582912.0f) - 12582912.0f;
}

// ---------------------------------------------------------------- activations

// llama.cpp's x86 and NEON quantizers: id = 127 / amax, rounding half to even
// (their SIMD rounding), d stored as f16. Q8_1 rows (round_s) also keep
// s = f16(d * sum(q)) with the unrounded d, which the Q4_1/Q5_1 minimum meets.
static void quant_q8_rows(const float *x, void *out, int64_t k, int round_s) {
    int8_t *qs = (int8_t *)out;
    float *dd = (float *)(qs + lz_pad64(k));
    int64_t nb = k / QK, nbp = lz_pad64(k) / QK;
    float *ss = dd + nbp;
    for (int64_t b = 0; b < nbp; b++) {
        float dq = 0.0f, s = 0.0f;
        int8_t *q = qs + b * QK;
        if (b < nb) {
            const float *v = x + b * QK;
            float amax = 0.0f;
            for (int j = 0; j < QK; j++) {
                float a = v[j] < 0 ? -v[j] : v[j];
                amax = a > amax ? a : amax;
            }
            float d = amax / 127.0f;
            float id = amax != 0.0f ? 127.0f / amax : 0.0f;
            int sum = 0;
            for (int j = 0; j < QK; j++) {
                float r = round_even(v[j] * id);
                r = r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r);
                q[j] = (int8_t)r;
                sum += q[j];
            }
            dq = lz_h2f(lz_f2h(d)); // the dot product sees the f16-rounded scale
            s = round_s ? lz_h2f(lz_f2h(d * (float)sum)) : dq * (float)sum;
        } else {
            memset(q, 0, QK);
        }
        dd[b] = dq;
        ss[b] = s;
    }
}

void lz_quant_q8(const float *x, void *out, int64_t k) { quant_q8_rows(x, out, k, 0); }

static void quant_q8_1(const float *x, void *out, int64_t k) { quant_q8_rows(x, out, k, 1); }

void lz_quant_q8k(const float *x, void *out, int64_t k) {
    int8_t *qs = (int8_t *)out;
    float *dd = (float *)(qs + k);
    int16_t *bsums = (int16_t *)(dd + k / QK_K);
    float *s16 = (float *)(bsums + k / 16);
    for (int64_t b = 0; b < k / QK_K; b++) {
        const float *v = x + b * QK_K;
        int8_t *q = qs + b * QK_K;
        // the scale follows the signed extreme (the first of the largest magnitude)
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < QK_K; j++) {
            float a = v[j] < 0 ? -v[j] : v[j];
            if (a > amax) { amax = a; max = v[j]; }
        }
        if (amax == 0.0f) {
            dd[b] = 0.0f;
            memset(q, 0, QK_K);
            memset(bsums + b * 16, 0, 32);
            memset(s16 + b * 16, 0, 64);
            continue;
        }
        float iscale = -127.0f / max;
        for (int j = 0; j < QK_K; j++) {
            float r = round_even(v[j] * iscale);
            q[j] = (int8_t)(r > 127.0f ? 127.0f : r);
        }
        for (int g = 0; g < 16; g++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += q[g * 16 + j];
            bsums[b * 16 + g] = (int16_t)sum;
        }
        dd[b] = 1.0f / iscale;
        for (int g = 0; g < 16; g++) s16[b * 16 + g] = dd[b] * (float)bsums[b * 16 + g];
    }
}

static void quant_f16(const float *x, void *out, int64_t k) {
    lz_half *h = (lz_half *)out;
    for (int64_t i = 0; i < k; i++) h[i] = lz_f2h(x[i]);
}

static void quant_bf16(const float *x, void *out, int64_t k) {
    uint16_t *h = (uint16_t *)out;
    for (int64_t i = 0; i < k; i++) h[i] = lz_f2bf(x[i]);
}

static void quant_f32(const float *x, void *out, int64_t k) { memcpy(out, x, (size_t)k * 4); }

// ---------------------------------------------------------------- dequantization

static void dequant_f32(const void *src, float *y, int64_t n) { memcpy(y, src, (size_t)n * 4); }

static void dequant_f16(const void *src, float *y, int64_t n) {
    const lz_half *h = (const lz_half *)src;
    for (int64_t i = 0; i < n; i++) y[i] = lz_h2f(h[i]);
}

static void dequant_bf16(const void *src, float *y, int64_t n) {
    const uint16_t *h = (const uint16_t *)src;
    for (int64_t i = 0; i < n; i++) y[i] = lz_bf2f(h[i]);
}

// Legacy blocks: value = d * code (+ m).
static inline __attribute__((always_inline)) void dequant_legacy(const int type, const void *src,
                                                                 float *y, int64_t n) {
    const size_t bs = (size_t)lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    for (int64_t b = 0; b < n / QK; b++, y += QK) {
        const uint8_t *blk = (const uint8_t *)src + b * bs;
        int8_t q[QK];
        lz_legacy_codes(type, blk, q);
        lz_half dh, mh;
        memcpy(&dh, blk, 2);                    // every legacy block starts with d,
        float d = lz_h2f(dh);
        if (with_min) {                         // and Q4_1/Q5_1 follow it with m
            memcpy(&mh, blk + 2, 2);
            float m = lz_h2f(mh);
            for (int j = 0; j < QK; j++) y[j] = d * (float)q[j] + m;
        } else {
            for (int j = 0; j < QK; j++) y[j] = d * (float)q[j];
        }
    }
}

// K-quants: value = (d * scale) * code - dmin * minimum, per group of 16.
static inline __attribute__((always_inline)) void dequant_kq(const int type, const void *src,
                                                             float *y, int64_t n) {
    const size_t bs = (size_t)lz_type_size(type);
    for (int64_t b = 0; b < n / QK_K; b++, y += QK_K) {
        const uint8_t *blk = (const uint8_t *)src + b * bs;
        int8_t q[QK_K];
        lz_kq_codes(type, blk, q);
        int sc[16], mn[16];
        float d, dmin;
        lz_kq_scales(type, blk, sc, mn, &d, &dmin);
        for (int g = 0; g < 16; g++) {
            float dl = d * (float)sc[g], ml = dmin * (float)mn[g];   // ml = 0 without minimums
            for (int j = 0; j < 16; j++) y[g * 16 + j] = dl * (float)q[g * 16 + j] - ml;
        }
    }
}

#define DEQUANT(name, fn, type) \
    static void name(const void *src, float *y, int64_t n) { fn(type, src, y, n); }
DEQUANT(dequant_q4_0, dequant_legacy, LZ_Q4_0)
DEQUANT(dequant_q4_1, dequant_legacy, LZ_Q4_1)
DEQUANT(dequant_q5_0, dequant_legacy, LZ_Q5_0)
DEQUANT(dequant_q5_1, dequant_legacy, LZ_Q5_1)
DEQUANT(dequant_q8_0, dequant_legacy, LZ_Q8_0)
DEQUANT(dequant_q2_k, dequant_kq, LZ_Q2_K)
DEQUANT(dequant_q3_k, dequant_kq, LZ_Q3_K)
DEQUANT(dequant_q4_k, dequant_kq, LZ_Q4_K)
DEQUANT(dequant_q5_k, dequant_kq, LZ_Q5_K)
DEQUANT(dequant_q6_k, dequant_kq, LZ_Q6_K)

void lz_dequant_row(int type, const void *src, float *dst, int64_t n) {
    if (type >= 0 && type < LZ_NTYPES && lz_k.types[type].dequant)
        lz_k.types[type].dequant(src, dst, n);
}

// Registered by matmul.c's lz_init_portable.
void lz_quants_register(lz_kernels *k) {
    static const struct { int type, xq; lz_dequant_fn f; } t[] = {
        {LZ_F32, XQ_F32, dequant_f32},
        {LZ_F16, XQ_F16, dequant_f16},
        {LZ_BF16, XQ_BF16, dequant_bf16},
        {LZ_Q4_0, XQ_Q8, dequant_q4_0},
        {LZ_Q4_1, XQ_Q81, dequant_q4_1},
        {LZ_Q5_0, XQ_Q8, dequant_q5_0},
        {LZ_Q5_1, XQ_Q81, dequant_q5_1},
        {LZ_Q8_0, XQ_Q8, dequant_q8_0},
        {LZ_Q2_K, XQ_Q8K, dequant_q2_k},
        {LZ_Q3_K, XQ_Q8K, dequant_q3_k},
        {LZ_Q4_K, XQ_Q8K, dequant_q4_k},
        {LZ_Q5_K, XQ_Q8K, dequant_q5_k},
        {LZ_Q6_K, XQ_Q8K, dequant_q6_k},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        lz_type_ops *o = &k->types[t[i].type];
        o->block = LZ_GEOMETRY[t[i].type].block;
        o->type_size = LZ_GEOMETRY[t[i].type].size;
        o->xq = t[i].xq;
        o->dequant = t[i].f;
    }
    k->quant[XQ_F32] = quant_f32;
    k->quant[XQ_Q8] = lz_quant_q8;
    k->quant[XQ_Q81] = quant_q8_1;
    k->quant[XQ_Q8K] = lz_quant_q8k;
    k->quant[XQ_F16] = quant_f16;
    k->quant[XQ_BF16] = quant_bf16;
}
