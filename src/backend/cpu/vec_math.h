/* Single-precision math on 16 lanes at once, for the CPU kernels' transcendental functions: exp,
 * the standard normal CDF and density (GELU's building blocks) and tanh. Written with GCC vector
 * extensions, so one v16f is one AVX-512 register where the CPU has them and two AVX2 registers
 * elsewhere. All functions are static inline: each kernel gets its own copy, inlined into its
 * loop. Accuracies are measured against double-precision libm by tests/test_cpu_unary.c. */
#ifndef BALLAST_CPU_VEC_MATH_H
#define BALLAST_CPU_VEC_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
typedef float v16f_unaligned __attribute__((vector_size(64), aligned(4)));

#define V16(c) ((v16f){0} + (float)(c))

static inline v16f v16_select(v16i mask, v16f if_true, v16f if_false) {
    return (v16f)((mask & (v16i)if_true) | (~mask & (v16i)if_false));
}

static inline v16f v16_load(const float *p) { return *(const v16f_unaligned *)p; }
static inline void v16_store(float *p, v16f v) { *(v16f_unaligned *)p = v; }

/* The first n (< 16) floats at p, the other lanes `fill`; and the matching store. */
static inline v16f v16_load_partial(const float *p, int64_t n, float fill) {
    v16f v = V16(fill);
    memcpy(&v, p, (size_t)n * sizeof *p);
    return v;
}
static inline void v16_store_partial(float *p, int64_t n, v16f v) { memcpy(p, &v, (size_t)n * sizeof *p); }

static inline v16f v16_min(v16f a, v16f b) { return v16_select(a < b, a, b); }
static inline v16f v16_abs(v16f x) { return (v16f)((v16i)x & 0x7fffffff); }

/* e^x within 2 ulp: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial (Cephes' expf
 * coefficients), 2^n built in the exponent bits. Below the smallest normal float (including -inf)
 * the result is 0, above the largest it is inf, and NaN stays NaN. */
static inline v16f v16_exp(v16f x) {
    const float lowest = -87.33654f, highest = 88.37626f;
    v16i underflow = x < lowest, overflow = x > highest;
    v16f clamped = v16_select(underflow, V16(lowest), v16_select(overflow, V16(highest), x));
    /* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer. */
    const float round_magic = 12582912.0f;
    v16f n = (clamped * 1.44269504088896341f + round_magic) - round_magic;
    v16f r = clamped - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v16f p = V16(1.9875691500e-4f);
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v16i two_to_n = (__builtin_convertvector(n, v16i) + 127) << 23;
    v16f result = p * (v16f)two_to_n;
    result = v16_select(overflow, V16(INFINITY), result);
    return v16_select(underflow, V16(0), result);
}

/* Phi(x) = P(Z <= x), Z ~ N(0, 1), and, when density is not NULL, phi(x) = e^(-x^2/2) / sqrt(2 pi)
 * there. Relative error within 5e-7 down to Phi ~ 1e-37, so GELU keeps its left tail.
 *
 * With z = |x| / sqrt 2, Phi(-|x|) = erfc(z) / 2, and erfc(z) = t e^(-z^2) e^(P(t)) with
 * t = 1 / (1 + z / 2): the form of Numerical Recipes' erfcc, with our own least-squares fit of the
 * degree-9 polynomial P for float on z in [0, 10]. e^(-z^2) is where the precision goes: z^2
 * rounded to float is off by up to z^2 * 6e-8, which e^(-z^2) turns into that much relative error.
 * So x is split into xh (its top 11 bits, whose square is exact in float) and xl = x - xh (exact),
 * x^2 = xh^2 + xl (x + xh), and e^(-x^2/2) = e^(-xh^2/2) e^(-xl (x + xh) / 2): the first argument
 * is exact, the second small. */
static inline v16f v16_normal_cdf(v16f x, v16f *density) {
    /* Beyond 20 standard deviations Phi is 0 or 1 in float; the clamp also keeps inf and NaN out of
     * the polynomial (a NaN x is sent to 20, and NaN still comes out of x * Phi). */
    v16f a = v16_min(v16_abs(x), V16(20.0f));
    v16f t = 1.0f / (1.0f + a * (0.5f * (float)M_SQRT1_2));
    v16f p = V16(1.449302136e-01f);
    p = p * t - 6.808271774e-01f;
    p = p * t + 1.156733756e+00f;
    p = p * t - 6.962518979e-01f;
    p = p * t - 8.028043291e-02f;
    p = p * t + 1.267586716e-03f;
    p = p * t + 3.460279990e-02f;
    p = p * t + 3.866404122e-01f;
    p = p * t + 9.986327833e-01f;
    p = p * t - 1.265447997e+00f;
    v16f ah = (v16f)((v16i)a & (int32_t)0xfffff000), al = a - ah;
    v16f gauss_head = v16_exp(-0.5f * ah * ah), gauss_tail = -0.5f * al * (a + ah);
    v16f tail = 0.5f * t * gauss_head * v16_exp(p + gauss_tail); /* Phi(-|x|) */
    if (density) *density = (float)(0.5 * M_2_SQRTPI * M_SQRT1_2) * gauss_head * v16_exp(gauss_tail);
    return v16_select(x < 0, tail, 1.0f - tail);
}

/* tanh(x) within 2 ulp, as |tanh(|x|)| with x's sign: an odd polynomial a + a^3 Q(a^2) (least-
 * squares fit, 0.8 ulp) for a = |x| < 0.625, 1 - 2 / (e^(2a) + 1) beyond, where it no longer
 * cancels. */
static inline v16f v16_tanh(v16f x) {
    v16f a = v16_abs(x), u = a * a, q = V16(-6.104948011e-03f);
    q = q * u + 2.100364122e-02f;
    q = q * u - 5.385249747e-02f;
    q = q * u + 1.333278226e-01f;
    q = q * u - 3.333332910e-01f;
    v16f small = a + a * u * q;
    v16f large = 1.0f - 2.0f / (v16_exp(2.0f * a) + 1.0f); /* e^(2a) = inf gives exactly 1 */
    v16f magnitude = v16_select(a < 0.625f, small, large);
    return (v16f)((v16i)magnitude | ((v16i)x & (int32_t)0x80000000));
}

#endif
