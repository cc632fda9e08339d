/* A generated classification dataset for smoke runs and tests: every class is a fixed random
 * image pattern, every sample its class's pattern plus independent pixel noise. Small models learn
 * it in a few steps, so "the loss falls" is a meaningful check without any real data, and a run
 * config can name it like any other dataset ("synthetic"). Training and test sets are drawn from
 * the same patterns (seed) with different noise (sample_seed). */
#include "train_internal.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SYNTHETIC_PATTERN_PURPOSE 0x5e7a
#define SYNTHETIC_NOISE_PURPOSE 0x5e7b

int bl__synthetic_dataset(int64_t classes, int64_t per_class, int64_t channels, int64_t size, double noise,
                          uint64_t seed, uint64_t sample_seed, bl_dataset *out) {
    memset(out, 0, sizeof *out);
    BL_CHECK_RC(classes >= 2 && classes <= 1000 && per_class >= 1 && (channels == 1 || channels == 3) &&
                    size >= 4 && size <= 256 && noise >= 0,
                "synthetic dataset: classes %lld (2..1000), per_class %lld (>= 1), channels %lld (1 or 3), "
                "size %lld (4..256), noise %g (>= 0) out of range",
                (long long)classes, (long long)per_class, (long long)channels, (long long)size, noise);
    int64_t pixels = channels * size * size, n = classes * per_class;
    float *patterns = malloc((size_t)(classes * pixels) * sizeof *patterns);
    BL_CHECK_RC(patterns, "synthetic dataset: out of memory");
    bl_rng pattern_rng = bl_rng_make(seed, SYNTHETIC_PATTERN_PURPOSE);
    for (int64_t i = 0; i < classes * pixels; i++) patterns[i] = (float)bl_rng_normal(&pattern_rng);

    out->images = bl_tensor_new_persistent(BL_U8, 4, (int64_t[]){n, channels, size, size});
    out->labels = bl_tensor_new_persistent(BL_I64, 1, (int64_t[]){n});
    if (!out->images || !out->labels) {
        free(patterns);
        bl_dataset_free(out);
        BL_CHECK_RC(false, "synthetic dataset: out of memory");
    }
    uint8_t *px = out->images->data;
    int64_t *labels = out->labels->data;
    bl_rng noise_rng = bl_rng_make(sample_seed, SYNTHETIC_NOISE_PURPOSE);
    /* Pixel = 128 + 40 (pattern + noise * N(0, 1)), clamped: the pattern spans about +-2 std. */
    for (int64_t c = 0; c < classes; c++) {
        for (int64_t k = 0; k < per_class; k++) {
            int64_t row = c * per_class + k;
            labels[row] = c;
            for (int64_t i = 0; i < pixels; i++) {
                double v = 128.0 + 40.0 * (patterns[c * pixels + i] + noise * bl_rng_normal(&noise_rng));
                px[row * pixels + i] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : lround(v));
            }
        }
    }
    free(patterns);
    out->num_classes = classes;
    return BL_OK;
}
