// Matrix x vector and matrix x matrix over quantized weights: the portable kernels
// (every type, plain C the compiler may vectorize), and the driver that quantizes
// the activations and spreads tiles of the output over the thread pool.
//
// Y[t][r] = sum_i W[r][i] * X[t][i]: W is `rows` rows of k weights in its GGML
// type, read in place; X holds n activation rows of k floats.
#include <stdatomic.h>
#include <stdlib.h>

#include "quants.h"
#include "threads.h"

lz_kernels lz_k;

// ---------------------------------------------------------------- portable dots
// Integer sums inside a block are exact; the float work is per block.

static inline uint32_t ld32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }

static float dot_q4_0(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q4_0 *b = (const block_q4_0 *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8_d(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++, xq += QK) {
        int isum = 0;
        for (int j = 0; j < 16; j++)
            isum += ((b[i].qs[j] & 0xf) - 8) * xq[j] + ((b[i].qs[j] >> 4) - 8) * xq[j + 16];
        sum += lz_h2f(b[i].d) * dx[i] * (float)isum;
    }
    return sum;
}

static float dot_q4_1(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q4_1 *b = (const block_q4_1 *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8_d(x, k), *sx = xq8_s(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++, xq += QK) {
        int isum = 0;
        for (int j = 0; j < 16; j++)
            isum += (b[i].qs[j] & 0xf) * xq[j] + (b[i].qs[j] >> 4) * xq[j + 16];
        sum += lz_h2f(b[i].d) * dx[i] * (float)isum + lz_h2f(b[i].m) * sx[i];
    }
    return sum;
}

static float dot_q5_0(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q5_0 *b = (const block_q5_0 *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8_d(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++, xq += QK) {
        uint32_t qh = ld32(b[i].qh);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int lo = ((b[i].qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4)) - 16;
            int hi = ((b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4)) - 16;
            isum += lo * xq[j] + hi * xq[j + 16];
        }
        sum += lz_h2f(b[i].d) * dx[i] * (float)isum;
    }
    return sum;
}

static float dot_q5_1(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q5_1 *b = (const block_q5_1 *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8_d(x, k), *sx = xq8_s(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++, xq += QK) {
        uint32_t qh = ld32(b[i].qh);
        int isum = 0;
        for (int j = 0; j < 16; j++) {
            int lo = (b[i].qs[j] & 0xf) | (int)(((qh >> j) & 1) << 4);
            int hi = (b[i].qs[j] >> 4) | (int)(((qh >> (j + 16)) & 1) << 4);
            isum += lo * xq[j] + hi * xq[j + 16];
        }
        sum += lz_h2f(b[i].d) * dx[i] * (float)isum + lz_h2f(b[i].m) * sx[i];
    }
    return sum;
}

static float dot_q8_0(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q8_0 *b = (const block_q8_0 *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8_d(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++, xq += QK) {
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += b[i].qs[j] * xq[j];
        sum += lz_h2f(b[i].d) * dx[i] * (float)isum;
    }
    return sum;
}

// K-quants: sums over the 16 groups of 16 weights of a super-block.
static inline void group_sums(const int8_t *q, const int8_t *xq, int s[16]) {
    for (int g = 0; g < 16; g++) {
        int acc = 0;
        for (int j = 0; j < 16; j++) acc += q[g * 16 + j] * xq[g * 16 + j];
        s[g] = acc;
    }
}

static float dot_q2_k(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q2_k *b = (const block_q2_k *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8k_d(x, k);
    const int16_t *bs = xq8k_bsums(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++, xq += QK_K, bs += 16) {
        int8_t q[QK_K];
        for (int half = 0; half < 2; half++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++)
                    q[half * 128 + j * 32 + l] = (int8_t)((b[i].qs[half * 32 + l] >> (2 * j)) & 3);
        int s[16], isum = 0, msum = 0;
        group_sums(q, xq, s);
        for (int g = 0; g < 16; g++) {
            isum += (b[i].scales[g] & 0xf) * s[g];
            msum += (b[i].scales[g] >> 4) * bs[g];
        }
        sum += dx[i] * (lz_h2f(b[i].d) * (float)isum - lz_h2f(b[i].dmin) * (float)msum);
    }
    return sum;
}

static float dot_q3_k(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q3_k *b = (const block_q3_k *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8k_d(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++, xq += QK_K) {
        int8_t q[QK_K], sc[16];
        for (int half = 0; half < 2; half++)
            for (int j = 0; j < 4; j++)
                for (int l = 0; l < 32; l++) {
                    int v = (b[i].qs[half * 32 + l] >> (2 * j)) & 3;
                    int h = (b[i].hmask[l] >> (half * 4 + j)) & 1;
                    q[half * 128 + j * 32 + l] = (int8_t)(v - (h ? 0 : 4));
                }
        lz_q3_scales(b[i].scales, sc);
        int s[16], isum = 0;
        group_sums(q, xq, s);
        for (int g = 0; g < 16; g++) isum += sc[g] * s[g];
        sum += dx[i] * lz_h2f(b[i].d) * (float)isum;
    }
    return sum;
}

static float dot_q4_k(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q4_k *b = (const block_q4_k *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8k_d(x, k);
    const int16_t *bs = xq8k_bsums(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++, xq += QK_K, bs += 16) {
        int8_t q[QK_K];
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                q[c * 64 + l] = (int8_t)(b[i].qs[c * 32 + l] & 0xf);
                q[c * 64 + 32 + l] = (int8_t)(b[i].qs[c * 32 + l] >> 4);
            }
        uint8_t sc[8], mn[8];
        lz_k_scales(b[i].scales, sc, mn);
        int s[16], isum = 0, msum = 0;
        group_sums(q, xq, s);
        for (int j = 0; j < 8; j++) {
            isum += sc[j] * (s[2 * j] + s[2 * j + 1]);
            msum += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
        }
        sum += dx[i] * (lz_h2f(b[i].d) * (float)isum - lz_h2f(b[i].dmin) * (float)msum);
    }
    return sum;
}

static float dot_q5_k(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q5_k *b = (const block_q5_k *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8k_d(x, k);
    const int16_t *bs = xq8k_bsums(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++, xq += QK_K, bs += 16) {
        int8_t q[QK_K];
        for (int c = 0; c < 4; c++)
            for (int l = 0; l < 32; l++) {
                int h1 = (b[i].qh[l] >> (2 * c)) & 1, h2 = (b[i].qh[l] >> (2 * c + 1)) & 1;
                q[c * 64 + l] = (int8_t)((b[i].qs[c * 32 + l] & 0xf) | (h1 << 4));
                q[c * 64 + 32 + l] = (int8_t)((b[i].qs[c * 32 + l] >> 4) | (h2 << 4));
            }
        uint8_t sc[8], mn[8];
        lz_k_scales(b[i].scales, sc, mn);
        int s[16], isum = 0, msum = 0;
        group_sums(q, xq, s);
        for (int j = 0; j < 8; j++) {
            isum += sc[j] * (s[2 * j] + s[2 * j + 1]);
            msum += mn[j] * (bs[2 * j] + bs[2 * j + 1]);
        }
        sum += dx[i] * (lz_h2f(b[i].d) * (float)isum - lz_h2f(b[i].dmin) * (float)msum);
    }
    return sum;
}

static float dot_q6_k(const uint8_t *w, const uint8_t *x, int64_t k) {
    const block_q6_k *b = (const block_q6_k *)w;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8k_d(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++, xq += QK_K) {
        int8_t q[QK_K];
        for (int half = 0; half < 2; half++) {
            const uint8_t *ql = b[i].ql + half * 64, *qh = b[i].qh + half * 32;
            int8_t *o = q + half * 128;
            for (int l = 0; l < 32; l++) {
                o[l] = (int8_t)(((ql[l] & 0xf) | (((qh[l] >> 0) & 3) << 4)) - 32);
                o[l + 32] = (int8_t)(((ql[l + 32] & 0xf) | (((qh[l] >> 2) & 3) << 4)) - 32);
                o[l + 64] = (int8_t)(((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32);
                o[l + 96] = (int8_t)(((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32);
            }
        }
        int s[16], isum = 0;
        group_sums(q, xq, s);
        for (int g = 0; g < 16; g++) isum += b[i].scales[g] * s[g];
        sum += dx[i] * lz_h2f(b[i].d) * (float)isum;
    }
    return sum;
}

// Float types: eight partial sums so the compiler can vectorize without reassociating.
static float dot_f32(const uint8_t *w, const uint8_t *x, int64_t k) {
    const float *a = (const float *)w, *v = (const float *)x;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[i + j] * v[i + j];
    for (; i < k; i++) acc[0] += a[i] * v[i];
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static float dot_f16(const uint8_t *w, const uint8_t *x, int64_t k) {
    const lz_half *a = (const lz_half *)w, *v = (const lz_half *)x;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += lz_h2f(a[i + j]) * lz_h2f(v[i + j]);
    for (; i < k; i++) acc[0] += lz_h2f(a[i]) * lz_h2f(v[i]);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

static float dot_bf16(const uint8_t *w, const uint8_t *x, int64_t k) {
    const uint16_t *a = (const uint16_t *)w, *v = (const uint16_t *)x;
    float acc[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= k; i += 8)
        for (int j = 0; j < 8; j++) acc[j] += lz_bf2f(a[i + j]) * lz_bf2f(v[i + j]);
    for (; i < k; i++) acc[0] += lz_bf2f(a[i]) * lz_bf2f(v[i]);
    return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

#define PORTABLE_TILE(name, dot)                                                          \
    static void name(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x,   \
                     size_t xs, int nt, float *y, size_t ldy) {                           \
        for (int t = 0; t < nt; t++)                                                      \
            for (int r = 0; r < nr; r++) y[t * ldy + r] = dot(w + r * ws, x + t * xs, k); \
    }

PORTABLE_TILE(tile_f32, dot_f32)
PORTABLE_TILE(tile_f16, dot_f16)
PORTABLE_TILE(tile_bf16, dot_bf16)
PORTABLE_TILE(tile_q4_0, dot_q4_0)
PORTABLE_TILE(tile_q4_1, dot_q4_1)
PORTABLE_TILE(tile_q5_0, dot_q5_0)
PORTABLE_TILE(tile_q5_1, dot_q5_1)
PORTABLE_TILE(tile_q8_0, dot_q8_0)
PORTABLE_TILE(tile_q2_k, dot_q2_k)
PORTABLE_TILE(tile_q3_k, dot_q3_k)
PORTABLE_TILE(tile_q4_k, dot_q4_k)
PORTABLE_TILE(tile_q5_k, dot_q5_k)
PORTABLE_TILE(tile_q6_k, dot_q6_k)

void lz_quants_register(lz_kernels *k);

void lz_init_portable(lz_kernels *k) {
    memset(k, 0, sizeof *k);
    lz_quants_register(k);
    static const struct { int type; lz_tile_fn f; } t[] = {
        {LZ_F32, tile_f32}, {LZ_F16, tile_f16}, {LZ_BF16, tile_bf16},
        {LZ_Q4_0, tile_q4_0}, {LZ_Q4_1, tile_q4_1}, {LZ_Q5_0, tile_q5_0},
        {LZ_Q5_1, tile_q5_1}, {LZ_Q8_0, tile_q8_0}, {LZ_Q2_K, tile_q2_k},
        {LZ_Q3_K, tile_q3_k}, {LZ_Q4_K, tile_q4_k}, {LZ_Q5_K, tile_q5_k},
        {LZ_Q6_K, tile_q6_k},
    };
    for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {
        k->types[t[i].type].tile = t[i].f;
        k->types[t[i].type].portable = t[i].f;
        k->types[t[i].type].rows_pref = 4;
        k->types[t[i].type].toks_pref = 1;
    }
    k->name = "generic";
}

// ---------------------------------------------------------------- driver

// Activations quantized for the current call; grown as needed, never shrunk.
static uint8_t *scratch;
static size_t scratch_size;

static uint8_t *get_scratch(size_t n) {
    if (n > scratch_size) {
        free(scratch);
        scratch_size = n + n / 4;
        scratch = aligned_alloc(64, (scratch_size + 63) & ~(size_t)63);
        if (!scratch) scratch_size = 0;
    }
    return scratch;
}

typedef struct {
    lz_quant_fn quant;
    const float *x;
    int64_t ldx, k, n;
    uint8_t *xq;
    size_t xs;
} quant_job;

static void quant_worker(void *p, int ith, int nth) {
    quant_job *j = (quant_job *)p;
    for (int64_t t = ith; t < j->n; t += nth) j->quant(j->x + t * j->ldx, j->xq + t * j->xs, j->k);
}

typedef struct {
    const lz_type_ops *ops;
    const uint8_t *w;
    size_t ws;
    int64_t rows, k;
    const uint8_t *xq;
    size_t xs;
    int64_t n;
    float *y;
    size_t ldy;
    int64_t rchunk, tchunk, n_rc, n_tc;
    atomic_llong next;
} mm_job;

static void mm_worker(void *p, int ith, int nth) {
    (void)ith; (void)nth;
    mm_job *j = (mm_job *)p;
    const int big = j->ops->max_k && j->k > j->ops->max_k;
    const lz_tile_fn tile = big ? j->ops->portable : j->ops->tile;
    const int rp = big ? 4 : j->ops->rows_pref, tp = big ? 1 : j->ops->toks_pref;
    const int64_t total = j->n_rc * j->n_tc;
    for (;;) {
        int64_t task = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (task >= total) break;
        // consecutive tasks share the same tokens and walk down the rows
        int64_t r0 = (task % j->n_rc) * j->rchunk, t0 = (task / j->n_rc) * j->tchunk;
        int64_t r1 = r0 + j->rchunk < j->rows ? r0 + j->rchunk : j->rows;
        int64_t t1 = t0 + j->tchunk < j->n ? t0 + j->tchunk : j->n;
        for (int64_t t = t0; t < t1; t += tp) {
            int nt = (int)(t1 - t < tp ? t1 - t : tp);
            for (int64_t r = r0; r < r1; r += rp) {
                int nr = (int)(r1 - r < rp ? r1 - r : rp);
                tile(j->k, j->w + r * j->ws, j->ws, nr, j->xq + t * j->xs, j->xs, nt,
                             j->y + t * j->ldy + r, j->ldy);
            }
        }
    }
}

LZ_API int lz_matmul(int type, const void *w, int64_t rows, int64_t k, const float *x, int64_t ldx,
                   int64_t n, float *y, int64_t ldy) {
    if (type < 0 || type >= LZ_NTYPES || !lz_k.types[type].tile) return -1;
    const lz_type_ops *ops = &lz_k.types[type];
    if (k % ops->block || rows <= 0 || n <= 0) return -2;
    int nth = lz_pool_threads();

    const uint8_t *xq;
    size_t xs;
    if (ops->xq == XQ_F32) {
        xq = (const uint8_t *)x;
        xs = (size_t)ldx * 4;
    } else {
        xs = xq_row_bytes(ops->xq, k);
        uint8_t *buf = get_scratch(xs * (size_t)n);
        if (!buf) return -3;
        quant_job qj = {lz_k.quant[ops->xq], x, ldx, k, n, buf, xs};
        if (n >= 4 && nth > 1) lz_pool_run(quant_worker, &qj);
        else quant_worker(&qj, 0, 1);
        xq = buf;
    }

    mm_job j;
    j.ops = ops;
    j.w = (const uint8_t *)w;
    j.ws = (size_t)(k / ops->block) * (size_t)ops->type_size;
    j.rows = rows;
    j.k = k;
    j.xq = xq;
    j.xs = xs;
    j.n = n;
    j.y = y;
    j.ldy = (size_t)ldy;
    const int rp = ops->rows_pref, tp = ops->toks_pref;
    // Token chunks of up to 64 keep a chunk's activations in L2 while its weight
    // rows stream past; row chunks give each thread several tasks to even out.
    j.tchunk = n <= 64 ? n : 64;
    j.tchunk = (j.tchunk + tp - 1) / tp * tp;
    j.n_tc = (n + j.tchunk - 1) / j.tchunk;
    int64_t want = (int64_t)nth * 4;
    int64_t rc = rows * j.n_tc / want;
    if (n > 1 && rc > 64) rc = 64;
    if (rc < rp) rc = rp;
    rc = (rc + rp - 1) / rp * rp;
    j.rchunk = rc;
    j.n_rc = (rows + rc - 1) / rc;
    atomic_init(&j.next, 0);
    if (nth > 1 && j.n_rc * j.n_tc > 1) lz_pool_run(mm_worker, &j);
    else mm_worker(&j, 0, 1);
    return 0;
}
