/* What training steps share: the one place where a loss meets the labels, so batch mixing (mixup,
 * cutmix) applies to every recipe, and the common step (zero-grad, backward, clip, every
 * optimizer). */
#include "train_internal.h"

#include "core/internal.h"

#include <math.h>

bl_tensor *bl_batch_label_loss(bl_batch *b, bl_tensor *logits, bl_label_loss_fn fn, const void *ctx) {
    BL_CHECK(b && fn, "bl_batch_label_loss: NULL argument");
    bl_tensor *y = bl_batch_get(b, "y"), *partner = bl_batch_get(b, "y_mix");
    BL_CHECK(y, "bl_batch_label_loss: the batch has no labels (field \"y\")");
    BL_NONNULL(logits);
    if (!partner) return fn(logits, y, ctx);
    b->mix_used = true;
    const double lam = b->mix_lam;
    return bl_add(bl_mul_scalar(fn(logits, y, ctx), lam), bl_mul_scalar(fn(logits, partner, ctx), 1.0 - lam));
}

static bl_tensor *cross_entropy(bl_tensor *logits, bl_tensor *y, const void *args) {
    return bl_cross_entropy(logits, y, *(const bl_ce_args *)args);
}

bl_tensor *bl_batch_cross_entropy(bl_batch *b, bl_tensor *logits, bl_ce_args args) {
    return bl_batch_label_loss(b, logits, cross_entropy, &args);
}

static void zero_grads(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    for (int i = 0; i < r->n_models; i++) bl_params_zero_grad(&r->models[i]->model->params);
    for (int i = 0; i < r->n_stores; i++)
        if (r->stores[i]->params.finalized) bl_params_zero_grad(&r->stores[i]->params);
}

int bl_run_backward_step(bl_run *run, bl_tensor *loss, double *loss_value) {
    BL_CHECK_RC(run && run->registry && loss_value, "bl_run_backward_step: NULL argument");
    if (!loss) return BL_ERR; /* the loss's own error */
    BL_CHECK_RC(bl_numel(loss) == 1, "recipe %s: the loss must be a scalar, got %s", run->recipe->name,
                bl__shape(loss));
    const double v = bl_item(loss);
    *loss_value = v;
    const struct bl_run_registry *r = run->registry;
    const double lr = r->n_optimizers ? r->optimizers[0]->opt.cfg.lr : NAN;
    BL_CHECK_RC(isfinite(v), "loss is %g at epoch %d, step %lld (lr %g): training diverged", v, run->epoch + 1,
                (long long)run->step + 1, lr);
    zero_grads(run);
    BL_TRY(bl_backward(loss));
    const double clip = bl_config_float(run->config, "train.clip_grad_norm");
    for (int i = 0; i < r->n_optimizers; i++) {
        if (clip > 0) {
            double norm = bl_clip_grad_norm(r->optimizers[i]->opt.params, clip, 2.0);
            BL_CHECK_RC(isfinite(norm), "gradient norm of optimizer '%s' is %g at epoch %d, step %lld",
                        r->optimizers[i]->name, norm, run->epoch + 1, (long long)run->step + 1);
        }
        BL_TRY(bl_optimizer_step(&r->optimizers[i]->opt));
    }
    return BL_OK;
}
