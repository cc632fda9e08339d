/* Scaled dot-product attention: out = softmax(q k^T * scale + mask) v, as a public op over
 * separate q, k, v, and as the packed multi-head form a transformer's fused qkv projection feeds
 * (bl__attention_packed_qkv, see dense.h).
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
 * batch entry (four GEMMs and a row pass, all in cache), when q, k and v share one batch shape.
 *
 * Layouts: every matrix the kernels touch (q, k, v, out, g, dq, dk, dv) is read or written in
 * place through its strides, so the per-head views of a packed qkv cost no copy. Results keep
 * their inputs' memory order: out is laid out like q and each gradient like its input, so that
 * the transpose and reshape which follow attention in a transformer stay views. The packed form
 * goes one step further: it reads q, k, v straight out of the (B, T, 3 D) projection, writes the
 * output as (B, T, D), and its backward writes dq, dk, dv into one (B, T, 3 D) gradient, so no
 * per-head gradient is ever scattered into zeros and summed. */
#include "backend/cpu/gemm.h"
#include "ballast/ops.h"
#include "ballast/profile.h"
#include "core/internal.h"
#include "ops/dense.h"

#include <math.h>
#include <string.h>


/* Scores per thread at inference, in elements (a block of query rows times Tk): small enough to
 * stay in L2. */
#define SCORE_BLOCK_ELEMS 16384

typedef struct {
    int64_t Tq, Tk, D, Dv;
    double scale;
    bool causal;
} attention_shape;

static bool mask_is_boolean(const bl_tensor *mask) { return mask->dtype == BL_BOOL || mask->dtype == BL_U8; }

/* ---- kernels --------------------------------------------------------------------------------------
 * A batch of matrices: entry b's matrix starts at element offset[b] of data; its element (i, j)
 * is at i * ld + j, or, with trans (a column-major view), at i + j * ld. q is (Tq, D), k (Tk, D),
 * v (Tk, Dv), out and g (Tq, Dv), per batch entry. Written matrices are never trans. */

typedef struct {
    void *data;
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

/* Address of row i of entry b. */
#define ROW_OF(T, o, b, i) ((T *)(o).data + (o).offset[b] + (i) * ((o).trans ? 1 : (o).ld))
#define MATRIX_OF(T, o, b) ((T *)(o).data + (o).offset[b])

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

/* out (=) softmax(q k^T * scale + mask) v. Query rows go in blocks of `block`. With probs
 * (batch, Tq, Tk), contiguous, the probabilities are written there (=); without, each thread uses
 * its block * Tk elements of scratch. */
#define DEFINE_ATTENTION_FWD(T, GEMM, SOFTMAX_ROWS)                                                    \
    static void attention_fwd_##T(int64_t batch, const attention_shape *s, int64_t block, operand q,  \
                                  operand k, operand v, const mask_operand *mo, operand out, T *probs, \
                                  T *scratch) {                                                        \
        int64_t blocks_per_entry = (s->Tq + block - 1) / block, tasks = batch * blocks_per_entry;      \
        _Pragma("omp parallel for schedule(static) if (tasks > 1)")                                    \
        for (int64_t t = 0; t < tasks; t++) {                                                          \
            int64_t b = t / blocks_per_entry, i0 = (t % blocks_per_entry) * block;                     \
            int64_t rows = s->Tq - i0 < block ? s->Tq - i0 : block;                                    \
            T *p = probs ? probs + (b * s->Tq + i0) * s->Tk : scratch + bl__thread_index() * block * s->Tk; \
            /* a row-major k is read transposed, a column-major one as it is */                        \
            GEMM(q.trans, !k.trans, rows, s->Tk, s->D, (T)s->scale, ROW_OF(const T, q, b, i0), q.ld,    \
                 MATRIX_OF(const T, k, b), k.ld, 0, p, s->Tk);                                         \
            apply_mask_##T(p, rows, i0, b, s->Tk, mo, s->causal);                                      \
            SOFTMAX_ROWS(rows, s->Tk, p, p);                                                           \
            GEMM(false, v.trans, rows, s->Dv, s->Tk, 1, p, s->Tk, MATRIX_OF(const T, v, b), v.ld, 0,   \
                 ROW_OF(T, out, b, i0), out.ld);                                                       \
        }                                                                                              \
    }

/* dq, dk, dv (=) the gradients of out for g, from the forward's probs (batch, Tq, Tk), contiguous;
 * every batch entry has its own q, k, v. scratch: Tq * Tk elements per thread, for dP and then dS. */
#define DEFINE_ATTENTION_BWD(T, GEMM, SOFTMAX_BWD_ROWS)                                                \
    static void attention_bwd_##T(int64_t batch, const attention_shape *s, operand q, operand k,        \
                                  operand v, const T *probs, operand g, operand dq, operand dk,         \
                                  operand dv, T *scratch) {                                            \
        int64_t Tq = s->Tq, Tk = s->Tk, D = s->D, Dv = s->Dv;                                          \
        T scale = (T)s->scale;                                                                         \
        _Pragma("omp parallel for schedule(static) if (batch > 1)")                                    \
        for (int64_t b = 0; b < batch; b++) {                                                          \
            const T *p = probs + b * Tq * Tk, *gb = MATRIX_OF(const T, g, b);                          \
            T *ds = scratch + bl__thread_index() * Tq * Tk;                                                \
            GEMM(true, g.trans, Tk, Dv, Tq, 1, p, Tk, gb, g.ld, 0, MATRIX_OF(T, dv, b), dv.ld);        \
            GEMM(g.trans, !v.trans, Tq, Tk, Dv, 1, gb, g.ld, MATRIX_OF(const T, v, b), v.ld, 0, ds, Tk); \
            SOFTMAX_BWD_ROWS(Tq, Tk, p, ds, ds);                                                       \
            GEMM(false, k.trans, Tq, D, Tk, scale, ds, Tk, MATRIX_OF(const T, k, b), k.ld, 0,          \
                 MATRIX_OF(T, dq, b), dq.ld);                                                          \
            GEMM(true, q.trans, Tk, D, Tq, scale, ds, Tk, MATRIX_OF(const T, q, b), q.ld, 0,           \
                 MATRIX_OF(T, dk, b), dk.ld);                                                          \
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

static int64_t *batch_offsets_of(const bl_tensor *t, const batch_dims *bd) {
    int64_t *offset = bl_arena_alloc((size_t)(bd->count > 0 ? bd->count : 1) * sizeof *offset);
    if (offset) bl__batch_offsets(t, 2, bd->ndim, bd->shape, offset);
    return offset;
}

/* How the kernels read t's matrices over the batch. Fills *readable with t or a contiguous copy
 * (which must stay alive while the kernels run). */
static int read_operand(bl_tensor *t, const batch_dims *bd, bl_tensor **readable, operand *o) {
    *readable = bl__gemm_readable(t);
    if (!*readable) return BL_ERR;
    o->data = (*readable)->data;
    o->offset = batch_offsets_of(*readable, bd);
    bl__gemm_operand(*readable, &o->trans, &o->ld);
    return o->offset ? BL_OK : BL_ERR;
}

/* How the kernels write t (made by empty_in_layout_of, so its rows are row-major). */
static int write_operand(bl_tensor *t, const batch_dims *bd, operand *o) {
    o->data = t->data;
    o->offset = batch_offsets_of(t, bd);
    o->trans = false;
    o->ld = t->shape[t->ndim - 2] > 1 ? t->stride[t->ndim - 2] : (t->shape[t->ndim - 1] > 1 ? t->shape[t->ndim - 1] : 1);
    return o->offset ? BL_OK : BL_ERR;
}

/* A new tensor of `shape` (like's ndim) whose dims lie in memory in the order of like's strides,
 * the last dim innermost: the memory order PyTorch's empty_like(preserve_format) keeps. Plain
 * contiguous when like has another ndim or its last dim is not the innermost one. */
static bl_tensor *empty_in_layout_of(const bl_tensor *like, int ndim, const int64_t *shape) {
    bl_tensor *t = bl_empty(like->dtype, ndim, shape);
    if (!t || like->ndim != ndim || ndim < 2 || (like->shape[ndim - 1] > 1 && like->stride[ndim - 1] != 1))
        return t;
    int order[BL_MAX_DIMS];
    for (int d = 0; d < ndim - 1; d++) order[d] = d;
    /* Insertion sort by stride, largest first; size-1 dims keep their place among equals. */
    for (int i = 1; i < ndim - 1; i++)
        for (int j = i; j > 0 && like->stride[order[j]] > like->stride[order[j - 1]]; j--) {
            int swap = order[j];
            order[j] = order[j - 1];
            order[j - 1] = swap;
        }
    int64_t step = shape[ndim - 1];
    t->stride[ndim - 1] = 1;
    for (int i = ndim - 2; i >= 0; i--) {
        t->stride[order[i]] = step;
        step *= shape[order[i]];
    }
    return t;
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
    int64_t *offset = batch_offsets_of(&m, bd);
    if (!offset) return BL_ERR;
    *mo = (mask_operand){mask->data, offset, m.shape[m.ndim - 2] == 1 ? 0 : m.stride[m.ndim - 2],
                         m.shape[m.ndim - 1] == 1 ? 0 : m.stride[m.ndim - 1], mask_is_boolean(mask)};
    return BL_OK;
}

static double forward_flops(const attention_shape *s, int64_t batch) {
    return 2.0 * (double)batch * (double)s->Tq * (double)s->Tk * (double)(s->D + s->Dv);
}

/* Runs the forward kernel into out (batch.., Tq, Dv), which the caller made; with probs_out, also
 * returns the probabilities (batch.., Tq, Tk). */
static int attention_forward(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask, const attention_shape *s,
                             const batch_dims *bd, bl_tensor *out, bl_tensor **probs_out) {
    bl_tensor *rq, *rk, *rv, *probs = NULL;
    operand qo, ko, vo, oo;
    mask_operand mo;
    if (read_operand(q, bd, &rq, &qo) || read_operand(k, bd, &rk, &ko) || read_operand(v, bd, &rv, &vo) ||
        write_operand(out, bd, &oo) || mask_operand_of(mask, bd, &mo))
        return BL_ERR;
    int64_t block = SCORE_BLOCK_ELEMS / (s->Tk > 0 ? s->Tk : 1);
    block = block < 1 ? 1 : block > s->Tq ? (s->Tq > 0 ? s->Tq : 1) : block;
    void *scratch = NULL;
    if (probs_out) {
        int64_t shape[BL_MAX_DIMS];
        memcpy(shape, bd->shape, sizeof shape);
        shape[bd->ndim] = s->Tq;
        shape[bd->ndim + 1] = s->Tk;
        if (!(probs = *probs_out = bl_empty(q->dtype, bd->ndim + 2, shape))) return BL_ERR;
    } else if (!(scratch = bl_arena_alloc((size_t)(bl__max_threads() * block * s->Tk) * bl_dtype_size(q->dtype)))) {
        return BL_ERR;
    }
    double t0 = bl_profile_start();
    if (q->dtype == BL_F32)
        attention_fwd_float(bd->count, s, block, qo, ko, vo, &mo, oo, probs ? probs->data : NULL, scratch);
    else
        attention_fwd_double(bd->count, s, block, qo, ko, vo, &mo, oo, probs ? probs->data : NULL, scratch);
    bl_profile_stop("attention.fwd", t0, forward_flops(s, bd->count));
    return BL_OK;
}

/* dq, dk, dv (made by the caller, each with its own batch entries) (=) the gradients for g, by the
 * fused kernel. */
static int attention_backward_kernel(bl_tensor *q, bl_tensor *k, bl_tensor *v, const bl_tensor *probs, bl_tensor *g,
                                     const attention_shape *s, const batch_dims *bd, bl_tensor *dq, bl_tensor *dk,
                                     bl_tensor *dv) {
    bl_tensor *rq, *rk, *rv, *rg;
    operand qo, ko, vo, go, dqo, dko, dvo;
    if (read_operand(q, bd, &rq, &qo) || read_operand(k, bd, &rk, &ko) || read_operand(v, bd, &rv, &vo) ||
        read_operand(g, bd, &rg, &go) || write_operand(dq, bd, &dqo) || write_operand(dk, bd, &dko) ||
        write_operand(dv, bd, &dvo))
        return BL_ERR;
    void *scratch = bl_arena_alloc((size_t)(bl__max_threads() * s->Tq * s->Tk) * bl_dtype_size(q->dtype));
    if (!scratch) return BL_ERR;
    double t0 = bl_profile_start();
    if (q->dtype == BL_F32)
        attention_bwd_float(bd->count, s, qo, ko, vo, probs->data, go, dqo, dko, dvo, scratch);
    else
        attention_bwd_double(bd->count, s, qo, ko, vo, probs->data, go, dqo, dko, dvo, scratch);
    bl_profile_stop("attention.bwd", t0, 2.0 * forward_flops(s, bd->count));
    return BL_OK;
}

/* ---- backward built from ops ------------------------------------------------------------------- */

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

/* grads[0..3] = gradients for q, k, v and the mask (each only when wanted[i]), built from ops. */
static int gradients_by_ops(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask, const attention_shape *s,
                            bl_tensor *g, const bool *wanted, bl_tensor **grads) {
    bl_tensor *p = probs_by_ops(q, k, mask, s);
    if (wanted[2] && !(grads[2] = sum_to_shape_of(bl_matmul(bl_transpose(p, -2, -1), g), v))) return BL_ERR;
    if (!wanted[0] && !wanted[1] && !wanted[3]) return BL_OK;
    bl_tensor *dp = bl_matmul(g, bl_transpose(v, -2, -1));
    bl_tensor *ds = bl_mul(p, bl_sub(dp, bl_sum_dim(bl_mul(dp, p), -1, true)));
    if (wanted[0] && !(grads[0] = sum_to_shape_of(bl_mul_scalar(bl_matmul(ds, k), s->scale), q))) return BL_ERR;
    if (wanted[1] &&
        !(grads[1] = sum_to_shape_of(bl_mul_scalar(bl_matmul(bl_transpose(ds, -2, -1), q), s->scale), k)))
        return BL_ERR;
    if (wanted[3] && !(grads[3] = sum_to_shape_of(ds, mask))) return BL_ERR;
    return BL_OK;
}

/* ---- shared checks ------------------------------------------------------------------------------ */

typedef struct {
    attention_shape s;
    batch_dims batch;
    bl_tensor *bool_mask; /* a boolean mask (never differentiated), or NULL */
    bl_tensor *probs;     /* from the forward, when the fused backward applies; else NULL */
    int64_t heads;        /* packed form only */
} attention_ctx;

/* Checks the mask against the scores (batch.., Tq, Tk) of q, k, v (the packed form passes views). */
static int check_mask(const char *op, bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask,
                      const attention_shape *s, const batch_dims *bd) {
    if (!mask) return BL_OK;
    BL_CHECK_RC(mask_is_boolean(mask) || mask->dtype == q->dtype,
                "%s: mask must be BOOL/U8 (true = keep) or %s (added), got %s", op, bl_dtype_name(q->dtype),
                bl_dtype_name(mask->dtype));
    int64_t rows = mask->ndim >= 2 ? mask->shape[mask->ndim - 2] : 1;
    int64_t cols = mask->ndim >= 1 ? mask->shape[mask->ndim - 1] : 1;
    int64_t with_mask[BL_MAX_DIMS];
    bl_tensor *all[4] = {q, k, v, mask};
    bool fits = (rows == 1 || rows == s->Tq) && (cols == 1 || cols == s->Tk) &&
                bl__broadcast_batch(4, all, 2, with_mask) == bd->ndim;
    for (int d = 0; fits && d < bd->ndim; d++) fits = with_mask[d] == bd->shape[d];
    BL_CHECK_RC(fits, "%s: mask %s does not broadcast to the scores (.., %lld, %lld) of q %s", op, bl__shape(mask),
                (long long)s->Tq, (long long)s->Tk, bl__shape(q));
    return BL_OK;
}

/* The fused kernel serves a first-order backward that owes no gradient to an additive mask
 * (input mask_input of the node, when present). */
static bool wants_fused_backward(const bl_node *node, const attention_ctx *c, int mask_input) {
    bool mask_needs_grad = node->n_inputs > mask_input && node->inputs[mask_input]->requires_grad;
    return !bl_grad_enabled() && c->probs && !mask_needs_grad;
}

/* ---- the op -------------------------------------------------------------------------------------- */

static int attention_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const attention_ctx *c = node->ctx;
    bl_tensor *q = node->inputs[0], *k = node->inputs[1], *v = node->inputs[2];
    if (wants_fused_backward(node, c, 3)) {
        bl_tensor *dq = empty_in_layout_of(q, q->ndim, q->shape), *dk = empty_in_layout_of(k, k->ndim, k->shape);
        bl_tensor *dv = empty_in_layout_of(v, v->ndim, v->shape);
        if (!dq || !dk || !dv || attention_backward_kernel(q, k, v, c->probs, g, &c->s, &c->batch, dq, dk, dv))
            return BL_ERR;
        gin[0] = q->requires_grad ? dq : NULL;
        gin[1] = k->requires_grad ? dk : NULL;
        gin[2] = v->requires_grad ? dv : NULL;
        return BL_OK;
    }
    bl_tensor *add_mask = node->n_inputs > 3 ? node->inputs[3] : NULL;
    bool wanted[4] = {q->requires_grad, k->requires_grad, v->requires_grad, add_mask && add_mask->requires_grad};
    return gradients_by_ops(q, k, v, add_mask ? add_mask : c->bool_mask, &c->s, g, wanted, gin);
}

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

    bl_tensor *all[3] = {q, k, v};
    batch_dims bd = {0};
    bd.ndim = bl__broadcast_batch(3, all, 2, bd.shape);
    BL_CHECK(bd.ndim >= 0, "scaled_dot_product_attention: batch dims of q %s, k %s, v %s do not broadcast",
             bl__shape(q), bl__shape(k), bl__shape(v));
    bd.count = 1;
    for (int d = 0; d < bd.ndim; d++) bd.count *= bd.shape[d];
    if (check_mask("scaled_dot_product_attention", q, k, v, mask, &s, &bd)) return NULL;

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
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, bd.shape, sizeof shape);
    shape[bd.ndim] = s.Tq;
    shape[bd.ndim + 1] = s.Dv;
    /* Laid out like q when q has the full batch shape (its dims then match the output's). */
    bl_tensor *out = q->ndim == bd.ndim + 2 ? empty_in_layout_of(q, bd.ndim + 2, shape)
                                            : bl_empty(q->dtype, bd.ndim + 2, shape);
    bl_tensor *probs = NULL;
    if (!out || attention_forward(q, k, v, mask, &s, &bd, out, fused_backward ? &probs : NULL)) return NULL;
    if (!record) return out;
    bl_node *node = bl_autograd_record(out, "scaled_dot_product_attention", attention_backward, n_inputs, inputs,
                                       sizeof(attention_ctx));
    if (!node) return NULL;
    *(attention_ctx *)node->ctx = (attention_ctx){s, bd, boolean_mask ? mask : NULL, probs, 0};
    return out;
}

/* ---- the packed multi-head form ------------------------------------------------------------------ */

/* The (B, H, T, hd) view of H heads stored side by side in the last dim of t (B, T, C), from
 * column `column` on: head h is columns column + h hd up to column + (h + 1) hd. Detached, no node. */
static bl_tensor *head_view(const bl_tensor *t, int64_t heads, int64_t column, int64_t head_dim) {
    bl_tensor *view = bl__view_of(t);
    if (!view) return NULL;
    view->data = (char *)t->data + column * t->stride[2] * (int64_t)bl_dtype_size(t->dtype);
    view->ndim = 4;
    int64_t shape[4] = {t->shape[0], heads, t->shape[1], head_dim};
    int64_t stride[4] = {t->stride[0], head_dim * t->stride[2], t->stride[1], t->stride[2]};
    memcpy(view->shape, shape, sizeof shape);
    memcpy(view->stride, stride, sizeof stride);
    return view;
}

/* q, k, v as differentiable ops on qkv, the way timm splits it: (B, T, 3, H, hd) -> (3, B, H, T, hd). */
static int split_by_ops(bl_tensor *qkv, int64_t heads, bl_tensor **qkv_views) {
    int64_t B = qkv->shape[0], T = qkv->shape[1], hd = qkv->shape[2] / 3 / heads;
    bl_tensor *per_head =
        bl_permute(bl_reshape(qkv, BL_SHAPE(B, T, 3, heads, hd)), (const int[]){2, 0, 3, 1, 4});
    for (int i = 0; i < 3; i++)
        if (!(qkv_views[i] = bl_select(per_head, 0, i))) return BL_ERR;
    return BL_OK;
}

static int packed_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const attention_ctx *c = node->ctx;
    bl_tensor *qkv = node->inputs[0];
    int64_t B = qkv->shape[0], T = qkv->shape[1], D = qkv->shape[2] / 3, hd = D / c->heads;
    if (wants_fused_backward(node, c, 1)) {
        bl_tensor *dqkv = bl_empty(qkv->dtype, 3, qkv->shape);
        bl_tensor *rg = g->stride[2] == 1 ? g : bl_contiguous(g);
        if (!dqkv || !rg) return BL_ERR;
        bl_tensor *views[7] = {head_view(qkv, c->heads, 0, hd),  head_view(qkv, c->heads, D, hd),
                               head_view(qkv, c->heads, 2 * D, hd), head_view(rg, c->heads, 0, hd),
                               head_view(dqkv, c->heads, 0, hd), head_view(dqkv, c->heads, D, hd),
                               head_view(dqkv, c->heads, 2 * D, hd)};
        for (int i = 0; i < 7; i++)
            if (!views[i]) return BL_ERR;
        if (attention_backward_kernel(views[0], views[1], views[2], c->probs, views[3], &c->s, &c->batch, views[4],
                                      views[5], views[6]))
            return BL_ERR;
        gin[0] = dqkv;
        return BL_OK;
    }
    /* Under create_graph (or with a mask that needs its gradient): the same split and attention as
     * ops, the gradients put back together with stack, permute and reshape. */
    bl_tensor *add_mask = node->n_inputs > 1 ? node->inputs[1] : NULL, *views[3], *grads[4] = {NULL};
    if (split_by_ops(qkv, c->heads, views)) return BL_ERR;
    bl_tensor *g4 = bl_transpose(bl_reshape(g, BL_SHAPE(B, T, c->heads, hd)), 1, 2);
    bool wanted[4] = {qkv->requires_grad, qkv->requires_grad, qkv->requires_grad, add_mask && add_mask->requires_grad};
    if (gradients_by_ops(views[0], views[1], views[2], add_mask ? add_mask : c->bool_mask, &c->s, g4, wanted, grads))
        return BL_ERR;
    if (qkv->requires_grad) {
        bl_tensor *stacked = bl_stack(3, grads, 0); /* (3, B, H, T, hd) */
        gin[0] = bl_reshape(bl_permute(stacked, (const int[]){1, 3, 0, 2, 4}), 3, qkv->shape);
        if (!gin[0]) return BL_ERR;
    }
    if (wanted[3]) gin[1] = grads[3];
    return BL_OK;
}

bl_tensor *bl__attention_packed_qkv(bl_tensor *qkv, int64_t heads, bl_tensor *mask, bool causal, double scale) {
    BL_NONNULL(qkv);
    const char *op = "attention_packed_qkv";
    BL_CHECK(bl_dtype_is_float(qkv->dtype), "%s: needs an F32 or F64 tensor, got %s", op, bl_dtype_name(qkv->dtype));
    BL_CHECK(qkv->ndim == 3 && heads > 0 && qkv->shape[2] % (3 * heads) == 0,
             "%s: qkv %s is not (B, T, 3 * D) with D divisible by %lld heads", op, bl__shape(qkv), (long long)heads);
    int64_t B = qkv->shape[0], T = qkv->shape[1], D = qkv->shape[2] / 3, hd = D / heads;
    bl_tensor *packed = qkv->stride[2] == 1 ? qkv : NULL;
    if (!packed) BL_NO_GRAD { packed = bl_contiguous(qkv); }
    bl_tensor *out = bl_empty(qkv->dtype, BL_SHAPE(B, T, D));
    BL_NONNULL(packed, out);
    bl_tensor *q = head_view(packed, heads, 0, hd), *k = head_view(packed, heads, D, hd);
    bl_tensor *v = head_view(packed, heads, 2 * D, hd), *out_view = head_view(out, heads, 0, hd);
    BL_NONNULL(q, k, v, out_view);
    attention_shape s = {T, T, hd, hd, scale > 0 ? scale : 1.0 / sqrt((double)hd), causal};
    batch_dims bd = {2, {B, heads}, B * heads};
    if (check_mask(op, q, k, v, mask, &s, &bd)) return NULL;

    bool boolean_mask = mask && mask_is_boolean(mask);
    bl_tensor *inputs[2] = {qkv, boolean_mask ? NULL : mask};
    int n_inputs = inputs[1] ? 2 : 1;
    bool record = bl_autograd_needed(n_inputs, inputs);
    bl_tensor *probs = NULL;
    if (attention_forward(q, k, v, mask, &s, &bd, out_view, record ? &probs : NULL)) return NULL;
    if (!record) return out;
    bl_node *node = bl_autograd_record(out, op, packed_backward, n_inputs, inputs, sizeof(attention_ctx));
    if (!node) return NULL;
    *(attention_ctx *)node->ctx = (attention_ctx){s, bd, boolean_mask ? mask : NULL, probs, heads};
    return out;
}
