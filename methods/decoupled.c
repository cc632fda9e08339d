/* Decoupled representation and classifier learning (Kang et al., "Decoupling Representation and
 * Classifier for Long-Tailed Recognition", ICLR 2020). Stage one is the plain cross-entropy
 * model on instance-balanced batches (the run's epochs); only the classifier is then re-balanced,
 * with the backbone (and its BatchNorm statistics) frozen:
 *  - crt:      classifier re-training: the linear classifier is re-initialised and trained again
 *              for stage2_epochs with class-balanced sampling (section 4.2);
 *  - tau_norm: no training: each class weight is rescaled to w_c / ||w_c||^tau and the bias dropped;
 *              tau is chosen on the validation split (drawn from the training data) from a grid, or
 *              fixed in the config; stored in the buffer "tau_norm.tau";
 *  - lws:      learnable weight scaling: the classifier is kept and a per-class scale f_c on its
 *              logits ("lws.scales", initially 1) is learned with class-balanced sampling.
 * The second stage uses a fresh SGD state (the run's momentum and weight decay) and a cosine decay
 * of stage2_lr over its epochs, as the paper's classifier stages. */
#include "longtail.h"

#include "core/internal.h"

#include <math.h>
#include <stdio.h>

#define STAGE2_OPTIONS                                                                                              \
    {"stage2_epochs", BL_OPT_INT, "10", "epochs of classifier training after the main run"},                      \
        {"stage2_lr", BL_OPT_FLOAT, "0.2", "initial learning rate of the classifier stage (cosine decay to 0)"},  \
        {"stage2_sampler", BL_OPT_STRING, "class_balanced", "sampler of the classifier stage"}

static const bl_option stage2_options[] = {STAGE2_OPTIONS};

static const bl_option tau_norm_options[] = {
    {"tau", BL_OPT_FLOAT, "-1", "normalisation power; negative: choose it on the validation split from the grid"},
    {"tau_max", BL_OPT_FLOAT, "2.0", "largest tau of the validation grid"},
    {"tau_step", BL_OPT_FLOAT, "0.1", "spacing of the validation grid 0, step, ..., tau_max"},
};

typedef struct {
    int stage2_epochs;
    double stage2_lr;
    const char *stage2_sampler;
    double fixed_tau, tau_max, tau_step;
    bl_tensor *chosen_tau; /* tau_norm: scalar buffer, negative until chosen */
    bl_tensor *scales;     /* lws: (C) extra parameter */
} decoupled;

static int read_stage2(bl_run *run, decoupled *s) {
    s->stage2_epochs = (int)bl_config_int(run->config, "method.stage2_epochs");
    s->stage2_lr = bl_config_float(run->config, "method.stage2_lr");
    s->stage2_sampler = bl_config_string(run->config, "method.stage2_sampler");
    if (s->stage2_epochs < 0)
        return bl_lt_option_error(run, "method.stage2_epochs", "%d is negative", s->stage2_epochs);
    if (!(s->stage2_lr > 0)) return bl_lt_option_error(run, "method.stage2_lr", "%g must be positive", s->stage2_lr);
    return bl_lt_check_sampler(run, "method.stage2_sampler", s->stage2_sampler);
}

static bl_tensor *plain_loss(bl_run *run, void *state, bl_tensor *x, bl_tensor *y) {
    return bl_run_cross_entropy(run, bl_model_forward(run->model, x), y, bl_ce_args_default());
}

static bl_tensor *plain_logits(bl_run *run, void *state, bl_tensor *x) { return bl_model_forward(run->model, x); }

static void set_classifier_trainable(bl_model *m, bool trainable) {
    m->classifier.weight->requires_grad = trainable;
    if (m->classifier.bias) m->classifier.bias->requires_grad = trainable;
}

/* ---- cRT ---------------------------------------------------------------------------------- */

static int crt_setup(bl_run *run, void *state) { return read_stage2(run, state); }

static int crt_after_training(bl_run *run, void *state) {
    const decoupled *s = state;
    bl_linear_layer *fc = &run->model->classifier;
    /* torch.nn.Linear's initialisation: kaiming_uniform(a = sqrt 5), bias U(+-1/sqrt(fan_in)). */
    BL_TRY(bl_init_kaiming_uniform_(fc->weight, &run->rng, sqrt(5.0)));
    if (fc->bias) {
        const double bound = 1 / sqrt((double)fc->in_features);
        BL_TRY(bl_fill_uniform_(fc->bias, &run->rng, -bound, bound));
    }
    BL_TRY(bl_run_freeze_backbone(run, true));
    return bl_lt_train_stage(run, s->stage2_epochs, s->stage2_lr, s->stage2_sampler, false);
}

/* ---- tau-normalisation ---------------------------------------------------------------------- */

static int tau_norm_setup(bl_run *run, void *state) {
    decoupled *s = state;
    s->fixed_tau = bl_config_float(run->config, "method.tau");
    s->tau_max = bl_config_float(run->config, "method.tau_max");
    s->tau_step = bl_config_float(run->config, "method.tau_step");
    if (!(s->tau_max >= 0)) return bl_lt_option_error(run, "method.tau_max", "%g is negative", s->tau_max);
    if (!(s->tau_step > 0)) return bl_lt_option_error(run, "method.tau_step", "%g must be positive", s->tau_step);
    s->chosen_tau = bl_params_add_buffer(&run->model->params, "tau_norm.tau", BL_F32, 0, NULL);
    return s->chosen_tau ? bl_fill_(s->chosen_tau, -1.0) : BL_ERR;
}

static bl_tensor *tau_normalized_logits(bl_model *m, bl_tensor *features, double tau) {
    return bl_linear(features, bl_lt_tau_normalize(m->classifier.weight, tau), NULL);
}

/* A fixed tau wins, else the chosen one; until a choice the plain classifier (stage one). */
static bl_tensor *tau_norm_logits(bl_run *run, void *state, bl_tensor *x) {
    const decoupled *s = state;
    const double tau = s->fixed_tau >= 0 ? s->fixed_tau : bl_item(s->chosen_tau);
    if (tau < 0) return bl_model_forward(run->model, x);
    return tau_normalized_logits(run->model, bl_model_features(run->model, x), tau);
}

static int tau_norm_after_training(bl_run *run, void *state) {
    decoupled *s = state;
    if (s->fixed_tau >= 0) return BL_OK;
    if (!run->val.images || run->val.images->shape[0] == 0)
        return bl_lt_option_error(run, "dataset.val_per_class",
                                  "tau_norm chooses tau on the validation split: set it > 0 (or fix method.tau)");
    bl_tensor *features = bl_lt_dataset_features(run, &run->val);
    if (!features) return BL_ERR;
    double best_tau = 0, best_accuracy = -1;
    int rc = BL_OK;
    const int steps = (int)floor(s->tau_max / s->tau_step + 1e-9);
    for (int i = 0; i <= steps && rc == BL_OK; i++) {
        const double tau = i * s->tau_step;
        double accuracy = NAN;
        bl_scope scope = bl_scope_begin();
        BL_NO_GRAD {
            accuracy = bl_lt_balanced_accuracy(tau_normalized_logits(run->model, features, tau), run->val.labels,
                                               run->num_classes);
        }
        bl_scope_end(scope);
        char record[160];
        snprintf(record, sizeof record, "\"type\":\"tau_norm\",\"tau\":%.4g,\"val_balanced_acc\":%.6f", tau, accuracy);
        if (isnan(accuracy) || bl_run_log(run, record) != BL_OK) rc = BL_ERR;
        if (accuracy > best_accuracy) best_accuracy = accuracy, best_tau = tau;
    }
    bl_tensor_free(features);
    if (rc != BL_OK) return BL_ERR;
    BL_TRY(bl_fill_(s->chosen_tau, best_tau));
    char record[128];
    snprintf(record, sizeof record, "\"type\":\"tau_norm_chosen\",\"tau\":%.4g,\"val_balanced_acc\":%.6f", best_tau,
             best_accuracy);
    return bl_run_log(run, record);
}

/* ---- learnable weight scaling --------------------------------------------------------------- */

static int lws_setup(bl_run *run, void *state) {
    decoupled *s = state;
    BL_TRY(read_stage2(run, s));
    s->scales = bl_params_add(&run->extra_params, "lws.scales", 1, &run->num_classes);
    if (!s->scales) return BL_ERR;
    BL_TRY(bl_fill_(s->scales, 1.0));
    /* Trained in stage two only: the optimizer skips it (and its weight decay) until then. */
    s->scales->requires_grad = false;
    return BL_OK;
}

static bl_tensor *lws_logits(bl_run *run, void *state, bl_tensor *x) {
    const decoupled *s = state;
    return bl_mul(bl_model_forward(run->model, x), s->scales);
}

static bl_tensor *lws_loss(bl_run *run, void *state, bl_tensor *x, bl_tensor *y) {
    return bl_run_cross_entropy(run, lws_logits(run, state, x), y, bl_ce_args_default());
}

static int lws_after_training(bl_run *run, void *state) {
    const decoupled *s = state;
    BL_TRY(bl_run_freeze_backbone(run, true));
    set_classifier_trainable(run->model, false);
    s->scales->requires_grad = true;
    return bl_lt_train_stage(run, s->stage2_epochs, s->stage2_lr, s->stage2_sampler, true);
}

/* ---- the three recipes ------------------------------------------------------------------------ */

#define N_OPTIONS(table) (int)(sizeof table / sizeof table[0])

const bl_method bl_method_crt = {
    .name = "crt",
    .summary = "decoupled cRT: cross-entropy training, then the classifier re-initialised and re-trained "
               "with class-balanced sampling on the frozen backbone",
    .options = stage2_options,
    .n_options = N_OPTIONS(stage2_options),
    .state_size = sizeof(decoupled),
    .setup = crt_setup,
    .loss = plain_loss,
    .logits = plain_logits,
    .after_training = crt_after_training,
};

const bl_method bl_method_tau_norm = {
    .name = "tau_norm",
    .summary = "decoupled tau-normalisation: cross-entropy training, then class weights w_c / ||w_c||^tau "
               "with tau chosen on the validation split",
    .options = tau_norm_options,
    .n_options = N_OPTIONS(tau_norm_options),
    .state_size = sizeof(decoupled),
    .setup = tau_norm_setup,
    .loss = plain_loss,
    .logits = tau_norm_logits,
    .after_training = tau_norm_after_training,
};

const bl_method bl_method_lws = {
    .name = "lws",
    .summary = "decoupled LWS: cross-entropy training, then per-class logit scales learned with "
               "class-balanced sampling on the frozen model",
    .options = stage2_options,
    .n_options = N_OPTIONS(stage2_options),
    .state_size = sizeof(decoupled),
    .setup = lws_setup,
    .loss = lws_loss,
    .logits = lws_logits,
    .after_training = lws_after_training,
};
