/* Occupancy-grid ray marching, float32 CPU kernel (OpenMP over rays).
 *
 * Compiled at first use by radfield/native.py, called by OccupancyGrid.sample
 * (radfield/samplers/occupancy.py). Keeps exactly the steps the PyTorch march keeps, with its
 * arithmetic operation for operation (compile with -ffp-contract=off): step j < n_steps of ray r
 * is kept when its midpoint lies before t_far[r] and its point's cell is occupied.
 *
 *   midpoint, dt of step j (StepSchedule.at; j a float):
 *     phase A, j < n_a:          dt = dt_min,       mid = anchor + (j + offset) * dt_min
 *     phase B, j < n_a + n_b:    s  = t_a * growth[clamp(j - n_a, 0, n_b)],
 *                                dt = cone * s,     mid = s + dt / 2
 *     phase C:                   s  = t_b + max(j - (n_a + n_b), 0) * dt_max,
 *                                dt = dt_max,       mid = s + dt / 2
 *   point  x = o + mid * d                                   per coordinate
 *   cascade k = number of boxes 0 .. C-2 not containing x    (lo <= x <= hi on every axis)
 *   cell   i_a = clamp(trunc((x_a - lo_a) / size_a * res), 0, res - 1)
 *          index = k res^3 + (i_0 res + i_1) res + i_2
 *
 * Layouts: o, d (n, 3); sched (7, n) rows offset, anchor, t_0, n_a, t_a, n_b, t_b (t_0 unused);
 * boxes (C, 6) lo then hi, sizes (C, 3); occupied (C res^3) bytes.
 * The midpoints only grow with j, so a ray's march stops at its first midpoint past t_far.
 * The count pass notes each ray's first and last kept step, so the fill pass walks only
 * between them. (Jumping over empty blocks of 4^3 cells, as Instant-NGP skips empty cells,
 * was tried: at 64^3 cells and 251 steps a diagonal it saved no time.)
 */
#include <stddef.h>
#include <stdint.h>

typedef struct {
    const float *o, *d, *sched, *t_far, *growth, *boxes, *sizes;
    const uint8_t *occupied;
    int64_t n_rays, n_steps;
    float dt_min, dt_max, cone;
    int n_cascades, res;
} March;

static inline void step_at(const March *m, int64_t r, float j, float *mid, float *dt) {
    const int64_t n = m->n_rays;
    const float offset = m->sched[r], anchor = m->sched[n + r];
    const float mid_a = anchor + (j + offset) * m->dt_min;
    if (m->cone == 0.0f) {
        *mid = mid_a;
        *dt = m->dt_min;
        return;
    }
    const float n_a = m->sched[3 * n + r], t_a = m->sched[4 * n + r];
    const float n_b = m->sched[5 * n + r], t_b = m->sched[6 * n + r];
    const float n_ab = n_a + n_b;
    if (j < n_a) {
        *mid = mid_a;
        *dt = m->dt_min;
    } else if (j < n_ab) {
        float k = j - n_a;
        k = k < 0.0f ? 0.0f : k;
        k = k < n_b ? k : n_b;
        const float s = t_a * m->growth[(int64_t)k];
        *dt = m->cone * s;
        *mid = s + *dt / 2.0f;
    } else {
        float k = j - n_ab;
        k = k < 0.0f ? 0.0f : k;
        const float s = t_b + k * m->dt_max;
        *dt = m->dt_max;
        *mid = s + *dt / 2.0f;
    }
}

/* The flat index of x's cell, in the finest cascade containing x. */
static inline int64_t cell_of(const March *m, const float x[3]) {
    int k = 0;
    for (int c = 0; c < m->n_cascades - 1; c++) {
        const float *b = m->boxes + 6 * c;
        int inside = 1;
        for (int a = 0; a < 3; a++) inside &= (x[a] >= b[a]) & (x[a] <= b[3 + a]);
        k += !inside;
    }
    const float *lo = m->boxes + 6 * k, *size = m->sizes + 3 * k;
    const int64_t r = m->res;
    int64_t i[3];
    for (int a = 0; a < 3; a++) {
        const float v = (x[a] - lo[a]) / size[a] * (float)r;
        i[a] = v > 0.0f ? (v < (float)r ? (int64_t)v : r - 1) : 0;  /* NaN -> 0 */
    }
    return k * r * r * r + (i[0] * r + i[1]) * r + i[2];
}

/* One ray's march over steps j0 .. j1 - 1. With ray_out NULL, returns the number of kept steps
 * and their first and last j in span[0], span[1]; otherwise also writes them at ray_out[0..],
 * mid_out[0..], dt_out[0..]. */
static int64_t march_ray(const March *m, int64_t r, int64_t j0, int64_t j1, int64_t *span, int64_t *ray_out, float *mid_out, float *dt_out) {
    const float *o = m->o + 3 * r, *d = m->d + 3 * r;
    const float t_far = m->t_far[r];
    int64_t kept = 0;
    for (int64_t j = j0; j < j1; j++) {
        float mid, dt;
        step_at(m, r, (float)j, &mid, &dt);
        if (!(mid < t_far)) break;
        float x[3];
        for (int a = 0; a < 3; a++) {
            const float step = mid * d[a];
            x[a] = o[a] + step;
        }
        if (!m->occupied[cell_of(m, x)]) continue;
        if (span) {
            if (kept == 0) span[0] = j;
            span[1] = j;
        }
        if (ray_out) {
            ray_out[kept] = r;
            mid_out[kept] = mid;
            dt_out[kept] = dt;
        }
        kept++;
    }
    return kept;
}

/* counts[r]: the kept steps of ray r; spans[2 r], spans[2 r + 1]: the first and last of them. */
void occ_march_count(const float *o, const float *d, const float *sched, const float *t_far,
                     int64_t n_rays, int64_t n_steps, const float *growth, float dt_min, float dt_max,
                     float cone, const uint8_t *occupied, const float *boxes, const float *sizes,
                     int n_cascades, int res, int64_t *counts, int64_t *spans, int n_threads) {
    const March m = {o, d, sched, t_far, growth, boxes, sizes, occupied, n_rays, n_steps,
                     dt_min, dt_max, cone, n_cascades, res};
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256)
    for (int64_t r = 0; r < n_rays; r++)
        counts[r] = march_ray(&m, r, 0, n_steps, spans + 2 * r, NULL, NULL, NULL);
}

/* The kept steps, ray r's from starts[r] on: (ray index, midpoint, dt); the count
 * pass's counts and spans say where each ray's are. */
void occ_march_fill(const float *o, const float *d, const float *sched, const float *t_far,
                    int64_t n_rays, int64_t n_steps, const float *growth, float dt_min, float dt_max,
                    float cone, const uint8_t *occupied, const float *boxes, const float *sizes,
                    int n_cascades, int res, const int64_t *counts,
                    const int64_t *spans, const int64_t *starts, int64_t *ray_out,
                    float *mid_out, float *dt_out, int n_threads) {
    const March m = {o, d, sched, t_far, growth, boxes, sizes, occupied, n_rays, n_steps,
                     dt_min, dt_max, cone, n_cascades, res};
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 256)
    for (int64_t r = 0; r < n_rays; r++)
        if (counts[r] > 0)
            march_ray(&m, r, spans[2 * r], spans[2 * r + 1] + 1, NULL, ray_out + starts[r],
                      mid_out + starts[r], dt_out + starts[r]);
}
