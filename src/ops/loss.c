/* Loss functions with torch.nn.functional's semantics: cross-entropy over class indices (fused with
 * log-softmax), NLL, soft-target cross-entropy, KL divergence, MSE, smooth L1 and BCE with logits.
 *
 * Cross-entropy and NLL over class indices share one formulation. Each row i (a sample, or a sample
 * at one spatial position) has a target t, class weights w (all 1 without), smoothing e, C classes:
 *     loss_i = -sum_c q_ic * logp_ic,    q_ic = (1 - e) w_t [c == t] + (e / C) w_c,
 * with q_i = 0 for rows whose target is ignore_index. MEAN divides the sum by W, the sum of w_t over
 * the rows not ignored. This is exactly torch's label smoothing: its smoothing term is weighted per
 * class and normalised by the same W as the NLL term. Since sum_c p_ic = 1, the gradient of
 * cross-entropy with respect to the logits is
 *     dloss_i / dx_ic = p_ic * S_i - q_ic,    S_i = sum_c q_ic = (1 - e) w_t + (e / C) sum_c w_c,
 * which the fused kernels compute from the softmax probabilities kept by the forward pass; they
 * report to the profiler as "cross_entropy.fwd" and "cross_entropy.bwd".
 * The other losses are compositions of elementwise ops and reductions. */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "core/internal.h"
#include "ops/dense.h"

#include <math.h>
#include <string.h>

/* Below this many logits the fused F32 kernels stay on one thread. */
#define CE_PARALLEL_MIN 32768

static inline double load_float(bl_dtype dt, const void *data, int64_t i) {
    return dt == BL_F32 ? (double)((const float *)data)[i] : ((const double *)data)[i];
}

static inline void store_float(bl_dtype dt, void *data, int64_t i, double v) {
    if (dt == BL_F32)
        ((float *)data)[i] = (float)v;
    else
        ((double *)data)[i] = v;
}

static bool valid_reduction(bl_reduction r) { return r == BL_REDUCE_MEAN || r == BL_REDUCE_SUM || r == BL_REDUCE_NONE; }

/* NONE keeps the pointwise losses; SUM and MEAN reduce them to a scalar. */
static bl_tensor *reduce_loss(bl_tensor *pointwise, bl_reduction reduction) {
    switch (reduction) {
    case BL_REDUCE_SUM: return bl_sum(pointwise);
    case BL_REDUCE_MEAN: return bl_mean(pointwise);
    default: return pointwise;
    }
}

/* Pointwise losses compare two tensors of one shape and one float dtype. */
static int check_pair(const char *op, const bl_tensor *input, const bl_tensor *target, bl_reduction reduction) {
    BL_CHECK_RC(bl_dtype_is_float(input->dtype) && input->dtype == target->dtype,
                "%s: input and target need the same float dtype, got %s and %s", op, bl_dtype_name(input->dtype),
                bl_dtype_name(target->dtype));
    BL_CHECK_RC(bl_same_shape(input, target), "%s: input %s and target %s must have the same shape", op,
                bl__shape(input), bl__shape(target));
    BL_CHECK_RC(valid_reduction(reduction), "%s: unknown reduction %d", op, (int)reduction);
    return BL_OK;
}

/* ==== class-index targets: shared by cross-entropy and NLL ==================================== */

/* An (N, C, d...) input viewed as (outer, classes, inner): outer N, inner the product of d...
 * An unbatched (C) input with a 0-d target has outer = inner = 1. */
typedef struct {
    int64_t outer, classes, inner;
    int class_dim;
} class_layout;

/* Everything the kernels need besides the tensors: the layout, the targets and the options. */
typedef struct {
    class_layout lay;
    const int64_t *target;  /* (outer, inner), each a class or ignore_index */
    const double *weight;   /* (classes), or NULL for all ones */
    double weight_sum;      /* sum_c w_c */
    double smoothing;       /* e */
    int64_t ignore_index;
    double total_weight;    /* W = sum of w_t over the rows not ignored: MEAN's divisor */
} class_targets;

static inline double class_weight(const class_targets *ct, int64_t c) { return ct->weight ? ct->weight[c] : 1.0; }

/* S_i for a row with target t that is not ignored. */
static inline double row_coefficient_sum(const class_targets *ct, int64_t t) {
    return (1.0 - ct->smoothing) * class_weight(ct, t) +
           ct->smoothing / (double)ct->lay.classes * ct->weight_sum;
}

/* Checks input, target and options of a class-index loss and fills ct. Class weights are read as
 * constants (torch does not differentiate them either). ct->target points into `target`, or into a
 * contiguous copy, and is read again by the backward pass, like any input an op keeps. */
static int prepare_class_targets(const char *op, const bl_tensor *input, const bl_tensor *target,
                                 const bl_ce_args *args, class_targets *ct) {
    BL_CHECK_RC(bl_dtype_is_float(input->dtype), "%s: input must be F32 or F64, got %s", op,
                bl_dtype_name(input->dtype));
    BL_CHECK_RC(input->ndim >= 1, "%s: input of shape %s has no class dim", op, bl__shape(input));
    BL_CHECK_RC(target->dtype == BL_I64, "%s: target must hold BL_I64 class indices, got %s", op,
                bl_dtype_name(target->dtype));
    BL_CHECK_RC(valid_reduction(args->reduction), "%s: unknown reduction %d", op, (int)args->reduction);
    BL_CHECK_RC(args->label_smoothing >= 0.0 && args->label_smoothing <= 1.0,
                "%s: label_smoothing %g is outside [0, 1]", op, args->label_smoothing);
    class_layout lay = {1, 0, 1, input->ndim == 1 ? 0 : 1};
    bool match = target->ndim == input->ndim - 1;
    for (int d = 0; match && d < target->ndim; d++)
        match = target->shape[d] == input->shape[d < lay.class_dim ? d : d + 1];
    BL_CHECK_RC(match, "%s: target of shape %s does not fit input %s (expected the input's shape without dim %d)",
                op, bl__shape(target), bl__shape(input), lay.class_dim);
    if (lay.class_dim == 1) lay.outer = input->shape[0];
    lay.classes = input->shape[lay.class_dim];
    for (int d = lay.class_dim + 1; d < input->ndim; d++) lay.inner *= input->shape[d];

    memset(ct, 0, sizeof *ct);
    ct->lay = lay;
    ct->smoothing = args->label_smoothing;
    ct->ignore_index = args->ignore_index;
    ct->weight_sum = (double)lay.classes;
    if (args->class_weight) {
        const bl_tensor *w = args->class_weight;
        BL_CHECK_RC(bl_dtype_is_float(w->dtype) && w->ndim == 1 && w->shape[0] == lay.classes,
                    "%s: class_weight must be a float tensor of shape [%lld], got %s %s", op,
                    (long long)lay.classes, bl_dtype_name(w->dtype), bl__shape(w));
        double *weight = bl_arena_alloc((size_t)lay.classes * sizeof *weight);
        if (!weight) return BL_ERR;
        ct->weight_sum = 0;
        for (int64_t c = 0; c < lay.classes; c++) ct->weight_sum += weight[c] = bl_get_flat(w, c);
        ct->weight = weight;
    }
    const bl_tensor *t = target;
    if (!bl_is_contiguous(target)) {
        bl_tensor *copy = bl_empty(BL_I64, target->ndim, target->shape);
        if (!copy || bl_copy_(copy, target) != BL_OK) return BL_ERR;
        t = copy;
    }
    ct->target = t->data;
    for (int64_t i = 0, rows = lay.outer * lay.inner; i < rows; i++) {
        int64_t label = ct->target[i];
        if (label == ct->ignore_index) continue;
        BL_CHECK_RC(label >= 0 && label < lay.classes,
                    "%s: target %lld at position %lld is out of range for %lld classes (ignore_index is %lld)", op,
                    (long long)label, (long long)i, (long long)lay.classes, (long long)ct->ignore_index);
        ct->total_weight += class_weight(ct, label);
    }
    return BL_OK;
}

/* scale * q (the input's shape, dtype dt), as a constant tensor. */
static bl_tensor *class_coefficients(const class_targets *ct, const bl_tensor *like, double scale) {
    bl_tensor *q = bl_zeros(like->dtype, like->ndim, like->shape);
    if (!q) return NULL;
    const int64_t C = ct->lay.classes, inner = ct->lay.inner;
    const double on_target = (1.0 - ct->smoothing) * scale, spread = ct->smoothing / (double)C * scale;
    for (int64_t n = 0; n < ct->lay.outer; n++)
        for (int64_t s = 0; s < inner; s++) {
            int64_t t = ct->target[n * inner + s];
            if (t == ct->ignore_index) continue;
            for (int64_t c = 0; c < C; c++) {
                double v = spread * class_weight(ct, c) + (c == t ? on_target * class_weight(ct, t) : 0.0);
                store_float(q->dtype, q->data, (n * C + c) * inner + s, v);
            }
        }
    return q;
}

/* scale * S, shaped like the input with its class dim 1, as a constant tensor. */
static bl_tensor *class_coefficient_sums(const class_targets *ct, const bl_tensor *like, double scale) {
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, like->shape, sizeof shape);
    shape[ct->lay.class_dim] = 1;
    bl_tensor *sums = bl_empty(like->dtype, like->ndim, shape);
    if (!sums) return NULL;
    for (int64_t i = 0, rows = ct->lay.outer * ct->lay.inner; i < rows; i++) {
        int64_t t = ct->target[i];
        double v = t == ct->ignore_index ? 0.0 : scale * row_coefficient_sum(ct, t);
        store_float(sums->dtype, sums->data, i, v);
    }
    return sums;
}

/* The per-row losses (target's shape) reduced as asked: MEAN divides by W, as torch does. */
static bl_tensor *reduce_rows(bl_tensor *rows, const class_targets *ct, bl_reduction reduction) {
    if (reduction == BL_REDUCE_NONE) return rows;
    double total = 0;
    for (int64_t i = 0, n = bl_numel(rows); i < n; i++)
        total += load_float(rows->dtype, rows->data, i);
    return bl_scalar(rows->dtype, reduction == BL_REDUCE_MEAN ? total / ct->total_weight : total);
}

/* The gradient of each row's loss: g itself for NONE (shaped to broadcast over the classes), the
 * scalar g for SUM and MEAN (MEAN's 1/W is folded into the coefficients). */
static bl_tensor *row_gradient(bl_tensor *g, const class_targets *ct, bl_reduction reduction) {
    return reduction == BL_REDUCE_NONE ? bl_unsqueeze(g, ct->lay.class_dim) : g;
}

/* The factor MEAN applies to every row's loss (1 / W); 1 for the other reductions. */
static double reduction_scale(const class_targets *ct, bl_reduction reduction) {
    return reduction == BL_REDUCE_MEAN ? 1.0 / ct->total_weight : 1.0;
}

/* ---- kernels: fused softmax cross-entropy ---------------------------------------------------- */

/* Reference, double. logits (outer, classes, inner); ct->target (outer, inner);
 * loss (outer, inner) = loss_i (0 on ignored rows); probs (outer, classes, inner) = softmax over the
 * classes. */
static void ref_cross_entropy_fwd_f64(const class_targets *ct, const double *logits, double *loss, double *probs) {
    const int64_t C = ct->lay.classes, inner = ct->lay.inner;
    const double e = ct->smoothing;
    for (int64_t n = 0; n < ct->lay.outer; n++)
        for (int64_t s = 0; s < inner; s++) {
            const int64_t row = n * inner + s, t = ct->target[row];
            const double *x = logits + n * C * inner + s;
            double *p = probs + n * C * inner + s;
            double m = -INFINITY, sum = 0;
            for (int64_t c = 0; c < C; c++) m = x[c * inner] > m ? x[c * inner] : m;
            for (int64_t c = 0; c < C; c++) sum += exp(x[c * inner] - m);
            const double lse = m + log(sum);
            for (int64_t c = 0; c < C; c++) p[c * inner] = exp(x[c * inner] - lse);
            if (t == ct->ignore_index) {
                loss[row] = 0;
                continue;
            }
            double smooth = 0;
            if (e > 0)
                for (int64_t c = 0; c < C; c++) smooth += class_weight(ct, c) * (lse - x[c * inner]);
            loss[row] = (1 - e) * class_weight(ct, t) * (lse - x[t * inner]) + e / (double)C * smooth;
        }
}

/* Reference, double. probs (outer, classes, inner) from the forward; row_grad (outer, inner) the
 * gradient of each row's loss, or NULL for 1; dlogits (outer, classes, inner) =
 * scale * row_grad_i * (p_ic * S_i - q_ic). */
static void ref_cross_entropy_bwd_f64(const class_targets *ct, const double *probs, const double *row_grad,
                                      double scale, double *dlogits) {
    const int64_t C = ct->lay.classes, inner = ct->lay.inner;
    const double e = ct->smoothing;
    for (int64_t n = 0; n < ct->lay.outer; n++)
        for (int64_t s = 0; s < inner; s++) {
            const int64_t row = n * inner + s, t = ct->target[row];
            const double *p = probs + n * C * inner + s;
            double *d = dlogits + n * C * inner + s;
            if (t == ct->ignore_index) {
                for (int64_t c = 0; c < C; c++) d[c * inner] = 0;
                continue;
            }
            const double g = scale * (row_grad ? row_grad[row] : 1.0), gs = g * row_coefficient_sum(ct, t);
            for (int64_t c = 0; c < C; c++) d[c * inner] = gs * p[c * inner] - g * e / (double)C * class_weight(ct, c);
            d[t * inner] -= g * (1 - e) * class_weight(ct, t);
        }
}

/* Fast F32: the loss of a row whose logits are x[c * stride] and whose log-sum-exp is lse (t not
 * ignored): (1 - e) w_t (lse - x_t) + (e / C) sum_c w_c (lse - x_c). */
static inline float cpu_cross_entropy_row_loss_f32(const class_targets *ct, const float *x, int64_t stride,
                                                   float lse, int64_t t) {
    const int64_t C = ct->lay.classes;
    const float e = (float)ct->smoothing;
    float loss = (1 - e) * (float)class_weight(ct, t) * (lse - x[t * stride]);
    if (e > 0) {
        /* sum_c w_c (lse - x_c) = lse * sum_c w_c - sum_c w_c x_c */
        float wx = 0;
        if (ct->weight) {
#pragma omp simd reduction(+ : wx)
            for (int64_t c = 0; c < C; c++) wx += (float)ct->weight[c] * x[c * stride];
        } else {
#pragma omp simd reduction(+ : wx)
            for (int64_t c = 0; c < C; c++) wx += x[c * stride];
        }
        loss += e / (float)C * (lse * (float)ct->weight_sum - wx);
    }
    return loss;
}

static inline float max_f32(const float *x, int64_t n) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int64_t i = 0; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Fast F32 forward: same contract as ref_cross_entropy_fwd_f64. Rows of contiguous classes use
 * the vectorised softmax row kernel; the log-sum-exp then follows from the largest probability,
 * lse = max_c x_c - log(max_c p_c), which is at least 1 / C and so loses no precision. Classes
 * strided by inner > 1 (one row per spatial position) take a plain loop. */
static void cpu_cross_entropy_fwd_f32(const class_targets *ct, const float *logits, float *loss, float *probs) {
    const int64_t C = ct->lay.classes, inner = ct->lay.inner, rows = ct->lay.outer * inner;
#pragma omp parallel for schedule(static) if (rows * C >= CE_PARALLEL_MIN)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t at = row / inner * C * inner + row % inner, t = ct->target[row];
        const float *x = logits + at;
        float *p = probs + at, lse;
        if (inner == 1) {
            cpu_softmax_rows_f32(1, C, x, p);
            lse = max_f32(x, C) - logf(max_f32(p, C));
        } else {
            float m = -INFINITY, sum = 0;
            for (int64_t c = 0; c < C; c++) m = x[c * inner] > m ? x[c * inner] : m;
            for (int64_t c = 0; c < C; c++) sum += p[c * inner] = expf(x[c * inner] - m);
            for (int64_t c = 0; c < C; c++) p[c * inner] /= sum;
            lse = m + logf(sum);
        }
        loss[row] = t == ct->ignore_index ? 0.0f : cpu_cross_entropy_row_loss_f32(ct, x, inner, lse, t);
    }
}

/* Fast F32: one row of the backward, probabilities and gradient at [c * stride]. Always inlined,
 * so that the stride is a constant 1 in the contiguous case. */
static inline __attribute__((always_inline)) void cpu_cross_entropy_row_bwd_f32(const class_targets *ct, const float *p, int64_t stride, float g,
                                                 int64_t t, float *d) {
    const int64_t C = ct->lay.classes;
    if (t == ct->ignore_index) {
        for (int64_t c = 0; c < C; c++) d[c * stride] = 0;
        return;
    }
    const float gs = g * (float)row_coefficient_sum(ct, t), spread = g * (float)ct->smoothing / (float)C;
    /* d and p never overlap: simd tells the compiler it needs no run-time alias check. */
    if (ct->weight && spread != 0) {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) d[c * stride] = gs * p[c * stride] - spread * (float)ct->weight[c];
    } else {
#pragma omp simd
        for (int64_t c = 0; c < C; c++) d[c * stride] = gs * p[c * stride] - spread;
    }
    d[t * stride] -= g * (1 - (float)ct->smoothing) * (float)class_weight(ct, t);
}

/* Fast F32 backward: same contract as ref_cross_entropy_bwd_f64. Contiguous classes get their own
 * loop, in which the row function is inlined with stride 1 and vectorises. */
static void cpu_cross_entropy_bwd_f32(const class_targets *ct, const float *probs, const float *row_grad,
                                      float scale, float *dlogits) {
    const int64_t C = ct->lay.classes, inner = ct->lay.inner, rows = ct->lay.outer * inner;
    if (inner == 1) {
#pragma omp parallel for schedule(static) if (rows * C >= CE_PARALLEL_MIN)
        for (int64_t row = 0; row < rows; row++) {
            const float g = scale * (row_grad ? row_grad[row] : 1.0f);
            cpu_cross_entropy_row_bwd_f32(ct, probs + row * C, 1, g, ct->target[row], dlogits + row * C);
        }
        return;
    }
#pragma omp parallel for schedule(static) if (rows * C >= CE_PARALLEL_MIN)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t at = row / inner * C * inner + row % inner;
        const float g = scale * (row_grad ? row_grad[row] : 1.0f);
        cpu_cross_entropy_row_bwd_f32(ct, probs + at, inner, g, ct->target[row], dlogits + at);
    }
}

/* ---- cross-entropy op ------------------------------------------------------------------------ */

typedef struct {
    class_targets ct;
    bl_reduction reduction;
    bl_tensor *probs; /* softmax of the logits, from the forward */
} cross_entropy_ctx;

/* With create_graph the gradient is built from ops, so that it can itself be differentiated:
 * softmax(x) * S - q, times the gradient of each row's loss. */
static bl_tensor *cross_entropy_grad_composite(const cross_entropy_ctx *ctx, bl_tensor *x, bl_tensor *g) {
    const double scale = reduction_scale(&ctx->ct, ctx->reduction);
    bl_tensor *p = bl_softmax(x, ctx->ct.lay.class_dim);
    bl_tensor *q = class_coefficients(&ctx->ct, x, scale);
    bl_tensor *sums = class_coefficient_sums(&ctx->ct, x, scale);
    return bl_mul(bl_sub(bl_mul(p, sums), q), row_gradient(g, &ctx->ct, ctx->reduction));
}

static int cross_entropy_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const cross_entropy_ctx *ctx = node->ctx;
    bl_tensor *x = node->inputs[0];
    if (bl_grad_enabled()) {
        gin[0] = cross_entropy_grad_composite(ctx, x, g);
        return gin[0] ? BL_OK : BL_ERR;
    }
    double scale = reduction_scale(&ctx->ct, ctx->reduction);
    const void *row_grad = NULL;
    if (ctx->reduction == BL_REDUCE_NONE) {
        bl_tensor *gc = bl_contiguous(g);
        if (!gc) return BL_ERR;
        row_grad = gc->data;
    } else {
        scale *= bl_item(g);
    }
    bl_tensor *dx = bl_empty_like(x);
    if (!dx) return BL_ERR;
    double t0 = bl_profile_start();
    if (x->dtype == BL_F32)
        cpu_cross_entropy_bwd_f32(&ctx->ct, ctx->probs->data, row_grad, (float)scale, dx->data);
    else
        ref_cross_entropy_bwd_f64(&ctx->ct, ctx->probs->data, row_grad, scale, dx->data);
    bl_profile_stop("cross_entropy.bwd", t0, 0);
    gin[0] = dx;
    return BL_OK;
}

bl_ce_args bl_ce_args_default(void) {
    return (bl_ce_args){.class_weight = NULL, .label_smoothing = 0.0, .ignore_index = -100,
                        .reduction = BL_REDUCE_MEAN};
}

bl_tensor *bl_cross_entropy(bl_tensor *logits, bl_tensor *target, bl_ce_args args) {
    BL_NONNULL(logits, target);
    class_targets ct;
    if (prepare_class_targets("cross_entropy", logits, target, &args, &ct) != BL_OK) return NULL;
    bl_tensor *x = bl_contiguous(logits);
    if (!x) return NULL;
    /* The probabilities are kept for the backward pass (and are scratch space without one). */
    bl_tensor *probs = bl_empty_like(x);
    bl_tensor *rows = bl_empty(x->dtype, target->ndim, target->shape);
    if (!rows || !probs) return NULL;
    double t0 = bl_profile_start();
    if (x->dtype == BL_F32)
        cpu_cross_entropy_fwd_f32(&ct, x->data, rows->data, probs->data);
    else
        ref_cross_entropy_fwd_f64(&ct, x->data, rows->data, probs->data);
    bl_profile_stop("cross_entropy.fwd", t0, 0);
    bl_tensor *out = reduce_rows(rows, &ct, args.reduction);
    bl_node *node = bl_autograd_record(out, "cross_entropy", cross_entropy_backward, 1, &x, sizeof(cross_entropy_ctx));
    if (node) *(cross_entropy_ctx *)node->ctx = (cross_entropy_ctx){ct, args.reduction, probs};
    return out;
}

/* ---- NLL ------------------------------------------------------------------------------------- */

typedef struct {
    class_targets ct;
    bl_reduction reduction;
} nll_ctx;

/* The loss is linear in the log-probabilities: its gradient is -q times each row's gradient, and
 * being built from ops it carries on to second order (where it depends on g only). */
static int nll_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const nll_ctx *ctx = node->ctx;
    bl_tensor *minus_q = class_coefficients(&ctx->ct, node->inputs[0], -reduction_scale(&ctx->ct, ctx->reduction));
    gin[0] = bl_mul(minus_q, row_gradient(g, &ctx->ct, ctx->reduction));
    return gin[0] ? BL_OK : BL_ERR;
}

/* Reference, F32 or F64 (dt). log_probs (outer, classes, inner); loss (outer, inner) = loss_i. Only
 * the target's entry is read when e = 0, so -inf log-probabilities of other classes are harmless,
 * as with torch's gather-based NLL. */
static void ref_nll_fwd(const class_targets *ct, bl_dtype dt, const void *log_probs, void *loss) {
    const int64_t C = ct->lay.classes, inner = ct->lay.inner;
    const double e = ct->smoothing;
    for (int64_t n = 0; n < ct->lay.outer; n++)
        for (int64_t s = 0; s < inner; s++) {
            const int64_t row = n * inner + s, t = ct->target[row], first = n * C * inner + s;
            double value = 0;
            if (t != ct->ignore_index) {
                value = -(1 - e) * class_weight(ct, t) * load_float(dt, log_probs, first + t * inner);
                if (e > 0)
                    for (int64_t c = 0; c < C; c++)
                        value -= e / (double)C * class_weight(ct, c) * load_float(dt, log_probs, first + c * inner);
            }
            store_float(dt, loss, row, value);
        }
}

bl_tensor *bl_nll_loss(bl_tensor *log_probs, bl_tensor *target, bl_ce_args args) {
    BL_NONNULL(log_probs, target);
    class_targets ct;
    if (prepare_class_targets("nll_loss", log_probs, target, &args, &ct) != BL_OK) return NULL;
    bl_tensor *lp = bl_contiguous(log_probs);
    bl_tensor *rows = bl_empty(log_probs->dtype, target->ndim, target->shape);
    if (!lp || !rows) return NULL;
    ref_nll_fwd(&ct, lp->dtype, lp->data, rows->data);
    bl_tensor *out = reduce_rows(rows, &ct, args.reduction);
    bl_node *node = bl_autograd_record(out, "nll_loss", nll_backward, 1, &lp, sizeof(nll_ctx));
    if (node) *(nll_ctx *)node->ctx = (nll_ctx){ct, args.reduction};
    return out;
}

/* ==== soft targets and pointwise losses ========================================================= */

bl_tensor *bl_cross_entropy_soft(bl_tensor *logits, bl_tensor *target, bl_reduction reduction) {
    BL_NONNULL(logits, target);
    if (check_pair("cross_entropy_soft", logits, target, reduction) != BL_OK) return NULL;
    BL_CHECK(logits->ndim >= 1, "cross_entropy_soft: input of shape %s has no class dim", bl__shape(logits));
    const int class_dim = logits->ndim == 1 ? 0 : 1;
    bl_tensor *rows = bl_neg(bl_sum_dim(bl_mul(target, bl_log_softmax(logits, class_dim)), class_dim, false));
    /* MEAN averages over rows (samples and positions), not over classes. */
    return reduce_loss(rows, reduction);
}

/* KL(target || input) pointwise: target * (log(target) - input), and 0 where target is 0. The
 * log reads 1 there so that neither value nor gradient sees 0 * log(0). */
bl_tensor *bl_kl_div(bl_tensor *log_input, bl_tensor *target, bl_reduction reduction) {
    BL_NONNULL(log_input, target);
    if (check_pair("kl_div", log_input, target, reduction) != BL_OK) return NULL;
    const bl_dtype dt = target->dtype;
    bl_tensor *positive = bl_gt_scalar(target, 0.0);
    bl_tensor *log_target = bl_log(bl_where(positive, target, bl_scalar(dt, 1.0)));
    bl_tensor *pointwise = bl_where(positive, bl_mul(target, bl_sub(log_target, log_input)), bl_scalar(dt, 0.0));
    if (reduction != BL_REDUCE_MEAN) return reduce_loss(pointwise, reduction);
    /* 'batchmean': the sum over the batch size. */
    return bl_mul_scalar(bl_sum(pointwise), 1.0 / (double)(log_input->ndim ? log_input->shape[0] : 1));
}

bl_tensor *bl_mse_loss(bl_tensor *input, bl_tensor *target, bl_reduction reduction) {
    BL_NONNULL(input, target);
    if (check_pair("mse_loss", input, target, reduction) != BL_OK) return NULL;
    bl_tensor *diff = bl_sub(input, target);
    return reduce_loss(bl_mul(diff, diff), reduction);
}

/* 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere; beta = 0 is the L1 loss. */
bl_tensor *bl_smooth_l1_loss(bl_tensor *input, bl_tensor *target, double beta, bl_reduction reduction) {
    BL_NONNULL(input, target);
    if (check_pair("smooth_l1_loss", input, target, reduction) != BL_OK) return NULL;
    BL_CHECK(beta >= 0, "smooth_l1_loss: beta %g is negative", beta);
    bl_tensor *diff = bl_sub(input, target), *abs_diff = bl_abs(diff);
    if (beta == 0) return reduce_loss(abs_diff, reduction); /* the quadratic branch would divide by 0 */
    bl_tensor *quadratic = bl_mul_scalar(bl_mul(diff, diff), 0.5 / beta);
    bl_tensor *linear = bl_add_scalar(abs_diff, -0.5 * beta);
    bl_tensor *inside = bl_lt(abs_diff, bl_scalar(input->dtype, beta));
    return reduce_loss(bl_where(inside, quadratic, linear), reduction);
}

/* (1 - y) x + (1 + (pos_weight - 1) y) log(1 + exp(-x)), with the softplus computed stably, as
 * torch's binary_cross_entropy_with_logits. pos_weight broadcasts to the logits (usually (C)). */
bl_tensor *bl_bce_with_logits(bl_tensor *logits, bl_tensor *target, bl_tensor *pos_weight, bl_reduction reduction) {
    BL_NONNULL(logits, target);
    if (check_pair("bce_with_logits", logits, target, reduction) != BL_OK) return NULL;
    bl_tensor *softplus_neg = bl_softplus(bl_neg(logits));
    if (pos_weight) {
        int ndim;
        int64_t shape[BL_MAX_DIMS];
        BL_CHECK(pos_weight->dtype == logits->dtype, "bce_with_logits: pos_weight is %s, logits %s",
                 bl_dtype_name(pos_weight->dtype), bl_dtype_name(logits->dtype));
        bool fits = bl__broadcast_shape("bce_with_logits", pos_weight, logits, &ndim, shape) == BL_OK &&
                    ndim == logits->ndim && !memcmp(shape, logits->shape, (size_t)ndim * sizeof *shape);
        BL_CHECK(fits, "bce_with_logits: pos_weight %s does not broadcast to the logits %s", bl__shape(pos_weight),
                 bl__shape(logits));
        bl_tensor *log_weight = bl_add_scalar(bl_mul(bl_add_scalar(pos_weight, -1.0), target), 1.0);
        softplus_neg = bl_mul(log_weight, softplus_neg);
    }
    bl_tensor *pointwise = bl_add(bl_mul(bl_rsub_scalar(target, 1.0), logits), softplus_neg);
    return reduce_loss(pointwise, reduction);
}
