/* Instant-NGP's Adam step for hash tables, float32 CPU kernel. Compiled at first use by
 * radfield/training/adam.py and called through ctypes; tested against that module's PyTorch
 * reference (`sparse_adam_reference`) and a float64 loop.
 *
 * Per entry i with gradient g != 0 (entries with g == 0 are left as they are: value, moments and
 * step count):
 *
 *   k_i = k_i + 1                                  the entry's own step count
 *   m_i = b1 m_i + a1 g,  v_i = b2 v_i + a2 g^2      (the caller's a1 = 1 - b1, a2 = 1 - b2)
 *   p_i = p_i - (lr / c1[k_i]) m_i / (sqrt(v_i) / c2s[k_i] + eps)
 *
 * with the caller's tables c1[k] = 1 - b1^k and c2s[k] = sqrt(1 - b2^k) (index 0 holds 1; an
 * entry with k_i beyond the tables uses their last element, where both are 1 in float32).
 * The step counts are floats (exact up to 2^24 steps), as the moments are.
 *
 * Entries are taken in chunks of CHUNK: a chunk whose gradients are all zero is skipped without
 * touching its values or moments; the others are updated lane by lane with selects, so that gcc
 * vectorises the loop.
 */
#include <math.h>
#include <stdint.h>

#define CHUNK 16

static inline void update_chunk(float *restrict p, const float *restrict g, float *restrict m,
                                float *restrict v, float *restrict k, int len, float lr, float b1,
                                float a1, float b2, float a2, float eps, const float *restrict c1,
                                const float *restrict c2s, int32_t last) {
    for (int j = 0; j < len; ++j) {
        const float gj = g[j];
        const float kj = k[j] + (gj != 0.0f ? 1.0f : 0.0f);
        int32_t at = (int32_t)kj;
        at = at < last ? at : last;
        const float mj = b1 * m[j] + a1 * gj;
        const float vj = b2 * v[j] + a2 * (gj * gj);
        const float step = (lr / c1[at]) * mj / (sqrtf(vj) / c2s[at] + eps);
        p[j] = gj != 0.0f ? p[j] - step : p[j];
        m[j] = gj != 0.0f ? mj : m[j];
        v[j] = gj != 0.0f ? vj : v[j];
        k[j] = kj;
    }
}

/* update_chunk on a whole chunk, and on the last, shorter one. Not inlined into the parallel loop:
 * their own restrict arguments (and the whole chunk's constant trip count) let gcc vectorise. */
__attribute__((noinline)) static void update_full(float *restrict p, const float *restrict g, float *restrict m,
                                                  float *restrict v, float *restrict k, float lr, float b1,
                                                  float a1, float b2, float a2, float eps,
                                                  const float *restrict c1, const float *restrict c2s,
                                                  int32_t last) {
    update_chunk(p, g, m, v, k, CHUNK, lr, b1, a1, b2, a2, eps, c1, c2s, last);
}

__attribute__((noinline)) static void update_tail(float *restrict p, const float *restrict g, float *restrict m,
                                                  float *restrict v, float *restrict k, int len, float lr,
                                                  float b1, float a1, float b2, float a2, float eps,
                                                  const float *restrict c1, const float *restrict c2s,
                                                  int32_t last) {
    update_chunk(p, g, m, v, k, len, lr, b1, a1, b2, a2, eps, c1, c2s, last);
}

/* One step over n_params tensors: p[t], g[t], m[t], v[t], k[t] are the addresses of tensor t's
 * contiguous float32 values, gradients, moments and step counts, size[t] its number of entries. */
void sparse_adam(int32_t n_params, const int64_t *p, const int64_t *g, const int64_t *m,
                 const int64_t *v, const int64_t *k, const int64_t *size, float lr, float b1,
                 float a1, float b2, float a2, float eps, const float *c1, const float *c2s,
                 int64_t n_table, int32_t nthreads) {
    for (int32_t t = 0; t < n_params; ++t) {
        float *pt = (float *)(intptr_t)p[t], *mt = (float *)(intptr_t)m[t];
        float *vt = (float *)(intptr_t)v[t], *kt = (float *)(intptr_t)k[t];
        const float *gt = (const float *)(intptr_t)g[t];
        const int64_t n = size[t], nchunks = (n + CHUNK - 1) / CHUNK;
        const int32_t last = (int32_t)(n_table - 1);
#pragma omp parallel for schedule(static) num_threads(nthreads)
        for (int64_t c = 0; c < nchunks; ++c) {
            const int64_t i = c * CHUNK, len = n - i < CHUNK ? n - i : CHUNK;
            int any = 0;
            for (int64_t j = 0; j < len; ++j) any |= gt[i + j] != 0.0f;
            if (!any) continue;
            if (len == CHUNK)
                update_full(pt + i, gt + i, mt + i, vt + i, kt + i, lr, b1, a1, b2, a2, eps, c1, c2s, last);
            else
                update_tail(pt + i, gt + i, mt + i, vt + i, kt + i, (int)len, lr, b1, a1, b2, a2, eps, c1, c2s, last);
        }
    }
}
