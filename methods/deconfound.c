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
    bl_model *model;
    int heads;
    double tau, gamma, mu, fixed_alpha, alpha_max, alpha_step;
    bool adaptive_mu;
    bl_tensor *head_direction; /* (D) buffer */
    bl_tensor *chosen_alpha;   /* scalar buffer; negative until chosen */
} deconfound;

/* Chooses alpha and logs the De-confound numbers once the main epochs are done (below). */
static int choose_and_report(bl_run *run, void *state);

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
    bl_model *m = s->model = bl_lt_add_model(run);
    if (!m) return BL_ERR;
    if (!(s->heads > 0 && m->feature_dim % s->heads == 0))
        return bl_lt_option_error(run, "method.heads", "%d heads do not divide %s's feature size %lld", s->heads,
                                  m->name, (long long)m->feature_dim);
    if (!(s->tau > 0)) return bl_lt_option_error(run, "method.tau", "%g must be positive", s->tau);
    if (!(s->gamma >= 0)) return bl_lt_option_error(run, "method.gamma", "%g is negative", s->gamma);
    if (!(s->mu >= 0 && s->mu <= 1)) return bl_lt_option_error(run, "method.mu", "%g is not in [0, 1]", s->mu);
    if (!(s->alpha_max >= 0)) return bl_lt_option_error(run, "method.alpha_max", "%g is negative", s->alpha_max);
    if (!(s->alpha_step > 0)) return bl_lt_option_error(run, "method.alpha_step", "%g must be positive", s->alpha_step);

    BL_TRY(bl_lt_reset_classifier_without_bias(m, &run->rng, 1 / sqrt((double)m->feature_dim)));
    s->head_direction = bl_params_add_buffer(&m->params, "tde.head_direction", BL_F32, 1, &m->feature_dim);
    s->chosen_alpha = bl_params_add_buffer(&m->params, "tde.alpha", BL_F32, 0, NULL);
    if (!s->head_direction || !s->chosen_alpha) return BL_ERR;
    BL_TRY(bl_fill_(s->chosen_alpha, -1.0));
    return bl_run_add_phase(run, &(bl_phase){"main", (int)bl_config_int(c, "train.epochs"), NULL, choose_and_report});
}

static int epoch_begin(bl_run *run, void *state, int epoch) {
    deconfound *s = state;
    /* the trainer has set the epoch's learning rate before this hook */
    if (s->adaptive_mu) s->mu = 1 - 0.1 * fmin(1.0, 50 * bl_run_optimizer(run, "model")->cfg.lr);
    return BL_OK;
}

static int step(bl_run *run, void *state, bl_batch *b, double *loss) {
    deconfound *s = state;
    bl_model *m = s->model;
    bl_tensor *features = bl_model_features(m, bl_batch_get(b, "x"));
    BL_TRY(bl_lt_head_direction_update_(s->head_direction, features, s->mu));
    features = bl_dropout_layer_forward(&m->head_drop, features, m->training);
    bl_tensor *logits = bl_lt_causal_norm_logits(features, m->classifier.weight, s->heads, s->tau, s->gamma);
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, bl_ce_args_default()), loss);
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

static bl_tensor *predict(bl_run *run, void *state, bl_batch *b) {
    deconfound *s = state;
    return tde_logits(s, s->model, bl_model_features(s->model, bl_batch_get(b, "x")), effective_alpha(s));
}

static double alpha_accuracy(bl_run *run, void *state, const bl_tensor *features, double alpha) {
    const deconfound *s = state;
    return bl_lt_balanced_accuracy(tde_logits(s, s->model, (bl_tensor *)features, alpha), run->val.labels,
                                   run->num_classes);
}

static int choose_alpha(bl_run *run, deconfound *s) {
    const bl_lt_grid grid = {"tde_alpha", "alpha", s->alpha_max, s->alpha_step,
                             "deconfound_tde chooses alpha on the validation split: set it > 0 (or fix method.alpha)"};
    double best_alpha;
    BL_TRY(bl_lt_grid_search(run, s->model, &grid, alpha_accuracy, s, &best_alpha));
    return bl_fill_(s->chosen_alpha, best_alpha);
}

/* The paper reports De-confound (alpha = 0) beside De-confound-TDE from the same checkpoint: the
 * run's final evaluation gives the TDE numbers, this record the alpha = 0 ones on the test set
 * (reported only; nothing is chosen with it). */
static int log_deconfound_test(bl_run *run, deconfound *s) {
    if (bl_run_split_size(run, "test") == 0) return BL_OK;
    const double saved = s->fixed_alpha;
    s->fixed_alpha = 0;
    bl_evaluator e;
    int rc = bl_run_evaluate(run, "test", &e);
    s->fixed_alpha = saved;
    if (rc != BL_OK) return BL_ERR;
    char *json = bl_evaluator_json(&e);
    bl_evaluator_free(&e);
    if (!json) return BL_ERR;
    const char head[] = "\"type\":\"deconfound_alpha0\",\"split\":\"test\",\"metrics\":{";
    char *record = malloc(sizeof head + strlen(json) + 1);
    if (record) {
        memcpy(record, head, sizeof head - 1);
        strcpy(record + sizeof head - 1, json);
        strcat(record, "}");
        rc = bl_run_log(run, record);
    } else {
        bl_set_error("deconfound_tde: out of memory");
        rc = BL_ERR;
    }
    free(record);
    free(json);
    return rc;
}

static int choose_and_report(bl_run *run, void *state) {
    deconfound *s = state;
    if (s->fixed_alpha < 0) BL_TRY(choose_alpha(run, s));
    return log_deconfound_test(run, s);
}

const bl_recipe bl_recipe_deconfound_tde = {
    .name = "deconfound_tde",
    .summary = "De-confound training (causal-norm multi-head classifier, moving-average head direction) "
               "with TDE inference, alpha chosen on the validation split",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(deconfound),
    .setup = setup,
    .step = step,
    .predict = predict,
    .epoch_begin = epoch_begin,
};
