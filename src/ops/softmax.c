/* Softmax and log-softmax along one dim, forward and backward.
 *
 * Kernels view the contiguous input as (outer, D, inner) and normalize along D. Reference kernels
 * (float and double, any inner) are plain loops; they are the F64 path and the F32 path for
 * inner > 1. The common F32 case, the last dim (inner == 1), has fused row kernels: one pass for
 * the max, one that exponentiates and sums (16 lanes at a time with the polynomial exp of
 * backend/cpu/vec_math.h), one that scales. Rows are spread over threads.
 *
 * Backward, with y the op's output and g its gradient:
 *   softmax:     dx = y * (g - sum_D(g * y))
 *   log_softmax: dx = g - softmax(x) * sum_D(g)      (softmax(x) = exp(y))
 * Under create_graph these are built from ops (so they differentiate again); otherwise a fused
 * kernel computes them in one sweep per row. The kernels report to the profiler as
 * "(log_)softmax.fwd" and "(log_)softmax.bwd" (no FLOPs counted: they are bound by memory). */
#include "backend/cpu/vec_math.h"
#include "ballast/ops.h"
#include "ballast/profile.h"
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

/* ---- fast F32 row kernels (inner == 1), 16 lanes at a time (backend/cpu/vec_math.h) ----------- */

static inline float sum_lanes(v16f v) {
    float s = 0;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
}

static float row_max(const float *x, int64_t D) {
    v16f m = V16(-INFINITY);
    int64_t j = 0;
    for (; j + 16 <= D; j += 16) {
        v16f v = v16_load(x + j);
        m = v16_select(v > m, v, m);
    }
    float max = -INFINITY;
    for (int i = 0; i < 16; i++) max = m[i] > max ? m[i] : max;
    for (; j < D; j++) max = x[j] > max ? x[j] : max;
    return max;
}

/* sum_j e^(x_j - shift); also writes the exponentials to e when e is not NULL. */
static float exp_sum(const float *x, int64_t D, float shift, float *e) {
    v16f sum = V16(0);
    int64_t j = 0;
    for (; j + 16 <= D; j += 16) {
        v16f v = v16_exp(v16_load(x + j) - shift);
        if (e) v16_store(e + j, v);
        sum += v;
    }
    if (j < D) { /* padding lanes hold -inf, whose exponential is 0 */
        v16f v = v16_exp(v16_load_partial(x + j, D - j, -INFINITY) - shift);
        if (e) v16_store_partial(e + j, D - j, v);
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
        for (; j + 16 <= D; j += 16) v16_store(y + j, v16_load(y + j) * inv_sum);
        for (; j < D; j++) y[j] *= inv_sum;
    }
}

static void cpu_log_softmax_rows_f32(int64_t rows, int64_t D, const float *x, float *y) {
    for (int64_t r = 0; r < rows; r++, x += D, y += D) {
        float max = row_max(x, D), log_sum = logf(exp_sum(x, D, max, NULL));
        /* (x - max) first: it is exact for the large entries, where max + log_sum would round. */
        int64_t j = 0;
        for (; j + 16 <= D; j += 16) v16_store(y + j, (v16_load(x + j) - max) - log_sum);
        for (; j < D; j++) y[j] = (x[j] - max) - log_sum;
    }
}

/* dx (rows, D) = y * (g - sum(g * y)) per row; dx may alias g. */
void cpu_softmax_bwd_rows_f32(int64_t rows, int64_t D, const float *y, const float *g, float *dx) {
    for (int64_t r = 0; r < rows; r++, y += D, g += D, dx += D) {
        v16f acc = V16(0);
        int64_t j = 0;
        for (; j + 16 <= D; j += 16) acc += v16_load(g + j) * v16_load(y + j);
        float dot = sum_lanes(acc);
        for (; j < D; j++) dot += g[j] * y[j];
        for (j = 0; j + 16 <= D; j += 16) v16_store(dx + j, v16_load(y + j) * (v16_load(g + j) - dot));
        for (; j < D; j++) dx[j] = y[j] * (g[j] - dot);
    }
}

/* dx (rows, D) = g - e^y * sum(g) per row. */
static void cpu_log_softmax_bwd_rows_f32(int64_t rows, int64_t D, const float *y, const float *g, float *dx) {
    for (int64_t r = 0; r < rows; r++, y += D, g += D, dx += D) {
        v16f acc = V16(0);
        int64_t j = 0;
        for (; j + 16 <= D; j += 16) acc += v16_load(g + j);
        float total = sum_lanes(acc);
        for (; j < D; j++) total += g[j];
        for (j = 0; j + 16 <= D; j += 16) v16_store(dx + j, v16_load(g + j) - v16_exp(v16_load(y + j)) * total);
        if (j < D) {
            v16f v = v16_load_partial(g + j, D - j, 0) - v16_exp(v16_load_partial(y + j, D - j, 0)) * total;
            v16_store_partial(dx + j, D - j, v);
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
        double t0 = bl_profile_start();
        softmax_backward_kernel(layout_of(y, ctx->dim), y->dtype, y->data, gc->data, dx->data, ctx->log_space);
        bl_profile_stop(ctx->log_space ? "log_softmax.bwd" : "softmax.bwd", t0, 0);
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
    double t0 = bl_profile_start();
    softmax_forward_kernel(layout_of(x, d), x->dtype, xc->data, y->data, log_space);
    bl_profile_stop(log_space ? "log_softmax.fwd" : "softmax.fwd", t0, 0);
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
