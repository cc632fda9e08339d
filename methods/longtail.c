/* Shared long-tailed building blocks (see longtail.h): class statistics turned into weights,
 * margins and priors, focal and LDAM losses, and the normalised classifiers of the recipes. The
 * tensor functions are compositions of ops, so autograd and both float dtypes come for free. */
#include "longtail.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Norms of ReLU features can be exactly zero for a head; this keeps x / ||x|| finite, as the later
 * re-implementations of the causal-norm classifier do. */
#define FEATURE_NORM_EPS 1e-9

static int check_counts(const char *what, const int64_t *counts, int64_t classes, bool need_all) {
    BL_CHECK_RC(counts && classes > 0, "%s: need the counts of at least one class", what);
    for (int64_t c = 0; c < classes; c++) {
        BL_CHECK_RC(counts[c] >= 0, "%s: class %lld has a negative count %lld", what, (long long)c,
                    (long long)counts[c]);
        BL_CHECK_RC(!need_all || counts[c] > 0, "%s: class %lld has no training images", what, (long long)c);
    }
    return BL_OK;
}

int bl_lt_effective_number_weights(const int64_t *counts, int64_t classes, double beta, double *weights) {
    BL_TRY(check_counts("effective-number weights", counts, classes, false));
    BL_CHECK_RC(beta >= 0 && beta < 1, "effective-number weights: beta %g is not in [0, 1)", beta);
    double sum = 0;
    int64_t present = 0;
    for (int64_t c = 0; c < classes; c++) {
        weights[c] = 0;
        if (counts[c] == 0) continue;
        /* E_n = (1 - beta^n) / (1 - beta); -expm1(n log beta) is 1 - beta^n without cancellation
         * when beta is close to 1. */
        double effective = beta == 0 ? 1 : -expm1((double)counts[c] * log(beta)) / (1 - beta);
        weights[c] = 1 / effective;
        sum += weights[c];
        present++;
    }
    BL_CHECK_RC(present > 0, "effective-number weights: every class is empty");
    for (int64_t c = 0; c < classes; c++) weights[c] *= (double)present / sum;
    return BL_OK;
}

int bl_lt_ldam_margins(const int64_t *counts, int64_t classes, double max_margin, double *margins) {
    BL_TRY(check_counts("LDAM margins", counts, classes, true));
    BL_CHECK_RC(max_margin > 0, "LDAM margins: max_margin %g must be positive", max_margin);
    double largest = 0;
    for (int64_t c = 0; c < classes; c++) {
        margins[c] = pow((double)counts[c], -0.25);
        if (margins[c] > largest) largest = margins[c];
    }
    for (int64_t c = 0; c < classes; c++) margins[c] *= max_margin / largest;
    return BL_OK;
}

int bl_lt_log_prior(const int64_t *counts, int64_t classes, double *log_prior) {
    BL_TRY(check_counts("label prior", counts, classes, true));
    double total = 0;
    for (int64_t c = 0; c < classes; c++) total += (double)counts[c];
    for (int64_t c = 0; c < classes; c++) log_prior[c] = log((double)counts[c] / total);
    return BL_OK;
}

bl_tensor *bl_lt_vector(bl_dtype dt, const double *values, int64_t n) {
    BL_CHECK(values && n > 0, "bl_lt_vector: need at least one value");
    bl_tensor *t = bl_empty(dt, 1, &n);
    if (!t) return NULL;
    for (int64_t i = 0; i < n; i++) bl_set_flat(t, i, values[i]);
    return t;
}

static bool check_classification(const char *what, const bl_tensor *logits, const bl_tensor *target,
                                 const bl_tensor *per_class) {
    BL_CHECK_OR(false, logits->ndim == 2 && target->ndim == 1 && target->shape[0] == logits->shape[0],
                "%s: logits %s and target %s must be (N, C) and (N)", what, bl_shape_text(logits), bl_shape_text(target));
    BL_CHECK_OR(false, target->dtype == BL_I64, "%s: target must be I64, got %s", what, bl_dtype_name(target->dtype));
    BL_CHECK_OR(false, !per_class || (per_class->ndim == 1 && per_class->shape[0] == logits->shape[1]),
                "%s: per-class tensor %s does not match logits %s", what, bl_shape_text(per_class), bl_shape_text(logits));
    return true;
}

bl_tensor *bl_lt_focal_loss(bl_tensor *logits, bl_tensor *target, double gamma, bl_tensor *class_weight) {
    BL_NONNULL(logits, target);
    if (!check_classification("focal loss", logits, target, class_weight)) return NULL;
    BL_CHECK(gamma >= 0, "focal loss: gamma %g is negative", gamma);
    bl_tensor *log_p = bl_gather(bl_log_softmax(logits, 1), 1, bl_unsqueeze(target, 1)); /* (N, 1) */
    bl_tensor *loss = bl_neg(log_p);
    if (gamma > 0) {
        /* (1 - p)^gamma has an infinite slope at p = 1 for gamma < 1; the clamp keeps the product
         * with d(1 - p) = 0 there from becoming 0 * inf. */
        bl_tensor *modulator = bl_pow_scalar(bl_clamp(bl_rsub_scalar(bl_exp(log_p), 1.0), 1e-12, 1.0), gamma);
        loss = bl_mul(modulator, loss);
    }
    if (class_weight) loss = bl_mul(loss, bl_unsqueeze(bl_index_select(class_weight, 0, target), 1));
    return bl_mean(loss);
}

bl_tensor *bl_lt_ldam_loss(bl_tensor *logits, bl_tensor *target, bl_tensor *margins, double scale,
                           bl_tensor *class_weight) {
    BL_NONNULL(logits, target, margins);
    if (!check_classification("LDAM loss", logits, target, margins) ||
        !check_classification("LDAM loss", logits, target, class_weight))
        return NULL;
    BL_CHECK(scale > 0, "LDAM loss: scale %g must be positive", scale);
    /* one_hot(y) * m_y subtracts the margin from the target logit only. */
    bl_tensor *target_margin = bl_mul(bl_one_hot(target, logits->shape[1], logits->dtype),
                                      bl_unsqueeze(bl_index_select(margins, 0, target), 1));
    bl_ce_args args = bl_ce_args_default();
    args.class_weight = class_weight;
    return bl_cross_entropy(bl_mul_scalar(bl_sub(logits, target_margin), scale), target, args);
}

bl_tensor *bl_lt_focal_label_loss(bl_tensor *logits, bl_tensor *target, const void *focal_args) {
    const bl_lt_focal_args *a = focal_args;
    return bl_lt_focal_loss(logits, target, a->gamma, a->class_weight);
}

bl_tensor *bl_lt_ldam_label_loss(bl_tensor *logits, bl_tensor *target, const void *ldam_args) {
    const bl_lt_ldam_args *a = ldam_args;
    return bl_lt_ldam_loss(logits, target, a->margins, a->scale, a->class_weight);
}

static bool check_classifier(const char *what, const bl_tensor *x, const bl_tensor *weight, int heads) {
    BL_CHECK_OR(false, x->ndim == 2 && weight->ndim == 2 && x->shape[1] == weight->shape[1],
                "%s: features %s and weight %s must be (N, D) and (C, D)", what, bl_shape_text(x), bl_shape_text(weight));
    BL_CHECK_OR(false, heads > 0 && x->shape[1] % heads == 0, "%s: %d heads do not divide the feature size %lld",
                what, heads, (long long)x->shape[1]);
    return true;
}

bl_tensor *bl_lt_cosine_logits(bl_tensor *x, bl_tensor *weight) {
    BL_NONNULL(x, weight);
    if (!check_classifier("cosine classifier", x, weight, 1)) return NULL;
    return bl_linear(bl_l2_normalize(x, 1, FEATURE_NORM_EPS), bl_l2_normalize(weight, 1, FEATURE_NORM_EPS), NULL);
}

/* (R, D) -> (R, K, D / K): the heads as a middle dim, so per-head norms are one reduction. */
static bl_tensor *split_heads(bl_tensor *t, int heads) {
    return bl_reshape(t, BL_SHAPE(t->shape[0], heads, t->shape[1] / heads));
}

/* w_c^k / (||w_c^k|| + gamma), flattened back to (C, D). */
static bl_tensor *causal_norm_weight(bl_tensor *weight, int heads, double gamma) {
    bl_tensor *w = split_heads(weight, heads);
    bl_tensor *normed = bl_div(w, bl_add_scalar(bl_norm_dim(w, 2, -1, true), gamma));
    return bl_reshape(normed, 2, weight->shape);
}

bl_tensor *bl_lt_causal_norm_logits(bl_tensor *x, bl_tensor *weight, int heads, double tau, double gamma) {
    return bl_lt_tde_logits(x, weight, NULL, heads, tau, gamma, 0.0);
}

bl_tensor *bl_lt_tde_logits(bl_tensor *x, bl_tensor *weight, bl_tensor *head_direction, int heads, double tau,
                            double gamma, double alpha) {
    BL_NONNULL(x, weight);
    if (!check_classifier("causal-norm classifier", x, weight, heads)) return NULL;
    BL_CHECK(tau > 0 && gamma >= 0, "causal-norm classifier: need tau > 0 and gamma >= 0, got %g and %g", tau, gamma);
    bl_tensor *x_hat = bl_l2_normalize(split_heads(x, heads), -1, FEATURE_NORM_EPS); /* (N, K, D/K) */
    if (alpha != 0) {
        BL_CHECK(head_direction && head_direction->ndim == 1 && head_direction->shape[0] == x->shape[1],
                 "TDE logits: head direction %s does not match features %s",
                 head_direction ? bl_shape_text(head_direction) : "NULL", bl_shape_text(x));
        bl_tensor *d = bl_reshape(head_direction, BL_SHAPE(heads, x->shape[1] / heads));
        bl_tensor *d_hat = bl_l2_normalize(d, -1, FEATURE_NORM_EPS); /* (K, D/K), broadcasts over N */
        bl_tensor *cos = bl_sum_dim(bl_mul(x_hat, d_hat), -1, true);  /* (N, K, 1) */
        x_hat = bl_sub(x_hat, bl_mul(bl_mul_scalar(cos, alpha), d_hat));
    }
    bl_tensor *x_flat = bl_reshape(x_hat, 2, x->shape);
    return bl_mul_scalar(bl_linear(x_flat, causal_norm_weight(weight, heads, gamma), NULL), tau / heads);
}

int bl_lt_head_direction_update_(bl_tensor *head_direction, bl_tensor *features, double mu) {
    BL_CHECK_RC(head_direction && features, "head direction update: NULL %s", head_direction ? "features" : "direction");
    BL_CHECK_RC(features->ndim == 2 && head_direction->ndim == 1 && head_direction->shape[0] == features->shape[1],
                "head direction update: direction %s does not match features %s", bl_shape_text(head_direction),
                bl_shape_text(features));
    bl_tensor *batch_mean = NULL;
    BL_NO_GRAD { batch_mean = bl_mean_dim(bl_detach(features), 0, false); }
    if (!batch_mean) return BL_ERR;
    BL_TRY(bl_scale_(head_direction, mu));
    return bl_axpy_(head_direction, 1.0, batch_mean);
}

bl_tensor *bl_lt_tau_normalize(bl_tensor *weight, double tau) {
    BL_NONNULL(weight);
    BL_CHECK(weight->ndim == 2, "tau-normalisation: weight %s must be (C, D)", bl_shape_text(weight));
    return bl_div(weight, bl_pow_scalar(bl_norm_dim(weight, 2, 1, true), tau));
}

/* ---- run-level helpers ---------------------------------------------------------------------- */

int bl_lt_option_error(const bl_run *run, const char *key, const char *fmt, ...) {
    char message[256];
    va_list args;
    va_start(args, fmt);
    vsnprintf(message, sizeof message, fmt, args);
    va_end(args);
    bl_set_error("%s: %s: %s", bl_config_source(run->config), key, message);
    return BL_ERR;
}

int bl_lt_check_sampler(const bl_run *run, const char *key, const char *kind) {
    static const char *const kinds[] = {"instance", "class_balanced", "sqrt", "progressive"};
    for (size_t i = 0; kind && i < sizeof kinds / sizeof kinds[0]; i++)
        if (strcmp(kind, kinds[i]) == 0) return BL_OK;
    return bl_lt_option_error(run, key, "unknown sampler '%s' (instance, class_balanced, sqrt, progressive)",
                              kind ? kind : "");
}

bl_model *bl_lt_add_model(bl_run *run) {
    bl_model *m = bl_run_add_model(run, "model", NULL);
    if (!m || !bl_run_add_optimizer(run, "model", &m->params, NULL, NULL)) return NULL;
    return m;
}

int bl_lt_reset_classifier_without_bias(bl_model *m, bl_rng *rng, double bound) {
    BL_TRY(bl_fill_uniform_(m->classifier.weight, rng, -bound, bound));
    if (!m->classifier.bias) return BL_OK;
    BL_TRY(bl_fill_(m->classifier.bias, 0.0));
    m->classifier.bias->requires_grad = false;
    return BL_OK;
}

typedef struct {
    bl_model *model;
    bl_tensor *out;
    int64_t next;
} features_pass;

static int copy_features(bl_run *run, bl_batch *b, void *user) {
    features_pass *p = user;
    bl_tensor *features = bl_model_features(p->model, bl_batch_get(b, "x"));
    BL_TRY(bl_copy_(bl_slice(p->out, 0, p->next, p->next + b->size, 1), features));
    p->next += b->size;
    return BL_OK;
}

bl_tensor *bl_lt_dataset_features(bl_run *run, bl_model *model, const char *split) {
    BL_CHECK(run && model, "dataset features: no model");
    const int64_t n = bl_run_split_size(run, split);
    BL_CHECK(n > 0, "dataset features: the %s split is empty", split);
    features_pass pass = {model, bl_tensor_new_persistent(BL_F32, BL_SHAPE(n, model->feature_dim)), 0};
    if (!pass.out) return NULL;
    if (bl_run_for_each_batch(run, split, copy_features, &pass) != BL_OK) {
        bl_tensor_free(pass.out);
        return NULL;
    }
    return pass.out;
}

int bl_lt_grid_search(bl_run *run, bl_model *model, const bl_lt_grid *grid, bl_lt_grid_score score, void *user,
                      double *best) {
    if (bl_run_split_size(run, "val") == 0)
        return bl_lt_option_error(run, "dataset.val_per_class", "%s", grid->needs_validation);
    bl_tensor *features = bl_lt_dataset_features(run, model, "val");
    if (!features) return BL_ERR;
    double best_value = 0, best_accuracy = -1;
    int rc = BL_OK;
    const int steps = (int)floor(grid->max / grid->step + 1e-9);
    for (int i = 0; i <= steps && rc == BL_OK; i++) {
        const double value = i * grid->step;
        double accuracy = NAN;
        bl_scope scope = bl_scope_begin();
        BL_NO_GRAD { accuracy = score(run, user, features, value); }
        bl_scope_end(scope);
        char record[192];
        snprintf(record, sizeof record, "\"type\":\"%s\",\"%s\":%.4g,\"val_balanced_acc\":%.6f", grid->record,
                 grid->parameter, value, accuracy);
        if (isnan(accuracy) || bl_run_log(run, record) != BL_OK) rc = BL_ERR;
        /* Strictly better only: ties keep the smaller value, the smaller intervention. */
        if (accuracy > best_accuracy) best_accuracy = accuracy, best_value = value;
    }
    bl_tensor_free(features);
    if (rc != BL_OK) return BL_ERR;
    char record[192];
    snprintf(record, sizeof record, "\"type\":\"%s_chosen\",\"%s\":%.4g,\"val_balanced_acc\":%.6f", grid->record,
             grid->parameter, best_value, best_accuracy);
    *best = best_value;
    return bl_run_log(run, record);
}

double bl_lt_balanced_accuracy(const bl_tensor *logits, const bl_tensor *labels, int64_t classes) {
    BL_CHECK_OR(NAN, logits && labels && logits->ndim == 2 && logits->shape[1] == classes && labels->ndim == 1 &&
                         labels->shape[0] == logits->shape[0],
                "balanced accuracy: logits %s and labels %s do not match %lld classes",
                logits ? bl_shape_text(logits) : "NULL", labels ? bl_shape_text(labels) : "NULL", (long long)classes);
    int64_t *correct = calloc((size_t)(2 * classes), sizeof *correct), *total = correct + classes;
    BL_CHECK_OR(NAN, correct, "balanced accuracy: out of memory");
    for (int64_t i = 0; i < logits->shape[0]; i++) {
        int64_t label = (int64_t)bl_get_flat(labels, i), best = 0;
        if (label < 0 || label >= classes) continue;
        for (int64_t c = 1; c < classes; c++)
            if (bl_get_flat(logits, i * classes + c) > bl_get_flat(logits, i * classes + best)) best = c;
        total[label]++;
        correct[label] += best == label;
    }
    double sum = 0;
    int64_t present = 0;
    for (int64_t c = 0; c < classes; c++)
        if (total[c] > 0) {
            sum += (double)correct[c] / (double)total[c];
            present++;
        }
    free(correct);
    return present ? sum / (double)present : NAN;
}

int bl_lt_begin_stage(bl_run *run, const char *optimizer, int epochs, double lr, const char *sampler) {
    BL_CHECK_RC(epochs >= 0 && lr > 0, "classifier stage: need epochs >= 0 and lr > 0, got %d and %g", epochs, lr);
    if (epochs == 0) return BL_OK;
    BL_TRY(bl_run_set_sampler(run, sampler));
    bl_optim_config cfg;
    BL_TRY(bl_optim_config_from_config(run->config, &cfg));
    cfg.lr = lr;
    /* The stage's own cosine, counted from its first epoch. Read at epoch + 1 (as the run reads its
     * schedules with train.lr_at_epoch_start) it spans one more step, so that no epoch of the stage
     * runs at lr 0. */
    const bool at_start = bl_config_bool(run->config, "train.lr_at_epoch_start");
    return bl_run_reset_optimizer(run, optimizer, cfg, bl_schedule_cosine(lr, epochs + (at_start ? 1 : 0), 0.0));
}
