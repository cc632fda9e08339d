/* Elementwise unary ops: values against libm on odd shapes (contiguous, transposed and large
 * enough to run in parallel), both backward paths (the fused first-order kernel and the ops built
 * for create_graph) against closed-form derivatives, finite-difference gradient checks of first and
 * second order in F64, numerical stability at extreme inputs, and error reporting. */
#include "test.h"

#define LEAKY_SLOPE 0.1
#define CLAMP_LO (-0.5)
#define CLAMP_HI 0.8

static bl_tensor *leaky_relu(bl_tensor *a) { return bl_leaky_relu(a, LEAKY_SLOPE); }
static bl_tensor *clamp(bl_tensor *a) { return bl_clamp(a, CLAMP_LO, CLAMP_HI); }

/* Independent references, in double, straight from the definitions. */
static double ref_neg(double v) { return -v; }
static double ref_neg_d(double v) { return -1; }
static double ref_exp_d(double v) { return exp(v); }
static double ref_log_d(double v) { return 1 / v; }
static double ref_sqrt_d(double v) { return 0.5 / sqrt(v); }
static double ref_abs_d(double v) { return v > 0 ? 1 : -1; }
static double ref_sign(double v) { return v > 0 ? 1 : v < 0 ? -1 : 0; }
static double ref_zero(double v) { return 0; }
static double ref_relu(double v) { return v > 0 ? v : 0; }
static double ref_relu_d(double v) { return v > 0; }
static double ref_leaky(double v) { return v > 0 ? v : LEAKY_SLOPE * v; }
static double ref_leaky_d(double v) { return v > 0 ? 1 : LEAKY_SLOPE; }
static double ref_gelu(double v) { return 0.5 * v * (1 + erf(v / sqrt(2))); }
static double ref_gelu_d(double v) { return 0.5 * (1 + erf(v / sqrt(2))) + v * exp(-v * v / 2) / sqrt(2 * M_PI); }
static double ref_sigmoid(double v) { return 1 / (1 + exp(-v)); }
static double ref_sigmoid_d(double v) { return ref_sigmoid(v) * (1 - ref_sigmoid(v)); }
static double ref_tanh_d(double v) { return 1 - tanh(v) * tanh(v); }
static double ref_softplus(double v) { return v > 20 ? v : log(1 + exp(v)); }
static double ref_clamp(double v) { return v < CLAMP_LO ? CLAMP_LO : v > CLAMP_HI ? CLAMP_HI : v; }
static double ref_clamp_d(double v) { return v >= CLAMP_LO && v <= CLAMP_HI; }

typedef struct {
    const char *name;
    bl_tensor *(*op)(bl_tensor *);
    double (*value)(double);
    double (*derivative)(double);
    bool positive_only;  /* log, sqrt */
    double kinks[2];     /* points where f' jumps, kept away from; NAN when unused */
} unary_case;

static const unary_case cases[] = {
    {"neg", bl_neg, ref_neg, ref_neg_d, false, {NAN, NAN}},
    {"exp", bl_exp, exp, ref_exp_d, false, {NAN, NAN}},
    {"log", bl_log, log, ref_log_d, true, {NAN, NAN}},
    {"sqrt", bl_sqrt, sqrt, ref_sqrt_d, true, {NAN, NAN}},
    {"abs", bl_abs, fabs, ref_abs_d, false, {0, NAN}},
    {"sign", bl_sign, ref_sign, ref_zero, false, {0, NAN}},
    {"relu", bl_relu, ref_relu, ref_relu_d, false, {0, NAN}},
    {"leaky_relu", leaky_relu, ref_leaky, ref_leaky_d, false, {0, NAN}},
    {"gelu", bl_gelu, ref_gelu, ref_gelu_d, false, {NAN, NAN}},
    {"sigmoid", bl_sigmoid, ref_sigmoid, ref_sigmoid_d, false, {NAN, NAN}},
    {"tanh", bl_tanh, tanh, ref_tanh_d, false, {NAN, NAN}},
    {"softplus", bl_softplus, ref_softplus, ref_sigmoid, false, {NAN, NAN}},
    {"clamp", clamp, ref_clamp, ref_clamp_d, false, {CLAMP_LO, CLAMP_HI}},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

/* F64 values of spread ~2 fitted to the case's domain: positive where needed, and at least 0.1 away
 * from every kink, so finite differences never straddle one. */
static bl_tensor *inputs_for(const unary_case *c, int ndim, const int64_t *shape, uint64_t seed) {
    bl_tensor *t = test_randn(BL_F64, ndim, shape, seed);
    for (int64_t i = 0; i < bl_numel(t); i++) {
        double v = 2 * bl_get_flat(t, i);
        if (c->positive_only) v = fabs(v) + 0.1;
        for (int k = 0; k < 2; k++)
            if (!isnan(c->kinks[k]) && fabs(v - c->kinks[k]) < 0.1) v = c->kinks[k] + (v < c->kinks[k] ? -0.15 : 0.15);
        bl_set_flat(t, i, v);
    }
    return t;
}

/* Largest relative difference between out and c->value over the elements of x (logical order). */
static double worst_value_error(const unary_case *c, const bl_tensor *x, const bl_tensor *out) {
    double worst = 0;
    for (int64_t i = 0; i < bl_numel(x); i++) {
        double ref = c->value(bl_get_flat(x, i)), d = fabs(bl_get_flat(out, i) - ref) / (1 + fabs(ref));
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

static void test_values_match_libm(void) {
    bl_dtype types[2] = {BL_F32, BL_F64};
    double tols[2] = {2e-6, 1e-13};
    for (int k = 0; k < 2; k++)
        for (int ci = 0; ci < N_CASES; ci++) {
            const unary_case *c = &cases[ci];
            bl_tensor *x = bl_to_dtype(inputs_for(c, BL_SHAPE(3, 1, 7), 100 + ci), types[k]);
            bl_tensor *y = c->op(x);
            CHECK(y && y->dtype == types[k] && bl_same_shape(y, x), "%s", c->name);
            CHECK(worst_value_error(c, x, y) < tols[k], "%s %s: error %g", c->name, bl_dtype_name(types[k]),
                  worst_value_error(c, x, y));
            /* a transposed (non-contiguous) input gives a contiguous result in logical order */
            bl_tensor *xt = bl_transpose(bl_to_dtype(inputs_for(c, BL_SHAPE(5, 3), 200 + ci), types[k]), 0, 1);
            bl_tensor *yt = c->op(xt);
            CHECK(!bl_is_contiguous(xt) && yt && bl_is_contiguous(yt) && yt->shape[0] == 3 && yt->shape[1] == 5);
            CHECK(worst_value_error(c, xt, yt) < tols[k], "%s %s transposed: error %g", c->name,
                  bl_dtype_name(types[k]), worst_value_error(c, xt, yt));
        }
}

static void test_large_f32_runs_in_parallel(void) {
    bl_set_threads(2);
    for (int ci = 0; ci < N_CASES; ci++) {
        const unary_case *c = &cases[ci];
        bl_tensor *x = bl_to_dtype(inputs_for(c, BL_SHAPE(257, 131), 300 + ci), BL_F32);
        bl_tensor *y = c->op(x);
        CHECK(worst_value_error(c, x, y) < 2e-6, "%s: error %g", c->name, worst_value_error(c, x, y));
    }
}

/* The gradient of sum(f(x) * w) at a transposed x, by both backward paths, against w * f'(x). */
static void check_gradient_paths(const unary_case *c, bl_dtype dt, double tol) {
    bl_tensor *base = bl_to_dtype(inputs_for(c, BL_SHAPE(4, 3), 400), dt);
    base->requires_grad = true;
    bl_tensor *x = bl_transpose(base, 0, 1); /* (3, 4), non-contiguous */
    bl_tensor *w = bl_to_dtype(test_randn(BL_F64, BL_SHAPE(3, 4), 401), dt);
    bl_tensor *loss = bl_sum(bl_mul(c->op(x), w));
    for (int create_graph = 0; create_graph < 2; create_graph++) {
        bl_tensor *g = NULL;
        CHECK(bl_autograd_grad(1, &loss, NULL, 1, &base, &g, create_graph) == BL_OK, "%s", c->name);
        if (!g) return;
        double worst = 0;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 4; j++) {
                double ref = bl_get_flat(w, i * 4 + j) * c->derivative(bl_get_flat(base, j * 3 + i));
                double d = fabs(bl_get_flat(g, j * 3 + i) - ref) / (1 + fabs(ref));
                if (!(d <= worst)) worst = d;
            }
        CHECK(worst < tol, "%s %s (create_graph %d): gradient error %g", c->name, bl_dtype_name(dt), create_graph,
              worst);
    }
}

static void test_fused_and_composite_backward(void) {
    for (int ci = 0; ci < N_CASES; ci++) {
        if (cases[ci].op == bl_sign) continue; /* not differentiated: checked separately */
        check_gradient_paths(&cases[ci], BL_F64, 1e-12);
        check_gradient_paths(&cases[ci], BL_F32, 2e-6);
    }
}

static bl_tensor *apply_transposed(bl_tensor *const *x, void *user) {
    const unary_case *c = user;
    return c->op(bl_transpose(x[0], 0, 1));
}

static void test_gradcheck_second_order(void) {
    for (int ci = 0; ci < N_CASES; ci++) {
        const unary_case *c = &cases[ci];
        if (c->op == bl_sign) continue;
        bl_tensor *x = inputs_for(c, BL_SHAPE(3, 2), 500 + ci);
        x->requires_grad = true;
        CHECK(bl_gradcheck(apply_transposed, (void *)c, 1, &x, 1e-6, 1e-6, true) == BL_OK, "%s: %s", c->name,
              bl_last_error());
        bl_clear_error();
    }
}

/* Composition keeps higher derivatives right: d^2/dx^2 of gelu(gelu(x)) and of tanh(softplus(x)). */
static bl_tensor *nested(bl_tensor *const *x, void *user) {
    return bl_add(bl_gelu(bl_gelu(x[0])), bl_tanh(bl_softplus(bl_mul(x[0], x[0]))));
}

static void test_gradcheck_nested(void) {
    bl_tensor *x = test_randn(BL_F64, BL_SHAPE(5), 600);
    x->requires_grad = true;
    CHECK(bl_gradcheck(nested, NULL, 1, &x, 1e-6, 1e-6, true) == BL_OK, "%s", bl_last_error());
}

/* GELU's second and third derivatives with create_graph at every level, so the gradient's own
 * backward is built from ops too: gelu'' = phi (2 - x^2), gelu''' = x phi (x^2 - 4). */
static void test_gelu_third_derivative(void) {
    bl_tensor *x = bl_from_data(BL_F64, BL_SHAPE(5), (double[]){-2.5, -0.7, 0.3, 1.1, 3.0});
    x->requires_grad = true;
    bl_tensor *loss = bl_sum(bl_gelu(x)), *g1 = NULL, *g2 = NULL, *g3 = NULL;
    CHECK(bl_autograd_grad(1, &loss, NULL, 1, &x, &g1, true) == BL_OK);
    bl_tensor *s1 = bl_sum(g1);
    CHECK(bl_autograd_grad(1, &s1, NULL, 1, &x, &g2, true) == BL_OK);
    bl_tensor *s2 = bl_sum(g2);
    CHECK(bl_autograd_grad(1, &s2, NULL, 1, &x, &g3, true) == BL_OK);
    for (int i = 0; g3 && i < 5; i++) {
        double v = bl_get_flat(x, i), phi = exp(-v * v / 2) / sqrt(2 * M_PI);
        CHECK_CLOSE(bl_get_flat(g1, i), ref_gelu_d(v), 1e-13);
        CHECK_CLOSE(bl_get_flat(g2, i), phi * (2 - v * v), 1e-13);
        CHECK_CLOSE(bl_get_flat(g3, i), v * phi * (v * v - 4), 1e-13);
    }
}

static void test_sign_is_not_differentiated(void) {
    bl_tensor *x = bl_from_data(BL_F64, BL_SHAPE(4), (double[]){-2, 0, 3, -0.0});
    x->requires_grad = true;
    bl_tensor *s = bl_sign(x);
    CHECK(s && !s->requires_grad && s->grad_fn == NULL);
    CHECK(bl_get_flat(s, 0) == -1 && bl_get_flat(s, 1) == 0 && bl_get_flat(s, 2) == 1 && bl_get_flat(s, 3) == 0);
}

static void test_extreme_inputs_are_stable(void) {
    bl_dtype types[2] = {BL_F32, BL_F64};
    double big[6] = {-1000, -100, -30, 25, 100, 1000};
    for (int k = 0; k < 2; k++) {
        bl_tensor *x = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(6), big), types[k]);
        bl_tensor *sig = bl_sigmoid(x), *sp = bl_softplus(x), *th = bl_tanh(x), *ge = bl_gelu(x);
        for (int i = 0; i < 6; i++) {
            double v = big[i];
            CHECK(isfinite(bl_get_flat(sig, i)) && isfinite(bl_get_flat(sp, i)) && isfinite(bl_get_flat(th, i)) &&
                  isfinite(bl_get_flat(ge, i)), "%s at %g", bl_dtype_name(types[k]), v);
            CHECK_CLOSE(bl_get_flat(sig, i), v > 0 ? 1.0 : 0.0, 1e-6);
            CHECK_CLOSE(bl_get_flat(sp, i), v > 0 ? v : 0.0, 1e-6);
            CHECK_CLOSE(bl_get_flat(ge, i), v > 0 ? v : 0.0, 1e-6);
        }
        /* the tails keep relative precision where they are representable */
        CHECK_CLOSE(bl_get_flat(sig, 2) / exp(-30.0), 1.0, 1e-5);
        CHECK_CLOSE(bl_get_flat(sp, 2) / exp(-30.0), 1.0, 1e-5);
    }
    /* softplus follows torch's threshold: exactly linear above 20, log1p(exp(x)) at and below */
    bl_tensor *at = bl_softplus(bl_from_data(BL_F64, BL_SHAPE(2), (double[]){20.0, 20.5}));
    CHECK(bl_get_flat(at, 0) == log1p(exp(20.0)) && bl_get_flat(at, 1) == 20.5);
    /* gelu's left tail, where 1 + erf(x) would cancel to 0 */
    CHECK_CLOSE(bl_item(bl_gelu(bl_scalar(BL_F64, -8.0))) / (-8.0 * 0.5 * erfc(8.0 / sqrt(2))), 1.0, 1e-12);
}

static void test_nan_and_clamp_edges(void) {
    bl_tensor *x = bl_from_data(BL_F64, BL_SHAPE(3), (double[]){NAN, -2, 2});
    CHECK(isnan(bl_get_flat(bl_relu(x), 0)) && isnan(bl_get_flat(bl_clamp(x, -1, 1), 0)));
    bl_tensor *c = bl_clamp(x, 1, -1); /* lo > hi: everything is hi, as torch */
    CHECK(bl_get_flat(c, 1) == -1 && bl_get_flat(c, 2) == -1);
    bl_tensor *half_open = bl_clamp(x, -INFINITY, 0.5);
    CHECK(bl_get_flat(half_open, 1) == -2 && bl_get_flat(half_open, 2) == 0.5);
    /* at the bounds themselves the gradient passes (torch's mask is lo <= x <= hi) */
    bl_tensor *b = bl_from_data(BL_F64, BL_SHAPE(2), (double[]){-1, 1});
    b->requires_grad = true;
    CHECK(bl_backward(bl_sum(bl_clamp(b, -1, 1))) == BL_OK);
    CHECK(b->grad && bl_get_flat(b->grad, 0) == 1 && bl_get_flat(b->grad, 1) == 1);
}

static void test_errors(void) {
    CHECK(bl_exp(NULL) == NULL);
    bl_tensor *labels = bl_zeros(BL_I64, BL_SHAPE(2, 3));
    CHECK(bl_gelu(labels) == NULL);
    CHECK(strstr(bl_last_error(), "gelu") && strstr(bl_last_error(), "I64") && strstr(bl_last_error(), "[2, 3]"),
          "message: %s", bl_last_error());
}

TEST_MAIN(TEST(test_values_match_libm), TEST(test_large_f32_runs_in_parallel), TEST(test_fused_and_composite_backward),
          TEST(test_gradcheck_second_order), TEST(test_gradcheck_nested), TEST(test_gelu_third_derivative),
          TEST(test_sign_is_not_differentiated), TEST(test_extreme_inputs_are_stable), TEST(test_nan_and_clamp_edges),
          TEST(test_errors))
