/* Joining and splitting along a dim: concat, stack, split and constant padding.
 *
 * Forward passes copy each input into a view of one fresh output, one memcpy per run of elements
 * that are contiguous in both. Backward passes are views of the output gradient (slices for concat
 * and pad, selects for stack), so gradients of every order follow from the view ops' own backward.
 * Split returns views and records nothing itself. All dtypes are accepted (these ops only move
 * bytes); gradients flow to float inputs. */
#include "ballast/ops.h"
#include "core/internal.h"

#include <string.h>

/* ---- kernel ---------------------------------------------------------------------------------- */

/* A destination made of rows of `row_elems` contiguous elements, laid out by (ndim, shape, stride)
 * above the row. Strides are in elements. */
typedef struct {
    int ndim;
    int64_t shape[BL_MAX_DIMS];
    int64_t stride[BL_MAX_DIMS];
    int64_t row_elems;
    size_t elem_size;
} row_copy_args;

/* dst: rows placed by args (=); src: the same rows back to back, contiguous. */
static void copy_rows(const row_copy_args *args, char *dst, const char *src) {
    int64_t n_rows = 1;
    for (int d = 0; d < args->ndim; d++) n_rows *= args->shape[d];
    const size_t row_bytes = (size_t)args->row_elems * args->elem_size;
    /* Large copies split across threads; small ones are not worth waking the pool. */
#pragma omp parallel for schedule(static) if ((size_t)n_rows * row_bytes > ((size_t)1 << 20) && n_rows > 1)
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t offset = 0, rest = r;
        for (int d = args->ndim - 1; d >= 0; d--) {
            offset += (rest % args->shape[d]) * args->stride[d];
            rest /= args->shape[d];
        }
        memcpy(dst + offset * (int64_t)args->elem_size, src + r * (int64_t)row_bytes, row_bytes);
    }
}

/* ---- helpers --------------------------------------------------------------------------------- */

/* Copies src (same shape and dtype) into the strided view dst. */
static int copy_into_view(bl_tensor *dst, const bl_tensor *src) {
    if (bl_numel(dst) == 0) return BL_OK;
    if (!bl_is_contiguous(src)) return bl_copy_(dst, src);
    row_copy_args args = {.row_elems = 1, .elem_size = bl_dtype_size(dst->dtype)};
    /* Fold trailing dims into the row while dst stays contiguous across them. */
    int d = dst->ndim - 1;
    while (d >= 0 && (dst->shape[d] == 1 || dst->stride[d] == args.row_elems)) args.row_elems *= dst->shape[d--];
    /* Short rows (stacking along the last dim): the strided copy loop beats a memcpy per row. */
    if (args.row_elems < 16) return bl_copy_(dst, src);
    args.ndim = d + 1;
    for (int k = 0; k <= d; k++) {
        args.shape[k] = dst->shape[k];
        args.stride[k] = dst->stride[k];
    }
    copy_rows(&args, dst->data, src->data);
    return BL_OK;
}

/* dim in [-ndim, ndim) made non-negative, or -1 after an error naming the op. */
static int op_dim(const char *op, const bl_tensor *t, int dim, int ndim) {
    int d = dim < 0 ? dim + ndim : dim;
    BL_CHECK_OR(-1, d >= 0 && d < ndim, "%s: dim %d out of range for a result with %d dims (input shape %s)", op,
                dim, ndim, bl__shape(t));
    return d;
}

/* A view of t restricted to [start, start + len) along dim, detached from autograd. */
static bl_tensor *narrow_view(const bl_tensor *t, int dim, int64_t start, int64_t len) {
    bl_tensor *v = bl__view_of(t);
    if (!v) return NULL;
    v->data = (char *)v->data + start * t->stride[dim] * (int64_t)bl_dtype_size(t->dtype);
    v->shape[dim] = len;
    return v;
}

/* A view of t at position `index` of dim, with dim removed, detached from autograd. */
static bl_tensor *select_view(const bl_tensor *t, int dim, int64_t index) {
    bl_tensor *v = narrow_view(t, dim, index, 1);
    if (!v) return NULL;
    for (int d = dim; d < t->ndim - 1; d++) {
        v->shape[d] = t->shape[d + 1];
        v->stride[d] = t->stride[d + 1];
    }
    v->ndim = t->ndim - 1;
    return v;
}

/* Checks that concat/stack got n >= 1 tensors, none NULL. */
static int check_present(const char *op, int n, bl_tensor *const *ts) {
    BL_CHECK_RC(n >= 1 && ts, "%s: needs at least one tensor (got %d)", op, n);
    for (int i = 0; i < n; i++)
        if (!ts[i]) return BL_ERR; /* an earlier op failed and said why */
    return BL_OK;
}

/* Checks that tensors 1..n-1 have tensor 0's dtype and ndim, with equal sizes in every dim except
 * `free_dim` (-1: all dims equal). */
static int check_joinable(const char *op, int n, bl_tensor *const *ts, int free_dim) {
    const bl_tensor *first = ts[0];
    for (int i = 1; i < n; i++) {
        const bl_tensor *t = ts[i];
        BL_CHECK_RC(t->dtype == first->dtype, "%s: tensor %d is %s but tensor 0 is %s", op, i, bl_dtype_name(t->dtype),
                    bl_dtype_name(first->dtype));
        bool same = t->ndim == first->ndim;
        for (int d = 0; same && d < t->ndim; d++) same = d == free_dim || t->shape[d] == first->shape[d];
        if (free_dim >= 0)
            BL_CHECK_RC(same, "%s: tensor %d has shape %s but tensor 0 has %s; they may differ only in dim %d", op, i,
                        bl__shape(t), bl__shape(first), free_dim);
        else
            BL_CHECK_RC(same, "%s: tensor %d has shape %s but tensor 0 has %s; all must match", op, i, bl__shape(t),
                        bl__shape(first));
    }
    return BL_OK;
}

/* ---- concat ---------------------------------------------------------------------------------- */

typedef struct { int dim; } join_ctx;

/* Each input's gradient is its slice of g along the joined dim. */
static int concat_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const join_ctx *ctx = node->ctx;
    int64_t start = 0;
    for (int i = 0; i < node->n_inputs; i++) {
        const bl_tensor *in = node->inputs[i];
        int64_t len = in->shape[ctx->dim];
        if (in->requires_grad) {
            grad_in[i] = bl_slice(g, ctx->dim, start, start + len, 1);
            if (!grad_in[i]) return BL_ERR;
        }
        start += len;
    }
    return BL_OK;
}

bl_tensor *bl_concat(int n, bl_tensor *const *ts, int dim) {
    if (check_present("bl_concat", n, ts) != BL_OK) return NULL;
    BL_CHECK(ts[0]->ndim >= 1, "bl_concat: cannot concatenate 0-d tensors (use bl_stack)");
    int d = op_dim("bl_concat", ts[0], dim, ts[0]->ndim);
    if (d < 0 || check_joinable("bl_concat", n, ts, d) != BL_OK) return NULL;
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, ts[0]->shape, sizeof shape);
    shape[d] = 0;
    for (int i = 0; i < n; i++) shape[d] += ts[i]->shape[d];
    bl_tensor *out = bl_empty(ts[0]->dtype, ts[0]->ndim, shape);
    if (!out) return NULL;
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        bl_tensor *dst = narrow_view(out, d, start, ts[i]->shape[d]);
        if (!dst || copy_into_view(dst, ts[i]) != BL_OK) return NULL;
        start += ts[i]->shape[d];
    }
    bl_node *node = bl_autograd_record(out, "concat", concat_backward, n, ts, sizeof(join_ctx));
    if (node) ((join_ctx *)node->ctx)->dim = d;
    return out;
}

/* ---- stack ----------------------------------------------------------------------------------- */

/* Input i's gradient is position i of g along the new dim. */
static int stack_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const join_ctx *ctx = node->ctx;
    for (int i = 0; i < node->n_inputs; i++) {
        if (!node->inputs[i]->requires_grad) continue;
        grad_in[i] = bl_select(g, ctx->dim, i);
        if (!grad_in[i]) return BL_ERR;
    }
    return BL_OK;
}

bl_tensor *bl_stack(int n, bl_tensor *const *ts, int dim) {
    if (check_present("bl_stack", n, ts) != BL_OK || check_joinable("bl_stack", n, ts, -1) != BL_OK) return NULL;
    const bl_tensor *first = ts[0];
    BL_CHECK(first->ndim < BL_MAX_DIMS, "bl_stack: inputs of shape %s already have the maximum of %d dims",
             bl__shape(first), BL_MAX_DIMS);
    int d = op_dim("bl_stack", first, dim, first->ndim + 1);
    if (d < 0) return NULL;
    int64_t shape[BL_MAX_DIMS];
    for (int k = 0, j = 0; k <= first->ndim; k++) shape[k] = k == d ? n : first->shape[j++];
    bl_tensor *out = bl_empty(first->dtype, first->ndim + 1, shape);
    if (!out) return NULL;
    for (int i = 0; i < n; i++) {
        bl_tensor *dst = select_view(out, d, i);
        if (!dst || copy_into_view(dst, ts[i]) != BL_OK) return NULL;
    }
    bl_node *node = bl_autograd_record(out, "stack", stack_backward, n, ts, sizeof(join_ctx));
    if (node) ((join_ctx *)node->ctx)->dim = d;
    return out;
}

/* ---- split ----------------------------------------------------------------------------------- */

int bl_split(bl_tensor *a, int dim, int n, const int64_t *sizes, bl_tensor **out) {
    BL_CHECK_RC(out, "bl_split: NULL output array");
    for (int i = 0; i < n; i++) out[i] = NULL;
    BL_CHECK_RC(a, "bl_split: NULL input (an earlier op failed)");
    BL_CHECK_RC(a->ndim >= 1, "bl_split: cannot split a 0-d tensor");
    BL_CHECK_RC(n >= 1 && sizes, "bl_split: needs at least one piece size (got %d)", n);
    int d = op_dim("bl_split", a, dim, a->ndim);
    if (d < 0) return BL_ERR;
    int64_t total = 0;
    for (int i = 0; i < n; i++) {
        BL_CHECK_RC(sizes[i] >= 0, "bl_split: piece %d has negative size %lld", i, (long long)sizes[i]);
        total += sizes[i];
    }
    BL_CHECK_RC(total == a->shape[d], "bl_split: piece sizes sum to %lld but dim %d of shape %s has size %lld",
                (long long)total, d, bl__shape(a), (long long)a->shape[d]);
    int64_t start = 0;
    for (int i = 0; i < n; i++) {
        out[i] = bl_slice(a, d, start, start + sizes[i], 1);
        if (!out[i]) return BL_ERR;
        start += sizes[i];
    }
    return BL_OK;
}

/* ---- pad ------------------------------------------------------------------------------------- */

typedef struct {
    int n_pads;
    int64_t pads[2 * BL_MAX_DIMS];
} pad_ctx;

/* The input's gradient is the interior of g: one slice per padded dim. */
static int pad_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const pad_ctx *ctx = node->ctx;
    const bl_tensor *a = node->inputs[0];
    for (int k = 0; k < ctx->n_pads / 2 && g; k++) {
        int d = a->ndim - 1 - k;
        int64_t left = ctx->pads[2 * k], right = ctx->pads[2 * k + 1];
        if (left || right) g = bl_slice(g, d, left, left + a->shape[d], 1);
    }
    grad_in[0] = g;
    return g ? BL_OK : BL_ERR;
}

bl_tensor *bl_pad(bl_tensor *a, int n_pads, const int64_t *pads, double value) {
    BL_NONNULL(a);
    BL_CHECK(n_pads >= 0 && n_pads % 2 == 0 && n_pads / 2 <= a->ndim && (n_pads == 0 || pads),
             "bl_pad: %d pad values for shape %s; expected an even number, two per padded dim, at most %d", n_pads,
             bl__shape(a), 2 * a->ndim);
    for (int k = 0; k < n_pads; k++)
        BL_CHECK(pads[k] >= 0, "bl_pad: pad %d is %lld; negative padding (cropping) is not supported, use bl_slice", k,
                 (long long)pads[k]);
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    for (int k = 0; k < n_pads / 2; k++) shape[a->ndim - 1 - k] += pads[2 * k] + pads[2 * k + 1];
    bl_tensor *out = bl_full(a->dtype, a->ndim, shape, value);
    bl_tensor *interior = out ? bl__view_of(out) : NULL;
    if (!interior) return NULL;
    for (int k = 0; k < n_pads / 2; k++) {
        int d = a->ndim - 1 - k;
        interior->data = (char *)interior->data + pads[2 * k] * out->stride[d] * (int64_t)bl_dtype_size(out->dtype);
        interior->shape[d] = a->shape[d];
    }
    if (copy_into_view(interior, a) != BL_OK) return NULL;
    bl_node *node = bl_autograd_record(out, "pad", pad_backward, 1, &a, sizeof(pad_ctx));
    if (node) {
        pad_ctx *ctx = node->ctx;
        ctx->n_pads = n_pads;
        if (n_pads) memcpy(ctx->pads, pads, (size_t)n_pads * sizeof *pads);
    }
    return out;
}
