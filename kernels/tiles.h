// Tile functions of the SIMD kernel files, made through these macros.
//
// Every SIMD file covers an output block of nr weight rows x nt tokens with register
// tiles: a tile function fn(type, R, T, k, w, ws, x, xs, y, ldy) is an always-inline
// template whose R and T are compile-time constants; the macros expect k, w, ws, nr,
// x, xs, nt, y and ldy in scope.
#ifndef LZ_TILES_H
#define LZ_TILES_H

// One column of tiles: nr rows x TN tokens from token t, RR rows at a time.
#define ROW_TILES(fn, type, RR, TN)                                                           \
    do {                                                                                      \
        int r = 0;                                                                            \
        for (; r + RR <= nr; r += RR)                                                         \
            fn(type, RR, TN, k, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy);        \
        for (; r < nr; r++)                                                                   \
            fn(type, 1, TN, k, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy);         \
    } while (0)

// Cover nr x nt with RR x TT tiles; 2..TT-1 leftover tokens (short prompts, a few
// sequences decoding together) take one narrower column of single rows, so each
// weight block is still decoded once for all of them and, when that is all there is
// (batched decoding), the weights stream through memory row after row.
#define TILES(fn, type, RR, TT)                                                               \
    do {                                                                                      \
        int t = 0;                                                                            \
        for (; t + TT <= nt; t += TT) ROW_TILES(fn, type, RR, TT);                           \
        switch (nt - t) {   /* the guards drop the cases TT cannot reach at compile time */  \
        case 2: if (2 < TT) { ROW_TILES(fn, type, 1, 2); t += 2; } break;                    \
        case 3: if (3 < TT) { ROW_TILES(fn, type, 1, 3); t += 3; } break;                    \
        case 4: if (4 < TT) { ROW_TILES(fn, type, 1, 4); t += 4; } break;                    \
        case 5: if (5 < TT) { ROW_TILES(fn, type, 1, 5); t += 5; } break;                    \
        case 6: if (6 < TT) { ROW_TILES(fn, type, 1, 6); t += 6; } break;                    \
        case 7: if (7 < TT) { ROW_TILES(fn, type, 1, 7); t += 7; } break;                    \
        default: break;                                                                       \
        }                                                                                     \
        /* a single token takes one row at a time: the weights then stream through */        \
        /* memory in one sequential run, which the hardware prefetcher follows */            \
        for (; t < nt; t++)                                                                   \
            for (int r = 0; r < nr; r++)                                                      \
                fn(type, 1, 1, k, w + r * ws, ws, x + t * xs, xs, y + t * ldy + r, ldy);      \
    } while (0)

// A kernel-table tile function covering nr x nt with fn's RR x TT register tiles.
#define DEFINE_TILE(name, fn, type, RR, TT)                                                   \
    static void name(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x,       \
                     size_t xs, int nt, float *y, size_t ldy) {                               \
        TILES(fn, type, RR, TT);                                                              \
    }

// Cover nr x nt with RR x TT tiles where the leftover tokens, a single one included,
// keep RR-row tiles (one narrower column): for files whose RR-row kernel is also their
// best matrix x vector (NEON, RVV: RR weight streams, the token's values loaded once
// for all of them), unlike TILES, which streams single rows for the x86 prefetchers.
#define TILES_KEEPING_ROWS(fn, type, RR, TT)                                                  \
    do {                                                                                      \
        int t = 0;                                                                            \
        for (; t + TT <= nt; t += TT) ROW_TILES(fn, type, RR, TT);                           \
        switch (nt - t) {   /* the guards drop the cases TT cannot reach at compile time */  \
        case 7: if (7 < TT) ROW_TILES(fn, type, RR, 7); break;                               \
        case 6: if (6 < TT) ROW_TILES(fn, type, RR, 6); break;                               \
        case 5: if (5 < TT) ROW_TILES(fn, type, RR, 5); break;                               \
        case 4: if (4 < TT) ROW_TILES(fn, type, RR, 4); break;                               \
        case 3: if (3 < TT) ROW_TILES(fn, type, RR, 3); break;                               \
        case 2: if (2 < TT) ROW_TILES(fn, type, RR, 2); break;                               \
        case 1: if (1 < TT) ROW_TILES(fn, type, RR, 1); break;                               \
        default: break;                                                                       \
        }                                                                                     \
    } while (0)

// A kernel-table tile function covering nr x nt as TILES_KEEPING_ROWS does.
#define DEFINE_TILE_KEEPING_ROWS(name, fn, type, RR, TT)                                      \
    static void name(int64_t k, const uint8_t *w, size_t ws, int nr, const uint8_t *x,       \
                     size_t xs, int nt, float *y, size_t ldy) {                               \
        TILES_KEEPING_ROWS(fn, type, RR, TT);                                                 \
    }

// Register the including file's tile_q4_0 .. tile_q6_k (made with the macros above),
// LEGACY_T / KQ_T tokens per call and 4 rows per call: a multiple of the tiles' rows,
// so that a single token gets a 4-row matrix x vector kernel where the file has one.
#define REGISTER_QUANT_TILES(k, max_k_)                                                       \
    do {                                                                                      \
        static const struct { int type; lz_tile_fn f; int tt; } t[] = {                       \
            {LZ_Q4_0, tile_q4_0, LEGACY_T}, {LZ_Q4_1, tile_q4_1, LEGACY_T},                   \
            {LZ_Q5_0, tile_q5_0, LEGACY_T}, {LZ_Q5_1, tile_q5_1, LEGACY_T},                   \
            {LZ_Q8_0, tile_q8_0, LEGACY_T},                                                   \
            {LZ_Q2_K, tile_q2_k, KQ_T}, {LZ_Q3_K, tile_q3_k, KQ_T},                           \
            {LZ_Q4_K, tile_q4_k, KQ_T}, {LZ_Q5_K, tile_q5_k, KQ_T},                           \
            {LZ_Q6_K, tile_q6_k, KQ_T},                                                       \
        };                                                                                    \
        for (size_t i = 0; i < sizeof t / sizeof t[0]; i++) {                                 \
            lz_type_ops *o = &(k)->types[t[i].type];                                          \
            o->tile = t[i].f;                                                                 \
            o->rows_pref = 4;                                                                 \
            o->toks_pref = t[i].tt;                                                           \
            o->max_k = (max_k_);                                                              \
        }                                                                                     \
    } while (0)

#endif
