/* Channels-last detection, allocation and conversion (see layout.h). The conversions are per-image
 * transposes of a (C, HW) matrix, done in square tiles so that both the reads and the writes stay
 * within a few cache lines at a time. */
#include "layout.h"

#include "core/internal.h"

/* Below this many elements a conversion stays on one thread. */
#define PARALLEL_MIN 32768
#define TILE 32

bool cpu_is_channels_last(const bl_tensor *t) {
    if (t->ndim != 4) return false;
    const int64_t C = t->shape[1], H = t->shape[2], W = t->shape[3];
    const int64_t want[4] = {H * W * C, 1, W * C, C};
    for (int d = 0; d < 4; d++)
        if (t->shape[d] != 1 && t->stride[d] != want[d]) return false;
    return true;
}

bl_tensor *cpu_empty_channels_last(bl_dtype dt, int64_t N, int64_t C, int64_t H, int64_t W) {
    bl_tensor *t = bl_empty(dt, 4, (const int64_t[]){N, H, W, C});
    if (!t) return NULL;
    const int64_t shape[4] = {N, C, H, W}, stride[4] = {H * W * C, 1, W * C, C};
    for (int d = 0; d < 4; d++) {
        t->shape[d] = shape[d];
        t->stride[d] = stride[d];
    }
    return t;
}

/* dst (N, cols, rows) = src (N, rows, cols) with each image's matrix transposed. */
static void transpose_images(int64_t N, int64_t rows, int64_t cols, const float *src, float *dst) {
    const int64_t row_tiles = (rows + TILE - 1) / TILE, col_tiles = (cols + TILE - 1) / TILE;
    const int64_t tiles = row_tiles * col_tiles, image = rows * cols;
#pragma omp parallel for schedule(static) if (N * image >= PARALLEL_MIN)
    for (int64_t job = 0; job < N * tiles; job++) {
        const int64_t n = job / tiles, r0 = job % tiles / col_tiles * TILE, c0 = job % col_tiles * TILE;
        const int64_t r1 = r0 + TILE < rows ? r0 + TILE : rows, c1 = c0 + TILE < cols ? c0 + TILE : cols;
        const float *s = src + n * image;
        float *d = dst + n * image;
        for (int64_t c = c0; c < c1; c++)
            for (int64_t r = r0; r < r1; r++) d[c * rows + r] = s[r * cols + c];
    }
}

void cpu_nchw_to_nhwc_f32(int64_t N, int64_t C, int64_t HW, const float *src, float *dst) {
    transpose_images(N, C, HW, src, dst);
}

void cpu_nhwc_to_nchw_f32(int64_t N, int64_t C, int64_t HW, const float *src, float *dst) {
    transpose_images(N, HW, C, src, dst);
}

bl_tensor *cpu_channels_last_values(bl_tensor *t) {
    BL_NONNULL(t);
    BL_CHECK(t->ndim == 4, "channels_last: expected an (N, C, H, W) tensor, got %s", bl__shape(t));
    if (cpu_is_channels_last(t)) return t;
    const int64_t N = t->shape[0], C = t->shape[1], H = t->shape[2], W = t->shape[3];
    bl_tensor *out = cpu_empty_channels_last(t->dtype, N, C, H, W);
    if (!out) return NULL;
    if (t->dtype == BL_F32 && bl_is_contiguous(t))
        cpu_nchw_to_nhwc_f32(N, C, H * W, t->data, out->data);
    else if (bl_copy_(out, t) != BL_OK)
        return NULL;
    return out;
}

bl_tensor *cpu_values_in_order_of(bl_tensor *t, const bl_tensor *like) {
    BL_NONNULL(t, like);
    if (cpu_is_channels_last(like) && !bl_is_contiguous(like)) return cpu_channels_last_values(t);
    if (bl_is_contiguous(t)) return t;
    bl_tensor *out = bl_empty(t->dtype, t->ndim, t->shape);
    if (!out) return NULL;
    if (t->dtype == BL_F32 && cpu_is_channels_last(t))
        cpu_nhwc_to_nchw_f32(t->shape[0], t->shape[1], t->shape[2] * t->shape[3], t->data, out->data);
    else if (bl_copy_(out, t) != BL_OK)
        return NULL;
    return out;
}
