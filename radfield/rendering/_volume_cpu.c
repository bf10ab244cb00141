/* Packed volume rendering, forward and backward, float32 CPU kernels (OpenMP over rays): the CPU
 * path of radfield/rendering/volume.py's render, compiled at first use by radfield/native.py.
 * The same equations as the Triton kernels of volume_triton.py (their module docstring):
 *
 *   tau_i = sigma_i (t1_i - t0_i),  alpha_i = 1 - exp(-tau_i)  (1 at a ray's last sample if opaque_last)
 *   T_i   = exp(-sum_{k<i} min(tau_k, 1e3)),  w_i = T_i alpha_i
 *   per ray: rgb = sum_i w_i c_i,  opacity = sum_i w_i,  depth = sum_i w_i (t0_i + t1_i) / 2
 *
 *   backward, G_i = gw_i + g_rgb . c_i + g_opacity + g_depth t_mid_i:
 *   d c_i = w_i g_rgb,  d tau_i = G_i T_i exp(-tau_i) [not forced opaque] - [tau_i <= 1e3] sum_{j>i} G_j w_j,
 *   d sigma_i = d tau_i (t1_i - t0_i)
 *
 * Each ray's running sums (optical depth, colour, the gradient's sums) are kept in double, so a
 * ray of any length is as exact as the PyTorch path's float64 running sum; the per-sample values
 * are float32 as there. Layouts: rgb (n, C) contiguous, out_rgb and g_rgb (n_rays, C); starts and
 * counts (n_rays,) int64, each ray's samples contiguous.
 */
#include <math.h>
#include <stdint.h>

#define TAU_CAP 1e3f
#define MAX_C 16 /* channels summed in registers; more take the PyTorch path */

void vr_forward(const float *sigma, const float *rgb, const float *t0, const float *t1,
                const int64_t *starts, const int64_t *counts, int64_t n_rays, int32_t C, int32_t opaque_last,
                float *w, float *out_rgb, float *opacity, float *depth, int32_t n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rays; r++) {
        const int64_t s = starts[r], n = counts[r];
        double optical = 0.0, acc_o = 0.0, acc_d = 0.0, acc[MAX_C] = {0.0};
        for (int64_t i = s; i < s + n; i++) {
            const float tau = sigma[i] * (t1[i] - t0[i]);
            const float alpha = (opaque_last && i == s + n - 1) ? 1.0f : 1.0f - expf(-tau);
            const float wi = expf(-(float)optical) * alpha;
            w[i] = wi;
            optical += tau > TAU_CAP ? TAU_CAP : tau;
            acc_o += wi;
            acc_d += (double)wi * (double)((t0[i] + t1[i]) * 0.5f);
            for (int32_t c = 0; c < C; c++) acc[c] += (double)wi * (double)rgb[i * C + c];
        }
        opacity[r] = (float)acc_o;
        depth[r] = (float)acc_d;
        for (int32_t c = 0; c < C; c++) out_rgb[r * C + c] = (float)acc[c];
    }
}

static inline double whole_gradient(const float *rgb, const float *gw, const float *g_rgb, double g_o,
                                    double g_d, const float *t0, const float *t1, int64_t i, int32_t C) {
    double g = (double)gw[i] + g_o + g_d * (double)((t0[i] + t1[i]) * 0.5f);
    for (int32_t c = 0; c < C; c++) g += (double)g_rgb[c] * (double)rgb[i * C + c];
    return g;
}

void vr_backward(const float *sigma, const float *rgb, const float *t0, const float *t1,
                 const int64_t *starts, const int64_t *counts, int64_t n_rays, int32_t C, int32_t opaque_last,
                 const float *w, const float *g_w, const float *g_rgb, const float *g_opacity,
                 const float *g_depth, float *grad_sigma, float *grad_rgb, int32_t n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t r = 0; r < n_rays; r++) {
        const int64_t s = starts[r], n = counts[r];
        const float *gc = g_rgb + r * C;
        const double g_o = g_opacity[r], g_d = g_depth[r];
        double total = 0.0;
        for (int64_t i = s; i < s + n; i++)
            total += whole_gradient(rgb, g_w, gc, g_o, g_d, t0, t1, i, C) * (double)w[i];
        double optical = 0.0, seen = 0.0;
        for (int64_t i = s; i < s + n; i++) {
            const double g = whole_gradient(rgb, g_w, gc, g_o, g_d, t0, t1, i, C);
            const float delta = t1[i] - t0[i];
            const float tau = sigma[i] * delta;
            seen += g * (double)w[i];
            const double behind = total - seen; /* sum over j > i */
            const int forced = opaque_last && i == s + n - 1;
            const double own = forced ? 0.0 : (double)expf(-(float)optical) * (double)expf(-tau);
            const double g_tau = g * own - (tau <= TAU_CAP ? behind : 0.0);
            grad_sigma[i] = (float)(g_tau * (double)delta);
            for (int32_t c = 0; c < C; c++) grad_rgb[i * C + c] = w[i] * gc[c];
            optical += tau > TAU_CAP ? TAU_CAP : tau;
        }
    }
}
