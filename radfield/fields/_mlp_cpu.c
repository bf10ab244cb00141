/* Bias-free ReLU MLP layers, float32 CPU kernel: one layer's product, for the forward or the
 * backward's input gradient (mlp_dense), and its weight gradient (mlp_weight_grad, which
 * radfield/fields/mlp.py calls where LANES is 16: with AVX alone torch.mm is as fast). Compiled
 * at first use by radfield/fields/mlp.py and called through ctypes; tested against
 * torch.nn.Linear's autograd.
 *
 *   mlp_dense: out[j, o] = sum_k in[j, k] M[k, o], then max(., 0) (relu) or times
 *              [mask[j, o] > 0] (mask: the ReLU's backward, given the ReLU's output); M is
 *              (din, dout) row-major: the transposed weight for the forward, the weight itself for
 *              the input gradient.
 *
 * dout is a multiple of LANES, the floats of a vector register (16 with AVX-512, else 8; the
 * caller pads with zeros and asks mlp_lanes): a row's dout outputs are dout / LANES vectors held
 * in registers while k runs over din, so each weight row is loaded once per group of rows of
 * samples (as many rows as keep the registers full: 6-12 with AVX-512's 32, 1-4 with AVX's 16).
 * Rows are split between threads in blocks. The sums run in another order than PyTorch's (and
 * with fused multiply-adds), so results agree to float32 rounding, not bit for bit.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define LANES 16 /* floats in a vector register: AVX-512 */
#else
#define LANES 8 /* AVX (and elsewhere, pairs of 128-bit vectors) */
#endif
typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef float vfu __attribute__((vector_size(4 * LANES), aligned(4))); /* an unaligned load or store */

#define ROWS_PER_BLOCK 240 /* a multiple of every group of rows below */
#define MAX_WIDTH 64 /* din and dout at most (radfield/fields/mlp.py's MAX_WIDTH) */

static inline vf splat(float a) { return a - (vf){0}; }

static inline vf finish(vf r, int relu, const float *mask) {
    const vf zero = splat(0.0f);
    if (relu) r = (vf)((vi)r & (r > zero));
    if (mask) r = (vf)((vi)r & (*(const vfu *)mask > zero));
    return r;
}

/* R rows of `in` at a time, NV output vectors each: R * NV accumulators in registers. The last
 * m % R rows go through the same code from zero-padded copies, so a row's result never depends
 * on where it sits in the batch. */
#define ROW_KERNEL(R, NV)                                                                           \
    static inline void group_##R##_##NV(const float *in, int din, const float *M, float *out,      \
                                        int relu, const float *mask) {                             \
        const int64_t dout = LANES * NV;                                                               \
        vf acc[R][NV];                                                                             \
        for (int r = 0; r < R; ++r)                                                                \
            for (int v = 0; v < NV; ++v) acc[r][v] = splat(0.0f);                                  \
        for (int k = 0; k < din; ++k) {                                                            \
            const vfu *w = (const vfu *)(M + (int64_t)k * dout);                                   \
            for (int r = 0; r < R; ++r) {                                                          \
                const vf b = splat(in[r * din + k]);                                               \
                for (int v = 0; v < NV; ++v) acc[r][v] += b * w[v];                                \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < R; ++r)                                                                \
            for (int v = 0; v < NV; ++v) {                                                         \
                const int64_t at = r * dout + LANES * v;                                               \
                *(vfu *)(out + at) = finish(acc[r][v], relu, mask ? mask + at : NULL);             \
            }                                                                                      \
    }                                                                                              \
    static void rows_##R##_##NV(const float *in, int64_t m, int din, const float *M, float *out,   \
                                int relu, const float *mask) {                                     \
        const int64_t dout = LANES * NV;                                                               \
        int64_t j = 0;                                                                             \
        for (; j + R <= m; j += R)                                                                 \
            group_##R##_##NV(in + j * din, din, M, out + j * dout, relu, mask ? mask + j * dout : NULL); \
        if (j < m) {                                                                               \
            float tin[R * MAX_WIDTH] = {0}, tmask[R * LANES * NV], tout[R * LANES * NV];                   \
            memset(tmask, 0, sizeof tmask);                                                        \
            memcpy(tin, in + j * din, (size_t)(m - j) * din * sizeof(float));                      \
            if (mask) memcpy(tmask, mask + j * dout, (size_t)(m - j) * dout * sizeof(float));      \
            group_##R##_##NV(tin, din, M, tout, relu, mask ? tmask : NULL);                        \
            memcpy(out + j * dout, tout, (size_t)(m - j) * dout * sizeof(float));                  \
        }                                                                                          \
    }

#if LANES == 16
ROW_KERNEL(12, 1)
ROW_KERNEL(8, 2)
ROW_KERNEL(6, 3)
ROW_KERNEL(6, 4)
typedef void (*RowKernel)(const float *, int64_t, int, const float *, float *, int, const float *);
static const RowKernel ROW_KERNELS[5] = {NULL, rows_12_1, rows_8_2, rows_6_3, rows_6_4};
#else
ROW_KERNEL(4, 1)
ROW_KERNEL(4, 2)
ROW_KERNEL(2, 3)
ROW_KERNEL(2, 4)
ROW_KERNEL(1, 5)
ROW_KERNEL(1, 6)
ROW_KERNEL(1, 7)
ROW_KERNEL(1, 8)
typedef void (*RowKernel)(const float *, int64_t, int, const float *, float *, int, const float *);
static const RowKernel ROW_KERNELS[9] = {NULL,      rows_4_1, rows_4_2, rows_2_3, rows_2_4,
                                         rows_1_5, rows_1_6, rows_1_7, rows_1_8};
#endif

/* The vector width in floats: every dout must be a multiple of it (the caller pads). */
void mlp_lanes(int32_t *lanes) { *lanes = LANES; }

/* out (n, dout) = in (n, din) @ M (din, dout), then the ReLU (relu != 0) or the mask (mask != NULL,
 * (n, dout)). dout a multiple of LANES, at most 64. */
void mlp_dense(const float *in, int64_t n, int32_t din, const float *M, int32_t dout, float *out,
               int32_t relu, const float *mask, int32_t nthreads) {
    const RowKernel kernel = ROW_KERNELS[dout / LANES];
    const int64_t nblocks = (n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t i = b * ROWS_PER_BLOCK, m = n - i < ROWS_PER_BLOCK ? n - i : ROWS_PER_BLOCK;
        kernel(in + i * din, m, din, M, out + i * dout, relu, mask ? mask + i * dout : NULL);
    }
}

/* Weight gradient of a layer: out (dout, din) = g^T a = sum_j g[j, :]^T a[j, :], for g (n, dout)
 * (the gradient at the layer's output) and a (n, din) (its input); dout and din multiples of
 * LANES, din at most 64. Each thread sums its rows into its own (dout, din) partial sum, a block
 * of GRAD_BLOCK_ROWS rows at a time (in cache, O output rows by din / LANES vectors summed in
 * registers from zero, then added to the partial sum: a two-level sum, whose rounding error grows
 * with the block and the number of blocks, not with n); the partial sums are then added up in
 * thread order, so the result does not depend on timing. */
#define GRAD_BLOCK_ROWS 128
#define GRAD_TILE(O, NV)                                                                            \
    static void grad_tile_##O##_##NV(const float *g, const float *a, int64_t m, int dout,           \
                                     float *part) {                                                 \
        const int din = LANES * NV;                                                                 \
        for (int o0 = 0; o0 < dout; o0 += O) {                                                      \
            vf acc[O][NV];                                                                          \
            for (int o = 0; o < O; ++o)                                                             \
                for (int v = 0; v < NV; ++v) acc[o][v] = splat(0.0f);                               \
            for (int64_t j = 0; j < m; ++j) {                                                       \
                vf x[NV];                                                                           \
                for (int v = 0; v < NV; ++v) x[v] = *(const vfu *)(a + j * din + LANES * v);        \
                for (int o = 0; o < O; ++o) {                                                       \
                    const vf b = splat(g[j * dout + o0 + o]);                                       \
                    for (int v = 0; v < NV; ++v) acc[o][v] += b * x[v];                             \
                }                                                                                   \
            }                                                                                       \
            for (int o = 0; o < O; ++o)                                                             \
                for (int v = 0; v < NV; ++v) *(vfu *)(part + (o0 + o) * din + LANES * v) += acc[o][v]; \
        }                                                                                           \
    }

typedef void (*GradTile)(const float *, const float *, int64_t, int, float *);
#if LANES == 16
GRAD_TILE(16, 1)
GRAD_TILE(8, 2)
GRAD_TILE(4, 3)
GRAD_TILE(4, 4)
static const GradTile GRAD_TILES[5] = {NULL, grad_tile_16_1, grad_tile_8_2, grad_tile_4_3, grad_tile_4_4};
#else
GRAD_TILE(8, 1)
GRAD_TILE(4, 2)
GRAD_TILE(2, 3)
GRAD_TILE(2, 4)
GRAD_TILE(1, 5)
GRAD_TILE(1, 6)
GRAD_TILE(1, 7)
GRAD_TILE(1, 8)
static const GradTile GRAD_TILES[9] = {NULL,           grad_tile_8_1, grad_tile_4_2, grad_tile_2_3, grad_tile_2_4,
                                       grad_tile_1_5, grad_tile_1_6, grad_tile_1_7, grad_tile_1_8};
#endif

void mlp_weight_grad(const float *g, const float *a, int64_t n, int32_t dout, int32_t din, float *out,
                     float *partials, int32_t nthreads) {
    const GradTile tile = GRAD_TILES[din / LANES];
    const int64_t size = (int64_t)dout * din;
    memset(partials, 0, (size_t)nthreads * size * sizeof(float));
#pragma omp parallel num_threads(nthreads)
    {
        int t = 0, nt = 1;
#ifdef _OPENMP
        t = omp_get_thread_num();
        nt = omp_get_num_threads();
#endif
        const int64_t per = (n + nt - 1) / nt, lo = t * per, hi = lo + per < n ? lo + per : n;
        for (int64_t i = lo; i < hi; i += GRAD_BLOCK_ROWS) {
            const int64_t m = hi - i < GRAD_BLOCK_ROWS ? hi - i : GRAD_BLOCK_ROWS;
            tile(g + i * dout, a + i * din, m, dout, partials + t * size);
        }
    }
    for (int64_t k = 0; k < size; ++k) {
        float s = partials[k];
        for (int t = 1; t < nthreads; ++t) s += partials[t * size + k];
        out[k] = s;
    }
}
