/* Tests of bl_batch_norm_act, batch norm fused with a residual add and a ReLU: the op against a
 * naive double computation (training and eval, running statistics, with and without residual,
 * ReLU and affine parameters, NCHW and channels-last inputs); the fused CPU kernels of both memory
 * orders against the reference batch norm kernels with the residual and ReLU applied around them;
 * the fused first-order backward against the composite (create_graph) backward and against the
 * unfused ops; and finite-difference gradient checks of first and second order in F64. */
#include "test.h"

#include "backend/cpu/layout.h"
#include "backend/cpu/norm.h"
#include "backend/ref/ref_norm.h"

static bl_tensor *randn(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    return test_randn(dt, ndim, shape, seed);
}

/* A copy of t (N, C, H, W) in channels-last memory order, as a plain tensor (no autograd). */
static bl_tensor *channels_last_copy(bl_tensor *t) {
    bl_tensor *cl = bl_channels_last(bl_detach(t));
    return cl ? bl_detach(cl) : NULL;
}

static bool is_channels_last_only(const bl_tensor *t) {
    return t && cpu_is_channels_last(t) && !bl_is_contiguous(t);
}

/* ---- the op against a naive double computation ---- */

typedef struct {
    bool residual, relu, affine, channels_last;
} variant;

static const variant variants[] = {
    {true, true, true, false},  {true, true, true, true},    {false, true, false, false},
    {false, true, true, true},  {true, false, false, true}, {false, false, true, true},
};

/* y = act((x - mean[c]) / sqrt(var[c] + eps) * w[c] + b[c] + r) over x (N, C, S), logical order. */
static void naive_forward(const bl_tensor *x, const bl_tensor *w, const bl_tensor *b, const bl_tensor *r,
                          const double *mean, const double *var, double eps, bool relu, double *y) {
    const int64_t C = x->shape[1], S = bl_numel(x) / (x->shape[0] * C);
    for (int64_t i = 0; i < bl_numel(x); i++) {
        int64_t c = (i / S) % C;
        double v = (bl_get_flat(x, i) - mean[c]) / sqrt(var[c] + eps) * (w ? bl_get_flat(w, c) : 1.0) +
                   (b ? bl_get_flat(b, c) : 0.0) + (r ? bl_get_flat(r, i) : 0.0);
        y[i] = relu && v < 0 ? 0.0 : v;
    }
}

/* Per-channel mean and biased variance of x (N, C, S...) in logical order. */
static void naive_stats(const bl_tensor *x, double *mean, double *var) {
    const int64_t C = x->shape[1], S = bl_numel(x) / (x->shape[0] * C), M = x->shape[0] * S;
    for (int64_t c = 0; c < C; c++) mean[c] = var[c] = 0;
    for (int64_t i = 0; i < bl_numel(x); i++) mean[(i / S) % C] += bl_get_flat(x, i) / (double)M;
    for (int64_t i = 0; i < bl_numel(x); i++) {
        double d = bl_get_flat(x, i) - mean[(i / S) % C];
        var[(i / S) % C] += d * d / (double)M;
    }
}

static double max_rel_diff_to(const bl_tensor *got, const double *want) {
    double worst = 0;
    for (int64_t i = 0; got && i < bl_numel(got); i++) {
        double d = fabs(bl_get_flat(got, i) - want[i]) / (1.0 + fabs(want[i]));
        if (!(d <= worst)) worst = d;
    }
    return got ? worst : INFINITY;
}

static void check_forward_case(bl_dtype dt, const int64_t *shape, variant v, uint64_t seed) {
    const double eps = 1e-5, momentum = 0.2, tol = dt == BL_F32 ? 2e-5 : 1e-12;
    const int64_t C = shape[1], M = shape[0] * shape[2] * shape[3];
    bl_tensor *x = randn(dt, 4, shape, seed), *r = v.residual ? randn(dt, 4, shape, seed + 1) : NULL;
    bl_set_flat(x, 0, 4.0); /* statistics that differ between channels */
    if (v.channels_last) {
        x = channels_last_copy(x);
        r = r ? channels_last_copy(r) : NULL;
    }
    bl_tensor *w = v.affine ? randn(dt, 1, &C, seed + 2) : NULL, *b = v.affine ? randn(dt, 1, &C, seed + 3) : NULL;
    bl_tensor *running_mean = bl_zeros(dt, 1, &C), *running_var = bl_ones(dt, 1, &C);
    bl_tensor *y = bl_batch_norm_act(x, w, b, running_mean, running_var, r, v.relu, true, momentum, eps);
    double mean[16], var[16], *want = bl_arena_alloc((size_t)bl_numel(x) * sizeof *want);
    naive_stats(x, mean, var);
    naive_forward(x, w, b, r, mean, var, eps, v.relu, want);
    CHECK(max_rel_diff_to(y, want) <= tol, "train y (residual %d relu %d affine %d cl %d): %g", v.residual, v.relu,
          v.affine, v.channels_last, max_rel_diff_to(y, want));
    for (int64_t c = 0; c < C; c++) {
        CHECK_CLOSE(bl_get_flat(running_mean, c), momentum * mean[c], tol);
        CHECK_CLOSE(bl_get_flat(running_var, c), 1 - momentum + momentum * var[c] * M / (M - 1), tol);
    }
    /* A channels-last F32 input gives a channels-last result; everything else is contiguous. */
    bool keeps = v.channels_last && dt == BL_F32;
    CHECK(y && (keeps ? is_channels_last_only(y) : bl_is_contiguous(y)), "result's memory order (cl %d, %s)",
          v.channels_last, bl_dtype_name(dt));
    /* Eval normalizes with the running statistics. */
    double rmean[16], rvar[16];
    for (int64_t c = 0; c < C; c++) {
        rmean[c] = bl_get_flat(running_mean, c);
        rvar[c] = bl_get_flat(running_var, c);
    }
    y = bl_batch_norm_act(x, w, b, running_mean, running_var, r, v.relu, false, momentum, eps);
    naive_forward(x, w, b, r, rmean, rvar, eps, v.relu, want);
    CHECK(max_rel_diff_to(y, want) <= tol, "eval y: %g", max_rel_diff_to(y, want));
    CHECK_CLOSE(bl_get_flat(running_mean, 0), rmean[0], 0);
}

static void test_forward_matches_naive(void) {
    const int64_t small[] = {3, 5, 4, 3}, large_map[] = {2, 3, 12, 13};
    for (int k = 0; k < 2; k++)
        for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
            bl_dtype dt = k ? BL_F64 : BL_F32;
            check_forward_case(dt, small, variants[i], 10 + i);
            check_forward_case(dt, large_map, variants[i], 30 + i);
        }
}

/* A residual in the other memory order than x is read through its own order. */
static void test_mixed_orders(void) {
    const int64_t shape[] = {2, 16, 5, 6}, C = 16;
    bl_tensor *x = randn(BL_F32, 4, shape, 1), *r = randn(BL_F32, 4, shape, 2);
    bl_tensor *w = randn(BL_F32, 1, &C, 3), *b = randn(BL_F32, 1, &C, 4);
    bl_tensor *want = bl_batch_norm_act(x, w, b, NULL, NULL, r, true, true, 0.1, 1e-5);
    bl_tensor *cl_x = bl_batch_norm_act(channels_last_copy(x), w, b, NULL, NULL, r, true, true, 0.1, 1e-5);
    bl_tensor *cl_r = bl_batch_norm_act(x, w, b, NULL, NULL, channels_last_copy(r), true, true, 0.1, 1e-5);
    CHECK(test_max_rel_diff(cl_x, want) <= 2e-5, "channels-last x: %g", test_max_rel_diff(cl_x, want));
    CHECK(test_max_rel_diff(cl_r, want) <= 2e-5, "channels-last residual: %g", test_max_rel_diff(cl_r, want));
    CHECK(is_channels_last_only(cl_x) && bl_is_contiguous(cl_r), "the result follows x's order");
}

/* Without residual and ReLU it is bl_batch_norm; with them, bl_relu(bl_add(bl_batch_norm(...), r)). */
static void test_matches_unfused_ops(void) {
    const int64_t shape[] = {4, 3, 6, 5}, C = 3;
    for (int cl = 0; cl < 2; cl++) {
        bl_tensor *x = randn(BL_F32, 4, shape, 5), *r = randn(BL_F32, 4, shape, 6);
        bl_tensor *w = bl_add_scalar(randn(BL_F32, 1, &C, 7), 1.0), *b = randn(BL_F32, 1, &C, 8);
        if (cl) x = channels_last_copy(x);
        bl_tensor *in[4] = {x, w, b, r};
        for (int i = 0; i < 4; i++) in[i]->requires_grad = true;
        bl_tensor *weights = randn(BL_F32, 4, shape, 9);
        bl_tensor *fused = bl_batch_norm_act(x, w, b, NULL, NULL, r, true, true, 0.1, 1e-5);
        bl_tensor *plain = bl_relu(bl_add(bl_batch_norm(x, w, b, NULL, NULL, true, 0.1, 1e-5), r));
        CHECK(test_max_rel_diff(fused, plain) <= 1e-6, "forward, cl %d: %g", cl, test_max_rel_diff(fused, plain));
        bl_tensor *gf[4], *gp[4];
        bl_tensor *loss_f = bl_sum(bl_mul(fused, weights)), *loss_p = bl_sum(bl_mul(plain, weights));
        CHECK(bl_autograd_grad(1, &loss_f, NULL, 4, in, gf, false) == BL_OK, "fused gradients");
        CHECK(bl_autograd_grad(1, &loss_p, NULL, 4, in, gp, false) == BL_OK, "unfused gradients");
        for (int i = 0; i < 4; i++)
            CHECK(test_max_rel_diff(gf[i], gp[i]) <= 1e-5, "cl %d input %d: %g", cl, i,
                  test_max_rel_diff(gf[i], gp[i]));
        /* The gradients of a channels-last x come back in its order. */
        CHECK(!cl || is_channels_last_only(gf[0]), "dx order");
        bl_tensor *plain_bn = bl_batch_norm(x, w, b, NULL, NULL, true, 0.1, 1e-5);
        bl_tensor *act_bn = bl_batch_norm_act(x, w, b, NULL, NULL, NULL, false, true, 0.1, 1e-5);
        CHECK(test_max_rel_diff(act_bn, plain_bn) == 0.0, "no residual, no relu: plain batch norm");
    }
}

/* ---- the fused kernels against the reference kernels ---- */

static float *f32(bl_tensor *t) { return t ? t->data : NULL; }

/* x's values in channels-last order as (N, S, C) memory. */
static bl_tensor *to_rows(bl_tensor *t, int64_t N, int64_t C, int64_t S) {
    bl_tensor *out = bl_empty(BL_F32, BL_SHAPE(N, S, C));
    cpu_nchw_to_nhwc_f32(N, C, S, t->data, out->data);
    return out;
}

static bl_tensor *from_rows(bl_tensor *t, int64_t N, int64_t C, int64_t S) {
    bl_tensor *out = bl_empty(BL_F32, BL_SHAPE(N, C, S));
    cpu_nhwc_to_nchw_f32(N, C, S, t->data, out->data);
    return out;
}

static void check_kernels(int64_t N, int64_t C, int64_t S, bool training, bool relu, bool residual, bool affine,
                          double offset, uint64_t seed) {
    const int64_t n = N * C * S;
    bl_batch_norm_args bn = {N, C, S, 1e-5, training};
    bl_tensor *x = bl_add_scalar(randn(BL_F32, BL_SHAPE(N, C, S), seed), offset);
    bl_tensor *r = residual ? randn(BL_F32, BL_SHAPE(N, C, S), seed + 1) : NULL;
    bl_tensor *g = randn(BL_F32, BL_SHAPE(N, C, S), seed + 2);
    bl_tensor *w = affine ? randn(BL_F32, 1, &C, seed + 3) : NULL, *b = affine ? randn(BL_F32, 1, &C, seed + 4) : NULL;
    bl_tensor *given_mean = bl_add_scalar(randn(BL_F32, 1, &C, seed + 5), offset);
    bl_tensor *given_var = bl_add_scalar(bl_abs(randn(BL_F32, 1, &C, seed + 6)), 0.5);
    /* Expected: the reference batch norm, then + r and ReLU; backward: the mask, then the reference. */
    bl_tensor *mean = bl_empty(BL_F32, 1, &C), *var = bl_empty(BL_F32, 1, &C), *invstd = bl_empty(BL_F32, 1, &C);
    bl_copy_(mean, given_mean);
    bl_copy_(var, given_var);
    bl_tensor *want_y = bl_empty_like(x);
    ref_batch_norm_fwd_f32(&bn, f32(x), f32(w), f32(b), f32(mean), f32(var), f32(invstd), f32(want_y));
    for (int64_t i = 0; i < n; i++) {
        float v = f32(want_y)[i] + (r ? f32(r)[i] : 0.0f);
        f32(want_y)[i] = relu && v < 0 ? 0.0f : v;
    }
    bl_tensor *gz = bl_empty_like(g);
    for (int64_t i = 0; i < n; i++) f32(gz)[i] = relu && !(f32(want_y)[i] > 0) ? 0.0f : f32(g)[i];
    bl_tensor *want_dx = bl_empty_like(x), *want_dw = bl_empty(BL_F32, 1, &C), *want_db = bl_empty(BL_F32, 1, &C);
    ref_batch_norm_bwd_f32(&bn, f32(gz), f32(x), f32(mean), f32(invstd), f32(w), f32(want_dx), f32(want_dw),
                           f32(want_db));
    const double tol = 2e-5 * (1.0 + offset);
    for (int cl = 0; cl < 2; cl++) {
        cpu_bn_act_args a = {bn, cl == 1, relu};
        double *scratch = bl_arena_alloc(cpu_batch_norm_act_scratch(&a) * sizeof(double) + 1);
        bl_tensor *got_mean = bl_empty(BL_F32, 1, &C), *got_var = bl_empty(BL_F32, 1, &C);
        bl_tensor *got_invstd = bl_empty(BL_F32, 1, &C), *y = bl_full(BL_F32, BL_SHAPE(N, C, S), NAN);
        bl_copy_(got_mean, given_mean);
        bl_copy_(got_var, given_var);
        bl_tensor *xk = cl ? to_rows(x, N, C, S) : x, *rk = r && cl ? to_rows(r, N, C, S) : r;
        cpu_batch_norm_act_fwd(&a, f32(xk), f32(w), f32(b), f32(rk), f32(got_mean), f32(got_var), f32(got_invstd),
                               f32(y), scratch);
        if (cl) y = from_rows(y, N, C, S);
        CHECK(test_max_rel_diff(got_mean, mean) <= tol && test_max_rel_diff(got_var, var) <= tol &&
                  test_max_rel_diff(got_invstd, invstd) <= tol,
              "statistics (%lld, %lld, %lld) cl %d: %g %g", (long long)N, (long long)C, (long long)S, cl,
              test_max_rel_diff(got_mean, mean), test_max_rel_diff(got_var, var));
        CHECK(test_max_rel_diff(y, want_y) <= tol, "y (%lld, %lld, %lld) cl %d relu %d residual %d: %g", (long long)N,
              (long long)C, (long long)S, cl, relu, residual, test_max_rel_diff(y, want_y));
        /* Backward from the reference statistics and output, so only the backward is compared. */
        bl_tensor *yk = cl ? to_rows(want_y, N, C, S) : want_y, *gk = cl ? to_rows(g, N, C, S) : g;
        bl_tensor *dx = bl_full(BL_F32, BL_SHAPE(N, C, S), NAN), *dr = bl_full(BL_F32, BL_SHAPE(N, C, S), NAN);
        bl_tensor *dw = bl_empty(BL_F32, 1, &C), *db = bl_empty(BL_F32, 1, &C);
        cpu_batch_norm_act_bwd(&a, f32(gk), f32(xk), f32(yk), f32(mean), f32(invstd), f32(w), f32(dx), f32(dw), f32(db),
                               f32(dr), scratch);
        if (cl) {
            dx = from_rows(dx, N, C, S);
            dr = from_rows(dr, N, C, S);
        }
        CHECK(test_max_rel_diff(dx, want_dx) <= tol, "dx cl %d: %g", cl, test_max_rel_diff(dx, want_dx));
        CHECK(test_max_rel_diff(dw, want_dw) <= tol * 10, "dweight cl %d: %g", cl, test_max_rel_diff(dw, want_dw));
        CHECK(test_max_rel_diff(db, want_db) <= 5e-5, "dbias cl %d: %g", cl, test_max_rel_diff(db, want_db));
        CHECK(test_max_rel_diff(dr, gz) == 0.0, "dresidual cl %d", cl);
        /* Skipping outputs must not disturb the others. */
        bl_tensor *dw_alone = bl_empty(BL_F32, 1, &C);
        cpu_batch_norm_act_bwd(&a, f32(gk), f32(xk), f32(yk), f32(mean), f32(invstd), f32(w), NULL, f32(dw_alone),
                               NULL, NULL, scratch);
        CHECK(test_max_rel_diff(dw_alone, dw) == 0.0, "dweight alone cl %d", cl);
    }
}

static void test_kernels_match_reference(void) {
    check_kernels(5, 3, 37, true, true, true, true, 0.0, 1);     /* small maps: blocks of channels */
    check_kernels(7, 2, 1, true, true, false, false, 0.0, 2);    /* (N, C) */
    check_kernels(40, 70, 13, true, true, true, true, 3.0, 3);   /* threaded */
    check_kernels(40, 70, 13, false, true, true, false, 10.0, 4); /* eval */
    check_kernels(3, 2, 1500, true, true, true, true, 1000.0, 5); /* large maps, far from 0 */
    check_kernels(4, 5, 1701, true, false, true, true, 3.0, 6);   /* threaded, no ReLU */
    check_kernels(4, 5, 1701, false, true, false, true, 0.0, 7);
    check_kernels(6, 300, 20, true, true, true, true, 0.0, 8);    /* more channels than a row chunk */
    check_kernels(64, 16, 64, true, true, true, true, 0.0, 9);    /* a ResNet stage, threaded */
    check_kernels(3, 600, 5, true, true, true, true, 2.0, 10);    /* channels-last rows wider than a run */
    check_kernels(40, 5, 1701, true, true, true, false, 50.0, 11); /* many runs per thread, far from 0 */
}

/* ---- backward paths and gradient checks ---- */

typedef struct {
    bool relu, training;
    bl_tensor *running_mean, *running_var;
} act_case;

/* in = {x, weight, bias, residual}; any of the last three may be NULL. */
static bl_tensor *apply(bl_tensor *const *in, void *user) {
    const act_case *c = user;
    return bl_batch_norm_act(in[0], in[1], in[2], c->running_mean, c->running_var, in[3], c->relu, c->training, 0.1,
                             1e-5);
}

static void make_inputs(bl_dtype dt, const int64_t *shape, bool affine, bool residual, bool cl, uint64_t seed,
                        bl_tensor **in) {
    in[0] = randn(dt, 4, shape, seed);
    in[1] = affine ? bl_add_scalar(randn(dt, 1, shape + 1, seed + 1), 1.0) : NULL;
    in[2] = affine ? randn(dt, 1, shape + 1, seed + 2) : NULL;
    in[3] = residual ? randn(dt, 4, shape, seed + 3) : NULL;
    if (cl) {
        in[0] = channels_last_copy(in[0]);
        if (in[3]) in[3] = channels_last_copy(in[3]);
    }
    for (int i = 0; i < 4; i++)
        if (in[i]) in[i]->requires_grad = true;
}

static void test_fused_backward_matches_composite(void) {
    const int64_t shape[] = {3, 4, 3, 5};
    for (int k = 0; k < 2; k++)
        for (int cl = 0; cl < 2; cl++)
            for (int training = 0; training < 2; training++) {
                bl_dtype dt = k ? BL_F64 : BL_F32;
                act_case c = {true, training == 1, randn(dt, 1, shape + 1, 5),
                              bl_add_scalar(bl_abs(randn(dt, 1, shape + 1, 6)), 0.5)};
                bl_tensor *in[4];
                make_inputs(dt, shape, true, true, cl == 1, 40, in);
                bl_tensor *y = apply(in, &c);
                bl_tensor *loss = bl_sum(bl_mul(y, randn(dt, 4, shape, 41)));
                bl_tensor *fused[4], *composite[4];
                CHECK(bl_autograd_grad(1, &loss, NULL, 4, in, fused, false) == BL_OK, "fused");
                CHECK(bl_autograd_grad(1, &loss, NULL, 4, in, composite, true) == BL_OK, "composite");
                double tol = dt == BL_F32 ? 1e-4 : 1e-11;
                for (int i = 0; i < 4; i++)
                    CHECK(test_max_rel_diff(fused[i], composite[i]) <= tol, "%s cl %d training %d input %d: %g",
                          bl_dtype_name(dt), cl, training, i, test_max_rel_diff(fused[i], composite[i]));
            }
}

/* bl_gradcheck takes only present inputs: `present` says which of {x, weight, bias, residual}. */
typedef struct {
    act_case c;
    bool present[4];
} gradcheck_user;

static bl_tensor *apply_present(bl_tensor *const *given, void *user) {
    const gradcheck_user *u = user;
    bl_tensor *in[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0, j = 0; i < 4; i++)
        if (u->present[i]) in[i] = given[j++];
    return apply(in, (void *)&u->c);
}

static void gradcheck_case(act_case c, const int64_t *shape, bool affine, bool residual, bool cl, const char *what) {
    bl_tensor *in[4], *present[4];
    make_inputs(BL_F64, shape, affine, residual, cl, 77, in);
    gradcheck_user u = {c, {true, affine, affine, residual}};
    int n = 0;
    for (int i = 0; i < 4; i++)
        if (in[i]) present[n++] = in[i];
    bl_clear_error();
    CHECK(bl_gradcheck(apply_present, &u, n, present, 1e-6, 1e-5, true) == BL_OK, "%s: %s", what, bl_last_error());
}

static void test_gradcheck(void) {
    const int64_t s[] = {2, 3, 2, 2};
    gradcheck_case((act_case){true, true}, s, true, true, false, "relu + residual, training");
    gradcheck_case((act_case){true, true}, s, false, true, true, "relu + residual, channels-last input");
    gradcheck_case((act_case){false, true}, s, true, true, false, "residual only");
    gradcheck_case((act_case){true, true}, s, true, false, false, "relu only");
    act_case eval = {true, false, randn(BL_F64, 1, s + 1, 3), bl_add_scalar(bl_abs(randn(BL_F64, 1, s + 1, 4)), 0.5)};
    gradcheck_case(eval, s, true, true, false, "eval");
}

/* ---- errors ---- */

static void test_argument_errors(void) {
    bl_tensor *x = randn(BL_F32, BL_SHAPE(2, 3, 4, 4), 1);
    bl_clear_error();
    CHECK(!bl_batch_norm_act(x, NULL, NULL, NULL, NULL, randn(BL_F32, BL_SHAPE(2, 3, 4, 5), 2), true, true, 0.1,
                             1e-5),
          "residual of another shape accepted");
    CHECK(strstr(bl_last_error(), "batch_norm_act") && strstr(bl_last_error(), "residual"), "message: %s",
          bl_last_error());
    bl_clear_error();
    CHECK(!bl_batch_norm_act(x, NULL, NULL, NULL, NULL, randn(BL_F64, BL_SHAPE(2, 3, 4, 4), 3), true, true, 0.1,
                             1e-5),
          "residual of another dtype accepted");
    bl_clear_error();
    CHECK(!bl_batch_norm_act(x, NULL, NULL, NULL, NULL, NULL, true, false, 0.1, 1e-5), "eval without statistics");
    bl_clear_error();
    CHECK(!bl_batch_norm_act(NULL, NULL, NULL, NULL, NULL, NULL, true, true, 0.1, 1e-5), "NULL in, NULL out");
}

TEST_MAIN(TEST(test_forward_matches_naive), TEST(test_mixed_orders), TEST(test_matches_unfused_ops),
          TEST(test_kernels_match_reference), TEST(test_fused_backward_matches_composite), TEST(test_gradcheck),
          TEST(test_argument_errors))
