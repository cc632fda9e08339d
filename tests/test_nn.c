/* nn modules: parameter names and initial values as PyTorch's, every forward against a naive
 * computation written here from the definitions (loops over plain arrays), BatchNorm's training and
 * eval behaviour, dropout's statistics, and finite-difference gradient checks (first and second
 * order, F64) of the modules with the module pointed at F64 copies of its parameters. */
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------------------- */

/* An F64 leaf holding a copy of t's values, for gradient checks. */
static bl_tensor *f64_leaf(const bl_tensor *t) {
    bl_tensor *c = bl_empty(BL_F64, t->ndim, t->shape);
    bl_copy_(c, t);
    c->requires_grad = true;
    return c;
}

static void fill_randn(bl_tensor *t, uint64_t seed, double mean, double std) {
    bl_rng r = bl_rng_make(seed, 5);
    bl_fill_normal_(t, &r, mean, std);
}

static bool has_shape(const bl_tensor *t, int ndim, const int64_t *shape) {
    if (!t || t->ndim != ndim) return false;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d]) return false;
    return true;
}

/* y[r][o] = sum_i x[r][i] w[o][i] + b[o] */
static void naive_linear(const double *x, int64_t rows, int64_t in, const double *w, const double *b, int64_t out,
                         double *y) {
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = b ? b[o] : 0;
            for (int64_t i = 0; i < in; i++) s += x[r * in + i] * w[o * in + i];
            y[r * out + o] = s;
        }
}

static double naive_gelu(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

/* Normalizes each row of length d over itself, then scales and shifts. */
static void naive_layernorm(const double *x, int64_t rows, int64_t d, const double *w, const double *b, double eps,
                            double *y) {
    for (int64_t r = 0; r < rows; r++) {
        double mean = 0, var = 0;
        for (int64_t i = 0; i < d; i++) mean += x[r * d + i];
        mean /= d;
        for (int64_t i = 0; i < d; i++) var += (x[r * d + i] - mean) * (x[r * d + i] - mean);
        var /= d;
        for (int64_t i = 0; i < d; i++) y[r * d + i] = (x[r * d + i] - mean) / sqrt(var + eps) * w[i] + b[i];
    }
}

/* timm attention on x (B, T, D): qkv features ordered (3, heads, hd). mask (T, T) of 0/1 or NULL. */
static void naive_mha(const double *x, int64_t B, int64_t T, int64_t D, int64_t heads, const double *wqkv,
                      const double *bqkv, const double *wproj, const double *bproj, const int *mask, double *y) {
    int64_t hd = D / heads;
    double *qkv = bl_arena_alloc((size_t)(B * T * 3 * D) * sizeof *qkv);
    double *o = bl_arena_alloc((size_t)(B * T * D) * sizeof *o);
    double *p = bl_arena_alloc((size_t)T * sizeof *p);
    naive_linear(x, B * T, D, wqkv, bqkv, 3 * D, qkv);
    for (int64_t b = 0; b < B; b++)
        for (int64_t h = 0; h < heads; h++)
            for (int64_t i = 0; i < T; i++) {
                const double *q = qkv + (b * T + i) * 3 * D + h * hd;
                double mx = -INFINITY, total = 0;
                for (int64_t j = 0; j < T; j++) {
                    const double *k = qkv + (b * T + j) * 3 * D + D + h * hd;
                    double s = 0;
                    for (int64_t e = 0; e < hd; e++) s += q[e] * k[e];
                    p[j] = mask && !mask[i * T + j] ? -INFINITY : s / sqrt((double)hd);
                    if (p[j] > mx) mx = p[j];
                }
                for (int64_t j = 0; j < T; j++) total += p[j] = exp(p[j] - mx);
                for (int64_t e = 0; e < hd; e++) {
                    double s = 0;
                    for (int64_t j = 0; j < T; j++) s += p[j] / total * qkv[(b * T + j) * 3 * D + 2 * D + h * hd + e];
                    o[(b * T + i) * D + h * hd + e] = s;
                }
            }
    naive_linear(o, B * T, D, wproj, bproj, D, y);
}

/* x (N, C, H, W), w (O, C, K, K) -> y (N, O, OH, OW); groups 1. */
static void naive_conv2d(const double *x, int64_t N, int64_t C, int64_t H, int64_t W, const double *w, const double *b,
                         int64_t O, int64_t K, int64_t stride, int64_t pad, double *y, int64_t *OH, int64_t *OW) {
    int64_t oh = (H + 2 * pad - K) / stride + 1, ow = (W + 2 * pad - K) / stride + 1;
    for (int64_t n = 0; n < N; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < oh; i++)
                for (int64_t j = 0; j < ow; j++) {
                    double s = b ? b[o] : 0;
                    for (int64_t c = 0; c < C; c++)
                        for (int64_t ki = 0; ki < K; ki++)
                            for (int64_t kj = 0; kj < K; kj++) {
                                int64_t r = i * stride - pad + ki, q = j * stride - pad + kj;
                                if (r < 0 || r >= H || q < 0 || q >= W) continue;
                                s += x[((n * C + c) * H + r) * W + q] * w[((o * C + c) * K + ki) * K + kj];
                            }
                    y[((n * O + o) * oh + i) * ow + j] = s;
                }
    *OH = oh;
    *OW = ow;
}

/* ---- initializers ----------------------------------------------------------------------------- */

static void moments(const bl_tensor *t, double *mean, double *var, double *max_abs) {
    int64_t n = bl_numel(t);
    double s = 0, s2 = 0, mx = 0;
    for (int64_t i = 0; i < n; i++) {
        double v = bl_get_flat(t, i);
        s += v;
        s2 += v * v;
        if (fabs(v) > mx) mx = fabs(v);
    }
    *mean = s / n;
    *var = s2 / n - *mean * *mean;
    *max_abs = mx;
}

static void test_initializers(void) {
    bl_rng rng = bl_rng_make(3, 1);
    bl_tensor *w = bl_empty(BL_F32, BL_SHAPE(64, 32, 3, 3));
    CHECK(bl_init_fan(w, BL_FAN_IN) == 288 && bl_init_fan(w, BL_FAN_OUT) == 576);
    CHECK(bl_init_fan(bl_empty(BL_F32, BL_SHAPE(5, 7)), BL_FAN_IN) == 7);
    double mean, var, mx, bound = 1.0 / sqrt(288.0);
    /* a = sqrt(5): U(-1/sqrt(fan_in), 1/sqrt(fan_in)), variance bound^2 / 3 */
    CHECK(bl_init_kaiming_uniform_(w, &rng, sqrt(5.0)) == BL_OK);
    moments(w, &mean, &var, &mx);
    CHECK(mx <= bound * (1 + 1e-6) && mx > 0.99 * bound, "max %g bound %g", mx, bound);
    CHECK(fabs(var / (bound * bound / 3) - 1) < 0.05 && fabs(mean) < 0.02 * bound, "var %g", var);
    /* a = 0: bound sqrt(6 / fan_in) */
    CHECK(bl_init_kaiming_uniform_(w, &rng, 0.0) == BL_OK);
    moments(w, &mean, &var, &mx);
    CHECK(mx <= sqrt(6.0 / 288) * (1 + 1e-6) && mx > 0.99 * sqrt(6.0 / 288));
    CHECK(bl_init_kaiming_normal_(w, &rng, BL_FAN_OUT) == BL_OK);
    moments(w, &mean, &var, &mx);
    CHECK(fabs(var / (2.0 / 576) - 1) < 0.05, "var %g expected %g", var, 2.0 / 576);
    CHECK(bl_init_kaiming_normal_(w, &rng, BL_FAN_IN) == BL_OK);
    moments(w, &mean, &var, &mx);
    CHECK(fabs(var / (2.0 / 288) - 1) < 0.05, "var %g expected %g", var, 2.0 / 288);
    /* N(1, 2^2) truncated to [0, 2]: symmetric about the mean, never outside the bounds */
    bl_tensor *t = bl_empty(BL_F64, BL_SHAPE(20000));
    CHECK(bl_init_trunc_normal_(t, &rng, 1.0, 2.0, 0.0, 2.0) == BL_OK);
    moments(t, &mean, &var, &mx);
    CHECK(mx <= 2.0 && fabs(mean - 1.0) < 0.03, "mean %g max %g", mean, mx);
    for (int64_t i = 0; i < 20000; i++) CHECK(bl_get_flat(t, i) >= 0.0);
    CHECK(bl_init_trunc_normal_(t, &rng, 0.0, 1.0, 10.0, 11.0) == BL_ERR, "bounds far in the tail are refused");
    bl_clear_error();
    CHECK(bl_init_kaiming_uniform_(bl_empty(BL_F32, BL_SHAPE(4)), &rng, 0.0) == BL_ERR);
    bl_clear_error();
    /* The activation switch */
    bl_tensor *x = bl_from_data(BL_F64, BL_SHAPE(3), (double[]){-1.0, 0.5, 2.0});
    CHECK(bl_activate(x, BL_ACT_IDENTITY) == x);
    CHECK_CLOSE(bl_get_flat(bl_activate(x, BL_ACT_RELU), 0), 0.0, 1e-12);
    CHECK_CLOSE(bl_get_flat(bl_activate(x, BL_ACT_GELU), 2), naive_gelu(2.0), 1e-9);
    CHECK_CLOSE(bl_get_flat(bl_activate(x, BL_ACT_TANH), 1), tanh(0.5), 1e-9);
    CHECK_CLOSE(bl_get_flat(bl_activate(x, BL_ACT_SIGMOID), 0), 1 / (1 + exp(1.0)), 1e-9);
}

/* ---- single-op modules ------------------------------------------------------------------------ */

static void test_linear_layer(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(1, 1);
    bl_linear_layer fc, nb;
    CHECK(bl_linear_layer_init(&fc, &ps, "head", 5, 7, true, &rng) == BL_OK);
    CHECK(bl_linear_layer_init(&nb, &ps, "proj", 5, 3, false, &rng) == BL_OK);
    CHECK(has_shape(bl_params_find(&ps, "head.weight"), BL_SHAPE(7, 5)) &&
          bl_params_find(&ps, "head.weight") == fc.weight);
    CHECK(has_shape(bl_params_find(&ps, "head.bias"), BL_SHAPE(7)) && bl_params_find(&ps, "proj.bias") == NULL);
    CHECK(nb.bias == NULL && ps.count == 3);
    double mean, var, mx;
    moments(fc.bias, &mean, &var, &mx);
    CHECK(mx <= 1 / sqrt(5.0) && mx > 0, "bias bound 1/sqrt(fan_in), got max %g", mx);
    bl_linear_layer dup;
    CHECK(bl_linear_layer_init(&dup, &ps, "head", 5, 7, true, &rng) == BL_ERR, "duplicate names are refused");
    bl_clear_error();
    CHECK(bl_params_finalize(&ps) == BL_OK);

    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, 5), 11);
    double *ref = bl_arena_alloc(6 * 7 * sizeof *ref);
    naive_linear(test_values(x), 6, 5, test_values(fc.weight), test_values(fc.bias), 7, ref);
    bl_tensor *y = bl_linear_layer_forward(&fc, x);
    CHECK(has_shape(y, BL_SHAPE(2, 3, 7)));
    CHECK(test_max_rel_diff_values(y, ref, 42) < 1e-5);
    /* non-contiguous input */
    bl_tensor *xt = bl_transpose(test_randn(BL_F32, BL_SHAPE(5, 4), 12), 0, 1);
    naive_linear(test_values(xt), 4, 5, test_values(nb.weight), NULL, 3, ref);
    CHECK(test_max_rel_diff_values(bl_linear_layer_forward(&nb, xt), ref, 12) < 1e-5);
    CHECK(bl_linear_layer_forward(&fc, test_randn(BL_F32, BL_SHAPE(2, 4), 1)) == NULL);
    CHECK(strstr(bl_last_error(), "Linear(5 -> 7)") != NULL);
    bl_clear_error();
    CHECK(bl_linear_layer_forward(&fc, NULL) == NULL);
    bl_params_free(&ps);
}

static void test_conv2d_layer(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(2, 1);
    bl_conv2d_layer conv;
    CHECK(bl_conv2d_layer_init(&conv, &ps, "features.0", 3, 4, 3, bl_conv_args_make(2, 1), true, &rng) == BL_OK);
    CHECK(has_shape(bl_params_find(&ps, "features.0.weight"), BL_SHAPE(4, 3, 3, 3)));
    CHECK(has_shape(bl_params_find(&ps, "features.0.bias"), BL_SHAPE(4)));
    double mean, var, mx;
    moments(conv.weight, &mean, &var, &mx);
    CHECK(mx <= 1 / sqrt(27.0) && mx > 0.8 / sqrt(27.0), "kaiming_uniform(a=sqrt(5)) bound, max %g", mx);
    moments(conv.bias, &mean, &var, &mx);
    CHECK(mx <= 1 / sqrt(27.0));
    CHECK(bl_params_finalize(&ps) == BL_OK);
    bl_dtype types[2] = {BL_F32, BL_F64};
    for (int k = 0; k < 2; k++) {
        bl_conv2d_layer c = conv;
        if (types[k] == BL_F64) {
            c.weight = f64_leaf(conv.weight);
            c.bias = f64_leaf(conv.bias);
        }
        bl_tensor *x = test_randn(types[k], BL_SHAPE(2, 3, 7, 6), 21);
        double *ref = bl_arena_alloc(2 * 4 * 4 * 3 * sizeof *ref);
        int64_t oh, ow;
        naive_conv2d(test_values(x), 2, 3, 7, 6, test_values(c.weight), test_values(c.bias), 4, 3, 2, 1, ref, &oh, &ow);
        bl_tensor *y = bl_conv2d_layer_forward(&c, x);
        CHECK(has_shape(y, BL_SHAPE(2, 4, 4, 3)), "%s", y ? bl_shape_str(y, (char[64]){0}, 64) : "NULL");
        CHECK(test_max_rel_diff_values(y, ref, 2 * 4 * oh * ow) < (k ? 1e-12 : 1e-5));
    }
    CHECK(bl_conv2d_layer_forward(&conv, test_randn(BL_F32, BL_SHAPE(1, 2, 5, 5), 3)) == NULL);
    CHECK(strstr(bl_last_error(), "Conv2d(3 -> 4") != NULL);
    bl_clear_error();
    bl_params_free(&ps);
}

static void test_batchnorm_train_and_eval(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_batchnorm bn;
    CHECK(bl_batchnorm_init(&bn, &ps, "bn1", 3) == BL_OK);
    const char *names[5] = {"bn1.weight", "bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.num_batches_tracked"};
    for (int i = 0; i < 5; i++) {
        CHECK(ps.count == 5 && strcmp(ps.entries[i].name, names[i]) == 0, "entry %d", i);
        CHECK(ps.entries[i].trainable == (i < 2), "%s", names[i]);
    }
    CHECK(bn.num_batches_tracked->dtype == BL_I64 && bn.num_batches_tracked->ndim == 0);
    CHECK(bn.momentum == 0.1 && bn.eps == 1e-5);
    CHECK(bl_get_flat(bn.weight, 2) == 1 && bl_get_flat(bn.bias, 1) == 0);
    CHECK(bl_get_flat(bn.running_mean, 0) == 0 && bl_get_flat(bn.running_var, 2) == 1);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    const double w[3] = {1.5, 0.5, 2.0}, b[3] = {0.1, -0.2, 0.3};
    for (int c = 0; c < 3; c++) {
        bl_set_flat(bn.weight, c, w[c]);
        bl_set_flat(bn.bias, c, b[c]);
    }
    /* (N, C, L) with channel-dependent mean and scale */
    const int64_t N = 4, C = 3, L = 5;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(4, 3, 5), 31);
    for (int64_t i = 0; i < N * C * L; i++) bl_set_flat(x, i, bl_get_flat(x, i) * (1 + (i / L) % C) + (i / L) % C);
    double *xv = test_values(x), mean[3] = {0}, var[3] = {0}, ref[60];
    for (int64_t i = 0; i < 60; i++) mean[(i / L) % C] += xv[i] / (N * L);
    for (int64_t i = 0; i < 60; i++) var[(i / L) % C] += pow(xv[i] - mean[(i / L) % C], 2) / (N * L);

    bl_tensor *y = bl_batchnorm_forward(&bn, x, true);
    for (int64_t i = 0; i < 60; i++) {
        int c = (int)((i / L) % C);
        ref[i] = (xv[i] - mean[c]) / sqrt(var[c] + 1e-5) * w[c] + b[c];
    }
    CHECK(test_max_rel_diff_values(y, ref, 60) < 1e-5, "training normalizes with the batch's biased variance");
    int64_t count = N * L;
    for (int c = 0; c < 3; c++) {
        CHECK_CLOSE(bl_get_flat(bn.running_mean, c), 0.1 * mean[c], 1e-5);
        CHECK_CLOSE(bl_get_flat(bn.running_var, c), 0.9 + 0.1 * var[c] * count / (count - 1), 1e-5);
    }
    CHECK(*(int64_t *)bn.num_batches_tracked->data == 1);

    double rm[3], rv[3];
    for (int c = 0; c < 3; c++) {
        rm[c] = bl_get_flat(bn.running_mean, c);
        rv[c] = bl_get_flat(bn.running_var, c);
    }
    bl_tensor *e = bl_batchnorm_forward(&bn, x, false);
    for (int64_t i = 0; i < 60; i++) {
        int c = (int)((i / L) % C);
        ref[i] = (xv[i] - rm[c]) / sqrt(rv[c] + 1e-5) * w[c] + b[c];
    }
    CHECK(test_max_rel_diff_values(e, ref, 60) < 1e-5, "eval normalizes with the running statistics");
    CHECK(bl_get_flat(bn.running_mean, 1) == rm[1] && bl_get_flat(bn.running_var, 1) == rv[1]);
    CHECK(*(int64_t *)bn.num_batches_tracked->data == 1, "eval does not count batches");
    /* in eval a sample's output does not depend on the rest of the batch */
    bl_tensor *alone = bl_batchnorm_forward(&bn, bl_slice(x, 0, 1, 2, 1), false);
    CHECK(test_max_rel_diff_values(alone, ref + 15, 15) < 1e-5);
    /* a second training batch moves the running mean by momentum again */
    bl_batchnorm_forward(&bn, x, true);
    CHECK_CLOSE(bl_get_flat(bn.running_mean, 2), 0.9 * rm[2] + 0.1 * mean[2], 1e-5);
    CHECK(*(int64_t *)bn.num_batches_tracked->data == 2);
    CHECK(bl_batchnorm_forward(&bn, test_randn(BL_F32, BL_SHAPE(2, 4), 1), true) == NULL);
    CHECK(strstr(bl_last_error(), "BatchNorm(3)") != NULL);
    bl_clear_error();
    CHECK(*(int64_t *)bn.num_batches_tracked->data == 2, "a failed forward counts nothing");
    bl_params_free(&ps);
}

static void test_norm_layers_match_naive(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_layernorm ln;
    bl_groupnorm gn;
    bl_instancenorm in;
    CHECK(bl_layernorm_init(&ln, &ps, "norm", 6, 1e-6) == BL_OK);
    CHECK(bl_groupnorm_init(&gn, &ps, "features.1", 2, 4) == BL_OK);
    CHECK(bl_instancenorm_init(&in, &ps, "inorm", 3) == BL_OK);
    CHECK(bl_groupnorm_init(&gn, &ps, "bad", 3, 4) == BL_ERR, "4 channels in 3 groups is refused");
    bl_clear_error();
    CHECK(ps.count == 6 && bl_params_find(&ps, "features.1.bias") && bl_params_find(&ps, "inorm.weight"));
    CHECK(bl_get_flat(ln.weight, 5) == 1 && bl_get_flat(gn.bias, 3) == 0 && gn.eps == 1e-5 && in.eps == 1e-5);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    fill_randn(ln.weight, 1, 1, 0.5);
    fill_randn(ln.bias, 2, 0, 0.5);
    fill_randn(gn.weight, 3, 1, 0.5);
    fill_randn(gn.bias, 4, 0, 0.5);
    fill_randn(in.weight, 5, 1, 0.5);
    fill_randn(in.bias, 6, 0, 0.5);

    /* LayerNorm over the last dim of (2, 3, 6) */
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, 6), 41);
    double ref[120];
    naive_layernorm(test_values(x), 6, 6, test_values(ln.weight), test_values(ln.bias), 1e-6, ref);
    CHECK(test_max_rel_diff_values(bl_layernorm_forward(&ln, x), ref, 36) < 1e-5);
    CHECK(bl_layernorm_forward(&ln, test_randn(BL_F32, BL_SHAPE(2, 5), 1)) == NULL);
    CHECK(strstr(bl_last_error(), "LayerNorm(6)") != NULL);
    bl_clear_error();

    /* GroupNorm(2, 4) on (2, 4, 3, 3): each group is 2 channels x 9 pixels, then per-channel affine */
    bl_tensor *g = test_randn(BL_F32, BL_SHAPE(2, 4, 3, 3), 42);
    double *gv = test_values(g), *gw = test_values(gn.weight), *gb = test_values(gn.bias);
    double ones[18], zeros[18];
    for (int i = 0; i < 18; i++) ones[i] = 1, zeros[i] = 0;
    naive_layernorm(gv, 4, 18, ones, zeros, 1e-5, ref); /* rows = (sample, group) */
    for (int i = 0; i < 72; i++) ref[i] = ref[i] * gw[(i / 9) % 4] + gb[(i / 9) % 4];
    CHECK(test_max_rel_diff_values(bl_groupnorm_forward(&gn, g), ref, 72) < 1e-5);

    /* InstanceNorm on (2, 3, 4, 5): each (sample, channel) plane on its own */
    bl_tensor *z = test_randn(BL_F32, BL_SHAPE(2, 3, 4, 5), 43);
    double *iw = test_values(in.weight), *ib = test_values(in.bias), ones20[20], zeros20[20];
    for (int i = 0; i < 20; i++) ones20[i] = 1, zeros20[i] = 0;
    naive_layernorm(test_values(z), 6, 20, ones20, zeros20, 1e-5, ref);
    for (int i = 0; i < 120; i++) ref[i] = ref[i] * iw[(i / 20) % 3] + ib[(i / 20) % 3];
    CHECK(test_max_rel_diff_values(bl_instancenorm_forward(&in, z), ref, 120) < 1e-5);
    bl_params_free(&ps);
}

static void test_dropout_layer(void) {
    bl_rng rng = bl_rng_make(7, 1);
    bl_dropout_layer off, d;
    bl_rng before = rng;
    bl_dropout_layer_init(&off, 0.0, &rng);
    CHECK(rng.counter == before.counter, "p = 0 draws nothing from the init stream");
    bl_dropout_layer_init(&d, 0.3, &rng);
    bl_tensor *x = bl_ones(BL_F32, BL_SHAPE(20000));
    CHECK(bl_dropout_layer_forward(&off, x, true) == x && bl_dropout_layer_forward(&d, x, false) == x);
    bl_tensor *y1 = bl_dropout_layer_forward(&d, x, true), *y2 = bl_dropout_layer_forward(&d, x, true);
    int64_t zeros = 0, differ = 0;
    bool scaled = true;
    for (int64_t i = 0; i < 20000; i++) {
        double v = bl_get_flat(y1, i);
        zeros += v == 0;
        if (v != 0 && fabs(v - 1 / 0.7) > 1e-6) scaled = false;
        differ += v != bl_get_flat(y2, i);
    }
    CHECK(fabs(zeros / 20000.0 - 0.3) < 0.02, "dropped fraction %g", zeros / 20000.0);
    CHECK(scaled, "kept elements are scaled by 1 / (1 - p)");
    CHECK(differ > 5000, "each call draws a fresh mask (%lld differ)", (long long)differ);
}

/* ---- composite modules ----------------------------------------------------------------------- */

static void test_mlp_matches_naive(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(4, 1);
    bl_mlp mlp;
    CHECK(bl_mlp_init(&mlp, &ps, "mlp", 5, 7, 3, BL_ACT_GELU, 0.0, &rng) == BL_OK);
    const char *names[4] = {"mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"};
    for (int i = 0; i < 4; i++) CHECK(ps.count == 4 && strcmp(ps.entries[i].name, names[i]) == 0);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 4, 5), 51);
    double h[56], ref[24];
    naive_linear(test_values(x), 8, 5, test_values(mlp.fc1.weight), test_values(mlp.fc1.bias), 7, h);
    for (int i = 0; i < 56; i++) h[i] = naive_gelu(h[i]);
    naive_linear(h, 8, 7, test_values(mlp.fc2.weight), test_values(mlp.fc2.bias), 3, ref);
    bl_tensor *y = bl_mlp_forward(&mlp, x, true);
    CHECK(has_shape(y, BL_SHAPE(2, 4, 3)) && test_max_rel_diff_values(y, ref, 24) < 1e-5);
    bl_params_free(&ps);
}

static void test_mha_matches_naive(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(5, 1);
    bl_mha attn;
    CHECK(bl_mha_init(&attn, &ps, "attn", 6, 4, true, 0.0, &rng) == BL_ERR, "6 is not divisible by 4 heads");
    bl_clear_error();
    CHECK(bl_mha_init(&attn, &ps, "attn", 6, 3, true, 0.0, &rng) == BL_OK);
    CHECK(has_shape(bl_params_find(&ps, "attn.qkv.weight"), BL_SHAPE(18, 6)));
    CHECK(has_shape(bl_params_find(&ps, "attn.qkv.bias"), BL_SHAPE(18)));
    CHECK(has_shape(bl_params_find(&ps, "attn.proj.weight"), BL_SHAPE(6, 6)) && bl_params_find(&ps, "attn.proj.bias"));
    CHECK(bl_params_finalize(&ps) == BL_OK);
    const int64_t B = 2, T = 5, D = 6;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 5, 6), 61);
    double ref[60];
    naive_mha(test_values(x), B, T, D, 3, test_values(attn.qkv.weight), test_values(attn.qkv.bias), test_values(attn.proj.weight),
              test_values(attn.proj.bias), NULL, ref);
    bl_tensor *y = bl_mha_forward(&attn, x, NULL, false);
    CHECK(has_shape(y, BL_SHAPE(2, 5, 6)) && test_max_rel_diff_values(y, ref, 60) < 1e-5, "%g", test_max_rel_diff_values(y, ref, 60));
    /* a boolean (T, T) mask, broadcast over batch and heads; true = attend */
    int mask[25];
    bl_tensor *m = bl_empty(BL_BOOL, BL_SHAPE(5, 5));
    for (int i = 0; i < 25; i++) {
        mask[i] = (i / 5 + 2 * (i % 5)) % 3 != 1 || i % 6 == 0; /* irregular, every row keeps its diagonal */
        bl_set_flat(m, i, mask[i]);
    }
    naive_mha(test_values(x), B, T, D, 3, test_values(attn.qkv.weight), test_values(attn.qkv.bias), test_values(attn.proj.weight),
              test_values(attn.proj.bias), mask, ref);
    CHECK(test_max_rel_diff_values(bl_mha_forward(&attn, x, m, false), ref, 60) < 1e-5);
    /* non-contiguous input */
    bl_tensor *xt = bl_transpose(bl_contiguous(bl_transpose(x, 0, 1)), 0, 1);
    CHECK(!bl_is_contiguous(xt));
    naive_mha(test_values(xt), B, T, D, 3, test_values(attn.qkv.weight), test_values(attn.qkv.bias), test_values(attn.proj.weight),
              test_values(attn.proj.bias), NULL, ref);
    CHECK(test_max_rel_diff_values(bl_mha_forward(&attn, xt, NULL, false), ref, 60) < 1e-5);
    CHECK(bl_mha_forward(&attn, test_randn(BL_F32, BL_SHAPE(2, 5), 1), NULL, false) == NULL);
    CHECK(strstr(bl_last_error(), "Attention(dim 6, 3 heads)") != NULL);
    bl_clear_error();
    bl_params_free(&ps);
}

static void block_naive(const bl_transformer_block *blk, const double *x, int64_t B, int64_t T, int64_t D,
                        int64_t hidden, double *out) {
    int64_t n = B * T * D;
    double *h = bl_arena_alloc((size_t)n * sizeof *h), *a = bl_arena_alloc((size_t)n * sizeof *a);
    double *u = bl_arena_alloc((size_t)(B * T * hidden) * sizeof *u);
    naive_layernorm(x, B * T, D, test_values(blk->norm1.weight), test_values(blk->norm1.bias), blk->norm1.eps, h);
    naive_mha(h, B, T, D, blk->attn.heads, test_values(blk->attn.qkv.weight), test_values(blk->attn.qkv.bias),
              test_values(blk->attn.proj.weight), test_values(blk->attn.proj.bias), NULL, a);
    for (int64_t i = 0; i < n; i++) a[i] += x[i];
    naive_layernorm(a, B * T, D, test_values(blk->norm2.weight), test_values(blk->norm2.bias), blk->norm2.eps, h);
    naive_linear(h, B * T, D, test_values(blk->mlp.fc1.weight), test_values(blk->mlp.fc1.bias), hidden, u);
    for (int64_t i = 0; i < B * T * hidden; i++) u[i] = naive_gelu(u[i]);
    naive_linear(u, B * T, hidden, test_values(blk->mlp.fc2.weight), test_values(blk->mlp.fc2.bias), D, out);
    for (int64_t i = 0; i < n; i++) out[i] += a[i];
}

static void test_transformer_block_matches_naive(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(6, 1);
    bl_transformer_block blk;
    CHECK(bl_transformer_block_init(&blk, &ps, "blocks.3", 8, 2, 2.0, true, 0.0, 1e-6, &rng) == BL_OK);
    const char *names[12] = {"norm1.weight",     "norm1.bias",     "attn.qkv.weight", "attn.qkv.bias",
                             "attn.proj.weight", "attn.proj.bias", "norm2.weight",    "norm2.bias",
                             "mlp.fc1.weight",   "mlp.fc1.bias",   "mlp.fc2.weight",  "mlp.fc2.bias"};
    CHECK(ps.count == 12);
    for (int i = 0; i < 12 && i < ps.count; i++) {
        char full[BL_PARAM_NAME_MAX];
        CHECK(strcmp(ps.entries[i].name, bl_param_name(full, "blocks.3", names[i])) == 0, "%s", ps.entries[i].name);
    }
    CHECK(blk.mlp.fc1.out_features == 16 && blk.mlp.act == BL_ACT_GELU && blk.norm1.eps == 1e-6);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    fill_randn(blk.norm1.weight, 1, 1, 0.3);
    fill_randn(blk.norm1.bias, 2, 0, 0.3);
    fill_randn(blk.norm2.weight, 3, 1, 0.3);
    fill_randn(blk.norm2.bias, 4, 0, 0.3);
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, 8), 71);
    double ref[48];
    block_naive(&blk, test_values(x), 2, 3, 8, 16, ref);
    bl_tensor *y = bl_transformer_block_forward(&blk, x, false);
    CHECK(has_shape(y, BL_SHAPE(2, 3, 8)) && test_max_rel_diff_values(y, ref, 48) < 1e-5, "%g", test_max_rel_diff_values(y, ref, 48));
    bl_params_free(&ps);
}

/* ---- gradient checks (F64, first and second order) ------------------------------------------- */

static bl_tensor *f_linear(bl_tensor *const *in, void *user) {
    bl_linear_layer m = *(bl_linear_layer *)user;
    m.weight = in[1];
    m.bias = in[2];
    return bl_linear_layer_forward(&m, in[0]);
}

static bl_tensor *f_conv(bl_tensor *const *in, void *user) {
    bl_conv2d_layer m = *(bl_conv2d_layer *)user;
    m.weight = in[1];
    m.bias = in[2];
    return bl_conv2d_layer_forward(&m, in[0]);
}

static bl_tensor *f_batchnorm(bl_tensor *const *in, void *user) {
    bl_batchnorm m = *(bl_batchnorm *)user;
    m.weight = in[1];
    m.bias = in[2];
    m.running_mean = m.running_var = m.num_batches_tracked = NULL; /* batch statistics only */
    return bl_batchnorm_forward(&m, in[0], true);
}

static bl_tensor *f_mlp(bl_tensor *const *in, void *user) {
    bl_mlp m = *(bl_mlp *)user;
    m.fc1.weight = in[1], m.fc1.bias = in[2], m.fc2.weight = in[3], m.fc2.bias = in[4];
    return bl_mlp_forward(&m, in[0], false);
}

static bl_tensor *f_mha(bl_tensor *const *in, void *user) {
    bl_mha m = *(bl_mha *)user;
    m.qkv.weight = in[1], m.qkv.bias = in[2], m.proj.weight = in[3], m.proj.bias = in[4];
    return bl_mha_forward(&m, in[0], NULL, false);
}

static bl_tensor *f_block(bl_tensor *const *in, void *user) {
    bl_transformer_block m = *(bl_transformer_block *)user;
    bl_tensor **slots[12] = {&m.norm1.weight,     &m.norm1.bias,     &m.attn.qkv.weight, &m.attn.qkv.bias,
                             &m.attn.proj.weight, &m.attn.proj.bias, &m.norm2.weight,    &m.norm2.bias,
                             &m.mlp.fc1.weight,   &m.mlp.fc1.bias,   &m.mlp.fc2.weight,  &m.mlp.fc2.bias};
    for (int i = 0; i < 12; i++) *slots[i] = in[i + 1];
    return bl_transformer_block_forward(&m, in[0], false);
}

static void test_gradcheck_modules(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(8, 1);
    bl_linear_layer fc;
    bl_conv2d_layer conv;
    bl_batchnorm bn;
    bl_mlp mlp;
    bl_mha attn;
    bl_transformer_block blk;
    CHECK(bl_linear_layer_init(&fc, &ps, "fc", 3, 4, true, &rng) == BL_OK);
    CHECK(bl_conv2d_layer_init(&conv, &ps, "conv", 2, 3, 3, bl_conv_args_make(2, 1), true, &rng) == BL_OK);
    CHECK(bl_batchnorm_init(&bn, &ps, "bn", 2) == BL_OK);
    CHECK(bl_mlp_init(&mlp, &ps, "mlp", 3, 4, 2, BL_ACT_GELU, 0.0, &rng) == BL_OK);
    CHECK(bl_mha_init(&attn, &ps, "attn", 4, 2, true, 0.0, &rng) == BL_OK);
    CHECK(bl_transformer_block_init(&blk, &ps, "blk", 4, 2, 2.0, true, 0.0, 1e-6, &rng) == BL_OK);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    fill_randn(bn.weight, 9, 1, 0.3);
    fill_randn(blk.norm1.weight, 10, 1, 0.3);
    fill_randn(blk.norm2.bias, 11, 0, 0.3);

    bl_tensor *in_fc[3] = {test_randn(BL_F64, BL_SHAPE(2, 3), 81), f64_leaf(fc.weight), f64_leaf(fc.bias)};
    in_fc[0]->requires_grad = true;
    CHECK(bl_gradcheck(f_linear, &fc, 3, in_fc, 1e-6, 1e-5, true) == BL_OK, "linear: %s", bl_last_error());

    bl_tensor *in_conv[3] = {test_randn(BL_F64, BL_SHAPE(1, 2, 5, 4), 82), f64_leaf(conv.weight), f64_leaf(conv.bias)};
    in_conv[0]->requires_grad = true;
    CHECK(bl_gradcheck(f_conv, &conv, 3, in_conv, 1e-6, 1e-5, true) == BL_OK, "conv: %s", bl_last_error());

    bl_tensor *in_bn[3] = {test_randn(BL_F64, BL_SHAPE(3, 2, 2), 83), f64_leaf(bn.weight), f64_leaf(bn.bias)};
    in_bn[0]->requires_grad = true;
    CHECK(bl_gradcheck(f_batchnorm, &bn, 3, in_bn, 1e-6, 1e-5, true) == BL_OK, "batchnorm: %s", bl_last_error());

    bl_tensor *in_mlp[5] = {test_randn(BL_F64, BL_SHAPE(2, 3), 84), f64_leaf(mlp.fc1.weight), f64_leaf(mlp.fc1.bias),
                            f64_leaf(mlp.fc2.weight), f64_leaf(mlp.fc2.bias)};
    in_mlp[0]->requires_grad = true;
    CHECK(bl_gradcheck(f_mlp, &mlp, 5, in_mlp, 1e-6, 1e-5, true) == BL_OK, "mlp: %s", bl_last_error());

    bl_tensor *in_mha[5] = {test_randn(BL_F64, BL_SHAPE(1, 3, 4), 85), f64_leaf(attn.qkv.weight),
                            f64_leaf(attn.qkv.bias), f64_leaf(attn.proj.weight), f64_leaf(attn.proj.bias)};
    in_mha[0]->requires_grad = true;
    CHECK(bl_gradcheck(f_mha, &attn, 5, in_mha, 1e-6, 1e-5, true) == BL_OK, "attention: %s", bl_last_error());

    bl_tensor *in_blk[13] = {test_randn(BL_F64, BL_SHAPE(1, 3, 4), 86)};
    in_blk[0]->requires_grad = true;
    bl_tensor *blk_params[12] = {blk.norm1.weight,     blk.norm1.bias,     blk.attn.qkv.weight, blk.attn.qkv.bias,
                                 blk.attn.proj.weight, blk.attn.proj.bias, blk.norm2.weight,    blk.norm2.bias,
                                 blk.mlp.fc1.weight,   blk.mlp.fc1.bias,   blk.mlp.fc2.weight,  blk.mlp.fc2.bias};
    for (int i = 0; i < 12; i++) in_blk[i + 1] = f64_leaf(blk_params[i]);
    CHECK(bl_gradcheck(f_block, &blk, 13, in_blk, 1e-6, 1e-5, true) == BL_OK, "block: %s", bl_last_error());
    bl_params_free(&ps);
}

/* Gradients flow to the parameters in the store: one backward fills their slots in ps.grad. */
static void test_backward_reaches_store(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(9, 1);
    bl_transformer_block blk;
    CHECK(bl_transformer_block_init(&blk, &ps, "blk", 8, 2, 4.0, true, 0.0, 1e-6, &rng) == BL_OK);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    bl_tensor *y = bl_transformer_block_forward(&blk, test_randn(BL_F32, BL_SHAPE(2, 3, 8), 91), true);
    CHECK(bl_backward(bl_sum(bl_mul(y, test_randn(BL_F32, BL_SHAPE(2, 3, 8), 92)))) == BL_OK);
    for (int i = 0; i < ps.count; i++) {
        bl_tensor *g = ps.entries[i].tensor->grad;
        double norm = 0;
        for (int64_t j = 0; g && j < bl_numel(g); j++) norm += fabs(bl_get_flat(g, j));
        CHECK(g && (float *)g->data >= ps.grad && (float *)g->data < ps.grad + ps.numel, "%s", ps.entries[i].name);
        CHECK(norm > 0, "%s has a zero gradient", ps.entries[i].name);
    }
    bl_params_free(&ps);
}

TEST_MAIN(TEST(test_initializers), TEST(test_linear_layer), TEST(test_conv2d_layer),
          TEST(test_batchnorm_train_and_eval), TEST(test_norm_layers_match_naive), TEST(test_dropout_layer),
          TEST(test_mlp_matches_naive), TEST(test_mha_matches_naive), TEST(test_transformer_block_matches_naive),
          TEST(test_gradcheck_modules), TEST(test_backward_reaches_store))
