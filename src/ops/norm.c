/* Normalization ops: batch norm, layer norm, and group and instance norm (one implementation: a
 * layer norm over (N, G, C/G * spatial) rows followed by a per-channel affine map).
 *
 * Batch and layer norm run a fused kernel forward and record one node. Their backward has two
 * forms: for a first-order backward, one fused kernel computing dx, dweight and dbias from the
 * saved statistics; when the backward is itself recorded (create_graph), the same gradients built
 * from ops, recomputing the statistics from x so that their dependence on x is differentiated too. */
#include "ballast/ops.h"

#include "backend/cpu/norm.h"
#include "backend/ref/ref_norm.h"
#include "core/internal.h"

#include <string.h>

/* t as the kernels read it: contiguous and cut from the graph (copied only when t is strided). */
static bl_tensor *kernel_view(bl_tensor *t) { return t ? bl_contiguous(bl_detach(t)) : NULL; }

static void *data_of(bl_tensor *t) { return t ? t->data : NULL; }

static bool wants_grad(const bl_tensor *t) { return t && t->requires_grad; }

/* A shape-only tensor struct, to compare shapes and name them in messages. */
static bl_tensor shape_struct(int ndim, const int64_t *shape) {
    bl_tensor t = {.ndim = ndim};
    memcpy(t.shape, shape, (size_t)ndim * sizeof *shape);
    return t;
}

/* weight, bias and running statistics: absent, or of x's dtype and the expected shape. */
static int check_param(const char *op, const char *what, const bl_tensor *p, const bl_tensor *x,
                       const bl_tensor *expected) {
    if (!p) return BL_OK;
    BL_CHECK_RC(p->dtype == x->dtype, "%s: %s has dtype %s but x has dtype %s", op, what, bl_dtype_name(p->dtype),
                bl_dtype_name(x->dtype));
    BL_CHECK_RC(bl_same_shape(p, expected), "%s: %s of shape %s does not fit x of shape %s (expected %s)", op,
                what, bl__shape(p), bl__shape(x), bl__shape(expected));
    return BL_OK;
}

/* ---- batch norm ---- */

typedef struct {
    bl_batch_norm_args args;
    bl_tensor *x;      /* contiguous, detached: what the fused backward reads */
    bl_tensor *mean;   /* (C): the statistics the forward normalized with */
    bl_tensor *invstd; /* (C) */
} batch_norm_ctx;

static bl_tensor *sum_over_nc(bl_tensor *t) { return bl_sum_dim(bl_sum_dim(t, 2, true), 0, true); }
static bl_tensor *mean_over_nc(bl_tensor *t) { return bl_mean_dim(bl_mean_dim(t, 2, true), 0, true); }

static int batch_norm_backward_fused(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const batch_norm_ctx *ctx = node->ctx;
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1], *bias = node->inputs[2];
    bl_tensor *gk = kernel_view(g), *wk = kernel_view(weight);
    bl_tensor *dx = wants_grad(x) ? bl_empty_like(x) : NULL;
    bl_tensor *dweight = wants_grad(weight) ? bl_empty_like(weight) : NULL;
    bl_tensor *dbias = wants_grad(bias) ? bl_empty_like(bias) : NULL;
    if (!gk || (weight && !wk) || (wants_grad(x) && !dx) || (wants_grad(weight) && !dweight) ||
        (wants_grad(bias) && !dbias))
        return BL_ERR;
    if (g->dtype == BL_F32)
        cpu_batch_norm_bwd(&ctx->args, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data, data_of(wk),
                           data_of(dx), data_of(dweight), data_of(dbias));
    else
        ref_batch_norm_bwd_f64(&ctx->args, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data,
                               data_of(wk), data_of(dx), data_of(dweight), data_of(dbias));
    gin[0] = dx;
    gin[1] = dweight;
    gin[2] = dbias;
    return BL_OK;
}

static int batch_norm_backward_composite(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const batch_norm_ctx *ctx = node->ctx;
    const bl_batch_norm_args *a = &ctx->args;
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1], *bias = node->inputs[2];
    const int64_t ncs[3] = {a->N, a->C, a->S}, channel[3] = {1, a->C, 1};
    bl_tensor *x3 = bl_reshape(x, 3, ncs), *g3 = bl_reshape(g, 3, ncs), *invstd, *xhat;
    if (a->training) {
        bl_tensor *centered = bl_sub(x3, mean_over_nc(x3));
        invstd = bl_pow_scalar(bl_add_scalar(mean_over_nc(bl_mul(centered, centered)), a->eps), -0.5);
        xhat = bl_mul(centered, invstd);
    } else {
        invstd = bl_reshape(ctx->invstd, 3, channel);
        xhat = bl_mul(bl_sub(x3, bl_reshape(ctx->mean, 3, channel)), invstd);
    }
    bl_tensor *gw = weight ? bl_mul(g3, bl_reshape(weight, 3, channel)) : g3;
    if (wants_grad(x)) {
        bl_tensor *dxhat = gw;
        if (a->training)
            dxhat = bl_sub(bl_sub(gw, mean_over_nc(gw)), bl_mul(xhat, mean_over_nc(bl_mul(gw, xhat))));
        if (!(gin[0] = bl_reshape(bl_mul(dxhat, invstd), x->ndim, x->shape))) return BL_ERR;
    }
    if (wants_grad(weight) && !(gin[1] = bl_reshape(sum_over_nc(bl_mul(g3, xhat)), weight->ndim, weight->shape)))
        return BL_ERR;
    if (wants_grad(bias) && !(gin[2] = bl_reshape(sum_over_nc(g3), bias->ndim, bias->shape))) return BL_ERR;
    return BL_OK;
}

static int batch_norm_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    return bl_grad_enabled() ? batch_norm_backward_composite(node, g, gin) : batch_norm_backward_fused(node, g, gin);
}

/* running = (1 - momentum) * running + momentum * scale * batch, for the C values of each. */
static void blend_running(bl_tensor *running, const bl_tensor *batch, double momentum, double scale) {
    for (int64_t c = 0; c < bl_numel(batch); c++)
        bl_set_flat(running, c, (1.0 - momentum) * bl_get_flat(running, c) + momentum * scale * bl_get_flat(batch, c));
}

bl_tensor *bl_batch_norm(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_tensor *running_mean,
                         bl_tensor *running_var, bool training, double momentum, double eps) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "batch_norm: x must be F32 or F64, got %s", bl_dtype_name(x->dtype));
    BL_CHECK(x->ndim >= 2, "batch_norm: x of shape %s, expected (N, C, ...)", bl__shape(x));
    bl_batch_norm_args args = {.N = x->shape[0], .C = x->shape[1], .S = 1, .eps = eps, .training = training};
    for (int d = 2; d < x->ndim; d++) args.S *= x->shape[d];
    const bl_tensor per_channel = shape_struct(1, &args.C);
    if (check_param("batch_norm", "weight", weight, x, &per_channel) != BL_OK ||
        check_param("batch_norm", "bias", bias, x, &per_channel) != BL_OK ||
        check_param("batch_norm", "running_mean", running_mean, x, &per_channel) != BL_OK ||
        check_param("batch_norm", "running_var", running_var, x, &per_channel) != BL_OK)
        return NULL;
    BL_CHECK(training || (running_mean && running_var), "batch_norm: eval mode needs running_mean and running_var");
    const int64_t M = args.N * args.S;
    BL_CHECK(!training || M > 1, "batch_norm: training needs more than 1 value per channel, x has shape %s",
             bl__shape(x));

    bl_tensor *xk = kernel_view(x), *wk = kernel_view(weight), *bk = kernel_view(bias);
    bl_tensor *mean = bl_empty(x->dtype, 1, &args.C), *var = bl_empty(x->dtype, 1, &args.C);
    bl_tensor *invstd = bl_empty(x->dtype, 1, &args.C), *y = bl_empty(x->dtype, x->ndim, x->shape);
    if (!xk || (weight && !wk) || (bias && !bk) || !mean || !var || !invstd || !y) return NULL;
    if (!training && (bl_copy_(mean, running_mean) != BL_OK || bl_copy_(var, running_var) != BL_OK)) return NULL;
    if (x->dtype == BL_F32)
        cpu_batch_norm_fwd(&args, xk->data, data_of(wk), data_of(bk), mean->data, var->data, invstd->data, y->data);
    else
        ref_batch_norm_fwd_f64(&args, xk->data, data_of(wk), data_of(bk), mean->data, var->data, invstd->data,
                               y->data);
    if (training) {
        /* Like PyTorch, the running variance tracks the unbiased estimate; normalization uses the biased one. */
        if (running_mean) blend_running(running_mean, mean, momentum, 1.0);
        if (running_var) blend_running(running_var, var, momentum, (double)M / (double)(M - 1));
    }

    bl_tensor *inputs[3] = {x, weight, bias};
    bl_node *node = bl_autograd_record(y, "batch_norm", batch_norm_backward, 3, inputs, sizeof(batch_norm_ctx));
    if (node) *(batch_norm_ctx *)node->ctx = (batch_norm_ctx){args, xk, mean, invstd};
    return y;
}

/* ---- layer norm ---- */

typedef struct {
    bl_layer_norm_args args;
    bl_tensor *x;      /* contiguous, detached */
    bl_tensor *mean;   /* (R) */
    bl_tensor *invstd; /* (R) */
} layer_norm_ctx;

static int layer_norm_backward_fused(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const layer_norm_ctx *ctx = node->ctx;
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1], *bias = node->inputs[2];
    bl_tensor *gk = kernel_view(g), *wk = kernel_view(weight);
    bl_tensor *dx = wants_grad(x) ? bl_empty_like(x) : NULL;
    bl_tensor *dweight = wants_grad(weight) ? bl_empty_like(weight) : NULL;
    bl_tensor *dbias = wants_grad(bias) ? bl_empty_like(bias) : NULL;
    if (!gk || (weight && !wk) || (wants_grad(x) && !dx) || (wants_grad(weight) && !dweight) ||
        (wants_grad(bias) && !dbias))
        return BL_ERR;
    if (g->dtype == BL_F32) {
        float *scratch = bl_arena_alloc(cpu_layer_norm_bwd_scratch(&ctx->args) * sizeof(float));
        if (!scratch) return BL_ERR;
        cpu_layer_norm_bwd(&ctx->args, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data, data_of(wk),
                           data_of(dx), data_of(dweight), data_of(dbias), scratch);
    } else {
        ref_layer_norm_bwd_f64(&ctx->args, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data,
                               data_of(wk), data_of(dx), data_of(dweight), data_of(dbias));
    }
    gin[0] = dx;
    gin[1] = dweight;
    gin[2] = dbias;
    return BL_OK;
}

static int layer_norm_backward_composite(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bl_layer_norm_args *a = &((const layer_norm_ctx *)node->ctx)->args;
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1], *bias = node->inputs[2];
    const int64_t rows[2] = {a->R, a->D};
    bl_tensor *x2 = bl_reshape(x, 2, rows), *g2 = bl_reshape(g, 2, rows);
    bl_tensor *centered = bl_sub(x2, bl_mean_dim(x2, 1, true));
    bl_tensor *invstd = bl_pow_scalar(bl_add_scalar(bl_mean_dim(bl_mul(centered, centered), 1, true), a->eps), -0.5);
    bl_tensor *xhat = bl_mul(centered, invstd);
    if (wants_grad(x)) {
        bl_tensor *gw = weight ? bl_mul(g2, bl_reshape(weight, 1, &a->D)) : g2;
        bl_tensor *dxhat =
            bl_sub(bl_sub(gw, bl_mean_dim(gw, 1, true)), bl_mul(xhat, bl_mean_dim(bl_mul(gw, xhat), 1, true)));
        if (!(gin[0] = bl_reshape(bl_mul(dxhat, invstd), x->ndim, x->shape))) return BL_ERR;
    }
    if (wants_grad(weight) &&
        !(gin[1] = bl_reshape(bl_sum_dim(bl_mul(g2, xhat), 0, false), weight->ndim, weight->shape)))
        return BL_ERR;
    if (wants_grad(bias) && !(gin[2] = bl_reshape(bl_sum_dim(g2, 0, false), bias->ndim, bias->shape))) return BL_ERR;
    return BL_OK;
}

static int layer_norm_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    return bl_grad_enabled() ? layer_norm_backward_composite(node, g, gin) : layer_norm_backward_fused(node, g, gin);
}

bl_tensor *bl_layer_norm(bl_tensor *x, int ndim, const int64_t *shape, bl_tensor *weight, bl_tensor *bias,
                         double eps) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "layer_norm: x must be F32 or F64, got %s", bl_dtype_name(x->dtype));
    BL_CHECK(ndim >= 1 && ndim <= x->ndim, "layer_norm: cannot normalize over %d trailing dims of x of shape %s",
             ndim, bl__shape(x));
    const bl_tensor normalized = shape_struct(ndim, shape);
    bl_layer_norm_args args = {.R = 1, .D = 1, .eps = eps};
    for (int d = 0; d < x->ndim - ndim; d++) args.R *= x->shape[d];
    for (int d = 0; d < ndim; d++) {
        BL_CHECK(x->shape[x->ndim - ndim + d] == shape[d],
                 "layer_norm: normalized shape %s does not match the trailing dims of x of shape %s",
                 bl__shape(&normalized), bl__shape(x));
        args.D *= shape[d];
    }
    if (check_param("layer_norm", "weight", weight, x, &normalized) != BL_OK ||
        check_param("layer_norm", "bias", bias, x, &normalized) != BL_OK)
        return NULL;
    BL_CHECK(args.D > 0, "layer_norm: nothing to normalize over in x of shape %s", bl__shape(x));

    bl_tensor *xk = kernel_view(x), *wk = kernel_view(weight), *bk = kernel_view(bias);
    bl_tensor *mean = bl_empty(x->dtype, 1, &args.R), *invstd = bl_empty(x->dtype, 1, &args.R);
    bl_tensor *y = bl_empty(x->dtype, x->ndim, x->shape);
    if (!xk || (weight && !wk) || (bias && !bk) || !mean || !invstd || !y) return NULL;
    if (x->dtype == BL_F32)
        cpu_layer_norm_fwd(&args, xk->data, data_of(wk), data_of(bk), mean->data, invstd->data, y->data);
    else
        ref_layer_norm_fwd_f64(&args, xk->data, data_of(wk), data_of(bk), mean->data, invstd->data, y->data);

    bl_tensor *inputs[3] = {x, weight, bias};
    bl_node *node = bl_autograd_record(y, "layer_norm", layer_norm_backward, 3, inputs, sizeof(layer_norm_ctx));
    if (node) *(layer_norm_ctx *)node->ctx = (layer_norm_ctx){args, xk, mean, invstd};
    return y;
}

/* ---- group norm and instance norm ---- */

/* x (N, C, ...) normalized over each of `groups` channel groups of each sample, then scaled and
 * shifted per channel. The normalization is a layer norm over rows of (C / groups) * spatial values,
 * so it shares layer norm's fused kernels and both backward forms. */
static bl_tensor *group_norm(const char *op, bl_tensor *x, int64_t groups, bl_tensor *weight, bl_tensor *bias,
                             double eps) {
    const int64_t N = x->shape[0], C = x->shape[1];
    BL_CHECK(groups >= 1 && C % groups == 0, "%s: %lld channels of x of shape %s do not split into %lld groups", op,
             (long long)C, bl__shape(x), (long long)groups);
    const bl_tensor per_channel = shape_struct(1, &C);
    if (check_param(op, "weight", weight, x, &per_channel) != BL_OK ||
        check_param(op, "bias", bias, x, &per_channel) != BL_OK)
        return NULL;
    int64_t group_size = C / groups;
    for (int d = 2; d < x->ndim; d++) group_size *= x->shape[d];
    const int64_t grouped[3] = {N, groups, group_size};
    bl_tensor *y = bl_layer_norm(bl_reshape(x, 3, grouped), 1, &grouped[2], NULL, NULL, eps);
    y = bl_reshape(y, x->ndim, x->shape);
    /* weight and bias as (C, 1, ..., 1), which broadcasts over (N, C, ...) */
    int64_t affine_shape[BL_MAX_DIMS] = {C};
    for (int d = 1; d < x->ndim - 1; d++) affine_shape[d] = 1;
    if (weight) y = bl_mul(y, bl_reshape(weight, x->ndim - 1, affine_shape));
    if (bias) y = bl_add(y, bl_reshape(bias, x->ndim - 1, affine_shape));
    return y;
}

bl_tensor *bl_group_norm(bl_tensor *x, int groups, bl_tensor *weight, bl_tensor *bias, double eps) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "group_norm: x must be F32 or F64, got %s", bl_dtype_name(x->dtype));
    BL_CHECK(x->ndim >= 2, "group_norm: x of shape %s, expected (N, C, ...)", bl__shape(x));
    return group_norm("group_norm", x, groups, weight, bias, eps);
}

bl_tensor *bl_instance_norm(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, double eps) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "instance_norm: x must be F32 or F64, got %s", bl_dtype_name(x->dtype));
    BL_CHECK(x->ndim >= 3, "instance_norm: x of shape %s, expected (N, C, L) or (N, C, H, W)", bl__shape(x));
    return group_norm("instance_norm", x, x->shape[1], weight, bias, eps);
}
