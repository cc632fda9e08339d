/* Cross-entropy baseline: the plain model (backbone + linear classifier) trained with softmax
 * cross-entropy on instance-balanced batches, evaluated with its raw logits. The reference recipe
 * every long-tailed method is compared against, and the smallest example of the recipe interface. */
#include "longtail.h"

static const bl_option ce_options[] = {
    {"label_smoothing", BL_OPT_FLOAT, "0", "label smoothing epsilon of the cross-entropy (0 = off)"},
};

typedef struct {
    bl_model *model;
    bl_ce_args ce;
} ce_state;

static int ce_setup(bl_run *run, void *state) {
    ce_state *s = state;
    s->ce = bl_ce_args_default();
    s->ce.label_smoothing = bl_config_float(run->config, "method.label_smoothing");
    if (!(s->ce.label_smoothing >= 0 && s->ce.label_smoothing < 1))
        return bl_lt_option_error(run, "method.label_smoothing", "must be in [0, 1), got %g", s->ce.label_smoothing);
    s->model = bl_lt_add_model(run);
    return s->model ? BL_OK : BL_ERR;
}

static int ce_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    const ce_state *s = state;
    bl_tensor *logits = bl_model_forward(s->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, s->ce), loss);
}

static bl_tensor *ce_predict(bl_run *run, void *state, bl_batch *b) {
    const ce_state *s = state;
    return bl_model_forward(s->model, bl_batch_get(b, "x"));
}

const bl_recipe bl_recipe_ce = {
    .name = "ce",
    .summary = "cross-entropy baseline (instance-balanced sampling, plain linear classifier)",
    .options = ce_options,
    .n_options = sizeof ce_options / sizeof ce_options[0],
    .state_size = sizeof(ce_state),
    .setup = ce_setup,
    .step = ce_step,
    .predict = ce_predict,
};
