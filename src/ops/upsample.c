/* Resizing ops over NCHW planes: upsample_nearest2d and upsample_bilinear2d (any output size,
 * so they also shrink).
 *
 * Both are separable linear maps with at most two taps per axis: output row oh reads input rows
 * row0[oh] and row1[oh] with weights row_w0[oh] and row_w1[oh], and likewise for columns, so
 *   y[oh][ow] = sum over the two rows and two columns of row weight * column weight * x[row][column].
 * Nearest is the one-tap case. A "resample plan" holds these taps. The gradient of the map R is its
 * adjoint R^T (each output spread back to its taps with the same weights) and the gradient of R^T
 * is R, so the pair covers every derivative order. Index formulas follow torch: nearest reads
 * floor(o * in / out); bilinear reads source position o * (in - 1) / (out - 1) with align_corners,
 * else (o + 0.5) * in / out - 0.5 clamped at 0. */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "core/internal.h"

#include <string.h>

#define PARALLEL_MIN 32768

typedef struct {
    int64_t planes, H, W, OH, OW;
    bool nearest;                    /* one tap per axis: only row0 and col0 are read */
    int64_t *row0, *row1, *col0, *col1;
    double *row_w0, *row_w1, *col_w0, *col_w1;
} resample_plan;

static resample_plan *plan_alloc(const bl_tensor *x, int64_t OH, int64_t OW, bool nearest) {
    resample_plan *p = bl_arena_alloc(sizeof *p);
    int64_t *index = bl_arena_alloc((size_t)(2 * (OH + OW)) * sizeof *index);
    double *weight = bl_arena_alloc((size_t)(2 * (OH + OW)) * sizeof *weight);
    if (!p || !index || !weight) return NULL;
    *p = (resample_plan){.planes = x->shape[0] * x->shape[1], .H = x->shape[2], .W = x->shape[3], .OH = OH,
                         .OW = OW, .nearest = nearest};
    p->row0 = index, p->row1 = index + OH, p->col0 = index + 2 * OH, p->col1 = p->col0 + OW;
    p->row_w0 = weight, p->row_w1 = weight + OH, p->col_w0 = weight + 2 * OH, p->col_w1 = p->col_w0 + OW;
    return p;
}

static void nearest_taps(int64_t out, int64_t in, int64_t *i0, int64_t *i1, double *w0, double *w1) {
    for (int64_t o = 0; o < out; o++) {
        i0[o] = i1[o] = o * in / out;
        w0[o] = 1.0;
        w1[o] = 0.0;
    }
}

static void linear_taps(int64_t out, int64_t in, bool align_corners, int64_t *i0, int64_t *i1, double *w0,
                        double *w1) {
    double scale = align_corners ? (out > 1 ? (double)(in - 1) / (double)(out - 1) : 0.0) : (double)in / (double)out;
    for (int64_t o = 0; o < out; o++) {
        double src = align_corners ? scale * (double)o : scale * ((double)o + 0.5) - 0.5;
        if (src < 0) src = 0;
        int64_t lo = (int64_t)src;
        if (lo > in - 1) lo = in - 1;
        i0[o] = lo;
        i1[o] = lo < in - 1 ? lo + 1 : lo;
        w1[o] = src - (double)lo;
        w0[o] = 1.0 - w1[o];
    }
}

#define RESAMPLE_KERNELS(T, SUFFIX)                                                                          \
    /* y (planes, OH, OW) = R x for x (planes, H, W) */                                                      \
    static void resample_##SUFFIX(const resample_plan *p, T *y, const T *x) {                                \
        _Pragma("omp parallel for schedule(static) if (p->planes * p->OH * p->OW >= PARALLEL_MIN)")         \
        for (int64_t pl = 0; pl < p->planes; pl++) {                                                         \
            const T *xp = x + pl * p->H * p->W;                                                              \
            T *yp = y + pl * p->OH * p->OW;                                                                  \
            for (int64_t oh = 0; oh < p->OH; oh++) {                                                         \
                const T *r0 = xp + p->row0[oh] * p->W, *r1 = xp + p->row1[oh] * p->W;                        \
                T *yr = yp + oh * p->OW;                                                                     \
                if (p->nearest) {                                                                            \
                    for (int64_t ow = 0; ow < p->OW; ow++) yr[ow] = r0[p->col0[ow]];                         \
                    continue;                                                                                \
                }                                                                                            \
                T a0 = (T)p->row_w0[oh], a1 = (T)p->row_w1[oh];                                              \
                for (int64_t ow = 0; ow < p->OW; ow++) {                                                     \
                    int64_t c0 = p->col0[ow], c1 = p->col1[ow];                                              \
                    T b0 = (T)p->col_w0[ow], b1 = (T)p->col_w1[ow];                                          \
                    yr[ow] = a0 * (b0 * r0[c0] + b1 * r0[c1]) + a1 * (b0 * r1[c0] + b1 * r1[c1]);            \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }                                                                                                        \
    /* dx (planes, H, W) = R^T g for g (planes, OH, OW) */                                                   \
    static void resample_adjoint_##SUFFIX(const resample_plan *p, T *dx, const T *g) {                       \
        _Pragma("omp parallel for schedule(static) if (p->planes * p->OH * p->OW >= PARALLEL_MIN)")         \
        for (int64_t pl = 0; pl < p->planes; pl++) {                                                         \
            T *dp = dx + pl * p->H * p->W;                                                                   \
            const T *gp = g + pl * p->OH * p->OW;                                                            \
            memset(dp, 0, (size_t)(p->H * p->W) * sizeof(T));                                                \
            for (int64_t oh = 0; oh < p->OH; oh++) {                                                         \
                T *r0 = dp + p->row0[oh] * p->W, *r1 = dp + p->row1[oh] * p->W;                              \
                const T *gr = gp + oh * p->OW;                                                               \
                if (p->nearest) {                                                                            \
                    for (int64_t ow = 0; ow < p->OW; ow++) r0[p->col0[ow]] += gr[ow];                        \
                    continue;                                                                                \
                }                                                                                            \
                T a0 = (T)p->row_w0[oh], a1 = (T)p->row_w1[oh];                                              \
                for (int64_t ow = 0; ow < p->OW; ow++) {                                                     \
                    int64_t c0 = p->col0[ow], c1 = p->col1[ow];                                              \
                    T b0 = (T)p->col_w0[ow] * gr[ow], b1 = (T)p->col_w1[ow] * gr[ow];                        \
                    r0[c0] += a0 * b0;                                                                       \
                    r0[c1] += a0 * b1;                                                                       \
                    r1[c0] += a1 * b0;                                                                       \
                    r1[c1] += a1 * b1;                                                                       \
                }                                                                                            \
            }                                                                                                \
        }                                                                                                    \
    }

RESAMPLE_KERNELS(float, f32)
RESAMPLE_KERNELS(double, f64)

typedef struct {
    const resample_plan *plan;
    bool adjoint;
    const char *name, *adjoint_name; /* of the two directions, for the tape */
} resample_ctx;

static bl_tensor *resample(bl_tensor *x, const resample_ctx *c);

static int resample_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    resample_ctx flipped = *(const resample_ctx *)node->ctx;
    flipped.adjoint = !flipped.adjoint;
    gin[0] = resample(g, &flipped);
    return gin[0] ? BL_OK : BL_ERR;
}

/* R x (input (N, C, H, W)) or, when c->adjoint, R^T x (input (N, C, OH, OW)). */
static bl_tensor *resample(bl_tensor *x, const resample_ctx *c) {
    const resample_plan *p = c->plan;
    bl_tensor *xc = bl_contiguous(x);
    if (!xc) return NULL;
    int64_t shape[4] = {x->shape[0], x->shape[1], c->adjoint ? p->H : p->OH, c->adjoint ? p->W : p->OW};
    bl_tensor *y = bl_empty(x->dtype, 4, shape);
    if (!y) return NULL;
    const char *name = c->adjoint ? c->adjoint_name : c->name;
    double t0 = bl_profile_start();
    if (x->dtype == BL_F32)
        (c->adjoint ? resample_adjoint_f32 : resample_f32)(p, y->data, xc->data);
    else
        (c->adjoint ? resample_adjoint_f64 : resample_f64)(p, y->data, xc->data);
    bl_profile_stop(name, t0, 0);
    bl_node *node = bl_autograd_record(y, name, resample_backward, 1, &xc, sizeof *c);
    if (node) *(resample_ctx *)node->ctx = *c;
    return y;
}

static int check_args(const char *op, const bl_tensor *x, int out_h, int out_w) {
    BL_CHECK_RC(x->ndim == 4 && bl_dtype_is_float(x->dtype), "%s: expects an F32 or F64 input (N, C, H, W), got %s %s",
                op, bl_dtype_name(x->dtype), bl__shape(x));
    BL_CHECK_RC(out_h >= 1 && out_w >= 1 && x->shape[2] >= 1 && x->shape[3] >= 1,
                "%s: cannot resize %s to (%d, %d)", op, bl__shape(x), out_h, out_w);
    return BL_OK;
}

bl_tensor *bl_upsample_nearest2d(bl_tensor *x, int out_h, int out_w) {
    BL_NONNULL(x);
    if (check_args("upsample_nearest2d", x, out_h, out_w) != BL_OK) return NULL;
    resample_plan *p = plan_alloc(x, out_h, out_w, true);
    if (!p) return NULL;
    nearest_taps(p->OH, p->H, p->row0, p->row1, p->row_w0, p->row_w1);
    nearest_taps(p->OW, p->W, p->col0, p->col1, p->col_w0, p->col_w1);
    resample_ctx c = {p, false, "upsample_nearest2d", "upsample_nearest2d_backward"};
    return resample(x, &c);
}

bl_tensor *bl_upsample_bilinear2d(bl_tensor *x, int out_h, int out_w, bool align_corners) {
    BL_NONNULL(x);
    if (check_args("upsample_bilinear2d", x, out_h, out_w) != BL_OK) return NULL;
    resample_plan *p = plan_alloc(x, out_h, out_w, false);
    if (!p) return NULL;
    linear_taps(p->OH, p->H, align_corners, p->row0, p->row1, p->row_w0, p->row_w1);
    linear_taps(p->OW, p->W, align_corners, p->col0, p->col1, p->col_w0, p->col_w1);
    resample_ctx c = {p, false, "upsample_bilinear2d", "upsample_bilinear2d_backward"};
    return resample(x, &c);
}
