/* Real spherical harmonics of degree 0..3 at unit directions, float32 CPU kernel (OpenMP).
 *
 * Compiled at first use by radfield/native.py, called by sh_encode (radfield/fields/sh.py) for
 * float32 CPU directions that need no gradient; the same polynomials and constants as sh_encode
 * (which documents them), evaluated in float32 (to within float32 rounding of sh_encode's).
 * Layouts: dirs (n, 3), out (n, 16), both contiguous.
 */
#include <stdint.h>

void sh_encode_deg3(const float *dirs, int64_t n, float *out, int n_threads) {
    const float c0 = 0.28209479177387814f, c1 = 0.4886025119029199f;
    const float c20 = 1.0925484305920792f, c21 = 0.94617469575755997f, c22 = 0.31539156525251999f,
                c23 = 0.54627421529603959f;
    const float c30 = 0.59004358992664352f, c31 = 2.8906114426405538f, c32 = 0.45704579946446572f,
                c33 = 0.3731763325901154f, c34 = 1.4453057213202769f;
#pragma omp parallel for num_threads(n_threads) schedule(static) if (n > 4096)
    for (int64_t i = 0; i < n; i++) {
        const float x = dirs[3 * i], y = dirs[3 * i + 1], z = dirs[3 * i + 2];
        const float xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
        float *o = out + 16 * i;
        o[0] = c0;
        o[1] = -c1 * y;
        o[2] = c1 * z;
        o[3] = -c1 * x;
        o[4] = c20 * xy;
        o[5] = -c20 * yz;
        o[6] = c21 * zz - c22;
        o[7] = -c20 * xz;
        o[8] = c23 * (xx - yy);
        o[9] = c30 * y * (-3.0f * xx + yy);
        o[10] = c31 * xy * z;
        o[11] = c32 * y * (1.0f - 5.0f * zz);
        o[12] = c33 * z * (5.0f * zz - 3.0f);
        o[13] = c32 * x * (1.0f - 5.0f * zz);
        o[14] = c34 * z * (xx - yy);
        o[15] = c30 * x * (-xx + 3.0f * yy);
    }
}
