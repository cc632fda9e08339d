/* Pooling ops over NCHW planes: max_pool2d, avg_pool2d, adaptive_avg_pool2d, adaptive_max_pool2d.
 *
 * Every pool reads, for output (oh, ow), the input window rows [h_start[oh], h_end[oh]) x columns
 * [w_start[ow], w_end[ow]) of its plane, already clipped to the input; a "window plan" holds these
 * bounds, so fixed and adaptive pools share their kernels and differ only in how the plan is
 * built (torch's formulas in both cases).
 *  - Average pools are linear maps A; the gradient of A is its adjoint A^T (each output's share
 *    spread back over its window), and the gradient of A^T is A again, so the pair covers every
 *    derivative order.
 *  - Max pools record the argmax of each window (its index in the input plane; the first maximum,
 *    or a NaN, which propagates as in torch). The output is then a gather of the input at those
 *    indices: its gradient scatters into a zero plane, and the gradient of that scatter is the
 *    gather again.
 * Average pools of F32 channels-last inputs run on that order and keep it (the global average
 * pool at the end of a CNN kept channels last then needs no conversion either way). */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "backend/cpu/layout.h"
#include "core/internal.h"

#include <math.h>
#include <string.h>

/* Planes with at least this many input elements in total are split over the threads. */
#define PARALLEL_MIN 32768

typedef struct {
    int64_t planes, H, W, OH, OW;
    int64_t *h_start, *h_end, *w_start, *w_end; /* (OH) and (OW), clipped to the input */
    int64_t *h_div, *w_div;                     /* an average divides by h_div[oh] * w_div[ow] */
} window_plan;

static window_plan *plan_alloc(const bl_tensor *x, int64_t OH, int64_t OW) {
    window_plan *p = bl_arena_alloc(sizeof *p);
    int64_t *bounds = bl_arena_alloc((size_t)(3 * (OH + OW)) * sizeof *bounds);
    if (!p || !bounds) return NULL;
    *p = (window_plan){.planes = x->shape[0] * x->shape[1], .H = x->shape[2], .W = x->shape[3], .OH = OH, .OW = OW};
    p->h_start = bounds, p->h_end = bounds + OH, p->h_div = bounds + 2 * OH;
    p->w_start = bounds + 3 * OH, p->w_end = p->w_start + OW, p->w_div = p->w_start + 2 * OW;
    return p;
}

/* Fixed windows (torch, ceil_mode off): output o covers [o * stride - pad, + kernel), clipped to
 * the input. With count_include_pad the divisor is the full kernel, padding included. */
static void fixed_windows(int64_t out, int64_t in, int kernel, int stride, int pad, int64_t *start, int64_t *end,
                          int64_t *div) {
    for (int64_t o = 0; o < out; o++) {
        int64_t s = o * stride - pad, e = s + kernel;
        start[o] = s < 0 ? 0 : s;
        end[o] = e > in ? in : e;
        div[o] = kernel;
    }
}

/* Adaptive windows (torch): output o of `out` covers [floor(o * in / out), ceil((o + 1) * in / out)). */
static void adaptive_windows(int64_t out, int64_t in, int64_t *start, int64_t *end, int64_t *div) {
    for (int64_t o = 0; o < out; o++) {
        start[o] = o * in / out;
        end[o] = ((o + 1) * in + out - 1) / out;
        div[o] = end[o] - start[o];
    }
}

/* ---- kernels (one plane per iteration; planes are independent) ---- */

#define POOL_KERNELS(T, SUFFIX)                                                                              \
    /* y (planes, OH, OW) = window averages of x (planes, H, W) */                                           \
    static void window_average_##SUFFIX(const window_plan *p, T *y, const T *x) {                            \
        _Pragma("omp parallel for schedule(static) if (p->planes * p->H * p->W >= PARALLEL_MIN)")           \
        for (int64_t pl = 0; pl < p->planes; pl++) {                                                         \
            const T *xp = x + pl * p->H * p->W;                                                              \
            T *yp = y + pl * p->OH * p->OW;                                                                  \
            for (int64_t oh = 0; oh < p->OH; oh++)                                                           \
                for (int64_t ow = 0; ow < p->OW; ow++) {                                                     \
                    T acc = 0;                                                                               \
                    for (int64_t h = p->h_start[oh]; h < p->h_end[oh]; h++)                                  \
                        for (int64_t w = p->w_start[ow]; w < p->w_end[ow]; w++) acc += xp[h * p->W + w];     \
                    yp[oh * p->OW + ow] = acc / (T)(p->h_div[oh] * p->w_div[ow]);                            \
                }                                                                                            \
        }                                                                                                    \
    }                                                                                                        \
    /* dx (planes, H, W) = the adjoint of window_average applied to g (planes, OH, OW) */                    \
    static void window_average_adjoint_##SUFFIX(const window_plan *p, T *dx, const T *g) {                   \
        _Pragma("omp parallel for schedule(static) if (p->planes * p->H * p->W >= PARALLEL_MIN)")           \
        for (int64_t pl = 0; pl < p->planes; pl++) {                                                         \
            T *dp = dx + pl * p->H * p->W;                                                                   \
            const T *gp = g + pl * p->OH * p->OW;                                                            \
            memset(dp, 0, (size_t)(p->H * p->W) * sizeof(T));                                                \
            for (int64_t oh = 0; oh < p->OH; oh++)                                                           \
                for (int64_t ow = 0; ow < p->OW; ow++) {                                                     \
                    T share = gp[oh * p->OW + ow] / (T)(p->h_div[oh] * p->w_div[ow]);                        \
                    for (int64_t h = p->h_start[oh]; h < p->h_end[oh]; h++)                                  \
                        for (int64_t w = p->w_start[ow]; w < p->w_end[ow]; w++) dp[h * p->W + w] += share;   \
                }                                                                                            \
        }                                                                                                    \
    }                                                                                                        \
    /* y (planes, OH, OW) = window maxima of x, argmax (planes, OH, OW) = their index in the plane */        \
    static void window_max_##SUFFIX(const window_plan *p, T *y, int32_t *argmax, const T *x) {               \
        _Pragma("omp parallel for schedule(static) if (p->planes * p->H * p->W >= PARALLEL_MIN)")           \
        for (int64_t pl = 0; pl < p->planes; pl++) {                                                         \
            const T *xp = x + pl * p->H * p->W;                                                              \
            for (int64_t oh = 0; oh < p->OH; oh++)                                                           \
                for (int64_t ow = 0; ow < p->OW; ow++) {                                                     \
                    int64_t best = p->h_start[oh] * p->W + p->w_start[ow];                                   \
                    T best_value = xp[best];                                                                 \
                    for (int64_t h = p->h_start[oh]; h < p->h_end[oh]; h++)                                  \
                        for (int64_t w = p->w_start[ow]; w < p->w_end[ow]; w++) {                            \
                            T v = xp[h * p->W + w];                                                          \
                            if (v > best_value || isnan(v)) {                                                \
                                best_value = v;                                                              \
                                best = h * p->W + w;                                                         \
                            }                                                                                \
                        }                                                                                    \
                    int64_t o = pl * p->OH * p->OW + oh * p->OW + ow;                                        \
                    y[o] = best_value;                                                                       \
                    argmax[o] = (int32_t)best;                                                               \
                }                                                                                            \
        }                                                                                                    \
    }                                                                                                        \
    /* y (planes, OH*OW) = x (planes, H*W) at argmax; the adjoint when scatter: x += g at argmax */          \
    static void plane_gather_##SUFFIX(const window_plan *p, const int32_t *argmax, T *out, const T *in,     \
                                      bool scatter) {                                                        \
        int64_t ohw = p->OH * p->OW, hw = p->H * p->W;                                                       \
        _Pragma("omp parallel for schedule(static) if (p->planes * hw >= PARALLEL_MIN)")                    \
        for (int64_t pl = 0; pl < p->planes; pl++) {                                                         \
            const int32_t *ip = argmax + pl * ohw;                                                           \
            if (scatter) {                                                                                   \
                T *dp = out + pl * hw;                                                                       \
                memset(dp, 0, (size_t)hw * sizeof(T));                                                       \
                for (int64_t j = 0; j < ohw; j++) dp[ip[j]] += in[pl * ohw + j];                             \
            } else {                                                                                         \
                for (int64_t j = 0; j < ohw; j++) out[pl * ohw + j] = in[pl * hw + ip[j]];                   \
            }                                                                                                \
        }                                                                                                    \
    }

POOL_KERNELS(float, f32)
POOL_KERNELS(double, f64)

/* Channels-last average pools (F32): each position's C channels are adjacent, so a window's sum
 * is a sum of C-vectors. One output row (image, oh) per iteration for the average; one image per
 * iteration for the adjoint, whose windows may overlap. */

/* y (N, OH, OW, C) = window averages of x (N, H, W, C) */
static void window_average_nhwc_f32(const window_plan *p, int64_t C, float *y, const float *x) {
    const int64_t N = p->planes / C;
    _Pragma("omp parallel for schedule(static) if (p->planes * p->H * p->W >= PARALLEL_MIN)")
    for (int64_t row = 0; row < N * p->OH; row++) {
        const int64_t n = row / p->OH, oh = row % p->OH;
        const float *xn = x + n * p->H * p->W * C;
        for (int64_t ow = 0; ow < p->OW; ow++) {
            float *yo = y + (row * p->OW + ow) * C;
            const float inv = 1.0f / (float)(p->h_div[oh] * p->w_div[ow]);
            for (int64_t c = 0; c < C; c++) yo[c] = 0;
            for (int64_t h = p->h_start[oh]; h < p->h_end[oh]; h++)
                for (int64_t w = p->w_start[ow]; w < p->w_end[ow]; w++) {
                    const float *xp = xn + (h * p->W + w) * C;
#pragma omp simd
                    for (int64_t c = 0; c < C; c++) yo[c] += xp[c];
                }
#pragma omp simd
            for (int64_t c = 0; c < C; c++) yo[c] *= inv;
        }
    }
}

/* dx (N, H, W, C) = the adjoint of window_average_nhwc applied to g (N, OH, OW, C) */
static void window_average_adjoint_nhwc_f32(const window_plan *p, int64_t C, float *dx, const float *g) {
    const int64_t N = p->planes / C;
    _Pragma("omp parallel for schedule(static) if (p->planes * p->H * p->W >= PARALLEL_MIN)")
    for (int64_t n = 0; n < N; n++) {
        float *dn = dx + n * p->H * p->W * C;
        memset(dn, 0, (size_t)(p->H * p->W * C) * sizeof *dn);
        for (int64_t oh = 0; oh < p->OH; oh++)
            for (int64_t ow = 0; ow < p->OW; ow++) {
                const float *go = g + ((n * p->OH + oh) * p->OW + ow) * C;
                const float inv = 1.0f / (float)(p->h_div[oh] * p->w_div[ow]);
                for (int64_t h = p->h_start[oh]; h < p->h_end[oh]; h++)
                    for (int64_t w = p->w_start[ow]; w < p->w_end[ow]; w++) {
                        float *dp = dn + (h * p->W + w) * C;
#pragma omp simd
                        for (int64_t c = 0; c < C; c++) dp[c] += go[c] * inv;
                    }
            }
    }
}

/* ---- average pools: the linear pair ---- */

typedef struct {
    const window_plan *plan;
    bool adjoint;
    const char *name, *adjoint_name; /* of the two directions, for the tape */
    bool channels_last;              /* F32 input and result kept channels last (see layout.h) */
} average_ctx;

static bl_tensor *window_average(bl_tensor *x, const average_ctx *c);

static int window_average_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    average_ctx flipped = *(const average_ctx *)node->ctx;
    flipped.adjoint = !flipped.adjoint;
    gin[0] = window_average(g, &flipped);
    return gin[0] ? BL_OK : BL_ERR;
}

/* The average pool described by c->plan, or its adjoint (input (N, C, OH, OW) -> (N, C, H, W)). */
static bl_tensor *window_average(bl_tensor *x, const average_ctx *c) {
    const window_plan *p = c->plan;
    bl_tensor *xc = c->channels_last ? cpu_channels_last_values(x) : bl_contiguous(x);
    if (!xc) return NULL;
    int64_t shape[4] = {x->shape[0], x->shape[1], c->adjoint ? p->H : p->OH, c->adjoint ? p->W : p->OW};
    bl_tensor *y = c->channels_last ? cpu_empty_channels_last(x->dtype, shape[0], shape[1], shape[2], shape[3])
                                    : bl_empty(x->dtype, 4, shape);
    if (!y) return NULL;
    const char *name = c->adjoint ? c->adjoint_name : c->name;
    double t0 = bl_profile_start();
    if (c->channels_last)
        (c->adjoint ? window_average_adjoint_nhwc_f32 : window_average_nhwc_f32)(p, x->shape[1], y->data, xc->data);
    else if (x->dtype == BL_F32)
        (c->adjoint ? window_average_adjoint_f32 : window_average_f32)(p, y->data, xc->data);
    else
        (c->adjoint ? window_average_adjoint_f64 : window_average_f64)(p, y->data, xc->data);
    bl_profile_stop(name, t0, 0);
    bl_node *node = bl_autograd_record(y, name, window_average_backward, 1, &xc, sizeof *c);
    if (node) *(average_ctx *)node->ctx = *c;
    return y;
}

/* ---- max pools: gather at the argmax, and its adjoint scatter ---- */

typedef struct {
    const window_plan *plan;
    const int32_t *argmax;
    bool scatter;
    const char *name, *scatter_name;
} argmax_ctx;

static void record_argmax(bl_tensor *out, bl_tensor *in, const argmax_ctx *c);

/* Gathers x (N, C, H, W) at the argmax, or scatters x (N, C, OH, OW) back to a zero plane. */
static bl_tensor *plane_gather(bl_tensor *x, const argmax_ctx *c) {
    const window_plan *p = c->plan;
    bl_tensor *xc = bl_contiguous(x);
    if (!xc) return NULL;
    int64_t shape[4] = {x->shape[0], x->shape[1], c->scatter ? p->H : p->OH, c->scatter ? p->W : p->OW};
    bl_tensor *y = bl_empty(x->dtype, 4, shape);
    if (!y) return NULL;
    double t0 = bl_profile_start();
    if (x->dtype == BL_F32)
        plane_gather_f32(p, c->argmax, y->data, xc->data, c->scatter);
    else
        plane_gather_f64(p, c->argmax, y->data, xc->data, c->scatter);
    bl_profile_stop(c->scatter ? c->scatter_name : c->name, t0, 0);
    record_argmax(y, xc, c);
    return y;
}

static int plane_gather_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    argmax_ctx flipped = *(const argmax_ctx *)node->ctx;
    flipped.scatter = !flipped.scatter;
    gin[0] = plane_gather(g, &flipped);
    return gin[0] ? BL_OK : BL_ERR;
}

static void record_argmax(bl_tensor *out, bl_tensor *in, const argmax_ctx *c) {
    bl_node *node =
        bl_autograd_record(out, c->scatter ? c->scatter_name : c->name, plane_gather_backward, 1, &in, sizeof *c);
    if (node) *(argmax_ctx *)node->ctx = *c;
}

/* y = window maxima of x under plan p, recorded as the gather at their argmax. */
static bl_tensor *window_max(bl_tensor *x, window_plan *p, const char *name, const char *scatter_name) {
    bl_tensor *xc = bl_contiguous(x);
    bl_tensor *y = bl_empty(x->dtype, 4, (int64_t[]){x->shape[0], x->shape[1], p->OH, p->OW});
    int32_t *argmax = bl_arena_alloc((size_t)(p->planes * p->OH * p->OW) * sizeof *argmax);
    if (!xc || !y || !argmax) return NULL;
    double t0 = bl_profile_start();
    if (x->dtype == BL_F32)
        window_max_f32(p, y->data, argmax, xc->data);
    else
        window_max_f64(p, y->data, argmax, xc->data);
    bl_profile_stop(name, t0, 0);
    argmax_ctx c = {p, argmax, false, name, scatter_name};
    record_argmax(y, xc, &c);
    return y;
}

/* ---- public ops ---- */

static int check_input(const char *op, const bl_tensor *x) {
    BL_CHECK_RC(x->ndim == 4 && bl_dtype_is_float(x->dtype), "%s: expects an F32 or F64 input (N, C, H, W), got %s %s",
                op, bl_dtype_name(x->dtype), bl__shape(x));
    BL_CHECK_RC(x->shape[2] * x->shape[3] < INT32_MAX, "%s: input planes of %s are too large", op, bl__shape(x));
    return BL_OK;
}

/* Plan of a fixed-window pool; stride 0 means stride = kernel, as torch's default. */
static window_plan *fixed_plan(const char *op, const bl_tensor *x, int kernel, int *stride, int pad) {
    if (check_input(op, x) != BL_OK) return NULL;
    if (*stride == 0) *stride = kernel;
    BL_CHECK(kernel >= 1 && *stride >= 1 && pad >= 0 && pad <= kernel / 2,
             "%s: kernel %d, stride %d, padding %d (need kernel >= 1, stride >= 1, 0 <= padding <= kernel / 2)", op,
             kernel, *stride, pad);
    int64_t room_h = x->shape[2] + 2 * pad - kernel, room_w = x->shape[3] + 2 * pad - kernel;
    BL_CHECK(room_h >= 0 && room_w >= 0, "%s: input %s is smaller than the kernel %d with padding %d", op,
             bl__shape(x), kernel, pad);
    window_plan *p = plan_alloc(x, room_h / *stride + 1, room_w / *stride + 1);
    if (!p) return NULL;
    fixed_windows(p->OH, p->H, kernel, *stride, pad, p->h_start, p->h_end, p->h_div);
    fixed_windows(p->OW, p->W, kernel, *stride, pad, p->w_start, p->w_end, p->w_div);
    return p;
}

static window_plan *adaptive_plan(const char *op, const bl_tensor *x, int out_h, int out_w) {
    if (check_input(op, x) != BL_OK) return NULL;
    BL_CHECK(out_h >= 1 && out_w >= 1, "%s: output size (%d, %d) must be positive", op, out_h, out_w);
    window_plan *p = plan_alloc(x, out_h, out_w);
    if (!p) return NULL;
    adaptive_windows(p->OH, p->H, p->h_start, p->h_end, p->h_div);
    adaptive_windows(p->OW, p->W, p->w_start, p->w_end, p->w_div);
    return p;
}

bl_tensor *bl_max_pool2d(bl_tensor *x, int kernel, int stride, int pad) {
    BL_NONNULL(x);
    window_plan *p = fixed_plan("max_pool2d", x, kernel, &stride, pad);
    return p ? window_max(x, p, "max_pool2d", "max_pool2d_backward") : NULL;
}

bl_tensor *bl_adaptive_max_pool2d(bl_tensor *x, int out_h, int out_w) {
    BL_NONNULL(x);
    window_plan *p = adaptive_plan("adaptive_max_pool2d", x, out_h, out_w);
    return p ? window_max(x, p, "adaptive_max_pool2d", "adaptive_max_pool2d_backward") : NULL;
}

/* Average pools keep an F32 channels-last input's order (see layout.h); others run on NCHW planes. */
static bool keeps_channels_last(const bl_tensor *x) {
    return x->dtype == BL_F32 && cpu_is_channels_last(x) && !bl_is_contiguous(x);
}

bl_tensor *bl_avg_pool2d(bl_tensor *x, int kernel, int stride, int pad) {
    BL_NONNULL(x);
    window_plan *p = fixed_plan("avg_pool2d", x, kernel, &stride, pad);
    average_ctx c = {p, false, "avg_pool2d", "avg_pool2d_backward", keeps_channels_last(x)};
    return p ? window_average(x, &c) : NULL;
}

bl_tensor *bl_adaptive_avg_pool2d(bl_tensor *x, int out_h, int out_w) {
    BL_NONNULL(x);
    window_plan *p = adaptive_plan("adaptive_avg_pool2d", x, out_h, out_w);
    average_ctx c = {p, false, "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", keeps_channels_last(x)};
    return p ? window_average(x, &c) : NULL;
}
