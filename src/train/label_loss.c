/* The one place where a training loss meets the labels, so batch mixing (mixup, cutmix) applies to
 * every method: a mixed batch's loss is the lam-weighted sum of the loss at each image's own label
 * and at the label of the image mixed into it. */
#include "ballast/ops.h"
#include "ballast/train.h"

#include "core/internal.h"

bl_tensor *bl_run_label_loss(bl_run *run, bl_tensor *logits, bl_tensor *y, bl_label_loss_fn fn, const void *ctx) {
    BL_NONNULL(logits, y);
    if (!run->mix.partner) return fn(logits, y, ctx);
    run->mix.applied = true;
    const double lam = run->mix.lam;
    return bl_add(bl_mul_scalar(fn(logits, y, ctx), lam), bl_mul_scalar(fn(logits, run->mix.partner, ctx), 1.0 - lam));
}

static bl_tensor *cross_entropy(bl_tensor *logits, bl_tensor *y, const void *args) {
    return bl_cross_entropy(logits, y, *(const bl_ce_args *)args);
}

bl_tensor *bl_run_cross_entropy(bl_run *run, bl_tensor *logits, bl_tensor *y, bl_ce_args args) {
    return bl_run_label_loss(run, logits, y, cross_entropy, &args);
}
