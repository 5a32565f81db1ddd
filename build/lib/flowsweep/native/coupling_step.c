/* One training step of K affine coupling flows: mean NLL per model and its gradient; and
 * (coupling_logp, at the end) the forward pass alone: log p of every row, the evaluation.
 *
 * The model of flowsweep/model/flow.py (the reference this kernel is tested against) for
 * the variants it covers: each layer the affine constant transform, then the coupling with
 * the single-layer tanh conditioner, data to latent; the constant transform as
 * x * exp(a) + c or, with `linear`, s * x + c. Where each parameter block lives in a
 * model's row comes from the caller (ParamLayout), never from here.
 *
 * The vectors are as wide as the machine the file is compiled for (the build passes
 * -march=native): LANES is 16 floats where the compiler targets AVX-512, else 8 (AVX2).
 * Per model and per block of LANES samples (one register per feature) it runs the
 * forward pass through all layers, keeps each layer's activations in cache, and runs the
 * backward pass straight away. The weight gradient, the largest block, is not
 * accumulated per block: each block's conditioner inputs and output gradients are kept
 * for a chunk of CHUNK blocks and multiplied out once per chunk in register tiles, so the
 * accumulators are read and written once per chunk instead of once per block. No libm
 * call in the sample loop: exp and tanh are written with GCC vector extensions (exp only
 * ever sees arguments <= 1, see below).
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
 * Numbers depend on LANES only through the order of float32 sums (and tanh's reciprocal).
 */
#include "vector_math.h"
#include <stdlib.h>
#include <string.h>

#define CHUNK 8 /* blocks whose weight-gradient terms are multiplied out together */
#define TILE 4  /* register tile of the weight gradient and the conditioner: TILE x TILE */

/* Exported so the caller can report the width it was built with. */
int coupling_lanes(void) { return LANES; }

typedef struct {
    int d, m, dm, L, P;
    int off_scale, off_shift, off_weight, off_bias; /* block offsets within a row */
    int linear;                                     /* constant transform s * x + c instead of x * exp(a) + c */
} Dims;

/* out[r] = b[r] + sum_q w[r m + q] in[q], r < rows: TILE rows at a time in registers. */
static inline void affine_rows(int rows, int m, const float *w, const float *b, const vf *in, vf *restrict out) {
    int r = 0;
    for (; r + TILE <= rows; r += TILE) {
        vf a[TILE];
        for (int i = 0; i < TILE; i++) a[i] = splat(b[r + i]);
        for (int q = 0; q < m; q++) {
            const vf x = in[q];
            for (int i = 0; i < TILE; i++) a[i] += splat(w[(r + i) * m + q]) * x;
        }
        for (int i = 0; i < TILE; i++) out[r + i] = a[i];
    }
    for (; r < rows; r++) {
        vf a = splat(b[r]);
        for (int q = 0; q < m; q++) a += splat(w[r * m + q]) * in[q];
        out[r] = a;
    }
}

/* out[q] = base[q] + sum_r w[r m + q] g[r], q < m: the conditioner's input gradient, TILE at a time. */
static inline void transposed_rows(int h2, int m, const float *w, const vf *g, vf *restrict out) {
    int q = 0;
    for (; q + TILE <= m; q += TILE) {
        vf a[TILE];
        for (int j = 0; j < TILE; j++) a[j] = out[q + j];
        for (int r = 0; r < h2; r++) {
            const vf x = g[r];
            for (int j = 0; j < TILE; j++) a[j] += splat(w[r * m + q + j]) * x;
        }
        for (int j = 0; j < TILE; j++) out[q + j] = a[j];
    }
    for (; q < m; q++) {
        vf a = out[q];
        for (int r = 0; r < h2; r++) a += splat(w[r * m + q]) * g[r];
        out[q] = a;
    }
}

/* acc[r m + q] += sum_c gh[c][r] vc[c][q] over the chunk's blocks (strides in vectors). */
static void outer_chunk(int blocks, int h2, int m, const vf *gh, const vf *vc, size_t stride, vf *restrict acc) {
    for (int r0 = 0; r0 < h2; r0 += TILE) {
        const int nr = h2 - r0 < TILE ? h2 - r0 : TILE;
        for (int q0 = 0; q0 < m; q0 += TILE) {
            const int nq = m - q0 < TILE ? m - q0 : TILE;
            if (nr == TILE && nq == TILE) {
                vf a[TILE][TILE];
                for (int i = 0; i < TILE; i++)
                    for (int j = 0; j < TILE; j++) a[i][j] = acc[(r0 + i) * m + q0 + j];
                for (int c = 0; c < blocks; c++) {
                    const vf *g = gh + c * stride + r0, *v = vc + c * stride + q0;
                    for (int i = 0; i < TILE; i++)
                        for (int j = 0; j < TILE; j++) a[i][j] += g[i] * v[j];
                }
                for (int i = 0; i < TILE; i++)
                    for (int j = 0; j < TILE; j++) acc[(r0 + i) * m + q0 + j] = a[i][j];
            } else {
                for (int i = 0; i < nr; i++)
                    for (int j = 0; j < nq; j++) {
                        vf a = acc[(r0 + i) * m + q0 + j];
                        for (int c = 0; c < blocks; c++) a += gh[c * stride + r0 + i] * vc[c * stride + q0 + j];
                        acc[(r0 + i) * m + q0 + j] = a;
                    }
            }
        }
    }
}

/* e[i] = the constant transform's factor per layer and feature ([L, d]); returns the terms
 * of log p every sample shares: -d/2 log(2 pi) plus the constant transforms' log-det. */
static float constant_factors(const Dims *D, const float *scale, float *e) {
    float constant = -0.5f * (float)D->d * 1.8378770664093453f; /* -d/2 log(2 pi) */
    for (int i = 0; i < D->L * D->d; i++) {
        e[i] = D->linear ? scale[i] : expf(scale[i]);
        constant += D->linear ? logf(fabsf(scale[i])) : scale[i];
    }
    return constant;
}

/* One block's forward pass, data to latent: y [d] holds the block's rows on entry and the
 * latent on return; returns log p per lane. With `keep` each layer's activations stay in
 * its own slots of V [L][d], T [L][2dm], EX [L][dm] and VC [L][m] for the backward pass;
 * without, every layer reuses the first slot (the forward-only evaluation). Inlined with a
 * constant `keep`, so each caller gets its own loop. */
static inline vf forward_block(const Dims *D, const float *e, const float *shift, const float *weight,
                               const float *bias, const int64_t *perm, float constant, vf *y, vf *V, vf *T, vf *EX,
                               vf *VC, int keep) {
    const int d = D->d, m = D->m, dm = D->dm, L = D->L, h2 = 2 * D->dm;
    vf logdet = splat(0.0f);
    for (int l = 0; l < L; l++) {
        const int64_t *cond = perm + (size_t)l * d, *trans = cond + m;
        const float *el = e + l * d, *cl = shift + l * d;
        const float *wl = weight + (size_t)l * h2 * m, *bl = bias + l * h2;
        const size_t slot = keep ? (size_t)l : 0;
        vf *restrict Vl = V + slot * d, *restrict Tl = T + slot * h2, *restrict El = EX + slot * dm;
        vf *restrict VCl = VC + slot * m; /* the conditioning rows, contiguous */
        for (int i = 0; i < d; i++) Vl[i] = splat(el[i]) * y[i] + splat(cl[i]);
        for (int q = 0; q < m; q++) VCl[q] = y[cond[q]] = Vl[cond[q]];
        affine_rows(h2, m, wl, bl, VCl, Tl);
        for (int r = 0; r < h2; r++) Tl[r] = vtanh(Tl[r]);
        for (int j = 0; j < dm; j++) {
            El[j] = vexp(Tl[j]);
            y[trans[j]] = Vl[trans[j]] * El[j] + Tl[dm + j];
            logdet += Tl[j];
        }
    }
    vf sq = splat(0.0f);
    for (int i = 0; i < d; i++) sq += y[i] * y[i];
    return splat(constant) + logdet - splat(0.5f) * sq;
}

/* One model: forward and backward over all N samples. Returns 0, or -1 without memory. */
static int one_model(const Dims *D, int N, const float *data, const int64_t *rows, const float *theta,
                     const int64_t *perm, float *nll, float *grad) {
    const int d = D->d, m = D->m, dm = D->dm, L = D->L, h2 = 2 * D->dm;
    const float *scale = theta + D->off_scale, *shift = theta + D->off_shift;
    const float *weight = theta + D->off_weight, *bias = theta + D->off_bias;

    /* Activations of one block: v (after the constant transform) per layer, tanh outputs
     * per layer, exp(s) per layer; the running y and its gradient; the block's rows,
     * transposed. Per chunk block and layer: the conditioning inputs and the conditioner's
     * output gradient (`stride` vectors apart). Then per-lane accumulators of the gradient,
     * summed over lanes once at the end. */
    const size_t stride = (size_t)L * (h2 + m); /* one block's [L][m] inputs, then [L][h2] gradients */
    size_t n_state = (size_t)L * d + (size_t)L * h2 + (size_t)L * dm + 3 * (size_t)d + m + (size_t)d;
    size_t n_chunk = CHUNK * stride;
    size_t n_acc = (size_t)L * (2 * d + h2 * m + h2);
    vf *buf = aligned_alloc(sizeof(vf), sizeof(vf) * (n_state + n_chunk + n_acc + 1));
    float *e = malloc(sizeof(float) * (size_t)L * d);
    if (!buf || !e) {
        free(buf);
        free(e);
        return -1;
    }
    vf *V = buf, *T = V + (size_t)L * d, *EX = T + (size_t)L * h2;
    vf *y = EX + (size_t)L * dm, *gy = y + d, *gv = gy + d, *restrict gvc = gv + d, *xt = gvc + m;
    vf *chunk = xt + d, *acc = chunk + n_chunk;
    vf *acc_le = acc, *acc_c = acc_le + (size_t)L * d, *acc_w = acc_c + (size_t)L * d;
    vf *acc_b = acc_w + (size_t)L * h2 * m, *acc_logp = acc_b + (size_t)L * h2;
    memset(acc, 0, sizeof(vf) * (n_acc + 1));

    const float constant = constant_factors(D, scale, e);
    const float inv_n = 1.0f / (float)N;
    const int blocks = (N + LANES - 1) / LANES;

    for (int b = 0; b < blocks; b++) {
        const int n0 = b * LANES, c = b % CHUNK;
        vf *VC = chunk + c * stride, *GH = VC + (size_t)L * m; /* this block's slots in the chunk */
        vf valid;
        /* The block's rows, transposed through memory: one scalar store per value and one
         * vector load per feature (padding lanes read zeros). */
        float *xs = (float *)xt;
        for (int s = 0; s < LANES; s++) {
            const float *row = n0 + s < N ? data + (size_t)rows[n0 + s] * d : NULL;
            valid[s] = row ? 1.0f : 0.0f;
            for (int i = 0; i < d; i++) xs[i * LANES + s] = row ? row[i] : 0.0f;
        }
        for (int i = 0; i < d; i++) y[i] = xt[i];
        *acc_logp += valid * forward_block(D, e, shift, weight, bias, perm, constant, y, V, T, EX, VC, 1);

        /* Backward: g = d(nll)/d(log p) per sample, zero on padding lanes. */
        const vf g = valid * splat(-inv_n);
        for (int i = 0; i < d; i++) gy[i] = -g * y[i];
        for (int l = L - 1; l >= 0; l--) {
            const int64_t *cond = perm + (size_t)l * d, *trans = cond + m;
            const float *el = e + l * d, *cl = shift + l * d, *wl = weight + (size_t)l * h2 * m;
            const vf *restrict Vl = V + (size_t)l * d, *restrict Tl = T + (size_t)l * h2;
            const vf *restrict El = EX + (size_t)l * dm;
            vf *restrict gh = GH + (size_t)l * h2;
            for (int j = 0; j < dm; j++) {
                int64_t a = trans[j];
                vf s = Tl[j], t = Tl[dm + j];
                gv[a] = gy[a] * El[j];
                gh[j] = (gv[a] * Vl[a] + g) * (splat(1.0f) - s * s);
                gh[dm + j] = gy[a] * (splat(1.0f) - t * t);
            }
            vf *restrict ab = acc_b + (size_t)l * h2;
            for (int r = 0; r < h2; r++) ab[r] += gh[r];
            for (int q = 0; q < m; q++) gvc[q] = gy[cond[q]];
            transposed_rows(h2, m, wl, gh, gvc);
            for (int q = 0; q < m; q++) gv[cond[q]] = gvc[q];
            vf *restrict ac = acc_c + (size_t)l * d, *restrict ale = acc_le + (size_t)l * d;
            for (int i = 0; i < d; i++) {
                ac[i] += gv[i];
                ale[i] += gv[i] * (Vl[i] - splat(cl[i])) + g; /* + g: the constant transform's log-det */
                gy[i] = gv[i] * splat(el[i]);
            }
        }
        if (c == CHUNK - 1 || b == blocks - 1) /* the chunk's weight gradient, layer by layer */
            for (int l = 0; l < L; l++)
                outer_chunk(c + 1, h2, m, chunk + (size_t)L * m + (size_t)l * h2, chunk + (size_t)l * m, stride,
                            acc_w + (size_t)l * h2 * m);
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

/* Forward only: logp [K, N] (out, nats) = log p of every row of data [N, d] under models
 * [k0, k1), in the row order of data. Each row's value depends on that row and its model
 * alone (lanes never mix), so it is the same whatever N, K or the thread split. Returns 0,
 * or -1 when memory ran out. */
int coupling_logp(int k0, int k1, int N, int d, int m, int L, int P, int off_scale, int off_shift, int off_weight,
                  int off_bias, int linear, const float *data, const float *theta, const int64_t *perm, float *logp) {
    Dims D = {d, m, d - m, L, P, off_scale, off_shift, off_weight, off_bias, linear};
    const int dm = d - m, h2 = 2 * dm;
    vf *buf = aligned_alloc(sizeof(vf), sizeof(vf) * ((size_t)3 * d + h2 + dm + m + 1));
    float *e = malloc(sizeof(float) * (size_t)L * d);
    if (!buf || !e) {
        free(buf);
        free(e);
        return -1;
    }
    vf *y = buf, *xt = y + d, *V = xt + d, *T = V + d, *EX = T + h2, *VC = EX + dm;
    for (int k = k0; k < k1; k++) {
        const float *model = theta + (size_t)k * P;
        const int64_t *pk = perm + (size_t)k * L * d;
        const float constant = constant_factors(&D, model + off_scale, e);
        float *out = logp + (size_t)k * N;
        for (int n0 = 0; n0 < N; n0 += LANES) {
            const int lanes = N - n0 < LANES ? N - n0 : LANES;
            float *xs = (float *)xt;
            for (int s = 0; s < LANES; s++)
                for (int i = 0; i < d; i++) xs[i * LANES + s] = s < lanes ? data[(size_t)(n0 + s) * d + i] : 0.0f;
            for (int i = 0; i < d; i++) y[i] = xt[i];
            vf lp = forward_block(&D, e, model + off_shift, model + off_weight, model + off_bias, pk, constant, y, V, T,
                                  EX, VC, 0);
            for (int s = 0; s < lanes; s++) out[n0 + s] = lp[s];
        }
    }
    free(buf);
    free(e);
    return 0;
}
