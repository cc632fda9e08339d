/* The vectorized F32 unary kernels (backend/cpu/unary.h) against double-precision libm: exp,
 * sigmoid, tanh, GELU and the normal CDF forward, GELU's and the CDF's derivatives, in relative
 * error over dense grids that reach far into the tails (where GELU's value is tiny and a
 * cancelling 1 + erf would lose it), plus inf, NaN, signed zero, ragged lengths, in-place use,
 * the multi-threaded split and the functions handed to the reference kernels. */
#include "test.h"

#include "backend/cpu/unary.h"

#include <omp.h>

static double phi(double v) { return exp(-0.5 * v * v) / sqrt(2 * M_PI); }
static double cdf(double v) { return 0.5 * erfc(-v / sqrt(2)); }

static double exact_fwd(bl_unary_op op, double v) {
    switch (op) {
    case BL_UNARY_EXP: return exp(v);
    case BL_UNARY_SIGMOID: return 1 / (1 + exp(-v));
    case BL_UNARY_TANH: return tanh(v);
    case BL_UNARY_GELU: return v * cdf(v);
    default: return cdf(v);
    }
}

static double exact_derivative(bl_unary_op op, double v) { return op == BL_UNARY_GELU ? cdf(v) + v * phi(v) : phi(v); }

/* The size an error is measured against: the value itself, except for GELU's derivative
 * Phi + x phi, whose two terms cancel near its root (x = -0.75): there float rounding of the terms
 * is the best any float evaluation can do, so the error counts relative to |Phi| + |x phi|. */
static double error_scale(bl_unary_op op, bool derivative, double v, double want) {
    return op == BL_UNARY_GELU && derivative ? cdf(v) + fabs(v) * phi(v) : fabs(want);
}

/* Worst relative error of f32 results over `n` points of [lo, hi], counting only exact values whose
 * magnitude is at least `floor` (below it float itself has no relative precision left). */
static double worst_error(bl_unary_op op, bool derivative, double lo, double hi, int64_t n, double floor) {
    float *x = malloc(sizeof(float) * (size_t)n), *y = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = (float)(lo + (hi - lo) * (double)i / (double)(n - 1));
    bl_unary_args args = {.op = op};
    if (derivative) cpu_unary_bwd_f32(&args, n, x, NULL, NULL, y);
    else cpu_unary_fwd_f32(&args, n, x, y);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double want = derivative ? exact_derivative(op, x[i]) : exact_fwd(op, x[i]);
        if (fabs(want) < floor) continue;
        double e = fabs(y[i] - want) / error_scale(op, derivative, x[i], want);
        if (!(e <= worst)) worst = e;
    }
    free(x);
    free(y);
    return worst;
}

static void test_accuracy(void) {
    struct { bl_unary_op op; bool derivative; double lo, hi, tol; const char *name; } cases[] = {
        {BL_UNARY_EXP, false, -87, 88, 2e-7, "exp"},
        {BL_UNARY_SIGMOID, false, -80, 80, 3e-7, "sigmoid"},
        {BL_UNARY_TANH, false, -10, 10, 2.5e-7, "tanh"},
        {BL_UNARY_TANH, false, -0.7, 0.7, 2.5e-7, "tanh near 0"},
        {BL_UNARY_GELU, false, -13, 13, 8e-7, "gelu"},
        {BL_UNARY_GELU, false, -3, 3, 8e-7, "gelu, bulk"},
        {BL_UNARY_NORMAL_CDF, false, -13, 13, 8e-7, "normal cdf"},
        {BL_UNARY_GELU, true, -13, 13, 8e-7, "gelu derivative"},
        {BL_UNARY_NORMAL_CDF, true, -13, 13, 5e-7, "normal density"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        double e = worst_error(cases[c].op, cases[c].derivative, cases[c].lo, cases[c].hi, 200003, 1e-37);
        CHECK(e < cases[c].tol, "%s: worst relative error %.3g (tolerance %.1g)", cases[c].name, e, cases[c].tol);
    }
}

static void test_special_values(void) {
    float x[6] = {INFINITY, -INFINITY, NAN, -0.0f, 30.0f, -30.0f}, y[6];
    bl_unary_args gelu = {.op = BL_UNARY_GELU}, cdf_args = {.op = BL_UNARY_NORMAL_CDF}, th = {.op = BL_UNARY_TANH};
    cpu_unary_fwd_f32(&gelu, 6, x, y);
    CHECK(y[0] == INFINITY && isnan(y[2]) && y[3] == 0 && y[4] == 30.0f && y[5] == 0, "gelu: %g %g %g %g %g", y[0], y[2],
          y[3], y[4], y[5]);
    cpu_unary_fwd_f32(&cdf_args, 6, x, y);
    CHECK(y[0] == 1 && y[1] == 0 && y[3] == 0.5f && y[4] == 1 && y[5] == 0, "cdf: %g %g %g", y[0], y[1], y[3]);
    cpu_unary_fwd_f32(&th, 6, x, y);
    CHECK(y[0] == 1 && y[1] == -1 && isnan(y[2]) && y[3] == 0 && signbit(y[3]) && y[4] == 1 && y[5] == -1,
          "tanh: %g %g %g %g", y[0], y[1], y[3], y[5]);
    bl_unary_args ex = {.op = BL_UNARY_EXP};
    cpu_unary_fwd_f32(&ex, 6, x, y);
    CHECK(y[0] == INFINITY && y[1] == 0 && isnan(y[2]) && y[3] == 1, "exp: %g %g %g", y[0], y[1], y[3]);
    /* (at x = inf, Phi + x phi is 1 + inf * 0, NaN, as in the reference and in PyTorch) */
    cpu_unary_bwd_f32(&gelu, 6, x, NULL, NULL, y);
    CHECK(isnan(y[2]) && y[3] == 0.5f && y[4] == 1 && y[5] == 0, "gelu': %g %g %g", y[3], y[4], y[5]);
}

/* Every length from 0 to 40 (ragged ends), in place, with an upstream gradient, and a length big
 * enough for the threaded split, each against the reference kernels. */
static void test_lengths_in_place_and_threads(void) {
    int64_t n_big = 100003;
    float *x = malloc(sizeof(float) * (size_t)n_big), *dy = malloc(sizeof(float) * (size_t)n_big);
    float *got = malloc(sizeof(float) * (size_t)n_big), *want = malloc(sizeof(float) * (size_t)n_big);
    for (int64_t i = 0; i < n_big; i++) {
        x[i] = (float)(6 * sin(0.37 * (double)i));
        dy[i] = (float)cos(0.11 * (double)i);
    }
    bl_unary_op ops[5] = {BL_UNARY_EXP, BL_UNARY_SIGMOID, BL_UNARY_TANH, BL_UNARY_GELU, BL_UNARY_NORMAL_CDF};
    for (int o = 0; o < 5; o++) {
        bl_unary_args args = {.op = ops[o]};
        int64_t lengths[3] = {0, 17, n_big};
        for (int64_t n = 0; n <= 40; n++) {
            memcpy(got, x, sizeof(float) * (size_t)n);
            cpu_unary_fwd_f32(&args, n, got, got); /* in place */
            ref_unary_fwd_f32(&args, n, x, want);
            for (int64_t i = 0; i < n; i++)
                CHECK(fabsf(got[i] - want[i]) <= 2e-6f * (1 + fabsf(want[i])), "op %d n %lld at %lld: %g vs %g", o,
                      (long long)n, (long long)i, got[i], want[i]);
        }
        for (int l = 0; l < 3; l++) {
            int64_t n = lengths[l];
            cpu_unary_fwd_f32(&args, n, x, got);
            ref_unary_fwd_f32(&args, n, x, want);
            double worst = 0;
            for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - want[i]) / (1 + fabs(want[i])));
            CHECK(worst < 2e-6, "op %d forward, n %lld: %g", o, (long long)n, worst);
            memcpy(got, dy, sizeof(float) * (size_t)n);
            cpu_unary_bwd_f32(&args, n, x, want, got, got); /* dx aliases dy */
            ref_unary_bwd_f32(&args, n, x, want, dy, want);
            worst = 0;
            for (int64_t i = 0; i < n; i++) worst = fmax(worst, fabs(got[i] - want[i]) / (1 + fabs(want[i])));
            CHECK(worst < 2e-6, "op %d backward, n %lld: %g", o, (long long)n, worst);
        }
    }
    /* The single-threaded GELU kernels used by fused ops (1003: a ragged end). */
    float *derivative = malloc(sizeof(float) * 1003), *want_derivative = malloc(sizeof(float) * 1003);
    bl_unary_args gelu = {.op = BL_UNARY_GELU};
    ref_unary_fwd_f32(&gelu, 1003, x, want);
    ref_unary_bwd_f32(&gelu, 1003, x, NULL, NULL, want_derivative);
    cpu_gelu_f32(1003, x, got);
    for (int64_t i = 0; i < 1003; i++)
        CHECK(fabsf(got[i] - want[i]) <= 2e-6f * (1 + fabsf(want[i])), "cpu_gelu_f32 at %lld", (long long)i);
    memset(got, 0, sizeof(float) * 1003);
    cpu_gelu_with_derivative_f32(1003, x, got, derivative);
    for (int64_t i = 0; i < 1003; i++)
        CHECK(fabsf(got[i] - want[i]) <= 2e-6f * (1 + fabsf(want[i])) &&
                  fabsf(derivative[i] - want_derivative[i]) <= 2e-6f * (1 + fabsf(want_derivative[i])),
              "cpu_gelu_with_derivative_f32 at %lld", (long long)i);
    free(derivative);
    free(want_derivative);
    free(x);
    free(dy);
    free(got);
    free(want);
}

/* Functions without a vectorized form give exactly the reference kernels' results. */
static void test_others_use_reference(void) {
    float x[37], got[37], want[37];
    for (int i = 0; i < 37; i++) x[i] = (float)(i - 18) * 0.37f;
    bl_unary_args args[3] = {{.op = BL_UNARY_RELU}, {.op = BL_UNARY_LEAKY_RELU, .slope = 0.1}, {.op = BL_UNARY_SOFTPLUS}};
    for (int a = 0; a < 3; a++) {
        cpu_unary_fwd_f32(&args[a], 37, x, got);
        ref_unary_fwd_f32(&args[a], 37, x, want);
        CHECK(memcmp(got, want, sizeof got) == 0, "op %d forward", (int)args[a].op);
        cpu_unary_bwd_f32(&args[a], 37, x, want, NULL, got);
        ref_unary_bwd_f32(&args[a], 37, x, want, NULL, want);
        CHECK(memcmp(got, want, sizeof got) == 0, "op %d backward", (int)args[a].op);
    }
}

TEST_MAIN(TEST(test_accuracy), TEST(test_special_values), TEST(test_lengths_in_place_and_threads),
          TEST(test_others_use_reference))
