/* Normalization ops: batch norm (alone, or fused with the residual add and ReLU after it), layer
 * norm, and group and instance norm (one implementation: a layer norm over (N, G, C/G * spatial)
 * rows followed by a per-channel affine map).
 *
 * Batch and layer norm run a fused kernel forward and record one node. Their backward has two
 * forms: for a first-order backward, one fused kernel computing dx, dweight and dbias (and the
 * residual's gradient) from the saved statistics; when the backward is itself recorded
 * (create_graph), the same gradients built from ops, recomputing the statistics from x so that
 * their dependence on x is differentiated too. Each kernel call is timed for the profile.
 *
 * Synchronized batch norm (bl_batch_norm_set_sync, in a multi-process job) normalizes with the
 * statistics of the whole batch over every process: the forward adds up each process's
 * per-channel sums of x and x^2, and the backward its sums of the gradient and of the gradient
 * times x-hat, around the same kernels run with those statistics as constants. */
#include "ballast/dist.h"
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "backend/cpu/layout.h"
#include "backend/cpu/norm.h"
#include "backend/ref/ref_norm.h"
#include "core/internal.h"

#include <math.h>
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

/* ---- batch norm, and batch norm fused with a residual add and a ReLU ----
 * One implementation serves both ops: y = act(bn(x) + residual), act the identity or ReLU. F32 runs
 * the fused CPU kernels on x's own memory when it is contiguous or channels last (the result keeps
 * that order); F64 (gradient checks) runs the reference batch norm kernels and applies the residual
 * and the ReLU around them. */

typedef struct {
    cpu_bn_act_args args; /* args.bn is also the reference kernels' argument */
    const char *backward_profile;
    bl_tensor *x;      /* detached, contiguous or channels last: what the fused backward reads */
    bl_tensor *mean;   /* (C): the statistics the forward normalized with */
    bl_tensor *invstd; /* (C) */
    double sync_count; /* synchronized: the values per channel over every process; 0 otherwise */
} bn_act_ctx;

static bool sync_batch_norm;

bool bl_batch_norm_set_sync(bool on) {
    bool was = sync_batch_norm;
    sync_batch_norm = on;
    return was;
}

static bl_tensor *sum_over_nc(bl_tensor *t) { return bl_sum_dim(bl_sum_dim(t, 2, true), 0, true); }
static bl_tensor *mean_over_nc(bl_tensor *t) { return bl_mean_dim(bl_mean_dim(t, 2, true), 0, true); }

/* A new tensor shaped and ordered like `like` (contiguous or channels last). */
static bl_tensor *empty_in_order_of(const bl_tensor *like) {
    if (cpu_is_channels_last(like) && !bl_is_contiguous(like))
        return cpu_empty_channels_last(like->dtype, like->shape[0], like->shape[1], like->shape[2], like->shape[3]);
    return bl_empty(like->dtype, like->ndim, like->shape);
}

/* F64 epilogue of the forward: y = act(y + residual), all contiguous. */
static void residual_act_f64(int64_t n, double *y, const double *residual, bool relu) {
    for (int64_t i = 0; residual && i < n; i++) y[i] += residual[i];
    for (int64_t i = 0; relu && i < n; i++) y[i] = y[i] < 0 ? 0.0 : y[i];
}

/* F64 prologue of the backward: gz = g where y > 0 and 0 elsewhere, all contiguous. */
static void relu_mask_f64(int64_t n, double *gz, const double *g, const double *y) {
    for (int64_t i = 0; i < n; i++) gz[i] = y[i] > 0 ? g[i] : 0.0;
}

/* The synchronized backward (F32): the eval-mode kernel gives dx = k gz and this process's sums
 * sum(gz) and sum(gz xhat) (as dbias, dweight); with the totals over every process the statistics'
 * part k (sum(gz) + xhat sum(gz xhat)) / M is taken off dx. dweight and dbias stay this process's
 * own, which the trainer's all-reduce of the gradients adds up. */
static int bn_act_backward_sync(const bn_act_ctx *ctx, bl_tensor *gk, const float *y, const float *w, float *dx,
                                float *dweight, float *dbias, float *dresidual) {
    const cpu_bn_act_args *a = &ctx->args;
    cpu_bn_act_args constant = *a;
    constant.bn.training = false;
    const int64_t C = a->bn.C;
    float *own = bl_arena_alloc(4 * (size_t)C * sizeof *own);
    double *sums = bl_arena_alloc(2 * (size_t)C * sizeof *sums);
    double *scratch = bl_arena_alloc((cpu_batch_norm_act_scratch(a) + 1) * sizeof *scratch);
    if (!own || !sums || !scratch) return BL_ERR;
    float *sum_g = dbias ? dbias : own, *sum_g_xhat = dweight ? dweight : own + C;
    cpu_batch_norm_act_bwd(&constant, gk->data, ctx->x->data, y, ctx->mean->data, ctx->invstd->data, w, dx,
                           sum_g_xhat, sum_g, dresidual, scratch);
    for (int64_t c = 0; c < C; c++) {
        sums[c] = sum_g[c];
        sums[C + c] = sum_g_xhat[c];
    }
    BL_TRY(bl_dist_allreduce_f64(sums, 2 * (size_t)C, BL_DIST_SUM));
    if (!dx) return BL_OK;
    const float *mean = ctx->mean->data, *invstd = ctx->invstd->data;
    float *shift = own + 2 * C, *slope = own + 3 * C;
    for (int64_t c = 0; c < C; c++) {
        const double k = (double)invstd[c] * (w ? w[c] : 1.0f);
        shift[c] = (float)(k * sums[c] / ctx->sync_count);
        slope[c] = (float)(k * invstd[c] * sums[C + c] / ctx->sync_count);
    }
    cpu_batch_norm_sync_dx(a, ctx->x->data, mean, shift, slope, dx);
    return BL_OK;
}

static int bn_act_backward_fused(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bn_act_ctx *ctx = node->ctx;
    const cpu_bn_act_args *a = &ctx->args;
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1], *bias = node->inputs[2], *residual = node->inputs[3];
    bl_tensor *gk = cpu_values_in_order_of(g, ctx->x), *wk = kernel_view(weight);
    bl_tensor *dx = wants_grad(x) ? empty_in_order_of(ctx->x) : NULL;
    bl_tensor *dweight = wants_grad(weight) ? bl_empty_like(weight) : NULL;
    bl_tensor *dbias = wants_grad(bias) ? bl_empty_like(bias) : NULL;
    bl_tensor *dresidual = wants_grad(residual) ? empty_in_order_of(ctx->x) : NULL;
    if (!gk || (weight && !wk) || (wants_grad(x) && !dx) || (wants_grad(weight) && !dweight) ||
        (wants_grad(bias) && !dbias) || (wants_grad(residual) && !dresidual))
        return BL_ERR;
    double t0 = bl_profile_start();
    if (ctx->sync_count > 0) {
        BL_TRY(bn_act_backward_sync(ctx, gk, node->out->data, data_of(wk), data_of(dx), data_of(dweight),
                                    data_of(dbias), data_of(dresidual)));
    } else if (g->dtype == BL_F32) {
        double *scratch = bl_arena_alloc(cpu_batch_norm_act_scratch(a) * sizeof(double));
        if (!scratch) return BL_ERR;
        cpu_batch_norm_act_bwd(a, gk->data, ctx->x->data, node->out->data, ctx->mean->data, ctx->invstd->data,
                               data_of(wk), data_of(dx), data_of(dweight), data_of(dbias), data_of(dresidual), scratch);
    } else {
        const int64_t n = bl_numel(g);
        if (a->relu) {
            bl_tensor *gz = bl_empty_like(gk);
            if (!gz) return BL_ERR;
            relu_mask_f64(n, gz->data, gk->data, node->out->data);
            gk = gz;
        }
        if (dresidual) memcpy(dresidual->data, gk->data, (size_t)n * sizeof(double));
        ref_batch_norm_bwd_f64(&a->bn, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data, data_of(wk),
                               data_of(dx), data_of(dweight), data_of(dbias));
    }
    bl_profile_stop(ctx->backward_profile, t0, 0);
    gin[0] = dx;
    gin[1] = dweight;
    gin[2] = dbias;
    gin[3] = dresidual;
    return BL_OK;
}

/* Batch norm's input gradients for gz (the gradient of its output) from ops, so that they can be
 * differentiated again: in training the statistics are recomputed from x, so that their
 * dependence on x is differentiated too. */
static int batch_norm_grads_composite(const bn_act_ctx *ctx, bl_tensor *x, bl_tensor *weight, bl_tensor *bias,
                                      bl_tensor *gz, bl_tensor **gin) {
    const bl_batch_norm_args *a = &ctx->args.bn;
    const int64_t ncs[3] = {a->N, a->C, a->S}, channel[3] = {1, a->C, 1};
    bl_tensor *x3 = bl_reshape(x, 3, ncs), *g3 = bl_reshape(gz, 3, ncs), *invstd, *xhat;
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

static int bn_act_backward_composite(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const bn_act_ctx *ctx = node->ctx;
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1], *bias = node->inputs[2], *residual = node->inputs[3];
    bl_tensor *gz = g;
    if (ctx->args.relu) {
        /* The ReLU's derivative is a constant 0/1 mask (its own derivative is 0 almost everywhere). */
        bl_tensor *mask = bl_to_dtype(bl_gt_scalar(bl_detach(node->out), 0.0), g->dtype);
        if (!(gz = bl_mul(g, mask))) return BL_ERR;
    }
    if (wants_grad(residual)) gin[3] = gz;
    return batch_norm_grads_composite(ctx, x, weight, bias, gz, gin);
}

static int bn_act_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    if (bl_grad_enabled())
        BL_CHECK_RC(((const bn_act_ctx *)node->ctx)->sync_count == 0,
                    "%s: synchronized batch norm (train.sync_bn) has no second-order gradients (create_graph)",
                    node->name);
    return bl_grad_enabled() ? bn_act_backward_composite(node, g, gin) : bn_act_backward_fused(node, g, gin);
}

/* running = (1 - momentum) * running + momentum * scale * batch, for the C values of each. */
static void blend_running(bl_tensor *running, const bl_tensor *batch, double momentum, double scale) {
    for (int64_t c = 0; c < bl_numel(batch); c++)
        bl_set_flat(running, c, (1.0 - momentum) * bl_get_flat(running, c) + momentum * scale * bl_get_flat(batch, c));
}

static bl_tensor *batch_norm_act(const char *op, bl_tensor *x, bl_tensor *weight, bl_tensor *bias,
                                 bl_tensor *running_mean, bl_tensor *running_var, bl_tensor *residual, bool relu,
                                 bool training, double momentum, double eps) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "%s: x must be F32 or F64, got %s", op, bl_dtype_name(x->dtype));
    BL_CHECK(x->ndim >= 2, "%s: x of shape %s, expected (N, C, ...)", op, bl__shape(x));
    bn_act_ctx ctx = {.args = {.bn = {.N = x->shape[0], .C = x->shape[1], .S = 1, .eps = eps, .training = training},
                               .relu = relu}};
    bl_batch_norm_args *args = &ctx.args.bn;
    for (int d = 2; d < x->ndim; d++) args->S *= x->shape[d];
    const bl_tensor per_channel = shape_struct(1, &args->C);
    if (check_param(op, "weight", weight, x, &per_channel) != BL_OK ||
        check_param(op, "bias", bias, x, &per_channel) != BL_OK ||
        check_param(op, "running_mean", running_mean, x, &per_channel) != BL_OK ||
        check_param(op, "running_var", running_var, x, &per_channel) != BL_OK ||
        check_param(op, "residual", residual, x, x) != BL_OK)
        return NULL;
    BL_CHECK(training || (running_mean && running_var), "%s: eval mode needs running_mean and running_var", op);
    const int64_t M = args->N * args->S;
    BL_CHECK(!training || M > 1, "%s: training needs more than 1 value per channel, x has shape %s", op, bl__shape(x));

    /* F32 channels-last input stays in its order; everything else is read as contiguous. */
    ctx.args.channels_last = x->dtype == BL_F32 && cpu_is_channels_last(x) && !bl_is_contiguous(x);
    bl_tensor *xk = ctx.args.channels_last ? bl_detach(x) : kernel_view(x);
    bl_tensor *wk = kernel_view(weight), *bk = kernel_view(bias);
    bl_tensor *rk = residual && xk ? cpu_values_in_order_of(residual, xk) : NULL;
    bl_tensor *mean = bl_empty(x->dtype, 1, &args->C), *var = bl_empty(x->dtype, 1, &args->C);
    bl_tensor *invstd = bl_empty(x->dtype, 1, &args->C), *y = xk ? empty_in_order_of(xk) : NULL;
    if (!xk || (weight && !wk) || (bias && !bk) || (residual && !rk) || !mean || !var || !invstd || !y) return NULL;
    if (!training && (bl_copy_(mean, running_mean) != BL_OK || bl_copy_(var, running_var) != BL_OK)) return NULL;
    /* Synchronized: the whole batch's statistics over every process, then the kernels with them. */
    double count = (double)M;
    const bool sync = training && sync_batch_norm && bl_dist_size() > 1;
    BL_CHECK(!sync || x->dtype == BL_F32, "%s: synchronized batch norm runs on F32, x is %s", op,
             bl_dtype_name(x->dtype));
    if (sync) {
        double *sums = bl_arena_alloc((2 * (size_t)args->C + 1) * sizeof *sums);
        double *scratch = bl_arena_alloc((cpu_batch_norm_moments_scratch(&ctx.args) + 1) * sizeof *scratch);
        if (!sums || !scratch) return NULL;
        cpu_batch_norm_moments(&ctx.args, xk->data, sums, scratch);
        sums[2 * args->C] = (double)M;
        if (bl_dist_allreduce_f64(sums, 2 * (size_t)args->C + 1, BL_DIST_SUM) != BL_OK) return NULL;
        count = sums[2 * args->C];
        float *m = mean->data, *v = var->data;
        for (int64_t c = 0; c < args->C; c++) {
            const double mu = sums[c] / count;
            m[c] = (float)mu;
            v[c] = (float)fmax(sums[args->C + c] / count - mu * mu, 0.0);
        }
        ctx.sync_count = count;
    }
    double t0 = bl_profile_start();
    if (sync) {
        cpu_bn_act_args constant = ctx.args;
        constant.bn.training = false;
        double *scratch = bl_arena_alloc((cpu_batch_norm_act_scratch(&constant) + 1) * sizeof(double));
        if (!scratch) return NULL;
        cpu_batch_norm_act_fwd(&constant, xk->data, data_of(wk), data_of(bk), data_of(rk), mean->data, var->data,
                               invstd->data, y->data, scratch);
    } else if (x->dtype == BL_F32) {
        double *scratch = bl_arena_alloc(cpu_batch_norm_act_scratch(&ctx.args) * sizeof(double));
        if (!scratch) return NULL;
        cpu_batch_norm_act_fwd(&ctx.args, xk->data, data_of(wk), data_of(bk), data_of(rk), mean->data, var->data,
                               invstd->data, y->data, scratch);
    } else {
        ref_batch_norm_fwd_f64(args, xk->data, data_of(wk), data_of(bk), mean->data, var->data, invstd->data,
                               y->data);
        residual_act_f64(bl_numel(y), y->data, data_of(rk), relu);
    }
    bl_profile_stop(relu || residual ? "batch_norm_act.fwd" : "batch_norm.fwd", t0, 0);
    if (training) {
        /* Like PyTorch, the running variance tracks the unbiased estimate; normalization uses the biased one. */
        if (running_mean) blend_running(running_mean, mean, momentum, 1.0);
        if (running_var) blend_running(running_var, var, momentum, count / (count - 1));
    }

    bl_tensor *inputs[4] = {x, weight, bias, residual};
    const char *name = relu || residual ? "batch_norm_act" : "batch_norm";
    bl_node *node = bl_autograd_record(y, name, bn_act_backward, 4, inputs, sizeof ctx);
    if (node) {
        ctx.backward_profile = relu || residual ? "batch_norm_act.bwd" : "batch_norm.bwd";
        ctx.x = xk;
        ctx.mean = mean;
        ctx.invstd = invstd;
        *(bn_act_ctx *)node->ctx = ctx;
    }
    return y;
}

bl_tensor *bl_batch_norm(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_tensor *running_mean,
                         bl_tensor *running_var, bool training, double momentum, double eps) {
    return batch_norm_act("batch_norm", x, weight, bias, running_mean, running_var, NULL, false, training, momentum,
                          eps);
}

bl_tensor *bl_batch_norm_act(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_tensor *running_mean,
                             bl_tensor *running_var, bl_tensor *residual, bool relu, bool training, double momentum,
                             double eps) {
    return batch_norm_act("batch_norm_act", x, weight, bias, running_mean, running_var, residual, relu, training,
                          momentum, eps);
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
    double t0 = bl_profile_start();
    if (g->dtype == BL_F32) {
        float *scratch = bl_arena_alloc(cpu_layer_norm_bwd_scratch(&ctx->args) * sizeof(float));
        if (!scratch) return BL_ERR;
        cpu_layer_norm_bwd(&ctx->args, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data, data_of(wk),
                           data_of(dx), data_of(dweight), data_of(dbias), scratch);
    } else {
        ref_layer_norm_bwd_f64(&ctx->args, gk->data, ctx->x->data, ctx->mean->data, ctx->invstd->data,
                               data_of(wk), data_of(dx), data_of(dweight), data_of(dbias));
    }
    bl_profile_stop("layer_norm.bwd", t0, 0);
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
    double t0 = bl_profile_start();
    if (x->dtype == BL_F32)
        cpu_layer_norm_fwd(&args, xk->data, data_of(wk), data_of(bk), mean->data, invstd->data, y->data);
    else
        ref_layer_norm_fwd_f64(&args, xk->data, data_of(wk), data_of(bk), mean->data, invstd->data, y->data);
    bl_profile_stop("layer_norm.fwd", t0, 0);

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
