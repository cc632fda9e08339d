/* Internal helpers shared by the dense ops (matmul.c, attention.c, softmax.c): how a tensor's
 * trailing matrix is handed to the GEMM kernels, batch-dim broadcasting, and the row softmax
 * kernels that attention reuses; and the fused MLP and packed multi-head attention that the
 * transformer modules call. Not part of the public API. */
#ifndef BALLAST_OPS_DENSE_H
#define BALLAST_OPS_DENSE_H

#include "ballast/tensor.h"

#include <stdbool.h>
#include <stdint.h>

/* ---- operands (defined in matmul.c) ---- */

/* Whether the GEMM kernels can read t's last two dims (R, C) in place: row-major (*trans false,
 * *ld = row stride) or column-major (*trans true, *ld = column stride), as for a transposed view.
 * Batch dims may have any strides. False when a copy is needed. */
bool bl__gemm_operand(const bl_tensor *t, bool *trans, int64_t *ld);

/* t itself when bl__gemm_operand accepts it, else a contiguous copy made without recording
 * autograd (kernels only read it). */
bl_tensor *bl__gemm_readable(bl_tensor *t);

/* Broadcasts the batch dims (all but the last `matrix_dims`) of n tensors, NumPy-style, into
 * batch_shape (BL_MAX_DIMS entries). Returns the number of batch dims, or -1 when they do not
 * broadcast. */
int bl__broadcast_batch(int n, bl_tensor *const *ts, int matrix_dims, int64_t *batch_shape);

/* offsets (prod(batch_shape)) = element offset of each of t's matrices, for every index of a batch
 * of shape batch_shape (t's batch dims aligned at the right; size-1 and missing dims repeat). */
void bl__batch_offsets(const bl_tensor *t, int matrix_dims, int batch_ndim, const int64_t *batch_shape,
                       int64_t *offsets);

/* ---- row softmax kernels (defined in softmax.c) ----
 * Single-threaded, all arrays (rows, D) contiguous.
 * Forward: y (=) softmax of x along each row; y may alias x. A row that is all -inf gives NaN, as
 * in PyTorch. Backward: dx (=) y * (g - sum(g * y)) per row, from the forward's y and the gradient
 * g of y; dx may alias g. */
void cpu_softmax_rows_f32(int64_t rows, int64_t D, const float *x, float *y);
void ref_softmax_rows_f64(int64_t rows, int64_t D, const double *x, double *y);
void cpu_softmax_bwd_rows_f32(int64_t rows, int64_t D, const float *y, const float *g, float *dx);
void ref_softmax_bwd_rows_f64(int64_t rows, int64_t D, const double *y, const double *g, double *dx);

/* ---- the transformer MLP (defined in matmul.c) ----
 * y = gelu(x W1^T + b1) W2^T + b2 (exact-erf GELU), timm's Mlp without dropout: x (.., in),
 * w1 (hidden, in), b1 (hidden) or NULL, w2 (out, hidden), b2 (out) or NULL; y (.., out). Equal, in
 * values and in gradients of every order, to bl_linear(bl_gelu(bl_linear(x, w1, b1)), w2, b2); it
 * keeps only the (rows, hidden) pre-activation for the backward instead of every intermediate. */
bl_tensor *bl__mlp_gelu(bl_tensor *x, bl_tensor *w1, bl_tensor *b1, bl_tensor *w2, bl_tensor *b2);

/* ---- packed multi-head attention (defined in attention.c) ----
 * Self-attention straight from a fused qkv projection, as timm's Attention computes it:
 *   q, k, v = qkv.reshape(B, T, 3, heads, hd).permute(2, 0, 3, 1, 4)
 *   out = scaled_dot_product_attention(q, k, v, mask, causal, scale).transpose(1, 2).reshape(B, T, D)
 * for qkv (B, T, 3 D), D = heads * hd; out (B, T, D), contiguous. mask as for
 * bl_scaled_dot_product_attention, broadcast to (B, heads, T, T); scale <= 0 means 1/sqrt(hd).
 * Reads q, k, v in place and, in a first-order backward, writes their gradients into one (B, T, 3 D)
 * tensor; the gradients of every order equal those of the composition above. */
bl_tensor *bl__attention_packed_qkv(bl_tensor *qkv, int64_t heads, bl_tensor *mask, bool causal, double scale);

#endif
