/* The monotonic rational-quadratic spline of flowsweep/model/spline.py, fused: the forward map
 * and its log-determinant, and the backward pass by hand, each in one pass over the elements.
 *
 * The reference (rational_quadratic_spline, differentiated by autograd) runs some forty
 * tensor operations, each reading and writing [elements, bins] arrays; here every element's
 * softmax, knots, bin, spline and gradient stay in registers, LANES elements at a time (one
 * vector per bin quantity). Only the forward direction is here (data to latent of a
 * normalizing flow, the training direction); the inverse stays on the reference.
 *
 * Shapes (C-contiguous float32), n elements, B bins, P = 3B - 1:
 *   x     [n]      inputs
 *   phi   [n, P]   per element: B unnormalized widths, B heights, B - 1 inner derivatives
 *   y     [n]      out: the spline of x (x itself outside [-bound, bound])
 *   lad   [n]      out: log|dy/dx| (0 outside)
 *   gy, glad [n]   in (backward): the loss's gradient with respect to y and lad
 *   gx [n], gphi [n, P]  out (backward): with respect to x and phi
 * Elements are independent: an element's numbers do not depend on n or on the others.
 *
 * The backward pass recomputes the forward one (cheaper than storing [n, bins] arrays) and
 * applies the chain rule through the bin's rational-quadratic (Durkan et al. 2019, eqs. 4 and
 * 5), the cumulative sums that place the knots, the softmax of the widths and heights and the
 * softplus of the derivatives.
 */
#include "vector_math.h"

#define MAX_BINS 64

/* Exported so the caller knows which bin counts this kernel takes. */
int rq_spline_max_bins(void) { return MAX_BINS; }

typedef struct {
    vf x, xin;
    vi inside, bin;
    vf pw[MAX_BINS], ph[MAX_BINS];             /* softmax shares of the widths, heights */
    vf sig[MAX_BINS];                          /* sigmoid of the inner derivatives' arguments */
    vf x0, y0, w, h, d0, d1, theta, s, q, den, num_a, slope_t;
} Spline;

/* Lanes l < count of elements e0 + l, transposed into one vector per quantity; the rest 0. */
static inline void load(long e0, int count, int P, const float *x, const float *phi, vf *vx, vf *vphi) {
    *vx = splat(0.0f);
    for (int j = 0; j < P; j++) vphi[j] = splat(0.0f);
    for (int l = 0; l < count; l++) {
        (*vx)[l] = x[e0 + l];
        const float *row = phi + (e0 + l) * P;
        for (int j = 0; j < P; j++) vphi[j][l] = row[j];
    }
}

/* Softmax shares p of u[0..B), and knots c[0..B] = -bound, ..., bound placed as the reference places
 * them: (min + (1 - min B) p) summed up, times 2 bound, minus bound; the ends exactly at +-bound. */
static inline void knots(int B, float bound, float minimum, const vf *u, vf *p, vf *c) {
    vf top = u[0];
    for (int j = 1; j < B; j++) top = vsel(u[j] > top, u[j], top);
    vf total = splat(0.0f);
    for (int j = 0; j < B; j++) {
        p[j] = vexp(u[j] - top);
        total += p[j];
    }
    vf sum = splat(0.0f);
    c[0] = splat(-bound);
    for (int j = 0; j < B; j++) {
        p[j] = p[j] / total;
        if (j < B - 1) {
            sum += splat(minimum) + splat(1.0f - minimum * B) * p[j];
            c[j + 1] = sum * splat(2.0f * bound) - splat(bound);
        }
    }
    c[B] = splat(bound);
}

/* The spline's constants, from flowsweep/model/spline.py (their one home). */
typedef struct {
    int bins;
    float bound, min_share, min_derivative; /* MIN_BIN_WIDTH = MIN_BIN_HEIGHT, MIN_DERIVATIVE */
    float offset;                           /* DERIVATIVE_OFFSET: softplus(offset) + MIN_DERIVATIVE = 1 */
} Constants;

/* The forward quantities of one block: knots, the bin of every element and its spline terms. */
static inline void evaluate(const Constants *K, vf x, const vf *phi, Spline *S) {
    const int B = K->bins;
    const float bound = K->bound;
    vf cx[MAX_BINS + 1], cy[MAX_BINS + 1], dv[MAX_BINS + 1];
    S->x = x;
    S->inside = (x >= splat(-bound)) & (x <= splat(bound));
    S->xin = vsel(x < splat(-bound), splat(-bound), vsel(x > splat(bound), splat(bound), x));
    knots(B, bound, K->min_share, phi, S->pw, cx);
    knots(B, bound, K->min_share, phi + B, S->ph, cy);
    dv[0] = dv[B] = splat(1.0f);
    for (int i = 1; i < B; i++) {
        vf v = phi[2 * B + i - 1] + splat(K->offset);
        const vi positive = v > splat(0.0f);
        vf a = vsel(positive, v, -v);           /* |v| */
        vf e = vexp(-a);                        /* exp(-|v|) in (0, 1] */
        dv[i] = splat(K->min_derivative) + vsel(positive, v, splat(0.0f)) + vlog1p(e);
        vf r = splat(1.0f) / (splat(1.0f) + e); /* sigmoid(|v|) */
        S->sig[i] = vsel(positive, r, e * r);
    }
    vi bin = (vi){};
    for (int i = 1; i < B; i++) bin -= S->xin >= cx[i]; /* a true comparison is -1 */
    S->bin = bin;
    vf x0 = cx[0], x1 = cx[1], y0 = cy[0], y1 = cy[1], d0 = dv[0], d1 = dv[1];
    for (int i = 1; i < B; i++) {
        const vi here = bin == i;
        x0 = vsel(here, cx[i], x0), x1 = vsel(here, cx[i + 1], x1);
        y0 = vsel(here, cy[i], y0), y1 = vsel(here, cy[i + 1], y1);
        d0 = vsel(here, dv[i], d0), d1 = vsel(here, dv[i + 1], d1);
    }
    S->x0 = x0, S->y0 = y0, S->w = x1 - x0, S->h = y1 - y0, S->d0 = d0, S->d1 = d1;
    S->s = S->h / S->w;
    S->theta = (S->xin - x0) / S->w;
    const vf one = splat(1.0f), t = S->theta, u = one - t;
    S->q = t * u;
    S->den = S->s + (d0 + d1 - splat(2.0f) * S->s) * S->q;
    S->num_a = S->s * t * t + d0 * S->q;
    S->slope_t = d1 * t * t + splat(2.0f) * S->s * S->q + d0 * u * u;
}

/* The outputs of elements [e0, e1). */
int rq_spline_forward(long e0, long e1, const Constants *K, const float *x, const float *phi, float *y,
                      float *lad) {
    const int P = 3 * K->bins - 1;
    vf vphi[3 * MAX_BINS], vx;
    Spline S;
    for (long e = e0; e < e1; e += LANES) {
        const int count = e1 - e < LANES ? (int)(e1 - e) : LANES;
        load(e, count, P, x, phi, &vx, vphi);
        evaluate(K, vx, vphi, &S);
        vf out = vsel(S.inside, S.y0 + S.h * S.num_a / S.den, vx);
        vf log_slope = vlog(S.s * S.s * S.slope_t) - splat(2.0f) * vlog(S.den);
        vf out_lad = vsel(S.inside, log_slope, splat(0.0f));
        for (int l = 0; l < count; l++) y[e + l] = out[l], lad[e + l] = out_lad[l];
    }
    return 0;
}

/* The gradients of elements [e0, e1). */
int rq_spline_backward(long e0, long e1, const Constants *K, const float *x, const float *phi, const float *gy,
                       const float *glad, float *gx, float *gphi) {
    const int B = K->bins, P = 3 * B - 1;
    const float bound = K->bound;
    vf vphi[3 * MAX_BINS], vx, grad[3 * MAX_BINS];
    Spline S;
    for (long e = e0; e < e1; e += LANES) {
        const int count = e1 - e < LANES ? (int)(e1 - e) : LANES;
        load(e, count, P, x, phi, &vx, vphi);
        evaluate(K, vx, vphi, &S);
        vf g_y = splat(0.0f), g_l = splat(0.0f);
        for (int l = 0; l < count; l++) g_y[l] = gy[e + l], g_l[l] = glad[e + l];
        const vf one = splat(1.0f), two = splat(2.0f);
        const vf t = S.theta, s = S.s, H = S.h, W = S.w, d0 = S.d0, d1 = S.d1, q = S.q, den = S.den;
        const vf A = S.num_a, T = S.slope_t, curv = d0 + d1 - two * s, dq = one - two * t;
        const vf h_den2 = H / (den * den);
        /* y = y0 + H A / den;  lad = log(s^2 T) - 2 log(den)  (theta, s, H, d0, d1 independent) */
        const vf g_theta = g_y * h_den2 * ((two * s * t + d0 * dq) * den - A * curv * dq) +
                           g_l * ((two * d1 * t + two * s * dq - two * d0 * (one - t)) / T - two * curv * dq / den);
        const vf g_s = g_y * h_den2 * (t * t * den - A * (one - two * q)) +
                       g_l * (two / s + two * q / T - two * (one - two * q) / den);
        const vf g_d0 = g_y * h_den2 * q * (den - A) + g_l * ((one - t) * (one - t) / T - two * q / den);
        const vf g_d1 = -g_y * h_den2 * A * q + g_l * (t * t / T - two * q / den);
        /* theta = (xin - x0) / W, s = H / W, W = x1 - x0, H = y1 - y0 */
        const vf g_w = -(g_theta * t + g_s * s) / W;
        const vf g_h = g_y * A / den + g_s / W;
        const vf g_x0 = -g_theta / W - g_w, g_x1 = g_w, g_y0 = g_y - g_h, g_y1 = g_h;
        const vi in = S.inside;
        vf out_gx = vsel(in, g_theta / W, g_y);
        /* knots c_i (1 <= i < B) = 2 bound sum_{j<i} share_j - bound: share j gets the suffix sum */
        vf suffix_x = splat(0.0f), suffix_y = splat(0.0f);
        vf gsx[MAX_BINS], gsy[MAX_BINS];
        gsx[B - 1] = gsy[B - 1] = splat(0.0f);
        for (int i = B - 1; i >= 1; i--) {
            const vi here = S.bin == i, after = S.bin == i - 1;
            suffix_x += vsel(here, g_x0, splat(0.0f)) + vsel(after, g_x1, splat(0.0f));
            suffix_y += vsel(here, g_y0, splat(0.0f)) + vsel(after, g_y1, splat(0.0f));
            gsx[i - 1] = suffix_x * splat(2.0f * bound);
            gsy[i - 1] = suffix_y * splat(2.0f * bound);
            const vf g_d = vsel(here, g_d0, splat(0.0f)) + vsel(after, g_d1, splat(0.0f));
            grad[2 * B + i - 1] = vsel(in, g_d * S.sig[i], splat(0.0f));
        }
        /* share_j = min + (1 - min B) p_j, p the softmax: g_u = p (g_p - sum p g_p) */
        vf dot_x = splat(0.0f), dot_y = splat(0.0f);
        for (int j = 0; j < B; j++) dot_x += S.pw[j] * gsx[j], dot_y += S.ph[j] * gsy[j];
        const vf scale = splat(1.0f - K->min_share * B);
        for (int j = 0; j < B; j++) {
            grad[j] = vsel(in, scale * S.pw[j] * (gsx[j] - dot_x), splat(0.0f));
            grad[B + j] = vsel(in, scale * S.ph[j] * (gsy[j] - dot_y), splat(0.0f));
        }
        for (int l = 0; l < count; l++) {
            gx[e + l] = out_gx[l];
            float *row = gphi + (e + l) * P;
            for (int j = 0; j < P; j++) row[j] = grad[j][l];
        }
    }
    return 0;
}
