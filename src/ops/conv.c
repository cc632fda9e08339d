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
 * Kernels: F64 runs the reference loops; F32 runs oneDNN when the library is built with it, else
 * im2col + GEMM (BALLAST_CONV=ref|im2col|onednn in the environment forces one, for tests and
 * benchmarks). A first-order backward of conv2d (no create_graph) skips the composite ops and
 * runs both passes in one kernel call, which on oneDNN reorders dy once for both and reuses the
 * reordered x that the forward pass kept for it. A channels-last F32 input (bl_channels_last, also
 * defined here) runs on oneDNN without any reorder of activations, and its result and input
 * gradient are channels last too. conv2d_bn_act is conv2d followed by the fused batch norm; in
 * eval mode it folds the batch norm into one inference convolution. */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "backend/cpu/conv.h"
#include "backend/cpu/layout.h"
#include "backend/ref/ref_conv.h"
#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bl_conv_args bl_conv_args_make(int stride, int pad) {
    return (bl_conv_args){.stride_h = stride, .stride_w = stride, .pad_h = pad, .pad_w = pad, .dilation_h = 1,
                          .dilation_w = 1, .groups = 1};
}

/* ---- kernel choice and dispatch ---- */

typedef enum { IMPL_AUTO, IMPL_REF, IMPL_IM2COL, IMPL_ONEDNN } conv_impl;

/* Read on every call (a short scan of the environment, nothing next to a convolution) so that
 * tests can run the same op on each implementation. */
static conv_impl forced_impl(void) {
    const char *env = getenv("BALLAST_CONV");
    if (!env) return IMPL_AUTO;
    if (!strcmp(env, "ref")) return IMPL_REF;
    if (!strcmp(env, "im2col")) return IMPL_IM2COL;
    if (!strcmp(env, "onednn")) return IMPL_ONEDNN;
    return IMPL_AUTO;
}

/* oneDNN wins on every ResNet conv shape and pass, by 2-4x over im2col + GEMM even counting the
 * reorders to and from its blocked layout (bench/bench_conv.c), so it is used whenever present;
 * im2col + GEMM is the portable path and the fallback for shapes oneDNN declines. */
static conv_impl choose_impl(bl_dtype dt) {
    if (dt != BL_F32) return IMPL_REF;
    conv_impl forced = forced_impl();
    if (forced != IMPL_AUTO) return forced;
#ifdef BALLAST_HAVE_ONEDNN
    return IMPL_ONEDNN;
#else
    return IMPL_IM2COL;
#endif
}

/* The reference loops for one pass (see run_kernels for the arguments). */
static void run_reference(bl_conv_pass pass, const bl_conv_geom *g, bl_dtype dt, void *out, void *db, const void *a,
                          const void *b, const void *bias) {
    bool f32 = dt == BL_F32;
    switch (pass) {
    case BL_CONV_FWD:
        if (f32) ref_conv2d_fwd_f32(g, out, a, b, bias);
        else ref_conv2d_fwd_f64(g, out, a, b, bias);
        break;
    case BL_CONV_BWD_DATA:
        if (f32) ref_conv2d_bwd_data_f32(g, out, a, b, bias);
        else ref_conv2d_bwd_data_f64(g, out, a, b, bias);
        break;
    case BL_CONV_BWD_WEIGHT:
        if (f32) ref_conv2d_bwd_weight_f32(g, out, a, b);
        else ref_conv2d_bwd_weight_f64(g, out, a, b);
        if (db && f32) ref_channel_sum_f32(g->N, g->O, g->OH * g->OW, db, b);
        if (db && !f32) ref_channel_sum_f64(g->N, g->O, g->OH * g->OW, db, b);
        break;
    }
}

/* One pass of the convolution g on contiguous tensors:
 *   BL_CONV_FWD:        out (y) = conv(a (x), b (w)) + bias (O)
 *   BL_CONV_BWD_DATA:   out (dx) = d<conv(x, w), a (dy)>/dx with b (w), + bias (C)
 *   BL_CONV_BWD_WEIGHT: out (dw) = d<conv(a (x), w), b (dy)>/dw, and db (O) = dy summed per channel
 * bias and db may be NULL. For the forward pass, *saved_input (when saved_input is not NULL)
 * is where oneDNN may leave its reordered copy of x for the backward pass; it is set to NULL
 * when the pass ran elsewhere and left nothing there. */
static int run_kernels(bl_conv_pass pass, const bl_conv_geom *g, bl_tensor *out, bl_tensor *db, const bl_tensor *a,
                       const bl_tensor *b, const bl_tensor *bias, void **saved_input) {
    const void *bias_data = bias ? bias->data : NULL;
    void *db_data = db ? db->data : NULL;
    conv_impl impl = choose_impl(out->dtype);
    void *saved = saved_input ? *saved_input : NULL;
    if (saved_input) *saved_input = NULL;
    if (impl == IMPL_REF) {
        run_reference(pass, g, out->dtype, out->data, db_data, a->data, b->data, bias_data);
        return BL_OK;
    }
    size_t bytes = 0;
#ifdef BALLAST_HAVE_ONEDNN
    if (impl == IMPL_ONEDNN && onednn_conv2d_prepare(g, pass, bias || db, &bytes) != BL_OK) impl = IMPL_IM2COL;
#else
    (void)saved;
    if (impl == IMPL_ONEDNN) impl = IMPL_IM2COL;
#endif
    if (impl == IMPL_IM2COL) bytes = cpu_conv2d_workspace(g, pass);
    bl_scope s = bl_scope_begin();
    void *work = bl_arena_alloc(bytes);
    int rc = work ? BL_OK : BL_ERR;
    if (work && impl == IMPL_IM2COL) {
        switch (pass) {
        case BL_CONV_FWD: cpu_conv2d_fwd_f32(g, out->data, a->data, b->data, bias_data, work); break;
        case BL_CONV_BWD_DATA: cpu_conv2d_bwd_data_f32(g, out->data, a->data, b->data, bias_data, work); break;
        case BL_CONV_BWD_WEIGHT: cpu_conv2d_bwd_weight_f32(g, out->data, db_data, a->data, b->data, work); break;
        }
    }
#ifdef BALLAST_HAVE_ONEDNN
    if (work && impl == IMPL_ONEDNN) {
        switch (pass) {
        case BL_CONV_FWD:
            rc = onednn_conv2d_fwd_f32(g, out->data, a->data, b->data, bias_data, saved, work);
            if (saved_input && rc == BL_OK) *saved_input = saved;
            break;
        case BL_CONV_BWD_DATA: rc = onednn_conv2d_bwd_data_f32(g, out->data, a->data, b->data, bias_data, work); break;
        case BL_CONV_BWD_WEIGHT:
            rc = onednn_conv2d_bwd_weight_f32(g, out->data, db_data, a->data, b->data, work);
            break;
        }
    }
#endif
    bl_scope_end(s);
    return rc;
}

/* Multiply-adds of one pass, times 2 (each pass does the same number). */
static double conv_flops(const bl_conv_geom *g) {
    return 2.0 * (double)(g->N * g->O * g->OH * g->OW) * (double)(g->C / g->groups * g->KH * g->KW);
}

/* run_kernels, timed for the profile. */
static int run_pass(bl_conv_pass pass, const bl_conv_geom *g, bl_tensor *out, bl_tensor *db, const bl_tensor *a,
                    const bl_tensor *b, const bl_tensor *bias, void **saved_input) {
    static const char *const profile_names[] = {"conv2d.fwd", "conv2d.bwd_data", "conv2d.bwd_weight"};
    double t0 = bl_profile_start();
    int rc = run_kernels(pass, g, out, db, a, b, bias, saved_input);
    bl_profile_stop(profile_names[pass], t0, conv_flops(g));
    return rc;
}

/* ---- the three differentiable ops ---- */

typedef struct {
    bl_conv_geom geom;
    /* conv2d only: oneDNN's reordered copy of x left by the forward pass, or NULL */
    void *saved_input;
    bool saved_with_bias;
    /* conv2d only: x, y and the gradients are channels last and run on oneDNN as such */
    bool channels_last;
} conv_ctx;

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

#ifdef BALLAST_HAVE_ONEDNN
/* Both backward passes on oneDNN, sharing one reorder of dy and the forward pass's copy of x.
 * Returns false when oneDNN cannot run them (nothing written); *rc is its result otherwise. */
static bool onednn_backward(const conv_ctx *c, bl_tensor *dx, bl_tensor *dw, bl_tensor *db, const bl_tensor *dy,
                            const bl_tensor *w, const bl_tensor *x, int *rc) {
    size_t bytes;
    if (choose_impl(dy->dtype) != IMPL_ONEDNN || onednn_conv2d_bwd_prepare(&c->geom, db != NULL, &bytes) != BL_OK)
        return false;
    double t0 = bl_profile_start();
    bl_scope s = bl_scope_begin();
    void *work = bl_arena_alloc(bytes);
    onednn_saved_input saved = {c->saved_input, c->saved_with_bias};
    *rc = work ? onednn_conv2d_bwd_f32(&c->geom, dx ? dx->data : NULL, dw->data, db ? db->data : NULL, dy->data,
                                       w->data, x->data, &saved, work)
               : BL_ERR;
    bl_scope_end(s);
    bl_profile_stop("conv2d.bwd", t0, conv_flops(&c->geom) * (dx ? 2 : 1));
    return true;
}

/* Both backward passes of a channels-last conv2d on oneDNN; dx and dy are channels last too. */
static int onednn_backward_channels_last(const conv_ctx *c, bl_tensor *x, bl_tensor *w, bl_tensor *bias,
                                         bl_tensor *g, bl_tensor **gin) {
    const bl_conv_geom *geom = &c->geom;
    bl_tensor *dy = cpu_channels_last_values(g);
    bl_tensor *dx = wants_grad(x) ? cpu_empty_channels_last(BL_F32, geom->N, geom->C, geom->H, geom->W) : NULL;
    bl_tensor *dw = wants_grad(w) ? bl_empty(w->dtype, 4, w->shape) : NULL;
    bl_tensor *db = dw && wants_grad(bias) ? bl_empty(bias->dtype, 1, bias->shape) : NULL;
    size_t bytes;
    if (!dy || (wants_grad(x) && !dx) || (wants_grad(w) && !dw) || (dw && wants_grad(bias) && !db)) return BL_ERR;
    BL_CHECK_RC(onednn_conv2d_nhwc_bwd_prepare(geom, db != NULL, &bytes) == BL_OK,
                "conv2d: oneDNN has no channels-last backward for input %s", bl__shape(x));
    double t0 = bl_profile_start();
    bl_scope s = bl_scope_begin();
    void *work = bl_arena_alloc(bytes);
    int rc = work ? onednn_conv2d_nhwc_bwd_f32(geom, dx ? dx->data : NULL, dw ? dw->data : NULL,
                                              db ? db->data : NULL, dy->data, w->data, x->data, work)
                  : BL_ERR;
    bl_scope_end(s);
    bl_profile_stop("conv2d.bwd", t0, conv_flops(geom) * ((dx ? 1 : 0) + (dw ? 1 : 0)));
    gin[0] = dx;
    gin[1] = dw;
    gin[2] = dw ? db : wants_grad(bias) ? channel_sum(dy) : NULL;
    return rc != BL_OK || (wants_grad(bias) && !gin[2]) ? BL_ERR : BL_OK;
}
#endif

/* First-order gradients of conv2d straight from the kernels: nothing here is differentiated
 * again, so the two passes may share work. */
static int conv_forward_backward_fused(const conv_ctx *c, bl_tensor *x, bl_tensor *w, bl_tensor *bias, bl_tensor *g,
                                       bl_tensor **gin) {
#ifdef BALLAST_HAVE_ONEDNN
    if (c->channels_last) return onednn_backward_channels_last(c, x, w, bias, g, gin);
#endif
    bl_tensor *dy = bl_contiguous(g);
    bl_tensor *dx = wants_grad(x) ? bl_empty(x->dtype, 4, x->shape) : NULL;
    bl_tensor *dw = wants_grad(w) ? bl_empty(w->dtype, 4, w->shape) : NULL;
    /* The weight pass also sums dy per channel; without it, the bias gradient is its own pass. */
    bl_tensor *db = dw && wants_grad(bias) ? bl_empty(bias->dtype, 1, bias->shape) : NULL;
    if (!dy || (wants_grad(x) && !dx) || (wants_grad(w) && !dw) || (dw && wants_grad(bias) && !db)) return BL_ERR;
    bool done = false;
#ifdef BALLAST_HAVE_ONEDNN
    int rc;
    if (dw && (done = onednn_backward(c, dx, dw, db, dy, w, x, &rc)) && rc != BL_OK) return BL_ERR;
#endif
    if (!done) {
        if (dx) BL_TRY(run_pass(BL_CONV_BWD_DATA, &c->geom, dx, NULL, dy, w, NULL, NULL));
        if (dw) BL_TRY(run_pass(BL_CONV_BWD_WEIGHT, &c->geom, dw, db, x, dy, NULL, NULL));
    }
    gin[0] = dx;
    gin[1] = dw;
    gin[2] = dw ? db : wants_grad(bias) ? channel_sum(dy) : NULL;
    return wants_grad(bias) && !gin[2] ? BL_ERR : BL_OK;
}

static int conv_forward_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const conv_ctx *c = node->ctx;
    bl_tensor *x = node->inputs[0], *w = node->inputs[1], *bias = node->inputs[2];
    if (!bl_grad_enabled()) return conv_forward_backward_fused(c, x, w, bias, g, gin);
    if (wants_grad(x) && !(gin[0] = conv_backward_data(g, w, NULL, &c->geom))) return BL_ERR;
    if (wants_grad(w) && !(gin[1] = conv_backward_weight(x, g, &c->geom))) return BL_ERR;
    if (wants_grad(bias) && !(gin[2] = channel_sum(g))) return BL_ERR;
    return BL_OK;
}

static int conv_backward_data_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bl_conv_geom *geom = &((const conv_ctx *)node->ctx)->geom;
    bl_tensor *dy = node->inputs[0], *w = node->inputs[1], *bias = node->inputs[2];
    if (wants_grad(dy) && !(gin[0] = conv_forward(g, w, NULL, geom))) return BL_ERR;
    if (wants_grad(w) && !(gin[1] = conv_backward_weight(g, dy, geom))) return BL_ERR;
    if (wants_grad(bias) && !(gin[2] = channel_sum(g))) return BL_ERR;
    return BL_OK;
}

static int conv_backward_weight_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bl_conv_geom *geom = &((const conv_ctx *)node->ctx)->geom;
    bl_tensor *x = node->inputs[0], *dy = node->inputs[1];
    if (wants_grad(x) && !(gin[0] = conv_backward_data(dy, g, NULL, geom))) return BL_ERR;
    if (wants_grad(dy) && !(gin[1] = conv_forward(x, g, NULL, geom))) return BL_ERR;
    return BL_OK;
}

static void record(bl_tensor *out, const char *name, bl_backward_fn backward, int n, bl_tensor *const *inputs,
                   const conv_ctx *c) {
    bl_node *node = bl_autograd_record(out, name, backward, n, inputs, sizeof *c);
    if (node) memcpy(node->ctx, c, sizeof *c);
}

/* The ops below take shapes already checked against g; gradients may arrive as strided views. */

/* Room for oneDNN's copy of x when the weight gradient will be needed, so that the backward
 * pass does not reorder x a second time; NULL when there is nothing to gain. */
static void *saved_input_room(const bl_conv_geom *g, bl_tensor *const *inputs) {
#ifdef BALLAST_HAVE_ONEDNN
    if (inputs[0]->dtype != BL_F32 || !wants_grad(inputs[1]) || !bl_autograd_needed(3, inputs) ||
        choose_impl(BL_F32) != IMPL_ONEDNN)
        return NULL;
    size_t bytes = onednn_conv2d_saved_input_bytes(g, inputs[2] != NULL);
    return bytes ? bl_arena_alloc(bytes) : NULL;
#else
    (void)g;
    (void)inputs;
    return NULL;
#endif
}

/* conv2d of a channels-last x on oneDNN, giving a channels-last y; NULL with *declined set (and no
 * error) when this geometry has no fast channels-last kernel. */
static bl_tensor *conv_forward_channels_last(bl_tensor *x, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g,
                                             bool *declined) {
    *declined = false;
#ifdef BALLAST_HAVE_ONEDNN
    /* The backward must be able to stay channels last too, else neither pass does. */
    size_t bytes, backward_bytes;
    bool recorded = bl_autograd_needed(3, (bl_tensor *[]){x, w, bias});
    if (onednn_conv2d_nhwc_prepare(g, BL_CONV_FWD, bias != NULL, &bytes) != BL_OK ||
        (recorded && onednn_conv2d_nhwc_bwd_prepare(g, bias != NULL, &backward_bytes) != BL_OK)) {
        *declined = true;
        return NULL;
    }
    bl_tensor *wc = bl_contiguous(w), *bc = bias ? bl_contiguous(bias) : NULL;
    bl_tensor *y = cpu_empty_channels_last(BL_F32, g->N, g->O, g->OH, g->OW);
    if (!wc || (bias && !bc) || !y) return NULL;
    double t0 = bl_profile_start();
    bl_scope s = bl_scope_begin();
    void *work = bl_arena_alloc(bytes);
    int rc = work ? onednn_conv2d_nhwc_fwd_f32(g, y->data, x->data, wc->data, bc ? bc->data : NULL, work) : BL_ERR;
    bl_scope_end(s);
    bl_profile_stop("conv2d.fwd", t0, conv_flops(g));
    if (rc != BL_OK) return NULL;
    record(y, "conv2d", conv_forward_backward, 3, (bl_tensor *[]){x, wc, bc},
           &(conv_ctx){.geom = *g, .channels_last = true});
    return y;
#else
    (void)x, (void)w, (void)bias, (void)g;
    *declined = true;
    return NULL;
#endif
}

static bl_tensor *conv_forward(bl_tensor *x, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g) {
    if (x->dtype == BL_F32 && cpu_is_channels_last(x) && !bl_is_contiguous(x) && choose_impl(BL_F32) == IMPL_ONEDNN) {
        bool declined;
        bl_tensor *y = conv_forward_channels_last(x, w, bias, g, &declined);
        if (!declined) return y;
    }
    bl_tensor *xc = bl_contiguous(x), *wc = bl_contiguous(w), *bc = bias ? bl_contiguous(bias) : NULL;
    BL_NONNULL(xc, wc);
    if (bias && !bc) return NULL;
    bl_tensor *inputs[3] = {xc, wc, bc};
    conv_ctx c = {*g, saved_input_room(g, inputs), bc != NULL};
    bl_tensor *y = bl_empty(x->dtype, 4, (int64_t[]){g->N, g->O, g->OH, g->OW});
    if (!y || run_pass(BL_CONV_FWD, g, y, NULL, xc, wc, bc, &c.saved_input) != BL_OK) return NULL;
    record(y, "conv2d", conv_forward_backward, 3, inputs, &c);
    return y;
}

static bl_tensor *conv_backward_data(bl_tensor *dy, bl_tensor *w, bl_tensor *bias, const bl_conv_geom *g) {
    bl_tensor *dyc = bl_contiguous(dy), *wc = bl_contiguous(w), *bc = bias ? bl_contiguous(bias) : NULL;
    BL_NONNULL(dyc, wc);
    if (bias && !bc) return NULL;
    bl_tensor *dx = bl_empty(dy->dtype, 4, (int64_t[]){g->N, g->C, g->H, g->W});
    if (!dx || run_pass(BL_CONV_BWD_DATA, g, dx, NULL, dyc, wc, bc, NULL) != BL_OK) return NULL;
    record(dx, "conv2d_backward_data", conv_backward_data_backward, 3, (bl_tensor *[]){dyc, wc, bc},
           &(conv_ctx){.geom = *g});
    return dx;
}

static bl_tensor *conv_backward_weight(bl_tensor *x, bl_tensor *dy, const bl_conv_geom *g) {
    bl_tensor *xc = bl_contiguous(x), *dyc = bl_contiguous(dy);
    BL_NONNULL(xc, dyc);
    bl_tensor *dw = bl_empty(x->dtype, 4, (int64_t[]){g->O, g->C / g->groups, g->KH, g->KW});
    if (!dw || run_pass(BL_CONV_BWD_WEIGHT, g, dw, NULL, xc, dyc, NULL, NULL) != BL_OK) return NULL;
    record(dw, "conv2d_backward_weight", conv_backward_weight_backward, 2, (bl_tensor *[]){xc, dyc},
           &(conv_ctx){.geom = *g});
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

/* The geometry of conv2d(x, weight, bias, args) into *g, after checking that they fit. */
static int conv2d_geometry(const bl_tensor *x, const bl_tensor *weight, const bl_tensor *bias, bl_conv_args args,
                           bl_conv_geom *g) {
    BL_TRY(check_tensors("conv2d", x, weight, bias, args));
    *g = geom_from_args(args);
    g->N = x->shape[0], g->C = x->shape[1], g->H = x->shape[2], g->W = x->shape[3];
    g->O = weight->shape[0], g->KH = weight->shape[2], g->KW = weight->shape[3];
    BL_CHECK_RC(g->C % g->groups == 0 && g->O % g->groups == 0 && weight->shape[1] * g->groups == g->C,
                "conv2d: input %s and weight %s do not fit groups %d (weight must be (O, C/groups, KH, KW) with C "
                "and O divisible by groups)",
                bl__shape(x), bl__shape(weight), args.groups);
    BL_CHECK_RC(!bias || bias->shape[0] == g->O, "conv2d: bias %s for weight %s, expected (%lld)", bl__shape(bias),
                bl__shape(weight), (long long)g->O);
    BL_CHECK_RC(bl_conv_geom_output_size(g),
                "conv2d: input %s is smaller than the dilated kernel of weight %s with padding (%d, %d)",
                bl__shape(x), bl__shape(weight), args.pad_h, args.pad_w);
    return BL_OK;
}

bl_tensor *bl_conv2d(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_conv_args args) {
    BL_NONNULL(x, weight);
    bl_conv_geom g;
    if (conv2d_geometry(x, weight, bias, args, &g) != BL_OK) return NULL;
    return conv_forward(x, weight, bias, &g);
}

/* ---- convolution with the batch norm after it ---- */

/* The eval-mode conv2d + batch norm as one oneDNN inference convolution: the batch norm folded
 * into the weights and a bias, the residual add and ReLU as post-ops. NULL with *declined set
 * (and no error) when this case does not qualify or oneDNN has no fast kernel for it. */
static bl_tensor *conv_bn_folded(bl_tensor *x, bl_tensor *weight, bl_conv_args args, bl_tensor *bn_weight,
                                 bl_tensor *bn_bias, bl_tensor *running_mean, bl_tensor *running_var,
                                 bl_tensor *residual, bool relu, double eps, bool *declined) {
    *declined = true;
#ifdef BALLAST_HAVE_ONEDNN
    if (x->dtype != BL_F32 || !cpu_is_channels_last(x) || bl_is_contiguous(x) || choose_impl(BL_F32) != IMPL_ONEDNN ||
        !running_mean || !running_var)
        return NULL;
    bl_conv_geom g;
    if (conv2d_geometry(x, weight, NULL, args, &g) != BL_OK) {
        *declined = false;
        return NULL;
    }
    /* Any mismatch of the other arguments is left to the unfused ops, which report it. */
    bl_tensor *params[4] = {bn_weight, bn_bias, running_mean, running_var};
    for (int i = 0; i < 4; i++)
        if (params[i] && (params[i]->dtype != BL_F32 || params[i]->ndim != 1 || params[i]->shape[0] != g.O))
            return NULL;
    const int64_t out_shape[4] = {g.N, g.O, g.OH, g.OW};
    if (residual && (residual->dtype != BL_F32 || residual->ndim != 4 ||
                     memcmp(residual->shape, out_shape, sizeof out_shape) != 0))
        return NULL;
    size_t bytes;
    if (onednn_conv2d_nhwc_fused_prepare(&g, residual != NULL, relu, &bytes) != BL_OK) return NULL;
    *declined = false;
    /* w' = w * s and b' = beta - mean * s per output channel, s = gamma / sqrt(var + eps). */
    bl_tensor *wc = bl_contiguous(bl_detach(weight)), *rk = residual ? cpu_channels_last_values(residual) : NULL;
    bl_tensor *folded = bl_empty(BL_F32, 4, weight->shape), *shift = bl_empty(BL_F32, 1, &g.O);
    bl_tensor *y = cpu_empty_channels_last(BL_F32, g.N, g.O, g.OH, g.OW);
    if (!wc || (residual && !rk) || !folded || !shift || !y) return NULL;
    const int64_t per_channel = bl_numel(weight) / g.O;
    const float *w = wc->data;
    float *wf = folded->data, *b = shift->data;
    for (int64_t o = 0; o < g.O; o++) {
        double scale = (bn_weight ? bl_get_flat(bn_weight, o) : 1.0) / sqrt(bl_get_flat(running_var, o) + eps);
        b[o] = (float)((bn_bias ? bl_get_flat(bn_bias, o) : 0.0) - bl_get_flat(running_mean, o) * scale);
        for (int64_t i = 0; i < per_channel; i++) wf[o * per_channel + i] = (float)(w[o * per_channel + i] * scale);
    }
    double t0 = bl_profile_start();
    bl_scope s = bl_scope_begin();
    void *work = bl_arena_alloc(bytes);
    int rc = work ? onednn_conv2d_nhwc_fused_f32(&g, y->data, x->data, folded->data, shift->data,
                                                rk ? rk->data : NULL, relu, work)
                  : BL_ERR;
    bl_scope_end(s);
    bl_profile_stop("conv2d_bn_act.fwd", t0, conv_flops(&g));
    return rc == BL_OK ? y : NULL;
#else
    (void)x, (void)weight, (void)args, (void)bn_weight, (void)bn_bias, (void)running_mean, (void)running_var;
    (void)residual, (void)relu, (void)eps;
    return NULL;
#endif
}

bl_tensor *bl_conv2d_bn_act(bl_tensor *x, bl_tensor *weight, bl_conv_args args, bl_tensor *bn_weight,
                            bl_tensor *bn_bias, bl_tensor *running_mean, bl_tensor *running_var, bl_tensor *residual,
                            bool relu, bool training, double momentum, double eps) {
    BL_NONNULL(x, weight);
    bl_tensor *differentiable[5] = {x, weight, bn_weight, bn_bias, residual};
    if (!training && !bl_autograd_needed(5, differentiable)) {
        bool declined;
        bl_tensor *y = conv_bn_folded(x, weight, args, bn_weight, bn_bias, running_mean, running_var, residual, relu,
                                      eps, &declined);
        if (!declined) return y;
    }
    return bl_batch_norm_act(bl_conv2d(x, weight, NULL, args), bn_weight, bn_bias, running_mean, running_var,
                             residual, relu, training, momentum, eps);
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

/* ---- channels-last order ---- */

/* The copy changes memory order only, so the gradient passes through unchanged. */
static int channels_last_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    (void)node;
    gin[0] = g;
    return BL_OK;
}

bl_tensor *bl_channels_last(bl_tensor *x) {
    BL_NONNULL(x);
    BL_CHECK(x->ndim == 4, "channels_last: expected an (N, C, H, W) tensor, got %s", bl__shape(x));
    if (cpu_is_channels_last(x)) return x;
    bl_tensor *y = cpu_channels_last_values(x);
    bl_autograd_record(y, "channels_last", channels_last_backward, 1, &x, 0);
    return y;
}
