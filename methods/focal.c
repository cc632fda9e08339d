/* Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017, eq. 5) as the
 * long-tailed CIFAR papers use it for multi-class classification: the softmax cross-entropy of each
 * image scaled by (1 - p_t)^gamma, so well-classified (mostly head-class) images weigh less. The
 * model and its linear classifier are unchanged; evaluation uses the plain logits. */
#include "longtail.h"

#include "core/internal.h"

static const bl_option options[] = {
    {"gamma", BL_OPT_FLOAT, "1.0", "focusing parameter; 0 is cross-entropy (1.0 is the LDAM paper's CIFAR setting)"},
};

typedef struct {
    double gamma;
} focal;

static int setup(bl_run *run, void *state) {
    focal *s = state;
    s->gamma = bl_config_float(run->config, "method.gamma");
    if (!(s->gamma >= 0)) return bl_lt_option_error(run, "method.gamma", "%g is negative", s->gamma);
    return BL_OK;
}

static bl_tensor *loss(bl_run *run, void *state, bl_tensor *x, bl_tensor *y) {
    const focal *s = state;
    const bl_lt_focal_args args = {s->gamma, NULL};
    return bl_run_label_loss(run, bl_model_forward(run->model, x), y, bl_lt_focal_label_loss, &args);
}

static bl_tensor *logits(bl_run *run, void *state, bl_tensor *x) { return bl_model_forward(run->model, x); }

const bl_method bl_method_focal = {
    .name = "focal",
    .summary = "focal loss: cross-entropy scaled by (1 - p_t)^gamma",
    .options = options,
    .n_options = (int)(sizeof options / sizeof options[0]),
    .state_size = sizeof(focal),
    .setup = setup,
    .loss = loss,
    .logits = logits,
};
