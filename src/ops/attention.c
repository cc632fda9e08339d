/* Scaled dot-product attention: softmax(q k^T * scale + mask) v.
 *
 * Two paths with one meaning. When gradients are needed, the op is the composition matmul ->
 * scale -> mask -> softmax -> matmul, so autograd (and second order) come from those ops. When
 * they are not (inference, or the forward evaluations of a gradient check), a fused kernel walks
 * the (batch, block of query rows) pairs in parallel: for each it computes the scores of a few
 * query rows into a small per-thread buffer, masks them, normalizes them in place and multiplies
 * by v, so the (Tq, Tk) score matrices of the whole batch never exist in memory. */
#include "backend/cpu/gemm.h"
#include "ballast/ops.h"
#include "core/internal.h"
#include "ops/dense.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Scores per thread, in elements (a block of query rows times Tk): small enough to stay in L2. */
#define SCORE_BLOCK_ELEMS 16384

typedef struct {
    int64_t Tq, Tk, D, Dv;
    double scale;
    bool causal;
} attention_shape;

/* keep (Tq, Tk) = key j <= query i, the causal pattern (top-left aligned, as PyTorch). */
static bl_tensor *causal_keep_mask(int64_t Tq, int64_t Tk) {
    bl_tensor *keep = bl_empty(BL_BOOL, 2, (int64_t[]){Tq, Tk});
    if (!keep) return NULL;
    uint8_t *k = keep->data;
    for (int64_t i = 0; i < Tq; i++)
        for (int64_t j = 0; j < Tk; j++) k[i * Tk + j] = j <= i;
    return keep;
}

static bool mask_is_boolean(const bl_tensor *mask) { return mask->dtype == BL_BOOL || mask->dtype == BL_U8; }

static bl_tensor *attention_composite(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask,
                                      const attention_shape *s) {
    bl_tensor *scores = bl_mul_scalar(bl_matmul(q, bl_transpose(k, -2, -1)), s->scale);
    bl_tensor *masked_out = bl_scalar(q->dtype, -INFINITY);
    if (mask) scores = mask_is_boolean(mask) ? bl_where(mask, scores, masked_out) : bl_add(scores, mask);
    if (s->causal) scores = bl_where(causal_keep_mask(s->Tq, s->Tk), scores, masked_out);
    return bl_matmul(bl_softmax(scores, -1), v);
}

/* ---- fused forward ------------------------------------------------------------------------------ */

/* Where the kernel finds one batch entry's matrices: element offsets per batch index, and how each
 * matrix is read by the GEMM kernels. */
typedef struct {
    const int64_t *offset;
    bool trans;
    int64_t ld;
} operand;

typedef struct {
    const int64_t *offset;
    int64_t row_stride, col_stride; /* 0 on broadcast dims */
    bool boolean;
} mask_operand;

/* Adds the mask and the causal pattern to a block of scores (rows, Tk) for queries i0.. */
#define APPLY_MASK(T)                                                                                  \
    static void apply_mask_##T(T *scores, int64_t rows, int64_t i0, int64_t Tk, const mask_operand *m,  \
                               const void *mask_base, bool causal) {                                   \
        for (int64_t r = 0; r < rows; r++) {                                                           \
            T *row = scores + r * Tk;                                                                  \
            if (mask_base) {                                                                           \
                int64_t base = (i0 + r) * m->row_stride;                                               \
                if (m->boolean) {                                                                      \
                    const uint8_t *keep = (const uint8_t *)mask_base + base;                           \
                    for (int64_t j = 0; j < Tk; j++)                                                   \
                        if (!keep[j * m->col_stride]) row[j] = -INFINITY;                              \
                } else {                                                                               \
                    const T *add = (const T *)mask_base + base;                                        \
                    for (int64_t j = 0; j < Tk; j++) row[j] += add[j * m->col_stride];                 \
                }                                                                                      \
            }                                                                                          \
            if (causal)                                                                                \
                for (int64_t j = i0 + r + 1; j < Tk; j++) row[j] = -INFINITY;                          \
        }                                                                                              \
    }
APPLY_MASK(float)
APPLY_MASK(double)

/* out (batch, Tq, Dv) = softmax(q k^T * scale + mask) v, per batch entry b:
 * q (Tq, D), k (Tk, D), v (Tk, Dv) at their offsets[b]; mask (Tq, Tk) or NULL. Query rows go in
 * blocks of `block`; scratch holds block * Tk elements per thread. */
#define ATTENTION_KERNEL(T, GEMM, SOFTMAX_ROWS)                                                        \
    static void attention_fwd_##T(int64_t batch, const attention_shape *s, int64_t block, const T *q,  \
                                  operand qo, const T *k, operand ko, const T *v, operand vo,          \
                                  const void *mask, const mask_operand *mo, T *out, T *scratch) {      \
        int64_t blocks_per_entry = (s->Tq + block - 1) / block, tasks = batch * blocks_per_entry;      \
        _Pragma("omp parallel for schedule(static) if (tasks > 1)")                                    \
        for (int64_t t = 0; t < tasks; t++) {                                                          \
            int64_t b = t / blocks_per_entry, i0 = (t % blocks_per_entry) * block;                     \
            int64_t rows = s->Tq - i0 < block ? s->Tq - i0 : block;                                    \
            T *scores = scratch + thread_index() * block * s->Tk;                                      \
            const T *qb = q + qo.offset[b] + i0 * (qo.trans ? 1 : qo.ld);                              \
            /* scores = q_rows k^T: a row-major k is read transposed, a transposed view as it is */    \
            GEMM(qo.trans, !ko.trans, rows, s->Tk, s->D, (T)s->scale, qb, qo.ld, k + ko.offset[b], ko.ld, \
                 0, scores, s->Tk);                                                                    \
            const void *mb = mask ? (const char *)mask + mo->offset[b] * (mo->boolean ? 1 : sizeof(T)) : NULL; \
            apply_mask_##T(scores, rows, i0, s->Tk, mo, mb, s->causal);                                \
            SOFTMAX_ROWS(rows, s->Tk, scores, scores);                                                 \
            GEMM(false, vo.trans, rows, s->Dv, s->Tk, 1, scores, s->Tk, v + vo.offset[b], vo.ld, 0,    \
                 out + (b * s->Tq + i0) * s->Dv, s->Dv);                                               \
        }                                                                                              \
    }

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

ATTENTION_KERNEL(float, bl_gemm_f32, cpu_softmax_rows_f32)
ATTENTION_KERNEL(double, bl_gemm_f64, ref_softmax_rows_f64)

static int64_t *offsets_for(const bl_tensor *t, int batch_ndim, const int64_t *batch_shape, int64_t batch) {
    int64_t *offsets = bl_arena_alloc((size_t)(batch > 0 ? batch : 1) * sizeof *offsets);
    if (offsets) bl__batch_offsets(t, 2, batch_ndim, batch_shape, offsets);
    return offsets;
}

static bl_tensor *attention_fused(bl_tensor *q, bl_tensor *k, bl_tensor *v, bl_tensor *mask,
                                  const attention_shape *s, int batch_ndim, const int64_t *batch_shape) {
    int64_t shape[BL_MAX_DIMS], batch = 1;
    memcpy(shape, batch_shape, (size_t)batch_ndim * sizeof *shape);
    for (int d = 0; d < batch_ndim; d++) batch *= batch_shape[d];
    shape[batch_ndim] = s->Tq;
    shape[batch_ndim + 1] = s->Dv;
    bl_tensor *out = bl_empty(q->dtype, batch_ndim + 2, shape);
    bl_tensor *rq = bl__gemm_readable(q), *rk = bl__gemm_readable(k), *rv = bl__gemm_readable(v);
    BL_NONNULL(out, rq, rk, rv);
    operand qo = {offsets_for(rq, batch_ndim, batch_shape, batch)}, ko = {offsets_for(rk, batch_ndim, batch_shape, batch)},
            vo = {offsets_for(rv, batch_ndim, batch_shape, batch)};
    BL_NONNULL(qo.offset, ko.offset, vo.offset);
    bl__gemm_operand(rq, &qo.trans, &qo.ld);
    bl__gemm_operand(rk, &ko.trans, &ko.ld);
    bl__gemm_operand(rv, &vo.trans, &vo.ld);

    mask_operand mo = {0};
    if (mask) {
        /* Read the mask as (batch.., Tq, Tk) with size-1 dims repeating. */
        bl_tensor *m = bl__view_of(mask);
        BL_NONNULL(m);
        while (m->ndim < 2) {
            memmove(m->shape + 1, m->shape, (size_t)m->ndim * sizeof *m->shape);
            memmove(m->stride + 1, m->stride, (size_t)m->ndim * sizeof *m->stride);
            m->shape[0] = 1;
            m->stride[0] = 0;
            m->ndim++;
        }
        mo.offset = offsets_for(m, batch_ndim, batch_shape, batch);
        BL_NONNULL(mo.offset);
        mo.row_stride = m->shape[m->ndim - 2] == 1 ? 0 : m->stride[m->ndim - 2];
        mo.col_stride = m->shape[m->ndim - 1] == 1 ? 0 : m->stride[m->ndim - 1];
        mo.boolean = mask_is_boolean(mask);
    }
    int64_t block = SCORE_BLOCK_ELEMS / (s->Tk > 0 ? s->Tk : 1);
    block = block < 1 ? 1 : block > s->Tq ? (s->Tq > 0 ? s->Tq : 1) : block;
    void *scratch = bl_arena_alloc((size_t)(max_threads() * block * s->Tk) * bl_dtype_size(q->dtype));
    BL_NONNULL(scratch);
    if (q->dtype == BL_F32)
        attention_fwd_float(batch, s, block, rq->data, qo, rk->data, ko, rv->data, vo, mask ? mask->data : NULL, &mo,
                            out->data, scratch);
    else
        attention_fwd_double(batch, s, block, rq->data, qo, rk->data, ko, rv->data, vo, mask ? mask->data : NULL, &mo,
                             out->data, scratch);
    return out;
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
    int64_t batch_shape[BL_MAX_DIMS];
    int batch_ndim = bl__broadcast_batch(3, all, 2, batch_shape);
    BL_CHECK(batch_ndim >= 0, "scaled_dot_product_attention: batch dims of q %s, k %s, v %s do not broadcast",
             bl__shape(q), bl__shape(k), bl__shape(v));
    if (mask) {
        BL_CHECK(mask_is_boolean(mask) || mask->dtype == q->dtype,
                 "scaled_dot_product_attention: mask must be BOOL/U8 (true = keep) or %s (added), got %s",
                 bl_dtype_name(q->dtype), bl_dtype_name(mask->dtype));
        int64_t rows = mask->ndim >= 2 ? mask->shape[mask->ndim - 2] : 1;
        int64_t cols = mask->ndim >= 1 ? mask->shape[mask->ndim - 1] : 1;
        int64_t with_mask[BL_MAX_DIMS];
        bool fits = (rows == 1 || rows == s.Tq) && (cols == 1 || cols == s.Tk) &&
                    bl__broadcast_batch(4, all, 2, with_mask) == batch_ndim;
        for (int d = 0; fits && d < batch_ndim; d++) fits = with_mask[d] == batch_shape[d];
        BL_CHECK(fits, "scaled_dot_product_attention: mask %s does not broadcast to the scores (.., %lld, %lld) of q %s",
                 bl__shape(mask), (long long)s.Tq, (long long)s.Tk, bl__shape(q));
    }

    bl_tensor *differentiable[4] = {q, k, v, mask && !mask_is_boolean(mask) ? mask : NULL};
    if (bl_autograd_needed(4, differentiable)) return attention_composite(q, k, v, mask, &s);
    return attention_fused(q, k, v, mask, &s, batch_ndim, batch_shape);
}
