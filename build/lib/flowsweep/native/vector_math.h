/* Vector math shared by the native kernels: float vectors as wide as the machine the library is
 * compiled for (-march=native: LANES 16 floats where the compiler targets AVX-512, else 8), and
 * exp, tanh, log and a reciprocal written with GCC vector extensions, so no libm call runs in a
 * sample loop. */
#ifndef FLOWSWEEP_VECTOR_MATH_H
#define FLOWSWEEP_VECTOR_MATH_H
#include <math.h>
#include <stdint.h>
#if defined(__AVX512F__) || defined(__AVX__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
#define LANES 16
#else
#define LANES 8
#endif

typedef float vf __attribute__((vector_size(4 * LANES)));
typedef int32_t vi __attribute__((vector_size(4 * LANES)));
typedef float v4f __attribute__((vector_size(16)));


static inline vf splat(float a) { return (vf){} + a; }

static inline float hsum(vf a) {
    /* A fixed order (halves added, down to four lanes), so results are bitwise reproducible. */
#if LANES == 16
    typedef float v8f __attribute__((vector_size(32)));
    v8f h = __builtin_shufflevector(a, a, 0, 1, 2, 3, 4, 5, 6, 7) +
            __builtin_shufflevector(a, a, 8, 9, 10, 11, 12, 13, 14, 15);
#else
    vf h = a;
#endif
    v4f q = __builtin_shufflevector(h, h, 0, 1, 2, 3) + __builtin_shufflevector(h, h, 4, 5, 6, 7);
    return (q[0] + q[2]) + (q[1] + q[3]);
}

/* 1 / x to ~1 ulp: the hardware estimate and one Newton step (a division where there is none). */
static inline vf vrecip(vf x) {
#if LANES == 16
    vf r = (vf)_mm512_rcp14_ps((__m512)x);
#elif defined(__AVX__)
    vf r = (vf)_mm256_rcp_ps((__m256)x);
    r = r * (splat(2.0f) - x * r);
#else
    return splat(1.0f) / x;
#endif
    return r * (splat(2.0f) - x * r);
}

/* exp(x) for x <= 88 (Cephes' single-precision polynomial, ~1 ulp). NaN stays NaN:
 * the clamp below compares false for NaN and keeps x. Callers pass tanh outputs
 * (in [-1, 1]) or arguments <= 0 only, so there is no overflow branch. */
static inline vf vexp(vf x) {
    const vf lo = splat(-87.3f);
    vi below = x < lo;
    x = (vf)(((vi)x & ~below) | ((vi)lo & below));
    const vf magic = splat(12582912.0f); /* 1.5 * 2^23: adding it rounds to an integer */
    vf t = x * splat(1.44269504088896341f) + magic;
    vi n = (vi)t - (vi)magic;
    vf fn = t - magic;
    vf r = x - fn * splat(0.693359375f) - fn * splat(-2.12194440e-4f);
    vf p = splat(1.9875691500e-4f);
    p = p * r + splat(1.3981999507e-3f);
    p = p * r + splat(8.3334519073e-3f);
    p = p * r + splat(4.1665795894e-2f);
    p = p * r + splat(1.6666665459e-1f);
    p = p * r + splat(5.0000001201e-1f);
    p = p * r * r + r + splat(1.0f);
    vi scale = (n + 127) << 23;
    return p * (vf)scale;
}

/* tanh(h) = sign(h) (1 - e) / (1 + e), e = exp(-2|h|). */
static inline vf vtanh(vf h) {
    const vi sign_bit = (vi){} + INT32_MIN;
    vi bits = (vi)h;
    vf a = (vf)(bits & ~sign_bit);
    vf e = vexp(splat(-2.0f) * a);
    vf t = (splat(1.0f) - e) * vrecip(splat(1.0f) + e);
    return (vf)((vi)t | (bits & sign_bit));
}

/* a where mask (all bits set), else b. */
static inline vf vsel(vi mask, vf a, vf b) { return (vf)(((vi)a & mask) | ((vi)b & ~mask)); }

/* log(x) (Cephes' single-precision logf, ~1 ulp) for x > 0, subnormals included; -inf at 0,
 * NaN below 0 or at NaN, inf at inf. */
static inline vf vlog(vf x) {
    const vi subnormal = (x < splat(1.17549435e-38f)) & (x > splat(0.0f));
    vf xs = vsel(subnormal, x * splat(33554432.0f), x); /* 2^25: into the normal range */
    vi bits = (vi)xs;
    vi e = ((bits >> 23) & 0xff) - 126 - (subnormal & 25);
    vf m = (vf)((bits & 0x007fffff) | 0x3f000000); /* [0.5, 1) */
    vi low = m < splat(0.707106781186547524f);
    e = e + low;                                      /* low is -1 where true */
    m = m - splat(1.0f) + (vf)((vi)m & low);          /* 2m - 1 where low, m - 1 else */
    vf z = m * m;
    vf y = splat(7.0376836292e-2f);
    y = y * m + splat(-1.1514610310e-1f);
    y = y * m + splat(1.1676998740e-1f);
    y = y * m + splat(-1.2420140846e-1f);
    y = y * m + splat(1.4249322787e-1f);
    y = y * m + splat(-1.6668057665e-1f);
    y = y * m + splat(2.0000714765e-1f);
    y = y * m + splat(-2.4999993993e-1f);
    y = y * m + splat(3.3333331174e-1f);
    y = y * m * z;
    vf fe = __builtin_convertvector(e, vf);
    y = y + fe * splat(-2.12194440e-4f) - splat(0.5f) * z;
    vf r = m + y + fe * splat(0.693359375f);
    r = vsel(x == splat(0.0f), splat(-INFINITY), r);
    r = vsel(x == splat(INFINITY), x, r);
    return vsel((x < splat(0.0f)) | (x != x), splat(NAN), r);
}

/* log(1 + t) for t >= 0, accurate for small t: log(u) t / (u - 1), u = 1 + t rounded. */
static inline vf vlog1p(vf t) {
    vf u = splat(1.0f) + t;
    vi exact = u == splat(1.0f);
    vf denominator = vsel(exact, splat(1.0f), u - splat(1.0f));
    return vsel(exact, t, vlog(u) * t / denominator);
}

#endif
