// Matrix x vector and matrix x matrix over quantized weights: the portable kernels
// (every type, plain C the compiler may vectorize), and the driver that quantizes
// the activations and spreads tiles of the output over the thread pool.
//
// Y[t][r] = sum_i W[r][i] * X[t][i]: W is `rows` rows of k weights in its GGML
// type, read in place; X holds n activation rows of k floats.
// pthread keys are POSIX, hidden by -std=c11 unless asked for
#define _POSIX_C_SOURCE 200809L
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "quants.h"
#include "threads.h"

lz_kernels lz_k;

// ---------------------------------------------------------------- portable dots
// Integer sums inside a block are exact; the float work is per block.

// Legacy blocks: one integer sum per block, then value = d * code (+ m) applied as
// d * dx * sum (+ m * d_x * sum(x)).
static inline __attribute__((always_inline)) float dot_legacy(const int type, const uint8_t *w,
                                                              const uint8_t *x, int64_t k) {
    const size_t bs = (size_t)lz_type_size(type);
    const int with_min = type == LZ_Q4_1 || type == LZ_Q5_1;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8_d(x, k), *sx = xq8_s(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK; i++, xq += QK) {
        const uint8_t *blk = w + i * bs;
        int8_t q[QK];
        lz_legacy_codes(type, blk, q);
        int isum = 0;
        for (int j = 0; j < QK; j++) isum += q[j] * xq[j];
        lz_half d, m;
        memcpy(&d, blk, 2);                     // every legacy block starts with d,
        float term = lz_h2f(d) * dx[i] * (float)isum;
        if (with_min) {                         // and Q4_1/Q5_1 follow it with m
            memcpy(&m, blk + 2, 2);
            term += lz_h2f(m) * sx[i];
        }
        sum += term;
    }
    return sum;
}

// K-quants: sums over the 16 groups of 16 weights of a super-block, weighted by the
// group scales; the minimums meet the activations' group sums (bsums).
static inline __attribute__((always_inline)) float dot_kq(const int type, const uint8_t *w,
                                                          const uint8_t *x, int64_t k) {
    const size_t bs = (size_t)lz_type_size(type);
    const int with_min = type == LZ_Q2_K || type == LZ_Q4_K || type == LZ_Q5_K;
    const int8_t *xq = (const int8_t *)x;
    const float *dx = xq8k_d(x, k);
    const int16_t *bsums = xq8k_bsums(x, k);
    float sum = 0.0f;
    for (int64_t i = 0; i < k / QK_K; i++, xq += QK_K) {
        const uint8_t *blk = w + i * bs;
        int8_t q[QK_K];
        lz_kq_codes(type, blk, q);
        int sc[16], mn[16];
        float d, dmin;
        lz_kq_scales(type, blk, sc, mn, &d, &dmin);
        int isum = 0, msum = 0;
        for (int g = 0; g < 16; g++) {
            int s = 0;
            for (int j = 0; j < 16; j++) s += q[g * 16 + j] * xq[g * 16 + j];
            isum += sc[g] * s;
            msum += mn[g] * bsums[i * 16 + g];
        }
        if (with_min)
            sum += dx[i] * (d * (float)isum - dmin * (float)msum);
        else
            sum += dx[i] * d * (float)isum;
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
#define PORTABLE_QUANT_TILE(name, dot, type)                                              \
    static float name##_dot(const uint8_t *w, const uint8_t *x, int64_t k) {              \
        return dot(type, w, x, k);                                                        \
    }                                                                                     \
    PORTABLE_TILE(name, name##_dot)

PORTABLE_TILE(tile_f32, dot_f32)
PORTABLE_TILE(tile_f16, dot_f16)
PORTABLE_TILE(tile_bf16, dot_bf16)
PORTABLE_QUANT_TILE(tile_q4_0, dot_legacy, LZ_Q4_0)
PORTABLE_QUANT_TILE(tile_q4_1, dot_legacy, LZ_Q4_1)
PORTABLE_QUANT_TILE(tile_q5_0, dot_legacy, LZ_Q5_0)
PORTABLE_QUANT_TILE(tile_q5_1, dot_legacy, LZ_Q5_1)
PORTABLE_QUANT_TILE(tile_q8_0, dot_legacy, LZ_Q8_0)
PORTABLE_QUANT_TILE(tile_q2_k, dot_kq, LZ_Q2_K)
PORTABLE_QUANT_TILE(tile_q3_k, dot_kq, LZ_Q3_K)
PORTABLE_QUANT_TILE(tile_q4_k, dot_kq, LZ_Q4_K)
PORTABLE_QUANT_TILE(tile_q5_k, dot_kq, LZ_Q5_K)
PORTABLE_QUANT_TILE(tile_q6_k, dot_kq, LZ_Q6_K)

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

// Activations quantized for the current call, one buffer per calling thread (calls
// are made without the GIL, from any thread): grown as needed, never shrunk, freed
// when the thread exits.
typedef struct { uint8_t *buf; size_t size; } scratch_buf;
static pthread_key_t scratch_key;
static pthread_once_t scratch_once = PTHREAD_ONCE_INIT;

static void scratch_free(void *p) {
    scratch_buf *s = (scratch_buf *)p;
    free(s->buf);
    free(s);
}

static void scratch_key_init(void) { pthread_key_create(&scratch_key, scratch_free); }

static uint8_t *get_scratch(size_t n) {
    pthread_once(&scratch_once, scratch_key_init);
    scratch_buf *s = (scratch_buf *)pthread_getspecific(scratch_key);
    if (!s) {
        s = (scratch_buf *)calloc(1, sizeof *s);
        if (!s || pthread_setspecific(scratch_key, s) != 0) {
            free(s);
            return NULL;
        }
    }
    if (n > s->size) {
        free(s->buf);
        s->size = n + n / 4;
        s->buf = aligned_alloc(64, (s->size + 63) & ~(size_t)63);
        if (!s->buf) s->size = 0;
    }
    return s->buf;
}

typedef struct {
    lz_quant_fn quant;
    const float *x;
    int64_t ldx, k, n;
    uint8_t *xq;
    size_t xs;
    atomic_llong next;   // rows are claimed one at a time (threads.h)
} quant_job;

static void quant_worker(void *p, int ith, int nth) {
    (void)ith; (void)nth;
    quant_job *j = (quant_job *)p;
    for (;;) {
        int64_t t = atomic_fetch_add_explicit(&j->next, 1, memory_order_relaxed);
        if (t >= j->n) break;
        j->quant(j->x + t * j->ldx, j->xq + t * j->xs, j->k);
    }
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
    if (k <= 0 || k % ops->block || rows <= 0 || n <= 0 || ldx < k || ldy < rows) return -2;
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
        quant_job qj = {lz_k.quant[ops->xq], x, ldx, k, n, buf, xs, 0};
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
    // rows stream past; row chunks give each thread several tasks to even out, and
    // small enough ones that a thread descheduled mid-task (a busy core) holds up
    // the others for little: 8 per thread.
    j.tchunk = n <= 64 ? n : 64;
    j.tchunk = (j.tchunk + tp - 1) / tp * tp;
    j.n_tc = (n + j.tchunk - 1) / j.tchunk;
    int64_t want = (int64_t)nth * 8;
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
