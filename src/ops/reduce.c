/* Reductions along one dim (max, min, argmax, variance, p-norm, logsumexp) and the max over all
 * elements. Each sees its input's contiguous values as (outer, n, inner) around the reduced dim,
 * runs a reference kernel and records a node. Backwards are written with ops, the reduced dim put
 * back with size 1 so that the gradient broadcasts over it; logsumexp, the one used in losses, also
 * has a fused first-order backward. */
#include "ballast/ops.h"

#include "backend/ref/ref_unary.h"
#include "core/internal.h"

#include <math.h>

/* Where a reduction runs and what it produces. */
typedef struct {
    int dim;          /* the reduced dim, wrapped */
    bool restore_dim; /* the result lacks the reduced dim: insert it to broadcast against the input */
    bl_reduce_dims d;
    int out_ndim;
    int64_t out_shape[BL_MAX_DIMS];
} reduction;

static int plan_along_dim(const char *op, const bl_tensor *a, int dim, bool keepdim, reduction *r) {
    int n_dims = a->ndim ? a->ndim : 1;
    int w = dim < 0 ? dim + n_dims : dim;
    BL_CHECK_RC(w >= 0 && w < n_dims, "%s: dim %d out of range for shape %s", op, dim, bl__shape(a));
    *r = (reduction){.dim = w, .restore_dim = !keepdim && a->ndim > 0, .d = {1, 1, 1}};
    for (int i = 0; i < a->ndim; i++) {
        if (i < w) r->d.outer *= a->shape[i];
        else if (i > w) r->d.inner *= a->shape[i];
        else r->d.n = a->shape[i];
        if (i != w || keepdim) r->out_shape[r->out_ndim++] = i == w ? 1 : a->shape[i];
    }
    return BL_OK;
}

/* The whole tensor as one dim: a 0-d result, which broadcasts against the input as it is. */
static reduction plan_all(const bl_tensor *a) {
    return (reduction){.d = {1, bl_numel(a), 1}};
}

static bool check_float(const char *op, const bl_tensor *a) {
    BL_CHECK_OR(false, bl_dtype_is_float(a->dtype), "%s: needs an F32 or F64 tensor, got %s of shape %s", op,
                bl_dtype_name(a->dtype), bl__shape(a));
    return true;
}

/* t with the reduced dim (size 1) back in place, so that it broadcasts against the input. */
static bl_tensor *with_reduced_dim(bl_tensor *t, const reduction *r) {
    return r->restore_dim ? bl_unsqueeze(t, r->dim) : t;
}

/* ---- max, min, argmax ---- */

typedef struct {
    reduction r;
    bl_tensor *index; /* (outer, inner) positions of the extremes along the dim */
} extreme_ctx;

/* The gradient lands on the one chosen position per slice: g times a one-hot mask (a constant), so
 * the gradient of this gradient is a plain mask multiply too. */
static int extreme_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const extreme_ctx *c = node->ctx;
    bl_tensor *x = node->inputs[0];
    bl_tensor *mask = bl_empty(x->dtype, x->ndim, x->shape);
    if (!mask) return BL_ERR;
    if (x->dtype == BL_F32) ref_index_mask_dim_f32(c->r.d, c->index->data, mask->data);
    else ref_index_mask_dim_f64(c->r.d, c->index->data, mask->data);
    gin[0] = bl_mul(with_reduced_dim(g, &c->r), mask);
    return gin[0] ? BL_OK : BL_ERR;
}

/* The extreme values (recorded) and their positions (*index, BL_I64), both of the planned shape. */
static bl_tensor *extreme(const char *op, bl_tensor *a, const reduction *r, bool is_min, bl_tensor **index) {
    BL_CHECK(r->d.n > 0, "%s: cannot reduce an empty dim (shape %s)", op, bl__shape(a));
    bl_tensor *x = bl_contiguous(bl__view_of(a));
    bl_tensor *values = bl_empty(a->dtype, r->out_ndim, r->out_shape);
    *index = bl_empty(BL_I64, r->out_ndim, r->out_shape);
    if (!x || !values || !*index) return NULL;
    if (a->dtype == BL_F32) ref_extreme_dim_f32(r->d, is_min, x->data, values->data, (*index)->data);
    else ref_extreme_dim_f64(r->d, is_min, x->data, values->data, (*index)->data);
    bl_node *node = bl_autograd_record(values, op, extreme_backward, 1, &a, sizeof(extreme_ctx));
    if (node) *(extreme_ctx *)node->ctx = (extreme_ctx){*r, *index};
    return values;
}

static bl_tensor *extreme_dim(const char *op, bl_tensor *a, int dim, bool keepdim, bool is_min) {
    BL_NONNULL(a);
    reduction r;
    bl_tensor *index;
    if (!check_float(op, a) || plan_along_dim(op, a, dim, keepdim, &r) != BL_OK) return NULL;
    return extreme(op, a, &r, is_min, &index);
}

bl_tensor *bl_max_dim(bl_tensor *a, int dim, bool keepdim) { return extreme_dim("max_dim", a, dim, keepdim, false); }
bl_tensor *bl_min_dim(bl_tensor *a, int dim, bool keepdim) { return extreme_dim("min_dim", a, dim, keepdim, true); }

bl_tensor *bl_max(bl_tensor *a) {
    BL_NONNULL(a);
    if (!check_float("max", a)) return NULL;
    reduction r = plan_all(a);
    bl_tensor *index;
    return extreme("max", a, &r, false, &index);
}

bl_tensor *bl_argmax(bl_tensor *a, int dim, bool keepdim) {
    BL_NONNULL(a);
    reduction r;
    bl_tensor *index = NULL;
    if (!check_float("argmax", a) || plan_along_dim("argmax", a, dim, keepdim, &r) != BL_OK) return NULL;
    BL_NO_GRAD { extreme("argmax", a, &r, false, &index); }
    return index;
}

/* ---- variance ---- */

typedef struct {
    reduction r;
    int ddof;
} var_ctx;

/* d var / dx = 2 (x - mean) / (n - ddof); the mean is taken with ops so it differentiates too. */
static int var_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const var_ctx *c = node->ctx;
    bl_tensor *x = node->inputs[0];
    bl_tensor *centered = bl_sub(x, bl_mean_dim(x, c->r.dim, true));
    gin[0] = bl_mul(with_reduced_dim(g, &c->r), bl_mul_scalar(centered, 2.0 / (double)(c->r.d.n - c->ddof)));
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_var_dim(bl_tensor *a, int dim, bool unbiased, bool keepdim) {
    BL_NONNULL(a);
    reduction r;
    if (!check_float("var_dim", a) || plan_along_dim("var_dim", a, dim, keepdim, &r) != BL_OK) return NULL;
    int ddof = unbiased ? 1 : 0;
    bl_tensor *x = bl_contiguous(bl__view_of(a)), *y = bl_empty(a->dtype, r.out_ndim, r.out_shape);
    if (!x || !y) return NULL;
    if (a->dtype == BL_F32) ref_var_dim_f32(r.d, ddof, x->data, y->data);
    else ref_var_dim_f64(r.d, ddof, x->data, y->data);
    bl_node *node = bl_autograd_record(y, "var_dim", var_backward, 1, &a, sizeof(var_ctx));
    if (node) *(var_ctx *)node->ctx = (var_ctx){r, ddof};
    return y;
}

/* ---- p-norm ---- */

typedef struct {
    reduction r;
    double p;
} norm_ctx;

/* d ||x||_p / dx = sign(x) |x|^(p-1) / ||x||^(p-1), which is x / ||x|| for p = 2 and sign(x) for
 * p = 1. A zero norm (a zero slice) gets a zero gradient, as in torch: dividing by 1 there instead
 * keeps NaN out of the gradient and of its derivative. */
static int norm_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const norm_ctx *c = node->ctx;
    bl_tensor *x = node->inputs[0], *y = with_reduced_dim(node->out, &c->r);
    bl_tensor *gk = with_reduced_dim(g, &c->r);
    if (!y || !gk) return BL_ERR;
    bl_tensor *one = bl_scalar(x->dtype, 1.0), *zero = bl_scalar(x->dtype, 0.0);
    bl_tensor *safe_norm = bl_where(bl_eq(y, zero), one, y);
    if (c->p == 1) {
        gin[0] = bl_mul(gk, bl_sign(x));
    } else if (c->p == 2) {
        gin[0] = bl_div(bl_mul(gk, x), safe_norm);
    } else {
        bl_tensor *scaled = bl_mul(bl_sign(x), bl_pow_scalar(bl_abs(x), c->p - 1));
        gin[0] = bl_div(bl_mul(gk, scaled), bl_pow_scalar(safe_norm, c->p - 1));
    }
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_norm_dim(bl_tensor *a, double p, int dim, bool keepdim) {
    BL_NONNULL(a);
    reduction r;
    if (!check_float("norm_dim", a) || plan_along_dim("norm_dim", a, dim, keepdim, &r) != BL_OK) return NULL;
    BL_CHECK(p >= 1 && isfinite(p), "norm_dim: p must be finite and >= 1, got %g", p);
    bl_tensor *x = bl_contiguous(bl__view_of(a)), *y = bl_empty(a->dtype, r.out_ndim, r.out_shape);
    if (!x || !y) return NULL;
    if (a->dtype == BL_F32) ref_norm_dim_f32(r.d, p, x->data, y->data);
    else ref_norm_dim_f64(r.d, p, x->data, y->data);
    bl_node *node = bl_autograd_record(y, "norm_dim", norm_backward, 1, &a, sizeof(norm_ctx));
    if (node) *(norm_ctx *)node->ctx = (norm_ctx){r, p};
    return y;
}

/* ---- logsumexp ---- */

typedef struct {
    reduction r;
    bl_tensor *x; /* the input's values, contiguous and detached, for the fused backward */
} logsumexp_ctx;

/* d lse / dx = exp(x - lse), the softmax along the dim. */
static int logsumexp_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const logsumexp_ctx *c = node->ctx;
    bl_tensor *x = node->inputs[0], *y = node->out;
    if (bl_grad_enabled()) {
        bl_tensor *softmax = bl_exp(bl_sub(x, with_reduced_dim(y, &c->r)));
        gin[0] = bl_mul(with_reduced_dim(g, &c->r), softmax);
        return gin[0] ? BL_OK : BL_ERR;
    }
    bl_tensor *dy = bl_contiguous(bl__view_of(g)), *dx = bl_empty(x->dtype, x->ndim, x->shape);
    if (!dy || !dx) return BL_ERR;
    if (x->dtype == BL_F32) ref_logsumexp_dim_bwd_f32(c->r.d, dy->data, c->x->data, y->data, dx->data);
    else ref_logsumexp_dim_bwd_f64(c->r.d, dy->data, c->x->data, y->data, dx->data);
    gin[0] = dx;
    return BL_OK;
}

bl_tensor *bl_logsumexp(bl_tensor *a, int dim, bool keepdim) {
    BL_NONNULL(a);
    reduction r;
    if (!check_float("logsumexp", a) || plan_along_dim("logsumexp", a, dim, keepdim, &r) != BL_OK) return NULL;
    bl_tensor *x = bl_contiguous(bl__view_of(a)), *y = bl_empty(a->dtype, r.out_ndim, r.out_shape);
    if (!x || !y) return NULL;
    if (a->dtype == BL_F32) ref_logsumexp_dim_f32(r.d, x->data, y->data);
    else ref_logsumexp_dim_f64(r.d, x->data, y->data);
    bl_node *node = bl_autograd_record(y, "logsumexp", logsumexp_backward, 1, &a, sizeof(logsumexp_ctx));
    if (node) *(logsumexp_ctx *)node->ctx = (logsumexp_ctx){r, x};
    return y;
}
