/* Class-balanced re-sampling: the cross-entropy baseline trained on batches drawn so that every
 * class is equally likely (each draw picks a class uniformly, then one of its images), the classic
 * re-sampling baseline (Shen et al. 2016; Kang et al., ICLR 2020, section 3.1). The sampler is a
 * method option, so square-root and progressive sampling are the same recipe with another value;
 * it replaces train.sampler for this method. */
#include "longtail.h"

#include "core/internal.h"

#include <string.h>

static const bl_option options[] = {
    {"sampler", BL_OPT_STRING, "class_balanced", "the re-sampling scheme: class_balanced, sqrt or progressive"},
};

typedef struct {
    const char *sampler;
} cb_resample;

static int setup(bl_run *run, void *state) {
    cb_resample *s = state;
    s->sampler = bl_config_string(run->config, "method.sampler");
    return bl_lt_check_sampler(run, "method.sampler", s->sampler);
}

/* The run builds its loader from train.sampler after setup; the switch happens before the first
 * epoch draws its order (and again after a resume). */
static int epoch_begin(bl_run *run, void *state, int epoch) {
    const cb_resample *s = state;
    if (run->sampler && strcmp(bl_sampler_kind(run->sampler), s->sampler) == 0) return BL_OK;
    return bl_run_set_sampler(run, s->sampler);
}

static bl_tensor *loss(bl_run *run, void *state, bl_tensor *x, bl_tensor *y) {
    return bl_run_cross_entropy(run, bl_model_forward(run->model, x), y, bl_ce_args_default());
}

static bl_tensor *logits(bl_run *run, void *state, bl_tensor *x) { return bl_model_forward(run->model, x); }

const bl_method bl_method_cb_resample = {
    .name = "cb_resample",
    .summary = "cross-entropy on class-balanced (or square-root, progressive) re-sampled batches",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(cb_resample),
    .setup = setup,
    .loss = loss,
    .logits = logits,
    .epoch_begin = epoch_begin,
};
