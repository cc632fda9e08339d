/* Channels-last memory order: the NCHW <-> NHWC conversion kernels against index arithmetic,
 * bl_channels_last (values, strides, gradient), and the ops that keep the order (conv2d on oneDNN,
 * batch norm, average pools) against the same ops on the contiguous copy, forward and backward,
 * including that their results and input gradients stay channels last; and the eval-mode folding of
 * conv2d + batch norm (+ residual + ReLU) into one convolution. */
#include "test.h"

#include "backend/cpu/layout.h"

static bool is_channels_last_only(const bl_tensor *t) {
    return t && cpu_is_channels_last(t) && !bl_is_contiguous(t);
}

static void test_conversion_kernels(void) {
    const int64_t N = 3, C = 37, HW = 45; /* several tiles, partial ones at both edges */
    bl_tensor *src = test_randn(BL_F32, BL_SHAPE(N, C, HW), 1);
    bl_tensor *nhwc = bl_empty(BL_F32, BL_SHAPE(N, HW, C)), *back = bl_empty(BL_F32, BL_SHAPE(N, C, HW));
    cpu_nchw_to_nhwc_f32(N, C, HW, src->data, nhwc->data);
    cpu_nhwc_to_nchw_f32(N, C, HW, nhwc->data, back->data);
    const float *s = src->data, *d = nhwc->data;
    int wrong = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t p = 0; p < HW; p++) wrong += d[(n * HW + p) * C + c] != s[(n * C + c) * HW + p];
    CHECK(wrong == 0, "%d elements misplaced", wrong);
    CHECK(test_max_rel_diff(back, src) == 0.0, "round trip");
}

static void test_channels_last_op(void) {
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 5, 3, 4), 2);
    x->requires_grad = true;
    bl_tensor *y = bl_channels_last(x);
    CHECK(is_channels_last_only(y), "strides (%lld, %lld, %lld, %lld)", (long long)y->stride[0],
          (long long)y->stride[1], (long long)y->stride[2], (long long)y->stride[3]);
    CHECK(test_max_rel_diff(y, x) == 0.0, "values change");
    CHECK(bl_channels_last(y) == y, "converting again copies");
    bl_tensor *w = test_randn(BL_F32, BL_SHAPE(2, 5, 3, 4), 3), *gx[1];
    bl_tensor *loss = bl_sum(bl_mul(y, w));
    CHECK(bl_autograd_grad(1, &loss, NULL, 1, &x, gx, false) == BL_OK, "gradient");
    CHECK(test_max_rel_diff(gx[0], w) == 0.0, "the gradient is not passed through unchanged");
    /* One channel: contiguous and channels last at once; nothing to copy. */
    bl_tensor *one = test_randn(BL_F32, BL_SHAPE(2, 1, 3, 4), 4);
    CHECK(bl_channels_last(one) == one, "a one-channel tensor is already channels last");
    bl_clear_error();
    CHECK(!bl_channels_last(test_randn(BL_F32, BL_SHAPE(2, 3), 5)) && strstr(bl_last_error(), "channels_last"),
          "a 2-D tensor is refused: %s", bl_last_error());
}

/* f(x) on a contiguous x and on its channels-last copy: same values and same gradients for every
 * input; with `keeps`, the result and x's gradient are channels last. */
typedef bl_tensor *(*op_fn)(bl_tensor *const *in, void *user);

static void check_same_on_both_orders(op_fn f, void *user, int n, bl_tensor **in, bool keeps, double tol,
                                      const char *what) {
    for (int i = 0; i < n; i++)
        if (in[i]) in[i]->requires_grad = true;
    bl_tensor *cl_in[4] = {NULL, NULL, NULL, NULL};
    for (int i = 0; i < n; i++) cl_in[i] = in[i];
    cl_in[0] = bl_detach(bl_channels_last(bl_detach(in[0])));
    cl_in[0]->requires_grad = true;
    bl_tensor *want = f(in, user), *got = f(cl_in, user);
    CHECK(want && got && test_max_rel_diff(got, want) <= tol, "%s forward: %g", what, test_max_rel_diff(got, want));
    CHECK(!keeps || is_channels_last_only(got), "%s: the result is not channels last", what);
    if (!want || !got) return;
    bl_tensor *r = test_randn(want->dtype, want->ndim, want->shape, 99);
    for (int create_graph = 0; create_graph < 2; create_graph++) {
        bl_tensor *lw = bl_sum(bl_mul(want, r)), *lg = bl_sum(bl_mul(got, r)), *gw[4], *gg[4];
        CHECK(bl_autograd_grad(1, &lw, NULL, n, in, gw, create_graph) == BL_OK, "%s gradients", what);
        CHECK(bl_autograd_grad(1, &lg, NULL, n, cl_in, gg, create_graph) == BL_OK, "%s gradients (cl)", what);
        for (int i = 0; i < n; i++)
            CHECK(test_max_rel_diff(gg[i], gw[i]) <= tol, "%s create_graph %d input %d: %g", what, create_graph, i,
                  test_max_rel_diff(gg[i], gw[i]));
        CHECK(create_graph || !keeps || is_channels_last_only(gg[0]), "%s: dx is not channels last", what);
    }
}

static bl_tensor *conv_op(bl_tensor *const *in, void *user) {
    return bl_conv2d(in[0], in[1], in[2], *(const bl_conv_args *)user);
}

static void test_conv2d(void) {
    struct {
        int64_t N, C, H, W, O, K;
        int stride, pad;
        bool bias;
    } cases[] = {
        {2, 16, 8, 8, 16, 3, 1, 1, false}, /* a ResNet block conv */
        {2, 16, 8, 8, 32, 3, 2, 1, true},  /* a stage transition */
        {2, 16, 8, 8, 32, 1, 2, 0, false}, /* a projection shortcut */
        {3, 3, 9, 7, 16, 3, 1, 1, false},  /* a stem: 3 input channels */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bl_tensor *in[3] = {test_randn(BL_F32, BL_SHAPE(cases[i].N, cases[i].C, cases[i].H, cases[i].W), 10 + i),
                            test_randn(BL_F32, BL_SHAPE(cases[i].O, cases[i].C, cases[i].K, cases[i].K), 20 + i),
                            cases[i].bias ? test_randn(BL_F32, BL_SHAPE(cases[i].O), 30 + i) : NULL};
        bl_conv_args a = bl_conv_args_make(cases[i].stride, cases[i].pad);
        char what[64];
        snprintf(what, sizeof what, "conv2d case %zu", i);
#ifdef BALLAST_HAVE_ONEDNN
        bool keeps = getenv("BALLAST_CONV") == NULL;
#else
        bool keeps = false;
#endif
        check_same_on_both_orders(conv_op, &a, cases[i].bias ? 3 : 2, in, keeps, 1e-5, what);
    }
}

static bl_tensor *batch_norm_op(bl_tensor *const *in, void *user) {
    (void)user;
    return bl_batch_norm(in[0], in[1], in[2], NULL, NULL, true, 0.1, 1e-5);
}

static void test_batch_norm(void) {
    bl_tensor *in[3] = {test_randn(BL_F32, BL_SHAPE(4, 6, 5, 3), 40), test_randn(BL_F32, BL_SHAPE(6), 41),
                        test_randn(BL_F32, BL_SHAPE(6), 42)};
    check_same_on_both_orders(batch_norm_op, NULL, 3, in, true, 2e-5, "batch_norm");
}

static bl_tensor *global_pool_op(bl_tensor *const *in, void *user) {
    (void)user;
    return bl_adaptive_avg_pool2d(in[0], 1, 1);
}

static bl_tensor *avg_pool_op(bl_tensor *const *in, void *user) {
    (void)user;
    return bl_avg_pool2d(in[0], 3, 2, 1);
}

static bl_tensor *adaptive_pool_op(bl_tensor *const *in, void *user) {
    (void)user;
    return bl_adaptive_avg_pool2d(in[0], 3, 2);
}

static void test_average_pools(void) {
    bl_tensor *in[1] = {test_randn(BL_F32, BL_SHAPE(3, 20, 7, 6), 50)};
    check_same_on_both_orders(global_pool_op, NULL, 1, in, false, 1e-6, "global average pool");
    check_same_on_both_orders(avg_pool_op, NULL, 1, in, true, 1e-6, "avg_pool2d 3x3 stride 2");
    check_same_on_both_orders(adaptive_pool_op, NULL, 1, in, true, 1e-6, "adaptive_avg_pool2d (3, 2)");
}

/* Elementwise ops on channels-last operands: the values of the contiguous computation, in the
 * first operand's order. */
static void test_elementwise_keep_order(void) {
    bl_tensor *a = test_randn(BL_F32, BL_SHAPE(2, 5, 3, 4), 80), *b = test_randn(BL_F32, BL_SHAPE(2, 5, 3, 4), 81);
    bl_tensor *cl_a = bl_channels_last(a), *cl_b = bl_channels_last(b);
    struct {
        bl_tensor *got, *want;
        bool channels_last;
        const char *what;
    } cases[] = {
        {bl_add(cl_a, cl_b), bl_add(a, b), true, "channels last + channels last"},
        {bl_mul(cl_a, b), bl_mul(a, b), true, "channels last * contiguous"},
        {bl_sub(a, cl_b), bl_sub(a, b), false, "contiguous - channels last"},
        {bl_mul_scalar(cl_a, 3.0), bl_mul_scalar(a, 3.0), true, "channels last * scalar"},
        {bl_relu(cl_a), bl_relu(a), true, "relu"},
        {bl_sigmoid(cl_a), bl_sigmoid(a), true, "sigmoid"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(test_max_rel_diff(cases[i].got, cases[i].want) == 0.0, "%s: values", cases[i].what);
        CHECK(cases[i].got && is_channels_last_only(cases[i].got) == cases[i].channels_last, "%s: memory order",
              cases[i].what);
    }
}

/* A channels-last network step end to end: conv, fused BN + ReLU, conv, fused BN + residual + ReLU,
 * global pool. */
static bl_tensor *block_op(bl_tensor *const *in, void *user) {
    (void)user;
    bl_conv_args a = bl_conv_args_make(1, 1);
    bl_tensor *h = bl_batch_norm_act(bl_conv2d(in[0], in[1], NULL, a), NULL, NULL, NULL, NULL, NULL, true, true, 0.1,
                                     1e-5);
    h = bl_batch_norm_act(bl_conv2d(h, in[2], NULL, a), NULL, NULL, NULL, NULL, in[0], true, true, 0.1, 1e-5);
    return bl_adaptive_avg_pool2d(h, 1, 1);
}

static void test_residual_block(void) {
    bl_tensor *in[3] = {test_randn(BL_F32, BL_SHAPE(4, 16, 6, 6), 60), test_randn(BL_F32, BL_SHAPE(16, 16, 3, 3), 61),
                        test_randn(BL_F32, BL_SHAPE(16, 16, 3, 3), 62)};
    check_same_on_both_orders(block_op, NULL, 3, in, false, 2e-5, "residual block");
}

/* bl_conv2d_bn_act against bl_batch_norm_act(bl_conv2d(...)): in eval mode on a channels-last
 * input (the batch norm folded into the convolution, residual and ReLU inside it), on a contiguous
 * input, and in training (unfused, with gradients). */
static void test_conv_bn_act(void) {
    const int64_t C = 16, O = 32;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(3, C, 10, 10), 70), *w = test_randn(BL_F32, BL_SHAPE(O, C, 3, 3), 71);
    bl_tensor *gamma = bl_add_scalar(test_randn(BL_F32, BL_SHAPE(O), 72), 1.0);
    bl_tensor *beta = test_randn(BL_F32, BL_SHAPE(O), 73), *mean = test_randn(BL_F32, BL_SHAPE(O), 74);
    bl_tensor *var = bl_add_scalar(bl_abs(test_randn(BL_F32, BL_SHAPE(O), 75)), 0.3);
    bl_tensor *residual = test_randn(BL_F32, BL_SHAPE(3, O, 5, 5), 76);
    bl_tensor *cl_x = bl_channels_last(x);
    bl_conv_args a = bl_conv_args_make(2, 1);
    for (int variant = 0; variant < 4; variant++) {
        bool relu = variant & 1;
        bl_tensor *r = variant & 2 ? residual : NULL;
        bl_tensor *want =
            bl_batch_norm_act(bl_conv2d(x, w, NULL, a), gamma, beta, mean, var, r, relu, false, 0.1, 1e-5);
        bl_tensor *folded = bl_conv2d_bn_act(cl_x, w, a, gamma, beta, mean, var, r, relu, false, 0.1, 1e-5);
        bl_tensor *plain = bl_conv2d_bn_act(x, w, a, gamma, beta, mean, var, r, relu, false, 0.1, 1e-5);
        CHECK(test_max_rel_diff(folded, want) <= 1e-5, "eval, channels last, variant %d: %g", variant,
              test_max_rel_diff(folded, want));
        CHECK(test_max_rel_diff(plain, want) <= 1e-6, "eval, contiguous, variant %d: %g", variant,
              test_max_rel_diff(plain, want));
#ifdef BALLAST_HAVE_ONEDNN
        CHECK(getenv("BALLAST_CONV") || is_channels_last_only(folded), "the folded result is channels last");
#endif
    }
    /* Training: the running statistics move as with the two ops, and gradients flow. */
    bl_tensor *rm1 = bl_zeros(BL_F32, BL_SHAPE(O)), *rv1 = bl_ones(BL_F32, BL_SHAPE(O));
    bl_tensor *rm2 = bl_zeros(BL_F32, BL_SHAPE(O)), *rv2 = bl_ones(BL_F32, BL_SHAPE(O));
    w->requires_grad = true;
    bl_tensor *y1 = bl_conv2d_bn_act(cl_x, w, a, gamma, beta, rm1, rv1, residual, true, true, 0.1, 1e-5);
    bl_tensor *y2 =
        bl_batch_norm_act(bl_conv2d(cl_x, w, NULL, a), gamma, beta, rm2, rv2, residual, true, true, 0.1, 1e-5);
    CHECK(test_max_rel_diff(y1, y2) == 0.0 && test_max_rel_diff(rm1, rm2) == 0.0 && test_max_rel_diff(rv1, rv2) == 0.0,
          "training");
    bl_tensor *g1[1], *g2[1], *l1 = bl_sum(bl_mul(y1, residual)), *l2 = bl_sum(bl_mul(y2, residual));
    CHECK(bl_autograd_grad(1, &l1, NULL, 1, &w, g1, false) == BL_OK &&
              bl_autograd_grad(1, &l2, NULL, 1, &w, g2, false) == BL_OK && test_max_rel_diff(g1[0], g2[0]) == 0.0,
          "training gradients");
    w->requires_grad = false;
}

TEST_MAIN(TEST(test_conversion_kernels), TEST(test_channels_last_op), TEST(test_conv2d), TEST(test_batch_norm),
          TEST(test_average_pools), TEST(test_elementwise_keep_order), TEST(test_residual_block),
          TEST(test_conv_bn_act))
