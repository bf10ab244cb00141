/* Multiresolution hash encoding, float32 CPU kernels (forward, table backward, input backward).
 *
 * Compiled at first use by radfield/fields/hashgrid.py and called through ctypes. Must match
 * `hash_grid_reference` in hashgrid.py operation for operation (compile with -ffp-contract=off):
 *
 *   xc   = clamp(x, 0, 1)                       per coordinate
 *   p    = xc * res                             (float32)
 *   i0   = min(floor(p), res - 1)               lower corner, so i0 + 1 <= res
 *   t    = p - i0                               in [0, 1]
 *   corner c = 0..7: offset (c & 1, (c >> 1) & 1, (c >> 2) & 1) on (x, y, z)
 *   w_c  = (wx * wy) * wz,  wd = t_d if the offset bit is set, else 1 - t_d
 *   idx  = dense:  cx + cy * (res + 1) + cz * (res + 1)^2        when (res + 1)^3 <= T_l
 *          hashed: (cx ^ cy * 2654435761 ^ cz * 805459861) mod 2^32, then mod T_l
 *   out[i, l * F + f] = sum over c = 0..7 (in that order) of w_c * table_l[idx_c, f]
 *
 * Layouts: x (n, 3) contiguous; out and grad_out (n, L * F) contiguous; table l (T_l, F)
 * contiguous, addressed through an array of L int64 addresses.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t c[8];  /* corner rows */
    float w[8];    /* corner weights */
    float t[3];    /* fractional position in the cell */
} Cell;

static inline int64_t corner_row(int64_t cx, int64_t cy, int64_t cz, int64_t r1, int64_t T,
                                 int dense) {
    if (dense) return cx + cy * r1 + cz * r1 * r1;
    uint32_t h = (uint32_t)cx ^ ((uint32_t)cy * 2654435761u) ^ ((uint32_t)cz * 805459861u);
    if ((T & (T - 1)) == 0) return (int64_t)(h & (uint32_t)(T - 1));
    return (int64_t)((uint64_t)h % (uint64_t)T);
}

static inline void locate(const float *xi, int32_t res, int64_t T, Cell *cell) {
    int64_t i0[3];
    for (int d = 0; d < 3; ++d) {
        float xc = fminf(fmaxf(xi[d], 0.0f), 1.0f);
        float p = xc * (float)res;
        float f0 = floorf(p);
        if (f0 > (float)(res - 1)) f0 = (float)(res - 1);
        i0[d] = (int64_t)f0;
        cell->t[d] = p - f0;
    }
    int64_t r1 = (int64_t)res + 1;
    int dense = r1 * r1 * r1 <= T;
    float omt[3] = {1.0f - cell->t[0], 1.0f - cell->t[1], 1.0f - cell->t[2]};
    for (int c = 0; c < 8; ++c) {
        int bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
        cell->c[c] = corner_row(i0[0] + bx, i0[1] + by, i0[2] + bz, r1, T, dense);
        float wx = bx ? cell->t[0] : omt[0];
        float wy = by ? cell->t[1] : omt[1];
        float wz = bz ? cell->t[2] : omt[2];
        cell->w[c] = (wx * wy) * wz;
    }
}

#define BLOCK 32 /* points located (and their corner rows prefetched) before gathering */

/* Locate `m` points of one level and prefetch their corner rows (memory-level parallelism). */
static inline void locate_block(const float *x, int64_t m, int32_t res, int64_t T,
                                const float *tab, int32_t F, Cell *cells) {
    for (int64_t j = 0; j < m; ++j) {
        locate(x + 3 * j, res, T, &cells[j]);
        for (int c = 0; c < 8; ++c) __builtin_prefetch(tab + cells[j].c[c] * F, 0, 0);
    }
}

static inline void gather_block(const Cell *cells, int64_t m, const float *tab, int32_t F,
                                float *out, int64_t stride) {
    for (int64_t j = 0; j < m; ++j) {
        const Cell *cell = &cells[j];
        float *o = out + j * stride;
        for (int32_t f = 0; f < F; ++f) {
            float acc = cell->w[0] * tab[cell->c[0] * F + f];
            for (int c = 1; c < 8; ++c) acc = acc + cell->w[c] * tab[cell->c[c] * F + f];
            o[f] = acc;
        }
    }
}

/* out (n, L*F). order 0: each thread takes blocks of points and does all levels per block;
 * order 1: levels outer, blocks of points inner (parallel over blocks within each level). */
void hg_forward(const float *x, int64_t n, int32_t L, int32_t F, const int32_t *res,
                const int64_t *tsize, const int64_t *tables, float *out, int32_t nthreads,
                int32_t order) {
    const int64_t stride = (int64_t)L * F;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
    if (order == 0) {
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t b = 0; b < nblocks; ++b) {
            Cell cells[BLOCK];
            int64_t i = b * BLOCK, m = n - i < BLOCK ? n - i : BLOCK;
            for (int32_t l = 0; l < L; ++l) {
                const float *tab = (const float *)(intptr_t)tables[l];
                locate_block(x + 3 * i, m, res[l], tsize[l], tab, F, cells);
                gather_block(cells, m, tab, F, out + i * stride + (int64_t)l * F, stride);
            }
        }
    } else {
        for (int32_t l = 0; l < L; ++l) {
            const float *tab = (const float *)(intptr_t)tables[l];
#pragma omp parallel for schedule(static) num_threads(nthreads)
            for (int64_t b = 0; b < nblocks; ++b) {
                Cell cells[BLOCK];
                int64_t i = b * BLOCK, m = n - i < BLOCK ? n - i : BLOCK;
                locate_block(x + 3 * i, m, res[l], tsize[l], tab, F, cells);
                gather_block(cells, m, tab, F, out + i * stride + (int64_t)l * F, stride);
            }
        }
    }
}

/* Table gradients. grads[l] is the address of a (T_l, F) float buffer, or 0 to skip the level;
 * each buffer is zero-filled here, then grad_out * w_c is scatter-added into row idx_c.
 * Parallel over levels (one table per level, so no write races); finest levels first. */
void hg_backward_tables(const float *x, int64_t n, int32_t L, int32_t F, const int32_t *res,
                        const int64_t *tsize, const int64_t *grads, const float *grad_out,
                        int32_t nthreads) {
    const int64_t stride = (int64_t)L * F;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int32_t k = 0; k < L; ++k) {
        int32_t l = L - 1 - k;
        float *g = (float *)(intptr_t)grads[l];
        if (g == NULL) continue;
        memset(g, 0, (size_t)tsize[l] * (size_t)F * sizeof(float));
        Cell cells[BLOCK];
        for (int64_t i = 0; i < n; i += BLOCK) {
            int64_t m = n - i < BLOCK ? n - i : BLOCK;
            locate_block(x + 3 * i, m, res[l], tsize[l], g, F, cells);
            for (int64_t j = 0; j < m; ++j) {
                const Cell *cell = &cells[j];
                const float *go = grad_out + (i + j) * stride + (int64_t)l * F;
                for (int c = 0; c < 8; ++c) {
                    float *row = g + cell->c[c] * F;
                    for (int32_t f = 0; f < F; ++f) row[f] += go[f] * cell->w[c];
                }
            }
        }
    }
}

/* Gradient with respect to the (unclamped) input x, before the clamp mask (applied by the
 * caller): d out / d x_d = res * sum_c table[idx_c] * d w_c / d t_d. Parallel over points. */
void hg_backward_input(const float *x, int64_t n, int32_t L, int32_t F, const int32_t *res,
                       const int64_t *tsize, const int64_t *tables, const float *grad_out,
                       float *grad_x, int32_t nthreads) {
    const int64_t stride = (int64_t)L * F;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblocks; ++b) {
        Cell cells[BLOCK];
        float gx[BLOCK][3];
        int64_t i = b * BLOCK, m = n - i < BLOCK ? n - i : BLOCK;
        for (int64_t j = 0; j < m; ++j) gx[j][0] = gx[j][1] = gx[j][2] = 0.0f;
        for (int32_t l = 0; l < L; ++l) {
            const float *tab = (const float *)(intptr_t)tables[l];
            locate_block(x + 3 * i, m, res[l], tsize[l], tab, F, cells);
            for (int64_t j = 0; j < m; ++j) {
                const Cell *cell = &cells[j];
                const float *go = grad_out + (i + j) * stride + (int64_t)l * F;
                const float *t = cell->t;
                float omt[3] = {1.0f - t[0], 1.0f - t[1], 1.0f - t[2]};
                float gl[3] = {0.0f, 0.0f, 0.0f};
                for (int c = 0; c < 8; ++c) {
                    float dot = 0.0f;
                    for (int32_t f = 0; f < F; ++f) dot += go[f] * tab[cell->c[c] * F + f];
                    int bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
                    float wx = bx ? t[0] : omt[0];
                    float wy = by ? t[1] : omt[1];
                    float wz = bz ? t[2] : omt[2];
                    gl[0] += dot * (bx ? 1.0f : -1.0f) * wy * wz;
                    gl[1] += dot * (by ? 1.0f : -1.0f) * wx * wz;
                    gl[2] += dot * (bz ? 1.0f : -1.0f) * wx * wy;
                }
                for (int d = 0; d < 3; ++d) gx[j][d] += gl[d] * (float)res[l];
            }
        }
        for (int64_t j = 0; j < m; ++j)
            for (int d = 0; d < 3; ++d) grad_x[3 * (i + j) + d] = gx[j][d];
    }
}
