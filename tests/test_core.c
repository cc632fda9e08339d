/* Core: tensors, views, broadcasting binary ops, sums, the autograd engine (accumulation,
 * reuse, create_graph), scopes, RNG streams and dtype conversion. */
#include "test.h"

static bl_tensor *randn(int ndim, const int64_t *shape, uint64_t seed) { return test_randn(BL_F64, ndim, shape, seed); }

static void test_views_share_memory(void) {
    bl_tensor *a = bl_arange(BL_F32, 24);
    bl_tensor *b = bl_reshape(a, BL_SHAPE(2, 3, 4));
    bl_tensor *t = bl_transpose(b, 0, 2); /* (4, 3, 2) */
    CHECK(t->shape[0] == 4 && t->shape[2] == 2);
    CHECK(!bl_is_contiguous(t));
    /* t[i][j][k] = b[k][j][i] = 12k + 4j + i */
    for (int i = 0; i < 4; i++)
        for (int j = 0; j < 3; j++)
            for (int k = 0; k < 2; k++) CHECK(bl_get_flat(t, (i * 3 + j) * 2 + k) == 12 * k + 4 * j + i);
    bl_tensor *s = bl_slice(b, 2, 1, 4, 2); /* columns 1 and 3 */
    CHECK(s->shape[2] == 2 && bl_get_flat(s, 1) == 3 && bl_get_flat(s, 2) == 5);
    bl_set_flat(s, 0, 100);
    CHECK(bl_get_flat(a, 1) == 100, "a slice writes through to its base");
    bl_tensor *sel = bl_select(b, 1, -1);
    CHECK(sel->ndim == 2 && bl_get_flat(sel, 0) == 8);
    bl_tensor *e = bl_expand(bl_reshape(bl_arange(BL_F32, 3), BL_SHAPE(3, 1)), BL_SHAPE(2, 3, 5));
    CHECK(e && e->stride[0] == 0 && e->stride[2] == 0 && bl_get_flat(e, 29) == 2);
    bl_tensor *c = bl_contiguous(t);
    CHECK(bl_is_contiguous(c) && bl_get_flat(c, 1) == 12);
    CHECK(bl_unsqueeze(a, 0)->shape[0] == 1 && bl_squeeze(bl_unsqueeze(a, 1), 1)->ndim == 1);
    CHECK(bl_reshape(a, BL_SHAPE(5, -1)) == NULL && strstr(bl_last_error(), "reshape"));
}

/* Naive broadcasting reference: index arithmetic per element, independent of the strided iterator. */
static double broadcast_get(const bl_tensor *t, int ndim, const int64_t *shape, int64_t flat) {
    int64_t idx[BL_MAX_DIMS], off = 0;
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
    for (int d = 0; d < t->ndim; d++) {
        int od = ndim - t->ndim + d;
        off = off * t->shape[d] + (t->shape[d] == 1 ? 0 : idx[od]);
    }
    return bl_get_flat(t, off);
}

static void test_binary_broadcast_matches_naive(void) {
    bl_dtype types[2] = {BL_F32, BL_F64};
    for (int k = 0; k < 2; k++) {
        bl_tensor *a = test_randn(types[k], BL_SHAPE(3, 1, 5), 1);
        bl_tensor *b = bl_add_scalar(bl_abs(test_randn(types[k], BL_SHAPE(4, 1), 2)), 0.5);
        bl_tensor *outs[4] = {bl_add(a, b), bl_sub(a, b), bl_mul(a, b), bl_div(a, b)};
        for (int o = 0; o < 4; o++) {
            CHECK(outs[o] && outs[o]->ndim == 3 && outs[o]->shape[1] == 4);
            double worst = 0;
            for (int64_t i = 0; i < 60; i++) {
                double x = broadcast_get(a, 3, outs[o]->shape, i), y = broadcast_get(b, 3, outs[o]->shape, i);
                double ref = o == 0 ? x + y : o == 1 ? x - y : o == 2 ? x * y : x / y;
                double d = fabs(bl_get_flat(outs[o], i) - ref) / (1 + fabs(ref));
                if (d > worst) worst = d;
            }
            CHECK(worst < 1e-6, "op %d worst %g", o, worst);
        }
        /* non-contiguous operand */
        bl_tensor *at = bl_transpose(test_randn(types[k], BL_SHAPE(5, 3), 3), 0, 1);
        bl_tensor *m = bl_mul(at, at);
        for (int64_t i = 0; i < 15; i++) CHECK_CLOSE(bl_get_flat(m, i), pow(bl_get_flat(at, i), 2), 1e-6);
    }
    bl_tensor *cmp = bl_gt(bl_arange(BL_F64, 4), bl_scalar(BL_F64, 1.5));
    CHECK(cmp->dtype == BL_BOOL && bl_get_flat(cmp, 1) == 0 && bl_get_flat(cmp, 2) == 1);
    CHECK(bl_add(bl_zeros(BL_F32, BL_SHAPE(2, 3)), bl_zeros(BL_F32, BL_SHAPE(4))) == NULL);
    CHECK(strstr(bl_last_error(), "do not broadcast") != NULL);
    bl_clear_error();
    CHECK(bl_add(bl_zeros(BL_F32, BL_SHAPE(2)), bl_zeros(BL_F64, BL_SHAPE(2))) == NULL);
}

static void test_sums(void) {
    bl_tensor *a = bl_reshape(bl_arange(BL_F64, 24), BL_SHAPE(2, 3, 4));
    CHECK(bl_item(bl_sum(a)) == 276);
    bl_tensor *s1 = bl_sum_dim(a, 1, false); /* (2, 4): sum over j of 12i + 4j + k = 36i + 12 + 3k */
    CHECK(s1->ndim == 2 && s1->shape[1] == 4);
    for (int i = 0; i < 2; i++)
        for (int k = 0; k < 4; k++) CHECK(bl_get_flat(s1, i * 4 + k) == 36 * i + 12 + 3 * k);
    bl_tensor *m = bl_mean_dim(a, -1, true);
    CHECK(m->ndim == 3 && m->shape[2] == 1 && bl_get_flat(m, 0) == 1.5);
    bl_tensor *st = bl_sum_to(a, BL_SHAPE(3, 1));
    for (int j = 0; j < 3; j++) CHECK(bl_get_flat(st, j) == 2 * (4 * j * 4 + 6) + 12 * 4 * 1);
    bl_tensor *big = bl_ones(BL_F32, BL_SHAPE(1000, 1000));
    CHECK_CLOSE(bl_item(bl_sum(big)), 1e6, 1e-9);
}

static bl_tensor *f_arith(bl_tensor *const *x, void *u) {
    /* exercises add/sub/mul/div/pow with broadcasting, reused inputs and a scalar */
    bl_tensor *p = bl_mul(x[0], x[1]);
    bl_tensor *q = bl_div(bl_sub(p, x[0]), bl_add_scalar(bl_mul(x[1], x[1]), 1.0));
    return bl_add(bl_pow(bl_add_scalar(bl_mul(x[0], x[0]), 0.5), x[1]), q);
}

static bl_tensor *f_minmax_where(bl_tensor *const *x, void *u) {
    bl_tensor *mx = bl_maximum(x[0], x[1]), *mn = bl_minimum(x[0], x[1]);
    bl_tensor *w = bl_where(bl_gt(x[0], bl_scalar(BL_F64, 0.0)), bl_mul(x[0], x[1]), mn);
    return bl_add(bl_mul(mx, mx), w);
}

static bl_tensor *f_reduce_views(bl_tensor *const *x, void *u) {
    bl_tensor *t = bl_permute(x[0], (int[]){2, 0, 1});                  /* (4, 2, 3) */
    bl_tensor *s = bl_slice(t, 0, 1, 4, 2);                             /* (2, 2, 3) */
    bl_tensor *r = bl_reshape(bl_mul(s, s), BL_SHAPE(4, 3));
    bl_tensor *e = bl_expand(bl_sum_dim(r, 0, true), BL_SHAPE(2, 3));
    return bl_add(bl_mean_dim(bl_mul(e, bl_select(x[0], 2, 1)), 1, false), bl_sum(x[0]));
}

static void test_gradcheck_binary_and_views(void) {
    bl_tensor *a = randn(BL_SHAPE(3, 4), 10), *b = bl_add_scalar(bl_abs(randn(BL_SHAPE(4), 11)), 0.3);
    a->requires_grad = b->requires_grad = true;
    bl_tensor *in[2] = {a, b};
    CHECK(bl_gradcheck(f_arith, NULL, 2, in, 1e-6, 1e-5, true) == BL_OK, "%s", bl_last_error());
    bl_tensor *c = randn(BL_SHAPE(2, 3), 12), *d = randn(BL_SHAPE(2, 3), 13);
    c->requires_grad = d->requires_grad = true;
    bl_tensor *in2[2] = {c, d};
    CHECK(bl_gradcheck(f_minmax_where, NULL, 2, in2, 1e-6, 1e-5, true) == BL_OK, "%s", bl_last_error());
    bl_tensor *e = randn(BL_SHAPE(2, 3, 4), 14);
    e->requires_grad = true;
    CHECK(bl_gradcheck(f_reduce_views, NULL, 1, &e, 1e-6, 1e-5, true) == BL_OK, "%s", bl_last_error());
}

/* A wrong backward must be caught: the check is able to fail. */
static int wrong_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    gin[0] = bl_mul_scalar(g, 1.01);
    return BL_OK;
}
static bl_tensor *f_wrong(bl_tensor *const *x, void *u) {
    bl_tensor *out = bl_empty_like(x[0]);
    bl_copy_(out, x[0]);
    bl_autograd_record(out, "wrong", wrong_backward, 1, x, 0);
    return out;
}
static void test_gradcheck_detects_wrong_gradient(void) {
    bl_tensor *a = randn(BL_SHAPE(3), 20);
    a->requires_grad = true;
    CHECK(bl_gradcheck(f_wrong, NULL, 1, &a, 1e-6, 1e-5, false) == BL_ERR);
    CHECK(strstr(bl_last_error(), "gradcheck") != NULL);
}

static void test_cast_is_differentiable(void) {
    bl_tensor *x = randn(BL_SHAPE(4), 15);
    x->requires_grad = true;
    /* d/dx sum(3 * float(x)) = 3, delivered back in F64 */
    bl_tensor *y = bl_sum(bl_mul_scalar(bl_to_dtype(x, BL_F32), 3.0));
    CHECK(y->dtype == BL_F32 && bl_backward(y) == BL_OK);
    CHECK(x->grad && x->grad->dtype == BL_F64 && bl_get_flat(x->grad, 3) == 3.0);
}

static void test_engine_accumulates_and_reuses(void) {
    bl_tensor *w = bl_tensor_new_persistent(BL_F64, BL_SHAPE(3));
    for (int i = 0; i < 3; i++) bl_set_flat(w, i, i + 1.0);
    w->requires_grad = true;
    /* loss = sum(w*w) + sum(w): dL/dw = 2w + 1, used twice in one graph */
    bl_tensor *loss = bl_add(bl_sum(bl_mul(w, w)), bl_sum(w));
    CHECK(bl_backward(loss) == BL_OK);
    CHECK(w->grad && w->grad->persistent && bl_get_flat(w->grad, 2) == 7);
    /* backward again on the retained graph accumulates */
    CHECK(bl_backward(loss) == BL_OK);
    CHECK(bl_get_flat(w->grad, 0) == 6);
    bl_zero_grad(w);
    CHECK(bl_get_flat(w->grad, 1) == 0);
    /* no-grad: nothing is recorded */
    size_t len = bl_tape_length();
    BL_NO_GRAD { CHECK(!bl_mul(w, w)->requires_grad); }
    CHECK(bl_tape_length() == len && bl_grad_enabled());
    /* detach cuts the graph */
    bl_tensor *y = bl_sum(bl_mul(bl_detach(w), w)); /* dy/dw = w (not 2w) */
    bl_zero_grad(w);
    bl_backward(y);
    CHECK(bl_get_flat(w->grad, 2) == 3);
    bl_tensor_free(w);
}

static void test_create_graph_second_derivative(void) {
    /* y = x^3: dy/dx = 3x^2, d2y/dx2 = 6x */
    bl_tensor *x = bl_full(BL_F64, BL_SHAPE(1), 2.0);
    x->requires_grad = true;
    bl_tensor *y = bl_sum(bl_mul(bl_mul(x, x), x));
    bl_tensor *g;
    CHECK(bl_autograd_grad(1, &y, NULL, 1, &x, &g, true) == BL_OK);
    CHECK(bl_item(g) == 12 && g->requires_grad);
    bl_tensor *gg;
    bl_tensor *gs = bl_sum(g);
    CHECK(bl_autograd_grad(1, &gs, NULL, 1, &x, &gg, false) == BL_OK);
    CHECK(bl_item(gg) == 12);
    CHECK(x->grad == NULL, "autograd_grad leaves .grad alone");
    /* an input the output does not depend on gets zeros */
    bl_tensor *z = bl_zeros(BL_F64, BL_SHAPE(2));
    z->requires_grad = true;
    bl_tensor *gz;
    CHECK(bl_autograd_grad(1, &y, NULL, 1, &z, &gz, false) == BL_OK && bl_get_flat(gz, 1) == 0);
}

static void test_scopes_reuse_memory(void) {
    size_t before = bl_arena_used();
    for (int step = 0; step < 3; step++) {
        bl_scope s = bl_scope_begin();
        bl_tensor *t = bl_ones(BL_F32, BL_SHAPE(256, 256));
        bl_tensor *u = bl_mul(t, t);
        CHECK(u && bl_arena_used() > before);
        bl_scope_end(s);
        CHECK(bl_arena_used() == before);
    }
}

static void test_rng_streams(void) {
    bl_rng a = bl_rng_make(42, 1), b = bl_rng_make(42, 1), c = bl_rng_make(42, 2);
    uint64_t x = bl_rng_u64(&a);
    CHECK(x == bl_rng_u64(&b) && x != bl_rng_u64(&c));
    bl_rng r = bl_rng_make(7, 3);
    double mean = 0, var = 0;
    int n = 20000;
    for (int i = 0; i < n; i++) {
        double v = bl_rng_normal(&r);
        mean += v / n;
        var += v * v / n;
    }
    CHECK(fabs(mean) < 0.03 && fabs(var - 1) < 0.05, "mean %g var %g", mean, var);
    int64_t counts[5] = {0};
    for (int i = 0; i < 50000; i++) counts[bl_rng_below(&r, 5)]++;
    for (int k = 0; k < 5; k++) CHECK(labs((long)counts[k] - 10000) < 400);
}

/* Gamma(k) has mean and variance k; Beta(a, b) mean a / (a + b), variance ab / ((a + b)^2 (a + b + 1)).
 * Shapes below and above 1 take different paths. 40000 draws: the bounds are about 5 standard errors. */
static void test_rng_gamma_beta(void) {
    const double shapes[3] = {0.4, 1.0, 3.5};
    for (int s = 0; s < 3; s++) {
        bl_rng r = bl_rng_make(11, (uint64_t)s);
        double k = shapes[s], mean = 0, sq = 0;
        const int n = 40000;
        for (int i = 0; i < n; i++) {
            double v = bl_rng_gamma(&r, k);
            CHECK(v >= 0);
            mean += v / n;
            sq += v * v / n;
        }
        double var = sq - mean * mean;
        CHECK(fabs(mean - k) < 5 * sqrt(k / n) && fabs(var - k) < 0.06 * k + 0.02, "gamma(%g): mean %g var %g", k, mean,
              var);
    }
    const double ab[3][2] = {{0.2, 0.2}, {1, 1}, {2, 5}};
    for (int s = 0; s < 3; s++) {
        bl_rng r = bl_rng_make(12, (uint64_t)s);
        double a = ab[s][0], b = ab[s][1], mean = 0, sq = 0;
        const int n = 40000;
        for (int i = 0; i < n; i++) {
            double v = bl_rng_beta(&r, a, b);
            CHECK(v >= 0 && v <= 1);
            mean += v / n;
            sq += v * v / n;
        }
        double want_var = a * b / ((a + b) * (a + b) * (a + b + 1));
        CHECK(fabs(mean - a / (a + b)) < 5 * sqrt(want_var / n) && fabs(sq - mean * mean - want_var) < 0.05 * want_var,
              "beta(%g, %g): mean %g var %g", a, b, mean, sq - mean * mean);
    }
    bl_rng r = bl_rng_make(1, 1);
    CHECK(isnan(bl_rng_gamma(&r, 0)) && isnan(bl_rng_gamma(&r, -1)));
}

static void test_half_precision_storage(void) {
    const double values[] = {0.0, 1.0, -2.5, 65504.0, 6.103515625e-05, 5.960464477539063e-08, 0.1};
    bl_tensor *src = bl_from_data(BL_F64, BL_SHAPE(7), values);
    bl_tensor *h = bl_to_dtype(src, BL_F16), *bf = bl_to_dtype(src, BL_BF16);
    bl_tensor *back = bl_to_dtype(h, BL_F32), *bback = bl_to_dtype(bf, BL_F32);
    for (int i = 0; i < 6; i++) CHECK(bl_get_flat(back, i) == values[i], "f16 exact value %d", i);
    CHECK(((uint16_t *)h->data)[6] == 0x2e66, "0.1 rounds to nearest even in f16");
    CHECK(((uint16_t *)bf->data)[6] == 0x3dcd, "0.1 in bf16");
    CHECK(bl_get_flat(bback, 2) == -2.5);
}

TEST_MAIN(TEST(test_views_share_memory), TEST(test_binary_broadcast_matches_naive), TEST(test_sums),
          TEST(test_gradcheck_binary_and_views), TEST(test_gradcheck_detects_wrong_gradient), TEST(test_cast_is_differentiable),
          TEST(test_engine_accumulates_and_reuses), TEST(test_create_graph_second_derivative),
          TEST(test_scopes_reuse_memory), TEST(test_rng_streams), TEST(test_rng_gamma_beta), TEST(test_half_precision_storage))
