/* Fast F32 elementwise kernels (see elementwise.h). Each op is a separate simple loop so the compiler
 * vectorises it; work is split across the OpenMP pool only when it is large enough to pay for it. */
#include "elementwise.h"

#include <math.h>

#define PARALLEL_MIN 32768

#define LOOP(EXPR)                                                                             \
    _Pragma("omp parallel for simd if (n >= PARALLEL_MIN) schedule(static)")                   \
    for (int64_t i = 0; i < n; i++) out[i] = (EXPR)

void cpu_binary_f32(bl_binary_op op, int64_t n, float *out, const float *a, const float *b, int b_is_scalar) {
    if (b_is_scalar) {
        const float s = b[0];
        switch (op) {
        case BL_BIN_ADD: LOOP(a[i] + s); break;
        case BL_BIN_SUB: LOOP(a[i] - s); break;
        case BL_BIN_MUL: LOOP(a[i] * s); break;
        case BL_BIN_DIV: LOOP(a[i] / s); break;
        case BL_BIN_MAX: LOOP(a[i] >= s ? a[i] : s); break;
        case BL_BIN_MIN: LOOP(a[i] <= s ? a[i] : s); break;
        case BL_BIN_POW: LOOP(powf(a[i], s)); break;
        default: break;
        }
        return;
    }
    switch (op) {
    case BL_BIN_ADD: LOOP(a[i] + b[i]); break;
    case BL_BIN_SUB: LOOP(a[i] - b[i]); break;
    case BL_BIN_MUL: LOOP(a[i] * b[i]); break;
    case BL_BIN_DIV: LOOP(a[i] / b[i]); break;
    case BL_BIN_MAX: LOOP(a[i] >= b[i] ? a[i] : b[i]); break;
    case BL_BIN_MIN: LOOP(a[i] <= b[i] ? a[i] : b[i]); break;
    case BL_BIN_POW: LOOP(powf(a[i], b[i])); break;
    default: break;
    }
}

void cpu_axpy_f32(int64_t n, float alpha, const float *x, float *y) {
#pragma omp parallel for simd if (n >= PARALLEL_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) y[i] += alpha * x[i];
}
