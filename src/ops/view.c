/* View ops: new shape/strides/offset over the same memory. Each records a node whose backward
 * maps the gradient back with another view (or, for slices, places it into zeros). Reshape is a
 * view whenever the new dims only split or merge runs of dims that are already laid out one
 * inside the other (as torch.reshape), so squeezing or selecting from a permuted tensor, and
 * merging dims that a transpose put back in order, cost no copy. */
#include "ballast/ops.h"

#include "core/internal.h"

#include <string.h>

/* An arena tensor viewing a's memory at element offset `offset` with the given geometry. */
static bl_tensor *make_view(bl_tensor *a, int ndim, const int64_t *shape, const int64_t *stride, int64_t offset) {
    bl_tensor *v = bl__view_of(a);
    if (!v) return NULL;
    v->data = (char *)a->data + offset * (int64_t)bl_dtype_size(a->dtype);
    v->ndim = ndim;
    memset(v->shape, 0, sizeof v->shape);
    memset(v->stride, 0, sizeof v->stride);
    if (ndim) {
        memcpy(v->shape, shape, (size_t)ndim * sizeof *shape);
        memcpy(v->stride, stride, (size_t)ndim * sizeof *stride);
    }
    v->persistent = a->persistent;
    return v;
}

/* ---- contiguous ---- */

static int identity_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    gin[0] = g;
    return BL_OK;
}

bl_tensor *bl_contiguous(bl_tensor *a) {
    BL_NONNULL(a);
    if (bl_is_contiguous(a)) return a;
    bl_tensor *out = bl_empty(a->dtype, a->ndim, a->shape);
    if (!out || bl_copy_(out, a) != BL_OK) return NULL;
    bl_tensor *in[1] = {a};
    bl_autograd_record(out, "contiguous", identity_backward, 1, in, 0);
    return out;
}

/* ---- reshape ---- */

/* Strides for viewing a's memory as (ndim, shape), same numel. a's dims are taken from the
 * innermost out in runs ("chunks") of dims nested without gaps (stride of one = stride times size
 * of the next); the new dims must cover each chunk exactly, a product of new sizes equal to the
 * chunk's size. False when they do not, and the reshape needs a copy. */
static bool view_strides(const bl_tensor *a, int ndim, const int64_t *shape, int64_t *stride) {
    if (bl_numel(a) == 0) {
        bl__contiguous_strides(ndim, shape, stride);
        return true;
    }
    int old = a->ndim - 1, d = ndim - 1;
    int64_t outer = 1;
    while (old >= 0) {
        if (a->shape[old] == 1) { /* size-1 dims address nothing */
            old--;
            continue;
        }
        int64_t base = a->stride[old], chunk = a->shape[old--];
        while (old >= 0 && (a->shape[old] == 1 || a->stride[old] == base * chunk)) chunk *= a->shape[old--];
        int64_t covered = 1;
        while (d >= 0 && covered < chunk) {
            stride[d] = base * covered;
            covered *= shape[d--];
        }
        if (covered != chunk) return false;
        outer = base * chunk;
    }
    for (; d >= 0; d--) stride[d] = outer; /* what is left has size 1 (the numels agree) */
    return true;
}

static int reshape_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *a = node->inputs[0];
    gin[0] = bl_reshape(g, a->ndim, a->shape);
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_reshape(bl_tensor *a, int ndim, const int64_t *shape) {
    BL_NONNULL(a);
    BL_CHECK(ndim >= 0 && ndim <= BL_MAX_DIMS, "reshape: %d dims (at most %d)", ndim, BL_MAX_DIMS);
    int64_t resolved[BL_MAX_DIMS], known = 1;
    int infer = -1;
    for (int d = 0; d < ndim; d++) {
        resolved[d] = shape[d];
        if (shape[d] == -1) {
            BL_CHECK(infer < 0, "reshape: more than one -1 in the target shape");
            infer = d;
        } else {
            BL_CHECK(shape[d] >= 0, "reshape: negative size %lld", (long long)shape[d]);
            known *= shape[d];
        }
    }
    if (infer >= 0) {
        BL_CHECK(known > 0 && bl_numel(a) % known == 0, "reshape: cannot infer -1 reshaping %s", bl__shape(a));
        resolved[infer] = bl_numel(a) / known;
        known *= resolved[infer];
    }
    BL_CHECK(known == bl_numel(a), "reshape: %s has %lld elements, the target shape %lld", bl__shape(a),
             (long long)bl_numel(a), (long long)known);
    int64_t stride[BL_MAX_DIMS];
    bl_tensor *src = a;
    if (!view_strides(a, ndim, resolved, stride)) {
        src = bl_contiguous(a);
        if (!src) return NULL;
        bl__contiguous_strides(ndim, resolved, stride);
    }
    bl_tensor *out = make_view(src, ndim, resolved, stride, 0);
    bl_tensor *in[1] = {src};
    bl_autograd_record(out, "reshape", reshape_backward, 1, in, 0);
    return out;
}

bl_tensor *bl_flatten(bl_tensor *a, int start_dim) {
    BL_NONNULL(a);
    int s = bl_wrap_dim(a, start_dim);
    if (s < 0) return NULL;
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, (size_t)s * sizeof *shape);
    shape[s] = -1;
    if (a->ndim == 0) return bl_reshape(a, 1, (int64_t[]){1});
    return bl_reshape(a, s + 1, shape);
}

bl_tensor *bl_squeeze(bl_tensor *a, int dim) {
    BL_NONNULL(a);
    int d = bl_wrap_dim(a, dim);
    if (d < 0) return NULL;
    if (a->ndim == 0 || a->shape[d] != 1) return a;
    int64_t shape[BL_MAX_DIMS];
    for (int i = 0, j = 0; i < a->ndim; i++)
        if (i != d) shape[j++] = a->shape[i];
    return bl_reshape(a, a->ndim - 1, shape);
}

bl_tensor *bl_unsqueeze(bl_tensor *a, int dim) {
    BL_NONNULL(a);
    int d = dim < 0 ? dim + a->ndim + 1 : dim;
    BL_CHECK(d >= 0 && d <= a->ndim && a->ndim < BL_MAX_DIMS, "unsqueeze: dim %d invalid for %s", dim, bl__shape(a));
    int64_t shape[BL_MAX_DIMS];
    for (int i = 0, j = 0; i <= a->ndim; i++) shape[i] = i == d ? 1 : a->shape[j++];
    return bl_reshape(a, a->ndim + 1, shape);
}

/* ---- permute / transpose ---- */

static int permute_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    const int *order = node->ctx;
    int inverse[BL_MAX_DIMS];
    for (int i = 0; i < g->ndim; i++) inverse[order[i]] = i;
    gin[0] = bl_permute(g, inverse);
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_permute(bl_tensor *a, const int *order) {
    BL_NONNULL(a);
    int64_t shape[BL_MAX_DIMS], stride[BL_MAX_DIMS];
    bool seen[BL_MAX_DIMS] = {false};
    for (int i = 0; i < a->ndim; i++) {
        int d = order[i];
        BL_CHECK(d >= 0 && d < a->ndim && !seen[d], "permute: order is not a permutation of %d dims", a->ndim);
        seen[d] = true;
        shape[i] = a->shape[d];
        stride[i] = a->stride[d];
    }
    bl_tensor *out = make_view(a, a->ndim, shape, stride, 0);
    bl_tensor *in[1] = {a};
    bl_node *node = bl_autograd_record(out, "permute", permute_backward, 1, in, BL_MAX_DIMS * sizeof(int));
    if (node) memcpy(node->ctx, order, (size_t)a->ndim * sizeof(int));
    return out;
}

bl_tensor *bl_transpose(bl_tensor *a, int d0, int d1) {
    BL_NONNULL(a);
    int x = bl_wrap_dim(a, d0), y = bl_wrap_dim(a, d1);
    if (x < 0 || y < 0) return NULL;
    int order[BL_MAX_DIMS];
    for (int i = 0; i < a->ndim; i++) order[i] = i;
    order[x] = y;
    order[y] = x;
    return bl_permute(a, order);
}

/* ---- slice ---- */

typedef struct { int dim; int64_t start, end, step; } slice_ctx;

static bl_tensor *slice_scatter(bl_tensor *g, const bl_tensor *like, slice_ctx c);

static int slice_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    gin[0] = slice_scatter(g, node->inputs[0], *(slice_ctx *)node->ctx);
    return gin[0] ? BL_OK : BL_ERR;
}

static bl_tensor *slice_checked(bl_tensor *a, slice_ctx c) {
    int64_t shape[BL_MAX_DIMS], stride[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    memcpy(stride, a->stride, sizeof stride);
    shape[c.dim] = c.end > c.start ? (c.end - c.start + c.step - 1) / c.step : 0;
    stride[c.dim] = a->stride[c.dim] * c.step;
    bl_tensor *out = make_view(a, a->ndim, shape, stride, c.start * a->stride[c.dim]);
    bl_tensor *in[1] = {a};
    bl_node *node = bl_autograd_record(out, "slice", slice_backward, 1, in, sizeof c);
    if (node) *(slice_ctx *)node->ctx = c;
    return out;
}

/* The gradient of a slice: zeros shaped like `like` with g written at the sliced positions.
 * Its own gradient is the same slice of the incoming gradient. */
static int slice_scatter_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    gin[0] = slice_checked(g, *(slice_ctx *)node->ctx);
    return gin[0] ? BL_OK : BL_ERR;
}

static bl_tensor *slice_scatter(bl_tensor *g, const bl_tensor *like, slice_ctx c) {
    bl_tensor *out = bl_zeros(g->dtype, like->ndim, like->shape);
    if (!out) return NULL;
    bl_tensor *window = make_view(out, out->ndim, out->shape, out->stride, c.start * out->stride[c.dim]);
    window->shape[c.dim] = g->shape[c.dim];
    window->stride[c.dim] *= c.step;
    if (bl_copy_(window, g) != BL_OK) return NULL;
    bl_tensor *in[1] = {g};
    bl_node *node = bl_autograd_record(out, "slice_backward", slice_scatter_backward, 1, in, sizeof c);
    if (node) *(slice_ctx *)node->ctx = c;
    return out;
}

bl_tensor *bl_slice(bl_tensor *a, int dim, int64_t start, int64_t end, int64_t step) {
    BL_NONNULL(a);
    int d = bl_wrap_dim(a, dim);
    if (d < 0) return NULL;
    BL_CHECK(a->ndim > 0, "slice: cannot slice a 0-d tensor");
    BL_CHECK(step >= 1, "slice: step must be positive, got %lld", (long long)step);
    int64_t n = a->shape[d];
    if (start < 0) start += n;
    if (end < 0) end += n;
    if (start < 0) start = 0;
    if (end > n) end = n;
    if (start > n) start = n;
    if (end < start) end = start;
    return slice_checked(a, (slice_ctx){d, start, end, step});
}

bl_tensor *bl_select(bl_tensor *a, int dim, int64_t index) {
    BL_NONNULL(a);
    int d = bl_wrap_dim(a, dim);
    if (d < 0) return NULL;
    int64_t n = a->shape[d], i = index < 0 ? index + n : index;
    BL_CHECK(i >= 0 && i < n, "select: index %lld out of range for dim %d of size %lld", (long long)index, d,
             (long long)n);
    return bl_squeeze(bl_slice(a, d, i, i + 1, 1), d);
}

/* ---- expand ---- */

static int expand_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *a = node->inputs[0];
    gin[0] = bl_sum_to(g, a->ndim, a->shape);
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_expand(bl_tensor *a, int ndim, const int64_t *shape) {
    BL_NONNULL(a);
    BL_CHECK(ndim >= a->ndim && ndim <= BL_MAX_DIMS, "expand: cannot expand %s to %d dims", bl__shape(a), ndim);
    int64_t resolved[BL_MAX_DIMS], stride[BL_MAX_DIMS];
    bool same = ndim == a->ndim;
    for (int i = 0; i < ndim; i++) {
        int d = a->ndim - ndim + i;
        int64_t from = d >= 0 ? a->shape[d] : 1;
        resolved[i] = shape[i] == -1 ? from : shape[i];
        BL_CHECK(from == resolved[i] || from == 1, "expand: %s cannot be expanded to size %lld at dim %d",
                 bl__shape(a), (long long)resolved[i], i);
        stride[i] = (d < 0 || from != resolved[i]) ? 0 : a->stride[d];
        same = same && from == resolved[i];
    }
    if (same) return a;
    bl_tensor *out = make_view(a, ndim, resolved, stride, 0);
    bl_tensor *in[1] = {a};
    bl_autograd_record(out, "expand", expand_backward, 1, in, 0);
    return out;
}
