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
    bl_model *model;
    int stage2_epochs;
    double stage2_lr;
    const char *stage2_sampler;
    double fixed_tau, tau_max, tau_step;
    bl_tensor *chosen_tau; /* tau_norm: scalar buffer, negative until chosen */
    bl_tensor *scales;     /* lws: (C) parameter of the store "lws" */
} decoupled;

static int main_epochs(const bl_run *run) { return (int)bl_config_int(run->config, "train.epochs"); }

/* Stage one of all three: the cross-entropy model. */
static int add_model(bl_run *run, decoupled *s) {
    s->model = bl_lt_add_model(run);
    return s->model ? BL_OK : BL_ERR;
}

/* The stage-two options, and the two phases: the main epochs, then the classifier stage. */
static int add_stages(bl_run *run, decoupled *s, int (*stage_begin)(bl_run *, void *)) {
    s->stage2_epochs = (int)bl_config_int(run->config, "method.stage2_epochs");
    s->stage2_lr = bl_config_float(run->config, "method.stage2_lr");
    s->stage2_sampler = bl_config_string(run->config, "method.stage2_sampler");
    if (s->stage2_epochs < 0)
        return bl_lt_option_error(run, "method.stage2_epochs", "%d is negative", s->stage2_epochs);
    if (!(s->stage2_lr > 0)) return bl_lt_option_error(run, "method.stage2_lr", "%g must be positive", s->stage2_lr);
    BL_TRY(bl_lt_check_sampler(run, "method.stage2_sampler", s->stage2_sampler));
    BL_TRY(bl_run_add_phase(run, &(bl_phase){"main", main_epochs(run), NULL, NULL}));
    return bl_run_add_phase(run, &(bl_phase){"classifier", s->stage2_epochs, stage_begin, NULL});
}

static int plain_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    bl_tensor *logits = bl_model_forward(((const decoupled *)state)->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, bl_ce_args_default()), loss);
}

static bl_tensor *plain_logits(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((const decoupled *)state)->model, bl_batch_get(b, "x"));
}

/* ---- cRT ---------------------------------------------------------------------------------- */

static int crt_begin_stage(bl_run *run, void *state) {
    const decoupled *s = state;
    bl_linear_layer *fc = &s->model->classifier;
    /* torch.nn.Linear's initialisation: kaiming_uniform(a = sqrt 5), bias U(+-1/sqrt(fan_in)). */
    BL_TRY(bl_init_kaiming_uniform_(fc->weight, &run->rng, sqrt(5.0)));
    if (fc->bias) {
        const double bound = 1 / sqrt((double)fc->in_features);
        BL_TRY(bl_fill_uniform_(fc->bias, &run->rng, -bound, bound));
    }
    BL_TRY(bl_run_freeze(run, "model", true, true));
    return bl_lt_begin_stage(run, "model", s->stage2_epochs, s->stage2_lr, s->stage2_sampler);
}

static int crt_setup(bl_run *run, void *state) {
    BL_TRY(add_model(run, state));
    return add_stages(run, state, crt_begin_stage);
}

/* ---- tau-normalisation ---------------------------------------------------------------------- */

static bl_tensor *tau_normalized_logits(bl_model *m, bl_tensor *features, double tau) {
    return bl_linear(features, bl_lt_tau_normalize(m->classifier.weight, tau), NULL);
}

/* A fixed tau wins, else the chosen one; until a choice the plain classifier (stage one). */
static bl_tensor *tau_norm_logits(bl_run *run, void *state, bl_batch *b) {
    const decoupled *s = state;
    const double tau = s->fixed_tau >= 0 ? s->fixed_tau : bl_item(s->chosen_tau);
    bl_tensor *x = bl_batch_get(b, "x");
    if (tau < 0) return bl_model_forward(s->model, x);
    return tau_normalized_logits(s->model, bl_model_features(s->model, x), tau);
}

static double tau_accuracy(bl_run *run, void *state, const bl_tensor *features, double tau) {
    const decoupled *s = state;
    return bl_lt_balanced_accuracy(tau_normalized_logits(s->model, (bl_tensor *)features, tau), run->val.labels,
                                   run->num_classes);
}

static int tau_norm_choose(bl_run *run, void *state) {
    decoupled *s = state;
    if (s->fixed_tau >= 0) return BL_OK;
    const bl_lt_grid grid = {"tau_norm", "tau", s->tau_max, s->tau_step,
                             "tau_norm chooses tau on the validation split: set it > 0 (or fix method.tau)"};
    double best_tau;
    BL_TRY(bl_lt_grid_search(run, s->model, &grid, tau_accuracy, state, &best_tau));
    return bl_fill_(s->chosen_tau, best_tau);
}

static int tau_norm_setup(bl_run *run, void *state) {
    decoupled *s = state;
    s->fixed_tau = bl_config_float(run->config, "method.tau");
    s->tau_max = bl_config_float(run->config, "method.tau_max");
    s->tau_step = bl_config_float(run->config, "method.tau_step");
    if (!(s->tau_max >= 0)) return bl_lt_option_error(run, "method.tau_max", "%g is negative", s->tau_max);
    if (!(s->tau_step > 0)) return bl_lt_option_error(run, "method.tau_step", "%g must be positive", s->tau_step);
    BL_TRY(add_model(run, s));
    s->chosen_tau = bl_params_add_buffer(&s->model->params, "tau_norm.tau", BL_F32, 0, NULL);
    if (!s->chosen_tau) return BL_ERR;
    BL_TRY(bl_fill_(s->chosen_tau, -1.0));
    return bl_run_add_phase(run, &(bl_phase){"main", main_epochs(run), NULL, tau_norm_choose});
}

/* ---- learnable weight scaling --------------------------------------------------------------- */

static bl_tensor *lws_logits(bl_run *run, void *state, bl_batch *b) {
    const decoupled *s = state;
    return bl_mul(bl_model_forward(s->model, bl_batch_get(b, "x")), s->scales);
}

static int lws_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, lws_logits(run, state, b), bl_ce_args_default()), loss);
}

static int lws_begin_stage(bl_run *run, void *state) {
    const decoupled *s = state;
    BL_TRY(bl_run_freeze(run, "model", true, false));
    s->scales->requires_grad = true;
    return bl_lt_begin_stage(run, "lws", s->stage2_epochs, s->stage2_lr, s->stage2_sampler);
}

static int lws_setup(bl_run *run, void *state) {
    decoupled *s = state;
    BL_TRY(add_model(run, s));
    bl_params *store = bl_run_add_params(run, "lws");
    s->scales = store ? bl_params_add(store, "lws.scales", 1, &run->num_classes) : NULL;
    if (!s->scales || !bl_run_add_optimizer(run, "lws", store, NULL, NULL)) return BL_ERR;
    BL_TRY(bl_fill_(s->scales, 1.0));
    /* Trained in stage two only: the optimizer skips it (and its weight decay) until then. */
    s->scales->requires_grad = false;
    return add_stages(run, s, lws_begin_stage);
}

/* ---- the three recipes ------------------------------------------------------------------------ */

#define N_OPTIONS(table) (int)(sizeof table / sizeof table[0])

const bl_recipe bl_recipe_crt = {
    .name = "crt",
    .summary = "decoupled cRT: cross-entropy training, then the classifier re-initialised and re-trained "
               "with class-balanced sampling on the frozen backbone",
    .options = stage2_options,
    .n_options = N_OPTIONS(stage2_options),
    .state_size = sizeof(decoupled),
    .setup = crt_setup,
    .step = plain_step,
    .predict = plain_logits,
};

const bl_recipe bl_recipe_tau_norm = {
    .name = "tau_norm",
    .summary = "decoupled tau-normalisation: cross-entropy training, then class weights w_c / ||w_c||^tau "
               "with tau chosen on the validation split",
    .options = tau_norm_options,
    .n_options = N_OPTIONS(tau_norm_options),
    .state_size = sizeof(decoupled),
    .setup = tau_norm_setup,
    .step = plain_step,
    .predict = tau_norm_logits,
};

const bl_recipe bl_recipe_lws = {
    .name = "lws",
    .summary = "decoupled LWS: cross-entropy training, then per-class logit scales learned with "
               "class-balanced sampling on the frozen model",
    .options = stage2_options,
    .n_options = N_OPTIONS(stage2_options),
    .state_size = sizeof(decoupled),
    .setup = lws_setup,
    .step = lws_step,
    .predict = lws_logits,
};
