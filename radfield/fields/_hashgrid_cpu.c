/* Multiresolution hash encoding, float32 CPU kernels (forward, table backward, input backward
 * of time-sliced tables, and a forward that also writes the Jacobian in the input).
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
 *
 * The *_sliced entry points serve time-sliced tables (T_l, K * F): K slices of F features per
 * row, of which each point blends two (gather_block_sliced); they share their loops with the
 * static ones (k = NULL, K = 1).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#define BLOCK 32 /* points located (and their corner rows prefetched) before gathering */

/* One block's cells at one level, structure of arrays so that locating vectorises over points:
 * row[c][j] and w[c][j] are point j's corner c row and weight, t[d][j] its fractional position. */
typedef struct {
    uint32_t row[8][BLOCK];
    float w[8][BLOCK];
    float t[3][BLOCK];
} Cells;

/* Locate `m` points of one level (module comment), prefetching each corner's rows as soon as
 * they are known (memory-level parallelism). Every loop over j is branch-free so that gcc vectorises it; the
 * arithmetic is the scalar one, operation for operation (IEEE float, so lane for lane). */
static inline void locate_block(const float *x, int64_t m, int32_t res, int64_t T,
                                const float *tab, int64_t row_len, Cells *cells) {
    uint32_t i0[3][BLOCK];
    const float fres = (float)res, top = (float)(res - 1);
    for (int d = 0; d < 3; ++d) {
        float *t = cells->t[d];
        uint32_t *i = i0[d];
        for (int64_t j = 0; j < m; ++j) {
            float xc = x[3 * j + d];
            xc = xc > 0.0f ? xc : 0.0f; /* fmaxf(x, 0), NaN -> 0 */
            xc = xc < 1.0f ? xc : 1.0f;
            float p = xc * fres;
            float f0 = floorf(p);
            f0 = f0 > top ? top : f0;
            i[j] = (uint32_t)(int32_t)f0;
            t[j] = p - f0;
        }
    }
    const uint32_t r1 = (uint32_t)res + 1;
    const int dense = (int64_t)r1 * r1 * r1 <= T;
    const int pow2 = (T & (T - 1)) == 0;
    const uint32_t mask = (uint32_t)(T - 1);
    for (int c = 0; c < 8; ++c) {
        const uint32_t bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
        uint32_t *row = cells->row[c];
        if (dense) {
            for (int64_t j = 0; j < m; ++j)
                row[j] = (i0[0][j] + bx) + (i0[1][j] + by) * r1 + (i0[2][j] + bz) * (r1 * r1);
        } else {
            for (int64_t j = 0; j < m; ++j)
                row[j] = (i0[0][j] + bx) ^ ((i0[1][j] + by) * 2654435761u) ^ ((i0[2][j] + bz) * 805459861u);
            if (pow2)
                for (int64_t j = 0; j < m; ++j) row[j] &= mask;
            else
                for (int64_t j = 0; j < m; ++j) row[j] = (uint32_t)((uint64_t)row[j] % (uint64_t)T);
        }
        const float *tx = cells->t[0], *ty = cells->t[1], *tz = cells->t[2];
        for (int64_t j = 0; j < m; ++j) __builtin_prefetch(tab + (int64_t)row[j] * row_len, 0, 0);
        float *w = cells->w[c];
        for (int64_t j = 0; j < m; ++j) {
            float wx = bx ? tx[j] : 1.0f - tx[j];
            float wy = by ? ty[j] : 1.0f - ty[j];
            float wz = bz ? tz[j] : 1.0f - tz[j];
            w[j] = (wx * wy) * wz;
        }
    }
}

static inline void gather_block(const Cells *cells, int64_t m, const float *tab, int32_t F,
                                float *out, int64_t stride) {
    for (int64_t j = 0; j < m; ++j) {
        float *o = out + j * stride;
        for (int32_t f = 0; f < F; ++f) {
            float acc = cells->w[0][j] * tab[(int64_t)cells->row[0][j] * F + f];
            for (int c = 1; c < 8; ++c) acc = acc + cells->w[c][j] * tab[(int64_t)cells->row[c][j] * F + f];
            o[f] = acc;
        }
    }
}

/* Time-sliced tables (TimeSlicedHashGrid): a row holds K slices of F features, row layout
 * [slice 0: F floats][slice 1: F floats]...; point j blends slices k_j and k_j + 1:
 *   out[j, f] = sum_c w_c * ((1 - a_j) * table[row_c, k_j F + f] + a_j * table[row_c, (k_j + 1) F + f])
 * (the blend inside the corner sum, in that order); 0 <= k_j <= K - 2. */
static inline void gather_block_sliced(const Cells *cells, int64_t m, const float *tab, int32_t F,
                                       int64_t row_len, const int32_t *k, const float *a,
                                       float *out, int64_t stride) {
    for (int64_t j = 0; j < m; ++j) {
        const int64_t s0 = (int64_t)k[j] * F;
        const float a1 = a[j], a0 = 1.0f - a1;
        float *o = out + j * stride;
        for (int32_t f = 0; f < F; ++f) {
            float acc = 0.0f;
            for (int c = 0; c < 8; ++c) {
                const float *row = tab + (int64_t)cells->row[c][j] * row_len + s0 + f;
                acc = acc + cells->w[c][j] * (a0 * row[0] + a1 * row[F]);
            }
            o[f] = acc;
        }
    }
}

/* d w_c / d t_d of the 8 corner weights of a cell (w_c = wx * wy * wz, module comment). */
static inline void weight_derivatives(const float t[3], float dw[8][3]) {
    const float omt[3] = {1.0f - t[0], 1.0f - t[1], 1.0f - t[2]};
    for (int c = 0; c < 8; ++c) {
        int bx = c & 1, by = (c >> 1) & 1, bz = (c >> 2) & 1;
        float wx = bx ? t[0] : omt[0], wy = by ? t[1] : omt[1], wz = bz ? t[2] : omt[2];
        dw[c][0] = (bx ? 1.0f : -1.0f) * wy * wz;
        dw[c][1] = (by ? 1.0f : -1.0f) * wx * wz;
        dw[c][2] = (bz ? 1.0f : -1.0f) * wx * wy;
    }
}

/* gather_block for static tables, also writing the encoding's Jacobian in the input: jac (n, L * F,
 * 3), jac[i, l F + f, d] = res_l * sum_c table_l[idx_c, f] * d w_c / d t_d (before the clamp's
 * mask), while the corner rows are in cache: tiny-cuda-nn's dy/dx. The input gradient is then
 * grad_out . jac, with no second pass over the tables (pose gradients). out and jac point at
 * the block's first point and this level's first feature. */
static inline void gather_block_jacobian(const Cells *cells, int64_t m, const float *tab, int32_t F,
                                         int32_t res, float *out, float *jac, int64_t stride) {
    for (int64_t j = 0; j < m; ++j) {
        float dw[8][3];
        const float t[3] = {cells->t[0][j], cells->t[1][j], cells->t[2][j]};
        weight_derivatives(t, dw);
        float *o = out + j * stride;
        float *J = jac + j * stride * 3;
        for (int32_t f = 0; f < F; ++f) {
            float v = tab[(int64_t)cells->row[0][j] * F + f];
            float acc = cells->w[0][j] * v; /* the same operations as gather_block */
            float g0 = v * dw[0][0], g1 = v * dw[0][1], g2 = v * dw[0][2];
            for (int c = 1; c < 8; ++c) {
                v = tab[(int64_t)cells->row[c][j] * F + f];
                acc = acc + cells->w[c][j] * v;
                g0 += v * dw[c][0];
                g1 += v * dw[c][1];
                g2 += v * dw[c][2];
            }
            o[f] = acc;
            J[3 * f] = g0 * (float)res;
            J[3 * f + 1] = g1 * (float)res;
            J[3 * f + 2] = g2 * (float)res;
        }
    }
}

/* Each thread takes blocks of points and does all levels per block; static tables (k = NULL,
 * K = 1; with jac != NULL also the Jacobian, gather_block_jacobian) or time-sliced ones (k, a per
 * point). out (n, L * F). */
static inline void forward_blocks(const float *x, const int32_t *k, const float *a, int64_t n,
                                  int32_t L, int32_t F, int32_t K, const int32_t *res,
                                  const int64_t *tsize, const int64_t *tables, float *out,
                                  float *jac, int32_t nthreads) {
    const int64_t stride = (int64_t)L * F, row_len = (int64_t)K * F;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblocks; ++b) {
        Cells cells;
        int64_t i = b * BLOCK, m = n - i < BLOCK ? n - i : BLOCK;
        for (int32_t l = 0; l < L; ++l) {
            const float *tab = (const float *)(intptr_t)tables[l];
            float *o = out + i * stride + (int64_t)l * F;
            locate_block(x + 3 * i, m, res[l], tsize[l], tab, row_len, &cells);
            const Cells *here = &cells;
            if (k == NULL && jac != NULL)
                gather_block_jacobian(here, m, tab, F, res[l], o, jac + (i * stride + (int64_t)l * F) * 3, stride);
            else if (k == NULL)
                gather_block(here, m, tab, F, o, stride);
            else
                gather_block_sliced(here, m, tab, F, row_len, k + i, a + i, o, stride);
        }
    }
}

/* out (n, L*F). order 0: forward_blocks (all levels per block of points); order 1: levels
 * outer, blocks of points inner (parallel over blocks within each level). */
void hg_forward(const float *x, int64_t n, int32_t L, int32_t F, const int32_t *res,
                const int64_t *tsize, const int64_t *tables, float *out, int32_t nthreads,
                int32_t order) {
    if (order == 0) {
        forward_blocks(x, NULL, NULL, n, L, F, 1, res, tsize, tables, out, NULL, nthreads);
        return;
    }
    const int64_t stride = (int64_t)L * F;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
    for (int32_t l = 0; l < L; ++l) {
        const float *tab = (const float *)(intptr_t)tables[l];
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t b = 0; b < nblocks; ++b) {
            Cells cells;
            int64_t i = b * BLOCK, m = n - i < BLOCK ? n - i : BLOCK;
            locate_block(x + 3 * i, m, res[l], tsize[l], tab, F, &cells);
            gather_block(&cells, m, tab, F, out + i * stride + (int64_t)l * F, stride);
        }
    }
}

void hg_forward_sliced(const float *x, const int32_t *k, const float *a, int64_t n, int32_t L,
                       int32_t F, int32_t K, const int32_t *res, const int64_t *tsize,
                       const int64_t *tables, float *out, int32_t nthreads) {
    forward_blocks(x, k, a, n, L, F, K, res, tsize, tables, out, NULL, nthreads);
}

/* hg_forward that also writes jac (n, L * F, 3) (gather_block_jacobian). */
void hg_forward_jacobian(const float *x, int64_t n, int32_t L, int32_t F, const int32_t *res,
                         const int64_t *tsize, const int64_t *tables, float *out, float *jac,
                         int32_t nthreads) {
    forward_blocks(x, NULL, NULL, n, L, F, 1, res, tsize, tables, out, jac, nthreads);
}

/* Table gradients. grads[l] is the address of a (T_l, K * F) float buffer, or 0 to skip the
 * level; each buffer is zero-filled here, then grad_out * w_c is scatter-added into row idx_c
 * (static tables: K = 1, k = NULL), or for time-sliced tables grad_out * w_c * (1 - a_i) into
 * slice k_i and grad_out * w_c * a_i into slice k_i + 1 of that row. Parallel over levels (one
 * table per level, so no write races); finest levels first. */
static inline void backward_tables(const float *x, const int32_t *k, const float *a, int64_t n,
                                   int32_t L, int32_t F, int32_t K, const int32_t *res,
                                   const int64_t *tsize, const int64_t *grads,
                                   const float *grad_out, int32_t nthreads) {
    const int64_t stride = (int64_t)L * F, row_len = (int64_t)K * F;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nthreads)
    for (int32_t q = 0; q < L; ++q) {
        int32_t l = L - 1 - q;
        float *g = (float *)(intptr_t)grads[l];
        if (g == NULL) continue;
        memset(g, 0, (size_t)tsize[l] * (size_t)row_len * sizeof(float));
        Cells cells;
        for (int64_t i = 0; i < n; i += BLOCK) {
            int64_t m = n - i < BLOCK ? n - i : BLOCK;
            locate_block(x + 3 * i, m, res[l], tsize[l], g, row_len, &cells);
            for (int64_t j = 0; j < m; ++j) {
                const float *go = grad_out + (i + j) * stride + (int64_t)l * F;
                if (k == NULL) {
                    for (int c = 0; c < 8; ++c) {
                        float *row = g + (int64_t)cells.row[c][j] * F;
                        for (int32_t f = 0; f < F; ++f) row[f] += go[f] * cells.w[c][j];
                    }
                    continue;
                }
                const int64_t s0 = (int64_t)k[i + j] * F;
                const float a1 = a[i + j], a0 = 1.0f - a1;
                for (int c = 0; c < 8; ++c) {
                    float *row = g + (int64_t)cells.row[c][j] * row_len + s0;
                    for (int32_t f = 0; f < F; ++f) {
                        const float gw = go[f] * cells.w[c][j];
                        row[f] += gw * a0;
                        row[F + f] += gw * a1;
                    }
                }
            }
        }
    }
}

void hg_backward_tables(const float *x, int64_t n, int32_t L, int32_t F, const int32_t *res,
                        const int64_t *tsize, const int64_t *grads, const float *grad_out,
                        int32_t nthreads) {
    backward_tables(x, NULL, NULL, n, L, F, 1, res, tsize, grads, grad_out, nthreads);
}

/* d enc / d x of one level, given dot[c] = sum_f grad_out[f] * value of corner c:
 * gx[d] += res * sum_c dot[c] * d w_c / d t_d. */
static inline void add_input_grad(const float t[3], const float dot[8], int32_t res, float *gx) {
    float dw[8][3];
    weight_derivatives(t, dw);
    float gl[3] = {0.0f, 0.0f, 0.0f};
    for (int c = 0; c < 8; ++c)
        for (int d = 0; d < 3; ++d) gl[d] += dot[c] * dw[c][d];
    for (int d = 0; d < 3; ++d) gx[d] += gl[d] * (float)res;
}

/* Gradient with respect to the (unclamped) input x, before the clamp mask (applied by the
 * caller): d out / d x_d = res * sum_c value_c * d w_c / d t_d, value_c the corner row's
 * blend of slices k_i and k_i + 1 (time-sliced tables; static ones have hg_forward_jacobian).
 * Parallel over points. */
static inline void backward_input(const float *x, const int32_t *k, const float *a, int64_t n,
                                  int32_t L, int32_t F, int32_t K, const int32_t *res,
                                  const int64_t *tsize, const int64_t *tables,
                                  const float *grad_out, float *grad_x, int32_t nthreads) {
    const int64_t stride = (int64_t)L * F, row_len = (int64_t)K * F;
    const int64_t nblocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblocks; ++b) {
        Cells cells;
        float gx[BLOCK][3];
        int64_t i = b * BLOCK, m = n - i < BLOCK ? n - i : BLOCK;
        for (int64_t j = 0; j < m; ++j) gx[j][0] = gx[j][1] = gx[j][2] = 0.0f;
        for (int32_t l = 0; l < L; ++l) {
            const float *tab = (const float *)(intptr_t)tables[l];
            locate_block(x + 3 * i, m, res[l], tsize[l], tab, row_len, &cells);
            for (int64_t j = 0; j < m; ++j) {
                const float *go = grad_out + (i + j) * stride + (int64_t)l * F;
                float dot[8];
                if (k == NULL) {
                    for (int c = 0; c < 8; ++c) {
                        dot[c] = 0.0f;
                        for (int32_t f = 0; f < F; ++f) dot[c] += go[f] * tab[(int64_t)cells.row[c][j] * F + f];
                    }
                } else {
                    const int64_t s0 = (int64_t)k[i + j] * F;
                    const float a1 = a[i + j], a0 = 1.0f - a1;
                    for (int c = 0; c < 8; ++c) {
                        const float *row = tab + (int64_t)cells.row[c][j] * row_len + s0;
                        dot[c] = 0.0f;
                        for (int32_t f = 0; f < F; ++f) dot[c] += go[f] * (a0 * row[f] + a1 * row[F + f]);
                    }
                }
                const float t[3] = {cells.t[0][j], cells.t[1][j], cells.t[2][j]};
                add_input_grad(t, dot, res[l], gx[j]);
            }
        }
        for (int64_t j = 0; j < m; ++j)
            for (int d = 0; d < 3; ++d) grad_x[3 * (i + j) + d] = gx[j][d];
    }
}

void hg_backward_tables_sliced(const float *x, const int32_t *k, const float *a, int64_t n,
                               int32_t L, int32_t F, int32_t K, const int32_t *res,
                               const int64_t *tsize, const int64_t *grads, const float *grad_out,
                               int32_t nthreads) {
    backward_tables(x, k, a, n, L, F, K, res, tsize, grads, grad_out, nthreads);
}

void hg_backward_input_sliced(const float *x, const int32_t *k, const float *a, int64_t n,
                              int32_t L, int32_t F, int32_t K, const int32_t *res,
                              const int64_t *tsize, const int64_t *tables, const float *grad_out,
                              float *grad_x, int32_t nthreads) {
    backward_input(x, k, a, n, L, F, K, res, tsize, tables, grad_out, grad_x, nthreads);
}
