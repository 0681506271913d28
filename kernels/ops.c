// The rest of a forward pass: RMSNorm, RoPE, attention over an f16 KV cache,
// gated activations, element-wise ops, embedding lookup, argmax.
//
// Numerics follow runtime/backend_numpy.py (the oracle, itself llama.cpp's CPU
// numerics): norms sum squares in double as ggml does, the KV cache and the attention's value
// accumulator are f16, softmax is computed online over keys in order.
#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>

#include "ops.h"
#include "quants.h"
#include "threads.h"

#if defined(__F16C__)
#include <immintrin.h>
#elif defined(__aarch64__)
#include <arm_neon.h>
#endif

// ---------------------------------------------------------------- f16 rows (the KV cache)

static void f2h_row(const float *src, lz_half *dst, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(dst + i),
                         _mm256_cvtps_ph(_mm256_loadu_ps(src + i), _MM_FROUND_TO_NEAREST_INT));
#elif defined(__aarch64__)
    for (; i + 4 <= n; i += 4)
        vst1_u16(dst + i, vreinterpret_u16_f16(vcvt_f16_f32(vld1q_f32(src + i))));
#endif
    for (; i < n; i++) dst[i] = lz_f2h(src[i]);
}

// Round to the nearest f16 value, kept as f32.
static void round16_row(float *a, int64_t n) {
    int64_t i = 0;
#if defined(__F16C__)
    for (; i + 8 <= n; i += 8) {
        __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(a + i), _MM_FROUND_TO_NEAREST_INT);
        _mm256_storeu_ps(a + i, _mm256_cvtph_ps(h));
    }
#elif defined(__aarch64__)
    for (; i + 4 <= n; i += 4) vst1q_f32(a + i, vcvt_f32_f16(vcvt_f16_f32(vld1q_f32(a + i))));
#endif
    for (; i < n; i++) a[i] = lz_h2f(lz_f2h(a[i]));
}

// ---------------------------------------------------------------- exp

// exp(x) to about 1 ulp, branch-free so loops over it vectorize: x = n*ln2 + r with
// |r| <= ln2/2, exp(r) by its Taylor series to r^7 (truncation < 1.2e-7 relative),
// 2^n built in the exponent bits. Below -87.3 flushes to 0, above 88.7 gives inf.
static inline float lz_expf(float x) {
    float xc = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
    float n = (xc * 1.44269504088896341f + 12582912.0f) - 12582912.0f; // round to nearest
    float r = xc - n * 0.693145751953125f;   // ln2 split in two so n*hi is exact
    r = r - n * 1.428606765330187045e-06f;
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    float scale = lz_bits_f32((uint32_t)((int32_t)n + 127) << 23);
    float y = p * scale;
    y = x < -87.3f ? 0.0f : y;
    return x > 88.7f ? INFINITY : y;
}

// ---------------------------------------------------------------- element-wise

// As ggml's rms_norm: squares in f32 summed in double, the mean and the scale in
// f32, then x * scale * w. (Any other rounding here differs from llama.cpp by an ulp,
// which 8-bit activation quantization and the f16 attention accumulator amplify.)
void lz_rmsnorm(const float *x, float *y, int64_t count, const float *w, int64_t group, float eps) {
    if (group <= 0 || count < 0 || count % group) return;   // the caller checks; never stray
    for (int64_t c = 0; c < count; c += group) {
        double ss = 0.0;
        for (int64_t i = 0; i < group; i++) ss += (double)(x[c + i] * x[c + i]);
        const float mean = (float)(ss / (double)group);
        const float scale = 1.0f / sqrtf(mean + eps);
        if (w)
            for (int64_t i = 0; i < group; i++) y[c + i] = x[c + i] * scale * w[i];
        else
            for (int64_t i = 0; i < group; i++) y[c + i] = x[c + i] * scale;
    }
}

void lz_add(float *x, const float *y, int64_t n) {
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

void lz_add_bias(float *x, int64_t rows, int64_t n, const float *b) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t i = 0; i < n; i++) x[r * n + i] += b[i];
}

void lz_scale(float *x, int64_t n, float s) {
    for (int64_t i = 0; i < n; i++) x[i] *= s;
}

void lz_swiglu(const float *g, const float *u, float *out, int64_t n) {
    for (int64_t i = 0; i < n; i++) out[i] = g[i] / (1.0f + lz_expf(-g[i])) * u[i];
}

// gelu_tanh(g) = g * (1 + tanh(y)) / 2 with y = sqrt(2/pi) * (g + 0.044715 g^3),
// and (1 + tanh(y)) / 2 = 1 / (1 + exp(-2y)): no cancellation near 0.
void lz_geglu(const float *g, const float *u, float *out, int64_t n) {
    const float c = 0.7978845608028654f;
    for (int64_t i = 0; i < n; i++) {
        float v = g[i];
        float y = c * (v + 0.044715f * v * v * v);
        out[i] = v / (1.0f + lz_expf(-2.0f * y)) * u[i];
    }
}

// The k largest entries of x, largest first (ties: lower index first), into
// idx/val; returns how many (min(k, n)). Sampling needs only these candidates, and
// picking them here saves turning a whole vocabulary of logits into Python floats.
// A sorted window of k: most entries fall below its smallest and cost one compare.
int64_t lz_topk(const float *x, int64_t n, int64_t k, int64_t *idx, float *val) {
    if (k > n) k = n;
    if (k <= 0) return 0;
    int64_t have = 0;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        if (have == k && !(v > val[k - 1])) continue;
        int64_t j = have < k ? have++ : k - 1;
        while (j > 0 && v > val[j - 1]) {
            val[j] = val[j - 1];
            idx[j] = idx[j - 1];
            j--;
        }
        val[j] = v;
        idx[j] = i;
    }
    return have;
}

// log softmax(x)[target], in double (perplexity sums thousands of these).
double lz_logprob(const float *x, int64_t n, int64_t target) {
    double top = x[0];
    for (int64_t i = 1; i < n; i++) top = x[i] > top ? x[i] : top;
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++) sum += exp((double)x[i] - top);
    return (double)x[target] - top - log(sum);
}

void lz_embed(int type, const void *table, int64_t n, const int32_t *ids, int64_t n_ids, float *out) {
    if (type < 0 || type >= LZ_NTYPES || !lz_k.types[type].dequant) return;
    const lz_type_ops *o = &lz_k.types[type];
    if (n <= 0 || n % o->block) return;
    size_t row = (size_t)(n / o->block) * (size_t)o->type_size;
    for (int64_t r = 0; r < n_ids; r++)
        if (ids[r] >= 0) o->dequant((const uint8_t *)table + (size_t)ids[r] * row, out + r * n, n);
}

// ---------------------------------------------------------------- RoPE

// cs[t][i] = (cos, sin) of (pos0 + t) * inv_freq[i], angles in double like the oracle.
void lz_rope_table(float *cs, int64_t pos0, int64_t n_tokens, const double *inv_freq, int half) {
    for (int64_t t = 0; t < n_tokens; t++)
        for (int i = 0; i < half; i++) {
            double theta = (double)(pos0 + t) * inv_freq[i];
            cs[(t * half + i) * 2] = (float)cos(theta);
            cs[(t * half + i) * 2 + 1] = (float)sin(theta);
        }
}

// The same for rows at arbitrary positions (sequences decoding together).
void lz_rope_table_at(float *cs, const int64_t *positions, int64_t n_rows, const double *inv_freq,
                      int half) {
    for (int64_t t = 0; t < n_rows; t++) lz_rope_table(cs + t * half * 2, positions[t], 1, inv_freq, half);
}

// Rotate n_rot dims of each head: pairs (2i, 2i+1), or (i, i + n_rot/2) for NeoX.
void lz_rope(float *x, int64_t n_tokens, int64_t ldx, int n_heads, int head_dim, int n_rot,
             int neox, const float *cs) {
    if (n_rot < 0 || n_rot % 2 || n_rot > head_dim || n_heads < 0 || ldx < (int64_t)n_heads * head_dim)
        return;
    int half = n_rot / 2;
    for (int64_t t = 0; t < n_tokens; t++) {
        const float *c = cs + t * half * 2;
        for (int h = 0; h < n_heads; h++) {
            float *v = x + t * ldx + (int64_t)h * head_dim;
            if (neox) {
                for (int i = 0; i < half; i++) {
                    float a = v[i], b = v[i + half];
                    v[i] = a * c[2 * i] - b * c[2 * i + 1];
                    v[i + half] = a * c[2 * i + 1] + b * c[2 * i];
                }
            } else {
                for (int i = 0; i < half; i++) {
                    float a = v[2 * i], b = v[2 * i + 1];
                    v[2 * i] = a * c[2 * i] - b * c[2 * i + 1];
                    v[2 * i + 1] = a * c[2 * i + 1] + b * c[2 * i];
                }
            }
        }
    }
}

// ---------------------------------------------------------------- attention


#define LZ_MAX_HEAD_DIM 1024

// q . k for an f32 query (already f16-valued) and an f16 key.
static float dot_qk(const float *q, const lz_half *k, int n) {
    int d = 0;
    float sum = 0.0f;
#if defined(__AVX512F__)
    if (n % 16 == 0) {
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        for (; d + 32 <= n; d += 32) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + d))), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + d + 16))), a1);
        }
        if (d < n)
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + d))), a0);
        return _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));
    }
#endif
#if defined(__F16C__) && defined(__FMA__)
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    for (; d + 16 <= n; d += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d))), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8),
                             _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d + 8))), a1);
    }
    __m256 a = _mm256_add_ps(a0, a1);
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    sum = _mm_cvtss_f32(h);
#elif defined(__aarch64__)
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    for (; d + 8 <= n; d += 8) {
        float16x8_t kh = vreinterpretq_f16_u16(vld1q_u16(k + d));
        a0 = vfmaq_f32(a0, vld1q_f32(q + d), vcvt_f32_f16(vget_low_f16(kh)));
        a1 = vfmaq_f32(a1, vld1q_f32(q + d + 4), vcvt_f32_f16(vget_high_f16(kh)));
    }
    sum = vaddvq_f32(vaddq_f32(a0, a1));
#endif
    for (; d < n; d++) sum += q[d] * lz_h2f(k[d]);
    return sum;
}

#if defined(__AVX512F__)
// Scores of 16 keys at once: sc[j] = dot_qk(q, keys[j]) * scale, bit for bit. Each
// key's products are summed lane-wise as dot_qk does (two accumulators, added);
// then the 16 horizontal sums run together, as a transpose: each step adds the
// same lane pairs _mm512_reduce_add_ps adds (i + 8, i + 4, i + 2, i + 1), for two,
// four, eight keys per instruction instead of one key's chain at a time.
static void scores16(const float *q, const lz_half *k, int64_t stride, int n, float scale,
                     float *sc) {
    __m512 v[16];
    for (int j = 0; j < 16; j++) {
        const lz_half *kj = k + j * stride;
        __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps();
        int d = 0;
        for (; d + 32 <= n; d += 32) {
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + d))), a0);
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + d + 16))), a1);
        }
        if (d < n)
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(q + d),
                                 _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(kj + d))), a0);
        v[j] = _mm512_add_ps(a0, a1);
    }
    // lanes i + (i + 8): key pairs (j, j + 8) -> [j's 8 | j+8's 8]
    __m512 l1[8];
    for (int j = 0; j < 8; j++)
        l1[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[j], v[j + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(v[j], v[j + 8], _MM_SHUFFLE(3, 2, 3, 2)));
    // + 4: [j | j+8 | j+4 | j+12], 4 lanes each
    __m512 l2[4];
    for (int j = 0; j < 4; j++)
        l2[j] = _mm512_add_ps(_mm512_shuffle_f32x4(l1[j], l1[j + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(l1[j], l1[j + 4], _MM_SHUFFLE(3, 1, 3, 1)));
    // + 2 within each 128-bit lane: [j j+2 | j+8 j+10 | j+4 j+6 | j+12 j+14], 2 each
    __m512 l3[2];
    for (int j = 0; j < 2; j++) {
        __m512d a = _mm512_castps_pd(l2[j]), b = _mm512_castps_pd(l2[j + 2]);
        l3[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    // + 1: lane i of 128-bit lane L holds one key's sum
    __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
    // lanes now hold keys 0 2 1 3 | 8 10 9 11 | 4 6 5 7 | 12 14 13 15: put them in order
    const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    sums = _mm512_permutexvar_ps(order, sums);
    _mm512_storeu_ps(sc, _mm512_mul_ps(sums, _mm512_set1_ps(scale)));
}
#endif

// acc = f16(f16(acc * ms) + v * vs), the reference's two roundings (the first only
// when a new maximum shrinks what was accumulated, ms != 1).
static void acc_update(float *acc, const lz_half *v, float ms, float vs, int n, int shrink) {
    int d = 0;
#if defined(__AVX512F__)
    const __m512 m16 = _mm512_set1_ps(ms), w16 = _mm512_set1_ps(vs);
    for (; d + 16 <= n; d += 16) {
        __m512 a = _mm512_loadu_ps(acc + d);
        if (shrink)
            a = _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_mul_ps(a, m16), _MM_FROUND_TO_NEAREST_INT));
        __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + d)));
        a = _mm512_add_ps(a, _mm512_mul_ps(vv, w16));
        _mm512_storeu_ps(acc + d, _mm512_cvtph_ps(_mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
    }
#endif
#if defined(__F16C__)
    const __m256 m8 = _mm256_set1_ps(ms), w8 = _mm256_set1_ps(vs);
    for (; d + 8 <= n; d += 8) {
        __m256 a = _mm256_loadu_ps(acc + d);
        if (shrink)
            a = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(a, m8), _MM_FROUND_TO_NEAREST_INT));
        __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + d)));
        a = _mm256_add_ps(a, _mm256_mul_ps(vv, w8));
        _mm256_storeu_ps(acc + d, _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
    }
#elif defined(__aarch64__)
    const float32x4_t m4 = vdupq_n_f32(ms), w4 = vdupq_n_f32(vs);
    for (; d + 4 <= n; d += 4) {
        float32x4_t a = vld1q_f32(acc + d);
        if (shrink) a = vcvt_f32_f16(vcvt_f16_f32(vmulq_f32(a, m4)));
        float32x4_t vv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(v + d)));
        a = vaddq_f32(a, vmulq_f32(vv, w4));
        vst1q_f32(acc + d, vcvt_f32_f16(vcvt_f16_f32(a)));
    }
#endif
    for (; d < n; d++) {
        float a = acc[d];
        if (shrink) a = lz_h2f(lz_f2h(a * ms));
        acc[d] = lz_h2f(lz_f2h(a + lz_h2f(v[d]) * vs));
    }
}

typedef struct {
    const float *q;
    int64_t ldq;
    const lz_half *kc, *vc;   // this layer's cache, [n_ctx][kv_dim]
    // or, for rows of different sequences (batched decoding): row i's cache and position
    lz_half *const *kcs, *const *vcs;
    const int64_t *positions;
    int64_t kv_dim;
    int64_t n_tokens, pos0;
    int n_heads, n_kv_heads, head_dim;
    int heads_per_task;       // query heads of one kv head taken together
    float scale;
    int64_t window;
    float *out;
    int64_t ldo;
    float *scratch;           // per thread: 3 floats per visible key per head of a task
    int64_t scratch_per_thread;
    atomic_llong next;
} attn_job;

#define LZ_MAX_GROUP 8        // heads per task at most

#if defined(__AVX512F__)
static inline __m512 round16(__m512 x) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}

// The value pass for G heads sharing a kv head, head_dim = 16 * NV, with the
// accumulators in registers: each key's value row is converted once for all G heads,
// and the G heads' rounding chains interleave (one alone is latency-bound).
static inline __attribute__((always_inline)) void value_pass_regs(
    const int NV, const int G, const lz_half *vc, int64_t kv_dim, int64_t lo, int64_t hi,
    float *const *ms, float *const *vs, float *const *acc_out) {
    __m512 A[G][NV];
    for (int g = 0; g < G; g++)
        for (int d = 0; d < NV; d++) A[g][d] = _mm512_setzero_ps();
    for (int64_t t = lo; t <= hi; t++) {
        const lz_half *v = vc + t * kv_dim;
        for (int g = 0; g < G; g++) {
            const float m = ms[g][t - lo];
            if (m != 1.0f) {   // a new maximum: shrink what was accumulated
                const __m512 m16 = _mm512_set1_ps(m);
                for (int d = 0; d < NV; d++) A[g][d] = round16(_mm512_mul_ps(A[g][d], m16));
            }
            const __m512 w16 = _mm512_set1_ps(vs[g][t - lo]);
            for (int d = 0; d < NV; d++) {
                __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + 16 * d)));
                A[g][d] = round16(_mm512_add_ps(A[g][d], _mm512_mul_ps(vv, w16)));
            }
        }
    }
    for (int g = 0; g < G; g++)
        for (int d = 0; d < NV; d++) _mm512_storeu_ps(acc_out[g] + 16 * d, A[g][d]);
}

// Whether a register pass exists for this head size (it then ran, on the G heads in
// runs of as many as the registers hold).
static int value_pass_fast(int hd, int G, const lz_half *vc, int64_t kv_dim, int64_t lo,
                           int64_t hi, float *const *ms, float *const *vs, float *const *acc) {
    const int most = hd == 64 ? 4 : hd == 128 ? 2 : hd == 256 ? 1 : 0;
    if (!most) return 0;
    for (int g = 0; g < G; g += most) {
        const int n = G - g < most ? G - g : most;
#define VP(NV, GG) if (hd == 16 * NV && n == GG) value_pass_regs(NV, GG, vc, kv_dim, lo, hi, ms + g, vs + g, acc + g);
        VP(4, 1) VP(4, 2) VP(4, 3) VP(4, 4) VP(8, 1) VP(8, 2) VP(16, 1)
#undef VP
    }
    return 1;
}
#endif

// The softmax factors of each key, computed before the value pass: with m the
// running maximum, a key that raises it shrinks the accumulator by
// ms = exp(m_old - m_new) and enters with vs = 1; any other key leaves it (ms = 1)
// and enters with vs = exp(x - m). exp(0) is exactly 1, so both cases are one
// formula and the exps vectorize. Returns the sum of the weights, accumulated in
// key order as s = s * ms + vs.
static float softmax_factors(const float *sc, float *ms, float *vs, int64_t n) {
    float m = -INFINITY;
    for (int64_t t = 0; t < n; t++) {
        float x = sc[t], m_new = x > m ? x : m;
        ms[t] = m - m_new;
        vs[t] = x - m_new;
        m = m_new;
    }
    for (int64_t t = 0; t < n; t++) {
        ms[t] = lz_expf(ms[t]);
        vs[t] = lz_expf(vs[t]);
    }
    float s = 0.0f;
    for (int64_t t = 0; t < n; t++) s = s * ms[t] + vs[t];
    return s;
}

static void attn_worker(void *p, int ith, int nth) {
    (void)nth;
    attn_job *j = (attn_job *)p;
    const int hd = j->head_dim, group = j->n_heads / j->n_kv_heads, hpt = j->heads_per_task;
    const int chunks = (group + hpt - 1) / hpt;   // tasks per (row, kv head)
    float q[LZ_MAX_HEAD_DIM];
    float *scratch = j->scratch + ith * j->scratch_per_thread;
    const int64_t total = j->n_tokens * j->n_kv_heads * chunks;
    for (;;) {
        int64_t task = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (task >= total) break;
        int64_t i = task / (j->n_kv_heads * chunks);
        int rest = (int)(task % (j->n_kv_heads * chunks));
        int kvh = rest / chunks, h0 = kvh * group + (rest % chunks) * hpt;
        int G = group - (rest % chunks) * hpt < hpt ? group - (rest % chunks) * hpt : hpt;
        int64_t off = (int64_t)kvh * hd;
        int64_t qpos = j->positions ? j->positions[i] : j->pos0 + i;
        const lz_half *kc = (j->kcs ? j->kcs[i] : j->kc) + off;
        const lz_half *vc = (j->vcs ? j->vcs[i] : j->vc) + off;
        int64_t lo = j->window > 0 && qpos - j->window + 1 > 0 ? qpos - j->window + 1 : 0;
        int64_t n = qpos - lo + 1;
        float *ms[LZ_MAX_GROUP], *vs[LZ_MAX_GROUP], *acc[LZ_MAX_GROUP], sum[LZ_MAX_GROUP];
        for (int g = 0; g < G; g++) {
            float *sc = scratch + (int64_t)g * 3 * n;
            ms[g] = sc + n;
            vs[g] = sc + 2 * n;
            acc[g] = j->out + i * j->ldo + (int64_t)(h0 + g) * hd;   // accumulate in place
            // queries meet the f16 keys as f16 themselves
            for (int d = 0; d < hd; d++) q[d] = j->q[i * j->ldq + (int64_t)(h0 + g) * hd + d];
            round16_row(q, hd);
            int64_t t = lo;
#if defined(__AVX512F__)
            if (hd % 16 == 0)
                for (; t + 16 <= qpos + 1; t += 16)
                    scores16(q, kc + t * j->kv_dim, j->kv_dim, hd, j->scale, sc + (t - lo));
#endif
            for (; t <= qpos; t++)
                sc[t - lo] = dot_qk(q, kc + t * j->kv_dim, hd) * j->scale;
            sum[g] = softmax_factors(sc, ms[g], vs[g], n);
        }
        int done = 0;
#if defined(__AVX512F__)
        done = value_pass_fast(hd, G, vc, j->kv_dim, lo, qpos, ms, vs, acc);
#endif
        if (!done)
            for (int g = 0; g < G; g++) {
                for (int d = 0; d < hd; d++) acc[g][d] = 0.0f;
                for (int64_t t = lo; t <= qpos; t++) {
                    float m = ms[g][t - lo];
                    acc_update(acc[g], vc + t * j->kv_dim, m, vs[g][t - lo], hd, m != 1.0f);
                }
            }
        for (int g = 0; g < G; g++)
            for (int d = 0; d < hd; d++) acc[g][d] /= sum[g];
    }
}

static int run_attention(attn_job *j, int64_t max_pos) {
    int nth = lz_pool_threads();
    // Heads of one kv head go together (they read the same keys and values), unless
    // that leaves too few tasks to keep every thread busy.
    const int group = j->n_heads / j->n_kv_heads;
    int hpt = group < LZ_MAX_GROUP ? group : LZ_MAX_GROUP;
    while (hpt > 1 && j->n_tokens * j->n_kv_heads * ((group + hpt - 1) / hpt) < 2 * nth)
        hpt = (hpt + 1) / 2;
    j->heads_per_task = hpt;
    j->scratch_per_thread = ((max_pos + 1) * 3 * hpt + 15) & ~(int64_t)15;
    j->scratch = malloc(sizeof(float) * (size_t)j->scratch_per_thread * (size_t)nth);
    if (!j->scratch) return -2;
    atomic_init(&j->next, 0);
    int64_t tasks = j->n_tokens * j->n_kv_heads * ((group + hpt - 1) / hpt);
    if (nth > 1 && tasks > 1) lz_pool_run(attn_worker, j);
    else attn_worker(j, 0, 1);
    free(j->scratch);
    return 0;
}

int lz_attention(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldkv,
                      lz_half *kc, lz_half *vc, int64_t n_tokens, int64_t pos0, int n_heads,
                      int n_kv_heads, int head_dim, float scale, int64_t window, float *out,
                      int64_t ldo) {
    if (head_dim <= 0 || head_dim > LZ_MAX_HEAD_DIM || n_kv_heads <= 0 || n_heads % n_kv_heads)
        return -1;
    if (n_tokens < 0 || pos0 < 0 || ldq < (int64_t)n_heads * head_dim ||
        ldkv < (int64_t)n_kv_heads * head_dim || ldo < (int64_t)n_heads * head_dim) return -1;
    int64_t kv_dim = (int64_t)n_kv_heads * head_dim;
    for (int64_t i = 0; i < n_tokens; i++) {
        f2h_row(k + i * ldkv, kc + (pos0 + i) * kv_dim, kv_dim);
        f2h_row(v + i * ldkv, vc + (pos0 + i) * kv_dim, kv_dim);
    }
    attn_job j = {0};
    j.q = q; j.ldq = ldq; j.kc = kc; j.vc = vc; j.kv_dim = kv_dim;
    j.n_tokens = n_tokens; j.pos0 = pos0;
    j.n_heads = n_heads; j.n_kv_heads = n_kv_heads; j.head_dim = head_dim;
    j.scale = scale; j.window = window; j.out = out; j.ldo = ldo;
    return run_attention(&j, pos0 + n_tokens - 1);
}

// One decoding step of n_rows different sequences: row i is the token at
// positions[i] of the sequence whose cache (this layer's [n_ctx][kv_dim]) starts at
// kcs[i] / vcs[i] + layer_off. Each row's key and value go into its own cache, and
// its query attends to its own cache only; all rows and heads share the pool.
int lz_attention_rows(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldkv,
                      lz_half *const *k_bases, lz_half *const *v_bases, int64_t layer_off,
                      const int64_t *positions, int64_t n_rows, int n_heads, int n_kv_heads,
                      int head_dim, float scale, int64_t window, float *out, int64_t ldo) {
    if (head_dim <= 0 || head_dim > LZ_MAX_HEAD_DIM || n_kv_heads <= 0 || n_heads % n_kv_heads)
        return -1;
    if (n_rows < 0 || layer_off < 0 || ldq < (int64_t)n_heads * head_dim ||
        ldkv < (int64_t)n_kv_heads * head_dim || ldo < (int64_t)n_heads * head_dim) return -1;
    for (int64_t i = 0; i < n_rows; i++)
        if (positions[i] < 0) return -1;
    int64_t kv_dim = (int64_t)n_kv_heads * head_dim, max_pos = 0;
    lz_half **kcs = malloc(sizeof(lz_half *) * 2 * (size_t)(n_rows > 0 ? n_rows : 1));
    if (!kcs) return -2;
    lz_half **vcs = kcs + n_rows;
    for (int64_t i = 0; i < n_rows; i++) {
        kcs[i] = k_bases[i] + layer_off;
        vcs[i] = v_bases[i] + layer_off;
        f2h_row(k + i * ldkv, kcs[i] + positions[i] * kv_dim, kv_dim);
        f2h_row(v + i * ldkv, vcs[i] + positions[i] * kv_dim, kv_dim);
        if (positions[i] > max_pos) max_pos = positions[i];
    }
    attn_job j = {0};
    j.q = q; j.ldq = ldq; j.kcs = kcs; j.vcs = vcs; j.positions = positions;
    j.kv_dim = kv_dim; j.n_tokens = n_rows;
    j.n_heads = n_heads; j.n_kv_heads = n_kv_heads; j.head_dim = head_dim;
    j.scale = scale; j.window = window; j.out = out; j.ldo = ldo;
    int rc = run_attention(&j, max_pos);
    free(kcs);
    return rc;
}
