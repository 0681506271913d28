#ifndef LZ_OPS_H
#define LZ_OPS_H
#include <stdint.h>

#include "quants.h"

// Every function here is part of the exported ABI (see api.c).

LZ_API void lz_rmsnorm(const float *x, float *y, int64_t count, const float *w, int64_t group, float eps);
LZ_API void lz_add(float *x, const float *y, int64_t n);
LZ_API void lz_add_bias(float *x, int64_t rows, int64_t n, const float *b);
LZ_API void lz_scale(float *x, int64_t n, float s);
LZ_API void lz_swiglu(const float *g, const float *u, float *out, int64_t n);
LZ_API void lz_geglu(const float *g, const float *u, float *out, int64_t n);
LZ_API double lz_logprob(const float *x, int64_t n, int64_t target);
LZ_API int64_t lz_topk(const float *x, int64_t n, int64_t k, int64_t *idx, float *val);
LZ_API void lz_embed(int type, const void *table, int64_t n, const int32_t *ids, int64_t n_ids, float *out);
LZ_API void lz_rope_table(float *cs, int64_t pos0, int64_t n_tokens, const double *inv_freq, int half);
LZ_API void lz_rope(float *x, int64_t n_tokens, int64_t ldx, int n_heads, int head_dim, int n_rot,
             int neox, const float *cs);
LZ_API int lz_attention(const float *q, int64_t ldq, const float *k, const float *v, int64_t ldkv,
                      lz_half *kc, lz_half *vc, int64_t n_tokens, int64_t pos0, int n_heads,
                      int n_kv_heads, int head_dim, float scale, int64_t window, float *out,
                      int64_t ldo);
LZ_API void lz_rope_table_at(float *cs, const int64_t *positions, int64_t n_rows,
                             const double *inv_freq, int half);
LZ_API int lz_attention_rows(const float *q, int64_t ldq, const float *k, const float *v,
                             int64_t ldkv, lz_half *const *k_bases, lz_half *const *v_bases,
                             int64_t layer_off, const int64_t *positions, int64_t n_rows,
                             int n_heads, int n_kv_heads, int head_dim, float scale,
                             int64_t window, float *out, int64_t ldo);
LZ_API int lz_matmul(int type, const void *w, int64_t rows, int64_t k, const float *x, int64_t ldx,
                   int64_t n, float *y, int64_t ldy);

#endif
