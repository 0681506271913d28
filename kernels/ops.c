// The rest of a forward pass: RMSNorm, RoPE, attention over an f16 KV cache,
// gated activations, element-wise ops, embedding lookup, argmax.
//
// Numerics follow runtime/backend_numpy.py (the oracle, itself llama.cpp's CPU
// numerics): norms sum squares in double as ggml does, the KV cache and the attention's value
// accumulator are f16, softmax is computed online over keys in order.
#include <math.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <string.h>

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
//
// The numerics of llama.cpp's CPU flash attention over an f16 cache for a single
// token (its vec path): each query is rounded to f16, its scores are f32 dot products
// with the f16 keys, and the keys are visited in order with an online softmax whose
// value accumulator is f16 (rounded after every key: ggml's vec_scale_f16 when a new
// maximum shrinks it, then vec_mad_f16). A row with SPLIT_KEYS keys or more splits
// them into chunks of CHUNK_KEYS (from its first visible key), each accumulated alone
// and combined in f32, as ggml splits long single-token attention across threads.
// Every row is computed so, whatever else is in the batch: a row's result does not
// depend on the batch, the thread count or the rows beside it (llama.cpp's prompts of
// 64 rows or more take an f32 tiled path instead; ours would then answer a cached
// prompt differently from a fresh one, and a stream differently from its non-stream).
//
// exp is computed in double and rounded to f32, i.e. correctly rounded but for
// rare ties, as libm's expf that ggml calls here.
//
// Work items: (row, kv head, query heads of that kv head, key chunk). The heads of
// one kv head go together: each key and value row is loaded and converted once for
// all of them. Keys stream in tiles of 16: the 16 scores of each head are reduced
// together (a transpose instead of 16 horizontal sums), the softmax factors of the
// tile are computed as vectors (running maximum by a prefix scan), and the value
// accumulators of several heads stay in registers across the tile.

#define LZ_MAX_HEAD_DIM 1024
#define LZ_MAX_GROUP 8          // query heads per work item at most
#define SPLIT_KEYS 512          // a vec row with this many keys or more is split
#define CHUNK_KEYS 256          // into chunks of this many

static inline float exp_f32(float x) { return (float)exp((double)x); }

// q . k (f16-valued query, f16 key), summed as ggml_vec_dot_f16 sums with this ISA's
// vectors: AVX-512 keeps 4 accumulators of 16 lanes over steps of 64, AVX2 4 of 8
// over steps of 32; the rest of the row is added in double. Elsewhere plain order.
static float dot_qk(const float *q, const lz_half *k, int n) {
    int d = 0;
    double sum = 0.0;
#if defined(__AVX512F__)
    __m512 a[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(),
                   _mm512_setzero_ps()};
    for (; d + 64 <= n; d += 64)
        for (int r = 0; r < 4; r++)
            a[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + d + 16 * r),
                                   _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + d + 16 * r))),
                                   a[r]);
    if (d) {
        a[0] = _mm512_add_ps(a[0], a[2]);
        a[1] = _mm512_add_ps(a[1], a[3]);
        sum = _mm512_reduce_add_ps(_mm512_add_ps(a[0], a[1]));
    }
#elif defined(__F16C__) && defined(__FMA__)
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    for (; d + 32 <= n; d += 32)
        for (int r = 0; r < 4; r++)
            a[r] = _mm256_fmadd_ps(_mm256_loadu_ps(q + d + 8 * r),
                                   _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(k + d + 8 * r))),
                                   a[r]);
    if (d) {
        a[0] = _mm256_add_ps(a[0], a[2]);
        a[1] = _mm256_add_ps(a[1], a[3]);
        a[0] = _mm256_add_ps(a[0], a[1]);
        __m128 t = _mm_add_ps(_mm256_castps256_ps128(a[0]), _mm256_extractf128_ps(a[0], 1));
        t = _mm_hadd_ps(t, t);
        sum = _mm_cvtss_f32(_mm_hadd_ps(t, t));
    }
#elif defined(__aarch64__)
    float32x4_t a0 = vdupq_n_f32(0), a1 = vdupq_n_f32(0);
    for (; d + 8 <= n; d += 8) {
        float16x8_t kh = vreinterpretq_f16_u16(vld1q_u16(k + d));
        a0 = vfmaq_f32(a0, vld1q_f32(q + d), vcvt_f32_f16(vget_low_f16(kh)));
        a1 = vfmaq_f32(a1, vld1q_f32(q + d + 4), vcvt_f32_f16(vget_high_f16(kh)));
    }
    sum = vaddvq_f32(vaddq_f32(a0, a1));
#endif
    for (; d < n; d++) sum += (double)(q[d] * lz_h2f(k[d]));
    return (float)sum;
}

// acc = f16(acc * ms) when a new maximum shrinks it, then acc = f16(acc + v * vs).
static void acc_update(float *acc, const lz_half *v, float ms, float vs, int n, int shrink) {
    int d = 0;
#if defined(__AVX512F__)
    const __m512 m16 = _mm512_set1_ps(ms), w16 = _mm512_set1_ps(vs);
    for (; d + 16 <= n; d += 16) {
        __m512 a = _mm512_loadu_ps(acc + d);
        if (shrink)
            a = _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_mul_ps(a, m16), _MM_FROUND_TO_NEAREST_INT));
        __m512 vv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(v + d)));
        a = _mm512_fmadd_ps(vv, w16, a);
        _mm512_storeu_ps(acc + d, _mm512_cvtph_ps(_mm512_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
    }
#endif
#if defined(__F16C__) && defined(__FMA__)
    const __m256 m8 = _mm256_set1_ps(ms), w8 = _mm256_set1_ps(vs);
    for (; d + 8 <= n; d += 8) {
        __m256 a = _mm256_loadu_ps(acc + d);
        if (shrink)
            a = _mm256_cvtph_ps(_mm256_cvtps_ph(_mm256_mul_ps(a, m8), _MM_FROUND_TO_NEAREST_INT));
        __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(v + d)));
        a = _mm256_fmadd_ps(vv, w8, a);
        _mm256_storeu_ps(acc + d, _mm256_cvtph_ps(_mm256_cvtps_ph(a, _MM_FROUND_TO_NEAREST_INT)));
    }
#elif defined(__aarch64__)
    const float32x4_t m4 = vdupq_n_f32(ms), w4 = vdupq_n_f32(vs);
    for (; d + 4 <= n; d += 4) {
        float32x4_t a = vld1q_f32(acc + d);
        if (shrink) a = vcvt_f32_f16(vcvt_f16_f32(vmulq_f32(a, m4)));
        float32x4_t vv = vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(v + d)));
        a = vfmaq_f32(a, vv, w4);
        vst1q_f32(acc + d, vcvt_f32_f16(vcvt_f16_f32(a)));
    }
#endif
    for (; d < n; d++) {
        float a = acc[d];
        if (shrink) a = lz_h2f(lz_f2h(a * ms));
        acc[d] = lz_h2f(lz_f2h(a + lz_h2f(v[d]) * vs));
    }
}

// One head's online softmax state in the vec path.
typedef struct {
    float m, s;        // running maximum and sum of weights
} soft_state;

// The factors of one key with score x: a new maximum shrinks what was accumulated by
// ms = exp(m_old - x) and enters with vs = 1; any other key enters with exp(x - m).
static inline void key_factors(soft_state *st, float x, float *ms, float *vs, int *shrink) {
    if (x > st->m) {
        *ms = exp_f32(st->m - x);
        *vs = 1.0f;
        *shrink = 1;
        st->m = x;
    } else {
        *ms = 1.0f;
        *vs = exp_f32(x - st->m);
        *shrink = 0;
    }
    st->s = st->s * *ms + *vs;
}

#if defined(__AVX512F__)
static inline __m512 round16(__m512 x) {
    return _mm512_cvtph_ps(_mm512_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT));
}

// The 16 horizontal sums of v[0..15], in key order, each summed as
// _mm512_reduce_add_ps sums one vector (lane i + (i + 8), + 4, + 2, + 1): a transpose,
// two to eight keys per instruction instead of one key's chain at a time.
static inline __m512 reduce16(const __m512 *v) {
    __m512 l1[8];
    for (int j = 0; j < 8; j++)   // key pairs (j, j + 8) -> [j's 8 | j+8's 8]
        l1[j] = _mm512_add_ps(_mm512_shuffle_f32x4(v[j], v[j + 8], _MM_SHUFFLE(1, 0, 1, 0)),
                              _mm512_shuffle_f32x4(v[j], v[j + 8], _MM_SHUFFLE(3, 2, 3, 2)));
    __m512 l2[4];                 // [j | j+8 | j+4 | j+12], 4 lanes each
    for (int j = 0; j < 4; j++)
        l2[j] = _mm512_add_ps(_mm512_shuffle_f32x4(l1[j], l1[j + 4], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(l1[j], l1[j + 4], _MM_SHUFFLE(3, 1, 3, 1)));
    __m512 l3[2];                 // + 2 within each 128-bit lane
    for (int j = 0; j < 2; j++) {
        __m512d a = _mm512_castps_pd(l2[j]), b = _mm512_castps_pd(l2[j + 2]);
        l3[j] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)),
                              _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    __m512 sums = _mm512_add_ps(_mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_ps(l3[0], l3[1], _MM_SHUFFLE(3, 1, 3, 1)));
    // lanes hold keys 0 2 1 3 | 8 10 9 11 | 4 6 5 7 | 12 14 13 15: put them in order
    const __m512i order = _mm512_setr_epi32(0, 2, 1, 3, 8, 10, 9, 11, 4, 6, 5, 7, 12, 14, 13, 15);
    return _mm512_permutexvar_ps(order, sums);
}

// exp of 16 floats, in double, rounded to f32: x = n ln2 + r, |r| <= ln2/2, exp(r) by
// its Taylor series to r^11 (relative error < 2e-15), 2^n in the exponent bits.
static inline __m256 exp8_pd(__m512d x) {
    x = _mm512_max_pd(x, _mm512_set1_pd(-745.0));
    x = _mm512_min_pd(x, _mm512_set1_pd(709.0));
    __m512d n = _mm512_roundscale_pd(_mm512_mul_pd(x, _mm512_set1_pd(1.4426950408889634)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512d r = _mm512_fnmadd_pd(n, _mm512_set1_pd(0.6931471805599453094), x);
    r = _mm512_fnmadd_pd(n, _mm512_set1_pd(2.319046813846299558e-17), r);
    static const double c[12] = {1.0 / 39916800, 1.0 / 3628800, 1.0 / 362880, 1.0 / 40320,
                                 1.0 / 5040, 1.0 / 720, 1.0 / 120, 1.0 / 24, 1.0 / 6, 0.5,
                                 1.0, 1.0};
    __m512d p = _mm512_set1_pd(c[0]);
    for (int i = 1; i < 12; i++) p = _mm512_fmadd_pd(p, r, _mm512_set1_pd(c[i]));
    // 2^n in two factors so that n down to -1075 and up to 1023 stay representable
    const __m512d magic = _mm512_set1_pd(6755399441055744.0);   // 1.5 * 2^52
    __m512i ni = _mm512_sub_epi64(_mm512_castpd_si512(_mm512_add_pd(n, magic)),
                                  _mm512_castpd_si512(magic));
    __m512i h = _mm512_srai_epi64(ni, 1);
    __m512d s1 = _mm512_castsi512_pd(_mm512_slli_epi64(_mm512_add_epi64(h, _mm512_set1_epi64(1023)), 52));
    __m512d s2 = _mm512_castsi512_pd(
        _mm512_slli_epi64(_mm512_add_epi64(_mm512_sub_epi64(ni, h), _mm512_set1_epi64(1023)), 52));
    return _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_mul_pd(p, s1), s2));
}

static inline __m512 exp16(__m512 x) {
    __m256 lo = exp8_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(x)));
    __m256 hi = exp8_pd(_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1))));
    return _mm512_castpd_ps(_mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(lo)),
                                               _mm256_castps_pd(hi), 1));
}
#endif

typedef struct {
    const float *q;
    int64_t ldq;
    lz_half *const *kcs, *const *vcs;   // row i's cache (this layer) and position
    const int64_t *positions;
    int64_t kv_dim, n_rows;
    int n_heads, n_kv_heads, head_dim;
    int heads_per_task;
    int64_t max_chunks;                 // key chunks per row at most
    float scale;
    int64_t window;
    float *out;
    int64_t ldo;
    float *partials;                    // [row][head][chunk][2 + head_dim]: m, s, acc
    atomic_llong next;
} attn_job;

static inline int64_t first_key(const attn_job *j, int64_t qpos) {
    return j->window > 0 && qpos - j->window + 1 > 0 ? qpos - j->window + 1 : 0;
}

static inline int64_t chunks_of(int64_t n_keys) {
    return n_keys >= SPLIT_KEYS ? (n_keys + CHUNK_KEYS - 1) / CHUNK_KEYS : 1;
}

// Keys [c0, c1) for G heads (their f16 queries q16, accumulators acc, states st), in
// order, portably: one key at a time.
static void vec_keys_plain(const attn_job *j, const float *q16, const lz_half *kc,
                           const lz_half *vc, int64_t c0, int64_t c1, int G, float *acc,
                           soft_state *st) {
    const int hd = j->head_dim;
    for (int64_t t = c0; t < c1; t++)
        for (int g = 0; g < G; g++) {
            float x = dot_qk(q16 + g * hd, kc + t * j->kv_dim, hd) * j->scale;
            float ms, vs;
            int shrink;
            key_factors(&st[g], x, &ms, &vs, &shrink);
            acc_update(acc + g * hd, vc + t * j->kv_dim, ms, vs, hd, shrink);
        }
}

#if defined(__AVX512F__)
// The value pass of one tile for GB heads (head_dim = 16 NV), accumulators in
// registers: each value row is converted once for the GB heads, whose rounding chains
// interleave.
static inline __attribute__((always_inline)) void tile_values(
    const int NV, const int GB, const lz_half *vc, int64_t kv_dim, int nk, float *acc, int hd,
    const float (*ms)[16], const float (*vs)[16], const uint32_t *shrink) {
    __m512 A[GB][NV];
    for (int g = 0; g < GB; g++)
        for (int d = 0; d < NV; d++) A[g][d] = _mm512_loadu_ps(acc + g * hd + 16 * d);
    for (int t = 0; t < nk; t++) {
        __m512 V[NV];
        for (int d = 0; d < NV; d++)
            V[d] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(vc + t * kv_dim + 16 * d)));
        for (int g = 0; g < GB; g++) {
            if (shrink[g] >> t & 1) {
                const __m512 m = _mm512_set1_ps(ms[g][t]);
                for (int d = 0; d < NV; d++) A[g][d] = round16(_mm512_mul_ps(A[g][d], m));
            }
            const __m512 w = _mm512_set1_ps(vs[g][t]);
            for (int d = 0; d < NV; d++) A[g][d] = round16(_mm512_fmadd_ps(V[d], w, A[g][d]));
        }
    }
    for (int g = 0; g < GB; g++)
        for (int d = 0; d < NV; d++) _mm512_storeu_ps(acc + g * hd + 16 * d, A[g][d]);
}

// Whether a register value pass exists for this head size (then it ran).
static int tile_values_fast(int hd, int G, const lz_half *vc, int64_t kv_dim, int nk, float *acc,
                            const float (*ms)[16], const float (*vs)[16], const uint32_t *shrink) {
    const int most = hd == 64 ? 4 : hd == 128 ? 2 : hd == 256 ? 1 : 0;
    if (!most) return 0;
    for (int g = 0; g < G; g += most) {
        const int n = G - g < most ? G - g : most;
        float *a = acc + g * hd;
#define TV(NV, GB) if (hd == 16 * NV && n == GB) tile_values(NV, GB, vc, kv_dim, nk, a, hd, ms + g, vs + g, shrink + g);
        TV(4, 1) TV(4, 2) TV(4, 3) TV(4, 4) TV(8, 1) TV(8, 2) TV(16, 1)
#undef TV
    }
    return 1;
}

// The partial sums of 16 keys' scores for G heads, head_dim = 16 NV (a multiple of
// 64): each key row converted once, in registers, for all the heads.
static inline __attribute__((always_inline)) void tile_partials(
    const int NV, const attn_job *j, const float *q16, const lz_half *kc, int64_t t0, int nk,
    int G, __m512 (*part)[16]) {
    const int hd = 16 * NV;
    for (int t = 0; t < 16; t++) {
        const lz_half *k = kc + (t0 + (t < nk ? t : 0)) * j->kv_dim;
        __m512 K[NV];
        for (int d = 0; d < NV; d++)
            K[d] = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(k + 16 * d)));
        for (int g = 0; g < G; g++) {
            const float *q = q16 + g * hd;
            __m512 a[4];
            for (int r = 0; r < 4; r++) a[r] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * r), K[r]);
            for (int d = 4; d < NV; d++)
                a[d % 4] = _mm512_fmadd_ps(_mm512_loadu_ps(q + 16 * d), K[d], a[d % 4]);
            part[g][t] = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
        }
    }
}

// Keys [c0, c1) for G heads, 16 at a time (head_dim a multiple of 16).
static void vec_keys_avx512(const attn_job *j, const float *q16, const lz_half *kc,
                            const lz_half *vc, int64_t c0, int64_t c1, int G, float *acc,
                            soft_state *st) {
    const int hd = j->head_dim, steps = hd / 64;
    const int64_t ld = j->kv_dim;
    const __m512 ninf = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(j->scale);
    for (int64_t t0 = c0; t0 < c1; t0 += 16) {
        const int nk = c1 - t0 < 16 ? (int)(c1 - t0) : 16;
        // the next tile's key and value rows (a long cache streams from memory; its
        // rows are kv_dim apart, a stride the hardware prefetcher follows late)
        for (int64_t t = t0 + 16; t < t0 + 32 && t < c1; t++)
            for (int d = 0; d < hd; d += 32) {
                _mm_prefetch((const char *)(kc + t * ld + d), _MM_HINT_T0);
                _mm_prefetch((const char *)(vc + t * ld + d), _MM_HINT_T0);
            }
        // scores: per key and head the lanes of ggml's 4 accumulators, then 16 keys'
        // horizontal sums together; what a step of 64 leaves is added in double
        __m512 part[LZ_MAX_GROUP][16];
        float tail[LZ_MAX_GROUP][16];
        if (hd == 64) tile_partials(4, j, q16, kc, t0, nk, G, part);
        else if (hd == 128) tile_partials(8, j, q16, kc, t0, nk, G, part);
        else if (hd == 256) tile_partials(16, j, q16, kc, t0, nk, G, part);
        else
            for (int t = 0; t < 16; t++) {
                const lz_half *k = kc + (t0 + (t < nk ? t : 0)) * ld;
                for (int g = 0; g < G; g++) {
                    const float *q = q16 + g * hd;
                    __m512 a[4];
                    for (int r = 0; r < 4; r++) a[r] = _mm512_setzero_ps();
                    for (int s = 0; s < steps; s++)
                        for (int r = 0; r < 4; r++)
                            a[r] = _mm512_fmadd_ps(_mm512_loadu_ps(q + 64 * s + 16 * r),
                                                   _mm512_cvtph_ps(_mm256_loadu_si256(
                                                       (const __m256i *)(k + 64 * s + 16 * r))),
                                                   a[r]);
                    part[g][t] = _mm512_add_ps(_mm512_add_ps(a[0], a[2]), _mm512_add_ps(a[1], a[3]));
                    if (hd % 64) {
                        double rest = 0.0;   // ggml adds this to the vector part, in double
                        for (int d = 64 * steps; d < hd; d++) rest += (double)(q[d] * lz_h2f(k[d]));
                        tail[g][t] = (float)rest;
                    }
                }
            }
        float ms[LZ_MAX_GROUP][16], vs[LZ_MAX_GROUP][16];
        uint32_t shrink[LZ_MAX_GROUP];
        const __mmask16 valid = (__mmask16)((1u << nk) - 1);
        for (int g = 0; g < G; g++) {
            __m512 x = reduce16(part[g]);
            if (hd % 64) {
                // sum = (double)vector part + tail, then f32
                float xs[16];
                _mm512_storeu_ps(xs, x);
                for (int t = 0; t < 16; t++) {
                    double v = steps ? (double)xs[t] : 0.0;
                    xs[t] = (float)(v + (double)tail[g][t]);
                }
                x = _mm512_loadu_ps(xs);
            }
            x = _mm512_mask_blend_ps(valid, ninf, _mm512_mul_ps(x, scale));
            // running maximum after each key: a prefix scan, then the state's maximum
            __m512 m = x;
            m = _mm512_max_ps(m, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(m), _mm512_castps_si512(ninf), 15)));
            m = _mm512_max_ps(m, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(m), _mm512_castps_si512(ninf), 14)));
            m = _mm512_max_ps(m, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(m), _mm512_castps_si512(ninf), 12)));
            m = _mm512_max_ps(m, _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(m), _mm512_castps_si512(ninf), 8)));
            const __m512 mold = _mm512_set1_ps(st[g].m);
            m = _mm512_max_ps(m, mold);
            const __m512 mprev = _mm512_castsi512_ps(
                _mm512_alignr_epi32(_mm512_castps_si512(m), _mm512_castps_si512(mold), 15));
            const __mmask16 up = _mm512_mask_cmp_ps_mask(valid, x, mprev, _CMP_GT_OQ);
            // a new maximum: exp(m_old - x); otherwise exp(x - m)
            const __m512 e = exp16(_mm512_sub_ps(_mm512_mask_blend_ps(up, x, mprev), m));
            const __m512 one = _mm512_set1_ps(1.0f);
            _mm512_storeu_ps(ms[g], _mm512_mask_blend_ps(up, one, e));
            _mm512_storeu_ps(vs[g], _mm512_mask_blend_ps(up, e, one));
            shrink[g] = up;
            float mm[16];
            _mm512_storeu_ps(mm, m);
            st[g].m = mm[nk - 1];
        }
        // the sums, in key order per head; the heads' chains interleave
        for (int t = 0; t < nk; t++)
            for (int g = 0; g < G; g++) st[g].s = st[g].s * ms[g][t] + vs[g][t];
        const lz_half *vt = vc + t0 * ld;
        if (!tile_values_fast(hd, G, vt, ld, nk, acc, (const float (*)[16])ms,
                              (const float (*)[16])vs, shrink))
            for (int t = 0; t < nk; t++)
                for (int g = 0; g < G; g++)
                    acc_update(acc + g * hd, vt + t * ld, ms[g][t], vs[g][t], hd, shrink[g] >> t & 1);
    }
}
#endif

// One vec work item: heads h0..h0+G-1 (of kv head kvh) of row i over key chunk c.
static void vec_item(attn_job *j, int64_t i, int kvh, int h0, int G, int64_t c) {
    const int hd = j->head_dim;
    const int64_t qpos = j->positions[i], lo = first_key(j, qpos), n = qpos - lo + 1;
    const int64_t nch = chunks_of(n);
    if (c >= nch) return;
    const int64_t c0 = nch == 1 ? lo : lo + c * CHUNK_KEYS;
    const int64_t c1 = nch == 1 ? qpos + 1 : (c0 + CHUNK_KEYS < qpos + 1 ? c0 + CHUNK_KEYS : qpos + 1);
    const int64_t off = (int64_t)kvh * hd;
    const lz_half *kc = j->kcs[i] + off, *vc = j->vcs[i] + off;
    float *qbuf = malloc(sizeof(float) * (size_t)(2 * G * hd));
    if (!qbuf) return;   // run_attention checked a first allocation; see there
    float *acc = qbuf + G * hd;
    soft_state st[LZ_MAX_GROUP];
    for (int g = 0; g < G; g++) {
        memcpy(qbuf + g * hd, j->q + i * j->ldq + (int64_t)(h0 + g) * hd, sizeof(float) * hd);
        round16_row(qbuf + g * hd, hd);   // queries meet the f16 keys as f16 themselves
        st[g].m = -INFINITY;
        st[g].s = 0.0f;
    }
    memset(acc, 0, sizeof(float) * (size_t)(G * hd));
#if defined(__AVX512F__)
    if (hd % 16 == 0) vec_keys_avx512(j, qbuf, kc, vc, c0, c1, G, acc, st);
    else
#endif
        vec_keys_plain(j, qbuf, kc, vc, c0, c1, G, acc, st);
    for (int g = 0; g < G; g++) {
        const int h = h0 + g;
        if (nch == 1) {
            float *o = j->out + i * j->ldo + (int64_t)h * hd;
            const float inv = st[g].s == 0.0f ? 0.0f : 1.0f / st[g].s;
            for (int d = 0; d < hd; d++) o[d] = acc[g * hd + d] * inv;
        } else {
            float *p = j->partials + ((i * j->n_heads + h) * j->max_chunks + c) * (2 + hd);
            p[0] = st[g].m;
            p[1] = st[g].s;
            memcpy(p + 2, acc + g * hd, sizeof(float) * hd);
        }
    }
    free(qbuf);
}

// The chunks of a split row combined in order, in f32, as ggml reduces its partials.
static void combine_chunks(attn_job *j, int64_t i, int h) {
    const int hd = j->head_dim;
    const int64_t qpos = j->positions[i], nch = chunks_of(qpos - first_key(j, qpos) + 1);
    float *o = j->out + i * j->ldo + (int64_t)h * hd;
    float m = -INFINITY, s = 0.0f;
    for (int d = 0; d < hd; d++) o[d] = 0.0f;
    for (int64_t c = 0; c < nch; c++) {
        const float *p = j->partials + ((i * j->n_heads + h) * j->max_chunks + c) * (2 + hd);
        if (p[1] == 0.0f) continue;
        const float m_new = m > p[0] ? m : p[0];
        const float so = exp_f32(m - m_new), sn = exp_f32(p[0] - m_new);
        for (int d = 0; d < hd; d++) o[d] = o[d] * so + p[2 + d] * sn;
        s = s * so + p[1] * sn;
        m = m_new;
    }
    const float inv = s == 0.0f ? 0.0f : 1.0f / s;
    for (int d = 0; d < hd; d++) o[d] *= inv;
}

static void vec_worker(void *p, int ith, int nth) {
    (void)ith; (void)nth;
    attn_job *j = (attn_job *)p;
    const int group = j->n_heads / j->n_kv_heads, hpt = j->heads_per_task;
    const int subs = (group + hpt - 1) / hpt;
    const int64_t per_row = (int64_t)j->n_kv_heads * subs * j->max_chunks;
    const int64_t total = j->n_rows * per_row;
    for (;;) {
        int64_t task = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (task >= total) break;
        const int64_t i = task / per_row;
        int64_t rest = task % per_row;
        const int64_t c = rest % j->max_chunks;
        rest /= j->max_chunks;
        const int kvh = (int)(rest / subs), sub = (int)(rest % subs);
        const int h0 = kvh * group + sub * hpt;
        const int G = group - sub * hpt < hpt ? group - sub * hpt : hpt;
        vec_item(j, i, kvh, h0, G, c);
    }
}

static void combine_worker(void *p, int ith, int nth) {
    (void)ith; (void)nth;
    attn_job *j = (attn_job *)p;
    const int64_t total = j->n_rows * j->n_heads;
    for (;;) {
        int64_t task = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (task >= total) break;
        const int64_t i = task / j->n_heads;
        const int64_t qpos = j->positions[i];
        if (chunks_of(qpos - first_key(j, qpos) + 1) > 1) combine_chunks(j, i, (int)(task % j->n_heads));
    }
}

static void run_pool(lz_job_fn fn, attn_job *j, int64_t tasks) {
    atomic_store(&j->next, 0);
    if (lz_pool_threads() > 1 && tasks > 1) lz_pool_run(fn, j);
    else fn(j, 0, 1);
}

static int run_vec(attn_job *j) {
    const int nth = lz_pool_threads(), group = j->n_heads / j->n_kv_heads;
    int64_t max_chunks = 1;
    for (int64_t i = 0; i < j->n_rows; i++) {
        int64_t c = chunks_of(j->positions[i] - first_key(j, j->positions[i]) + 1);
        if (c > max_chunks) max_chunks = c;
    }
    j->max_chunks = max_chunks;
    // the heads of a kv head go together (they read the same keys and values),
    // unless that leaves too few items to keep every thread busy
    int hpt = group < LZ_MAX_GROUP ? group : LZ_MAX_GROUP;
    while (hpt > 1 && j->n_rows * j->n_kv_heads * ((group + hpt - 1) / hpt) * max_chunks < 2 * nth)
        hpt = (hpt + 1) / 2;
    j->heads_per_task = hpt;
    j->partials = NULL;
    if (max_chunks > 1) {
        j->partials = malloc(sizeof(float) * (size_t)(j->n_rows * j->n_heads * max_chunks) *
                             (size_t)(2 + j->head_dim));
        if (!j->partials) return -2;
    }
    // each item allocates its query and accumulator rows; fail here, not there
    void *probe = malloc(sizeof(float) * (size_t)(2 * hpt * j->head_dim));
    if (!probe) { free(j->partials); return -2; }
    free(probe);
    run_pool(vec_worker, j, j->n_rows * j->n_kv_heads * ((group + hpt - 1) / hpt) * max_chunks);
    if (max_chunks > 1) run_pool(combine_worker, j, j->n_rows * j->n_heads);
    free(j->partials);
    return 0;
}

// ---------------------------------------------------------------- entry points

static int check_shapes(int64_t ldq, int64_t ldkv, int64_t ldo, int n_heads, int n_kv_heads,
                        int head_dim) {
    if (head_dim <= 0 || head_dim > LZ_MAX_HEAD_DIM || n_kv_heads <= 0 || n_heads <= 0 ||
        n_heads % n_kv_heads)
        return -1;
    if (ldq < (int64_t)n_heads * head_dim || ldkv < (int64_t)n_kv_heads * head_dim ||
        ldo < (int64_t)n_heads * head_dim)
        return -1;
    return 0;
}

// Rows i at positions[i] of the caches kcs[i] / vcs[i] (this layer's [n_ctx][kv_dim]):
// their keys and values go in, then each query attends to its own cache.
static int attend(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldkv,
                  lz_half *const *kcs, lz_half *const *vcs, const int64_t *positions,
                  int64_t n_rows, int n_heads, int n_kv_heads, int head_dim, float scale,
                  int64_t window, float *out, int64_t ldo) {
    const int64_t kv_dim = (int64_t)n_kv_heads * head_dim;
    for (int64_t i = 0; i < n_rows; i++) {
        f2h_row(k + i * ldkv, kcs[i] + positions[i] * kv_dim, kv_dim);
        f2h_row(v + i * ldkv, vcs[i] + positions[i] * kv_dim, kv_dim);
    }
    attn_job j;
    memset(&j, 0, sizeof j);
    j.q = q; j.ldq = ldq; j.kcs = kcs; j.vcs = vcs; j.positions = positions;
    j.kv_dim = kv_dim; j.n_rows = n_rows;
    j.n_heads = n_heads; j.n_kv_heads = n_kv_heads; j.head_dim = head_dim;
    j.scale = scale; j.window = window; j.out = out; j.ldo = ldo;
    return run_vec(&j);
}

int lz_attention(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldkv,
                 lz_half *kc, lz_half *vc, int64_t n_tokens, int64_t pos0, int n_heads,
                 int n_kv_heads, int head_dim, float scale, int64_t window, float *out,
                 int64_t ldo) {
    if (check_shapes(ldq, ldkv, ldo, n_heads, n_kv_heads, head_dim) || n_tokens < 0 || pos0 < 0)
        return -1;
    if (n_tokens == 0) return 0;
    lz_half **caches = malloc(sizeof(lz_half *) * 2 * (size_t)n_tokens);
    int64_t *positions = malloc(sizeof(int64_t) * (size_t)n_tokens);
    if (!caches || !positions) { free(caches); free(positions); return -2; }
    for (int64_t i = 0; i < n_tokens; i++) {
        caches[i] = kc;
        caches[n_tokens + i] = vc;
        positions[i] = pos0 + i;
    }
    int rc = attend(q, ldq, k, v, ldkv, caches, caches + n_tokens, positions, n_tokens, n_heads,
                    n_kv_heads, head_dim, scale, window, out, ldo);
    free(caches);
    free(positions);
    return rc;
}

// One step of n_rows rows: row i is the token at positions[i] of the sequence whose
// cache (this layer's [n_ctx][kv_dim]) starts at k_bases[i] / v_bases[i] + layer_off.
int lz_attention_rows(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldkv,
                      lz_half *const *k_bases, lz_half *const *v_bases, int64_t layer_off,
                      const int64_t *positions, int64_t n_rows, int n_heads, int n_kv_heads,
                      int head_dim, float scale, int64_t window, float *out, int64_t ldo) {
    if (check_shapes(ldq, ldkv, ldo, n_heads, n_kv_heads, head_dim) || n_rows < 0 || layer_off < 0)
        return -1;
    for (int64_t i = 0; i < n_rows; i++)
        if (positions[i] < 0) return -1;
    if (n_rows == 0) return 0;
    lz_half **caches = malloc(sizeof(lz_half *) * 2 * (size_t)n_rows);
    if (!caches) return -2;
    for (int64_t i = 0; i < n_rows; i++) {
        caches[i] = k_bases[i] + layer_off;
        caches[n_rows + i] = v_bases[i] + layer_off;
    }
    int rc = attend(q, ldq, k, v, ldkv, caches, caches + n_rows, positions, n_rows, n_heads,
                    n_kv_heads, head_dim, scale, window, out, ldo);
    free(caches);
    return rc;
}
