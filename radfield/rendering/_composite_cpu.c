/* Early ray termination's rounds, float32 CPU kernels, compiled at first use by
 * radfield/native.py; each replaces PyTorch code of radfield/rendering/pipeline.py on the CPU.
 *
 * composite_round: one round of render_samples_in_rounds's front-to-back compositing. The round's
 * samples are packed, each ray's consecutive and in order; per sample i of ray r = rays[i]:
 *
 *   T     = trans[r]                                  (the transmittance in front of it)
 *   tau   = min(sigma_i (t1_i - t0_i), 1e3)
 *   alpha = 1 if last[i] (an opaque last interval) else 1 - exp(-tau)
 *   w_i   = T alpha if T > eps else 0
 *   opacity[r] += w_i,  depth[r] += w_i (t0_i + t1_i) / 2,  trans[r] = T (1 - alpha)
 *
 * last may be NULL (no opaque last interval). Sequential: a round is a few hundred thousand
 * samples, a few ms.
 */
#include <math.h>
#include <stdint.h>

void composite_round(const float *sigma, const float *t0, const float *t1, const int64_t *rays,
                     const uint8_t *last, int64_t n, float eps, float *trans, float *opacity,
                     float *depth, float *w) {
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rays[i];
        const float t = trans[r];
        float tau = sigma[i] * (t1[i] - t0[i]);
        tau = tau > 1e3f ? 1e3f : tau;  /* NaN stays NaN, as in clamp */
        const float alpha = (last && last[i]) ? 1.0f : 1.0f - expf(-tau);
        const float wi = t > eps ? t * alpha : 0.0f;
        w[i] = wi;
        opacity[r] += wi;
        depth[r] += wi * ((t0[i] + t1[i]) / 2.0f);
        trans[r] = t * (1.0f - alpha);
    }
}

/* prune_round: one round of training's early-termination pass (prune_occluded in rounds).
 *
 * The round evaluated samples first .. first + size - 1 of each of the n_active rays active[a]
 * (those that exist: j < counts[r]), packed ray by ray in that order, with densities sigma.
 * Per such sample s = offsets[r] + j, in order along the ray:
 *
 *   tau         = min(sigma (t1 - t0), 1e3)           (lengths[s] = t1 - t0; NaN stays NaN)
 *   keep[s]     = expf(-(float) optical[r]) > eps     (the transmittance in front of it),
 *                 and tau is not NaN                  (as PyTorch's exclusive cumsum - tau)
 *   optical[r] += (double) tau
 *
 * Then the rays still active (transmittance above eps, samples left) are written over active's
 * first entries, and next_index gets the packed indices of the next round's block (samples
 * first + size .. first + 3 size - 1 of each, those that exist): sizes[0] = how many rays stay
 * active, sizes[1] = the block's length (next_index holds at least n_active * 2 size).
 */
void prune_round(const float *sigma, const float *lengths, const int64_t *offsets,
                 const int64_t *counts, int64_t *active, int64_t n_active, int64_t first,
                 int64_t size, double *optical, uint8_t *keep, float eps, int64_t *next_index,
                 int64_t *sizes) {
    int64_t i = 0, n_out = 0, m = 0;
    const int64_t next_first = first + size, next_end = first + 3 * size;
    for (int64_t a = 0; a < n_active; a++) {
        const int64_t r = active[a], count = counts[r], base = offsets[r];
        const int64_t end = first + size < count ? first + size : count;
        double od = optical[r];
        for (int64_t j = first; j < end; j++, i++) {
            const int64_t s = base + j;
            float tau = sigma[i] * lengths[s];
            tau = tau > 1e3f ? 1e3f : tau;
            keep[s] = expf(-(float)od) > eps && !isnan(tau);
            od += (double)tau;
        }
        optical[r] = od;
        if (expf(-(float)od) > eps && count > next_first) {
            active[n_out++] = r;
            const int64_t stop = next_end < count ? next_end : count;
            for (int64_t j = next_first; j < stop; j++) next_index[m++] = base + j;
        }
    }
    sizes[0] = n_out;
    sizes[1] = m;
}
