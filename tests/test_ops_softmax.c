/* Softmax and log-softmax: values against a direct double-precision computation along every kind
 * of dim (last, with row lengths around the 8-lane width; middle; first; non-contiguous input) in
 * F32 and F64, numerical stability (huge logits, -inf entries, an all -inf row), the fused
 * first-order backward against the create_graph ops and against the closed form, finite-difference
 * gradient checks of first and second order in F64, and error reporting. */
#include "test.h"

/* The softmax (or log-softmax) of x along dim, element i of the logical order, in double. */
static double reference_at(const bl_tensor *x, int dim, int64_t i, bool log_space) {
    int64_t inner = 1;
    for (int d = dim + 1; d < x->ndim; d++) inner *= x->shape[d];
    int64_t D = x->shape[dim], pos = (i / inner) % D, first = i - pos * inner;
    double max = -INFINITY, sum = 0;
    for (int64_t d = 0; d < D; d++) max = fmax(max, bl_get_flat(x, first + d * inner));
    for (int64_t d = 0; d < D; d++) sum += exp(bl_get_flat(x, first + d * inner) - max);
    double xi = bl_get_flat(x, i);
    return log_space ? xi - max - log(sum) : exp(xi - max) / sum;
}

static double worst_error(const bl_tensor *x, int dim, const bl_tensor *y, bool log_space) {
    if (!y || !bl_same_shape(x, y)) return INFINITY;
    double worst = 0;
    for (int64_t i = 0; i < bl_numel(x); i++) {
        double ref = reference_at(x, dim, i, log_space), d = fabs(bl_get_flat(y, i) - ref) / (1 + fabs(ref));
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

typedef struct { int ndim; int64_t shape[3]; int dim; } softmax_case;

static const softmax_case value_cases[] = {
    {2, {3, 1}, -1},   {2, {3, 7}, -1},  {2, {5, 8}, 1},  {2, {2, 13}, -1}, {3, {2, 3, 33}, 2},
    {2, {700, 21}, -1}, /* enough rows to run in parallel */
    {3, {2, 5, 3}, 1}, {3, {4, 2, 3}, 0}, {1, {9}, 0},     {2, {3, 0}, -1},
};

static void test_values_match_naive(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++)
        for (size_t c = 0; c < sizeof value_cases / sizeof value_cases[0]; c++) {
            const softmax_case *sc = &value_cases[c];
            bl_tensor *x = test_randn(dts[di], sc->ndim, sc->shape, 10 + c);
            bl_scale_(x, 3.0);
            int dim = sc->dim < 0 ? sc->dim + sc->ndim : sc->dim;
            double tol = dts[di] == BL_F32 ? 2e-6 : 1e-14;
            double e1 = worst_error(x, dim, bl_softmax(x, sc->dim), false);
            double e2 = worst_error(x, dim, bl_log_softmax(x, sc->dim), true);
            CHECK(e1 < tol, "softmax case %zu %s: error %g", c, bl_dtype_name(dts[di]), e1);
            CHECK(e2 < tol, "log_softmax case %zu %s: error %g", c, bl_dtype_name(dts[di]), e2);
        }
}

static void test_non_contiguous_input(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++) {
        bl_tensor *x = bl_transpose(test_randn(dts[di], BL_SHAPE(11, 4), 1), 0, 1); /* (4, 11) */
        CHECK(worst_error(x, 1, bl_softmax(x, -1), false) < 2e-6, "transposed softmax %s", bl_dtype_name(dts[di]));
        CHECK(worst_error(x, 1, bl_log_softmax(x, 1), true) < 2e-6, "transposed log_softmax");
        bl_tensor *s = bl_slice(test_randn(dts[di], BL_SHAPE(3, 20), 2), 1, 1, 20, 2); /* (3, 10), stride 2 */
        CHECK(worst_error(s, 1, bl_softmax(s, 1), false) < 2e-6, "sliced softmax");
    }
}

/* exp of large arguments must not overflow, -inf entries get exactly 0 probability, and a row
 * with nothing but -inf gives NaN (as PyTorch). */
static void test_stability(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = dts[di];
        double values[3][10] = {{1000, 999, 998, -1000, 0, 5, 1000, 3, 2, 1},
                                {-INFINITY, 1, 2, -INFINITY, 3, -INFINITY, 4, 5, 6, 7},
                                {-INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY, -INFINITY,
                                 -INFINITY, -INFINITY, -INFINITY}};
        bl_tensor *x = bl_empty(dt, BL_SHAPE(3, 10));
        for (int64_t i = 0; i < 30; i++) bl_set_flat(x, i, values[i / 10][i % 10]);
        bl_tensor *p = bl_softmax(x, -1), *lp = bl_log_softmax(x, -1);
        CHECK(p && lp, "ran");
        if (!p || !lp) continue;
        for (int64_t i = 0; i < 20; i++) {
            double ref = reference_at(x, 1, i, false), lref = reference_at(x, 1, i, true);
            CHECK(fabs(bl_get_flat(p, i) - ref) < 1e-6, "%s element %lld: %g vs %g", bl_dtype_name(dt), (long long)i,
                  bl_get_flat(p, i), ref);
            CHECK(lref == -INFINITY ? bl_get_flat(lp, i) == -INFINITY : fabs(bl_get_flat(lp, i) - lref) < 1e-6 * (1 + fabs(lref)),
                  "log %s element %lld: %g vs %g", bl_dtype_name(dt), (long long)i, bl_get_flat(lp, i), lref);
        }
        CHECK(bl_get_flat(p, 10) == 0.0 && bl_get_flat(p, 13) == 0.0, "masked entries exactly 0");
        for (int64_t i = 20; i < 30; i++) CHECK(isnan(bl_get_flat(p, i)), "all -inf row gives NaN");
    }
}

static void test_rows_sum_to_one(void) {
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(64, 37), 3);
    bl_scale_(x, 10.0);
    bl_tensor *p = bl_softmax(x, 1);
    for (int64_t r = 0; r < 64; r++) {
        double s = 0;
        for (int64_t j = 0; j < 37; j++) s += bl_get_flat(p, r * 37 + j);
        CHECK(fabs(s - 1) < 1e-6, "row %lld sums to %.9g", (long long)r, s);
    }
}

/* ---- gradients ---------------------------------------------------------------------------------- */

typedef struct { int dim; bool log_space; } fn_args;

static bl_tensor *softmax_fn(bl_tensor *const *in, void *user) {
    const fn_args *a = user;
    return a->log_space ? bl_log_softmax(in[0], a->dim) : bl_softmax(in[0], a->dim);
}

static void test_gradcheck(void) {
    const softmax_case cases[] = {{2, {3, 5}, -1}, {3, {2, 4, 3}, 1}, {3, {3, 2, 9}, 0}, {1, {1}, 0}};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int log_space = 0; log_space < 2; log_space++) {
            bl_tensor *x = test_randn(BL_F64, cases[c].ndim, cases[c].shape, 40 + c);
            x->requires_grad = true;
            fn_args a = {cases[c].dim, log_space};
            CHECK(bl_gradcheck(softmax_fn, &a, 1, &x, 1e-6, 1e-6, true) == BL_OK, "case %zu %s", c,
                  log_space ? "log_softmax" : "softmax");
        }
}

/* dx from the fused first-order kernels (create_graph off) against the ops used under
 * create_graph and against the closed form, in F32 (fast row kernels for the last dim, reference
 * loops otherwise) and F64. */
static void test_fused_backward_matches_ops(void) {
    const softmax_case cases[] = {{2, {5, 13}, -1}, {2, {300, 40}, 1}, {3, {3, 6, 4}, 1}, {2, {4, 3}, 0}};
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++)
        for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
            for (int log_space = 0; log_space < 2; log_space++) {
                const softmax_case *sc = &cases[c];
                bl_tensor *x = test_randn(dts[di], sc->ndim, sc->shape, 60 + c);
                bl_tensor *g = test_randn(dts[di], sc->ndim, sc->shape, 70 + c);
                x->requires_grad = true;
                bl_tensor *y = log_space ? bl_log_softmax(x, sc->dim) : bl_softmax(x, sc->dim);
                bl_tensor *fused, *composed;
                CHECK(bl_autograd_grad(1, &y, &g, 1, &x, &fused, false) == BL_OK, "fused");
                CHECK(bl_autograd_grad(1, &y, &g, 1, &x, &composed, true) == BL_OK, "composed");
                double tol = dts[di] == BL_F32 ? 2e-6 : 1e-13;
                CHECK(test_max_rel_diff(fused, composed) < tol, "case %zu %s %s: fused vs ops %g", c,
                      bl_dtype_name(dts[di]), log_space ? "log" : "", test_max_rel_diff(fused, composed));
                /* Closed form per element: p = softmax(x); softmax: p_i (g_i - sum_j g_j p_j);
                 * log_softmax: g_i - p_i sum_j g_j. */
                int dim = sc->dim < 0 ? sc->dim + sc->ndim : sc->dim;
                int64_t inner = 1;
                for (int d = dim + 1; d < sc->ndim; d++) inner *= sc->shape[d];
                int64_t D = sc->shape[dim];
                double worst = 0;
                for (int64_t i = 0; i < bl_numel(x); i++) {
                    int64_t first = i - ((i / inner) % D) * inner;
                    double total = 0;
                    for (int64_t d = 0; d < D; d++) {
                        int64_t e = first + d * inner;
                        total += bl_get_flat(g, e) * (log_space ? 1 : reference_at(x, dim, e, false));
                    }
                    double p = reference_at(x, dim, i, false), gi = bl_get_flat(g, i);
                    double ref = log_space ? gi - p * total : p * (gi - total);
                    worst = fmax(worst, fabs(bl_get_flat(fused, i) - ref) / (1 + fabs(ref)));
                }
                CHECK(worst < tol * 2, "case %zu %s %s: closed form %g", c, bl_dtype_name(dts[di]),
                      log_space ? "log" : "", worst);
            }
}

static void test_errors(void) {
    bl_clear_error();
    CHECK(bl_softmax(bl_zeros(BL_I64, BL_SHAPE(2, 3)), -1) == NULL && strstr(bl_last_error(), "softmax"),
          "integer input: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_log_softmax(bl_zeros(BL_F32, BL_SHAPE(2, 3)), 2) == NULL && strstr(bl_last_error(), "log_softmax") &&
              strstr(bl_last_error(), "[2, 3]"),
          "dim out of range: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_softmax(NULL, 0) == NULL, "NULL input");
}

TEST_MAIN(TEST(test_values_match_naive), TEST(test_non_contiguous_input), TEST(test_stability), TEST(test_rows_sum_to_one),
          TEST(test_gradcheck), TEST(test_fused_backward_matches_ops), TEST(test_errors))
