/* Class-balanced loss (Cui et al., "Class-Balanced Loss Based on Effective Number of Samples",
 * CVPR 2019): every image's loss is weighted by its class's inverse effective number
 * (1 - beta) / (1 - beta^n_c), the weights normalised to sum to the number of classes (eq. 3 and
 * section 4). The weighted loss is softmax cross-entropy or, with loss: focal, the focal loss, and
 * the batch loss is the mean of w_y * loss over the images, as the paper writes it (torch's weighted
 * cross-entropy would divide by the summed weights instead, changing the step size batch by batch).
 * The weights apply from the first epoch (compare LDAM-DRW, which defers them). */
#include "longtail.h"

#include <stdlib.h>
#include <string.h>

static const bl_option options[] = {
    {"beta", BL_OPT_FLOAT, "0.9999", "effective-number decay in [0, 1); 0 gives plain (unweighted) training"},
    {"loss", BL_OPT_STRING, "softmax", "the weighted loss: softmax (cross-entropy) or focal"},
    {"gamma", BL_OPT_FLOAT, "1.0", "focal loss focusing parameter (loss: focal)"},
};

typedef struct {
    bl_model *model;
    bool focal;
    double gamma;
    double *weights; /* (C) */
} cb_reweight;

static int setup(bl_run *run, void *state) {
    cb_reweight *s = state;
    const char *kind = bl_config_string(run->config, "method.loss");
    if (!kind || (strcmp(kind, "softmax") != 0 && strcmp(kind, "focal") != 0))
        return bl_lt_option_error(run, "method.loss", "'%s' is not one of softmax, focal", kind ? kind : "");
    s->focal = strcmp(kind, "focal") == 0;
    s->gamma = bl_config_float(run->config, "method.gamma");
    if (!(s->gamma >= 0)) return bl_lt_option_error(run, "method.gamma", "%g is negative", s->gamma);
    s->weights = malloc((size_t)run->num_classes * sizeof *s->weights);
    BL_CHECK_RC(s->weights, "cb_reweight: out of memory");
    s->model = bl_lt_add_model(run);
    if (!s->model) return BL_ERR;
    return bl_lt_effective_number_weights(run->class_counts, run->num_classes,
                                          bl_config_float(run->config, "method.beta"), s->weights);
}

static int step(bl_run *run, void *state, bl_batch *b, double *loss) {
    const cb_reweight *s = state;
    /* Softmax cross-entropy is the focal loss with gamma 0. */
    const bl_lt_focal_args args = {s->focal ? s->gamma : 0.0, bl_lt_vector(BL_F32, s->weights, run->num_classes)};
    bl_tensor *logits = bl_model_forward(s->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_label_loss(b, logits, bl_lt_focal_label_loss, &args), loss);
}

static bl_tensor *predict(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((const cb_reweight *)state)->model, bl_batch_get(b, "x"));
}

static void release(void *state) { free(((cb_reweight *)state)->weights); }

const bl_recipe bl_recipe_cb_reweight = {
    .name = "cb_reweight",
    .summary = "class-balanced loss: per-class weights from the effective number of samples",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(cb_reweight),
    .setup = setup,
    .step = step,
    .predict = predict,
    .release = release,
};
