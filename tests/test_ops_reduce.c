/* Reductions along a dim (max, min, argmax, var, norm, logsumexp) and max over all elements:
 * values against a naive per-element computation along every dim (negative dims, keepdim, a
 * transposed input, a size large enough to run in parallel), ties and NaN, numerical stability,
 * both logsumexp backward paths, finite-difference gradient checks of first and second order in
 * F64, and error reporting. */
#include "test.h"

typedef enum { KIND_MAX, KIND_MIN, KIND_ARGMAX, KIND_VAR, KIND_VAR_BIASED, KIND_NORM, KIND_LSE } kind;
static const char *const kind_names[] = {"max", "min", "argmax", "var", "var_biased", "norm", "logsumexp"};

static bl_tensor *apply(kind k, bl_tensor *a, int dim, bool keepdim, double p) {
    switch (k) {
    case KIND_MAX: return bl_max_dim(a, dim, keepdim);
    case KIND_MIN: return bl_min_dim(a, dim, keepdim);
    case KIND_ARGMAX: return bl_argmax(a, dim, keepdim);
    case KIND_VAR: return bl_var_dim(a, dim, true, keepdim);
    case KIND_VAR_BIASED: return bl_var_dim(a, dim, false, keepdim);
    case KIND_NORM: return bl_norm_dim(a, p, dim, keepdim);
    default: return bl_logsumexp(a, dim, keepdim);
    }
}

/* The reduction of the n values v, straight from the definition. */
static double naive(kind k, const double *v, int64_t n, double p) {
    double best = v[0], sum = 0, mean = 0, sq = 0;
    int64_t at = 0;
    for (int64_t i = 1; i < n; i++)
        if (k == KIND_MIN ? v[i] < best : v[i] > best) best = v[i], at = i;
    for (int64_t i = 0; i < n; i++) mean += v[i] / n;
    for (int64_t i = 0; i < n; i++) sq += (v[i] - mean) * (v[i] - mean);
    switch (k) {
    case KIND_MAX:
    case KIND_MIN: return best;
    case KIND_ARGMAX: return (double)at;
    case KIND_VAR: return sq / (n - 1);
    case KIND_VAR_BIASED: return sq / n;
    case KIND_NORM:
        for (int64_t i = 0; i < n; i++) sum += pow(fabs(v[i]), p);
        return pow(sum, 1 / p);
    default:
        for (int64_t i = 0; i < n; i++) sum += exp(v[i] - best);
        return best + log(sum);
    }
}

/* Checks out = reduction of a along dim, element by element, reading a in logical order (so any
 * strides) and walking the output positions in row-major order of the kept dims. */
static void check_against_naive(kind k, bl_tensor *a, int dim, bool keepdim, double p, double tol) {
    bl_tensor *out = apply(k, a, dim, keepdim, p);
    CHECK(out != NULL, "%s dim %d", kind_names[k], dim);
    if (!out) return;
    int d = dim < 0 ? dim + a->ndim : dim;
    int64_t outer = 1, n = a->shape[d], inner = 1;
    for (int i = 0; i < d; i++) outer *= a->shape[i];
    for (int i = d + 1; i < a->ndim; i++) inner *= a->shape[i];
    CHECK(out->ndim == (keepdim ? a->ndim : a->ndim - 1), "%s: result has %d dims", kind_names[k], out->ndim);
    if (keepdim) CHECK(out->shape[d] == 1);
    CHECK(out->dtype == (k == KIND_ARGMAX ? BL_I64 : a->dtype));
    CHECK(bl_numel(out) == outer * inner);
    double v[128], worst = 0;
    for (int64_t o = 0; o < outer; o++)
        for (int64_t i = 0; i < inner; i++) {
            for (int64_t j = 0; j < n; j++) v[j] = bl_get_flat(a, (o * n + j) * inner + i);
            double ref = naive(k, v, n, p), got = bl_get_flat(out, o * inner + i);
            double err = fabs(got - ref) / (1 + fabs(ref));
            if (!(err <= worst)) worst = err;
        }
    CHECK(worst <= tol, "%s %s dim %d keepdim %d: error %g", kind_names[k], bl_dtype_name(a->dtype), dim, keepdim,
          worst);
}

static void test_every_dim_matches_naive(void) {
    bl_dtype types[2] = {BL_F32, BL_F64};
    double tols[2] = {2e-6, 1e-13};
    for (int t = 0; t < 2; t++) {
        bl_tensor *a = bl_to_dtype(test_randn(BL_F64, BL_SHAPE(3, 5, 7), 1), types[t]);
        /* (7, 3, 5) read through permuted strides */
        bl_tensor *perm = bl_permute(bl_to_dtype(test_randn(BL_F64, BL_SHAPE(3, 5, 7), 2), types[t]), (int[]){2, 0, 1});
        for (int k = KIND_MAX; k <= KIND_LSE; k++)
            for (int dim = -3; dim < 3; dim++)
                for (int keep = 0; keep < 2; keep++) {
                    double p = k == KIND_NORM ? (dim + 3 == 0 ? 1.0 : dim + 3 == 1 ? 2.0 : 3.5) : 0;
                    check_against_naive(k, a, dim, keep, p, tols[t]);
                    check_against_naive(k, perm, dim, keep, p, tols[t]);
                }
    }
}

static void test_large_f32_runs_in_parallel(void) {
    bl_set_threads(2);
    bl_tensor *a = bl_to_dtype(test_randn(BL_F64, BL_SHAPE(53, 40, 97), 3), BL_F32);
    for (int k = KIND_MAX; k <= KIND_LSE; k++)
        for (int dim = 0; dim < 3; dim++)
            check_against_naive(k, a, dim, false, 2.0, 2e-6);
    bl_tensor *wide = bl_to_dtype(test_randn(BL_F64, BL_SHAPE(3, 20000), 4), BL_F32);
    check_against_naive(KIND_MAX, wide, 0, true, 0, 0);
    check_against_naive(KIND_LSE, wide, 0, false, 0, 2e-6);
}

static void test_max_of_all_and_scalars(void) {
    bl_tensor *a = bl_transpose(test_randn(BL_F64, BL_SHAPE(4, 6), 5), 0, 1);
    double best = -INFINITY;
    for (int64_t i = 0; i < 24; i++) best = fmax(best, bl_get_flat(a, i));
    bl_tensor *m = bl_max(a);
    CHECK(m && m->ndim == 0 && bl_item(m) == best);
    /* a 0-d tensor reduces over its single implicit dim to itself */
    bl_tensor *s = bl_scalar(BL_F32, 2.5);
    CHECK(bl_item(bl_max_dim(s, -1, false)) == 2.5 && bl_max_dim(s, 0, true)->ndim == 0);
    CHECK(bl_item(bl_argmax(s, 0, false)) == 0 && bl_item(bl_logsumexp(s, 0, false)) == 2.5);
}

static void test_ties_pick_first_and_nan_wins(void) {
    bl_tensor *a = bl_from_data(BL_F64, BL_SHAPE(2, 4), (double[]){1, 3, 3, 2, 0, -1, 5, -1});
    bl_tensor *am = bl_argmax(a, 1, false);
    CHECK(bl_get_flat(am, 0) == 1 && bl_get_flat(am, 1) == 2);
    bl_tensor *mn = bl_min_dim(a, -1, true);
    CHECK(bl_get_flat(mn, 0) == 1 && bl_get_flat(mn, 1) == -1);
    /* the gradient goes to the first extreme only */
    a->requires_grad = true;
    CHECK(bl_backward(bl_sum(bl_add(bl_max_dim(a, 1, false), bl_min_dim(a, 1, false)))) == BL_OK);
    double expect[8] = {1, 1, 0, 0, 0, 1, 1, 0};
    for (int i = 0; i < 8; i++) CHECK(a->grad && bl_get_flat(a->grad, i) == expect[i], "element %d", i);
    bl_tensor *n = bl_from_data(BL_F32, BL_SHAPE(5), (float[]){1, NAN, 7, NAN, 2});
    CHECK(isnan(bl_item(bl_max(n))) && isnan(bl_item(bl_min_dim(n, 0, false))) && bl_item(bl_argmax(n, 0, false)) == 1);
    CHECK(isnan(bl_item(bl_logsumexp(n, 0, false))) && isnan(bl_item(bl_var_dim(n, 0, true, false))));
}

static void test_stability(void) {
    bl_dtype types[2] = {BL_F32, BL_F64};
    for (int t = 0; t < 2; t++) {
        bl_tensor *big = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(3), (double[]){1000, 1000, 900}), types[t]);
        CHECK_CLOSE(bl_item(bl_logsumexp(big, 0, false)), 1000 + log(2.0), 1e-6);
        bl_tensor *small = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(2), (double[]){-1000, -1001}), types[t]);
        CHECK_CLOSE(bl_item(bl_logsumexp(small, 0, false)), -1000 + log1p(exp(-1.0)), 1e-6);
        bl_tensor *ninf = bl_full(types[t], BL_SHAPE(2, 2), -INFINITY);
        CHECK(bl_get_flat(bl_logsumexp(ninf, 1, false), 0) == -INFINITY);
        bl_tensor *pinf = bl_from_data(BL_F64, BL_SHAPE(2), (double[]){INFINITY, 0});
        CHECK(bl_item(bl_logsumexp(pinf, 0, false)) == INFINITY);
        /* variance of values far from zero: two-pass, no cancellation */
        bl_tensor *shifted = bl_add_scalar(bl_to_dtype(test_randn(BL_F64, BL_SHAPE(50), 6), types[t]), 1e4);
        check_against_naive(KIND_VAR, shifted, 0, false, 0, t == 0 ? 1e-4 : 1e-9);
        /* a single value has no unbiased variance */
        CHECK(isnan(bl_item(bl_var_dim(bl_ones(types[t], BL_SHAPE(1)), 0, true, false))));
        CHECK(bl_item(bl_var_dim(bl_ones(types[t], BL_SHAPE(1)), 0, false, false)) == 0);
    }
}

/* Gradient of sum(lse * w) through the fused kernel and through ops, against w * softmax. */
static void test_logsumexp_backward_paths(void) {
    bl_dtype types[2] = {BL_F32, BL_F64};
    for (int t = 0; t < 2; t++) {
        bl_tensor *base = bl_to_dtype(test_randn(BL_F64, BL_SHAPE(5, 3), 7), types[t]);
        base->requires_grad = true;
        bl_tensor *x = bl_transpose(base, 0, 1); /* (3, 5), reduced over dim 1 */
        bl_tensor *w = bl_to_dtype(test_randn(BL_F64, BL_SHAPE(3), 8), types[t]);
        bl_tensor *loss = bl_sum(bl_mul(bl_logsumexp(x, -1, false), w));
        for (int create_graph = 0; create_graph < 2; create_graph++) {
            bl_tensor *g = NULL;
            CHECK(bl_autograd_grad(1, &loss, NULL, 1, &base, &g, create_graph) == BL_OK);
            if (!g) return;
            for (int i = 0; i < 3; i++) {
                double total = 0;
                for (int j = 0; j < 5; j++) total += exp(bl_get_flat(base, j * 3 + i));
                for (int j = 0; j < 5; j++) {
                    double ref = bl_get_flat(w, i) * exp(bl_get_flat(base, j * 3 + i)) / total;
                    CHECK_CLOSE(bl_get_flat(g, j * 3 + i), ref, t == 0 ? 1e-6 : 1e-13);
                }
            }
        }
    }
}

static void test_zero_norm_has_zero_gradient(void) {
    bl_tensor *a = bl_from_data(BL_F64, BL_SHAPE(2, 3), (double[]){0, 0, 0, 3, -4, 0});
    a->requires_grad = true;
    double ps[3] = {1, 2, 3};
    for (int k = 0; k < 3; k++)
        for (int create_graph = 0; create_graph < 2; create_graph++) {
            bl_tensor *loss = bl_sum(bl_norm_dim(a, ps[k], 1, false)), *g = NULL;
            CHECK(bl_autograd_grad(1, &loss, NULL, 1, &a, &g, create_graph) == BL_OK);
            for (int i = 0; i < 3; i++) CHECK(g && bl_get_flat(g, i) == 0, "p %g element %d", ps[k], i);
            if (ps[k] == 2) CHECK(g && bl_get_flat(g, 3) == 0.6 && bl_get_flat(g, 4) == -0.8);
            if (create_graph) {
                /* and the gradient's own gradient is finite there too */
                bl_tensor *gg = NULL, *gs = bl_sum(bl_mul(g, g));
                CHECK(gs && (!gs->requires_grad || bl_autograd_grad(1, &gs, NULL, 1, &a, &gg, false) == BL_OK));
                for (int i = 0; gg && i < 6; i++) CHECK(isfinite(bl_get_flat(gg, i)), "p %g element %d", ps[k], i);
            }
        }
}

typedef struct { kind k; int dim; bool keepdim; double p; } reduce_case;

static bl_tensor *reduce_of_permuted(bl_tensor *const *x, void *user) {
    const reduce_case *c = user;
    return apply(c->k, bl_permute(x[0], (int[]){1, 2, 0}), c->dim, c->keepdim, c->p);
}

static bl_tensor *max_of_all(bl_tensor *const *x, void *user) { return bl_max(bl_transpose(x[0], 0, 1)); }

static void test_gradcheck_second_order(void) {
    const reduce_case cases[] = {
        {KIND_MAX, 0, false, 0},        {KIND_MAX, -1, true, 0},       {KIND_MIN, 1, false, 0},
        {KIND_VAR, -2, false, 0},       {KIND_VAR, 2, true, 0},        {KIND_VAR_BIASED, 0, true, 0},
        {KIND_NORM, 1, false, 2},       {KIND_NORM, -1, true, 1},      {KIND_NORM, 0, false, 3},
        {KIND_NORM, 2, false, 1.5},     {KIND_LSE, 0, true, 0},        {KIND_LSE, -1, false, 0},
        {KIND_LSE, 1, false, 0},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const reduce_case *c = &cases[i];
        bl_tensor *x = test_randn(BL_F64, BL_SHAPE(4, 2, 3), 10 + i);
        /* |x| >= 0.2: sign(x) and |x|^(p-1) stay smooth under the finite-difference steps */
        for (int64_t j = 0; j < 24; j++) {
            double v = bl_get_flat(x, j);
            bl_set_flat(x, j, v + (v < 0 ? -0.2 : 0.2));
        }
        x->requires_grad = true;
        CHECK(bl_gradcheck(reduce_of_permuted, (void *)c, 1, &x, 1e-6, 1e-6, true) == BL_OK, "%s dim %d keepdim %d p %g: %s",
              kind_names[c->k], c->dim, c->keepdim, c->p, bl_last_error());
        bl_clear_error();
    }
    bl_tensor *x = test_randn(BL_F64, BL_SHAPE(3, 4), 30);
    x->requires_grad = true;
    CHECK(bl_gradcheck(max_of_all, NULL, 1, &x, 1e-6, 1e-6, true) == BL_OK, "%s", bl_last_error());
}

static void test_errors(void) {
    bl_tensor *a = bl_zeros(BL_F32, BL_SHAPE(2, 3));
    CHECK(bl_max_dim(a, 2, false) == NULL);
    CHECK(strstr(bl_last_error(), "max_dim") && strstr(bl_last_error(), "[2, 3]"), "message: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_logsumexp(a, -3, false) == NULL && strstr(bl_last_error(), "logsumexp"));
    bl_clear_error();
    CHECK(bl_max_dim(bl_zeros(BL_F32, BL_SHAPE(2, 0)), 1, false) == NULL && strstr(bl_last_error(), "empty"));
    bl_clear_error();
    CHECK(bl_norm_dim(a, 0.5, 0, false) == NULL && strstr(bl_last_error(), "norm_dim"));
    bl_clear_error();
    CHECK(bl_var_dim(bl_zeros(BL_I64, BL_SHAPE(3)), 0, true, false) == NULL && strstr(bl_last_error(), "I64"));
    CHECK(bl_argmax(NULL, 0, false) == NULL);
}

TEST_MAIN(TEST(test_every_dim_matches_naive), TEST(test_large_f32_runs_in_parallel), TEST(test_max_of_all_and_scalars),
          TEST(test_ties_pick_first_and_nan_wins), TEST(test_stability), TEST(test_logsumexp_backward_paths),
          TEST(test_zero_norm_has_zero_gradient), TEST(test_gradcheck_second_order), TEST(test_errors))
