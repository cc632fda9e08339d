/* Elementwise unary ops (neg, exp, log, sqrt, abs, sign, the activations and clamp). Each reads
 * its input as dense values (contiguous or channels last; a strided input is copied once), maps
 * them through the kernel (F32: the vectorized CPU kernels; F64: the reference ones) into a new
 * tensor of the same order and records a node. A first-order backward calls the kernel's fused
 * derivative; with create_graph it builds the gradient from ops instead, so that the gradient can
 * itself be differentiated. */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "backend/cpu/layout.h"
#include "backend/cpu/unary.h"
#include "backend/ref/ref_unary.h"
#include "core/internal.h"

#define INV_SQRT_2PI 0.39894228040143267794

typedef struct {
    bl_unary_args args;
    bl_tensor *x; /* the input's values, contiguous and detached, for the fused backward */
} unary_ctx;

/* Profile names of each op's kernels, forward and derivative. */
static const char *const profile_names[BL_UNARY_COUNT][2] = {
    {"neg", "neg.bwd"},         {"exp", "exp.bwd"},         {"log", "log.bwd"},
    {"sqrt", "sqrt.bwd"},       {"abs", "abs.bwd"},         {"sign", "sign.bwd"},
    {"relu", "relu.bwd"},       {"leaky_relu", "leaky_relu.bwd"}, {"gelu", "gelu.bwd"},
    {"sigmoid", "sigmoid.bwd"}, {"tanh", "tanh.bwd"},       {"softplus", "softplus.bwd"},
    {"clamp", "clamp.bwd"},     {"normal_cdf", "normal_cdf.bwd"},
};

/* t's values as a dense tensor outside the graph: t itself, detached, when contiguous or channels
 * last (see backend/cpu/layout.h), else a contiguous copy. */
static bl_tensor *values_of(bl_tensor *t) {
    bl_tensor *v = bl__view_of(t);
    return v && cpu_is_channels_last(v) ? v : bl_contiguous(v);
}

/* out = f(x), or its gradient dy * f'(x) when dy is given (with y = f(x)), or f'(x) itself when dy
 * is NULL; all dense in x's memory order, of x's shape and dtype; nothing is recorded. */
static bl_tensor *run_kernel(const bl_unary_args *args, bool derivative, bl_tensor *x, bl_tensor *y,
                             bl_tensor *dy) {
    bl_tensor *out = bl_is_contiguous(x) ? bl_empty(x->dtype, x->ndim, x->shape)
                                         : cpu_empty_channels_last(x->dtype, x->shape[0], x->shape[1],
                                                                   x->shape[2], x->shape[3]);
    if (!out) return NULL;
    double t0 = bl_profile_start();
    int64_t n = bl_numel(x);
    const void *g = dy ? dy->data : NULL;
    if (x->dtype == BL_F32) {
        if (derivative) cpu_unary_bwd_f32(args, n, x->data, y->data, g, out->data);
        else cpu_unary_fwd_f32(args, n, x->data, out->data);
    } else {
        if (derivative) ref_unary_bwd_f64(args, n, x->data, y->data, g, out->data);
        else ref_unary_fwd_f64(args, n, x->data, out->data);
    }
    bl_profile_stop(profile_names[args->op][derivative], t0, 0);
    return out;
}

static int unary_backward(bl_node *node, bl_tensor *g, bl_tensor **gin);

static bl_tensor *unary(const char *name, bl_tensor *a, bl_unary_args args) {
    BL_NONNULL(a);
    BL_CHECK(bl_dtype_is_float(a->dtype), "%s: needs an F32 or F64 tensor, got %s of shape %s", name,
             bl_dtype_name(a->dtype), bl__shape(a));
    bl_tensor *x = values_of(a);
    if (!x) return NULL;
    bl_tensor *y = run_kernel(&args, false, x, NULL, NULL);
    /* sign is piecewise constant: its gradient is zero, so it is not recorded at all. */
    if (y && args.op != BL_UNARY_SIGN) {
        bl_node *node = bl_autograd_record(y, name, unary_backward, 1, &a, sizeof(unary_ctx));
        if (node) *(unary_ctx *)node->ctx = (unary_ctx){args, x};
    }
    return y;
}

static bl_tensor *normal_cdf(bl_tensor *x) {
    return unary("normal_cdf", x, (bl_unary_args){.op = BL_UNARY_NORMAL_CDF});
}

/* The standard normal density exp(-x^2 / 2) / sqrt(2 pi), from ops. */
static bl_tensor *normal_pdf(bl_tensor *x) {
    return bl_mul_scalar(bl_exp(bl_mul_scalar(bl_mul(x, x), -0.5)), INV_SQRT_2PI);
}

static int unary_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const unary_ctx *c = node->ctx;
    bl_tensor *x = node->inputs[0], *y = node->out;
    if (!bl_grad_enabled()) {
        bl_tensor *dy = cpu_values_in_order_of(g, c->x);
        gin[0] = dy ? run_kernel(&c->args, true, c->x, y, dy) : NULL;
        return gin[0] ? BL_OK : BL_ERR;
    }
    switch (c->args.op) {
    case BL_UNARY_NEG: gin[0] = bl_neg(g); break;
    case BL_UNARY_EXP: gin[0] = bl_mul(g, y); break;
    case BL_UNARY_LOG: gin[0] = bl_div(g, x); break;
    case BL_UNARY_SQRT: gin[0] = bl_div(bl_mul_scalar(g, 0.5), y); break;
    case BL_UNARY_ABS:
    case BL_UNARY_RELU:
    case BL_UNARY_LEAKY_RELU:
    case BL_UNARY_CLAMP:
        /* Piecewise linear: f' is piecewise constant, so as a constant tensor it is exact and its
         * own derivative (zero almost everywhere) comes out right too. */
        gin[0] = bl_mul(g, run_kernel(&c->args, true, c->x, y, NULL));
        break;
    case BL_UNARY_GELU: gin[0] = bl_mul(g, bl_add(normal_cdf(x), bl_mul(x, normal_pdf(x)))); break;
    case BL_UNARY_SIGMOID: gin[0] = bl_mul(g, bl_mul(y, bl_rsub_scalar(y, 1.0))); break;
    case BL_UNARY_TANH: gin[0] = bl_mul(g, bl_rsub_scalar(bl_mul(y, y), 1.0)); break;
    case BL_UNARY_SOFTPLUS: gin[0] = bl_mul(g, bl_sigmoid(x)); break;
    case BL_UNARY_NORMAL_CDF: gin[0] = bl_mul(g, normal_pdf(x)); break;
    default: return BL_ERR;
    }
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_neg(bl_tensor *a) { return unary("neg", a, (bl_unary_args){.op = BL_UNARY_NEG}); }
bl_tensor *bl_exp(bl_tensor *a) { return unary("exp", a, (bl_unary_args){.op = BL_UNARY_EXP}); }
bl_tensor *bl_log(bl_tensor *a) { return unary("log", a, (bl_unary_args){.op = BL_UNARY_LOG}); }
bl_tensor *bl_sqrt(bl_tensor *a) { return unary("sqrt", a, (bl_unary_args){.op = BL_UNARY_SQRT}); }
bl_tensor *bl_abs(bl_tensor *a) { return unary("abs", a, (bl_unary_args){.op = BL_UNARY_ABS}); }
bl_tensor *bl_sign(bl_tensor *a) { return unary("sign", a, (bl_unary_args){.op = BL_UNARY_SIGN}); }
bl_tensor *bl_relu(bl_tensor *a) { return unary("relu", a, (bl_unary_args){.op = BL_UNARY_RELU}); }
bl_tensor *bl_gelu(bl_tensor *a) { return unary("gelu", a, (bl_unary_args){.op = BL_UNARY_GELU}); }
bl_tensor *bl_sigmoid(bl_tensor *a) { return unary("sigmoid", a, (bl_unary_args){.op = BL_UNARY_SIGMOID}); }
bl_tensor *bl_tanh(bl_tensor *a) { return unary("tanh", a, (bl_unary_args){.op = BL_UNARY_TANH}); }
bl_tensor *bl_softplus(bl_tensor *a) { return unary("softplus", a, (bl_unary_args){.op = BL_UNARY_SOFTPLUS}); }

bl_tensor *bl_leaky_relu(bl_tensor *a, double slope) {
    return unary("leaky_relu", a, (bl_unary_args){.op = BL_UNARY_LEAKY_RELU, .slope = slope});
}

bl_tensor *bl_clamp(bl_tensor *a, double lo, double hi) {
    return unary("clamp", a, (bl_unary_args){.op = BL_UNARY_CLAMP, .lo = lo, .hi = hi});
}
