/* Matrix products as ops: bl_matmul (torch.matmul semantics: batch dims broadcast, 1-D operands
 * promoted and their dim removed again) and bl_linear (x W^T + b).
 *
 * Forward hands each operand to the GEMM kernels (backend/cpu/gemm.h) with its own strides, so a
 * transposed view costs no copy, and a batch that shares one right-hand matrix is folded into a
 * single tall product. Backward is written with matmul, transpose, reshape and sum_to, so it is
 * itself differentiable. Linear also has a first-order backward that calls the GEMM kernels
 * directly: the same three products, without the reshape/transpose nodes and with the bias
 * gradient summed in the same pass over g that the weight gradient needs anyway.
 *
 * Each GEMM call is reported to the profiler ("matmul", "linear.fwd", "linear.bwd") with its
 * multiply-adds counted as 2 FLOPs. */
#include "backend/cpu/gemm.h"
#include "ballast/ops.h"
#include "ballast/profile.h"
#include "core/internal.h"
#include "ops/dense.h"

#include <limits.h>
#include <string.h>

/* ---- operand helpers shared with attention.c (declared in dense.h) ---------------------------- */

bool bl__gemm_operand(const bl_tensor *t, bool *trans, int64_t *ld) {
    int64_t rows = t->shape[t->ndim - 2], cols = t->shape[t->ndim - 1];
    int64_t row_stride = t->stride[t->ndim - 2], col_stride = t->stride[t->ndim - 1];
    /* The stride of a size-1 dim is never used to address anything, so it may be anything. */
    if ((cols == 1 || col_stride == 1) && (rows == 1 || row_stride >= cols)) {
        *trans = false;
        *ld = rows == 1 ? (cols > 1 ? cols : 1) : row_stride;
        return true;
    }
    if ((rows == 1 || row_stride == 1) && (cols == 1 || col_stride >= rows)) {
        *trans = true;
        *ld = cols == 1 ? (rows > 1 ? rows : 1) : col_stride;
        return true;
    }
    return false;
}

bl_tensor *bl__gemm_readable(bl_tensor *t) {
    bool trans;
    int64_t ld;
    if (!t || bl__gemm_operand(t, &trans, &ld)) return t;
    bl_tensor *copy = NULL;
    BL_NO_GRAD { copy = bl_contiguous(t); }
    return copy;
}

int bl__broadcast_batch(int n, bl_tensor *const *ts, int matrix_dims, int64_t *batch_shape) {
    int batch_ndim = 0;
    for (int i = 0; i < n; i++)
        if (ts[i]->ndim - matrix_dims > batch_ndim) batch_ndim = ts[i]->ndim - matrix_dims;
    for (int d = 0; d < batch_ndim; d++) batch_shape[d] = 1;
    for (int i = 0; i < n; i++) {
        int own = ts[i]->ndim - matrix_dims;
        for (int d = 0; d < own; d++) {
            int64_t size = ts[i]->shape[d], *slot = &batch_shape[batch_ndim - own + d];
            if (size == 1) continue;
            if (*slot != 1 && *slot != size) return -1;
            *slot = size;
        }
    }
    return batch_ndim;
}

void bl__batch_offsets(const bl_tensor *t, int matrix_dims, int batch_ndim, const int64_t *batch_shape,
                       int64_t *offsets) {
    int own = t->ndim - matrix_dims, shift = batch_ndim - own;
    int64_t count = 1, idx[BL_MAX_DIMS] = {0};
    for (int d = 0; d < batch_ndim; d++) count *= batch_shape[d];
    for (int64_t i = 0; i < count; i++) {
        int64_t offset = 0;
        for (int d = 0; d < own; d++)
            if (t->shape[d] != 1) offset += idx[shift + d] * t->stride[d];
        offsets[i] = offset;
        for (int d = batch_ndim - 1; d >= 0 && ++idx[d] == batch_shape[d]; d--) idx[d] = 0;
    }
}

/* Whether all of t's dims but the last (batch dims and rows) walk memory as one sequence of
 * equally spaced rows, so that t reads as a single (rows, K) row-major matrix with row stride
 * *ld. True for any contiguous tensor, and for row slices of one. */
static bool rows_collapse(const bl_tensor *t, int64_t *ld) {
    int64_t K = t->shape[t->ndim - 1], next_stride = 0;
    bool seen = false;
    if (K > 1 && t->stride[t->ndim - 1] != 1) return false;
    *ld = K > 1 ? K : 1;
    for (int d = t->ndim - 2; d >= 0; d--) {
        if (t->shape[d] == 1) continue;
        if (!seen) {
            *ld = t->stride[d];
            seen = true;
        } else if (t->stride[d] != next_stride) {
            return false;
        }
        next_stride = t->stride[d] * t->shape[d];
    }
    return *ld >= K && *ld >= 1;
}

static int64_t batch_count(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

static bool fits_blas(int64_t n) { return n <= INT_MAX; }

/* ---- matmul ------------------------------------------------------------------------------------ */

static bl_tensor *matmul_batched(bl_tensor *a, bl_tensor *b);

/* t, summed down to the shape of `like` when broadcasting made it bigger. */
static bl_tensor *reduce_like(bl_tensor *t, const bl_tensor *like) {
    if (!t || bl_same_shape(t, like)) return t;
    return bl_sum_to(t, like->ndim, like->shape);
}

/* d(a @ b) = g @ b^T for a and a^T @ g for b, each summed over the batch dims it was broadcast
 * along. When b has no batch of its own, a^T @ g over the whole batch is one product of the
 * batch-folded matrices instead of a batch of products and a sum. */
static int matmul_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *a = node->inputs[0], *b = node->inputs[1];
    if (a->requires_grad) {
        gin[0] = reduce_like(matmul_batched(g, bl_transpose(b, -2, -1)), a);
        if (!gin[0]) return BL_ERR;
    }
    if (b->requires_grad) {
        int64_t a_batch = batch_count(a->ndim - 2, a->shape), b_batch = batch_count(b->ndim - 2, b->shape);
        int64_t g_batch = batch_count(g->ndim - 2, g->shape);
        if (b_batch == 1 && a_batch == g_batch && g_batch > 1) {
            int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
            bl_tensor *a2 = bl_reshape(a, 2, (int64_t[]){a_batch * M, K});
            bl_tensor *g2 = bl_reshape(g, 2, (int64_t[]){g_batch * M, N});
            gin[1] = bl_reshape(matmul_batched(bl_transpose(a2, 0, 1), g2), b->ndim, b->shape);
        } else {
            gin[1] = reduce_like(matmul_batched(bl_transpose(a, -2, -1), g), b);
        }
        if (!gin[1]) return BL_ERR;
    }
    return BL_OK;
}

/* a (.., M, K) @ b (.., K, N) -> (batch.., M, N), both with at least 2 dims. */
static bl_tensor *matmul_batched(bl_tensor *a, bl_tensor *b) {
    BL_NONNULL(a, b);
    int64_t M = a->shape[a->ndim - 2], K = a->shape[a->ndim - 1], N = b->shape[b->ndim - 1];
    BL_CHECK(b->shape[b->ndim - 2] == K, "bl_matmul: inner dims differ: %s @ %s", bl__shape(a), bl__shape(b));
    int64_t shape[BL_MAX_DIMS];
    bl_tensor *pair[2] = {a, b};
    int batch_ndim = bl__broadcast_batch(2, pair, 2, shape);
    BL_CHECK(batch_ndim >= 0, "bl_matmul: batch dims of %s and %s do not broadcast", bl__shape(a), bl__shape(b));
    shape[batch_ndim] = M;
    shape[batch_ndim + 1] = N;
    int64_t batch = batch_count(batch_ndim, shape);
    BL_CHECK(fits_blas(batch * M) && fits_blas(N) && fits_blas(K), "bl_matmul: %s @ %s is too large for the BLAS",
             bl__shape(a), bl__shape(b));
    bl_tensor *out = bl_empty(a->dtype, batch_ndim + 2, shape);
    bl_tensor *ra = bl__gemm_readable(a), *rb = bl__gemm_readable(b);
    BL_NONNULL(out, ra, rb);

    bl_gemm_batch g = {.M = M, .N = N, .K = K, .ldc = N, .batch = batch, .c_stride = M * N};
    bl__gemm_operand(ra, &g.ta, &g.lda);
    bl__gemm_operand(rb, &g.tb, &g.ldb);
    int64_t folded_ld;
    if (batch_count(b->ndim - 2, b->shape) == 1 && !g.ta && rows_collapse(ra, &folded_ld)) {
        g.M = batch * M; /* one shared right-hand matrix: a single (batch * M, K) @ (K, N) */
        g.lda = folded_ld;
        g.batch = 1;
    } else if (batch > 1) {
        int64_t *a_offset = bl_arena_alloc((size_t)batch * sizeof *a_offset);
        int64_t *b_offset = bl_arena_alloc((size_t)batch * sizeof *b_offset);
        BL_NONNULL(a_offset, b_offset);
        bl__batch_offsets(ra, 2, batch_ndim, shape, a_offset);
        bl__batch_offsets(rb, 2, batch_ndim, shape, b_offset);
        g.a_offset = a_offset;
        g.b_offset = b_offset;
    }
    double t0 = bl_profile_start();
    if (out->dtype == BL_F32)
        bl_gemm_batched_f32(&g, 1.0f, ra->data, rb->data, 0.0f, out->data);
    else
        bl_gemm_batched_f64(&g, 1.0, ra->data, rb->data, 0.0, out->data);
    bl_profile_stop("matmul", t0, 2.0 * (double)batch * (double)M * (double)N * (double)K);

    if (bl_autograd_needed(2, pair) && !bl_autograd_record(out, "matmul", matmul_backward, 2, pair, 0))
        return NULL;
    return out;
}

bl_tensor *bl_matmul(bl_tensor *a, bl_tensor *b) {
    BL_NONNULL(a, b);
    BL_CHECK(bl_dtype_is_float(a->dtype) && a->dtype == b->dtype,
             "bl_matmul: needs two F32 or two F64 tensors, got %s and %s", bl_dtype_name(a->dtype),
             bl_dtype_name(b->dtype));
    BL_CHECK(a->ndim >= 1 && b->ndim >= 1, "bl_matmul: operands need at least 1 dim, got %s @ %s", bl__shape(a),
             bl__shape(b));
    BL_CHECK(a->shape[a->ndim - 1] == b->shape[b->ndim >= 2 ? b->ndim - 2 : 0],
             "bl_matmul: inner dims differ: %s @ %s", bl__shape(a), bl__shape(b));
    /* 1-D operands, as torch.matmul: a vector on the left is a row (1, K), on the right a column
     * (K, 1), and the added dim is removed from the result. */
    if (a->ndim == 1 && b->ndim == 1)
        return bl_reshape(matmul_batched(bl_unsqueeze(a, 0), bl_unsqueeze(b, 1)), 0, (int64_t[]){1});
    if (a->ndim == 1) return bl_squeeze(matmul_batched(bl_unsqueeze(a, 0), b), -2);
    if (b->ndim == 1) return bl_squeeze(matmul_batched(a, bl_unsqueeze(b, 1)), -1);
    return matmul_batched(a, b);
}

/* ---- linear ------------------------------------------------------------------------------------ */

/* y = x W^T + b: dx = g W, dW = g^T x over all leading dims folded into rows, db = sum of g. */
static int linear_backward_with_ops(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1];
    bl_tensor *bias = node->n_inputs > 2 ? node->inputs[2] : NULL;
    int64_t out_features = weight->shape[0], in_features = weight->shape[1];
    if (x->requires_grad) {
        gin[0] = bl_matmul(g, weight);
        if (!gin[0]) return BL_ERR;
    }
    if (weight->requires_grad) {
        int64_t rows = batch_count(x->ndim - 1, x->shape);
        bl_tensor *g2 = bl_reshape(g, 2, (int64_t[]){rows, out_features});
        bl_tensor *x2 = bl_reshape(x, 2, (int64_t[]){rows, in_features});
        gin[1] = bl_matmul(bl_transpose(g2, 0, 1), x2);
        if (!gin[1]) return BL_ERR;
    }
    if (bias && bias->requires_grad) {
        gin[2] = bl_sum_to(g, 1, &out_features);
        if (!gin[2]) return BL_ERR;
    }
    return BL_OK;
}

/* db (N) (=) the column sums of g (rows, N) with row stride ldg, accumulated in double per
 * column so that the sum over thousands of rows keeps float precision. Columns are split over
 * the threads in blocks of 16, one cache line of floats per row. */
#define DEFINE_COLUMN_SUMS(T)                                                                          \
    static void column_sums_##T(int64_t rows, int64_t N, const T *g, int64_t ldg, T *db) {             \
        _Pragma("omp parallel for schedule(static) if (rows * N > 65536)")                             \
        for (int64_t j0 = 0; j0 < N; j0 += 16) {                                                       \
            int64_t width = N - j0 < 16 ? N - j0 : 16;                                                 \
            double acc[16] = {0};                                                                      \
            for (int64_t r = 0; r < rows; r++)                                                         \
                for (int64_t j = 0; j < width; j++) acc[j] += g[r * ldg + j0 + j];                     \
            for (int64_t j = 0; j < width; j++) db[j0 + j] = (T)acc[j];                                \
        }                                                                                              \
    }
DEFINE_COLUMN_SUMS(float)
DEFINE_COLUMN_SUMS(double)

/* The same gradients from the GEMM kernels, for a backward that is not itself recorded. x and g
 * are read as (rows, in) and (rows, out) matrices in place when their rows are evenly spaced. */
static int linear_backward_fused(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1];
    bl_tensor *bias = node->n_inputs > 2 ? node->inputs[2] : NULL;
    int64_t out_features = weight->shape[0], in_features = weight->shape[1];
    int64_t rows = batch_count(x->ndim - 1, x->shape), g_ld, x_ld = in_features;
    bl_tensor *rg = g, *rx = x, *rw = bl__gemm_readable(weight);
    if (!rows_collapse(g, &g_ld)) {
        rg = bl_contiguous(g);
        g_ld = out_features;
    }
    if (weight->requires_grad && !rows_collapse(x, &x_ld)) {
        rx = bl_contiguous(bl_detach(x));
        x_ld = in_features;
    }
    bl_tensor *dx = x->requires_grad ? bl_empty(x->dtype, x->ndim, x->shape) : NULL;
    bl_tensor *dw = weight->requires_grad ? bl_empty(weight->dtype, 2, weight->shape) : NULL;
    bl_tensor *db = bias && bias->requires_grad ? bl_empty(bias->dtype, 1, bias->shape) : NULL;
    if (!rg || !rx || !rw || (x->requires_grad && !dx) || (weight->requires_grad && !dw) ||
        (bias && bias->requires_grad && !db))
        return BL_ERR;
    bool w_trans;
    int64_t w_ld;
    bl__gemm_operand(rw, &w_trans, &w_ld);
    bool f32 = x->dtype == BL_F32;
    double t0 = bl_profile_start();
    /* dx (rows, in) = g (rows, out) @ W (out, in) */
    if (dx && f32)
        bl_gemm_f32(false, w_trans, rows, in_features, out_features, 1.0f, rg->data, g_ld, rw->data, w_ld, 0.0f,
                    dx->data, in_features);
    else if (dx)
        bl_gemm_f64(false, w_trans, rows, in_features, out_features, 1.0, rg->data, g_ld, rw->data, w_ld, 0.0,
                    dx->data, in_features);
    /* dW (out, in) = g^T (out, rows) @ x (rows, in) */
    if (dw && f32)
        bl_gemm_f32(true, false, out_features, in_features, rows, 1.0f, rg->data, g_ld, rx->data, x_ld, 0.0f,
                    dw->data, in_features);
    else if (dw)
        bl_gemm_f64(true, false, out_features, in_features, rows, 1.0, rg->data, g_ld, rx->data, x_ld, 0.0,
                    dw->data, in_features);
    if (db && f32) column_sums_float(rows, out_features, rg->data, g_ld, db->data);
    else if (db) column_sums_double(rows, out_features, rg->data, g_ld, db->data);
    double products = (dx ? 1.0 : 0.0) + (dw ? 1.0 : 0.0);
    bl_profile_stop("linear.bwd", t0, 2.0 * products * (double)rows * (double)in_features * (double)out_features);
    gin[0] = dx;
    gin[1] = dw;
    if (bias) gin[2] = db;
    return BL_OK;
}

static int linear_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    if (bl_grad_enabled()) return linear_backward_with_ops(node, g, gin);
    return linear_backward_fused(node, g, gin);
}

bl_tensor *bl_linear(bl_tensor *x, bl_tensor *weight, bl_tensor *bias) {
    BL_NONNULL(x, weight);
    BL_CHECK(bl_dtype_is_float(x->dtype) && x->dtype == weight->dtype && (!bias || bias->dtype == x->dtype),
             "bl_linear: x, weight and bias need one float dtype, got %s, %s and %s", bl_dtype_name(x->dtype),
             bl_dtype_name(weight->dtype), bias ? bl_dtype_name(bias->dtype) : "none");
    BL_CHECK(weight->ndim == 2, "bl_linear: weight must be (out_features, in_features), got %s", bl__shape(weight));
    int64_t out_features = weight->shape[0], in_features = weight->shape[1];
    BL_CHECK(x->ndim >= 1 && x->shape[x->ndim - 1] == in_features,
             "bl_linear: input %s does not end in in_features = %lld of weight %s", bl__shape(x),
             (long long)in_features, bl__shape(weight));
    BL_CHECK(!bias || (bias->ndim == 1 && bias->shape[0] == out_features),
             "bl_linear: bias %s does not match out_features = %lld", bl__shape(bias), (long long)out_features);
    int64_t rows = batch_count(x->ndim - 1, x->shape);
    BL_CHECK(fits_blas(rows) && fits_blas(in_features) && fits_blas(out_features),
             "bl_linear: %s x %s is too large for the BLAS", bl__shape(x), bl__shape(weight));

    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out_features;
    bl_tensor *out = bl_empty(x->dtype, x->ndim, shape);
    int64_t x_ld;
    bl_tensor *rx = x;
    if (!rows_collapse(x, &x_ld)) {
        BL_NO_GRAD { rx = bl_contiguous(x); }
        x_ld = in_features > 1 ? in_features : 1;
    }
    bl_tensor *rw = bl__gemm_readable(weight);
    BL_NONNULL(out, rx, rw);
    bool w_trans;
    int64_t w_ld;
    bl__gemm_operand(rw, &w_trans, &w_ld);

    double t0 = bl_profile_start();
    /* The bias is written into every row first, and the product accumulates onto it. */
    bool has_bias = bias && rows > 0;
    if (has_bias) {
        bl_tensor *out2 = bl__wrap(out->dtype, 2, (int64_t[]){rows, out_features}, out->data);
        BL_NONNULL(out2);
        BL_CHECK(bl_copy_(out2, bias) == BL_OK, "bl_linear: could not broadcast bias %s", bl__shape(bias));
    }
    /* op(B) = W^T: a row-major W is read transposed, a transposed view of W^T as it is. */
    if (out->dtype == BL_F32)
        bl_gemm_f32(false, !w_trans, rows, out_features, in_features, 1.0f, rx->data, x_ld, rw->data, w_ld,
                    has_bias ? 1.0f : 0.0f, out->data, out_features);
    else
        bl_gemm_f64(false, !w_trans, rows, out_features, in_features, 1.0, rx->data, x_ld, rw->data, w_ld,
                    has_bias ? 1.0 : 0.0, out->data, out_features);
    bl_profile_stop("linear.fwd", t0, 2.0 * (double)rows * (double)in_features * (double)out_features);

    bl_tensor *inputs[3] = {x, weight, bias};
    int n = bias ? 3 : 2;
    if (bl_autograd_needed(n, inputs) && !bl_autograd_record(out, "linear", linear_backward, n, inputs, 0))
        return NULL;
    return out;
}
