/* ballast ops: functions from tensors to a new tensor, recorded by autograd when needed.
 *
 * Conventions, for every op below unless its comment says otherwise:
 *  - Inputs are not modified. The result is a new arena tensor (or a view, for view ops).
 *  - Float ops compute in the inputs' dtype (F32 or F64); binary ops need matching dtypes.
 *  - Binary elementwise ops broadcast NumPy-style (shapes aligned at the right, size-1 dims stretch).
 *  - `dim` may be negative (counted from the end). `keepdim` keeps reduced dims with size 1.
 *  - Gradients flow to every float input that requires grad, and every backward is built from ops
 *    so that second-order gradients work (see autograd.h).
 *  - A NULL input, or invalid arguments, give NULL and an error message naming the op and shapes.
 * Ops whose name ends in `_` work in place, are never recorded, and return BL_OK/BL_ERR. */
#ifndef BALLAST_OPS_H
#define BALLAST_OPS_H

#include "ballast/autograd.h"
#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- elementwise, binary (broadcasting) ------------------------------------------------------ */
bl_tensor *bl_add(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_sub(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_mul(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_div(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_maximum(bl_tensor *a, bl_tensor *b);  /* gradient goes to a where a >= b */
bl_tensor *bl_minimum(bl_tensor *a, bl_tensor *b);  /* gradient goes to a where a <= b */
bl_tensor *bl_pow(bl_tensor *a, bl_tensor *b);      /* a^b; d/db uses log(a), defined for a > 0 */
/* Comparisons give BL_BOOL tensors and are never differentiated. */
bl_tensor *bl_gt(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_ge(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_lt(bl_tensor *a, bl_tensor *b);
bl_tensor *bl_eq(bl_tensor *a, bl_tensor *b);
/* cond ? a : b, elementwise; cond is BL_BOOL (or any dtype, nonzero = true); all three broadcast. */
bl_tensor *bl_where(bl_tensor *cond, bl_tensor *a, bl_tensor *b);

/* ---- elementwise with a scalar ------------------------------------------------------------- */
bl_tensor *bl_add_scalar(bl_tensor *a, double s);
bl_tensor *bl_mul_scalar(bl_tensor *a, double s);
bl_tensor *bl_pow_scalar(bl_tensor *a, double p);   /* a^p */
bl_tensor *bl_rsub_scalar(bl_tensor *a, double s);  /* s - a */
bl_tensor *bl_gt_scalar(bl_tensor *a, double s);    /* BL_BOOL, not differentiated */
bl_tensor *bl_clamp(bl_tensor *a, double lo, double hi); /* gradient 0 outside [lo, hi] */

/* ---- elementwise, unary ------------------------------------------------------------------- */
bl_tensor *bl_neg(bl_tensor *a);
bl_tensor *bl_exp(bl_tensor *a);
bl_tensor *bl_log(bl_tensor *a);
bl_tensor *bl_sqrt(bl_tensor *a);
bl_tensor *bl_abs(bl_tensor *a);    /* gradient sign(a), 0 at 0 */
bl_tensor *bl_sign(bl_tensor *a);   /* not differentiated (gradient 0) */
bl_tensor *bl_relu(bl_tensor *a);
bl_tensor *bl_leaky_relu(bl_tensor *a, double slope);
bl_tensor *bl_gelu(bl_tensor *a);   /* exact (erf) form, as torch.nn.GELU() */
bl_tensor *bl_sigmoid(bl_tensor *a);
bl_tensor *bl_tanh(bl_tensor *a);
bl_tensor *bl_softplus(bl_tensor *a); /* log(1 + exp(a)), computed stably */
/* Casts to another dtype; differentiable between F32 and F64. */
bl_tensor *bl_to_dtype(bl_tensor *a, bl_dtype dt);

/* ---- in place (never recorded) ------------------------------------------------------------- */
int bl_axpy_(bl_tensor *y, double alpha, const bl_tensor *x);  /* y += alpha * x (x broadcasts to y) */
int bl_scale_(bl_tensor *y, double alpha);                     /* y *= alpha */

/* ---- reductions ------------------------------------------------------------------------------ */
bl_tensor *bl_sum(bl_tensor *a);                                   /* all elements -> scalar */
bl_tensor *bl_mean(bl_tensor *a);
bl_tensor *bl_sum_dim(bl_tensor *a, int dim, bool keepdim);
bl_tensor *bl_mean_dim(bl_tensor *a, int dim, bool keepdim);
/* Sums `a` down to `shape` (the inverse of broadcasting to a's shape). */
bl_tensor *bl_sum_to(bl_tensor *a, int ndim, const int64_t *shape);
bl_tensor *bl_max_dim(bl_tensor *a, int dim, bool keepdim);      /* gradient to the first argmax */
bl_tensor *bl_min_dim(bl_tensor *a, int dim, bool keepdim);
bl_tensor *bl_argmax(bl_tensor *a, int dim, bool keepdim);       /* BL_I64, not differentiated */
bl_tensor *bl_max(bl_tensor *a);                                   /* all elements -> scalar */
bl_tensor *bl_var_dim(bl_tensor *a, int dim, bool unbiased, bool keepdim);
bl_tensor *bl_norm_dim(bl_tensor *a, double p, int dim, bool keepdim); /* p-norm, p >= 1 */
bl_tensor *bl_logsumexp(bl_tensor *a, int dim, bool keepdim);

/* ---- views (share memory with the input; gradients flow through) --------------------------- */
bl_tensor *bl_reshape(bl_tensor *a, int ndim, const int64_t *shape); /* one entry may be -1; copies when not viewable */
bl_tensor *bl_flatten(bl_tensor *a, int start_dim);                  /* keeps dims before start_dim */
bl_tensor *bl_permute(bl_tensor *a, const int *order);               /* order has a->ndim entries */
bl_tensor *bl_transpose(bl_tensor *a, int d0, int d1);
bl_tensor *bl_slice(bl_tensor *a, int dim, int64_t start, int64_t end, int64_t step);
bl_tensor *bl_select(bl_tensor *a, int dim, int64_t index);          /* drops dim */
bl_tensor *bl_expand(bl_tensor *a, int ndim, const int64_t *shape);  /* broadcast view (stride 0) */
bl_tensor *bl_squeeze(bl_tensor *a, int dim);
bl_tensor *bl_unsqueeze(bl_tensor *a, int dim);
/* A contiguous copy (or `a` itself when already contiguous). */
bl_tensor *bl_contiguous(bl_tensor *a);
/* x (N, C, H, W) with its memory in channels-last order, strides (H*W*C, 1, W*C, C), as torch's
 * x.contiguous(memory_format=torch.channels_last): x itself when already so, else a copy. Values,
 * shape and gradients are unchanged; F32 convolutions on oneDNN, batch norms and pools then run
 * without layout conversions and give channels-last results, so converting a CNN's input once
 * keeps the whole network in that order. */
bl_tensor *bl_channels_last(bl_tensor *x);

/* ---- joining and splitting ------------------------------------------------------------------ */
bl_tensor *bl_concat(int n, bl_tensor *const *ts, int dim);
bl_tensor *bl_stack(int n, bl_tensor *const *ts, int dim);
/* Splits along dim into pieces of the given sizes (summing to the dim's size); writes n views. */
int bl_split(bl_tensor *a, int dim, int n, const int64_t *sizes, bl_tensor **out);
/* Constant padding of the last k dims: pads = {left_last, right_last, left_prev, right_prev, ...}
 * exactly as torch.nn.functional.pad. */
bl_tensor *bl_pad(bl_tensor *a, int n_pads, const int64_t *pads, double value);

/* ---- indexing -------------------------------------------------------------------------------- */
/* out[i][j] = a[index[i][j]][j] (dim 0) etc., torch.gather semantics; index is BL_I64. */
bl_tensor *bl_gather(bl_tensor *a, int dim, bl_tensor *index);
/* Returns a copy of `a` with src added at index positions along dim (torch.scatter_add). */
bl_tensor *bl_scatter_add(bl_tensor *a, int dim, bl_tensor *index, bl_tensor *src);
bl_tensor *bl_index_select(bl_tensor *a, int dim, bl_tensor *index);
/* 1-D tensor of the elements where mask (broadcast to a) is nonzero. */
bl_tensor *bl_masked_select(bl_tensor *a, bl_tensor *mask);
/* k largest (or smallest) along dim, sorted; values differentiable, indices BL_I64. */
int bl_topk(bl_tensor *a, int k, int dim, bool largest, bl_tensor **values, bl_tensor **indices);
int bl_sort(bl_tensor *a, int dim, bool descending, bl_tensor **values, bl_tensor **indices);
/* One-hot BL_F32 (n, classes) from BL_I64 labels (n). */
bl_tensor *bl_one_hot(bl_tensor *labels, int64_t classes, bl_dtype dt);

/* ---- dense math ------------------------------------------------------------------------------ */
/* Matrix product with batching: (.., M, K) x (.., K, N) -> (.., M, N), batch dims broadcast;
 * 1-D operands follow torch.matmul. */
bl_tensor *bl_matmul(bl_tensor *a, bl_tensor *b);
/* x (.., IN) * W^T (OUT, IN) + b (OUT) -> (.., OUT); bias may be NULL. */
bl_tensor *bl_linear(bl_tensor *x, bl_tensor *weight, bl_tensor *bias);

typedef struct {
    int stride_h, stride_w;
    int pad_h, pad_w;
    int dilation_h, dilation_w;
    int groups;
    int output_pad_h, output_pad_w;  /* transposed conv only */
} bl_conv_args;
/* Default args: stride 1, padding p, dilation 1, groups 1. */
bl_conv_args bl_conv_args_make(int stride, int pad);
/* x (N, C, H, W), weight (O, C/groups, KH, KW), bias (O) or NULL -> (N, O, OH, OW). */
bl_tensor *bl_conv2d(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_conv_args args);
/* conv2d without bias followed by bl_batch_norm_act: act(batch_norm(conv2d(x, weight)) + residual),
 * with the same results, running-statistic updates and gradients as the two ops. In eval mode with
 * nothing to differentiate, on a channels-last F32 x with oneDNN, the batch norm is folded into the
 * convolution (weights times gamma / sqrt(var + eps), a bias of beta - mean times that) and the
 * residual add and ReLU run inside it: one pass over memory per layer. */
bl_tensor *bl_conv2d_bn_act(bl_tensor *x, bl_tensor *weight, bl_conv_args args, bl_tensor *bn_weight,
                            bl_tensor *bn_bias, bl_tensor *running_mean, bl_tensor *running_var, bl_tensor *residual,
                            bool relu, bool training, double momentum, double eps);
/* x (N, C, H, W), weight (C, O/groups, KH, KW) as torch.nn.ConvTranspose2d. */
bl_tensor *bl_conv_transpose2d(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_conv_args args);

/* ---- pooling and resampling (NCHW) ---------------------------------------------------------- */
bl_tensor *bl_max_pool2d(bl_tensor *x, int kernel, int stride, int pad);
bl_tensor *bl_avg_pool2d(bl_tensor *x, int kernel, int stride, int pad); /* count_include_pad = true */
bl_tensor *bl_adaptive_avg_pool2d(bl_tensor *x, int out_h, int out_w);
bl_tensor *bl_adaptive_max_pool2d(bl_tensor *x, int out_h, int out_w);
bl_tensor *bl_upsample_nearest2d(bl_tensor *x, int out_h, int out_w);
bl_tensor *bl_upsample_bilinear2d(bl_tensor *x, int out_h, int out_w, bool align_corners);

/* ---- normalization --------------------------------------------------------------------------- */
/* Batch norm over (N, C, ...) per channel. In training, normalizes with batch statistics and, when
 * running_mean/var are given, updates them in place with `momentum` (PyTorch: unbiased variance
 * for the running estimate). In eval, uses the running statistics. weight/bias may be NULL. */
bl_tensor *bl_batch_norm(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_tensor *running_mean,
                         bl_tensor *running_var, bool training, double momentum, double eps);
/* Batch norm fused with the residual add and ReLU that follow it in residual networks:
 * y = act(batch_norm(x, ...) + residual), residual of x's shape or NULL, act ReLU when `relu` else
 * the identity. Statistics, running-statistic updates and eval mode as bl_batch_norm; one pass over
 * memory forward and a fused first-order backward (create_graph builds it from ops). */
bl_tensor *bl_batch_norm_act(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, bl_tensor *running_mean,
                             bl_tensor *running_var, bl_tensor *residual, bool relu, bool training, double momentum,
                             double eps);
/* Synchronized batch norm: while on, batch norm in training mode (both ops above, and the conv2d
 * fused with it) normalizes with the statistics of the whole batch over every process of a
 * multi-process job (ballast/dist.h), and its backward adds up the gradients' per-channel sums
 * over the processes; the running variance's unbiased estimate counts every process's values.
 * Every process must then run the same batch-norm layers in the same order (a data-parallel step
 * does). F32 only; first-order gradients only. No effect in one process. The trainer turns it on
 * for the training steps of train.sync_bn runs. Returns the previous setting. */
bool bl_batch_norm_set_sync(bool on);
/* Normalizes over the trailing dims whose sizes are `shape` (as torch.nn.functional.layer_norm). */
bl_tensor *bl_layer_norm(bl_tensor *x, int ndim, const int64_t *shape, bl_tensor *weight, bl_tensor *bias,
                         double eps);
bl_tensor *bl_group_norm(bl_tensor *x, int groups, bl_tensor *weight, bl_tensor *bias, double eps);
/* Per-sample, per-channel normalization; weight/bias (C) may be NULL. */
bl_tensor *bl_instance_norm(bl_tensor *x, bl_tensor *weight, bl_tensor *bias, double eps);
/* Zeroes each element with probability p and scales the rest by 1/(1-p); identity when !training. */
bl_tensor *bl_dropout(bl_tensor *x, double p, bool training, bl_rng *rng);

/* ---- softmax, losses, similarities ----------------------------------------------------------- */
bl_tensor *bl_softmax(bl_tensor *x, int dim);
bl_tensor *bl_log_softmax(bl_tensor *x, int dim);

typedef enum { BL_REDUCE_MEAN = 0, BL_REDUCE_SUM, BL_REDUCE_NONE } bl_reduction;
typedef struct {
    bl_tensor *class_weight;  /* (C) or NULL */
    double label_smoothing;   /* 0 = off */
    int64_t ignore_index;     /* targets equal to it contribute nothing; use -100 like PyTorch */
    bl_reduction reduction;   /* MEAN divides by the summed weights of the non-ignored targets */
} bl_ce_args;
bl_ce_args bl_ce_args_default(void);
/* logits (N, C) or (N, C, d...), target BL_I64 (N) or (N, d...): torch.nn.functional.cross_entropy. */
bl_tensor *bl_cross_entropy(bl_tensor *logits, bl_tensor *target, bl_ce_args args);
/* Soft targets: target (N, C) probabilities; -sum(target * log_softmax(logits)), reduced. */
bl_tensor *bl_cross_entropy_soft(bl_tensor *logits, bl_tensor *target, bl_reduction reduction);
bl_tensor *bl_nll_loss(bl_tensor *log_probs, bl_tensor *target, bl_ce_args args);
/* KL(target || input) with input = log-probabilities, target = probabilities, as torch's
 * kl_div(input, target, reduction) (BL_REDUCE_MEAN here means 'batchmean'). */
bl_tensor *bl_kl_div(bl_tensor *log_input, bl_tensor *target, bl_reduction reduction);
bl_tensor *bl_mse_loss(bl_tensor *input, bl_tensor *target, bl_reduction reduction);
bl_tensor *bl_smooth_l1_loss(bl_tensor *input, bl_tensor *target, double beta, bl_reduction reduction);
bl_tensor *bl_bce_with_logits(bl_tensor *logits, bl_tensor *target, bl_tensor *pos_weight,
                              bl_reduction reduction);
bl_tensor *bl_cosine_similarity(bl_tensor *a, bl_tensor *b, int dim, double eps);
bl_tensor *bl_l2_normalize(bl_tensor *x, int dim, double eps);   /* x / max(||x||, eps) */

/* ---- attention -------------------------------------------------------------------------------- */
/* softmax(q k^T * scale + mask) v for q (.., Tq, D), k (.., Tk, D), v (.., Tk, Dv). mask is NULL,
 * a boolean tensor (true = keep) or an additive float tensor, broadcast to (.., Tq, Tk).
 * scale <= 0 means 1/sqrt(D). With causal, key j > query i is masked. */
bl_tensor *bl_scaled_dot_product_attention(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask,
                                           bool causal, double scale);

#ifdef __cplusplus
}
#endif
#endif
