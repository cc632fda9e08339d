/* Scaled dot-product attention: out = softmax(q k^T * scale + mask) v.
 *
 * Forward is one fused kernel. It walks the (batch entry, block of query rows) pairs in parallel;
 * for each it computes the block's scores with a GEMM, masks them, normalizes them in place and
 * multiplies by v. At inference the scores live in a small per-thread buffer, so the (Tq, Tk)
 * matrices of the whole batch never exist in memory; when gradients are needed they are written to
 * one probabilities tensor P kept for the backward.
 *
 * Backward, with g the gradient of out and dS the gradient of the (masked, scaled) scores:
 *   dV = P^T g,  dP = g V^T,  dS = P * (dP - sum_k(dP * P)),  dQ = scale dS K,  dK = scale dS^T Q,
 *   and an additive mask receives dS (summed over the dims it was broadcast along).
 * Under create_graph these are built from ops, recomputing P from q and k with ops, so that they
 * differentiate again. The first-order backward runs the same formulas in one fused kernel per
 * batch entry (four GEMMs and a row pass, all in cache), when q, k and v share one batch shape. */
#include "backend/cpu/gemm.h"
#include "ballast/ops.h"
#include "core/internal.h"
#include "ops/dense.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Scores per thread at inference, in elements (a block of query rows times Tk): small enough to
 * stay in L2. */
#define SCORE_BLOCK_ELEMS 16384

typedef struct {
    int64_t Tq, Tk, D, Dv;
    double scale;
    bool causal;
} attention_shape;

static int thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

static bool mask_is_boolean(const bl_tensor *mask) { return mask->dtype == BL_BOOL || mask->dtype == BL_U8; }

/* ---- kernels --------------------------------------------------------------------------------------
 * One batch entry's q is (Tq, D), k (Tk, D), v (Tk, Dv), found at offset[b] and read by the GEMM
 * kernels as row-major (trans false) or column-major with leading dim ld. */

typedef struct {
    const int64_t *offset;
    bool trans;
    int64_t ld;
} operand;

/* A mask read as (Tq, Tk) per batch entry: element (i, j) at offset[b] + i * row_stride +
 * j * col_stride (strides 0 on broadcast dims). Boolean masks keep where nonzero; float masks add. */
typedef struct {
    const void *data;
    const int64_t *offset;
    int64_t row_stride, col_stride;
    bool boolean;
} mask_operand;

/* scores (rows, Tk) of queries i0.. of batch entry b: masked-out entries (=) -inf, additive mask
 * values (+=). */
#define DEFINE_APPLY_MASK(T)                                                                           \
    static void apply_mask_##T(T *scores, int64_t rows, int64_t i0, int64_t b, int64_t Tk,            \
                               const mask_operand *m, bool causal) {                                   \
        for (int64_t r = 0; r < rows; r++) {                                                           \
            T *row = scores + r * Tk;                                                                  \
            if (m->data) {                                                                             \
                int64_t base = m->offset[b] + (i0 + r) * m->row_stride;                                \
                if (m->boolean) {                                                                      \
                    const uint8_t *keep = (const uint8_t *)m->data + base;                             \
                    for (int64_t j = 0; j < Tk; j++)                                                   \
                        if (!keep[j * m->col_stride]) row[j] = -INFINITY;                              \
                } else {                                                                               \
                    const T *add = (const T *)m->data + base;                                          \
                    for (int64_t j = 0; j < Tk; j++) row[j] += add[j * m->col_stride];                 \
                }                                                                                      \
            }                                                                                          \
            if (causal) /* key j > query i is in the future */                                        \
                for (int64_t j = i0 + r + 1; j < Tk; j++) row[j] = -INFINITY;                          \
        }                                                                                              \
    }

/* out (batch, Tq, Dv) (=) softmax(q k^T * scale + mask) v. Query rows go in blocks of `block`.
 * With probs (batch, Tq, Tk), the probabilities are written there (=); without, each thread uses
 * its block * Tk elements of scratch. */
#define DEFINE_ATTENTION_FWD(T, GEMM, SOFTMAX_ROWS)                                                    \
    static void attention_fwd_##T(int64_t batch, const attention_shape *s, int64_t block, const T *q,  \
                                  operand qo, const T *k, operand ko, const T *v, operand vo,          \
                                  const mask_operand *mo, T *out, T *probs, T *scratch) {              \
        int64_t blocks_per_entry = (s->Tq + block - 1) / block, tasks = batch * blocks_per_entry;      \
        _Pragma("omp parallel for schedule(static) if (tasks > 1)")                                    \
        for (int64_t t = 0; t < tasks; t++) {                                                          \
            int64_t b = t / blocks_per_entry, i0 = (t % blocks_per_entry) * block;                     \
            int64_t rows = s->Tq - i0 < block ? s->Tq - i0 : block;                                    \
            T *p = probs ? probs + (b * s->Tq + i0) * s->Tk : scratch + thread_index() * block * s->Tk; \
            const T *qb = q + qo.offset[b] + i0 * (qo.trans ? 1 : qo.ld);                              \
            /* a row-major k is read transposed, a column-major one as it is */                        \
            GEMM(qo.trans, !ko.trans, rows, s->Tk, s->D, (T)s->scale, qb, qo.ld, k + ko.offset[b], ko.ld, \
                 0, p, s->Tk);                                                                         \
            apply_mask_##T(p, rows, i0, b, s->Tk, mo, s->causal);                                      \
            SOFTMAX_ROWS(rows, s->Tk, p, p);                                                           \
            GEMM(false, vo.trans, rows, s->Dv, s->Tk, 1, p, s->Tk, v + vo.offset[b], vo.ld, 0,         \
                 out + (b * s->Tq + i0) * s->Dv, s->Dv);                                               \
        }                                                                                              \
    }

/* dq (batch, Tq, D), dk (batch, Tk, D), dv (batch, Tk, Dv) (=) the gradients of out for g
 * (batch, Tq, Dv), from the forward's probs (batch, Tq, Tk); every batch entry has its own q, k, v.
 * scratch: Tq * Tk elements per thread, for dP and then dS. */
#define DEFINE_ATTENTION_BWD(T, GEMM, SOFTMAX_BWD_ROWS)                                                \
    static void attention_bwd_##T(int64_t batch, const attention_shape *s, const T *q, operand qo,      \
                                  const T *k, operand ko, const T *v, operand vo, const T *probs,      \
                                  const T *g, T *dq, T *dk, T *dv, T *scratch) {                       \
        int64_t Tq = s->Tq, Tk = s->Tk, D = s->D, Dv = s->Dv;                                          \
        T scale = (T)s->scale;                                                                         \
        _Pragma("omp parallel for schedule(static) if (batch > 1)")                                    \
        for (int64_t b = 0; b < batch; b++) {                                                          \
            const T *p = probs + b * Tq * Tk, *gb = g + b * Tq * Dv;                                   \
            T *ds = scratch + thread_index() * Tq * Tk;                                                \
            GEMM(true, false, Tk, Dv, Tq, 1, p, Tk, gb, Dv, 0, dv + b * Tk * Dv, Dv);                  \
            GEMM(false, !vo.trans, Tq, Tk, Dv, 1, gb, Dv, v + vo.offset[b], vo.ld, 0, ds, Tk);         \
            SOFTMAX_BWD_ROWS(Tq, Tk, p, ds, ds);                                                       \
            GEMM(false, ko.trans, Tq, D, Tk, scale, ds, Tk, k + ko.offset[b], ko.ld, 0, dq + b * Tq * D, D); \
            GEMM(true, qo.trans, Tk, D, Tq, scale, ds, Tk, q + qo.offset[b], qo.ld, 0, dk + b * Tk * D, D); \
        }                                                                                              \
    }

DEFINE_APPLY_MASK(float)
DEFINE_APPLY_MASK(double)
DEFINE_ATTENTION_FWD(float, bl_gemm_f32, cpu_softmax_rows_f32)
DEFINE_ATTENTION_FWD(double, bl_gemm_f64, ref_softmax_rows_f64)
DEFINE_ATTENTION_BWD(float, bl_gemm_f32, cpu_softmax_bwd_rows_f32)
DEFINE_ATTENTION_BWD(double, bl_gemm_f64, ref_softmax_bwd_rows_f64)

/* ---- tensors to kernel arguments ------------------------------------------------------------------ */

typedef struct {
    int ndim;
    int64_t shape[BL_MAX_DIMS];
    int64_t count;
} batch_dims;

/* How the kernels read t's matrices over the batch. Fills *readable with t or a contiguous copy. */
static int operand_of(bl_tensor *t, const batch_dims *bd, bl_tensor **readable, operand *o) {
    *readable = bl__gemm_readable(t);
    int64_t *offset = bl_arena_alloc((size_t)(bd->count > 0 ? bd->count : 1) * sizeof *offset);
    if (!*readable || !offset) return BL_ERR;
    bl__batch_offsets(*readable, 2, bd->ndim, bd->shape, offset);
    o->offset = offset;
    bl__gemm_operand(*readable, &o->trans, &o->ld);
    return BL_OK;
}

static int mask_operand_of(const bl_tensor *mask, const batch_dims *bd, mask_operand *mo) {
    memset(mo, 0, sizeof *mo);
    if (!mask) return BL_OK;
    /* Seen as at least (Tq, Tk): missing leading dims repeat. */
    bl_tensor m = *mask;
    while (m.ndim < 2) {
        memmove(m.shape + 1, m.shape, (size_t)m.ndim * sizeof *m.shape);
        memmove(m.stride + 1, m.stride, (size_t)m.ndim * sizeof *m.stride);
        m.shape[0] = 1;
        m.stride[0] = 0;
        m.ndim++;
    }
    int64_t *offset = bl_arena_alloc((size_t)(bd->count > 0 ? bd->count : 1) * sizeof *offset);
    if (!offset) return BL_ERR;
    bl__batch_offsets(&m, 2, bd->ndim, bd->shape, offset);
    *mo = (mask_operand){mask->data, offset, m.shape[m.ndim - 2] == 1 ? 0 : m.stride[m.ndim - 2],
                         m.shape[m.ndim - 1] == 1 ? 0 : m.stride[m.ndim - 1], mask_is_boolean(mask)};
    return BL_OK;
}

/* Runs the forward kernel; with probs_out, also returns the probabilities (batch.., Tq, Tk). */
static bl_tensor *attention_forward(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask,
                                    const attention_shape *s, const batch_dims *bd, bl_tensor **probs_out) {
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, bd->shape, sizeof shape);
    shape[bd->ndim] = s->Tq;
    shape[bd->ndim + 1] = s->Dv;
    bl_tensor *out = bl_empty(q->dtype, bd->ndim + 2, shape), *rq, *rk, *rv, *probs = NULL;
    operand qo, ko, vo;
    mask_operand mo;
    BL_NONNULL(out);
    if (operand_of(q, bd, &rq, &qo) || operand_of(k, bd, &rk, &ko) || operand_of(v, bd, &rv, &vo) ||
        mask_operand_of(mask, bd, &mo))
        return NULL;
    int64_t block = SCORE_BLOCK_ELEMS / (s->Tk > 0 ? s->Tk : 1);
    block = block < 1 ? 1 : block > s->Tq ? (s->Tq > 0 ? s->Tq : 1) : block;
    void *scratch = NULL;
    if (probs_out) {
        shape[bd->ndim + 1] = s->Tk;
        probs = bl_empty(q->dtype, bd->ndim + 2, shape);
        BL_NONNULL(probs);
        *probs_out = probs;
    } else {
        scratch = bl_arena_alloc((size_t)(max_threads() * block * s->Tk) * bl_dtype_size(q->dtype));
        BL_NONNULL(scratch);
    }
    if (q->dtype == BL_F32)
        attention_fwd_float(bd->count, s, block, rq->data, qo, rk->data, ko, rv->data, vo, &mo, out->data,
                            probs ? probs->data : NULL, scratch);
    else
        attention_fwd_double(bd->count, s, block, rq->data, qo, rk->data, ko, rv->data, vo, &mo, out->data,
                             probs ? probs->data : NULL, scratch);
    return out;
}

/* ---- backward ------------------------------------------------------------------------------------ */

typedef struct {
    attention_shape s;
    batch_dims batch;
    bl_tensor *bool_mask; /* a boolean mask (never differentiated), or NULL */
    bl_tensor *probs;     /* from the forward, when the fused backward applies; else NULL */
} attention_ctx;

static bl_tensor *sum_to_shape_of(bl_tensor *t, const bl_tensor *like) {
    if (!t || bl_same_shape(t, like)) return t;
    return bl_sum_to(t, like->ndim, like->shape);
}

/* P = softmax(q k^T * scale + mask) as ops, differentiable in q, k and an additive mask. */
static bl_tensor *probs_by_ops(bl_tensor *q, bl_tensor *k, bl_tensor *mask, const attention_shape *s) {
    bl_tensor *scores = bl_mul_scalar(bl_matmul(q, bl_transpose(k, -2, -1)), s->scale);
    bl_tensor *masked_out = bl_scalar(q->dtype, -INFINITY);
    if (mask) scores = mask_is_boolean(mask) ? bl_where(mask, scores, masked_out) : bl_add(scores, mask);
    if (s->causal) {
        bl_tensor *keep = bl_empty(BL_BOOL, 2, (int64_t[]){s->Tq, s->Tk});
        BL_NONNULL(keep);
        uint8_t *kp = keep->data;
        for (int64_t i = 0; i < s->Tq; i++)
            for (int64_t j = 0; j < s->Tk; j++) kp[i * s->Tk + j] = j <= i;
        scores = bl_where(keep, scores, masked_out);
    }
    return bl_softmax(scores, -1);
}

static int backward_with_ops(bl_node *node, const attention_ctx *c, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *q = node->inputs[0], *k = node->inputs[1], *v = node->inputs[2];
    bl_tensor *add_mask = node->n_inputs > 3 ? node->inputs[3] : NULL;
    bl_tensor *p = probs_by_ops(q, k, add_mask ? add_mask : c->bool_mask, &c->s);
    if (v->requires_grad && !(gin[2] = sum_to_shape_of(bl_matmul(bl_transpose(p, -2, -1), g), v))) return BL_ERR;
    if (!q->requires_grad && !k->requires_grad && !(add_mask && add_mask->requires_grad)) return BL_OK;
    bl_tensor *dp = bl_matmul(g, bl_transpose(v, -2, -1));
    bl_tensor *ds = bl_mul(p, bl_sub(dp, bl_sum_dim(bl_mul(dp, p), -1, true)));
    if (q->requires_grad && !(gin[0] = sum_to_shape_of(bl_mul_scalar(bl_matmul(ds, k), c->s.scale), q)))
        return BL_ERR;
    if (k->requires_grad &&
        !(gin[1] = sum_to_shape_of(bl_mul_scalar(bl_matmul(bl_transpose(ds, -2, -1), q), c->s.scale), k)))
        return BL_ERR;
    if (add_mask && add_mask->requires_grad && !(gin[3] = sum_to_shape_of(ds, add_mask))) return BL_ERR;
    return BL_OK;
}

static int backward_fused(bl_node *node, const attention_ctx *c, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *q = node->inputs[0], *k = node->inputs[1], *v = node->inputs[2], *rq, *rk, *rv, *gc = NULL;
    operand qo, ko, vo;
    if (operand_of(q, &c->batch, &rq, &qo) || operand_of(k, &c->batch, &rk, &ko) ||
        operand_of(v, &c->batch, &rv, &vo))
        return BL_ERR;
    BL_NO_GRAD { gc = bl_contiguous(g); }
    bl_tensor *dq = bl_empty(q->dtype, q->ndim, q->shape), *dk = bl_empty(k->dtype, k->ndim, k->shape);
    bl_tensor *dv = bl_empty(v->dtype, v->ndim, v->shape);
    void *scratch = bl_arena_alloc((size_t)(max_threads() * c->s.Tq * c->s.Tk) * bl_dtype_size(q->dtype));
    if (!gc || !dq || !dk || !dv || !scratch) return BL_ERR;
    if (q->dtype == BL_F32)
        attention_bwd_float(c->batch.count, &c->s, rq->data, qo, rk->data, ko, rv->data, vo, c->probs->data, gc->data,
                            dq->data, dk->data, dv->data, scratch);
    else
        attention_bwd_double(c->batch.count, &c->s, rq->data, qo, rk->data, ko, rv->data, vo, c->probs->data,
                             gc->data, dq->data, dk->data, dv->data, scratch);
    gin[0] = q->requires_grad ? dq : NULL;
    gin[1] = k->requires_grad ? dk : NULL;
    gin[2] = v->requires_grad ? dv : NULL;
    return BL_OK;
}

static int attention_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const attention_ctx *c = node->ctx;
    bool mask_needs_grad = node->n_inputs > 3 && node->inputs[3]->requires_grad;
    if (!bl_grad_enabled() && c->probs && !mask_needs_grad) return backward_fused(node, c, g, gin);
    return backward_with_ops(node, c, g, gin);
}

/* ---- the op -------------------------------------------------------------------------------------- */

bl_tensor *bl_scaled_dot_product_attention(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask,
                                           bool causal, double scale) {
    BL_NONNULL(q, k, v);
    BL_CHECK(bl_dtype_is_float(q->dtype) && k->dtype == q->dtype && v->dtype == q->dtype,
             "scaled_dot_product_attention: q, k, v need one float dtype, got %s, %s and %s",
             bl_dtype_name(q->dtype), bl_dtype_name(k->dtype), bl_dtype_name(v->dtype));
    BL_CHECK(q->ndim >= 2 && k->ndim >= 2 && v->ndim >= 2,
             "scaled_dot_product_attention: q %s, k %s, v %s need at least 2 dims", bl__shape(q), bl__shape(k),
             bl__shape(v));
    attention_shape s = {q->shape[q->ndim - 2], k->shape[k->ndim - 2], q->shape[q->ndim - 1],
                         v->shape[v->ndim - 1], scale, causal};
    BL_CHECK(k->shape[k->ndim - 1] == s.D && v->shape[v->ndim - 2] == s.Tk,
             "scaled_dot_product_attention: q %s, k %s, v %s do not fit (.., Tq, D), (.., Tk, D), (.., Tk, Dv)",
             bl__shape(q), bl__shape(k), bl__shape(v));
    if (!(s.scale > 0)) s.scale = 1.0 / sqrt((double)(s.D > 0 ? s.D : 1));

    bl_tensor *all[4] = {q, k, v, mask};
    batch_dims bd = {0};
    bd.ndim = bl__broadcast_batch(3, all, 2, bd.shape);
    BL_CHECK(bd.ndim >= 0, "scaled_dot_product_attention: batch dims of q %s, k %s, v %s do not broadcast",
             bl__shape(q), bl__shape(k), bl__shape(v));
    bd.count = 1;
    for (int d = 0; d < bd.ndim; d++) bd.count *= bd.shape[d];
    if (mask) {
        BL_CHECK(mask_is_boolean(mask) || mask->dtype == q->dtype,
                 "scaled_dot_product_attention: mask must be BOOL/U8 (true = keep) or %s (added), got %s",
                 bl_dtype_name(q->dtype), bl_dtype_name(mask->dtype));
        int64_t rows = mask->ndim >= 2 ? mask->shape[mask->ndim - 2] : 1;
        int64_t cols = mask->ndim >= 1 ? mask->shape[mask->ndim - 1] : 1;
        int64_t with_mask[BL_MAX_DIMS];
        bool fits = (rows == 1 || rows == s.Tq) && (cols == 1 || cols == s.Tk) &&
                    bl__broadcast_batch(4, all, 2, with_mask) == bd.ndim;
        for (int d = 0; fits && d < bd.ndim; d++) fits = with_mask[d] == bd.shape[d];
        BL_CHECK(fits, "scaled_dot_product_attention: mask %s does not broadcast to the scores (.., %lld, %lld) of q %s",
                 bl__shape(mask), (long long)s.Tq, (long long)s.Tk, bl__shape(q));
    }

    bool boolean_mask = mask && mask_is_boolean(mask);
    bl_tensor *inputs[4] = {q, k, v, boolean_mask ? NULL : mask};
    int n_inputs = inputs[3] ? 4 : 3;
    bool record = bl_autograd_needed(n_inputs, inputs);
    /* The fused backward gives each batch entry its own dq, dk, dv, so it needs q, k, v unbroadcast. */
    bool fused_backward = record;
    for (int i = 0; i < 3; i++) {
        int64_t own = 1;
        for (int d = 0; d < inputs[i]->ndim - 2; d++) own *= inputs[i]->shape[d];
        fused_backward = fused_backward && inputs[i]->ndim == bd.ndim + 2 && own == bd.count;
    }
    bl_tensor *probs = NULL;
    bl_tensor *out = attention_forward(q, k, v, mask, &s, &bd, fused_backward ? &probs : NULL);
    if (!out || !record) return out;
    bl_node *node = bl_autograd_record(out, "scaled_dot_product_attention", attention_backward, n_inputs, inputs,
                                       sizeof(attention_ctx));
    if (!node) return NULL;
    *(attention_ctx *)node->ctx = (attention_ctx){s, bd, boolean_mask ? mask : NULL, probs};
    return out;
}
