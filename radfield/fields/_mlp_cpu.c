/* Bias-free ReLU MLP layers, float32 CPU kernel: one layer's product, for the forward or the
 * backward's input gradient. Compiled at first use by radfield/fields/mlp.py and called through
 * ctypes; tested against torch.nn.Linear's autograd. (The weight gradient, a long sum over
 * samples, is torch.mm's: a kernel of ours ran it 2-5x slower.)
 *
 *   mlp_dense: out[j, o] = sum_k in[j, k] M[k, o], then max(., 0) (relu) or times
 *              [mask[j, o] > 0] (mask: the ReLU's backward, given the ReLU's output); M is
 *              (din, dout) row-major: the transposed weight for the forward, the weight itself for
 *              the input gradient.
 *
 * dout is a multiple of 8 (the caller pads with zeros): a row's dout outputs are dout / 8
 * AVX-sized vectors held in registers while k runs over din, so each weight row is loaded once
 * per 1, 2 or 4 rows of samples. Rows are split between threads in blocks. The sums run in
 * another order than PyTorch's (and with fused multiply-adds), so results agree to float32
 * rounding, not bit for bit.
 */
#include <stdint.h>
#include <string.h>

typedef float v8 __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8u __attribute__((vector_size(32), aligned(4))); /* an unaligned load or store */

#define ROWS_PER_BLOCK 256
#define MAX_WIDTH 64 /* din and dout at most (radfield/fields/mlp.py's MAX_WIDTH) */

static inline v8 splat(float a) { return (v8){a, a, a, a, a, a, a, a}; }

static inline v8 finish(v8 r, int relu, const float *mask) {
    const v8 zero = splat(0.0f);
    if (relu) r = (v8)((v8i)r & (r > zero));
    if (mask) r = (v8)((v8i)r & (*(const v8u *)mask > zero));
    return r;
}

/* R rows of `in` at a time, NV output vectors each: R * NV accumulators in registers. The last
 * m % R rows go through the same code from zero-padded copies, so a row's result never depends
 * on where it sits in the batch. */
#define ROW_KERNEL(R, NV)                                                                           \
    static inline void group_##R##_##NV(const float *in, int din, const float *M, float *out,      \
                                        int relu, const float *mask) {                             \
        const int64_t dout = 8 * NV;                                                               \
        v8 acc[R][NV];                                                                             \
        for (int r = 0; r < R; ++r)                                                                \
            for (int v = 0; v < NV; ++v) acc[r][v] = splat(0.0f);                                  \
        for (int k = 0; k < din; ++k) {                                                            \
            const v8u *w = (const v8u *)(M + (int64_t)k * dout);                                   \
            for (int r = 0; r < R; ++r) {                                                          \
                const v8 b = splat(in[r * din + k]);                                               \
                for (int v = 0; v < NV; ++v) acc[r][v] += b * w[v];                                \
            }                                                                                      \
        }                                                                                          \
        for (int r = 0; r < R; ++r)                                                                \
            for (int v = 0; v < NV; ++v) {                                                         \
                const int64_t at = r * dout + 8 * v;                                               \
                *(v8u *)(out + at) = finish(acc[r][v], relu, mask ? mask + at : NULL);             \
            }                                                                                      \
    }                                                                                              \
    static void rows_##R##_##NV(const float *in, int64_t m, int din, const float *M, float *out,   \
                                int relu, const float *mask) {                                     \
        const int64_t dout = 8 * NV;                                                               \
        int64_t j = 0;                                                                             \
        for (; j + R <= m; j += R)                                                                 \
            group_##R##_##NV(in + j * din, din, M, out + j * dout, relu, mask ? mask + j * dout : NULL); \
        if (j < m) {                                                                               \
            float tin[R * MAX_WIDTH] = {0}, tmask[R * 8 * NV], tout[R * 8 * NV];                   \
            memset(tmask, 0, sizeof tmask);                                                        \
            memcpy(tin, in + j * din, (size_t)(m - j) * din * sizeof(float));                      \
            if (mask) memcpy(tmask, mask + j * dout, (size_t)(m - j) * dout * sizeof(float));      \
            group_##R##_##NV(tin, din, M, tout, relu, mask ? tmask : NULL);                        \
            memcpy(out + j * dout, tout, (size_t)(m - j) * dout * sizeof(float));                  \
        }                                                                                          \
    }

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

/* out (n, dout) = in (n, din) @ M (din, dout), then the ReLU (relu != 0) or the mask (mask != NULL,
 * (n, dout)). dout in 8, 16, ..., 64. */
void mlp_dense(const float *in, int64_t n, int32_t din, const float *M, int32_t dout, float *out,
               int32_t relu, const float *mask, int32_t nthreads) {
    const RowKernel kernel = ROW_KERNELS[dout / 8];
    const int64_t nblocks = (n + ROWS_PER_BLOCK - 1) / ROWS_PER_BLOCK;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int64_t b = 0; b < nblocks; ++b) {
        const int64_t i = b * ROWS_PER_BLOCK, m = n - i < ROWS_PER_BLOCK ? n - i : ROWS_PER_BLOCK;
        kernel(in + i * din, m, din, M, out + i * dout, relu, mask ? mask + i * dout : NULL);
    }
}
