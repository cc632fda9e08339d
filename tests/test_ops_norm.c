/* Tests of the normalization ops and kernels: batch norm (training statistics, running-statistic
 * updates, eval mode), layer norm, group norm and instance norm against naive double computations;
 * the fast CPU kernels against the reference kernels; the fused first-order backward against the
 * composite (create_graph) backward; and finite-difference gradient checks of first and second order. */
#include "test.h"

#include "backend/cpu/norm.h"
#include "backend/ref/ref_norm.h"

static bl_tensor *randn(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    return test_randn(dt, ndim, shape, seed);
}

/* A tensor of `shape` whose memory is laid out with its first two dims swapped, so that it is not
 * contiguous: the ops must read it through its strides. */
static bl_tensor *randn_strided(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    int64_t swapped[BL_MAX_DIMS];
    memcpy(swapped, shape, (size_t)ndim * sizeof *shape);
    swapped[0] = shape[1];
    swapped[1] = shape[0];
    return bl_transpose(randn(dt, ndim, swapped, seed), 0, 1);
}

/* "[2, 3]" in a rotating buffer, for messages. */
static const char *shape_of(const bl_tensor *t) {
    static char bufs[4][64];
    static int next;
    char *b = bufs[next++ & 3];
    return t ? bl_shape_str(t, b, sizeof bufs[0]) : "(null)";
}

static double tolerance(bl_dtype dt) { return dt == BL_F32 ? 2e-5 : 1e-12; }

/* ---- naive computations in double ---- */

/* Mean and biased variance of each group of x viewed as (outer, groups, inner), over the outer and
 * inner dims (batch norm: groups = C; one row of layer norm: outer = groups = 1). */
static void naive_batch_stats(const double *x, int64_t outer, int64_t groups, int64_t inner, double *mean,
                              double *var) {
    for (int64_t c = 0; c < groups; c++) {
        double sum = 0, sq = 0;
        for (int64_t n = 0; n < outer; n++)
            for (int64_t s = 0; s < inner; s++) sum += x[(n * groups + c) * inner + s];
        mean[c] = sum / (double)(outer * inner);
        for (int64_t n = 0; n < outer; n++)
            for (int64_t s = 0; s < inner; s++) {
                double d = x[(n * groups + c) * inner + s] - mean[c];
                sq += d * d;
            }
        var[c] = sq / (double)(outer * inner);
    }
}

/* y = (x - mean[c]) / sqrt(var[c] + eps) * w[c] + b[c] for x (N, C, S); w, b may be NULL. */
static void naive_channel_affine(const double *x, int64_t N, int64_t C, int64_t S, const double *mean,
                                 const double *var, const double *w, const double *b, double eps, double *y) {
    for (int64_t i = 0; i < N * C * S; i++) {
        int64_t c = (i / S) % C;
        y[i] = (x[i] - mean[c]) / sqrt(var[c] + eps) * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
    }
}

/* Each of the R rows of D values of x normalized, then y = xhat * w[d] + b[d]; w, b may be NULL. */
static void naive_layer_norm(const double *x, int64_t R, int64_t D, const double *w, const double *b, double eps,
                             double *y) {
    for (int64_t r = 0; r < R; r++) {
        double mean, var;
        naive_batch_stats(x + r * D, 1, 1, D, &mean, &var);
        for (int64_t d = 0; d < D; d++)
            y[r * D + d] = (x[r * D + d] - mean) / sqrt(var + eps) * (w ? w[d] : 1.0) + (b ? b[d] : 0.0);
    }
}

/* ---- batch norm forward ---- */

static void check_batch_norm_case(bl_dtype dt, int ndim, const int64_t *shape, bool affine, bool strided,
                                  uint64_t seed) {
    const double eps = 1e-5, momentum = 0.1, tol = tolerance(dt);
    const int64_t N = shape[0], C = shape[1];
    int64_t S = 1;
    for (int d = 2; d < ndim; d++) S *= shape[d];
    const int64_t n = N * C * S, M = N * S;
    bl_tensor *weight = affine ? randn(dt, 1, &C, seed + 1) : NULL, *bias = affine ? randn(dt, 1, &C, seed + 2) : NULL;
    bl_tensor *running_mean = bl_zeros(dt, 1, &C), *running_var = bl_ones(dt, 1, &C);
    double *w = test_values(weight), *b = test_values(bias);
    double want_rmean[8], want_rvar[8], mean[8], var[8];
    for (int64_t c = 0; c < C; c++) {
        want_rmean[c] = 0;
        want_rvar[c] = 1;
    }
    double *want = bl_arena_alloc((size_t)n * sizeof *want);
    /* Two training steps: the running statistics blend both batches' statistics. */
    for (int step = 0; step < 2; step++) {
        bl_tensor *x = strided ? randn_strided(dt, ndim, shape, seed + 10 + step)
                               : randn(dt, ndim, shape, seed + 10 + step);
        bl_set_flat(x, 0, 3.0 + step); /* makes the channels' statistics differ between steps */
        bl_tensor *y = bl_batch_norm(x, weight, bias, running_mean, running_var, true, momentum, eps);
        double *xd = test_values(x);
        naive_batch_stats(xd, N, C, S, mean, var);
        naive_channel_affine(xd, N, C, S, mean, var, w, b, eps, want);
        CHECK(test_max_rel_diff_values(y, want, n) <= tol, "train y, %s step %d: %g", shape_of(x), step,
              test_max_rel_diff_values(y, want, n));
        for (int64_t c = 0; c < C; c++) {
            want_rmean[c] = (1 - momentum) * want_rmean[c] + momentum * mean[c];
            want_rvar[c] = (1 - momentum) * want_rvar[c] + momentum * var[c] * (double)M / (double)(M - 1);
        }
        CHECK(test_max_rel_diff_values(running_mean, want_rmean, C) <= tol, "running mean after step %d", step);
        CHECK(test_max_rel_diff_values(running_var, want_rvar, C) <= tol, "running var after step %d", step);
    }
    /* Eval normalizes with the running statistics and leaves them alone. */
    bl_tensor *x = strided ? randn_strided(dt, ndim, shape, seed + 20) : randn(dt, ndim, shape, seed + 20);
    bl_tensor *y = bl_batch_norm(x, weight, bias, running_mean, running_var, false, momentum, eps);
    naive_channel_affine(test_values(x), N, C, S, want_rmean, want_rvar, w, b, eps, want);
    CHECK(test_max_rel_diff_values(y, want, n) <= tol, "eval y, %s: %g", shape_of(x), test_max_rel_diff_values(y, want, n));
    CHECK(test_max_rel_diff_values(running_mean, want_rmean, C) <= tol, "eval changed the running mean");
    CHECK(y && y->dtype == dt && bl_same_shape(y, x), "eval output dtype and shape");
}

static void test_batch_norm_matches_naive(void) {
    const int64_t s2[] = {6, 3}, s3[] = {3, 4, 5}, s4[] = {2, 3, 5, 7};
    for (int k = 0; k < 2; k++) {
        bl_dtype dt = k ? BL_F64 : BL_F32;
        check_batch_norm_case(dt, 2, s2, true, false, 100);
        check_batch_norm_case(dt, 3, s3, true, true, 200);
        check_batch_norm_case(dt, 3, s3, false, false, 300);
        check_batch_norm_case(dt, 4, s4, true, false, 400);
        check_batch_norm_case(dt, 4, s4, false, true, 500);
    }
}

/* Updates only the given running statistic; no autograd node without inputs that need one. */
static void test_batch_norm_partial_running_stats(void) {
    const int64_t C = 3;
    bl_tensor *x = randn(BL_F64, BL_SHAPE(4, 3, 2), 1);
    bl_tensor *running_mean = bl_zeros(BL_F64, 1, &C);
    size_t tape = bl_tape_length();
    bl_tensor *y = bl_batch_norm(x, NULL, NULL, running_mean, NULL, true, 0.5, 1e-5);
    CHECK(y && !y->requires_grad && bl_tape_length() == tape, "nothing recorded");
    double mean[3], var[3];
    naive_batch_stats(test_values(x), 4, 3, 2, mean, var);
    for (int64_t c = 0; c < C; c++) CHECK_CLOSE(bl_get_flat(running_mean, c), 0.5 * mean[c], 1e-12);
}

/* ---- layer norm, group norm, instance norm forward ---- */

static void check_layer_norm_case(bl_dtype dt, int ndim, const int64_t *shape, int norm_ndim, bool affine,
                                  bool strided, uint64_t seed) {
    const double eps = 1e-5;
    const int64_t *norm_shape = shape + ndim - norm_ndim;
    int64_t R = 1, D = 1;
    for (int d = 0; d < ndim - norm_ndim; d++) R *= shape[d];
    for (int d = 0; d < norm_ndim; d++) D *= norm_shape[d];
    bl_tensor *x = strided ? randn_strided(dt, ndim, shape, seed) : randn(dt, ndim, shape, seed);
    bl_tensor *weight = affine ? randn(dt, norm_ndim, norm_shape, seed + 1) : NULL;
    bl_tensor *bias = affine ? randn(dt, norm_ndim, norm_shape, seed + 2) : NULL;
    bl_tensor *y = bl_layer_norm(x, norm_ndim, norm_shape, weight, bias, eps);
    double *want = bl_arena_alloc((size_t)(R * D) * sizeof *want);
    naive_layer_norm(test_values(x), R, D, test_values(weight), test_values(bias), eps, want);
    CHECK(test_max_rel_diff_values(y, want, R * D) <= tolerance(dt), "layer_norm %s over %d dims: %g", shape_of(x),
          norm_ndim, test_max_rel_diff_values(y, want, R * D));
}

static void test_layer_norm_matches_naive(void) {
    const int64_t s3[] = {3, 5, 7}, s2[] = {4, 9};
    for (int k = 0; k < 2; k++) {
        bl_dtype dt = k ? BL_F64 : BL_F32;
        check_layer_norm_case(dt, 3, s3, 1, true, false, 10);
        check_layer_norm_case(dt, 3, s3, 1, false, true, 20);
        check_layer_norm_case(dt, 3, s3, 2, true, true, 30);
        check_layer_norm_case(dt, 2, s2, 1, true, false, 40);
        check_layer_norm_case(dt, 2, s2, 2, false, false, 50);
    }
}

/* x (N, C, S...) normalized per sample over groups of C / G channels, then scaled per channel. */
static void check_group_norm_case(bl_dtype dt, int ndim, const int64_t *shape, int groups, bool affine,
                                  bool instance, bool strided, uint64_t seed) {
    const double eps = 1e-5;
    const int64_t N = shape[0], C = shape[1];
    int64_t S = 1;
    for (int d = 2; d < ndim; d++) S *= shape[d];
    bl_tensor *x = strided ? randn_strided(dt, ndim, shape, seed) : randn(dt, ndim, shape, seed);
    bl_tensor *weight = affine ? randn(dt, 1, &C, seed + 1) : NULL, *bias = affine ? randn(dt, 1, &C, seed + 2) : NULL;
    bl_tensor *y = instance ? bl_instance_norm(x, weight, bias, eps) : bl_group_norm(x, groups, weight, bias, eps);
    double *xd = test_values(x), *want = bl_arena_alloc((size_t)(N * C * S) * sizeof *want);
    double mean[64], var[64];
    /* Statistics per (sample, group): groups of C/G*S consecutive values. */
    naive_batch_stats(xd, 1, N * groups, C / groups * S, mean, var);
    double *w = test_values(weight), *b = test_values(bias);
    for (int64_t i = 0; i < N * C * S; i++) {
        int64_t c = (i / S) % C, group = i / (C / groups * S);
        want[i] = (xd[i] - mean[group]) / sqrt(var[group] + eps) * (w ? w[c] : 1.0) + (b ? b[c] : 0.0);
    }
    CHECK(test_max_rel_diff_values(y, want, N * C * S) <= tolerance(dt), "%s %s groups %d: %g",
          instance ? "instance_norm" : "group_norm", shape_of(x), groups, test_max_rel_diff_values(y, want, N * C * S));
}

static void test_group_and_instance_norm_match_naive(void) {
    const int64_t s4[] = {2, 6, 3, 4}, s3[] = {3, 4, 5};
    for (int k = 0; k < 2; k++) {
        bl_dtype dt = k ? BL_F64 : BL_F32;
        check_group_norm_case(dt, 4, s4, 3, true, false, false, 1);
        check_group_norm_case(dt, 4, s4, 2, false, false, true, 2);
        check_group_norm_case(dt, 3, s3, 1, true, false, false, 3);
        check_group_norm_case(dt, 4, s4, 6, true, true, true, 4);
        check_group_norm_case(dt, 3, s3, 4, false, true, false, 5);
    }
}

/* ---- fast CPU kernels against the reference kernels ---- */

/* N(offset, 1) values: a large offset exposes variance formulas that cancel catastrophically. */
static bl_tensor *randn_offset(int ndim, const int64_t *shape, uint64_t seed, double offset) {
    return bl_add_scalar(randn(BL_F32, ndim, shape, seed), offset);
}

static float *f32(bl_tensor *t) { return t ? t->data : NULL; }

static void check_batch_norm_kernels(int64_t N, int64_t C, int64_t S, bool training, bool affine, double offset,
                                     uint64_t seed) {
    bl_batch_norm_args a = {N, C, S, 1e-5, training};
    bl_tensor *x = randn_offset(BL_SHAPE(N, C, S), seed, offset), *g = randn(BL_F32, BL_SHAPE(N, C, S), seed + 1);
    bl_tensor *w = affine ? randn(BL_F32, 1, &C, seed + 2) : NULL, *b = affine ? randn(BL_F32, 1, &C, seed + 3) : NULL;
    bl_tensor *stats[2][3], *y[2], *dx[2], *dw[2], *db[2];
    for (int k = 0; k < 2; k++) {
        for (int s = 0; s < 3; s++) stats[k][s] = bl_empty(BL_F32, 1, &C);
        if (!training) { /* given statistics near the data's, for both kernels */
            bl_copy_(stats[k][0], bl_add_scalar(randn(BL_F32, 1, &C, seed + 4), offset));
            bl_copy_(stats[k][1], bl_add_scalar(bl_abs(randn(BL_F32, 1, &C, seed + 5)), 0.5));
        }
        y[k] = bl_empty_like(x);
        dx[k] = bl_empty_like(x);
        dw[k] = bl_empty(BL_F32, 1, &C);
        db[k] = bl_empty(BL_F32, 1, &C);
    }
    ref_batch_norm_fwd_f32(&a, f32(x), f32(w), f32(b), f32(stats[0][0]), f32(stats[0][1]), f32(stats[0][2]), f32(y[0]));
    cpu_batch_norm_fwd(&a, f32(x), f32(w), f32(b), f32(stats[1][0]), f32(stats[1][1]), f32(stats[1][2]), f32(y[1]));
    /* Inputs are floats near `offset`, so their own rounding bounds the agreement. */
    double tol = 2e-5 * (1.0 + offset);
    for (int s = 0; s < 3; s++)
        CHECK(test_max_rel_diff(stats[1][s], stats[0][s]) <= tol, "bn stat %d (%lld,%lld,%lld): %g", s, (long long)N,
              (long long)C, (long long)S, test_max_rel_diff(stats[1][s], stats[0][s]));
    CHECK(test_max_rel_diff(y[1], y[0]) <= tol, "bn y (%lld,%lld,%lld) offset %g: %g", (long long)N, (long long)C,
          (long long)S, offset, test_max_rel_diff(y[1], y[0]));
    /* Backward from the same (reference) statistics, so only the backward kernels are compared. */
    ref_batch_norm_bwd_f32(&a, f32(g), f32(x), f32(stats[0][0]), f32(stats[0][2]), f32(w), f32(dx[0]), f32(dw[0]),
                           f32(db[0]));
    cpu_batch_norm_bwd(&a, f32(g), f32(x), f32(stats[0][0]), f32(stats[0][2]), f32(w), f32(dx[1]), f32(dw[1]),
                       f32(db[1]));
    CHECK(test_max_rel_diff(dx[1], dx[0]) <= tol, "bn dx: %g", test_max_rel_diff(dx[1], dx[0]));
    CHECK(test_max_rel_diff(dw[1], dw[0]) <= tol * 10, "bn dweight: %g", test_max_rel_diff(dw[1], dw[0]));
    CHECK(test_max_rel_diff(db[1], db[0]) <= 5e-5, "bn dbias: %g", test_max_rel_diff(db[1], db[0]));
}

static void test_batch_norm_cpu_kernels_match_reference(void) {
    /* Small spatial sizes: channels in blocks of columns, several blocks, the last one partial. */
    check_batch_norm_kernels(5, 3, 37, true, true, 0.0, 1);
    check_batch_norm_kernels(7, 2, 1, true, false, 0.0, 2);
    check_batch_norm_kernels(20, 1100, 1, true, true, 1000.0, 3);
    check_batch_norm_kernels(40, 70, 13, true, true, 3.0, 4); /* large enough to run threaded */
    check_batch_norm_kernels(40, 70, 13, false, false, 10.0, 5);
    check_batch_norm_kernels(5, 3, 37, false, true, 0.0, 6);
    /* Large spatial sizes: channel by channel, float sums in blocks, shifted moments. */
    check_batch_norm_kernels(3, 2, 1500, true, true, 1000.0, 7);
    check_batch_norm_kernels(4, 5, 1701, true, true, 3.0, 8); /* threaded */
    check_batch_norm_kernels(4, 5, 1701, false, false, 10.0, 9);
}

static void check_layer_norm_kernels(int64_t R, int64_t D, bool affine, double offset, uint64_t seed) {
    bl_layer_norm_args a = {R, D, 1e-5};
    bl_tensor *x = randn_offset(BL_SHAPE(R, D), seed, offset), *g = randn(BL_F32, BL_SHAPE(R, D), seed + 1);
    bl_tensor *w = affine ? randn(BL_F32, 1, &D, seed + 2) : NULL, *b = affine ? randn(BL_F32, 1, &D, seed + 3) : NULL;
    bl_tensor *mean[2], *invstd[2], *y[2], *dx[2], *dw[2], *db[2];
    for (int k = 0; k < 2; k++) {
        mean[k] = bl_empty(BL_F32, 1, &R);
        invstd[k] = bl_empty(BL_F32, 1, &R);
        y[k] = bl_empty_like(x);
        dx[k] = bl_empty_like(x);
        dw[k] = bl_empty(BL_F32, 1, &D);
        db[k] = bl_empty(BL_F32, 1, &D);
    }
    ref_layer_norm_fwd_f32(&a, f32(x), f32(w), f32(b), f32(mean[0]), f32(invstd[0]), f32(y[0]));
    cpu_layer_norm_fwd(&a, f32(x), f32(w), f32(b), f32(mean[1]), f32(invstd[1]), f32(y[1]));
    double tol = 2e-5 * (1.0 + offset);
    CHECK(test_max_rel_diff(mean[1], mean[0]) <= tol, "ln mean: %g", test_max_rel_diff(mean[1], mean[0]));
    CHECK(test_max_rel_diff(invstd[1], invstd[0]) <= tol, "ln invstd: %g", test_max_rel_diff(invstd[1], invstd[0]));
    CHECK(test_max_rel_diff(y[1], y[0]) <= tol, "ln y (%lld, %lld) offset %g: %g", (long long)R, (long long)D, offset,
          test_max_rel_diff(y[1], y[0]));
    float *scratch = bl_arena_alloc(cpu_layer_norm_bwd_scratch(&a) * sizeof *scratch);
    ref_layer_norm_bwd_f32(&a, f32(g), f32(x), f32(mean[0]), f32(invstd[0]), f32(w), f32(dx[0]), f32(dw[0]),
                           f32(db[0]));
    cpu_layer_norm_bwd(&a, f32(g), f32(x), f32(mean[0]), f32(invstd[0]), f32(w), f32(dx[1]), f32(dw[1]), f32(db[1]),
                       scratch);
    CHECK(test_max_rel_diff(dx[1], dx[0]) <= tol, "ln dx: %g", test_max_rel_diff(dx[1], dx[0]));
    CHECK(test_max_rel_diff(dw[1], dw[0]) <= tol * 10, "ln dweight: %g", test_max_rel_diff(dw[1], dw[0]));
    CHECK(test_max_rel_diff(db[1], db[0]) <= 5e-5, "ln dbias: %g", test_max_rel_diff(db[1], db[0]));
    /* Skipping outputs must not disturb the others. */
    cpu_layer_norm_bwd(&a, f32(g), f32(x), f32(mean[0]), f32(invstd[0]), f32(w), NULL, f32(dw[1]), NULL, scratch);
    CHECK(test_max_rel_diff(dw[1], dw[0]) <= tol * 10, "ln dweight alone: %g", test_max_rel_diff(dw[1], dw[0]));
}

static void test_layer_norm_cpu_kernels_match_reference(void) {
    check_layer_norm_kernels(5, 37, true, 0.0, 1);
    check_layer_norm_kernels(3, 1, false, 0.0, 2);
    check_layer_norm_kernels(4, 1100, true, 1000.0, 3);
    check_layer_norm_kernels(71, 600, true, 2.0, 4); /* threaded, with per-thread weight sums */
    check_layer_norm_kernels(71, 600, false, 0.0, 5);
}

/* ---- fused backward against composite backward ---- */

typedef enum { OP_BN_TRAIN, OP_BN_EVAL, OP_LN, OP_GN, OP_IN } norm_op;

typedef struct {
    norm_op op;
    bl_tensor *running_mean, *running_var; /* OP_BN_EVAL */
    int norm_ndim;                          /* OP_LN: trailing dims normalized */
    int groups;                             /* OP_GN */
} norm_case;

/* in = {x, weight, bias}; weight and bias may be NULL. */
static bl_tensor *apply_norm(bl_tensor *const *in, void *user) {
    const norm_case *c = user;
    bl_tensor *x = in[0];
    switch (c->op) {
    case OP_BN_TRAIN: return bl_batch_norm(x, in[1], in[2], NULL, NULL, true, 0.1, 1e-5);
    case OP_BN_EVAL: return bl_batch_norm(x, in[1], in[2], c->running_mean, c->running_var, false, 0.1, 1e-5);
    case OP_LN: return bl_layer_norm(x, c->norm_ndim, x->shape + x->ndim - c->norm_ndim, in[1], in[2], 1e-5);
    case OP_GN: return bl_group_norm(x, c->groups, in[1], in[2], 1e-5);
    case OP_IN: return bl_instance_norm(x, in[1], in[2], 1e-5);
    }
    return NULL;
}

/* The case's inputs: x of `shape` and, when affine, weight and bias of the shape the op expects. */
static void make_inputs(const norm_case *c, bl_dtype dt, int ndim, const int64_t *shape, bool affine,
                        uint64_t seed, bl_tensor **in) {
    int pdim = c->op == OP_LN ? c->norm_ndim : 1;
    const int64_t *pshape = c->op == OP_LN ? shape + ndim - c->norm_ndim : shape + 1;
    in[0] = randn(dt, ndim, shape, seed);
    in[1] = affine ? bl_add_scalar(randn(dt, pdim, pshape, seed + 1), 1.0) : NULL;
    in[2] = affine ? randn(dt, pdim, pshape, seed + 2) : NULL;
    for (int i = 0; i < 3; i++)
        if (in[i]) in[i]->requires_grad = true;
}

static void with_running_stats(norm_case *c, bl_dtype dt, int64_t C, uint64_t seed) {
    c->running_mean = randn(dt, 1, &C, seed);
    c->running_var = bl_add_scalar(bl_abs(randn(dt, 1, &C, seed + 1)), 0.5);
}

static void check_fused_matches_composite(norm_case c, bl_dtype dt, int ndim, const int64_t *shape, bool affine,
                                          const char *what) {
    bl_tensor *in[3];
    make_inputs(&c, dt, ndim, shape, affine, 42, in);
    bl_tensor *y = apply_norm(in, &c);
    bl_tensor *r = y ? randn(dt, y->ndim, y->shape, 43) : NULL;
    bl_tensor *loss = bl_sum(bl_mul(y, r));
    int n = affine ? 3 : 1;
    bl_tensor *fused[3] = {0}, *composite[3] = {0};
    CHECK(bl_autograd_grad(1, &loss, NULL, n, in, fused, false) == BL_OK, "%s", what);
    CHECK(bl_autograd_grad(1, &loss, NULL, n, in, composite, true) == BL_OK, "%s", what);
    double tol = dt == BL_F32 ? 1e-4 : 1e-11;
    for (int i = 0; i < n; i++) {
        CHECK(test_max_rel_diff(fused[i], composite[i]) <= tol, "%s %s input %d: %g", what, bl_dtype_name(dt), i,
              test_max_rel_diff(fused[i], composite[i]));
    }
}

static void test_fused_backward_matches_composite(void) {
    const int64_t s4[] = {3, 4, 3, 5}, s3[] = {4, 6, 5}, s2[] = {7, 3}, large_map[] = {2, 3, 150};
    for (int k = 0; k < 2; k++) {
        bl_dtype dt = k ? BL_F64 : BL_F32;
        norm_case eval = {OP_BN_EVAL};
        with_running_stats(&eval, dt, 4, 7);
        check_fused_matches_composite((norm_case){OP_BN_TRAIN}, dt, 4, s4, true, "batch_norm train (N,C,H,W)");
        check_fused_matches_composite((norm_case){OP_BN_TRAIN}, dt, 2, s2, false, "batch_norm train (N,C)");
        check_fused_matches_composite((norm_case){OP_BN_TRAIN}, dt, 3, large_map, true, "batch_norm train (N,C,L)");
        check_fused_matches_composite(eval, dt, 4, s4, true, "batch_norm eval");
        check_fused_matches_composite(eval, dt, 4, s4, false, "batch_norm eval, no affine");
        check_fused_matches_composite((norm_case){OP_LN, .norm_ndim = 1}, dt, 3, s3, true, "layer_norm last dim");
        check_fused_matches_composite((norm_case){OP_LN, .norm_ndim = 2}, dt, 3, s3, false, "layer_norm last 2 dims");
        check_fused_matches_composite((norm_case){OP_GN, .groups = 2}, dt, 4, s4, true, "group_norm");
        check_fused_matches_composite((norm_case){OP_IN}, dt, 3, s3, true, "instance_norm");
    }
}

/* The fused backward also serves parameters alone (a frozen input, as in a fine-tuned backbone). */
static void test_backward_to_parameters_only(void) {
    norm_case c = {OP_BN_TRAIN};
    bl_tensor *in[3];
    make_inputs(&c, BL_F32, BL_SHAPE(4, 3, 5), true, 9, in);
    in[0]->requires_grad = false;
    bl_tensor *loss = bl_sum(bl_mul(apply_norm(in, &c), randn(BL_F32, BL_SHAPE(4, 3, 5), 10)));
    bl_tensor *fused[2], *composite[2];
    CHECK(bl_autograd_grad(1, &loss, NULL, 2, in + 1, fused, false) == BL_OK, "fused");
    CHECK(bl_autograd_grad(1, &loss, NULL, 2, in + 1, composite, true) == BL_OK, "composite");
    for (int i = 0; i < 2; i++) CHECK(test_max_rel_diff(fused[i], composite[i]) <= 1e-5, "parameter %d", i);
}

/* ---- gradient checks in F64, first and second order ---- */

static void gradcheck_case(norm_case c, int ndim, const int64_t *shape, bool affine, const char *what) {
    bl_tensor *in[3];
    make_inputs(&c, BL_F64, ndim, shape, affine, 77, in);
    CHECK(bl_gradcheck(apply_norm, &c, affine ? 3 : 1, in, 1e-6, 1e-5, true) == BL_OK, "%s: %s", what,
          bl_last_error());
}

static void test_gradcheck_batch_norm(void) {
    gradcheck_case((norm_case){OP_BN_TRAIN}, BL_SHAPE(4, 3), true, "batch_norm train (N,C)");
    gradcheck_case((norm_case){OP_BN_TRAIN}, BL_SHAPE(2, 2, 3), false, "batch_norm train (N,C,L)");
    gradcheck_case((norm_case){OP_BN_TRAIN}, BL_SHAPE(2, 2, 2, 2), true, "batch_norm train (N,C,H,W)");
    norm_case eval = {OP_BN_EVAL};
    with_running_stats(&eval, BL_F64, 3, 5);
    gradcheck_case(eval, BL_SHAPE(2, 3, 2), true, "batch_norm eval");
}

static void test_gradcheck_layer_norm(void) {
    gradcheck_case((norm_case){OP_LN, .norm_ndim = 1}, BL_SHAPE(3, 5), true, "layer_norm last dim");
    gradcheck_case((norm_case){OP_LN, .norm_ndim = 2}, BL_SHAPE(2, 2, 3), true, "layer_norm last 2 dims");
    gradcheck_case((norm_case){OP_LN, .norm_ndim = 1}, BL_SHAPE(2, 2, 4), false, "layer_norm, no affine");
}

static void test_gradcheck_group_and_instance_norm(void) {
    gradcheck_case((norm_case){OP_GN, .groups = 2}, BL_SHAPE(2, 4, 3), true, "group_norm");
    gradcheck_case((norm_case){OP_GN, .groups = 1}, BL_SHAPE(2, 2, 2, 2), false, "group_norm, one group");
    gradcheck_case((norm_case){OP_IN}, BL_SHAPE(2, 3, 2, 2), true, "instance_norm");
}

/* ---- argument errors ---- */

static void expect_error(bl_tensor *result, const char *op) {
    CHECK(result == NULL, "%s accepted bad arguments", op);
    CHECK(strstr(bl_last_error(), op) != NULL, "the message names %s: %s", op, bl_last_error());
    bl_clear_error();
}

static void test_argument_errors(void) {
    bl_tensor *x = randn(BL_F32, BL_SHAPE(4, 3, 5), 1), *c4 = bl_ones(BL_F32, BL_SHAPE(4));
    bl_tensor *c3 = bl_ones(BL_F32, BL_SHAPE(3)), *c3d = bl_ones(BL_F64, BL_SHAPE(3));
    expect_error(bl_batch_norm(randn(BL_F32, BL_SHAPE(5), 2), NULL, NULL, NULL, NULL, true, 0.1, 1e-5), "batch_norm");
    expect_error(bl_batch_norm(x, c4, NULL, NULL, NULL, true, 0.1, 1e-5), "batch_norm");
    expect_error(bl_batch_norm(x, c3d, NULL, NULL, NULL, true, 0.1, 1e-5), "batch_norm");
    expect_error(bl_batch_norm(x, c3, c3, NULL, NULL, false, 0.1, 1e-5), "batch_norm");
    expect_error(bl_batch_norm(x, NULL, NULL, c4, NULL, true, 0.1, 1e-5), "batch_norm");
    expect_error(bl_batch_norm(randn(BL_F32, BL_SHAPE(1, 3), 3), NULL, NULL, NULL, NULL, true, 0.1, 1e-5),
                 "batch_norm");
    expect_error(bl_layer_norm(x, BL_SHAPE(4), NULL, NULL, 1e-5), "layer_norm");
    expect_error(bl_layer_norm(x, BL_SHAPE(5), c4, NULL, 1e-5), "layer_norm");
    expect_error(bl_layer_norm(x, BL_SHAPE(2, 4, 3, 5), NULL, NULL, 1e-5), "layer_norm");
    expect_error(bl_group_norm(x, 2, NULL, NULL, 1e-5), "group_norm");
    expect_error(bl_group_norm(x, 3, c4, NULL, 1e-5), "group_norm");
    expect_error(bl_instance_norm(randn(BL_F32, BL_SHAPE(4, 3), 4), NULL, NULL, 1e-5), "instance_norm");
    expect_error(bl_instance_norm(x, NULL, c4, 1e-5), "instance_norm");
    CHECK(bl_batch_norm(NULL, NULL, NULL, NULL, NULL, true, 0.1, 1e-5) == NULL, "NULL in, NULL out");
}

TEST_MAIN(TEST(test_batch_norm_matches_naive), TEST(test_batch_norm_partial_running_stats),
          TEST(test_layer_norm_matches_naive), TEST(test_group_and_instance_norm_match_naive),
          TEST(test_batch_norm_cpu_kernels_match_reference), TEST(test_layer_norm_cpu_kernels_match_reference),
          TEST(test_fused_backward_matches_composite), TEST(test_backward_to_parameters_only),
          TEST(test_gradcheck_batch_norm), TEST(test_gradcheck_layer_norm),
          TEST(test_gradcheck_group_and_instance_norm), TEST(test_argument_errors))
