/* Binary elementwise ops with broadcasting: arithmetic, comparisons, where, the scalar variants
 * (a binary op with a 0-d constant) and the in-place updates used by autograd and optimizers.
 * Gradients are reduced back to each input's shape with bl_sum_to. F32 arithmetic between
 * operands of one shape, or with a scalar, runs one flat loop over memory and keeps the first
 * operand's order (contiguous or channels last), so gradients summed in a channels-last network
 * stay channels last. */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "backend/cpu/elementwise.h"
#include "backend/cpu/layout.h"
#include "backend/ref/ref_elementwise.h"
#include "core/internal.h"

#include <string.h>

static const char *const binary_names[BL_BIN_COUNT] = {"add", "sub", "mul", "div", "maximum", "minimum",
                                                       "pow", "gt",  "ge",  "lt",  "eq"};

static int binary_backward(bl_node *node, bl_tensor *g, bl_tensor **gin);

/* Contiguous, or channels last (see backend/cpu/layout.h): memory without gaps in a known order. */
static bool dense(const bl_tensor *t) { return bl_is_contiguous(t) || cpu_is_channels_last(t); }

/* A new tensor shaped and ordered like the dense tensor `like`. */
static bl_tensor *empty_in_order_of(const bl_tensor *like) {
    if (!bl_is_contiguous(like))
        return cpu_empty_channels_last(like->dtype, like->shape[0], like->shape[1], like->shape[2], like->shape[3]);
    return bl_empty(like->dtype, like->ndim, like->shape);
}

static bl_tensor *binary(bl_binary_op op, bl_tensor *a, bl_tensor *b) {
    BL_NONNULL(a, b);
    const char *name = binary_names[op];
    BL_CHECK(bl_dtype_is_float(a->dtype) && a->dtype == b->dtype, "%s: needs two F32 or two F64 tensors, got %s and %s",
             name, bl_dtype_name(a->dtype), bl_dtype_name(b->dtype));
    int ndim;
    int64_t shape[BL_MAX_DIMS];
    if (bl__broadcast_shape(name, a, b, &ndim, shape) != BL_OK) return NULL;
    const bool arithmetic = !bl_binary_is_compare(op);
    const int64_t n = bl_numel(a);
    /* F32 arithmetic on a's memory order when a is dense (contiguous or channels last) and b is a
     * scalar or dense of a's shape: one flat loop, b first brought to a's order when it is not in
     * it (a transpose between the two orders); other strides take the general loop. */
    bool flat = a->dtype == BL_F32 && arithmetic && dense(a) && dense(b) && bl_same_shape(a, b);
    bool scalar_b = a->dtype == BL_F32 && arithmetic && dense(a) && bl_numel(b) == 1 && b->ndim <= a->ndim;
    bl_tensor *bk = flat ? cpu_values_in_order_of(b, a) : b;
    if (!bk) return NULL;
    bl_tensor *out = flat || scalar_b ? empty_in_order_of(a)
                                      : bl_empty(arithmetic ? a->dtype : BL_BOOL, ndim, shape);
    if (!out) return NULL;
    double t0 = bl_profile_start();
    if (flat || scalar_b) {
        cpu_binary_f32(op, n, out->data, a->data, bk->data, scalar_b);
    } else {
        int64_t sa[BL_MAX_DIMS], sb[BL_MAX_DIMS];
        bl__broadcast_strides(a, ndim, shape, sa);
        bl__broadcast_strides(b, ndim, shape, sb);
        ref_binary(op, a->dtype, ndim, shape, out->data, a->data, sa, b->data, sb);
    }
    bl_profile_stop(name, t0, arithmetic ? (double)bl_numel(out) : 0.0);
    if (!bl_binary_is_compare(op)) {
        bl_tensor *in[2] = {a, b};
        bl_node *node = bl_autograd_record(out, name, binary_backward, 2, in, sizeof(bl_binary_op));
        if (node) *(bl_binary_op *)node->ctx = op;
    }
    return out;
}

/* The comparison as a 0/1 float tensor of g's dtype, for masking gradients. */
static bl_tensor *mask_as(bl_tensor *cond, bl_dtype dt) { return bl_to_dtype(cond, dt); }

static int binary_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *a = node->inputs[0], *b = node->inputs[1];
    bl_tensor *ga = NULL, *gb = NULL;
    switch (*(bl_binary_op *)node->ctx) {
    case BL_BIN_ADD: ga = g; gb = g; break;
    case BL_BIN_SUB: ga = g; gb = b->requires_grad ? bl_neg(g) : NULL; break;
    case BL_BIN_MUL:
        ga = a->requires_grad ? bl_mul(g, b) : NULL;
        gb = b->requires_grad ? bl_mul(g, a) : NULL;
        break;
    case BL_BIN_DIV:
        ga = a->requires_grad ? bl_div(g, b) : NULL;
        /* d(a/b)/db = -a/b^2 */
        gb = b->requires_grad ? bl_neg(bl_div(bl_div(bl_mul(g, a), b), b)) : NULL;
        break;
    case BL_BIN_MAX:
    case BL_BIN_MIN: {
        bl_binary_op op = *(bl_binary_op *)node->ctx;
        bl_tensor *take_a = mask_as(op == BL_BIN_MAX ? bl_ge(a, b) : bl_ge(b, a), g->dtype);
        ga = a->requires_grad ? bl_mul(g, take_a) : NULL;
        gb = b->requires_grad ? bl_mul(g, bl_rsub_scalar(take_a, 1.0)) : NULL;
        break;
    }
    case BL_BIN_POW:
        /* d(a^b)/da = b a^(b-1); d(a^b)/db = a^b log(a) */
        ga = a->requires_grad ? bl_mul(g, bl_mul(b, bl_pow(a, bl_add_scalar(b, -1.0)))) : NULL;
        gb = b->requires_grad ? bl_mul(g, bl_mul(bl_pow(a, b), bl_log(a))) : NULL;
        break;
    default: return BL_ERR;
    }
    if (a->requires_grad) {
        gin[0] = bl_sum_to(ga, a->ndim, a->shape);
        if (!gin[0]) return BL_ERR;
    }
    if (b->requires_grad) {
        gin[1] = bl_sum_to(gb, b->ndim, b->shape);
        if (!gin[1]) return BL_ERR;
    }
    return BL_OK;
}

bl_tensor *bl_add(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_ADD, a, b); }
bl_tensor *bl_sub(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_SUB, a, b); }
bl_tensor *bl_mul(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_MUL, a, b); }
bl_tensor *bl_div(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_DIV, a, b); }
bl_tensor *bl_maximum(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_MAX, a, b); }
bl_tensor *bl_minimum(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_MIN, a, b); }
bl_tensor *bl_pow(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_POW, a, b); }
bl_tensor *bl_gt(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_GT, a, b); }
bl_tensor *bl_ge(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_GE, a, b); }
bl_tensor *bl_lt(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_LT, a, b); }
bl_tensor *bl_eq(bl_tensor *a, bl_tensor *b) { return binary(BL_BIN_EQ, a, b); }

/* A 0-d constant of a's dtype: scalar ops are binary ops against it. */
static bl_tensor *constant_like(bl_tensor *a, double s) { return a ? bl_scalar(a->dtype, s) : NULL; }

bl_tensor *bl_add_scalar(bl_tensor *a, double s) { return bl_add(a, constant_like(a, s)); }
bl_tensor *bl_mul_scalar(bl_tensor *a, double s) { return bl_mul(a, constant_like(a, s)); }
bl_tensor *bl_pow_scalar(bl_tensor *a, double p) { return bl_pow(a, constant_like(a, p)); }
bl_tensor *bl_rsub_scalar(bl_tensor *a, double s) { return bl_sub(constant_like(a, s), a); }
bl_tensor *bl_gt_scalar(bl_tensor *a, double s) { return bl_gt(a, constant_like(a, s)); }

/* ---- where ---- */

static int where_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *cond = node->inputs[0], *a = node->inputs[1], *b = node->inputs[2];
    bl_tensor *zero = bl_scalar(g->dtype, 0.0);
    if (a->requires_grad && !(gin[1] = bl_sum_to(bl_where(cond, g, zero), a->ndim, a->shape))) return BL_ERR;
    if (b->requires_grad && !(gin[2] = bl_sum_to(bl_where(cond, zero, g), b->ndim, b->shape))) return BL_ERR;
    return BL_OK;
}

bl_tensor *bl_where(bl_tensor *cond, bl_tensor *a, bl_tensor *b) {
    BL_NONNULL(cond, a, b);
    BL_CHECK(bl_dtype_is_float(a->dtype) && a->dtype == b->dtype, "where: a and b need the same float dtype, got %s and %s",
             bl_dtype_name(a->dtype), bl_dtype_name(b->dtype));
    BL_CHECK(cond->dtype != BL_F16 && cond->dtype != BL_BF16, "where: condition of dtype %s", bl_dtype_name(cond->dtype));
    int nab, ndim;
    int64_t sab[BL_MAX_DIMS], shape[BL_MAX_DIMS];
    if (bl__broadcast_shape("where", a, b, &nab, sab) != BL_OK) return NULL;
    bl_tensor ab = {.ndim = nab};
    memcpy(ab.shape, sab, sizeof sab);
    if (bl__broadcast_shape("where", cond, &ab, &ndim, shape) != BL_OK) return NULL;
    bl_tensor *out = bl_empty(a->dtype, ndim, shape);
    if (!out) return NULL;
    int64_t sc[BL_MAX_DIMS], sa[BL_MAX_DIMS], sb[BL_MAX_DIMS];
    bl__broadcast_strides(cond, ndim, shape, sc);
    bl__broadcast_strides(a, ndim, shape, sa);
    bl__broadcast_strides(b, ndim, shape, sb);
    ref_where(a->dtype, ndim, shape, out->data, cond->data, cond->dtype, sc, a->data, sa, b->data, sb);
    bl_tensor *in[3] = {cond, a, b};
    bl_autograd_record(out, "where", where_backward, 3, in, 0);
    return out;
}

/* ---- in place ---- */

int bl_axpy_(bl_tensor *y, double alpha, const bl_tensor *x) {
    BL_CHECK_RC(y && x, "axpy_: NULL tensor");
    BL_CHECK_RC(y->dtype == x->dtype && bl_dtype_is_float(y->dtype), "axpy_: dtypes %s and %s",
                bl_dtype_name(y->dtype), bl_dtype_name(x->dtype));
    if (y->dtype == BL_F32 && bl_is_contiguous(y) && bl_is_contiguous(x) && bl_same_shape(x, y)) {
        cpu_axpy_f32(bl_numel(y), (float)alpha, x->data, y->data);
        return BL_OK;
    }
    bl_scope s = bl_scope_begin();
    bl_tensor *sum = bl_add(bl__view_of(y), bl_mul_scalar(bl__view_of(x), alpha));
    int rc = sum && bl_numel(sum) == bl_numel(y) ? bl_copy_(y, sum) : BL_ERR;
    if (sum && rc != BL_OK) bl_set_error("axpy_: cannot add %s into %s", bl__shape(x), bl__shape(y));
    bl_scope_end(s);
    return rc;
}

int bl_scale_(bl_tensor *y, double alpha) {
    BL_CHECK_RC(y && bl_dtype_is_float(y->dtype), "scale_: needs a float tensor");
    if (y->dtype == BL_F32 && bl_is_contiguous(y)) {
        float s = (float)alpha;
        cpu_binary_f32(BL_BIN_MUL, bl_numel(y), y->data, y->data, &s, 1);
        return BL_OK;
    }
    bl_scope s = bl_scope_begin();
    bl_tensor *scaled = bl_mul_scalar(bl__view_of(y), alpha);
    int rc = scaled ? bl_copy_(y, scaled) : BL_ERR;
    bl_scope_end(s);
    return rc;
}
