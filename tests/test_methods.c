/* Tests of the long-tailed recipes in methods/: each building block against small cases worked
 * out by hand (the expected numbers are written out, with the arithmetic, in the comments),
 * finite-difference gradient checks of the losses and classifiers, the BBN ResNet-32's shapes, and
 * a smoke run of every registered method through the trainer on generated data: a few epochs in
 * which the training loss must fall, then the method's evaluation path. */
#include "test.h"

#include "../methods/longtail.h"
#include "../methods/recipes.h"
#include "train/train_internal.h"
#include "ballast/io.h"
#include "ballast/train.h"

#include <dirent.h>
#include <stdlib.h>
#include <unistd.h>

static bl_tensor *tensor2(bl_dtype dt, int64_t rows, int64_t cols, const double *values) {
    bl_tensor *t = bl_empty(dt, BL_SHAPE(rows, cols));
    for (int64_t i = 0; i < rows * cols; i++) bl_set_flat(t, i, values[i]);
    return t;
}

static bl_tensor *labels(int64_t n, const int64_t *values) { return bl_from_data(BL_I64, 1, &n, values); }

/* ---- per-class statistics -------------------------------------------------------------------- */

static void test_effective_number_weights(void) {
    /* beta = 0.9, counts 100, 10, 1: (1 - beta) / (1 - beta^n) = 0.1 / (1 - 0.9^100) = 0.100002656,
     * 0.1 / (1 - 0.9^10) = 0.153533993, 0.1 / 0.1 = 1; their sum 1.253536649 rescaled to 3. */
    const int64_t counts[3] = {100, 10, 1};
    double w[3];
    CHECK(bl_lt_effective_number_weights(counts, 3, 0.9, w) == BL_OK);
    CHECK_CLOSE(w[0], 0.2393292360, 1e-9);
    CHECK_CLOSE(w[1], 0.3674419731, 1e-9);
    CHECK_CLOSE(w[2], 2.3932287909, 1e-9);
    /* beta = 0: every class weighs 1 (plain cross-entropy). */
    CHECK(bl_lt_effective_number_weights(counts, 3, 0.0, w) == BL_OK);
    for (int c = 0; c < 3; c++) CHECK_CLOSE(w[c], 1.0, 1e-12);
    /* beta = 0.9999 on CIFAR-10-LT r = 100 counts: close to inverse frequency for the rarest classes,
     * and the weights sum to the number of classes. */
    const int64_t lt[10] = {5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50};
    double wl[10], sum = 0;
    CHECK(bl_lt_effective_number_weights(lt, 10, 0.9999, wl) == BL_OK);
    for (int c = 0; c < 10; c++) sum += wl[c];
    CHECK_CLOSE(sum, 10.0, 1e-12);
    for (int c = 1; c < 10; c++) CHECK(wl[c] > wl[c - 1], "weights rise as counts fall");
    /* E_n = (1 - 0.9999^n) / 0.0001: E_50 = 49.877696, E_5000 = 3934.845044, ratio 78.8899 (not 100). */
    CHECK_CLOSE(wl[9] / wl[0], 78.88987218, 1e-8);
    /* An empty class weighs 0 and the others still sum to the number of non-empty classes. */
    const int64_t with_empty[3] = {4, 0, 4};
    CHECK(bl_lt_effective_number_weights(with_empty, 3, 0.5, w) == BL_OK);
    CHECK(w[1] == 0 && fabs(w[0] - 1) < 1e-12 && fabs(w[2] - 1) < 1e-12, "%g %g %g", w[0], w[1], w[2]);
    CHECK(bl_lt_effective_number_weights(counts, 3, 1.0, w) == BL_ERR);
    CHECK(strstr(bl_last_error(), "beta 1") != NULL, "%s", bl_last_error());
    bl_clear_error();
}

static void test_ldam_margins_and_prior(void) {
    /* n^(-1/4): 10000 -> 0.1, 625 -> 0.2, 16 -> 0.5; the largest is scaled to max_margin 0.5. */
    const int64_t counts[3] = {10000, 625, 16};
    double m[3];
    CHECK(bl_lt_ldam_margins(counts, 3, 0.5, m) == BL_OK);
    CHECK_CLOSE(m[0], 0.1, 1e-12);
    CHECK_CLOSE(m[1], 0.2, 1e-12);
    CHECK_CLOSE(m[2], 0.5, 1e-12);
    CHECK(bl_lt_ldam_margins(counts, 3, 1.0, m) == BL_OK);
    CHECK_CLOSE(m[2], 1.0, 1e-12);
    CHECK_CLOSE(m[0], 0.2, 1e-12);
    double lp[2];
    CHECK(bl_lt_log_prior((const int64_t[]){1, 3}, 2, lp) == BL_OK);
    CHECK_CLOSE(lp[0], log(0.25), 1e-12);
    CHECK_CLOSE(lp[1], log(0.75), 1e-12);
    CHECK(bl_lt_log_prior((const int64_t[]){1, 0, 2}, 3, lp) == BL_ERR);
    CHECK(strstr(bl_last_error(), "class 1 has no training images") != NULL, "%s", bl_last_error());
    bl_clear_error();
}

/* ---- losses ----------------------------------------------------------------------------------- */

static void test_focal_loss_by_hand(void) {
    /* Both rows have softmax (0.25, 0.75). Row 0, target 1: p = 0.75, (1-p)^2 (-log p) =
     * 0.0625 * 0.287682072 = 0.017980130. Row 1, target 0: p = 0.25, 0.5625 * 1.386294361 =
     * 0.779790578. */
    const double l3 = log(3.0);
    bl_tensor *logits = tensor2(BL_F32, 2, 2, (const double[]){0, l3, 0, l3});
    bl_tensor *y = labels(2, (const int64_t[]){1, 0});
    CHECK_CLOSE(bl_item(bl_lt_focal_loss(logits, y, 2.0, NULL)), (0.017980130 + 0.779790578) / 2, 1e-6);
    /* gamma = 0 is cross-entropy: (0.287682072 + 1.386294361) / 2. */
    CHECK_CLOSE(bl_item(bl_lt_focal_loss(logits, y, 0.0, NULL)), (0.287682072 + 1.386294361) / 2, 1e-6);
    /* Class weights (0.5, 2) multiply each row's term; the mean stays over the 2 rows. */
    bl_tensor *w = bl_lt_vector(BL_F32, (const double[]){0.5, 2.0}, 2);
    CHECK_CLOSE(bl_item(bl_lt_focal_loss(logits, y, 2.0, w)), (2.0 * 0.017980130 + 0.5 * 0.779790578) / 2, 1e-6);
    /* gamma = 1: 0.25 * 0.287682072 and 0.75 * 1.386294361. */
    CHECK_CLOSE(bl_item(bl_lt_focal_loss(logits, y, 1.0, NULL)), (0.071920518 + 1.039720771) / 2, 1e-6);
    CHECK(bl_lt_focal_loss(logits, y, -1.0, NULL) == NULL);
    bl_clear_error();
}

static void test_ldam_loss_by_hand(void) {
    /* margins (0.1, 0.3), s = 10. Row 0 = (0.5, 0.2), target 0 -> (0.4, 0.2) * 10 = (4, 2):
     * CE = log(1 + e^-2) = 0.126928011. Row 1 = (0.3, 0.6), target 1 -> (0.3, 0.3) * 10: CE = log 2. */
    bl_tensor *logits = tensor2(BL_F32, 2, 2, (const double[]){0.5, 0.2, 0.3, 0.6});
    bl_tensor *y = labels(2, (const int64_t[]){0, 1});
    bl_tensor *m = bl_lt_vector(BL_F32, (const double[]){0.1, 0.3}, 2);
    CHECK_CLOSE(bl_item(bl_lt_ldam_loss(logits, y, m, 10.0, NULL)), (0.126928011 + M_LN2) / 2, 1e-6);
    /* Weighted: torch's weighted mean, (1 * 0.126928011 + 3 * log 2) / (1 + 3). */
    bl_tensor *w = bl_lt_vector(BL_F32, (const double[]){1.0, 3.0}, 2);
    CHECK_CLOSE(bl_item(bl_lt_ldam_loss(logits, y, m, 10.0, w)), (0.126928011 + 3 * M_LN2) / 4, 1e-6);
    /* Zero margins give plain scaled cross-entropy: row 0 (5, 2): log(1 + e^-3); row 1 (3, 6): log(1 + e^-3). */
    bl_tensor *zero = bl_lt_vector(BL_F32, (const double[]){0, 0}, 2);
    CHECK_CLOSE(bl_item(bl_lt_ldam_loss(logits, y, zero, 10.0, NULL)), log(1 + exp(-3.0)), 1e-6);
}

/* ---- classifiers -------------------------------------------------------------------------- */

/* The worked example (2 classes, D = 4, K = 2 heads, tau = 2 so tau/K = 1, gamma = 1):
 *   x = (3, 4 | 1, 0):      x^1/||x^1|| = (0.6, 0.8),  x^2/||x^2|| = (1, 0)
 *   w_0 = (1, 0 | 0, 2):    w_0^1/(1 + 1) = (0.5, 0),  w_0^2/(2 + 1) = (0, 2/3)
 *   w_1 = (0, 3 | 4, 0):    w_1^1/(3 + 1) = (0, 0.75), w_1^2/(4 + 1) = (0.8, 0)
 * causal-norm logits: class 0: 0.6*0.5 + 0 = 0.3;  class 1: 0.8*0.75 + 1*0.8 = 1.4.
 *   d = (0, 2 | 1, 1):      d^1/||d^1|| = (0, 1),      d^2/||d^2|| = (1, 1)/sqrt2
 *   cos_1 = 0.8, cos_2 = 1/sqrt2.
 * alpha = 1: corrected heads (0.6, 0.8) - 0.8 (0, 1) = (0.6, 0); (1, 0) - (1/sqrt2)(1, 1)/sqrt2 = (0.5, -0.5)
 *   class 0: 0.6*0.5 + (-0.5)(2/3) = 0.3 - 1/3 = -1/30;  class 1: 0 + 0.5*0.8 = 0.4.
 * alpha = 0.5: heads (0.6, 0.4) and (0.75, -0.25)
 *   class 0: 0.3 - 0.25*(2/3) = 2/15;  class 1: 0.4*0.75 + 0.75*0.8 = 0.9. */
static void test_causal_norm_and_tde_by_hand(void) {
    bl_tensor *x = tensor2(BL_F32, 2, 4, (const double[]){3, 4, 1, 0, 6, 8, 2, 0}); /* row 1 = 2 * row 0 */
    bl_tensor *w = tensor2(BL_F32, 2, 4, (const double[]){1, 0, 0, 2, 0, 3, 4, 0});
    bl_tensor *d = bl_lt_vector(BL_F32, (const double[]){0, 2, 1, 1}, 4);
    bl_tensor *plain = bl_lt_causal_norm_logits(x, w, 2, 2.0, 1.0);
    const double expect_plain[4] = {0.3, 1.4, 0.3, 1.4};
    for (int i = 0; i < 4; i++) CHECK_CLOSE(bl_get_flat(plain, i), expect_plain[i], 1e-6);

    bl_tensor *tde = bl_lt_tde_logits(x, w, d, 2, 2.0, 1.0, 1.0);
    const double expect_tde[4] = {-1.0 / 30, 0.4, -1.0 / 30, 0.4};
    for (int i = 0; i < 4; i++) CHECK_CLOSE(bl_get_flat(tde, i), expect_tde[i], 1e-6);
    bl_tensor *half = bl_lt_tde_logits(x, w, d, 2, 2.0, 1.0, 0.5);
    CHECK_CLOSE(bl_get_flat(half, 0), 2.0 / 15, 1e-6);
    CHECK_CLOSE(bl_get_flat(half, 1), 0.9, 1e-6);
    /* Only d's direction matters; alpha = 0 is the plain classifier; tau scales linearly. */
    bl_tensor *d_scaled = bl_mul_scalar(d, 37.0);
    CHECK(test_max_rel_diff(bl_lt_tde_logits(x, w, d_scaled, 2, 2.0, 1.0, 1.0), tde) < 1e-6);
    CHECK(test_max_rel_diff(bl_lt_tde_logits(x, w, d, 2, 2.0, 1.0, 0.0), plain) < 1e-6);
    CHECK(test_max_rel_diff(bl_lt_causal_norm_logits(x, w, 2, 16.0, 1.0), bl_mul_scalar(plain, 8.0)) < 1e-6);
    /* One head over the whole vector: ||x|| = sqrt 26, ||w_0|| = sqrt 5, ||w_1|| = 5; tau/K = 2:
     * class 0: 2 * 3 / (sqrt26 (sqrt5 + 1)), class 1: 2 * (12 + 4) / (sqrt26 * 6). */
    bl_tensor *one = bl_lt_causal_norm_logits(x, w, 1, 2.0, 1.0);
    CHECK_CLOSE(bl_get_flat(one, 0), 6 / (sqrt(26.0) * (sqrt(5.0) + 1)), 1e-6);
    CHECK_CLOSE(bl_get_flat(one, 1), 32 / (sqrt(26.0) * 6), 1e-6);

    CHECK(bl_lt_causal_norm_logits(x, w, 3, 16.0, 1.0 / 32) == NULL);
    CHECK(strstr(bl_last_error(), "3 heads do not divide the feature size 4") != NULL, "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_lt_tde_logits(x, w, bl_lt_vector(BL_F32, (const double[]){1, 2}, 2), 2, 16.0, 0.1, 1.0) == NULL);
    bl_clear_error();
}

static void test_cosine_and_tau_norm_by_hand(void) {
    /* x = (3, 4), w_0 = (1, 0), w_1 = (0, 2): cosines 0.6 and 0.8. */
    bl_tensor *x = tensor2(BL_F32, 1, 2, (const double[]){3, 4});
    bl_tensor *w = tensor2(BL_F32, 2, 2, (const double[]){1, 0, 0, 2});
    bl_tensor *cos = bl_lt_cosine_logits(x, w);
    CHECK_CLOSE(bl_get_flat(cos, 0), 0.6, 1e-6);
    CHECK_CLOSE(bl_get_flat(cos, 1), 0.8, 1e-6);
    /* rows (3, 4) and (0, 2): tau = 1 gives unit rows, tau = 0 leaves them, tau = 0.5 divides by sqrt||w||. */
    bl_tensor *w2 = tensor2(BL_F32, 2, 2, (const double[]){3, 4, 0, 2});
    bl_tensor *t1 = bl_lt_tau_normalize(w2, 1.0), *t0 = bl_lt_tau_normalize(w2, 0.0), *th = bl_lt_tau_normalize(w2, 0.5);
    const double e1[4] = {0.6, 0.8, 0, 1}, eh[4] = {3 / sqrt(5.0), 4 / sqrt(5.0), 0, 2 / sqrt(2.0)};
    for (int i = 0; i < 4; i++) {
        CHECK_CLOSE(bl_get_flat(t1, i), e1[i], 1e-6);
        CHECK_CLOSE(bl_get_flat(t0, i), bl_get_flat(w2, i), 1e-6);
        CHECK_CLOSE(bl_get_flat(th, i), eh[i], 1e-6);
    }
}

static void test_head_direction_update(void) {
    /* d = 0; batch means (2, 3) then (1, 1) with mu = 0.9: d = (2, 3), then 0.9 (2, 3) + (1, 1). */
    bl_tensor *d = bl_tensor_new_persistent(BL_F32, BL_SHAPE(2));
    bl_tensor *f1 = tensor2(BL_F32, 2, 2, (const double[]){1, 2, 3, 4});
    f1->requires_grad = true;
    CHECK(bl_lt_head_direction_update_(d, f1, 0.9) == BL_OK);
    CHECK_CLOSE(bl_get_flat(d, 0), 2.0, 1e-6);
    CHECK_CLOSE(bl_get_flat(d, 1), 3.0, 1e-6);
    CHECK(bl_lt_head_direction_update_(d, tensor2(BL_F32, 2, 2, (const double[]){0, 0, 2, 2}), 0.9) == BL_OK);
    CHECK_CLOSE(bl_get_flat(d, 0), 2.8, 1e-6);
    CHECK_CLOSE(bl_get_flat(d, 1), 3.7, 1e-6);
    CHECK(!d->requires_grad && d->grad_fn == NULL, "the direction stays out of the graph");
    CHECK(bl_lt_head_direction_update_(d, tensor2(BL_F32, 1, 3, (const double[]){1, 2, 3}), 0.9) == BL_ERR);
    bl_clear_error();
    bl_tensor_free(d);
}

/* ---- gradients ------------------------------------------------------------------------------ */

typedef struct {
    bl_tensor *target, *extra;
    int which;
} grad_case;

static bl_tensor *grad_fn(bl_tensor *const *in, void *user) {
    grad_case *g = user;
    switch (g->which) {
    case 0: return bl_lt_focal_loss(in[0], g->target, 1.5, g->extra);
    case 1: return bl_lt_ldam_loss(in[0], g->target, g->extra, 5.0, NULL);
    case 2: return bl_lt_causal_norm_logits(in[0], in[1], 2, 16.0, 1.0 / 32);
    case 3: return bl_lt_tde_logits(in[0], in[1], g->extra, 2, 16.0, 1.0 / 32, 1.5);
    case 4: return bl_lt_cosine_logits(in[0], in[1]);
    default: return bl_lt_tau_normalize(in[0], 0.7);
    }
}

static void test_gradients(void) {
    bl_tensor *logits = test_randn(BL_F64, BL_SHAPE(5, 4), 1);
    bl_tensor *x = test_randn(BL_F64, BL_SHAPE(3, 6), 2), *w = test_randn(BL_F64, BL_SHAPE(4, 6), 3);
    logits->requires_grad = x->requires_grad = w->requires_grad = true;
    grad_case g = {.target = labels(5, (const int64_t[]){0, 3, 1, 1, 2})};
    g.which = 0;
    g.extra = bl_lt_vector(BL_F64, (const double[]){0.5, 1, 2, 4}, 4);
    CHECK(bl_gradcheck(grad_fn, &g, 1, &logits, 1e-6, 1e-5, false) == BL_OK, "focal");
    g.which = 1;
    g.extra = bl_lt_vector(BL_F64, (const double[]){0.1, 0.2, 0.3, 0.5}, 4);
    CHECK(bl_gradcheck(grad_fn, &g, 1, &logits, 1e-6, 1e-5, false) == BL_OK, "ldam");
    bl_tensor *xw[2] = {x, w};
    g.which = 2;
    CHECK(bl_gradcheck(grad_fn, &g, 2, xw, 1e-6, 1e-5, false) == BL_OK, "causal norm");
    g.which = 3;
    g.extra = test_randn(BL_F64, BL_SHAPE(6), 4);
    CHECK(bl_gradcheck(grad_fn, &g, 2, xw, 1e-6, 1e-5, false) == BL_OK, "tde");
    g.which = 4;
    CHECK(bl_gradcheck(grad_fn, &g, 2, xw, 1e-6, 1e-5, false) == BL_OK, "cosine");
    g.which = 5;
    CHECK(bl_gradcheck(grad_fn, &g, 1, &w, 1e-6, 1e-5, false) == BL_OK, "tau norm");
}

/* ---- the BBN ResNet-32 ---------------------------------------------------------------------- */

static void test_resnet32_bbn(void) {
    bl_model *m = bl_model_create("resnet32_bbn", &(bl_model_opts){.num_classes = 7}, 3);
    CHECK(m != NULL);
    if (!m) return;
    CHECK(m->feature_dim == 128, "%lld", (long long)m->feature_dim);
    CHECK(bl_model_param(m, "layer3.3.conv2.weight") != NULL && bl_model_param(m, "layer3.4.conv1.weight") == NULL,
          "layer3 has 4 blocks");
    CHECK(bl_model_param(m, "cb_block.bn2.running_var") && bl_model_param(m, "rb_block.conv1.weight"));
    bl_tensor *fc = bl_model_param(m, "fc.weight");
    CHECK(fc && fc->shape[0] == 7 && fc->shape[1] == 128);
    /* 3x3 convs: stem 432; layer1 10 x 2304; layer2 first 4608 + 9216, then 8 x 9216; layer3 first
     * 18432 + 36864, then 6 x 36864; two branches 4 x 36864; BN 2 per channel; fc 128 * 7 + 7. */
    size_t convs = 432 + 10 * 2304 + 4608 + 9 * 9216 + 18432 + 7 * 36864 + 4 * 36864;
    size_t bns = 2 * (16 + 10 * 16 + 10 * 32 + 8 * 64 + 4 * 64);
    CHECK(bl_model_num_params(m) == convs + bns + 128 * 7 + 7, "%zu", bl_model_num_params(m));
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, 32, 32), 5);
    bl_tensor *stages[4];
    CHECK(bl_model_stages(m, x, 4, stages) == 4);
    CHECK(stages[2]->shape[1] == 64 && stages[2]->shape[2] == 8 && stages[3]->shape[1] == 128 && stages[3]->shape[3] == 8);
    bl_tensor *feat = bl_model_features(m, x);
    CHECK(feat && feat->shape[0] == 2 && feat->shape[1] == 128);
    /* The last 64 features come from rb_block: with its bn2 zeroed the block passes its input
     * through (relu(0 + x) = x for the non-negative layer3 output), so they equal pooled layer3. */
    bl_fill_(bl_model_param(m, "rb_block.bn2.weight"), 0.0);
    bl_fill_(bl_model_param(m, "rb_block.bn2.bias"), 0.0);
    m->training = false;
    bl_tensor *feat_eval = bl_model_features(m, x);
    CHECK(bl_model_stages(m, x, 4, stages) == 4);
    bl_tensor *pooled3 = bl_mean_dim(bl_flatten(stages[2], 2), -1, false);
    CHECK(test_max_rel_diff(bl_slice(feat_eval, 1, 64, 128, 1), pooled3) < 1e-5);
    CHECK(test_max_rel_diff(bl_slice(feat_eval, 1, 0, 64, 1), pooled3) > 1e-3, "cb_block is not the identity");
    bl_tensor *logits = bl_model_forward(m, x);
    CHECK(logits && logits->shape[1] == 7);
    bl_model_free(m);
}


/* ---- configs ---------------------------------------------------------------------------------- */

/* Every config of these recipes under configs/ validates: no unknown key, every value of its
 * declared type, an existing method and model. (Loading their data is for real runs.) */
static void test_configs_validate(void) {
    const char *folders[] = {"configs/cifar10_lt", "configs/cifar100_lt", "configs/fashion_mnist_lt"};
    const char *source = getenv("BALLAST_SOURCE_DIR") ? getenv("BALLAST_SOURCE_DIR") : ".";
    int checked = 0;
    for (int f = 0; f < 3; f++) {
        char folder[512];
        snprintf(folder, sizeof folder, "%s/%s", source, folders[f]);
        DIR *dir = opendir(folder);
        CHECK(dir != NULL, "%s", folder);
        if (!dir) continue;
        for (struct dirent *e; (e = readdir(dir));) {
            size_t len = strlen(e->d_name);
            if (len < 6 || strcmp(e->d_name + len - 5, ".yaml") != 0) continue;
            char path[1024];
            snprintf(path, sizeof path, "%s/%s", folder, e->d_name);
            bl_config *c = bl_config_load(path);
            CHECK(c != NULL, "%s", path);
            if (!c) continue;
            int n_trainer;
            const bl_option *trainer = bl_trainer_options(&n_trainer);
            CHECK(bl_config_declare(c, NULL, trainer, n_trainer) == BL_OK, "%s", path);
            const char *method_name = bl_config_string(c, "method.name");
            if (method_name && strcmp(method_name, "ce") != 0) {
                const bl_recipe *m = bl_recipe_find(method_name);
                CHECK(m != NULL, "%s", path);
                if (m) CHECK(bl_config_declare(c, "method.", m->options, m->n_options) == BL_OK, "%s", path);
                CHECK(bl_config_check_unknown(c) == BL_OK, "%s", path);
                const char *model = bl_config_string(c, "model.name");
                bool known = false;
                for (const char *const *name = bl_model_names(); model && *name; name++) known |= strcmp(*name, model) == 0;
                CHECK(known, "%s: model %s", path, model ? model : "(none)");
                checked++;
            }
            bl_config_free(c);
            bl_clear_error();
        }
        closedir(dir);
    }
    /* 10 recipes x 3 imbalance factors x 2 CIFAR datasets, plus the Fashion-MNIST runs */
    CHECK(checked >= 61, "%d configs checked", checked);
}

/* ---- smoke runs through the trainer --------------------------------------------------------- */

static char temp_root[] = "/tmp/ballast_methods_XXXXXX";

static void test_setup(void) {
    CHECK(mkdtemp(temp_root) != NULL);
    CHECK(bl_recipes_register_builtin() == BL_OK);
}

static bl_model *model_of(const bl_run *run) { return bl_run_model(run, "model"); }

/* The recipe's evaluation output for images x (eval mode, no grad by the caller). */
static bl_tensor *predict_x(bl_run *run, bl_tensor *x) {
    bl_batch b = {.size = x->shape[0]};
    bl_batch_set(&b, "x", x, NULL);
    return run->recipe->predict(run, run->recipe_state, &b);
}

/* The loss one training step of the recipe reports on (x, y), mixed with `partner` at weight lam
 * when partner is given, taken with every learning rate at 0 so that no weight moves. *mixed
 * (may be NULL) says whether the loss took the mixing. NAN when the step fails. */
static double step_loss(bl_run *run, bl_tensor *x, bl_tensor *y, bl_tensor *partner, double lam, bool *mixed) {
    bl_batch b = {.size = x->shape[0], .mix_lam = lam};
    bl_batch_set(&b, "x", x, NULL);
    bl_batch_set(&b, "y", bl_contiguous(y), NULL);
    if (partner) bl_batch_set(&b, "y_mix", partner, NULL);
    for (int i = 0; i < run->registry->n_optimizers; i++) run->registry->optimizers[i]->opt.cfg.lr = 0;
    double loss = NAN;
    bl_run_set_training(run, true);
    if (run->recipe->step(run, run->recipe_state, &b, &loss) != BL_OK) return NAN;
    if (mixed) *mixed = b.mix_used;
    return loss;
}

static void test_cleanup(void) {
    if (getenv("KEEPTMP")) return;
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", temp_root);
    CHECK(system(command) == 0);
}

/* A small long-tailed problem: 4 classes of noisy 8x8 patterns, 64 images per class cut down to
 * 64, 40, 25, 16 (exponential profile, r = 4), 4 validation images per class from the rest, a
 * tiny ConvNet (32-d feature, so two causal-norm heads of 16). */
static bl_run *smoke_run(const char *method, const char *method_options, int epochs, const char *tag) {
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "dataset: {name: synthetic, imbalance: 4, split_seed: 1, val_per_class: 4,\n"
             "          synthetic: {classes: 4, train_per_class: 64, test_per_class: 16, size: 8, noise: 2}}\n"
             "model: {name: convnet3, width: 8, depth: 2}\n"
             "train: {epochs: %d, batch_size: 16, lr: 0.05, schedule: constant, eval_every: 0,\n"
             "        checkpoint_every: 0, log_every: 1000, threads: 1, seed: 3}\n"
             "method: {name: %s%s%s}\n"
             "output: {dir: %s/%s}\n",
             epochs, method, *method_options ? ", " : "", method_options, temp_root, tag);
    bl_config *config = bl_config_parse(yaml, method);
    if (!config) return NULL;
    return bl_run_create(config, &(bl_run_opts){.quiet = true});
}

/* Mean training loss of each epoch, from the run's log. Returns the number of epochs read. */
static int epoch_losses(const char *dir, double *losses, int max) {
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    int n = 0;
    while (n < max && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"mean_loss\":");
        if (strstr(line, "\"epoch_end\"") && p) losses[n++] = atof(p + strlen("\"mean_loss\":"));
    }
    fclose(f);
    return n;
}

static int count_records(const char *dir, const char *needle) {
    char path[600], line[4096];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    int n = 0;
    while (f && fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
    if (f) fclose(f);
    return n;
}

/* The number after `key` in the first log record containing `needle`; NAN when absent. */
static double record_number(const char *dir, const char *needle, const char *key) {
    char path[600], line[1 << 14];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    double value = NAN;
    while (f && fgets(line, sizeof line, f)) {
        const char *p = strstr(line, needle) ? strstr(line, key) : NULL;
        if (p) {
            value = atof(p + strlen(key));
            break;
        }
    }
    if (f) fclose(f);
    return value;
}

static double test_top1(const bl_run *run) {
    char path[600], text[1 << 16];
    snprintf(path, sizeof path, "%s/results.json", run->dir);
    FILE *f = fopen(path, "r");
    if (!f) return NAN;
    size_t n = fread(text, 1, sizeof text - 1, f);
    fclose(f);
    text[n] = 0;
    const char *test = strstr(text, "\"test\":");
    const char *top1 = test ? strstr(test, "\"top1\":") : NULL;
    return top1 ? atof(top1 + strlen("\"top1\":")) : NAN;
}

/* `options` for the decoupled recipes (cRT, LWS), whose second stage would otherwise be long; ""
 * for the others. */
static const char *short_second_stage(const char *method, const char *options) {
    return strcmp(method, "crt") == 0 || strcmp(method, "lws") == 0 ? options : "";
}

/* Every registered method: 6 epochs on the small problem; the mean loss of the last main epoch is
 * clearly below the first's, and the final evaluation beats chance (0.25). */
static void test_smoke_every_method(void) {
    const char *const *names = bl_recipe_names();
    int count = 0;
    for (const char *const *name = names; *name; name++, count++) {
        const char *options = short_second_stage(*name, "stage2_epochs: 2");
        bl_run *run = smoke_run(*name, options, 6, *name);
        CHECK(run != NULL, "%s", *name);
        if (!run) continue;
        CHECK(bl_run_train(run) == BL_OK, "%s", *name);
        double losses[16];
        int n = epoch_losses(run->dir, losses, 16);
        CHECK(n >= 6, "%s: %d epochs logged", *name, n);
        CHECK(n >= 6 && losses[5] < 0.8 * losses[0], "%s: loss %g -> %g", *name, losses[0], losses[5]);
        double top1 = test_top1(run);
        CHECK(top1 > 0.4, "%s: test top-1 %g", *name, top1);
        /* The final checkpoint holds everything the method's evaluation needs (buffers, extra
         * parameters): the run reopened from its directory predicts exactly as the trained one. */
        bl_evaluator trained, reopened_eval;
        CHECK(bl_run_evaluate(run, "test", &trained) == BL_OK, "%s", *name);
        char dir[512];
        snprintf(dir, sizeof dir, "%s", run->dir);
        bl_run_free(run);
        bl_run *reopened = bl_run_open(dir, NULL, 0);
        CHECK(reopened && bl_run_evaluate(reopened, "test", &reopened_eval) == BL_OK, "%s", *name);
        if (reopened) {
            const bl_metrics *a = bl_evaluator_classification(&trained), *b = bl_evaluator_classification(&reopened_eval);
            bool same = a && b;
            for (int64_t k = 0; same && k < 16; k++) same &= a->confusion[k] == b->confusion[k];
            CHECK(same, "%s: the reopened run predicts differently", *name);
            bl_evaluator_free(&reopened_eval);
        }
        bl_run_free(reopened);
        bl_evaluator_free(&trained);
        bl_clear_error();
    }
    CHECK(count == 11, "%d methods registered", count);
}

/* A recipe refuses option values it cannot use, naming the config and the key. */
static void test_option_errors(void) {
    const struct { const char *method, *options, *expect; } cases[] = {
        {"focal", "gamma: -1", "method.gamma: -1 is negative"},
        {"deconfound_tde", "heads: 3", "method.heads: 3 heads do not divide convnet3's feature size 32"},
        {"cb_reweight", "loss: hinge", "method.loss: 'hinge' is not one of softmax, focal"},
        {"ldam_drw", "drw_start: 1.5", "method.drw_start: 1.5 is not a fraction"},
        {"crt", "stage2_lr: 0", "method.stage2_lr: 0 must be positive"},
        {"cb_resample", "sampler: lottery", "method.sampler: unknown sampler 'lottery'"},
        {"lws", "stage2_sampler: sqrtt", "method.stage2_sampler: unknown sampler 'sqrtt'"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char tag[64];
        snprintf(tag, sizeof tag, "bad_option_%zu", i);
        bl_run *run = smoke_run(cases[i].method, cases[i].options, 1, tag);
        CHECK(run == NULL, "%s", cases[i].method);
        CHECK(strstr(bl_last_error(), cases[i].expect) != NULL, "%s: %s", cases[i].method, bl_last_error());
        bl_run_free(run);
        bl_clear_error();
    }
}

/* The recipes' training losses against their definitions, on one batch of a built run. */
static void test_recipe_losses(void) {
    const char *recipes[4] = {"logit_adjust_loss", "cb_reweight", "ldam_drw", "focal"};
    for (int r = 0; r < 4; r++) {
        char tag[64];
        snprintf(tag, sizeof tag, "loss_%s", recipes[r]);
        bl_run *run = smoke_run(recipes[r], r == 1 ? "beta: 0.99" : "", 6, tag);
        CHECK(run != NULL, "%s", recipes[r]);
        if (!run) continue;
        bl_model *m = model_of(run);
        const int64_t n = 8, classes = 4, *counts = run->class_counts;
        bl_tensor *x = bl_images_to_float(bl_slice(run->test.images, 0, 0, n, 1), run->augment.mean, run->augment.std);
        bl_tensor *y = bl_slice(run->test.labels, 0, 0, n, 1);
        double total = 0;
        for (int64_t c = 0; c < classes; c++) total += (double)counts[c];
        if (r == 0) {
            /* cross-entropy of logits + log(n_c / N) */
            bl_tensor *logits = bl_model_forward(m, x);
            double want = 0;
            for (int64_t i = 0; i < n; i++) {
                double z[4], mx = -INFINITY, lse = 0;
                for (int64_t c = 0; c < classes; c++) {
                    z[c] = bl_get_flat(logits, i * classes + c) + log((double)counts[c] / total);
                    mx = fmax(mx, z[c]);
                }
                for (int64_t c = 0; c < classes; c++) lse += exp(z[c] - mx);
                want += mx + log(lse) - z[(int64_t)bl_get_flat(y, i)];
            }
            CHECK_CLOSE(step_loss(run, x, y, NULL, 1, NULL), want / n, 1e-5);
        } else if (r == 1 || r == 3) {
            /* mean over the batch of w_y * CE (w = 1 for focal with its gamma 1 factor) */
            double w[4];
            CHECK(bl_lt_effective_number_weights(counts, classes, 0.99, w) == BL_OK);
            bl_tensor *logp = bl_log_softmax(bl_model_forward(m, x), 1);
            double want = 0;
            for (int64_t i = 0; i < n; i++) {
                int64_t t = (int64_t)bl_get_flat(y, i);
                double lp = bl_get_flat(logp, i * classes + t);
                want += r == 1 ? -w[t] * lp : -(1 - exp(lp)) * lp;
            }
            CHECK_CLOSE(step_loss(run, x, y, NULL, 1, NULL), want / n, 1e-5);
        } else {
            /* LDAM: unweighted before the deferred epoch (round(0.8 * 6) = 5), weighted from it on */
            double margins[4], w[4];
            CHECK(bl_lt_ldam_margins(counts, classes, 0.5, margins) == BL_OK);
            CHECK(bl_lt_effective_number_weights(counts, classes, 0.9999, w) == BL_OK);
            bl_tensor *cosines = bl_lt_cosine_logits(bl_model_features(m, x), m->classifier.weight);
            double plain = 0, weighted = 0, weight_sum = 0;
            for (int64_t i = 0; i < n; i++) {
                int64_t t = (int64_t)bl_get_flat(y, i);
                double z[4], mx = -INFINITY, lse = 0;
                for (int64_t c = 0; c < classes; c++) {
                    z[c] = 30 * (bl_get_flat(cosines, i * classes + c) - (c == t ? margins[c] : 0));
                    mx = fmax(mx, z[c]);
                }
                for (int64_t c = 0; c < classes; c++) lse += exp(z[c] - mx);
                double ce = mx + log(lse) - z[t];
                plain += ce;
                weighted += w[t] * ce;
                weight_sum += w[t];
            }
            for (int epoch = 0; epoch < 6; epoch++) {
                CHECK(run->recipe->epoch_begin(run, run->recipe_state, epoch) == BL_OK);
                double got = step_loss(run, x, y, NULL, 1, NULL);
                if (epoch < 5) CHECK_CLOSE(got, plain / n, 1e-5);
                else CHECK_CLOSE(got, weighted / weight_sum, 1e-5);
            }
        }
        bl_run_free(run);
    }
}

/* A mixed batch's loss is lam L(y) + (1 - lam) L(partner) for a label-independent loss (ce) and a
 * label-dependent one (LDAM's margin sits on the target logit), the trainer's check sees that it
 * went through bl_batch_label_loss, and every method trains on mixed batches (mixup and cutmix). */
static void test_mixed_losses(void) {
    const char *recipes[2] = {"ce", "ldam_drw"};
    for (int r = 0; r < 2; r++) {
        char tag[64];
        snprintf(tag, sizeof tag, "mixed_%s", recipes[r]);
        bl_run *run = smoke_run(recipes[r], "", 2, tag);
        CHECK(run != NULL, "%s", recipes[r]);
        if (!run) continue;
        bl_model *m = model_of(run);
        const int64_t n = 8;
        bl_tensor *x = bl_images_to_float(bl_slice(run->test.images, 0, 0, n, 1), run->augment.mean, run->augment.std);
        bl_tensor *y = bl_contiguous(bl_slice(run->test.labels, 0, 0, n, 1));
        bl_tensor *partner = bl_empty(BL_I64, 1, &n);
        for (int64_t i = 0; i < n; i++) ((int64_t *)partner->data)[i] = (((int64_t *)y->data)[i] + 1 + i % 3) % 4;
        double own, other;
        if (r == 0) {
            bl_tensor *logits = bl_model_forward(m, x);
            own = bl_item(bl_cross_entropy(logits, y, bl_ce_args_default()));
            other = bl_item(bl_cross_entropy(logits, partner, bl_ce_args_default()));
        } else {
            double margins[4];
            CHECK(bl_lt_ldam_margins(run->class_counts, 4, 0.5, margins) == BL_OK);
            bl_tensor *cosines = bl_lt_cosine_logits(bl_model_features(m, x), m->classifier.weight);
            bl_tensor *mv = bl_lt_vector(BL_F32, margins, 4);
            own = bl_item(bl_lt_ldam_loss(cosines, y, mv, 30, NULL));
            other = bl_item(bl_lt_ldam_loss(cosines, partner, mv, 30, NULL));
        }
        CHECK(fabs(own - other) > 1e-3, "the partner labels change the loss");
        bool applied = false;
        double mixed = step_loss(run, x, y, partner, 0.3, &applied);
        CHECK_CLOSE(mixed, 0.3 * own + 0.7 * other, 1e-5);
        CHECK(applied, "%s: the loss took the mixing", recipes[r]);
        bl_run_free(run);
    }
    for (const char *const *name = bl_recipe_names(); *name; name++) {
        const char *options = short_second_stage(*name, "stage2_epochs: 1");
        char tag[64];
        snprintf(tag, sizeof tag, "mixing_%s", *name);
        bl_run *run = smoke_run(*name, options, 2, tag);
        CHECK(run != NULL, "%s", *name);
        if (!run) continue;
        run->registry->mix = (bl_mix_args){0.4, 1.0, 1.0};
        CHECK(bl_run_train(run) == BL_OK, "%s: %s", *name, bl_last_error());
        bl_clear_error();
        if (strcmp(*name, "ce") == 0) {
            /* the mixing reached the batches: the same run without it ends elsewhere */
            bl_run *plain = smoke_run("ce", "", 2, "mixing_none");
            CHECK(plain && bl_run_train(plain) == BL_OK);
            if (plain) CHECK(test_max_rel_diff(model_of(plain)->classifier.weight, model_of(run)->classifier.weight) > 1e-3);
            bl_run_free(plain);
        }
        bl_run_free(run);
    }
}

/* The classifier stages train only what they should: cRT and LWS leave every backbone parameter and
 * BatchNorm statistic as stage one left it; cRT changes the classifier, LWS only its scales; both
 * second stages lower their own loss. */
static void test_decoupled_stages_freeze(void) {
    const char *recipes[2] = {"crt", "lws"};
    for (int r = 0; r < 2; r++) {
        bl_run *run = smoke_run(recipes[r], "stage2_epochs: 4, stage2_lr: 0.1", 3, r ? "lws_freeze" : "crt_freeze");
        CHECK(run != NULL);
        if (!run) continue;
        CHECK(bl_run_train(run) == BL_OK, "%s", recipes[r]);
        /* stage one's end is a checkpoint (the resume point between the phases) */
        char path[700];
        snprintf(path, sizeof path, "%s/checkpoints/epoch_0003/model.safetensors", run->dir);
        bl_safetensors stage_one;
        CHECK(bl_safetensors_load(path, &stage_one) == BL_OK, "%s", path);
        bl_model *m = model_of(run);
        const char *backbone[] = {"features.0.weight", "features.1.weight", "features.1.bias"};
        for (int i = 0; i < 3; i++)
            CHECK(test_max_rel_diff(bl_model_param(m, backbone[i]), bl_safetensors_get(&stage_one, backbone[i])) == 0,
                  "%s: %s unchanged by stage two", recipes[r], backbone[i]);
        double fc_change = test_max_rel_diff(m->classifier.weight, bl_safetensors_get(&stage_one, "classifier.weight"));
        bl_safetensors_free(&stage_one);
        if (r == 0) CHECK(fc_change > 1e-3, "crt retrains the classifier (%g)", fc_change);
        if (r == 1) {
            CHECK(fc_change == 0, "lws keeps the classifier (%g)", fc_change);
            bl_tensor *scales = bl_params_find(bl_run_params(run, "lws"), "lws.scales");
            double moved = 0;
            for (int64_t c = 0; scales && c < bl_numel(scales); c++) moved += fabs(bl_get_flat(scales, c) - 1);
            CHECK(scales && moved > 1e-3, "lws learns its scales (%g)", moved);
        }
        double losses[16];
        int n = epoch_losses(run->dir, losses, 16);
        CHECK(n == 7, "%s: %d epochs logged", recipes[r], n);
        CHECK(n == 7 && losses[6] < losses[3], "%s: stage-two loss %g -> %g", recipes[r], losses[3], losses[6]);
        bl_run_free(run);
    }
}

/* De-confound-TDE end to end: the head direction accumulated by training is in the checkpoint;
 * alpha is chosen on the validation split (every grid point logged, the best one kept); the
 * evaluation logits are the TDE logits of the features with that alpha; a run reopened from its
 * directory predicts the same, and method.alpha overrides the stored choice. */
static void test_deconfound_tde_run(void) {
    bl_run *run = smoke_run("deconfound_tde", "alpha_step: 0.5", 6, "tde");
    CHECK(run != NULL);
    if (!run) return;
    CHECK(bl_run_train(run) == BL_OK);
    bl_model *m = model_of(run);
    bl_tensor *d = bl_model_param(m, "tde.head_direction"), *alpha = bl_model_param(m, "tde.alpha");
    CHECK(d && alpha && d->shape[0] == 32);
    if (!d || !alpha) return;
    double norm = 0;
    for (int64_t i = 0; i < 32; i++) norm += bl_get_flat(d, i) * bl_get_flat(d, i);
    CHECK(norm > 0, "the head direction was accumulated");
    CHECK(bl_item(alpha) >= 0 && bl_item(alpha) <= 3, "alpha %g", bl_item(alpha));
    CHECK(count_records(run->dir, "\"tde_alpha\"") == 7, "grid 0, 0.5, ..., 3");
    CHECK(count_records(run->dir, "\"tde_alpha_chosen\"") == 1);
    CHECK(m->classifier.bias == NULL || bl_get_flat(m->classifier.bias, 0) == 0, "the bias stays out");

    /* The evaluation logits against the TDE formula applied to the model's features. */
    bl_tensor *x = bl_images_to_float(bl_slice(run->test.images, 0, 0, 8, 1), run->augment.mean, run->augment.std);
    m->training = false;
    bl_tensor *got = NULL, *want = NULL;
    BL_NO_GRAD {
        got = predict_x(run, x);
        want = bl_lt_tde_logits(bl_model_features(m, x), m->classifier.weight, d, 2, 16.0, 1.0 / 32, bl_item(alpha));
    }
    CHECK(got && want && test_max_rel_diff(got, want) < 1e-6);

    /* The logged De-confound (alpha = 0) test accuracy, recomputed from the causal-norm logits. */
    CHECK(count_records(run->dir, "\"deconfound_alpha0\"") == 1);
    double logged = record_number(run->dir, "\"deconfound_alpha0\"", "\"top1\":");
    bl_tensor *all = bl_images_to_float(run->test.images, run->augment.mean, run->augment.std);
    int64_t hits = 0, n_test = run->test.images->shape[0];
    BL_NO_GRAD {
        bl_tensor *plain = bl_lt_causal_norm_logits(bl_model_features(m, all), m->classifier.weight, 2, 16.0, 1.0 / 32);
        bl_tensor *pred = bl_argmax(plain, 1, false);
        for (int64_t i = 0; pred && i < n_test; i++) hits += bl_get_flat(pred, i) == bl_get_flat(run->test.labels, i);
    }
    CHECK_CLOSE(logged, (double)hits / (double)n_test, 1e-6);

    bl_evaluator trained_eval;
    CHECK(bl_run_evaluate(run, "test", &trained_eval) == BL_OK);
    const bl_metrics trained = *bl_evaluator_classification(&trained_eval);
    char dir[512];
    snprintf(dir, sizeof dir, "%s", run->dir);
    double stored_alpha = bl_item(alpha);
    bl_run_free(run);

    bl_run *reopened = bl_run_open(dir, NULL, 0);
    CHECK(reopened != NULL);
    if (reopened) {
        CHECK_CLOSE(bl_item(bl_model_param(model_of(reopened), "tde.alpha")), stored_alpha, 1e-7);
        bl_evaluator again;
        CHECK(bl_run_evaluate(reopened, "test", &again) == BL_OK);
        for (int64_t k = 0; k < 16; k++)
            CHECK(bl_evaluator_classification(&again)->confusion[k] == trained.confusion[k], "confusion[%lld]", (long long)k);
        bl_evaluator_free(&again);
        bl_run_free(reopened);
    }
    /* Evaluation overrides: alpha = 0 reproduces the logged De-confound accuracy; a key the weights
     * were trained with is refused, naming it. */
    const char *alpha0[] = {"method.alpha=0"}, *trained_with[] = {"train.lr=0.1"};
    reopened = bl_run_open(dir, alpha0, 1);
    CHECK(reopened != NULL);
    if (reopened) {
        bl_evaluator plain;
        CHECK(bl_run_evaluate(reopened, "test", &plain) == BL_OK);
        int64_t correct = 0;
        for (int64_t k = 0; k < 4; k++) correct += bl_evaluator_classification(&plain)->confusion[k * 4 + k];
        CHECK_CLOSE((double)correct / (double)n_test, logged, 1e-6);
        bl_evaluator_free(&plain);
        bl_run_free(reopened);
    }
    /* and any other alpha: the evaluation logits are the TDE formula at the overriding value */
    const char *alpha_2_5[] = {"method.alpha=2.5"};
    reopened = bl_run_open(dir, alpha_2_5, 1);
    CHECK(reopened != NULL);
    if (reopened) {
        bl_model *rm = model_of(reopened);
        BL_NO_GRAD {
            got = predict_x(reopened, x);
            want = bl_lt_tde_logits(bl_model_features(rm, x), rm->classifier.weight,
                                    bl_model_param(rm, "tde.head_direction"), 2, 16.0, 1.0 / 32, 2.5);
        }
        CHECK(got && want && test_max_rel_diff(got, want) < 1e-6);
        bl_run_free(reopened);
    }
    CHECK(bl_run_open(dir, trained_with, 1) == NULL && strstr(bl_last_error(), "train.lr=0.1"), "%s", bl_last_error());
    bl_clear_error();
    bl_evaluator_free(&trained_eval);

    /* A fixed alpha is used as is, nothing is searched: alpha 0 gives the causal-norm logits. */
    run = smoke_run("deconfound_tde", "alpha: 0", 2, "deconfound");
    CHECK(run != NULL);
    if (!run) return;
    CHECK(bl_run_train(run) == BL_OK);
    CHECK(count_records(run->dir, "\"tde_alpha\"") == 0);
    m = model_of(run);
    m->training = false;
    BL_NO_GRAD {
        got = predict_x(run, x);
        want = bl_lt_causal_norm_logits(bl_model_features(m, x), m->classifier.weight, 2, 16.0, 1.0 / 32);
    }
    CHECK(got && want && test_max_rel_diff(got, want) < 1e-6);
    bl_run_free(run);
}

/* tau_norm chooses tau on the validation split and its logits are the tau-normalised classifier
 * without bias; logit_adjust_posthoc subtracts tau log(prior) from the plain logits. */
static void test_posthoc_logits(void) {
    bl_run *run = smoke_run("tau_norm", "tau_step: 0.5", 2, "tau_norm_grid");
    CHECK(run != NULL);
    if (!run) return;
    CHECK(bl_run_train(run) == BL_OK);
    bl_model *m = model_of(run);
    bl_tensor *tau = bl_model_param(m, "tau_norm.tau");
    CHECK(tau && bl_item(tau) >= 0 && bl_item(tau) <= 2);
    CHECK(count_records(run->dir, "\"tau_norm\"") == 5);
    bl_tensor *x = bl_images_to_float(bl_slice(run->test.images, 0, 0, 4, 1), run->augment.mean, run->augment.std);
    m->training = false;
    BL_NO_GRAD {
        bl_tensor *got = predict_x(run, x);
        bl_tensor *features = bl_model_features(m, x);
        /* reference: each class weight divided by its norm to the power tau, by hand */
        bl_tensor *w = test_copy(m->classifier.weight);
        for (int64_t c = 0; c < w->shape[0]; c++) {
            double sq = 0;
            for (int64_t j = 0; j < w->shape[1]; j++) sq += pow(bl_get_flat(w, c * w->shape[1] + j), 2);
            for (int64_t j = 0; j < w->shape[1]; j++)
                bl_set_flat(w, c * w->shape[1] + j, bl_get_flat(w, c * w->shape[1] + j) / pow(sqrt(sq), bl_item(tau)));
        }
        CHECK(got && test_max_rel_diff(got, bl_matmul(features, bl_transpose(w, 0, 1))) < 1e-5);
    }
    bl_run_free(run);

    run = smoke_run("logit_adjust_posthoc", "tau: 1.0", 1, "posthoc");
    CHECK(run != NULL);
    if (!run) return;
    x = bl_images_to_float(bl_slice(run->test.images, 0, 0, 4, 1), run->augment.mean, run->augment.std);
    model_of(run)->training = false;
    BL_NO_GRAD {
        bl_tensor *got = predict_x(run, x), *plain = bl_model_forward(model_of(run), x);
        int64_t total = 0;
        for (int64_t c = 0; c < 4; c++) total += run->class_counts[c];
        for (int64_t i = 0; got && i < 4; i++)
            for (int64_t c = 0; c < 4; c++)
                CHECK_CLOSE(bl_get_flat(got, i * 4 + c),
                            bl_get_flat(plain, i * 4 + c) - log((double)run->class_counts[c] / (double)total), 1e-5);
    }
    bl_run_free(run);
}

TEST_MAIN(TEST(test_setup), TEST(test_effective_number_weights), TEST(test_ldam_margins_and_prior), TEST(test_focal_loss_by_hand),
          TEST(test_ldam_loss_by_hand), TEST(test_causal_norm_and_tde_by_hand), TEST(test_cosine_and_tau_norm_by_hand),
          TEST(test_head_direction_update), TEST(test_gradients), TEST(test_resnet32_bbn), TEST(test_mixed_losses),
          TEST(test_configs_validate), TEST(test_smoke_every_method), TEST(test_option_errors), TEST(test_recipe_losses), TEST(test_decoupled_stages_freeze), TEST(test_deconfound_tde_run),
          TEST(test_posthoc_logits), TEST(test_cleanup))
