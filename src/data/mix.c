/* mixup and cutmix on a batch in memory (see data.h): the only transforms that look at two images
 * at once and change the targets, so they run on the training thread after the loader, with the
 * run's own random stream. */
#include "ballast/data.h"

#include "core/internal.h"

#include <math.h>
#include <string.h>

/* The box [y0, y1) x [x0, x1) of cutmix for a drawn lam: side ratios sqrt(1 - lam), centre
 * uniform, clipped at the border (so the box may be smaller than drawn). */
static void cutmix_box(bl_rng *rng, double lam, int64_t H, int64_t W, int64_t *y0, int64_t *y1, int64_t *x0,
                       int64_t *x1) {
    const double ratio = sqrt(1.0 - lam);
    const int64_t cut_h = (int64_t)(H * ratio), cut_w = (int64_t)(W * ratio);
    const int64_t cy = bl_rng_below(rng, H), cx = bl_rng_below(rng, W);
    *y0 = cy - cut_h / 2 < 0 ? 0 : cy - cut_h / 2;
    *y1 = cy + cut_h / 2 > H ? H : cy + cut_h / 2;
    *x0 = cx - cut_w / 2 < 0 ? 0 : cx - cut_w / 2;
    *x1 = cx + cut_w / 2 > W ? W : cx + cut_w / 2;
}

int bl_mix_batch(const bl_mix_args *a, bl_rng *rng, bl_tensor *x, const bl_tensor *y, bl_tensor **partner,
                 double *lam) {
    *partner = NULL;
    *lam = 1.0;
    BL_CHECK_RC(a->mixup >= 0 && a->cutmix >= 0 && a->prob >= 0 && a->prob <= 1,
                "mixing: mixup %g and cutmix %g must be >= 0 and the probability %g in [0, 1]", a->mixup, a->cutmix,
                a->prob);
    BL_CHECK_RC(x && y && x->dtype == BL_F32 && x->ndim == 4 && bl_is_contiguous(x) && y->dtype == BL_I64 &&
                    y->ndim == 1 && y->shape[0] == x->shape[0],
                "mixing: expected x F32 (B, C, H, W) contiguous and y I64 (B), got %s and %s", bl__shape(x),
                y ? bl__shape(y) : "nothing");
    if (a->mixup == 0 && a->cutmix == 0) return BL_OK;
    if (bl_rng_uniform(rng) >= a->prob) return BL_OK;
    const bool cutmix = a->cutmix > 0 && (a->mixup == 0 || bl_rng_uniform(rng) < 0.5);
    const double alpha = cutmix ? a->cutmix : a->mixup;
    const int64_t B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3], image = C * H * W;
    bl_tensor *labels = bl_empty(BL_I64, 1, &B), *original = bl_empty(BL_F32, 4, x->shape);
    if (!labels || !original) return BL_ERR;
    int64_t *perm = labels->data; /* the permutation, then (below) the partners' labels in place */
    for (int64_t i = 0; i < B; i++) perm[i] = i;
    bl_rng_shuffle(rng, perm, B);
    double l = bl_rng_beta(rng, alpha, alpha);
    memcpy(original->data, x->data, (size_t)(B * image) * sizeof(float));
    const float *src = original->data;
    float *dst = x->data;
    if (cutmix) {
        int64_t y0, y1, x0, x1;
        cutmix_box(rng, l, H, W, &y0, &y1, &x0, &x1);
        for (int64_t b = 0; b < B; b++)
            for (int64_t c = 0; c < C; c++)
                for (int64_t r = y0; r < y1; r++)
                    memcpy(dst + b * image + (c * H + r) * W + x0, src + perm[b] * image + (c * H + r) * W + x0,
                           (size_t)(x1 - x0) * sizeof(float));
        l = 1.0 - (double)((y1 - y0) * (x1 - x0)) / (double)(H * W);
    } else {
        const float keep = (float)l, take = (float)(1.0 - l);
        for (int64_t b = 0; b < B; b++) {
            const float *own = src + b * image, *other = src + perm[b] * image;
            float *out = dst + b * image;
            for (int64_t j = 0; j < image; j++) out[j] = keep * own[j] + take * other[j];
        }
    }
    const int64_t *ys = y->data;
    for (int64_t i = 0; i < B; i++) perm[i] = ys[perm[i]];
    *partner = labels;
    *lam = l;
    return BL_OK;
}
