/* Finite-difference gradient checks (see bl_gradcheck in autograd.h). The scalar under test is
 * L(x) = sum(f(x) * w) for a fixed random w, so every output element is weighted differently and a
 * transposed or misrouted gradient cannot cancel out. Second order checks the gradient of
 * G(x) = sum_i <dL/dx_i, v_i>, which runs every backward function's own backward. */
#include "ballast/ops.h"
#include "internal.h"

#include <math.h>

typedef struct {
    bl_gradcheck_fn f;
    void *user;
    int n;
    bl_tensor *const *inputs;
    bl_tensor *w;            /* output weighting */
    bl_tensor **v;           /* per-input weighting of the gradient (order 2) */
} check;

static bl_tensor *weighted_output(const check *c) {
    bl_tensor *y = c->f(c->inputs, c->user);
    if (!y) return NULL;
    if (bl_dtype_is_float(y->dtype) && y->dtype != BL_F64) {
        bl_set_error("gradcheck: f must return F64, got %s", bl_dtype_name(y->dtype));
        return NULL;
    }
    return bl_sum(bl_mul(y, c->w));
}

/* G(x) = sum_i <dL/dx_i, v_i>, differentiable when create_graph. */
static bl_tensor *grad_dot_v(const check *c, bool create_graph) {
    bl_tensor *loss = weighted_output(c);
    if (!loss) return NULL;
    bl_tensor *grads[16];
    if (bl_autograd_grad(1, &loss, NULL, c->n, c->inputs, grads, create_graph) != BL_OK) return NULL;
    bl_tensor *total = bl_scalar(BL_F64, 0.0);
    for (int i = 0; i < c->n; i++)
        if (c->inputs[i]->requires_grad) total = bl_add(total, bl_sum(bl_mul(grads[i], c->v[i])));
    return total;
}

/* The scalar (order 1: L, order 2: G) at the current input values, as a double. */
static double evaluate(const check *c, int order) {
    bl_scope s = bl_scope_begin();
    double value;
    if (order == 1) {
        bool prev = bl_set_grad_enabled(false);
        value = bl_item(weighted_output(c));
        bl_set_grad_enabled(prev);
    } else {
        value = bl_item(grad_dot_v(c, false));
    }
    bl_scope_end(s);
    return value;
}

static int compare(const check *c, int order, bl_tensor **analytic, double eps, double tol) {
    double worst = 0, worst_a = 0, worst_n = 0;
    int worst_in = -1;
    int64_t worst_el = -1;
    for (int i = 0; i < c->n; i++) {
        bl_tensor *x = c->inputs[i];
        if (!x->requires_grad) continue;
        for (int64_t j = 0; j < bl_numel(x); j++) {
            double x0 = bl_get_flat(x, j);
            bl_set_flat(x, j, x0 + eps);
            double plus = evaluate(c, order);
            bl_set_flat(x, j, x0 - eps);
            double minus = evaluate(c, order);
            bl_set_flat(x, j, x0);
            double numeric = (plus - minus) / (2 * eps), a = bl_get_flat(analytic[i], j);
            double err = fabs(a - numeric) / (1.0 + fabs(numeric));
            if (!(err <= worst)) {
                worst = err;
                worst_in = i;
                worst_el = j;
                worst_a = a;
                worst_n = numeric;
            }
        }
    }
    if (worst <= tol) return BL_OK;
    bl_set_error("gradcheck (order %d): input %d element %lld: autograd %.10g vs finite difference %.10g "
                 "(relative error %.3g > %.3g)",
                 order, worst_in, (long long)worst_el, worst_a, worst_n, worst, tol);
    return BL_ERR;
}

int bl_gradcheck(bl_gradcheck_fn f, void *user, int n_in, bl_tensor *const *inputs, double eps, double tol,
                 bool order2) {
    BL_CHECK_RC(n_in > 0 && n_in <= 16, "gradcheck: between 1 and 16 inputs");
    for (int i = 0; i < n_in; i++)
        BL_CHECK_RC(inputs[i] && inputs[i]->dtype != BL_F32, "gradcheck: input %d must be a non-NULL F64 (or integer) tensor", i);
    bl_scope s = bl_scope_begin();
    bl_rng rng = bl_rng_make(1234, 0x67726164);
    check c = {f, user, n_in, inputs, NULL, NULL};
    int rc = BL_ERR;
    bl_tensor *y;
    BL_NO_GRAD { y = f(inputs, user); }
    if (!y) goto done;
    c.w = bl_empty(BL_F64, y->ndim, y->shape);
    bl_fill_uniform_(c.w, &rng, 0.5, 1.5);
    bl_tensor *loss = weighted_output(&c);
    bl_tensor *grads[16];
    if (!loss || bl_autograd_grad(1, &loss, NULL, n_in, inputs, grads, false) != BL_OK) goto done;
    if (compare(&c, 1, grads, eps, tol) != BL_OK) goto done;
    if (order2) {
        bl_tensor *v[16];
        for (int i = 0; i < n_in; i++) {
            v[i] = bl_empty(BL_F64, inputs[i]->ndim, inputs[i]->shape);
            if (bl_dtype_is_float(inputs[i]->dtype)) bl_fill_uniform_(v[i], &rng, -1.0, 1.0);
        }
        c.v = v;
        bl_tensor *g = grad_dot_v(&c, true);
        bl_tensor *hv[16];
        if (!g) goto done;
        if (!g->requires_grad) {
            /* The first-order gradient does not depend on x: all second derivatives are 0. */
            for (int i = 0; i < n_in; i++) hv[i] = bl_zeros_like(inputs[i]);
        } else if (bl_autograd_grad(1, &g, NULL, n_in, inputs, hv, false) != BL_OK) {
            goto done;
        }
        if (compare(&c, 2, hv, eps, tol) != BL_OK) goto done;
    }
    rc = BL_OK;
done:
    bl_scope_end(s);
    return rc;
}
