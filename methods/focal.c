/* Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. 5) as the
 * long-tailed CIFAR papers use it for multi-class classification: the softmax cross-entropy of each
 * image scaled by (1 - p_t)^gamma, so well-classified (mostly head-class) images weigh less. The
 * model and its linear classifier are unchanged; evaluation uses the plain logits. */
#include "longtail.h"

static const bl_option options[] = {
    {"gamma", BL_OPT_FLOAT, "1.0", "focusing parameter; 0 is cross-entropy (1.0 is the LDAM paper's CIFAR setting)"},
};

typedef struct {
    bl_model *model;
    double gamma;
} focal;

static int setup(bl_run *run, void *state) {
    focal *s = state;
    s->gamma = bl_config_float(run->config, "method.gamma");
    if (!(s->gamma >= 0)) return bl_lt_option_error(run, "method.gamma", "%g is negative", s->gamma);
    s->model = bl_lt_add_model(run);
    return s->model ? BL_OK : BL_ERR;
}

static int step(bl_run *run, void *state, bl_batch *b, double *loss) {
    const focal *s = state;
    const bl_lt_focal_args args = {s->gamma, NULL};
    bl_tensor *logits = bl_model_forward(s->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_label_loss(b, logits, bl_lt_focal_label_loss, &args), loss);
}

static bl_tensor *predict(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((const focal *)state)->model, bl_batch_get(b, "x"));
}

const bl_recipe bl_recipe_focal = {
    .name = "focal",
    .summary = "focal loss: cross-entropy scaled by (1 - p_t)^gamma",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(focal),
    .setup = setup,
    .step = step,
    .predict = predict,
};
