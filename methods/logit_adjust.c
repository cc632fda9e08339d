/* Logit adjustment (Menon et al., "Long-Tail Learning via Logit Adjustment", ICLR 2021), in both
 * of the paper's forms, with pi the training label prior:
 *  - logit_adjust_loss (eq. 10): train with cross-entropy on logits + tau log pi, predict with the
 *    plain logits, so the model learns logits that already discount the prior;
 *  - logit_adjust_posthoc (eq. 9): train with plain cross-entropy, predict with logits - tau log pi.
 * Both target the balanced error; tau = 1 is the Bayes-consistent choice. */
#include "longtail.h"

#include <stdlib.h>

static const bl_option options[] = {
    {"tau", BL_OPT_FLOAT, "1.0", "scale of the log-prior adjustment"},
};

typedef struct {
    bl_model *model;
    double *adjustment; /* (C) tau log pi_c */
} logit_adjust;

static int setup(bl_run *run, void *state) {
    logit_adjust *s = state;
    const double tau = bl_config_float(run->config, "method.tau");
    s->adjustment = malloc((size_t)run->num_classes * sizeof *s->adjustment);
    BL_CHECK_RC(s->adjustment, "logit adjustment: out of memory");
    BL_TRY(bl_lt_log_prior(run->class_counts, run->num_classes, s->adjustment));
    for (int64_t c = 0; c < run->num_classes; c++) s->adjustment[c] *= tau;
    s->model = bl_lt_add_model(run);
    return s->model ? BL_OK : BL_ERR;
}

static bl_tensor *adjustment(bl_run *run, const logit_adjust *s) {
    return bl_lt_vector(BL_F32, s->adjustment, run->num_classes);
}

static bl_tensor *logits_of(void *state, bl_batch *b) {
    return bl_model_forward(((const logit_adjust *)state)->model, bl_batch_get(b, "x"));
}

static bl_tensor *plain_logits(bl_run *run, void *state, bl_batch *b) { return logits_of(state, b); }

static int plain_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits_of(state, b), bl_ce_args_default()), loss);
}

static int adjusted_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    bl_tensor *logits = bl_add(logits_of(state, b), adjustment(run, state));
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, bl_ce_args_default()), loss);
}

static bl_tensor *adjusted_logits(bl_run *run, void *state, bl_batch *b) {
    return bl_sub(logits_of(state, b), adjustment(run, state));
}

static void release(void *state) { free(((logit_adjust *)state)->adjustment); }

const bl_recipe bl_recipe_logit_adjust_loss = {
    .name = "logit_adjust_loss",
    .summary = "logit-adjusted loss: cross-entropy on logits + tau log(prior)",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(logit_adjust),
    .setup = setup,
    .step = adjusted_step,
    .predict = plain_logits,
    .release = release,
};

const bl_recipe bl_recipe_logit_adjust_posthoc = {
    .name = "logit_adjust_posthoc",
    .summary = "post-hoc logit adjustment: plain training, prediction with logits - tau log(prior)",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(logit_adjust),
    .setup = setup,
    .step = plain_step,
    .predict = adjusted_logits,
    .release = release,
};
