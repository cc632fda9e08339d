/* Fast F32 elementwise kernels for contiguous operands (OpenMP over chunks, vectorised loops). */
#ifndef BALLAST_CPU_ELEMENTWISE_H
#define BALLAST_CPU_ELEMENTWISE_H

#include "backend/ref/ref_elementwise.h"

/* out[n] = a[n] op b[n]; when b_is_scalar, b[0] is used for every element. Arithmetic ops only. */
void cpu_binary_f32(bl_binary_op op, int64_t n, float *out, const float *a, const float *b, int b_is_scalar);
/* y[n] += alpha * x[n] */
void cpu_axpy_f32(int64_t n, float alpha, const float *x, float *y);

#endif
