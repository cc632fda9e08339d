/* Softmax and log-softmax along one dim, forward and backward.
 *
 * Kernels view the contiguous input as (outer, D, inner) and normalize along D. Reference kernels
 * (float and double, any inner) are plain loops; they are the F64 path and the F32 path for
 * inner > 1. The common F32 case, the last dim (inner == 1), has fused row kernels: one pass for
 * the max, one that exponentiates and sums (8 lanes at a time with a polynomial exp), one that
 * scales. Rows are spread over threads.
 *
 * Backward, with y the op's output and g its gradient:
 *   softmax:     dx = y * (g - sum_D(g * y))
 *   log_softmax: dx = g - softmax(x) * sum_D(g)      (softmax(x) = exp(y))
 * Under create_graph these are built from ops (so they differentiate again); otherwise a fused
 * kernel computes them in one sweep per row. */
#include "ballast/ops.h"
#include "core/internal.h"
#include "ops/dense.h"

#include <math.h>
#include <string.h>

/* ---- reference kernels ------------------------------------------------------------------------
 * x, y, g, dx: (outer, D, inner), contiguous. Forward: y (=) softmax or log-softmax of x along D.
 * Backward: dx (=) from y (the forward's output) and g (the gradient of y). */

#define DEFINE_REFERENCE_KERNELS(T, SUFFIX, EXP, LOG)                                               \
    static void ref_softmax_fwd_##SUFFIX(int64_t outer, int64_t D, int64_t inner, const T *x, T *y,   \
                                         bool log_space) {                                          \
        for (int64_t o = 0; o < outer; o++)                                                         \
            for (int64_t i = 0; i < inner; i++) {                                                   \
                const T *xr = x + o * D * inner + i;                                                \
                T *yr = y + o * D * inner + i;                                                      \
                T max = -INFINITY, sum = 0;                                                         \
                for (int64_t d = 0; d < D; d++)                                                     \
                    if (xr[d * inner] > max) max = xr[d * inner];                                   \
                for (int64_t d = 0; d < D; d++) sum += EXP(xr[d * inner] - max);                    \
                T log_sum = LOG(sum), inv_sum = 1 / sum;                                            \
                for (int64_t d = 0; d < D; d++)                                                     \
                    yr[d * inner] = log_space ? xr[d * inner] - max - log_sum                       \
                                              : EXP(xr[d * inner] - max) * inv_sum;                 \
            }                                                                                       \
    }                                                                                               \
    static void ref_softmax_bwd_##SUFFIX(int64_t outer, int64_t D, int64_t inner, const T *y,         \
                                         const T *g, T *dx, bool log_space) {                       \
        for (int64_t o = 0; o < outer; o++)                                                         \
            for (int64_t i = 0; i < inner; i++) {                                                   \
                int64_t base = o * D * inner + i;                                                   \
                T total = 0;                                                                        \
                for (int64_t d = 0; d < D; d++)                                                     \
                    total += log_space ? g[base + d * inner] : g[base + d * inner] * y[base + d * inner]; \
                for (int64_t d = 0; d < D; d++) {                                                   \
                    int64_t e = base + d * inner;                                                   \
                    dx[e] = log_space ? g[e] - EXP(y[e]) * total : y[e] * (g[e] - total);            \
                }                                                                                   \
            }                                                                                       \
    }

DEFINE_REFERENCE_KERNELS(float, f32, expf, logf)
DEFINE_REFERENCE_KERNELS(double, f64, exp, log)

void ref_softmax_rows_f64(int64_t rows, int64_t D, const double *x, double *y) {
    ref_softmax_fwd_f64(rows, D, 1, x, y, false);
}

void ref_softmax_bwd_rows_f64(int64_t rows, int64_t D, const double *y, const double *g, double *dx) {
    ref_softmax_bwd_f64(rows, D, 1, y, g, dx, false);
}

/* ---- fast F32 row kernels (inner == 1) --------------------------------------------------------- */

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4)));

static inline v8f select_v8f(v8i mask, v8f if_true, v8f if_false) {
    return (v8f)((mask & (v8i)if_true) | (~mask & (v8i)if_false));
}

/* e^x in 8 lanes, within 2 ulp: x = n ln2 + r with |r| <= ln2/2, e^r by a degree-6 polynomial
 * (Cephes' expf coefficients), 2^n built in the exponent bits. Below the smallest normal float
 * (including -inf) the result is 0, above the largest it is inf, and NaN stays NaN. */
static inline v8f exp_v8f(v8f x) {
    const float lowest = -87.33654f, highest = 88.37626f;
    v8i underflow = x < lowest, overflow = x > highest;
    v8f clamped = select_v8f(underflow, (v8f){0} + lowest, select_v8f(overflow, (v8f){0} + highest, x));
    /* Adding and subtracting 1.5 * 2^23 rounds to the nearest integer. */
    const float round_magic = 12582912.0f;
    v8f n = (clamped * 1.44269504088896341f + round_magic) - round_magic;
    v8f r = clamped - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    v8f p = (v8f){0} + 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    p = p * r * r + r + 1.0f;
    v8i two_to_n = (__builtin_convertvector(n, v8i) + 127) << 23;
    v8f result = p * (v8f)two_to_n;
    result = select_v8f(overflow, (v8f){0} + INFINITY, result);
    return select_v8f(underflow, (v8f){0}, result);
}

static inline float sum_lanes(v8f v) {
    float s = 0;
    for (int i = 0; i < 8; i++) s += v[i];
    return s;
}

/* The first n (< 8) floats of p in a vector, the other lanes `fill`. */
static inline v8f load_partial(const float *p, int64_t n, float fill) {
    v8f v = (v8f){0} + fill;
    memcpy(&v, p, (size_t)n * sizeof *p);
    return v;
}

static float row_max(const float *x, int64_t D) {
    v8f m = (v8f){0} - INFINITY;
    int64_t j = 0;
    for (; j + 8 <= D; j += 8) {
        v8f v = *(const v8f_unaligned *)(x + j);
        m = select_v8f(v > m, v, m);
    }
    float max = -INFINITY;
    for (int i = 0; i < 8; i++) max = m[i] > max ? m[i] : max;
    for (; j < D; j++) max = x[j] > max ? x[j] : max;
    return max;
}

/* sum_j e^(x_j - shift); also writes the exponentials to e when e is not NULL. */
static float exp_sum(const float *x, int64_t D, float shift, float *e) {
    v8f sum = (v8f){0};
    int64_t j = 0;
    for (; j + 8 <= D; j += 8) {
        v8f v = exp_v8f(*(const v8f_unaligned *)(x + j) - shift);
        if (e) *(v8f_unaligned *)(e + j) = v;
        sum += v;
    }
    if (j < D) { /* padding lanes hold -inf, whose exponential is 0 */
        v8f v = exp_v8f(load_partial(x + j, D - j, -INFINITY) - shift);
        if (e) memcpy(e + j, &v, (size_t)(D - j) * sizeof *e);
        sum += v;
    }
    return sum_lanes(sum);
}

/* The elementwise sweeps below are written with explicit vectors: their arrays may alias, which
 * keeps the compiler from vectorizing them on its own. */
void cpu_softmax_rows_f32(int64_t rows, int64_t D, const float *x, float *y) {
    for (int64_t r = 0; r < rows; r++, x += D, y += D) {
        float inv_sum = 1.0f / exp_sum(x, D, row_max(x, D), y);
        int64_t j = 0;
        for (; j + 8 <= D; j += 8) *(v8f_unaligned *)(y + j) *= inv_sum;
        for (; j < D; j++) y[j] *= inv_sum;
    }
}

static void cpu_log_softmax_rows_f32(int64_t rows, int64_t D, const float *x, float *y) {
    for (int64_t r = 0; r < rows; r++, x += D, y += D) {
        float max = row_max(x, D), log_sum = logf(exp_sum(x, D, max, NULL));
        /* (x - max) first: it is exact for the large entries, where max + log_sum would round. */
        int64_t j = 0;
        for (; j + 8 <= D; j += 8) *(v8f_unaligned *)(y + j) = (*(const v8f_unaligned *)(x + j) - max) - log_sum;
        for (; j < D; j++) y[j] = (x[j] - max) - log_sum;
    }
}

/* dx (rows, D) = y * (g - sum(g * y)) per row; dx may alias g. */
void cpu_softmax_bwd_rows_f32(int64_t rows, int64_t D, const float *y, const float *g, float *dx) {
    for (int64_t r = 0; r < rows; r++, y += D, g += D, dx += D) {
        v8f acc = (v8f){0};
        int64_t j = 0;
        for (; j + 8 <= D; j += 8) acc += *(const v8f_unaligned *)(g + j) * *(const v8f_unaligned *)(y + j);
        float dot = sum_lanes(acc);
        for (; j < D; j++) dot += g[j] * y[j];
        for (j = 0; j + 8 <= D; j += 8)
            *(v8f_unaligned *)(dx + j) = *(const v8f_unaligned *)(y + j) * (*(const v8f_unaligned *)(g + j) - dot);
        for (; j < D; j++) dx[j] = y[j] * (g[j] - dot);
    }
}

/* dx (rows, D) = g - e^y * sum(g) per row. */
static void cpu_log_softmax_bwd_rows_f32(int64_t rows, int64_t D, const float *y, const float *g, float *dx) {
    for (int64_t r = 0; r < rows; r++, y += D, g += D, dx += D) {
        v8f acc = (v8f){0};
        int64_t j = 0;
        for (; j + 8 <= D; j += 8) acc += *(const v8f_unaligned *)(g + j);
        float total = sum_lanes(acc);
        for (; j < D; j++) total += g[j];
        for (j = 0; j + 8 <= D; j += 8)
            *(v8f_unaligned *)(dx + j) = *(const v8f_unaligned *)(g + j) - exp_v8f(*(const v8f_unaligned *)(y + j)) * total;
        if (j < D) {
            v8f v = load_partial(g + j, D - j, 0) - exp_v8f(load_partial(y + j, D - j, 0)) * total;
            memcpy(dx + j, &v, (size_t)(D - j) * sizeof *dx);
        }
    }
}

/* Rows per parallel task: enough work per task to pay for handing it to a thread. */
static int64_t rows_per_task(int64_t D) {
    int64_t rows = 8192 / (D > 0 ? D : 1);
    return rows > 0 ? rows : 1;
}

/* ---- the ops ----------------------------------------------------------------------------------- */

typedef struct {
    int dim;
    bool log_space;
} softmax_ctx;

typedef struct {
    int64_t outer, D, inner;
} softmax_layout;

static softmax_layout layout_of(const bl_tensor *t, int dim) {
    softmax_layout l = {1, 1, 1};
    for (int d = 0; d < t->ndim; d++) {
        if (d < dim) l.outer *= t->shape[d];
        else if (d == dim) l.D = t->shape[d];
        else l.inner *= t->shape[d];
    }
    return l;
}

static bl_tensor *contiguous_no_grad(bl_tensor *t) {
    bl_tensor *c = NULL;
    BL_NO_GRAD { c = bl_contiguous(t); }
    return c;
}

static void softmax_forward_kernel(softmax_layout l, bl_dtype dt, const void *x, void *y, bool log_space) {
    if (dt == BL_F64) {
        ref_softmax_fwd_f64(l.outer, l.D, l.inner, x, y, log_space);
    } else if (l.inner > 1) {
        ref_softmax_fwd_f32(l.outer, l.D, l.inner, x, y, log_space);
    } else {
        int64_t step = rows_per_task(l.D), tasks = (l.outer + step - 1) / step;
#pragma omp parallel for schedule(static) if (tasks > 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t r0 = t * step, rows = l.outer - r0 < step ? l.outer - r0 : step;
            const float *xs = (const float *)x + r0 * l.D;
            float *ys = (float *)y + r0 * l.D;
            if (log_space) cpu_log_softmax_rows_f32(rows, l.D, xs, ys);
            else cpu_softmax_rows_f32(rows, l.D, xs, ys);
        }
    }
}

static void softmax_backward_kernel(softmax_layout l, bl_dtype dt, const void *y, const void *g, void *dx,
                                    bool log_space) {
    if (dt == BL_F64) {
        ref_softmax_bwd_f64(l.outer, l.D, l.inner, y, g, dx, log_space);
    } else if (l.inner > 1) {
        ref_softmax_bwd_f32(l.outer, l.D, l.inner, y, g, dx, log_space);
    } else {
        int64_t step = rows_per_task(l.D), tasks = (l.outer + step - 1) / step;
#pragma omp parallel for schedule(static) if (tasks > 1)
        for (int64_t t = 0; t < tasks; t++) {
            int64_t r0 = t * step, rows = l.outer - r0 < step ? l.outer - r0 : step;
            const float *ys = (const float *)y + r0 * l.D, *gs = (const float *)g + r0 * l.D;
            float *dxs = (float *)dx + r0 * l.D;
            if (log_space) cpu_log_softmax_bwd_rows_f32(rows, l.D, ys, gs, dxs);
            else cpu_softmax_bwd_rows_f32(rows, l.D, ys, gs, dxs);
        }
    }
}

static int softmax_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const softmax_ctx *ctx = node->ctx;
    bl_tensor *x = node->inputs[0], *y = node->out;
    if (!x->requires_grad) return BL_OK;
    if (!bl_grad_enabled()) {
        bl_tensor *gc = contiguous_no_grad(g), *dx = bl_empty_like(y);
        if (!gc || !dx) return BL_ERR;
        softmax_backward_kernel(layout_of(y, ctx->dim), y->dtype, y->data, gc->data, dx->data, ctx->log_space);
        gin[0] = dx;
        return BL_OK;
    }
    if (ctx->log_space)
        gin[0] = bl_sub(g, bl_mul(bl_softmax(x, ctx->dim), bl_sum_dim(g, ctx->dim, true)));
    else
        gin[0] = bl_mul(y, bl_sub(g, bl_sum_dim(bl_mul(g, y), ctx->dim, true)));
    return gin[0] ? BL_OK : BL_ERR;
}

static bl_tensor *softmax_op(bl_tensor *x, int dim, bool log_space) {
    BL_NONNULL(x);
    const char *name = log_space ? "log_softmax" : "softmax";
    BL_CHECK(bl_dtype_is_float(x->dtype), "%s: needs an F32 or F64 tensor, got %s", name, bl_dtype_name(x->dtype));
    int n_dims = x->ndim ? x->ndim : 1;
    BL_CHECK(dim >= -n_dims && dim < n_dims, "%s: dim %d out of range for a tensor of shape %s", name, dim,
             bl__shape(x));
    int d = dim < 0 ? dim + n_dims : dim;
    bl_tensor *xc = contiguous_no_grad(x), *y = bl_empty(x->dtype, x->ndim, x->shape);
    BL_NONNULL(xc, y);
    softmax_forward_kernel(layout_of(x, d), x->dtype, xc->data, y->data, log_space);
    bl_tensor *in[1] = {x};
    if (bl_autograd_needed(1, in)) {
        bl_node *node = bl_autograd_record(y, name, softmax_backward, 1, in, sizeof(softmax_ctx));
        if (!node) return NULL;
        *(softmax_ctx *)node->ctx = (softmax_ctx){d, log_space};
    }
    return y;
}

bl_tensor *bl_softmax(bl_tensor *x, int dim) { return softmax_op(x, dim, false); }
bl_tensor *bl_log_softmax(bl_tensor *x, int dim) { return softmax_op(x, dim, true); }
