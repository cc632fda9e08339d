/* Matrix products as ops: bl_matmul (torch.matmul semantics: batch dims broadcast, 1-D operands
 * promoted and their dim removed again), bl_linear (x W^T + b), and the transformer MLP
 * linear -> GELU -> linear as one op (bl__mlp_gelu, see dense.h).
 *
 * Forward hands each operand to the GEMM kernels (backend/cpu/gemm.h) with its own strides, so a
 * transposed view costs no copy, and a batch that shares one right-hand matrix is folded into a
 * single tall product. Backward is written with matmul, transpose, reshape and sum_to, so it is
 * itself differentiable. Linear also has a first-order backward that calls the GEMM kernels
 * directly: the same three products, without the reshape/transpose nodes and with the bias
 * gradient summed in the same pass over g that the weight gradient needs anyway.
 *
 * The MLP op exists for memory: a training step keeps every activation an op saves until the step
 * ends, and the three-op MLP would keep fc1's output, the GELU's output, and in backward the
 * gradients of both, eight hidden-sized (4x the model width) tensors per block. Fused, it keeps
 * fc1's output only and recomputes the GELU from it. Forward and backward run in row chunks, each
 * chunk on one thread from its first product to its last (so its activations stay in that core's
 * cache, and the only barrier is at the end), and their scratch is returned to the arena before
 * the op returns.
 *
 * Each GEMM call is reported to the profiler ("matmul", "linear.fwd", "linear.bwd", "mlp.fwd",
 * "mlp.bwd") with its multiply-adds counted as 2 FLOPs. */
#include "backend/cpu/gemm.h"
#include "backend/cpu/unary.h"
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

/* ---- helpers for the fused kernels --------------------------------------------------------------- */

/* C = op(A) op(B) + beta C on F32 or F64 data (see gemm.h). */
static void gemm_any(bl_dtype dt, bool ta, bool tb, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
                     const void *B, int64_t ldb, double beta, void *C, int64_t ldc) {
    if (dt == BL_F32)
        bl_gemm_f32(ta, tb, M, N, K, 1.0f, A, lda, B, ldb, (float)beta, C, ldc);
    else
        bl_gemm_f64(ta, tb, M, N, K, 1.0, A, lda, B, ldb, beta, C, ldc);
}

/* acc (N) += the column sums of g (rows, N) with row stride ldg, on the calling thread. Each row
 * is one vector pass over a tile of float partial sums that stays in L1; every ROW_BLOCK rows the
 * partial sums are added into acc, in double, so that sums over thousands of rows keep float
 * precision. */
#define ROW_BLOCK 64
#define COLUMN_TILE 1024
static void add_column_sums(bl_dtype dt, int64_t rows, int64_t N, const void *g, int64_t ldg, double *acc) {
    if (dt == BL_F64) {
        for (int64_t r = 0; r < rows; r++)
            for (int64_t j = 0; j < N; j++) acc[j] += ((const double *)g)[r * ldg + j];
        return;
    }
    float part[COLUMN_TILE];
    for (int64_t j0 = 0; j0 < N; j0 += COLUMN_TILE) {
        int64_t width = N - j0 < COLUMN_TILE ? N - j0 : COLUMN_TILE;
        for (int64_t r0 = 0; r0 < rows; r0 += ROW_BLOCK) {
            int64_t r1 = rows - r0 < ROW_BLOCK ? rows : r0 + ROW_BLOCK;
            memset(part, 0, (size_t)width * sizeof *part);
            for (int64_t r = r0; r < r1; r++) {
                const float *row = (const float *)g + r * ldg + j0;
#pragma omp simd
                for (int64_t j = 0; j < width; j++) part[j] += row[j];
            }
            for (int64_t j = 0; j < width; j++) acc[j0 + j] += part[j];
        }
    }
}

/* The same over all threads: each sums its own share of the rows into its own partial sums,
 * which are then added up in thread order (so the result does not depend on timing). */
static int add_column_sums_parallel(bl_dtype dt, int64_t rows, int64_t N, const void *g, int64_t ldg, double *acc) {
    int threads = bl__max_threads();
    if (threads < 2 || rows * N < 65536) {
        add_column_sums(dt, rows, N, g, ldg, acc);
        return BL_OK;
    }
    double *parts = bl_arena_alloc((size_t)(threads * N) * sizeof *parts);
    if (!parts) return BL_ERR;
    memset(parts, 0, (size_t)(threads * N) * sizeof *parts);
    int64_t share = (rows + threads - 1) / threads;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < threads; t++) {
        int64_t r0 = share * t, n = rows - r0 < share ? rows - r0 : share;
        if (n > 0)
            add_column_sums(dt, n, N, (const char *)g + (size_t)(r0 * ldg) * bl_dtype_size(dt), ldg, parts + t * N);
    }
    for (int t = 0; t < threads; t++)
        for (int64_t j = 0; j < N; j++) acc[j] += parts[t * N + j];
    return BL_OK;
}

/* out (rows, n) (=) bias (n, contiguous) in every row; out contiguous. Rows are split over the
 * threads when `parallel` and there are many. */
static void broadcast_rows(bl_dtype dt, int64_t rows, int64_t n, const void *bias, void *out, bool parallel) {
    size_t row_bytes = (size_t)n * bl_dtype_size(dt);
#pragma omp parallel for schedule(static) if (parallel && (size_t)rows * row_bytes > ((size_t)1 << 20))
    for (int64_t r = 0; r < rows; r++) memcpy((char *)out + (size_t)r * row_bytes, bias, row_bytes);
}

/* A zeroed double accumulator of n entries in the arena. */
static double *zeroed_sums(int64_t n) {
    double *acc = bl_arena_alloc((size_t)(n > 0 ? n : 1) * sizeof *acc);
    if (acc) memset(acc, 0, (size_t)n * sizeof *acc);
    return acc;
}

/* t (1-D, contiguous, made here) (=) acc, rounded to t's dtype. */
static void store_sums(const double *acc, bl_tensor *t) {
    for (int64_t j = 0; j < t->shape[0]; j++) {
        if (t->dtype == BL_F32) ((float *)t->data)[j] = (float)acc[j];
        else ((double *)t->data)[j] = acc[j];
    }
}

/* t's rows as one (rows, cols) matrix with row stride *ld: t itself when its rows are evenly spaced,
 * else a contiguous copy outside the graph. */
static bl_tensor *as_row_matrix(bl_tensor *t, int64_t *ld) {
    if (rows_collapse(t, ld)) return t;
    int64_t cols = t->shape[t->ndim - 1];
    *ld = cols > 1 ? cols : 1;
    bl_tensor *copy = NULL;
    BL_NO_GRAD { copy = bl_contiguous(bl_detach(t)); }
    return copy;
}

/* A 1-D tensor's values, contiguous (a bias). */
static bl_tensor *contiguous_vector(bl_tensor *t) { return t ? as_row_matrix(t, &(int64_t){0}) : NULL; }

/* The same gradients from the GEMM kernels, for a backward that is not itself recorded. x and g
 * are read as (rows, in) and (rows, out) matrices in place when their rows are evenly spaced. */
static int linear_backward_fused(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *x = node->inputs[0], *weight = node->inputs[1];
    bl_tensor *bias = node->n_inputs > 2 ? node->inputs[2] : NULL;
    int64_t out_features = weight->shape[0], in_features = weight->shape[1];
    int64_t rows = batch_count(x->ndim - 1, x->shape), g_ld, x_ld = in_features;
    bl_tensor *rg = as_row_matrix(g, &g_ld), *rx = weight->requires_grad ? as_row_matrix(x, &x_ld) : x;
    bl_tensor *rw = bl__gemm_readable(weight);
    bl_tensor *dx = x->requires_grad ? bl_empty(x->dtype, x->ndim, x->shape) : NULL;
    bl_tensor *dw = weight->requires_grad ? bl_empty(weight->dtype, 2, weight->shape) : NULL;
    bl_tensor *db = bias && bias->requires_grad ? bl_empty(bias->dtype, 1, bias->shape) : NULL;
    double *db_acc = db ? zeroed_sums(out_features) : NULL;
    if (!rg || !rx || !rw || (x->requires_grad && !dx) || (weight->requires_grad && !dw) || (db && !db_acc))
        return BL_ERR;
    bool w_trans;
    int64_t w_ld;
    bl__gemm_operand(rw, &w_trans, &w_ld);
    double t0 = bl_profile_start();
    /* dx (rows, in) = g (rows, out) @ W (out, in) */
    if (dx) gemm_any(x->dtype, false, w_trans, rows, in_features, out_features, rg->data, g_ld, rw->data, w_ld, 0, dx->data,
                     in_features);
    /* dW (out, in) = g^T (out, rows) @ x (rows, in) */
    if (dw) gemm_any(x->dtype, true, false, out_features, in_features, rows, rg->data, g_ld, rx->data, x_ld, 0, dw->data,
                     in_features);
    if (db) {
        if (add_column_sums_parallel(x->dtype, rows, out_features, rg->data, g_ld, db_acc)) return BL_ERR;
        store_sums(db_acc, db);
    }
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

    bl_tensor *rb = contiguous_vector(bias);
    if (bias && !rb) return NULL;
    double t0 = bl_profile_start();
    /* The bias is written into every row first, and the product accumulates onto it. */
    bool has_bias = bias && rows > 0;
    if (has_bias) broadcast_rows(out->dtype, rows, out_features, rb->data, out->data, true);
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

/* ---- linear, GELU, linear ------------------------------------------------------------------------ */

/* Rows per chunk: a chunk's activations (rows x hidden) stay near 1 MiB, in the core's cache
 * between the product that writes them and the one that reads them. */
static int64_t mlp_chunk_rows(int64_t hidden) {
    int64_t rows = ((int64_t)1 << 18) / (hidden > 0 ? hidden : 1);
    return rows < 16 ? 16 : rows;
}

static const bl_unary_args gelu_args = {.op = BL_UNARY_GELU};

/* h (rows, hidden) += bias (or nothing) per row, then a (=) gelu(h). */
static void bias_gelu(bl_dtype dt, int64_t rows, int64_t hidden, void *h, const void *bias, void *a) {
    for (int64_t r = 0; r < rows; r++) {
        if (dt == BL_F32) {
            float *hr = (float *)h + r * hidden;
            if (bias)
#pragma omp simd
                for (int64_t j = 0; j < hidden; j++) hr[j] += ((const float *)bias)[j];
            cpu_gelu_f32(hidden, hr, (float *)a + r * hidden);
        } else {
            double *hr = (double *)h + r * hidden;
            if (bias)
                for (int64_t j = 0; j < hidden; j++) hr[j] += ((const double *)bias)[j];
            ref_unary_fwd_f64(&gelu_args, hidden, hr, (double *)a + r * hidden);
        }
    }
}

/* a (n) (=) gelu(h (n)) when a is not NULL, and d (n) (=) gelu'(h) when d is not NULL. */
static void gelu_and_derivative(bl_dtype dt, int64_t n, const void *h, void *a, void *d) {
    if (dt == BL_F32 && a && d) {
        cpu_gelu_with_derivative_f32(n, h, a, d);
        return;
    }
    if (a && dt == BL_F32) cpu_gelu_f32(n, h, a);
    if (a && dt == BL_F64) ref_unary_fwd_f64(&gelu_args, n, h, a);
    if (d && dt == BL_F32) cpu_unary_bwd_f32(&gelu_args, n, h, NULL, NULL, d);
    if (d && dt == BL_F64) ref_unary_bwd_f64(&gelu_args, n, h, NULL, NULL, d);
}

/* d (n) *= s (n). */
static void scale_elementwise(bl_dtype dt, int64_t n, void *d, const void *s) {
    if (dt == BL_F32) {
        float *df = d;
        const float *sf = s;
#pragma omp simd
        for (int64_t i = 0; i < n; i++) df[i] *= sf[i];
    } else {
        double *dd = d;
        const double *sd = s;
        for (int64_t i = 0; i < n; i++) dd[i] *= sd[i];
    }
}

/* The two weights as the GEMM kernels read them. */
typedef struct {
    bl_tensor *w1, *w2;
    bool w1_trans, w2_trans;
    int64_t w1_ld, w2_ld;
} mlp_weights;

static int mlp_weights_of(bl_tensor *w1, bl_tensor *w2, mlp_weights *mw) {
    mw->w1 = bl__gemm_readable(w1);
    mw->w2 = bl__gemm_readable(w2);
    if (!mw->w1 || !mw->w2) return BL_ERR;
    bl__gemm_operand(mw->w1, &mw->w1_trans, &mw->w1_ld);
    bl__gemm_operand(mw->w2, &mw->w2_trans, &mw->w2_ld);
    return BL_OK;
}

static double mlp_flops(int64_t rows, int64_t in, int64_t hidden, int64_t out) {
    return 2.0 * (double)rows * (double)hidden * (double)(in + out);
}

typedef struct {
    bl_tensor *h; /* (rows, hidden): fc1's output before the GELU, the only activation kept */
} mlp_ctx;

/* Under create_graph: the composition itself, replayed with ops, each of its three nodes handed
 * its output's gradient in turn, so that the gradients are built from (differentiable) ops. */
static int mlp_backward_replay(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor **in = node->inputs;
    bl_tensor *h = bl_linear(in[0], in[1], in[2]), *a = bl_gelu(h), *y = bl_linear(a, in[3], in[4]);
    if (!y) return BL_ERR;
    if (!y->grad_fn) return BL_OK; /* nothing here requires grad */
    bl_tensor *g_fc2[3] = {NULL}, *g_act[1] = {NULL}, *g_fc1[3] = {NULL};
    BL_TRY(y->grad_fn->backward(y->grad_fn, g, g_fc2));
    gin[3] = g_fc2[1];
    gin[4] = g_fc2[2];
    if (g_fc2[0] && a->grad_fn) BL_TRY(a->grad_fn->backward(a->grad_fn, g_fc2[0], g_act));
    if (g_act[0] && h->grad_fn) BL_TRY(h->grad_fn->backward(h->grad_fn, g_act[0], g_fc1));
    for (int i = 0; i < 3; i++) gin[i] = g_fc1[i];
    return BL_OK;
}

/* What one thread of the fused backward accumulates over its chunks. */
typedef struct {
    char *a, *slope, *da; /* chunk scratch: gelu(h), gelu'(h), and the gradient of h */
    char *dw1, *dw2;     /* the thread's part of the weight gradients */
    double *db1, *db2;   /* and of the bias gradients */
    bool started;        /* whether dw1/dw2 hold a first chunk's product yet */
} mlp_thread_part;

/* p (n) (=) the sum of the `count` arrays src[i] (n elements of dtype dt each), in double. */
static void sum_arrays(bl_dtype dt, int count, char *const *src, int64_t n, void *p) {
#pragma omp parallel for schedule(static) if (n * count > 65536)
    for (int64_t i = 0; i < n; i++) {
        double total = 0;
        for (int k = 0; k < count; k++)
            total += dt == BL_F32 ? ((const float *)src[k])[i] : ((const double *)src[k])[i];
        if (dt == BL_F32) ((float *)p)[i] = (float)total;
        else ((double *)p)[i] = total;
    }
}

/* First order. The rows go in chunks, each on one thread: a = gelu(h) and gelu'(h) are recomputed
 * (in one evaluation), dW2 += g^T a, da = g W2, dh = da * gelu'(h), dW1 += dh^T x, dx = dh W1,
 * and the bias gradients are column sums of g and dh. Weight and bias gradients collect per thread
 * and are summed at the end; the chunks are dealt to the threads in a fixed order (not as threads
 * come free) so that these sums, and with them training, are the same bit for bit from run to
 * run. Every buffer but the gradients is scratch, returned to the arena before the function
 * returns. */
static int mlp_backward_fused(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *x = node->inputs[0], *w1 = node->inputs[1], *b1 = node->inputs[2], *w2 = node->inputs[3];
    bl_tensor *b2 = node->inputs[4], *h = ((const mlp_ctx *)node->ctx)->h;
    bl_dtype dt = x->dtype;
    int64_t in = w1->shape[1], hidden = w1->shape[0], out = w2->shape[0], rows = h->shape[0];
    int64_t g_ld, x_ld = in;
    bool want_b1 = b1 && b1->requires_grad, want_b2 = b2 && b2->requires_grad;
    bool need_a = w2->requires_grad, need_dh = x->requires_grad || w1->requires_grad || want_b1;
    mlp_weights mw;
    bl_tensor *rg = as_row_matrix(g, &g_ld), *rx = w1->requires_grad ? as_row_matrix(x, &x_ld) : x;
    bl_tensor *dx = x->requires_grad ? bl_empty(dt, x->ndim, x->shape) : NULL;
    bl_tensor *dw1 = w1->requires_grad ? bl_empty(dt, 2, w1->shape) : NULL;
    bl_tensor *dw2 = w2->requires_grad ? bl_empty(dt, 2, w2->shape) : NULL;
    bl_tensor *db1 = want_b1 ? bl_empty(dt, 1, b1->shape) : NULL, *db2 = want_b2 ? bl_empty(dt, 1, b2->shape) : NULL;
    if (!rg || !rx || mlp_weights_of(w1, w2, &mw) || (x->requires_grad && !dx) || (w1->requires_grad && !dw1) ||
        (w2->requires_grad && !dw2) || (want_b1 && !db1) || (want_b2 && !db2))
        return BL_ERR;

    double t0 = bl_profile_start();
    size_t elem = bl_dtype_size(dt);
    int64_t chunk = mlp_chunk_rows(hidden), chunks = (rows + chunk - 1) / chunk;
    int threads = bl__max_threads();
    bl_scope scratch = bl_scope_begin();
    mlp_thread_part *parts = bl_arena_alloc((size_t)threads * sizeof *parts);
    int rc = parts ? BL_OK : BL_ERR;
    for (int t = 0; rc == BL_OK && t < threads; t++) {
        mlp_thread_part *p = &parts[t];
        *p = (mlp_thread_part){0};
        p->a = need_a ? bl_arena_alloc((size_t)(chunk * hidden) * elem) : NULL;
        p->slope = need_dh ? bl_arena_alloc((size_t)(chunk * hidden) * elem) : NULL;
        p->da = need_dh ? bl_arena_alloc((size_t)(chunk * hidden) * elem) : NULL;
        p->dw1 = dw1 ? bl_arena_alloc((size_t)(hidden * in) * elem) : NULL;
        p->dw2 = dw2 ? bl_arena_alloc((size_t)(out * hidden) * elem) : NULL;
        p->db1 = want_b1 ? zeroed_sums(hidden) : NULL;
        p->db2 = want_b2 ? zeroed_sums(out) : NULL;
        if ((need_a && !p->a) || (need_dh && (!p->slope || !p->da)) || (dw1 && !p->dw1) || (dw2 && !p->dw2) ||
            (want_b1 && !p->db1) || (want_b2 && !p->db2))
            rc = BL_ERR;
    }
    if (rc == BL_OK) {
#pragma omp parallel for schedule(static) if (chunks > 1)
        for (int64_t c = 0; c < chunks; c++) {
            mlp_thread_part *p = &parts[bl__thread_index()];
            int64_t r0 = c * chunk, n = rows - r0 < chunk ? rows - r0 : chunk;
            const char *hc = (const char *)h->data + (size_t)(r0 * hidden) * elem;
            const char *gc = (const char *)rg->data + (size_t)(r0 * g_ld) * elem;
            double beta = p->started ? 1.0 : 0.0; /* weight gradients accumulate over the chunks */
            p->started = true;
            gelu_and_derivative(dt, n * hidden, hc, p->a, p->slope);
            if (need_a) gemm_any(dt, true, false, out, hidden, n, gc, g_ld, p->a, hidden, beta, p->dw2, hidden);
            if (want_b2) add_column_sums(dt, n, out, gc, g_ld, p->db2);
            if (need_dh) {
                gemm_any(dt, false, mw.w2_trans, n, hidden, out, gc, g_ld, mw.w2->data, mw.w2_ld, 0, p->da, hidden);
                scale_elementwise(dt, n * hidden, p->da, p->slope);
                if (dw1)
                    gemm_any(dt, true, false, hidden, in, n, p->da, hidden,
                             (const char *)rx->data + (size_t)(r0 * x_ld) * elem, x_ld, beta, p->dw1, in);
                if (want_b1) add_column_sums(dt, n, hidden, p->da, hidden, p->db1);
                if (dx)
                    gemm_any(dt, false, mw.w1_trans, n, in, hidden, p->da, hidden, mw.w1->data, mw.w1_ld, 0,
                             (char *)dx->data + (size_t)(r0 * in) * elem, in);
            }
        }
        /* the threads that ran a chunk hold a part of each weight gradient */
        char **w1_parts = bl_arena_alloc((size_t)threads * sizeof *w1_parts);
        char **w2_parts = bl_arena_alloc((size_t)threads * sizeof *w2_parts);
        int started = 0;
        for (int t = 0; t < threads && w1_parts && w2_parts; t++)
            if (parts[t].started) {
                w1_parts[started] = parts[t].dw1;
                w2_parts[started++] = parts[t].dw2;
            }
        if (!w1_parts || !w2_parts) rc = BL_ERR;
        if (dw1 && rc == BL_OK) sum_arrays(dt, started, w1_parts, hidden * in, dw1->data);
        if (dw2 && rc == BL_OK) sum_arrays(dt, started, w2_parts, out * hidden, dw2->data);
        for (int t = 1; t < threads; t++)
            for (int64_t j = 0; j < (want_b1 ? hidden : 0); j++) parts[0].db1[j] += parts[t].db1[j];
        for (int t = 1; t < threads; t++)
            for (int64_t j = 0; j < (want_b2 ? out : 0); j++) parts[0].db2[j] += parts[t].db2[j];
        if (db1) store_sums(parts[0].db1, db1);
        if (db2) store_sums(parts[0].db2, db2);
    }
    bl_scope_end(scratch);
    bl_profile_stop("mlp.bwd", t0, 2.0 * mlp_flops(rows, in, hidden, out));
    gin[0] = dx;
    gin[1] = dw1;
    gin[2] = db1;
    gin[3] = dw2;
    gin[4] = db2;
    return rc;
}

static int mlp_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    if (bl_grad_enabled()) return mlp_backward_replay(node, g, gin);
    return mlp_backward_fused(node, g, gin);
}

bl_tensor *bl__mlp_gelu(bl_tensor *x, bl_tensor *w1, bl_tensor *b1, bl_tensor *w2, bl_tensor *b2) {
    BL_NONNULL(x, w1, w2);
    const char *op = "mlp_gelu";
    bl_dtype dt = x->dtype;
    BL_CHECK(bl_dtype_is_float(dt) && w1->dtype == dt && w2->dtype == dt && (!b1 || b1->dtype == dt) &&
                 (!b2 || b2->dtype == dt),
             "%s: x, weights and biases need one float dtype, got x %s, fc1 %s, fc2 %s", op, bl_dtype_name(dt),
             bl_dtype_name(w1->dtype), bl_dtype_name(w2->dtype));
    BL_CHECK(w1->ndim == 2 && w2->ndim == 2 && w2->shape[1] == w1->shape[0],
             "%s: weights %s and %s are not (hidden, in) and (out, hidden)", op, bl__shape(w1), bl__shape(w2));
    int64_t in = w1->shape[1], hidden = w1->shape[0], out = w2->shape[0];
    BL_CHECK(x->ndim >= 1 && x->shape[x->ndim - 1] == in, "%s: input %s does not end in in_features = %lld of %s", op,
             bl__shape(x), (long long)in, bl__shape(w1));
    BL_CHECK((!b1 || (b1->ndim == 1 && b1->shape[0] == hidden)) && (!b2 || (b2->ndim == 1 && b2->shape[0] == out)),
             "%s: biases %s and %s do not match the weights %s and %s", op, b1 ? bl__shape(b1) : "none",
             b2 ? bl__shape(b2) : "none", bl__shape(w1), bl__shape(w2));
    int64_t rows = batch_count(x->ndim - 1, x->shape), x_ld;
    BL_CHECK(fits_blas(rows) && fits_blas(in) && fits_blas(hidden) && fits_blas(out),
             "%s: %s through %s is too large for the BLAS", op, bl__shape(x), bl__shape(w1));

    bl_tensor *inputs[5] = {x, w1, b1, w2, b2};
    bool record = bl_autograd_needed(5, inputs);
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = out;
    mlp_weights mw;
    bl_tensor *result = bl_empty(dt, x->ndim, shape), *rx = as_row_matrix(x, &x_ld);
    bl_tensor *rb1 = contiguous_vector(b1), *rb2 = contiguous_vector(b2);
    bl_tensor *h = record ? bl_empty(dt, 2, (int64_t[]){rows, hidden}) : NULL;
    if (!result || !rx || (b1 && !rb1) || (b2 && !rb2) || (record && !h) || mlp_weights_of(w1, w2, &mw)) return NULL;

    /* Row chunks, each on one thread from fc1 to fc2; h is scratch too at inference. */
    double t0 = bl_profile_start();
    size_t elem = bl_dtype_size(dt);
    int64_t chunk = mlp_chunk_rows(hidden), chunks = (rows + chunk - 1) / chunk;
    bl_scope scratch = bl_scope_begin();
    int threads = bl__max_threads();
    char *a = bl_arena_alloc((size_t)(threads * chunk * hidden) * elem);
    char *h_scratch = record ? NULL : bl_arena_alloc((size_t)(threads * chunk * hidden) * elem);
    bool ok = a && (record || h_scratch);
    if (ok) {
#pragma omp parallel for schedule(dynamic, 1) if (chunks > 1)
        for (int64_t c = 0; c < chunks; c++) {
            int64_t r0 = c * chunk, n = rows - r0 < chunk ? rows - r0 : chunk;
            size_t mine = (size_t)(bl__thread_index() * chunk * hidden) * elem;
            char *hc = record ? (char *)h->data + (size_t)(r0 * hidden) * elem : h_scratch + mine;
            char *yc = (char *)result->data + (size_t)(r0 * out) * elem;
            gemm_any(dt, false, !mw.w1_trans, n, hidden, in, (const char *)rx->data + (size_t)(r0 * x_ld) * elem, x_ld,
                     mw.w1->data, mw.w1_ld, 0, hc, hidden);
            bias_gelu(dt, n, hidden, hc, rb1 ? rb1->data : NULL, a + mine);
            /* fc2's bias is written first and the product accumulates onto it */
            if (rb2) broadcast_rows(dt, n, out, rb2->data, yc, false);
            gemm_any(dt, false, !mw.w2_trans, n, out, hidden, a + mine, hidden, mw.w2->data, mw.w2_ld, rb2 ? 1.0 : 0.0,
                     yc, out);
        }
    }
    bl_scope_end(scratch);
    bl_profile_stop("mlp.fwd", t0, mlp_flops(rows, in, hidden, out));
    BL_CHECK(ok, "%s: out of memory for the activations of %s", op, bl__shape(x));
    if (!record) return result;
    bl_node *node = bl_autograd_record(result, op, mlp_backward, 5, inputs, sizeof(mlp_ctx));
    if (!node) return NULL;
    ((mlp_ctx *)node->ctx)->h = h;
    return result;
}
