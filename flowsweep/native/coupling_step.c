/* One training step of K affine coupling flows: mean NLL per model and its gradient.
 *
 * The model of flowsweep/model/flow.py (the reference this kernel is tested against) for
 * the variants it covers: each layer the affine constant transform, then the coupling with
 * the single-layer tanh conditioner, data to latent; the constant transform as
 * x * exp(a) + c or, with `linear`, s * x + c. Where each parameter block lives in a
 * model's row comes from the caller (ParamLayout), never from here. Per model and per block of 8 samples (one AVX register per
 * feature) it runs the forward pass through all layers, keeps each layer's activations
 * in cache, and runs the backward pass straight away, so every intermediate is used while
 * it is still in registers or L1. No libm call in the sample loop: exp and tanh are
 * written with GCC vector extensions (exp only ever sees arguments <= 1, see below).
 *
 * Shapes (all C-contiguous, float32 unless noted):
 *   data   [n, d]      the training rows
 *   rows   [K, N]      int64: the rows of each model's minibatch (read in place, never gathered)
 *   theta  [K, P]      per model, at the caller's offsets: scale [L, d], shift [L, d],
 *                      weight [L, 2dm, m], bias [L, 2dm]
 *   perm   [K, L, d]   int64; layer l: conditioning features first (m), then transformed (dm)
 *   nll    [K]         out: mean negative log-likelihood over the N samples (nats)
 *   grad   [K, P]      out: its gradient
 * Models are independent: the result of model k does not depend on K or on the others.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define LANES 8

static inline v8f splat(float a) { return (v8f){a, a, a, a, a, a, a, a}; }

static inline float hsum(v8f a) {
    /* A fixed order, so results are bitwise reproducible. */
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

/* exp(x) for x <= 88 (Cephes' single-precision polynomial, ~1 ulp). NaN stays NaN:
 * the clamp below compares false for NaN and keeps x. Callers pass tanh outputs
 * (in [-1, 1]) or -2|h| (<= 0) only, so there is no overflow branch. */
static inline v8f vexp(v8f x) {
    const v8f lo = splat(-87.3f);
    v8i below = x < lo;
    x = (v8f)(((v8i)x & ~below) | ((v8i)lo & below));
    const v8f magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    v8f t = x * splat(1.44269504088896341f) + magic;
    v8i n = (v8i)t - (v8i)magic;
    v8f fn = t - magic;
    v8f r = x - fn * splat(0.693359375f) - fn * splat(-2.12194440e-4f);
    v8f p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    v8i scale = (n + 127) << 23;
    return p * (v8f)scale;
}

/* tanh(h) = sign(h) (1 - e) / (1 + e), e = exp(-2|h|). */
static inline v8f vtanh(v8f h) {
    const v8i sign_bit = {INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN, INT32_MIN};
    v8i bits = (v8i)h;
    v8f a = (v8f)(bits & ~sign_bit);
    v8f e = vexp(splat(-2.0f) * a);
    v8f t = (splat(1.0f) - e) / (splat(1.0f) + e);
    return (v8f)((v8i)t | (bits & sign_bit));
}

typedef struct {
    int d, m, dm, L, P;
    int off_scale, off_shift, off_weight, off_bias; /* block offsets within a row */
    int linear;                                     /* constant transform s * x + c instead of x * exp(a) + c */
} Dims;

/* One model: forward and backward over all N samples. Returns 0, or -1 without memory. */
static int one_model(const Dims *D, int N, const float *data, const int64_t *rows, const float *theta,
                     const int64_t *perm, float *nll, float *grad) {
    const int d = D->d, m = D->m, dm = D->dm, L = D->L, h2 = 2 * D->dm;
    const float *scale = theta + D->off_scale, *shift = theta + D->off_shift;
    const float *weight = theta + D->off_weight, *bias = theta + D->off_bias;

    /* Activations of one block: v (after the constant transform) per layer, tanh outputs
     * per layer, exp(s) per layer; the running y and its gradient. Then per-lane
     * accumulators of the gradient, summed over lanes once at the end. */
    size_t n_state = (size_t)L * d + (size_t)L * m + (size_t)L * h2 + (size_t)L * dm + 3 * (size_t)d + h2 + m;
    size_t n_acc = (size_t)L * (2 * d + h2 * m + h2);
    v8f *buf = aligned_alloc(32, sizeof(v8f) * (n_state + n_acc + 1));
    float *e = malloc(sizeof(float) * (size_t)L * d);
    if (!buf || !e) {
        free(buf);
        free(e);
        return -1;
    }
    v8f *V = buf, *VC = V + (size_t)L * d, *T = VC + (size_t)L * m, *EX = T + (size_t)L * h2;
    v8f *y = EX + (size_t)L * dm, *gy = y + d, *gv = gy + d, *gh = gv + d;
    v8f *restrict gvc = gh + h2, *acc = gvc + m;
    v8f *acc_le = acc, *acc_c = acc_le + (size_t)L * d, *acc_w = acc_c + (size_t)L * d;
    v8f *acc_b = acc_w + (size_t)L * h2 * m, *acc_logp = acc_b + (size_t)L * h2;
    memset(acc, 0, sizeof(v8f) * (n_acc + 1));

    float constant = -0.5f * (float)d * 1.8378770664093453f; /* -d/2 log(2 pi) */
    for (int i = 0; i < L * d; i++) {
        e[i] = D->linear ? scale[i] : expf(scale[i]);
        constant += D->linear ? logf(fabsf(scale[i])) : scale[i];
    }
    const float inv_n = 1.0f / (float)N;

    for (int n0 = 0; n0 < N; n0 += LANES) {
        v8f valid;
        for (int s = 0; s < LANES; s++) valid[s] = n0 + s < N ? 1.0f : 0.0f;
        for (int i = 0; i < d; i++) {
            v8f xi = splat(0.0f);
            for (int s = 0; s < LANES && n0 + s < N; s++) xi[s] = data[(size_t)rows[n0 + s] * d + i];
            y[i] = xi;
        }
        v8f logdet = splat(0.0f);
        for (int l = 0; l < L; l++) {
            const int64_t *cond = perm + (size_t)l * d, *trans = cond + m;
            const float *el = e + l * d, *cl = shift + l * d;
            const float *wl = weight + (size_t)l * h2 * m, *bl = bias + l * h2;
            v8f *restrict Vl = V + (size_t)l * d, *restrict Tl = T + (size_t)l * h2, *restrict El = EX + (size_t)l * dm;
            v8f *restrict VCl = VC + (size_t)l * m; /* the conditioning rows, contiguous */
            for (int i = 0; i < d; i++) Vl[i] = splat(el[i]) * y[i] + splat(cl[i]);
            for (int q = 0; q < m; q++) VCl[q] = y[cond[q]] = Vl[cond[q]];
            /* Column by column of W: h2 independent sums, then h2 independent tanh. */
            for (int r = 0; r < h2; r++) Tl[r] = splat(bl[r]);
            for (int q = 0; q < m; q++) {
                const v8f vq = VCl[q];
                for (int r = 0; r < h2; r++) Tl[r] += splat(wl[r * m + q]) * vq;
            }
            for (int r = 0; r < h2; r++) Tl[r] = vtanh(Tl[r]);
            for (int j = 0; j < dm; j++) {
                El[j] = vexp(Tl[j]);
                y[trans[j]] = Vl[trans[j]] * El[j] + Tl[dm + j];
                logdet += Tl[j];
            }
        }
        v8f sq = splat(0.0f);
        for (int i = 0; i < d; i++) sq += y[i] * y[i];
        *acc_logp += valid * (splat(constant) + logdet - splat(0.5f) * sq);

        /* Backward: g = d(nll)/d(log p) per sample, zero on padding lanes. */
        const v8f g = valid * splat(-inv_n);
        for (int i = 0; i < d; i++) gy[i] = -g * y[i];
        for (int l = L - 1; l >= 0; l--) {
            const int64_t *cond = perm + (size_t)l * d, *trans = cond + m;
            const float *el = e + l * d, *cl = shift + l * d, *wl = weight + (size_t)l * h2 * m;
            const v8f *restrict Vl = V + (size_t)l * d, *restrict Tl = T + (size_t)l * h2;
            const v8f *restrict El = EX + (size_t)l * dm, *restrict VCl = VC + (size_t)l * m;
            for (int j = 0; j < dm; j++) {
                int64_t a = trans[j];
                v8f s = Tl[j], t = Tl[dm + j];
                gv[a] = gy[a] * El[j];
                gh[j] = (gv[a] * Vl[a] + g) * (splat(1.0f) - s * s);
                gh[dm + j] = gy[a] * (splat(1.0f) - t * t);
            }
            /* Row by row of W: m independent sums (no long dependency chain), and the
             * weight gradient from the same pass over W. */
            for (int q = 0; q < m; q++) gvc[q] = gy[cond[q]];
            v8f *restrict aw = acc_w + (size_t)l * h2 * m, *restrict ab = acc_b + (size_t)l * h2;
            for (int r = 0; r < h2; r++) {
                const v8f ghr = gh[r];
                ab[r] += ghr;
                for (int q = 0; q < m; q++) {
                    gvc[q] += splat(wl[r * m + q]) * ghr;
                    aw[r * m + q] += ghr * VCl[q];
                }
            }
            for (int q = 0; q < m; q++) gv[cond[q]] = gvc[q];
            v8f *restrict ac = acc_c + (size_t)l * d, *restrict ale = acc_le + (size_t)l * d;
            for (int i = 0; i < d; i++) {
                ac[i] += gv[i];
                ale[i] += gv[i] * (Vl[i] - splat(cl[i])) + g; /* + g: the constant transform's log-det */
                gy[i] = gv[i] * splat(el[i]);
            }
        }
    }

    /* grad has theta's layout. acc_le holds d/d(log e); s itself gets it divided by s. */
    float *g_le = grad + D->off_scale, *g_c = grad + D->off_shift;
    float *g_w = grad + D->off_weight, *g_b = grad + D->off_bias;
    for (int i = 0; i < L * d; i++) {
        g_le[i] = D->linear ? hsum(acc_le[i]) / e[i] : hsum(acc_le[i]);
        g_c[i] = hsum(acc_c[i]);
    }
    for (size_t i = 0; i < (size_t)L * h2 * m; i++) g_w[i] = hsum(acc_w[i]);
    for (int i = 0; i < L * h2; i++) g_b[i] = hsum(acc_b[i]);
    *nll = -hsum(*acc_logp) * inv_n;
    free(buf);
    free(e);
    return 0;
}

/* Models [k0, k1) of a batch; returns 0, or -1 when memory ran out. Releases no lock:
 * callers (ctypes) drop the GIL, so disjoint model ranges can run in parallel threads. */
int coupling_step(int k0, int k1, int N, int d, int m, int L, int P, int off_scale, int off_shift, int off_weight,
                  int off_bias, int linear, const float *data, const int64_t *rows, const float *theta,
                  const int64_t *perm, float *nll, float *grad) {
    Dims D = {d, m, d - m, L, P, off_scale, off_shift, off_weight, off_bias, linear};
    for (int k = k0; k < k1; k++) {
        if (one_model(&D, N, data, rows + (size_t)k * N, theta + (size_t)k * D.P, perm + (size_t)k * L * d,
                      nll + k, grad + (size_t)k * D.P))
            return -1;
    }
    return 0;
}
