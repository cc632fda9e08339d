/* Cross-entropy baseline: the plain model (backbone + linear classifier) trained with softmax
 * cross-entropy on instance-balanced batches, evaluated with its raw logits. The reference recipe
 * every long-tailed method is compared against, and the smallest example of the method interface. */
#include "ballast/train.h"

static const bl_option ce_options[] = {
    {"label_smoothing", BL_OPT_FLOAT, "0", "label smoothing epsilon of the cross-entropy (0 = off)"},
};

typedef struct {
    bl_ce_args ce;
} ce_state;

static int ce_setup(bl_run *run, void *state) {
    ce_state *s = state;
    s->ce = bl_ce_args_default();
    s->ce.label_smoothing = bl_config_float(run->config, "method.label_smoothing");
    if (!(s->ce.label_smoothing >= 0 && s->ce.label_smoothing < 1)) {
        bl_set_error("%s: method.label_smoothing must be in [0, 1), got %g", bl_config_source(run->config),
                     s->ce.label_smoothing);
        return BL_ERR;
    }
    return BL_OK;
}

static bl_tensor *ce_loss(bl_run *run, void *state, bl_tensor *x, bl_tensor *y) {
    const ce_state *s = state;
    return bl_run_cross_entropy(run, bl_model_forward(run->model, x), y, s->ce);
}

static bl_tensor *ce_logits(bl_run *run, void *state, bl_tensor *x) {
    (void)state;
    return bl_model_forward(run->model, x);
}

const bl_method bl_method_ce = {
    .name = "ce",
    .summary = "cross-entropy baseline (instance-balanced sampling, plain linear classifier)",
    .options = ce_options,
    .n_options = sizeof ce_options / sizeof ce_options[0],
    .state_size = sizeof(ce_state),
    .setup = ce_setup,
    .loss = ce_loss,
    .logits = ce_logits,
};
