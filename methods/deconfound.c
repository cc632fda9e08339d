/* De-confound training and De-confound-TDE inference (Tang, Huang, Zhang, "Long-Tailed
 * Classification by Keeping the Good and Removing the Bad Momentum Causal Effect", NeurIPS 2020).
 *
 * Training (the paper's algorithm box, one stage): the backbone's feature x goes through a
 * causal-norm multi-head classifier (K heads, temperature tau, weight-norm offset gamma; eq. 4),
 * trained with plain cross-entropy and no class-frequency information. After every training
 * forward the moving-average head direction d <- mu d + mean(x) is accumulated from the detached
 * training-mode features; it is the buffer "tde.head_direction", so checkpoints carry it.
 * Inference: the total direct effect, the logits of x minus alpha times those of its projection on
 * d, head by head (eq. 7). alpha = 0 is the De-confound model itself. Unless fixed in the config,
 * alpha is chosen after training on the validation split (drawn from the training data, never the
 * test set) as the grid value with the best class-balanced accuracy; it is stored in the buffer
 * "tde.alpha". The alpha = 0 (De-confound) test metrics of the same weights are logged as a
 * "deconfound_alpha0" record, so one run gives both of the paper's rows. The classifier is the
 * model's classifier weight (C, D), re-initialised U(-1/sqrt D, 1/sqrt D) with the bias removed
 * from training. */
#include "longtail.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const bl_option options[] = {
    {"heads", BL_OPT_INT, "2", "K: heads of the causal-norm classifier (must divide the feature size)"},
    {"tau", BL_OPT_FLOAT, "16.0", "tau: logit scale of the normalised classifier"},
    {"gamma", BL_OPT_FLOAT, "0.03125", "gamma: added to each weight chunk's norm (1/32)"},
    {"mu", BL_OPT_FLOAT, "0.9", "mu: decay of the moving-average head direction (CIFAR setting)"},
    {"adaptive_mu", BL_OPT_BOOL, "false",
     "set mu = 1 - 0.1 min(1, 50 lr) at each epoch start (the paper's ImageNet-LT / Places-LT setting)"},
    {"alpha", BL_OPT_FLOAT, "-1",
     "TDE strength at test time; negative: choose it on the validation split from the grid below"},
    {"alpha_max", BL_OPT_FLOAT, "3.0", "largest alpha of the validation grid"},
    {"alpha_step", BL_OPT_FLOAT, "0.1", "spacing of the validation grid 0, step, ..., alpha_max"},
};

typedef struct {
    int heads;
    double tau, gamma, mu, fixed_alpha, alpha_max, alpha_step;
    bool adaptive_mu;
    bl_tensor *head_direction; /* (D) buffer */
    bl_tensor *chosen_alpha;   /* scalar buffer; negative until chosen */
} deconfound;

static int setup(bl_run *run, void *state) {
    deconfound *s = state;
    const bl_config *c = run->config;
    s->heads = (int)bl_config_int(c, "method.heads");
    s->tau = bl_config_float(c, "method.tau");
    s->gamma = bl_config_float(c, "method.gamma");
    s->mu = bl_config_float(c, "method.mu");
    s->adaptive_mu = bl_config_bool(c, "method.adaptive_mu");
    s->fixed_alpha = bl_config_float(c, "method.alpha");
    s->alpha_max = bl_config_float(c, "method.alpha_max");
    s->alpha_step = bl_config_float(c, "method.alpha_step");
    bl_model *m = run->model;
    if (!(s->heads > 0 && m->feature_dim % s->heads == 0))
        return bl_lt_option_error(run, "method.heads", "%d heads do not divide %s's feature size %lld", s->heads,
                                  m->name, (long long)m->feature_dim);
    if (!(s->tau > 0)) return bl_lt_option_error(run, "method.tau", "%g must be positive", s->tau);
    if (!(s->gamma >= 0)) return bl_lt_option_error(run, "method.gamma", "%g is negative", s->gamma);
    if (!(s->mu >= 0 && s->mu <= 1)) return bl_lt_option_error(run, "method.mu", "%g is not in [0, 1]", s->mu);
    if (!(s->alpha_max >= 0)) return bl_lt_option_error(run, "method.alpha_max", "%g is negative", s->alpha_max);
    if (!(s->alpha_step > 0)) return bl_lt_option_error(run, "method.alpha_step", "%g must be positive", s->alpha_step);

    const double bound = 1 / sqrt((double)m->feature_dim);
    BL_TRY(bl_fill_uniform_(m->classifier.weight, &run->rng, -bound, bound));
    if (m->classifier.bias) {
        BL_TRY(bl_fill_(m->classifier.bias, 0.0));
        m->classifier.bias->requires_grad = false;
    }
    s->head_direction = bl_params_add_buffer(&m->params, "tde.head_direction", BL_F32, 1, &m->feature_dim);
    s->chosen_alpha = bl_params_add_buffer(&m->params, "tde.alpha", BL_F32, 0, NULL);
    if (!s->head_direction || !s->chosen_alpha) return BL_ERR;
    return bl_fill_(s->chosen_alpha, -1.0);
}

static int epoch_begin(bl_run *run, void *state, int epoch) {
    deconfound *s = state;
    if (s->adaptive_mu) s->mu = 1 - 0.1 * fmin(1.0, 50 * bl_run_lr(run, epoch));
    return BL_OK;
}

static bl_tensor *loss(bl_run *run, void *state, bl_tensor *x, bl_tensor *y) {
    deconfound *s = state;
    bl_model *m = run->model;
    bl_tensor *features = bl_model_features(m, x);
    if (bl_lt_head_direction_update_(s->head_direction, features, s->mu) != BL_OK) return NULL;
    features = bl_dropout_layer_forward(&m->head_drop, features, m->training);
    bl_tensor *logits = bl_lt_causal_norm_logits(features, m->classifier.weight, s->heads, s->tau, s->gamma);
    return bl_run_cross_entropy(run, logits, y, bl_ce_args_default());
}

/* A fixed alpha from the config wins; else the one chosen on the validation split; before that
 * choice (evaluations during training), the De-confound logits. */
static double effective_alpha(const deconfound *s) {
    if (s->fixed_alpha >= 0) return s->fixed_alpha;
    double chosen = bl_item(s->chosen_alpha);
    return chosen >= 0 ? chosen : 0.0;
}

static bl_tensor *tde_logits(const deconfound *s, bl_model *m, bl_tensor *features, double alpha) {
    return bl_lt_tde_logits(features, m->classifier.weight, s->head_direction, s->heads, s->tau, s->gamma, alpha);
}

static bl_tensor *logits(bl_run *run, void *state, bl_tensor *x) {
    deconfound *s = state;
    return tde_logits(s, run->model, bl_model_features(run->model, x), effective_alpha(s));
}

/* The grid search: features of the validation split once, then the TDE logits for every alpha. */
static int choose_alpha(bl_run *run, deconfound *s) {
    if (!run->val.images || run->val.images->shape[0] == 0)
        return bl_lt_option_error(run, "dataset.val_per_class",
                                  "deconfound_tde chooses alpha on the validation split: set it > 0 (or fix method.alpha)");
    bl_tensor *features = bl_lt_dataset_features(run, &run->val);
    if (!features) return BL_ERR;
    double best_alpha = 0, best_accuracy = -1;
    int rc = BL_OK;
    const int steps = (int)floor(s->alpha_max / s->alpha_step + 1e-9);
    for (int i = 0; i <= steps && rc == BL_OK; i++) {
        const double alpha = i * s->alpha_step;
        bl_scope scope = bl_scope_begin();
        double accuracy = NAN;
        BL_NO_GRAD {
            accuracy = bl_lt_balanced_accuracy(tde_logits(s, run->model, features, alpha), run->val.labels,
                                               run->num_classes);
        }
        bl_scope_end(scope);
        char record[160];
        snprintf(record, sizeof record, "\"type\":\"tde_alpha\",\"alpha\":%.4g,\"val_balanced_acc\":%.6f", alpha,
                 accuracy);
        if (isnan(accuracy) || bl_run_log(run, record) != BL_OK) rc = BL_ERR;
        /* Strictly better only: ties keep the smaller alpha, the smaller intervention. */
        if (accuracy > best_accuracy) best_accuracy = accuracy, best_alpha = alpha;
    }
    bl_tensor_free(features);
    if (rc != BL_OK) return BL_ERR;
    BL_TRY(bl_fill_(s->chosen_alpha, best_alpha));
    char record[128];
    snprintf(record, sizeof record, "\"type\":\"tde_alpha_chosen\",\"alpha\":%.4g,\"val_balanced_acc\":%.6f",
             best_alpha, best_accuracy);
    return bl_run_log(run, record);
}

/* The paper reports De-confound (alpha = 0) beside De-confound-TDE from the same checkpoint: the
 * run's final evaluation gives the TDE numbers, this record the alpha = 0 ones on the test set
 * (reported only; nothing is chosen with it). */
static int log_deconfound_test(bl_run *run, deconfound *s) {
    if (!run->test.labels || bl_numel(run->test.labels) == 0) return BL_OK;
    const double saved = s->fixed_alpha;
    s->fixed_alpha = 0;
    bl_metrics m;
    int rc = bl_run_evaluate(run, &run->test, &m);
    s->fixed_alpha = saved;
    if (rc != BL_OK) return BL_ERR;
    bl_metrics_summary summary;
    char *json = bl_metrics_summarize(&m, run->class_counts, &summary) == BL_OK ? bl_metrics_json(&summary, NULL) : NULL;
    bl_metrics_free(&m);
    if (!json) return BL_ERR;
    const char head[] = "\"type\":\"deconfound_alpha0\",\"split\":\"test\",\"metrics\":";
    char *record = malloc(sizeof head + strlen(json));
    if (record) {
        memcpy(record, head, sizeof head - 1);
        strcpy(record + sizeof head - 1, json);
        rc = bl_run_log(run, record);
    } else {
        bl_set_error("deconfound_tde: out of memory");
        rc = BL_ERR;
    }
    free(record);
    free(json);
    return rc;
}

static int after_training(bl_run *run, void *state) {
    deconfound *s = state;
    if (s->fixed_alpha < 0) BL_TRY(choose_alpha(run, s));
    return log_deconfound_test(run, s);
}

const bl_method bl_method_deconfound_tde = {
    .name = "deconfound_tde",
    .summary = "De-confound training (causal-norm multi-head classifier, moving-average head direction) "
               "with TDE inference, alpha chosen on the validation split",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(deconfound),
    .setup = setup,
    .loss = loss,
    .logits = logits,
    .epoch_begin = epoch_begin,
    .after_training = after_training,
};
