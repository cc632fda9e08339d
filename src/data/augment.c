/* Per-image training transforms (random crop with zero padding, horizontal flip, normalization,
 * cutout) fused into one pass from U8 pixels to normalized floats: each output pixel is read once
 * from the source and written once, so the loader's thread keeps well ahead of training. Colour
 * jitter, when on, is a second pass over the image. */
#include "ballast/data.h"

#include "core/internal.h"

#include <math.h>
#include <string.h>

#define PURPOSE_AUGMENT 0x4175676d65000000ull /* "Augme" */

bl_augment bl_augment_defaults(const char *dataset_name, bool train) {
    bl_augment a;
    memset(&a, 0, sizeof a);
    const char *name = dataset_name ? dataset_name : "";
    if (strncmp(name, "cifar", 5) == 0) {
        /* The constants of the long-tail papers' CIFAR code (shared by CIFAR-10 and CIFAR-100). */
        const float mean[3] = {0.4914f, 0.4822f, 0.4465f}, std[3] = {0.2023f, 0.1994f, 0.2010f};
        memcpy(a.mean, mean, sizeof mean);
        memcpy(a.std, std, sizeof std);
        a.crop_pad = train ? 4 : 0;
        a.hflip = train;
    } else if (strcmp(name, "mnist") == 0) {
        a.mean[0] = 0.1307f;
        a.std[0] = 0.3081f;
    } else if (strcmp(name, "fashion_mnist") == 0) {
        a.mean[0] = 0.2860f;
        a.std[0] = 0.3530f;
    } else {
        for (int c = 0; c < 3; c++) a.std[c] = 1.0f;
    }
    return a;
}

bl_rng bl_augment_stream(uint64_t seed, int epoch, int64_t position) {
    bl_rng epoch_stream = bl_rng_make(seed, PURPOSE_AUGMENT + (uint64_t)(uint32_t)epoch);
    return bl_rng_make(bl_rng_u64(&epoch_stream), (uint64_t)position);
}

/* The (mean, std) that normalize channel c, as the transform uses them (std 0: none). */
static void channel_norm(const bl_augment *aug, int64_t c, int64_t channels, float *mean, float *sd) {
    int64_t k = channels == 1 || c > 2 ? 0 : c;
    bool normalize = aug->std[k] != 0.0f;
    *sd = normalize ? aug->std[k] : 1.0f;
    *mean = normalize ? aug->mean[k] : 0.0f;
}

static float clamp01(float v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

/* Grey level of pixel i of a (C, n) image in [0, 1] (ITU-R 601, as torchvision; 1 channel: itself). */
static float grey(const float *img, int64_t channels, int64_t n, int64_t i) {
    return channels >= 3 ? 0.299f * img[i] + 0.587f * img[n + i] + 0.114f * img[2 * n + i] : img[i];
}

/* Step 3 on an image already normalized (step 4): back to [0, 1], jitter, normalized again; the
 * crop and flip come first, and the result is the same as jittering before normalizing. */
static void color_jitter(const bl_augment *aug, int64_t channels, int64_t n, bl_rng *rng, float *img) {
    int64_t order[3] = {0, 1, 2};
    bl_rng_shuffle(rng, order, 3);
    float factor[3] = {1, 1, 1};
    for (int k = 0; k < 3; k++) {
        const double s = aug->jitter[order[k]], lo = fmax(0.0, 1.0 - s);
        if (s > 0) factor[order[k]] = (float)(lo + bl_rng_uniform(rng) * (1.0 + s - lo));
    }
    for (int64_t c = 0; c < channels; c++) {
        float mean, sd;
        channel_norm(aug, c, channels, &mean, &sd);
        for (int64_t i = 0; i < n; i++) img[c * n + i] = img[c * n + i] * sd + mean;
    }
    for (int k = 0; k < 3; k++) {
        const int op = (int)order[k];
        const float f = factor[op];
        if (aug->jitter[op] <= 0) continue;
        if (op == 0) {
            for (int64_t i = 0; i < channels * n; i++) img[i] = clamp01(img[i] * f);
        } else if (op == 1) {
            double sum = 0;
            for (int64_t i = 0; i < n; i++) sum += grey(img, channels, n, i);
            const float m = (float)(sum / (double)n);
            for (int64_t i = 0; i < channels * n; i++) img[i] = clamp01(f * img[i] + (1 - f) * m);
        } else if (channels >= 3) {
            for (int64_t i = 0; i < n; i++) {
                const float g = grey(img, channels, n, i);
                for (int64_t c = 0; c < 3; c++) img[c * n + i] = clamp01(f * img[c * n + i] + (1 - f) * g);
            }
        }
    }
    for (int64_t c = 0; c < channels; c++) {
        float mean, sd;
        channel_norm(aug, c, channels, &mean, &sd);
        for (int64_t i = 0; i < n; i++) img[c * n + i] = (img[c * n + i] - mean) / sd;
    }
}

int bl_augment_image(const bl_augment *aug, const uint8_t *src, int64_t channels, int64_t height, int64_t width,
                     bl_rng *rng, float *dst) {
    int64_t pad = aug ? aug->crop_pad : 0, top = 0, left = 0;
    BL_CHECK_RC(pad >= 0 && (!aug || aug->cutout >= 0), "augment: negative crop padding or cutout size");
    if (pad > 0) {
        top = bl_rng_below(rng, 2 * pad + 1);
        left = bl_rng_below(rng, 2 * pad + 1);
    }
    bool flip = aug && aug->hflip && bl_rng_uniform(rng) < 0.5;
    /* Output column x reads padded column x + left, i.e. source column x + left - pad; with a flip
     * output column x shows what column (width - 1 - x) would have. Source columns exist for
     * output columns [x0, x1) of the unflipped crop. */
    int64_t shift = left - pad, x0 = shift < 0 ? -shift : 0, x1 = width - (shift > 0 ? shift : 0);
    if (x0 > width) x0 = width; /* padding wider than the image: whole rows of padding */
    if (x1 < x0) x1 = x0;
    for (int64_t c = 0; c < channels; c++) {
        float sd = 1.0f, mean = 0.0f;
        if (aug) channel_norm(aug, c, channels, &mean, &sd);
        /* (p / 255 - mean) / std as one multiply-add; padding is a black pixel, normalized too. */
        float scale = 1.0f / (255.0f * sd), offset = -mean / sd;
        const uint8_t *plane = src + c * height * width;
        for (int64_t y = 0; y < height; y++) {
            float *row = dst + (c * height + y) * width;
            int64_t sy = y + top - pad;
            if (sy < 0 || sy >= height) {
                for (int64_t x = 0; x < width; x++) row[x] = offset;
                continue;
            }
            const uint8_t *s = plane + sy * width + shift;
            if (!flip) {
                for (int64_t x = 0; x < x0; x++) row[x] = offset;
                for (int64_t x = x0; x < x1; x++) row[x] = (float)s[x] * scale + offset;
                for (int64_t x = x1; x < width; x++) row[x] = offset;
            } else {
                float *mirrored = row + width - 1;
                for (int64_t x = 0; x < x0; x++) mirrored[-x] = offset;
                for (int64_t x = x0; x < x1; x++) mirrored[-x] = (float)s[x] * scale + offset;
                for (int64_t x = x1; x < width; x++) mirrored[-x] = offset;
            }
        }
    }
    if (aug && (aug->jitter[0] > 0 || aug->jitter[1] > 0 || aug->jitter[2] > 0))
        color_jitter(aug, channels, height * width, rng, dst);
    if (aug && aug->cutout > 0) {
        /* DeVries & Taylor's cutout: rows [cy - L/2, cy + L/2) and the same for columns, clipped. */
        int64_t cy = bl_rng_below(rng, height), cx = bl_rng_below(rng, width), half = aug->cutout / 2;
        int64_t ya = cy - half < 0 ? 0 : cy - half, yb = cy + half > height ? height : cy + half;
        int64_t xa = cx - half < 0 ? 0 : cx - half, xb = cx + half > width ? width : cx + half;
        for (int64_t c = 0; c < channels; c++)
            for (int64_t y = ya; y < yb; y++)
                for (int64_t x = xa; x < xb; x++) dst[(c * height + y) * width + x] = 0.0f;
    }
    if (aug && aug->hook) return aug->hook(dst, channels, height, width, rng, aug->hook_user);
    return BL_OK;
}
