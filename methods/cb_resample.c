/* Class-balanced re-sampling: the cross-entropy baseline trained on batches drawn so that every
 * class is equally likely (each draw picks a class uniformly, then one of its images), the classic
 * re-sampling baseline (Shen et al. 2016; Kang et al., ICLR 2020, section 3.1). The sampler is a
 * method option, so square-root and progressive sampling are the same recipe with another value;
 * it replaces train.sampler for this method. */
#include "longtail.h"

static const bl_option options[] = {
    {"sampler", BL_OPT_STRING, "class_balanced", "the re-sampling scheme: class_balanced, sqrt or progressive"},
};

typedef struct {
    bl_model *model;
    const char *sampler;
} cb_resample;

/* The run builds its loader from train.sampler; the recipe's sampler replaces it before the first
 * epoch draws its order (checkpoints keep it). */
static int begin(bl_run *run, void *state) { return bl_run_set_sampler(run, ((const cb_resample *)state)->sampler); }

static int setup(bl_run *run, void *state) {
    cb_resample *s = state;
    s->sampler = bl_config_string(run->config, "method.sampler");
    BL_TRY(bl_lt_check_sampler(run, "method.sampler", s->sampler));
    s->model = bl_lt_add_model(run);
    if (!s->model) return BL_ERR;
    return bl_run_add_phase(run, &(bl_phase){"main", (int)bl_config_int(run->config, "train.epochs"), begin, NULL});
}

static int step(bl_run *run, void *state, bl_batch *b, double *loss) {
    bl_tensor *logits = bl_model_forward(((const cb_resample *)state)->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, bl_ce_args_default()), loss);
}

static bl_tensor *predict(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((const cb_resample *)state)->model, bl_batch_get(b, "x"));
}

const bl_recipe bl_recipe_cb_resample = {
    .name = "cb_resample",
    .summary = "cross-entropy on class-balanced (or square-root, progressive) re-sampled batches",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(cb_resample),
    .setup = setup,
    .step = step,
    .predict = predict,
};
