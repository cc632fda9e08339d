/* Convolution ops: conv2d and conv_transpose2d, built from three differentiable ops over one
 * convolution geometry (x (N, C, H, W) -> y (N, O, OH, OW)):
 *   conv_forward(x, w)          y  = x * w                      (conv2d)
 *   conv_backward_data(dy, w)   dx = d<x * w, dy>/dx            (conv_transpose2d)
 *   conv_backward_weight(x, dy) dw = d<x * w, dy>/dw
 * Each is bilinear, and the gradients of each are the other two:
 *   conv_forward:         gx = backward_data(g, w),  gw = backward_weight(x, g)
 *   conv_backward_data:   gdy = forward(g, w),       gw = backward_weight(g, dy)
 *   conv_backward_weight: gx = backward_data(dy, g), gdy = forward(x, g)
 * so derivatives of any order stay within these three ops. A bias adds to the output channels
 * (O for conv2d, C for the transposed conv); its gradient is a per-channel sum.
 *
 * Kernels: F64 runs the reference loops; F32 runs oneDNN or im2col + GEMM, chosen per shape and
 * pass (BALLAST_CONV=ref|im2col|onednn in the environment forces one, for benchmarks). */
#include "ballast/ops.h"

#include "backend/cpu/conv.h"
#include "backend/ref/ref_conv.h"
#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

bl_conv_args bl_conv_args_make(int stride, int pad) {
    return (bl_conv_args){.stride_h = stride, .stride_w = stride, .pad_h = pad, .pad_w = pad, .dilation_h = 1,
                          .dilation_w = 1, .groups = 1};
}

/* ---- kernel choice and dispatch ---- */

typedef enum { IMPL_AUTO, IMPL_REF, IMPL_IM2COL, IMPL_ONEDNN } conv_impl;

static conv_impl forced_impl(void) {
    static int cached = -1;
    if (cached < 0) {
        const char *env = getenv("BALLAST_CONV");
        cached = !env ? IMPL_AUTO
                 : !strcmp(env, "ref")    ? IMPL_REF
                 : !strcmp(env, "im2col") ? IMPL_IM2COL
                 : !strcmp(env, "onednn") ? IMPL_ONEDNN
                                          : IMPL_AUTO;
    }
    return (conv_impl)cached;
}

static conv_impl choose_impl(const bl_conv_geom *g, bl_dtype dt, bl_conv_pass pass) {
    if (dt != BL_F32) return IMPL_REF;
    conv_impl forced = forced_impl();
    if (forced != IMPL_AUTO) return forced;
#ifdef BALLAST_HAVE_ONEDNN
    (void)g;
    (void)pass;
    return IMPL_ONEDNN;
#else
    (void)g;
    (void)pass;
    return IMPL_IM2COL;
#endif
}

/* Scratch for one F32 kernel call of `impl` (which may fall back from oneDNN to im2col); NULL with
 * an error set when the arena is exhausted. Released by the caller's scope. */
static void *f32_workspace(const bl_conv_geom *g, bl_conv_pass pass, bool with_bias, conv_impl *impl) {
    size_t bytes = 0;
#ifdef BALLAST_HAVE_ONEDNN
    if (*impl == IMPL_ONEDNN && onednn_conv2d_prepare(g, pass, with_bias, &bytes) != BL_OK) *impl = IMPL_IM2COL;
#else
    (void)with_bias;
    if (*impl == IMPL_ONEDNN) *impl = IMPL_IM2COL;
#endif
    if (*impl == IMPL_IM2COL) bytes = cpu_conv2d_workspace(g, pass);
    return bl_arena_alloc(bytes);
}

/* y = conv(x, w) + bias; every tensor contiguous, bias may be NULL. */
static int run_forward(const bl_conv_geom *g, bl_tensor *y, const bl_tensor *x, const bl_tensor *w,
                       const bl_tensor *bias) {
    const void *b = bias ? bias->data : NULL;
    conv_impl impl = choose_impl(g, y->dtype, BL_CONV_FWD);
    if (y->dtype == BL_F64) {
        ref_conv2d_fwd_f64(g, y->data, x->data, w->data, b);
        return BL_OK;
    }
    if (impl == IMPL_REF) {
        ref_conv2d_fwd_f32(g, y->data, x->data, w->data, b);
        return BL_OK;
    }
    bl_scope s = bl_scope_begin();
    int rc = BL_ERR;
    void *work = f32_workspace(g, BL_CONV_FWD, b != NULL, &impl);
    if (work && impl == IMPL_IM2COL) {
        cpu_conv2d_fwd_f32(g, y->data, x->data, w->data, b, work);
        rc = BL_OK;
    }
#ifdef BALLAST_HAVE_ONEDNN
    if (work && impl == IMPL_ONEDNN) rc = onednn_conv2d_fwd_f32(g, y->data, x->data, w->data, b, work);
#endif
    bl_scope_end(s);
    return rc;
}

/* dx = d<conv(x, w), dy>/dx + bias (C); bias may be NULL. */
static int run_backward_data(const bl_conv_geom *g, bl_tensor *dx, const bl_tensor *dy, const bl_tensor *w,
                             const bl_tensor *bias) {
    const void *b = bias ? bias->data : NULL;
    conv_impl impl = choose_impl(g, dx->dtype, BL_CONV_BWD_DATA);
    if (dx->dtype == BL_F64) {
        ref_conv2d_bwd_data_f64(g, dx->data, dy->data, w->data, b);
        return BL_OK;
    }
    if (impl == IMPL_REF) {
        ref_conv2d_bwd_data_f32(g, dx->data, dy->data, w->data, b);
        return BL_OK;
    }
    bl_scope s = bl_scope_begin();
    int rc = BL_ERR;
    void *work = f32_workspace(g, BL_CONV_BWD_DATA, false, &impl);
    if (work && impl == IMPL_IM2COL) {
        cpu_conv2d_bwd_data_f32(g, dx->data, dy->data, w->data, b, work);
        rc = BL_OK;
    }
#ifdef BALLAST_HAVE_ONEDNN
    if (work && impl == IMPL_ONEDNN) rc = onednn_conv2d_bwd_data_f32(g, dx->data, dy->data, w->data, b, work);
#endif
    bl_scope_end(s);
    return rc;
}

/* dw = d<conv(x, w), dy>/dw, and db (O) = dy summed per channel when db is not NULL. */
static int run_backward_weight(const bl_conv_geom *g, bl_tensor *dw, bl_tensor *db, const bl_tensor *x,
                               const bl_tensor *dy) {
    void *b = db ? db->data : NULL;
    conv_impl impl = choose_impl(g, dw->dtype, BL_CONV_BWD_WEIGHT);
    if (dw->dtype == BL_F64 || impl == IMPL_REF) {
        if (dw->dtype == BL_F64) {
            ref_conv2d_bwd_weight_f64(g, dw->data, x->data, dy->data);
            if (b) ref_channel_sum_f64(g->N, g->O, g->OH * g->OW, b, dy->data);
        } else {
            ref_conv2d_bwd_weight_f32(g, dw->data, x->data, dy->data);
            if (b) ref_channel_sum_f32(g->N, g->O, g->OH * g->OW, b, dy->data);
        }
        return BL_OK;
    }
    bl_scope s = bl_scope_begin();
    int rc = BL_ERR;
    void *work = f32_workspace(g, BL_CONV_BWD_WEIGHT, b != NULL, &impl);
    if (work && impl == IMPL_IM2COL) {
        cpu_conv2d_bwd_weight_f32(g, dw->data, b, x->data, dy->data, work);
        rc = BL_OK;
    }
#ifdef BALLAST_HAVE_ONEDNN
    if (work && impl == IMPL_ONEDNN) rc = onednn_conv2d_bwd_weight_f32(g, dw->data, b, x->data, dy->data, work);
#endif
    bl_scope_end(s);
    return rc;
}

/* ---- the three differentiable ops ---- */

static bl_tensor *conv_forward(bl_tensor *x, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g);
static bl_tensor *conv_backward_data(bl_tensor *dy, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g);
static bl_tensor *conv_backward_weight(bl_tensor *x, bl_tensor *dy, const bl_conv_geom *g);

/* t (N, C, H, W) summed to (C): a bias gradient. Built from ops when the result must be
 * differentiable, from one kernel otherwise. */
static bl_tensor *channel_sum(bl_tensor *t) {
    int64_t C = t->shape[1];
    if (bl_grad_enabled()) return bl_reshape(bl_sum_to(t, 4, (int64_t[]){1, C, 1, 1}), 1, &C);
    bl_tensor *src = bl_contiguous(t), *sums = bl_empty(t->dtype, 1, &C);
    if (!src || !sums) return NULL;
    int64_t hw = t->shape[2] * t->shape[3];
    if (t->dtype == BL_F32)
        cpu_channel_sum_f32(t->shape[0], C, hw, sums->data, src->data);
    else
        ref_channel_sum_f64(t->shape[0], C, hw, sums->data, src->data);
    return sums;
}

static bool wants_grad(const bl_tensor *t) { return t && t->requires_grad; }

static int conv_forward_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bl_conv_geom *geom = node->ctx;
    bl_tensor *x = node->inputs[0], *w = node->inputs[1], *bias = node->inputs[2];
    if (wants_grad(x) && !(gin[0] = conv_backward_data(g, w, NULL, geom))) return BL_ERR;
    if (bl_grad_enabled()) {
        if (wants_grad(w) && !(gin[1] = conv_backward_weight(x, g, geom))) return BL_ERR;
        if (wants_grad(bias) && !(gin[2] = channel_sum(g))) return BL_ERR;
        return BL_OK;
    }
    /* First order only: the weight and bias gradients come from one kernel call, which with
     * oneDNN reads dy once for both. */
    if (wants_grad(w)) {
        bl_tensor *dy = bl_contiguous(g);
        bl_tensor *dw = bl_empty(w->dtype, w->ndim, w->shape);
        bl_tensor *db = wants_grad(bias) ? bl_empty(bias->dtype, 1, bias->shape) : NULL;
        if (!dy || !dw || (wants_grad(bias) && !db)) return BL_ERR;
        BL_TRY(run_backward_weight(geom, dw, db, x, dy));
        gin[1] = dw;
        gin[2] = db;
    } else if (wants_grad(bias) && !(gin[2] = channel_sum(g))) {
        return BL_ERR;
    }
    return BL_OK;
}

static int conv_backward_data_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bl_conv_geom *geom = node->ctx;
    bl_tensor *dy = node->inputs[0], *w = node->inputs[1], *bias = node->inputs[2];
    if (wants_grad(dy) && !(gin[0] = conv_forward(g, w, NULL, geom))) return BL_ERR;
    if (wants_grad(w) && !(gin[1] = conv_backward_weight(g, dy, geom))) return BL_ERR;
    if (wants_grad(bias) && !(gin[2] = channel_sum(g))) return BL_ERR;
    return BL_OK;
}

static int conv_backward_weight_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bl_conv_geom *geom = node->ctx;
    bl_tensor *x = node->inputs[0], *dy = node->inputs[1];
    if (wants_grad(x) && !(gin[0] = conv_backward_data(dy, g, NULL, geom))) return BL_ERR;
    if (wants_grad(dy) && !(gin[1] = conv_forward(x, g, NULL, geom))) return BL_ERR;
    return BL_OK;
}

static void record(bl_tensor *out, const char *name, bl_backward_fn backward, int n, bl_tensor *const *inputs,
                   const bl_conv_geom *g) {
    bl_node *node = bl_autograd_record(out, name, backward, n, inputs, sizeof *g);
    if (node) memcpy(node->ctx, g, sizeof *g);
}

/* The ops below take shapes already checked against g; gradients may arrive as strided views. */

static bl_tensor *conv_forward(bl_tensor *x, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g) {
    bl_tensor *xc = bl_contiguous(x), *wc = bl_contiguous(w), *bc = bias ? bl_contiguous(bias) : NULL;
    BL_NONNULL(xc, wc);
    if (bias && !bc) return NULL;
    bl_tensor *y = bl_empty(x->dtype, 4, (int64_t[]){g->N, g->O, g->OH, g->OW});
    if (!y || run_forward(g, y, xc, wc, bc) != BL_OK) return NULL;
    record(y, "conv2d", conv_forward_backward, 3, (bl_tensor *[]){xc, wc, bc}, g);
    return y;
}

static bl_tensor *conv_backward_data(bl_tensor *dy, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g) {
    bl_tensor *dyc = bl_contiguous(dy), *wc = bl_contiguous(w), *bc = bias ? bl_contiguous(bias) : NULL;
    BL_NONNULL(dyc, wc);
    if (bias && !bc) return NULL;
    bl_tensor *dx = bl_empty(dy->dtype, 4, (int64_t[]){g->N, g->C, g->H, g->W});
    if (!dx || run_backward_data(g, dx, dyc, wc, bc) != BL_OK) return NULL;
    record(dx, "conv2d_backward_data", conv_backward_data_backward, 3, (bl_tensor *[]){dyc, wc, bc}, g);
    return dx;
}

static bl_tensor *conv_backward_weight(bl_tensor *x, bl_tensor *dy, const bl_conv_geom *g) {
    bl_tensor *xc = bl_contiguous(x), *dyc = bl_contiguous(dy);
    BL_NONNULL(xc, dyc);
    bl_tensor *dw = bl_empty(x->dtype, 4, (int64_t[]){g->O, g->C / g->groups, g->KH, g->KW});
    if (!dw || run_backward_weight(g, dw, NULL, xc, dyc) != BL_OK) return NULL;
    record(dw, "conv2d_backward_weight", conv_backward_weight_backward, 2, (bl_tensor *[]){xc, dyc}, g);
    return dw;
}

/* ---- public ops: argument checks and geometry ---- */

static int check_tensors(const char *op, const bl_tensor *x, const bl_tensor *w, const bl_tensor *bias,
                         bl_conv_args a) {
    BL_CHECK_RC(x->ndim == 4 && w->ndim == 4, "%s: expects input (N, C, H, W) and a 4-D weight, got %s and %s", op,
                bl__shape(x), bl__shape(w));
    BL_CHECK_RC(bl_dtype_is_float(x->dtype) && x->dtype == w->dtype,
                "%s: input and weight need the same float dtype, got %s and %s", op, bl_dtype_name(x->dtype),
                bl_dtype_name(w->dtype));
    BL_CHECK_RC(!bias || (bias->dtype == x->dtype && bias->ndim == 1),
                "%s: bias must be a 1-D %s tensor, got %s %s", op, bl_dtype_name(x->dtype),
                bias ? bl_dtype_name(bias->dtype) : "", bias ? bl__shape(bias) : "");
    BL_CHECK_RC(a.stride_h >= 1 && a.stride_w >= 1 && a.dilation_h >= 1 && a.dilation_w >= 1 && a.pad_h >= 0 &&
                    a.pad_w >= 0 && a.groups >= 1,
                "%s: invalid arguments stride (%d, %d), padding (%d, %d), dilation (%d, %d), groups %d", op,
                a.stride_h, a.stride_w, a.pad_h, a.pad_w, a.dilation_h, a.dilation_w, a.groups);
    return BL_OK;
}

static bl_conv_geom geom_from_args(bl_conv_args a) {
    return (bl_conv_geom){.stride_h = a.stride_h, .stride_w = a.stride_w, .pad_h = a.pad_h, .pad_w = a.pad_w,
                          .dilation_h = a.dilation_h, .dilation_w = a.dilation_w, .groups = a.groups};
}

bl_tensor *bl_conv2d(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_conv_args args) {
    BL_NONNULL(x, weight);
    if (check_tensors("conv2d", x, weight, bias, args) != BL_OK) return NULL;
    bl_conv_geom g = geom_from_args(args);
    g.N = x->shape[0], g.C = x->shape[1], g.H = x->shape[2], g.W = x->shape[3];
    g.O = weight->shape[0], g.KH = weight->shape[2], g.KW = weight->shape[3];
    BL_CHECK(g.C % g.groups == 0 && g.O % g.groups == 0 && weight->shape[1] * g.groups == g.C,
             "conv2d: input %s and weight %s do not fit groups %d (weight must be (O, C/groups, KH, KW) with C "
             "and O divisible by groups)",
             bl__shape(x), bl__shape(weight), args.groups);
    BL_CHECK(!bias || bias->shape[0] == g.O, "conv2d: bias %s for weight %s, expected (%lld)", bl__shape(bias),
             bl__shape(weight), (long long)g.O);
    BL_CHECK(bl_conv_geom_output_size(&g),
             "conv2d: input %s is smaller than the dilated kernel of weight %s with padding (%d, %d)", bl__shape(x),
             bl__shape(weight), args.pad_h, args.pad_w);
    return conv_forward(x, weight, bias, &g);
}

bl_tensor *bl_conv_transpose2d(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_conv_args args) {
    BL_NONNULL(x, weight);
    if (check_tensors("conv_transpose2d", x, weight, bias, args) != BL_OK) return NULL;
    BL_CHECK(args.output_pad_h >= 0 && args.output_pad_w >= 0 &&
                 args.output_pad_h < (args.stride_h > args.dilation_h ? args.stride_h : args.dilation_h) &&
                 args.output_pad_w < (args.stride_w > args.dilation_w ? args.stride_w : args.dilation_w),
             "conv_transpose2d: output padding (%d, %d) must be smaller than the stride or the dilation",
             args.output_pad_h, args.output_pad_w);
    /* The transposed convolution is the backward-data pass of the convolution that maps its
     * output back to its input: that convolution's input has O = weight[1] * groups channels. */
    bl_conv_geom g = geom_from_args(args);
    g.N = x->shape[0], g.O = x->shape[1], g.OH = x->shape[2], g.OW = x->shape[3];
    g.C = weight->shape[1] * args.groups, g.KH = weight->shape[2], g.KW = weight->shape[3];
    g.H = (g.OH - 1) * g.stride_h - 2 * g.pad_h + g.dilation_h * (g.KH - 1) + args.output_pad_h + 1;
    g.W = (g.OW - 1) * g.stride_w - 2 * g.pad_w + g.dilation_w * (g.KW - 1) + args.output_pad_w + 1;
    BL_CHECK(weight->shape[0] == g.O && g.O % g.groups == 0,
             "conv_transpose2d: input %s and weight %s do not fit groups %d (weight must be (C, O/groups, KH, KW) "
             "with C the input's channels, divisible by groups)",
             bl__shape(x), bl__shape(weight), args.groups);
    BL_CHECK(!bias || bias->shape[0] == g.C, "conv_transpose2d: bias %s for weight %s, expected (%lld)",
             bl__shape(bias), bl__shape(weight), (long long)g.C);
    BL_CHECK(g.H > 0 && g.W > 0, "conv_transpose2d: input %s with weight %s gives an empty output", bl__shape(x),
             bl__shape(weight));
    bl_conv_geom check = g;
    BL_CHECK(bl_conv_geom_output_size(&check) && check.OH == g.OH && check.OW == g.OW,
             "conv_transpose2d: padding (%d, %d) is too large for input %s and weight %s", args.pad_h, args.pad_w,
             bl__shape(x), bl__shape(weight));
    return conv_backward_data(x, weight, bias, &g);
}
