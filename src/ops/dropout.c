/* Dropout: the input times a random mask of 0 and 1 / (1 - p). The mask is a constant input of the
 * multiplication, so the multiplication's node keeps it for the backward pass and the gradient
 * (g * mask) is differentiable to any order. */
#include "ballast/ops.h"

#include "core/internal.h"

/* Below this many elements the mask is drawn on one thread. */
#define DROPOUT_PARALLEL_MIN 65536

/* mask (n, dtype dt, contiguous) = 0 where dropped, scale where kept. Element i is dropped when the
 * (i % 2)-th 32-bit half of draw i / 2 of the stream (key, first_counter) is below drop_threshold
 * (p * 2^32). A counter-based stream can start at any draw, so each thread computes its own part
 * and the mask is the same for every thread count. */
static void dropout_mask_kernel(bl_dtype dt, int64_t n, uint64_t drop_threshold, double scale, uint64_t key,
                                uint64_t first_counter, void *mask) {
    const int64_t draws = (n + 1) / 2;
#pragma omp parallel for schedule(static) if (n >= DROPOUT_PARALLEL_MIN)
    for (int64_t k = 0; k < draws; k++) {
        bl_rng stream = {key, first_counter + (uint64_t)k};
        const uint64_t bits = bl_rng_u64(&stream);
        for (int64_t i = 2 * k; i < 2 * k + 2 && i < n; i++) {
            const uint64_t half = i % 2 ? bits >> 32 : bits & 0xffffffffu;
            const double value = half < drop_threshold ? 0.0 : scale;
            if (dt == BL_F32)
                ((float *)mask)[i] = (float)value;
            else
                ((double *)mask)[i] = value;
        }
    }
}

bl_tensor *bl_dropout(bl_tensor *x, double p, bool training, bl_rng *rng) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "dropout: needs an F32 or F64 tensor, got %s", bl_dtype_name(x->dtype));
    BL_CHECK(p >= 0 && p <= 1, "dropout: probability %g is outside [0, 1]", p);
    if (!training || p == 0) return x;
    BL_CHECK(rng, "dropout: training with p = %g needs a random stream", p);
    bl_tensor *mask = bl_empty(x->dtype, x->ndim, x->shape);
    if (!mask) return NULL;
    const int64_t n = bl_numel(x);
    /* p = 1 drops everything: the threshold 2^32 exceeds every 32-bit draw, and scale is unused. */
    const uint64_t threshold = (uint64_t)(p * 4294967296.0);
    dropout_mask_kernel(x->dtype, n, threshold, p < 1 ? 1.0 / (1.0 - p) : 0.0, rng->key, rng->counter, mask->data);
    rng->counter += (uint64_t)(n + 1) / 2;
    return bl_mul(x, mask);
}
