/* Fast F32 elementwise kernels for the transcendental unary functions (exp, sigmoid, tanh, GELU
 * and the normal CDF behind it), vectorized 16 lanes at a time with backend/cpu/vec_math.h.
 * Same contracts as ref_unary_fwd_f32 / ref_unary_bwd_f32 (backend/ref/ref_unary.h), which are
 * their test oracle; every other function, and derivatives without a transcendental part, are
 * handed to those reference kernels. Large inputs are split across the OpenMP threads. */
#ifndef BALLAST_CPU_UNARY_H
#define BALLAST_CPU_UNARY_H

#include "backend/ref/ref_unary.h"

#include <stdint.h>

/* y (n) = f(x (n)). y may alias x. */
void cpu_unary_fwd_f32(const bl_unary_args *args, int64_t n, const float *x, float *y);

/* dx (n) = dy (n) * f'(x), given x and y = f(x); dy NULL reads as all ones. dx may alias dy. */
void cpu_unary_bwd_f32(const bl_unary_args *args, int64_t n, const float *x, const float *y, const float *dy,
                       float *dx);

/* GELU on its own, single-threaded, for fused kernels that already run one slice per thread:
 * y (n) = x * Phi(x); and, from one evaluation of Phi and phi, y (n) = x * Phi(x) together with
 * dy_dx (n) = Phi(x) + x phi(x), the derivative. */
void cpu_gelu_f32(int64_t n, const float *x, float *y);
void cpu_gelu_with_derivative_f32(int64_t n, const float *x, float *y, float *dy_dx);

#endif
