/* LDAM loss with deferred re-weighting (Cao et al., "Learning Imbalanced Datasets with
 * Label-Distribution-Aware Margin Loss", NeurIPS 2019, Algorithm 1).
 *
 * The classifier is normalised (cosine logits between the feature and each class weight, as the
 * paper's CIFAR code), and each class's target logit is lowered by a margin m_c proportional to
 * n_c^(-1/4), the largest (rarest class) max_margin, before the logits are scaled by s (eq. 12-13).
 * DRW: training starts unweighted and, from the fraction drw_start of the run on (epoch 160 of 200
 * in the paper), weights classes by inverse effective number with beta (eq. of Cui et al.), so the
 * representation is learned first and the re-weighting only adjusts the decision boundary late.
 * The classifier is the model's classifier weight (C, D), re-initialised, with its bias unused. */
#include "longtail.h"

#include <math.h>
#include <stdlib.h>

static const bl_option options[] = {
    {"max_margin", BL_OPT_FLOAT, "0.5", "margin of the rarest class; the others scale with n_c^(-1/4)"},
    {"scale", BL_OPT_FLOAT, "30.0", "s: scale of the cosine logits inside the loss"},
    {"drw", BL_OPT_BOOL, "true", "defer re-weighting (false: LDAM alone, unweighted throughout)"},
    {"drw_start", BL_OPT_FLOAT, "0.8", "fraction of the epochs after which the class weights apply (160/200)"},
    {"beta", BL_OPT_FLOAT, "0.9999", "effective-number decay of the deferred class weights"},
};

typedef struct {
    bl_model *model;
    double scale;
    bool drw;
    int drw_epoch;
    double *margins; /* (C) */
    double *weights; /* (C) effective-number weights */
    bool weighted;   /* the current epoch uses the weights */
} ldam_drw;

static int setup(bl_run *run, void *state) {
    ldam_drw *s = state;
    const bl_config *c = run->config;
    const int64_t classes = run->num_classes;
    s->scale = bl_config_float(c, "method.scale");
    s->drw = bl_config_bool(c, "method.drw");
    const double drw_start = bl_config_float(c, "method.drw_start");
    if (!(s->scale > 0)) return bl_lt_option_error(run, "method.scale", "%g must be positive", s->scale);
    if (!(drw_start >= 0 && drw_start <= 1))
        return bl_lt_option_error(run, "method.drw_start", "%g is not a fraction in [0, 1]", drw_start);
    s->drw_epoch = (int)lround(drw_start * (double)bl_config_int(c, "train.epochs"));
    s->margins = malloc(2 * (size_t)classes * sizeof *s->margins);
    BL_CHECK_RC(s->margins, "ldam_drw: out of memory");
    s->weights = s->margins + classes;
    BL_TRY(bl_lt_ldam_margins(run->class_counts, classes, bl_config_float(c, "method.max_margin"), s->margins));
    BL_TRY(bl_lt_effective_number_weights(run->class_counts, classes, bl_config_float(c, "method.beta"), s->weights));
    /* Only the direction of each class weight matters to a cosine classifier. */
    bl_model *m = s->model = bl_lt_add_model(run);
    if (!m) return BL_ERR;
    return bl_lt_reset_classifier_without_bias(m, &run->rng, 1.0);
}

static int epoch_begin(bl_run *run, void *state, int epoch) {
    ldam_drw *s = state;
    s->weighted = s->drw && epoch >= s->drw_epoch;
    return BL_OK;
}

static bl_tensor *cosine_logits(bl_model *m, bl_tensor *x) {
    bl_tensor *features = bl_dropout_layer_forward(&m->head_drop, bl_model_features(m, x), m->training);
    return bl_lt_cosine_logits(features, m->classifier.weight);
}

static int step(bl_run *run, void *state, bl_batch *b, double *loss) {
    const ldam_drw *s = state;
    const int64_t classes = run->num_classes;
    const bl_lt_ldam_args args = {bl_lt_vector(BL_F32, s->margins, classes), s->scale,
                                  s->weighted ? bl_lt_vector(BL_F32, s->weights, classes) : NULL};
    bl_tensor *logits = cosine_logits(s->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_label_loss(b, logits, bl_lt_ldam_label_loss, &args), loss);
}

static bl_tensor *predict(bl_run *run, void *state, bl_batch *b) {
    return cosine_logits(((const ldam_drw *)state)->model, bl_batch_get(b, "x"));
}

static void release(void *state) { free(((ldam_drw *)state)->margins); }

const bl_recipe bl_recipe_ldam_drw = {
    .name = "ldam_drw",
    .summary = "LDAM: label-distribution-aware margins on a cosine classifier, with deferred re-weighting",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(ldam_drw),
    .setup = setup,
    .step = step,
    .predict = predict,
    .epoch_begin = epoch_begin,
    .release = release,
};
