/* One round of front-to-back compositing (early ray termination), float32 CPU kernel.
 *
 * Compiled at first use by radfield/native.py, called by render_samples_in_rounds
 * (radfield/rendering/pipeline.py), whose PyTorch code it replaces on the CPU. The round's
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
