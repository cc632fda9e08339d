/* Memory orders of image tensors on the CPU: plain NCHW (contiguous) and channels last (NHWC).
 *
 * A channels-last tensor is still an (N, C, H, W) tensor to every op; only its strides differ:
 * (H*W*C, 1, W*C, C), so each position's C channels are adjacent. oneDNN's convolutions read and
 * write that order directly (no reorder to a blocked layout and back per call), and batch norm
 * over it is a per-column reduction of an (N*H*W, C) matrix. The convolution and normalization ops
 * keep a channels-last input's order in their results and gradients, so a network whose input is
 * made channels last (bl_channels_last) runs in that order end to end. */
#ifndef BALLAST_CPU_LAYOUT_H
#define BALLAST_CPU_LAYOUT_H

#include "ballast/tensor.h"

#include <stdbool.h>
#include <stdint.h>

/* True when t is 4-D and its memory is dense in NHWC order (strides of size-1 dims ignored, as
 * bl_is_contiguous does). A tensor with C == 1 or H * W == 1 is both this and contiguous. */
bool cpu_is_channels_last(const bl_tensor *t);

/* A new arena tensor of shape (N, C, H, W) in channels-last order, uninitialized. */
bl_tensor *cpu_empty_channels_last(bl_dtype dt, int64_t N, int64_t C, int64_t H, int64_t W);

/* t's values in channels-last order: t itself when already so, else a copy. Not recorded by
 * autograd (for kernels' operands and gradients). */
bl_tensor *cpu_channels_last_values(bl_tensor *t);

/* t's values in the memory order of `like` (channels last when `like` is and is not plain
 * contiguous, else contiguous): t itself when it already is, else a copy. Not recorded. */
bl_tensor *cpu_values_in_order_of(bl_tensor *t, const bl_tensor *like);

/* dst (N, HW, C) = src (N, C, HW) transposed per image, and back. Parallel over images and tiles. */
void cpu_nchw_to_nhwc_f32(int64_t N, int64_t C, int64_t HW, const float *src, float *dst);
void cpu_nhwc_to_nchw_f32(int64_t N, int64_t C, int64_t HW, const float *src, float *dst);

#endif
