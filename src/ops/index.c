/* Indexing ops: gather, scatter_add, index_select, masked_select, topk, sort and one_hot.
 *
 * Gather and scatter_add share one walk over the index tensor's positions that reads every operand
 * through its own strides, so transposed inputs and broadcast (stride-0) indices need no copy. Their
 * gradients are each other: gather's is a scatter_add of g into zeros, scatter_add's is (g, gather
 * of g). index_select, masked_select, topk and sort bring their backward down to the same scatter,
 * so gradients of every order follow. Index tensors are BL_I64; an index outside [0, size) is an
 * error naming the op, the value and the size. */
#include "ballast/ops.h"
#include "core/internal.h"

#include <string.h>

/* Elements of work below which a kernel stays on one thread. */
#define PARALLEL_MIN_WORK 32768

#define ALWAYS_INLINE inline __attribute__((always_inline))

/* ---- the index walk -------------------------------------------------------------------------- */

/* The positions p = (i_0, ..., i_{ndim-1}) of an index tensor of shape `shape`, in row-major order,
 * and three operands addressed at each (strides in elements):
 *   index    at sum_d i_d * index_stride[d]
 *   aligned  at sum_d i_d * aligned_stride[d]                 gather's output, scatter's source
 *   indexed  at sum_{d != dim} i_d * indexed_stride[d] + index[p] * indexed_stride[dim]
 * A row is the innermost dim. */
typedef struct {
    int ndim, dim;
    int64_t shape[BL_MAX_DIMS];
    int64_t index_stride[BL_MAX_DIMS];
    int64_t aligned_stride[BL_MAX_DIMS];
    int64_t indexed_stride[BL_MAX_DIMS];
} index_walk;

static index_walk make_walk(int dim, const bl_tensor *index, const bl_tensor *aligned, const bl_tensor *indexed) {
    index_walk w = {.ndim = index->ndim, .dim = dim};
    memcpy(w.shape, index->shape, sizeof w.shape);
    memcpy(w.index_stride, index->stride, sizeof w.index_stride);
    memcpy(w.aligned_stride, aligned->stride, sizeof w.aligned_stride);
    memcpy(w.indexed_stride, indexed->stride, sizeof w.indexed_stride);
    return w;
}

static int64_t walk_rows(const index_walk *w) {
    int64_t rows = 1;
    for (int d = 0; d < w->ndim - 1; d++) rows *= w->shape[d];
    return rows;
}

/* Offsets of the first position of `row` in the three operands (indexed without its index term). */
static ALWAYS_INLINE void walk_row_start(const index_walk *w, int64_t row, int64_t *index_at, int64_t *aligned_at,
                                         int64_t *indexed_at) {
    int64_t ix = 0, al = 0, in = 0;
    for (int d = w->ndim - 2; d >= 0; d--) {
        int64_t i = row % w->shape[d];
        row /= w->shape[d];
        ix += i * w->index_stride[d];
        al += i * w->aligned_stride[d];
        if (d != w->dim) in += i * w->indexed_stride[d];
    }
    *index_at = ix;
    *aligned_at = al;
    *indexed_at = in;
}

/* ---- kernels --------------------------------------------------------------------------------- */

/* out (walk shape, aligned strides) = src (indexed strides) at index (walk shape, values within src's
 * size along dim). Elements of `es` bytes are copied as they are, so every dtype works. */
static ALWAYS_INLINE void gather_rows(const index_walk *w, const char *src, const int64_t *index, char *out,
                                      size_t es) {
    const int last = w->ndim - 1;
    const int64_t n_rows = walk_rows(w), row_len = w->shape[last];
    const int64_t index_step = w->index_stride[last], aligned_step = w->aligned_stride[last];
    const int64_t indexed_step = last == w->dim ? 0 : w->indexed_stride[last], along = w->indexed_stride[w->dim];
#pragma omp parallel for schedule(static) if (n_rows > 1 && n_rows * row_len > PARALLEL_MIN_WORK)
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t ix, al, in;
        walk_row_start(w, r, &ix, &al, &in);
        for (int64_t j = 0; j < row_len; j++) {
            int64_t from = in + j * indexed_step + index[ix + j * index_step] * along;
            memcpy(out + (al + j * aligned_step) * (int64_t)es, src + from * (int64_t)es, es);
        }
    }
}

/* The element size is a constant in each branch, so each memcpy compiles to one load and store. */
static void gather_kernel(const index_walk *w, const void *src, const int64_t *index, void *out, size_t es) {
    switch (es) {
    case 1: gather_rows(w, src, index, out, 1); break;
    case 2: gather_rows(w, src, index, out, 2); break;
    case 4: gather_rows(w, src, index, out, 4); break;
    default: gather_rows(w, src, index, out, 8); break;
    }
}

/* dst (indexed strides) += src (walk shape, aligned strides) at index; F32, or F64 when `f64`.
 * One thread: two positions may name the same destination element. */
static ALWAYS_INLINE void scatter_add_rows(const index_walk *w, char *dst, const char *src, const int64_t *index,
                                           bool f64) {
    const int last = w->ndim - 1;
    const int64_t n_rows = walk_rows(w), row_len = w->shape[last];
    const int64_t index_step = w->index_stride[last], aligned_step = w->aligned_stride[last];
    const int64_t indexed_step = last == w->dim ? 0 : w->indexed_stride[last], along = w->indexed_stride[w->dim];
    for (int64_t r = 0; r < n_rows; r++) {
        int64_t ix, al, in;
        walk_row_start(w, r, &ix, &al, &in);
        for (int64_t j = 0; j < row_len; j++) {
            int64_t to = in + j * indexed_step + index[ix + j * index_step] * along, from = al + j * aligned_step;
            if (f64)
                ((double *)dst)[to] += ((const double *)src)[from];
            else
                ((float *)dst)[to] += ((const float *)src)[from];
        }
    }
}

static void scatter_add_kernel(const index_walk *w, void *dst, const void *src, const int64_t *index, bl_dtype dt) {
    if (dt == BL_F64)
        scatter_add_rows(w, dst, src, index, true);
    else
        scatter_add_rows(w, dst, src, index, false);
}

/* index_select over contiguous tensors seen as (outer, size, inner) and (outer, n, inner). */
typedef struct {
    int64_t outer, size, inner, n;
    int64_t index_stride; /* elements between consecutive entries of the 1-D index */
    size_t elem_size;
} index_select_args;

/* out (outer, n, inner) = src (outer, size, inner) at index (n) along the middle dim; any dtype. */
static void index_select_kernel(const index_select_args *args, const char *src, const int64_t *index, char *out) {
    const int64_t blocks = args->outer * args->n;
    const size_t block_bytes = (size_t)args->inner * args->elem_size;
#pragma omp parallel for schedule(static) if (blocks > 1 && blocks * args->inner > PARALLEL_MIN_WORK)
    for (int64_t b = 0; b < blocks; b++) {
        int64_t o = b / args->n, j = b % args->n;
        int64_t from = o * args->size + index[j * args->index_stride];
        memcpy(out + b * (int64_t)block_bytes, src + from * (int64_t)block_bytes, block_bytes);
    }
}

/* dst (outer, size, inner) += g (outer, n, inner) at index (n) along the middle dim; F32, or F64 when
 * `f64`. One thread: repeated indices add into the same block. */
static void index_add_kernel(const index_select_args *args, void *dst, const void *g, const int64_t *index,
                             bool f64) {
    const int64_t inner = args->inner;
    for (int64_t o = 0; o < args->outer; o++)
        for (int64_t j = 0; j < args->n; j++) {
            int64_t to = (o * args->size + index[j * args->index_stride]) * inner, from = (o * args->n + j) * inner;
            if (f64) {
                double *restrict d = (double *)dst + to;
                const double *restrict s = (const double *)g + from;
                for (int64_t i = 0; i < inner; i++) d[i] += s[i];
            } else {
                float *restrict d = (float *)dst + to;
                const float *restrict s = (const float *)g + from;
                for (int64_t i = 0; i < inner; i++) d[i] += s[i];
            }
        }
}

/* Sorting lines: the shapes of topk_kernel below. */
typedef struct {
    int64_t outer, n, inner, k;
    bool largest; /* best = largest values; else smallest */
} topk_args;

/* An element of a line: its rank key and its position. */
typedef struct {
    uint64_t key;
    int64_t pos;
} ranked;

/* A key whose unsigned order is the ranking order, best first. Numbers map through their IEEE bits
 * (sign bit flipped, negatives inverted, so unsigned order is numeric order); NaN sorts above every
 * number, as in torch; -0.0 becomes +0.0 so that the two tie. `largest` reverses the order. */
static inline uint64_t rank_key(double v, bool largest) {
    uint64_t bits = UINT64_MAX;
    if (v == v) {
        if (v == 0) v = 0.0;
        memcpy(&bits, &v, sizeof bits);
        bits = bits >> 63 ? ~bits : bits | (UINT64_C(1) << 63);
    }
    return largest ? ~bits : bits;
}

/* Equal keys are ordered by position, which makes the order total: every result is stable. */
static inline bool ranks_before(ranked a, ranked b) { return a.key < b.key || (a.key == b.key && a.pos < b.pos); }

/* Restores the heap below `at`: every parent ranks after its children, so the root is the worst. */
static void sift_down(ranked *heap, int64_t size, int64_t at) {
    for (;;) {
        int64_t worst = at, left = 2 * at + 1, right = left + 1;
        if (left < size && ranks_before(heap[worst], heap[left])) worst = left;
        if (right < size && ranks_before(heap[worst], heap[right])) worst = right;
        if (worst == at) return;
        ranked t = heap[at];
        heap[at] = heap[worst];
        heap[worst] = t;
        at = worst;
    }
}

/* The k best of line[0..n) into line[0..k), best first, for k much smaller than n: keeps the best k
 * seen so far in a heap with the worst at the root, O(n log k), then sorts the heap in place. */
static void select_best(ranked *line, int64_t n, int64_t k) {
    for (int64_t i = k / 2; i-- > 0;) sift_down(line, k, i);
    for (int64_t i = k; i < n; i++)
        if (ranks_before(line[i], line[0])) {
            line[0] = line[i];
            sift_down(line, k, 0);
        }
    for (int64_t end = k - 1; end > 0; end--) {
        ranked t = line[0];
        line[0] = line[end];
        line[end] = t;
        sift_down(line, end, 0);
    }
}

/* Sorts line[0..n) by key, keeping the order of equal keys; returns the sorted copy, which is `line`
 * or `spare` (n elements of scratch). Insertion sort of short runs, then bottom-up merges. */
#define SORT_RUN 16
static ranked *stable_sort(ranked *line, ranked *spare, int64_t n) {
    for (int64_t lo = 0; lo < n; lo += SORT_RUN) {
        int64_t hi = lo + SORT_RUN < n ? lo + SORT_RUN : n;
        for (int64_t i = lo + 1; i < hi; i++) {
            ranked x = line[i];
            int64_t j = i;
            for (; j > lo && x.key < line[j - 1].key; j--) line[j] = line[j - 1];
            line[j] = x;
        }
    }
    for (int64_t width = SORT_RUN; width < n; width *= 2) {
        for (int64_t lo = 0; lo < n; lo += 2 * width) {
            int64_t mid = lo + width < n ? lo + width : n, hi = lo + 2 * width < n ? lo + 2 * width : n;
            int64_t i = lo, j = mid, o = lo;
            while (i < mid && j < hi) { /* branch-free: the comparison of random keys is a coin toss */
                bool right = line[j].key < line[i].key;
                spare[o++] = right ? line[j] : line[i];
                j += right;
                i += !right;
            }
            while (i < mid) spare[o++] = line[i++];
            while (j < hi) spare[o++] = line[j++];
        }
        ranked *t = line;
        line = spare;
        spare = t;
    }
    return line;
}

/* The same contract as stable_sort, faster on long lines: least-significant-digit radix sort, one
 * byte of the key per pass (each pass is stable). A byte that is the same in every key is skipped;
 * keys of F32 values have three such bytes at the bottom. */
static ranked *radix_sort(ranked *line, ranked *spare, int64_t n) {
    int64_t count[8][256];
    memset(count, 0, sizeof count);
    for (int64_t i = 0; i < n; i++)
        for (int b = 0; b < 8; b++) count[b][(line[i].key >> (8 * b)) & 255]++;
    for (int b = 0; b < 8; b++) {
        int64_t *next = count[b];
        if (next[(line[0].key >> (8 * b)) & 255] == n) continue;
        for (int64_t digit = 0, at = 0; digit < 256; digit++) {
            int64_t c = next[digit];
            next[digit] = at;
            at += c;
        }
        for (int64_t i = 0; i < n; i++) spare[next[(line[i].key >> (8 * b)) & 255]++] = line[i];
        ranked *t = line;
        line = spare;
        spare = t;
    }
    return line;
}

/* Scratch for one thread: 2n ranked elements, rounded up to whole cache lines so that threads never
 * share one. */
static int64_t topk_scratch_per_thread(int64_t n) { return (2 * n + 3) / 4 * 4; }

/* values (outer, k, inner) = the k best of each line of src (outer, n, inner) along the middle dim,
 * best first; indices (outer, k, inner) = their positions in the line. src and values are F32, or
 * F64 when `f64`; all contiguous. scratch: bl__max_threads() blocks of topk_scratch_per_thread(n). */
static void topk_kernel(const topk_args *args, const void *src, void *values, int64_t *indices, bool f64,
                        ranked *scratch) {
    const int64_t n = args->n, k = args->k, inner = args->inner, lines = args->outer * inner;
    if (k == 0) return;
    /* A heap pays off while k is a small part of the line; beyond that, sort it all, by radix once
     * the line is long enough to amortize the digit counts (measured crossover about 100). */
    const bool use_heap = k <= n / 16, use_radix = n >= 128;
#pragma omp parallel for schedule(static) if (lines > 1 && lines * n > PARALLEL_MIN_WORK)
    for (int64_t l = 0; l < lines; l++) {
        ranked *line = scratch + bl__thread_index() * topk_scratch_per_thread(n);
        int64_t o = l / inner, i = l % inner, in_at = o * n * inner + i, out_at = o * k * inner + i;
        for (int64_t j = 0; j < n; j++) {
            double v = f64 ? ((const double *)src)[in_at + j * inner] : ((const float *)src)[in_at + j * inner];
            line[j] = (ranked){rank_key(v, args->largest), j};
        }
        const ranked *best = line;
        if (use_heap)
            select_best(line, n, k);
        else
            best = use_radix ? radix_sort(line, line + n, n) : stable_sort(line, line + n, n);
        for (int64_t r = 0; r < k; r++) {
            int64_t pos = best[r].pos, to = out_at + r * inner, from = in_at + pos * inner;
            indices[to] = pos;
            if (f64)
                ((double *)values)[to] = ((const double *)src)[from];
            else
                ((float *)values)[to] = ((const float *)src)[from];
        }
    }
}

/* ---- helpers --------------------------------------------------------------------------------- */

/* dim in [-ndim, ndim) made non-negative, or -1 after an error naming the op. */
static int op_dim(const char *op, const bl_tensor *t, int dim) {
    int d = dim < 0 ? dim + t->ndim : dim;
    BL_CHECK_OR(-1, d >= 0 && d < t->ndim, "%s: dim %d out of range for shape %s", op, dim, bl__shape(t));
    return d;
}

/* t itself when contiguous, else a contiguous copy that autograd does not see. */
static bl_tensor *contiguous_untracked(bl_tensor *t) { return bl_is_contiguous(t) ? t : bl_contiguous(bl_detach(t)); }

typedef struct { int64_t size, bad; bool found; } range_check;

static void range_check_run(int64_t n, char *const *p, const int64_t *stride_bytes, void *user) {
    range_check *rc = user;
    for (int64_t i = 0; i < n && !rc->found; i++) {
        int64_t v = *(const int64_t *)(p[0] + i * stride_bytes[0]);
        if (v < 0 || v >= rc->size) {
            rc->found = true;
            rc->bad = v;
        }
    }
}

/* Whether some value of the I64 tensor is outside [0, size); *bad is the first such value. */
static bool out_of_range(const bl_tensor *index, int64_t size, int64_t *bad) {
    range_check rc = {.size = size};
    char *base[1] = {index->data};
    size_t es[1] = {sizeof(int64_t)};
    bl__for_each_run(index->ndim, index->shape, 1, base, (const int64_t(*)[BL_MAX_DIMS])index->stride, es,
                     range_check_run, &rc);
    *bad = rc.bad;
    return rc.found;
}

/* Checks the index of gather/scatter_add against `a` (torch rules): I64, a's ndim, no larger than a
 * in any dim but `dim`, values within a's size along dim. Returns the normalized dim or -1. */
static int check_index_for(const char *op, const bl_tensor *a, int dim, const bl_tensor *index) {
    BL_CHECK_OR(-1, a->ndim >= 1, "%s: input must have at least 1 dim, got shape %s", op, bl__shape(a));
    int d = op_dim(op, a, dim);
    if (d < 0) return -1;
    BL_CHECK_OR(-1, index->dtype == BL_I64, "%s: index must be I64, got %s", op, bl_dtype_name(index->dtype));
    bool fits = index->ndim == a->ndim;
    for (int k = 0; fits && k < a->ndim; k++) fits = k == d || index->shape[k] <= a->shape[k];
    BL_CHECK_OR(-1, fits, "%s: index of shape %s does not fit input of shape %s along dims other than %d", op,
                bl__shape(index), bl__shape(a), d);
    int64_t bad;
    BL_CHECK_OR(-1, !out_of_range(index, a->shape[d], &bad),
                "%s: index %lld is out of range for dim %d of size %lld (input shape %s)", op, (long long)bad, d,
                (long long)a->shape[d], bl__shape(a));
    return d;
}

/* dst += src at index along dim: scatter_add without checks or recording. */
static void run_scatter_add(bl_tensor *dst, int dim, const bl_tensor *index, const bl_tensor *src) {
    index_walk w = make_walk(dim, index, src, dst);
    scatter_add_kernel(&w, dst->data, src->data, index->data, dst->dtype);
}

/* g added into zeros of the given shape at index along dim: the backward of every gather-like op.
 * A first-order backward runs the kernel straight into the zeros; under create_graph the result
 * must be differentiable in g, so it goes through bl_scatter_add. */
static bl_tensor *scatter_into_zeros(int ndim, const int64_t *shape, int dim, bl_tensor *index, bl_tensor *g) {
    bl_tensor *zeros = bl_zeros(g->dtype, ndim, shape);
    if (!zeros) return NULL;
    if (bl_grad_enabled()) return bl_scatter_add(zeros, dim, index, g);
    run_scatter_add(zeros, dim, index, g);
    return zeros;
}

/* Saved by gather, index_select, topk and sort: the dim and the positions that were read. */
typedef struct {
    int dim;
    bl_tensor *index;
} index_ctx;

/* Backward of gather, topk and sort: g goes back to the positions it was read from. */
static int scatter_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const index_ctx *ctx = node->ctx;
    const bl_tensor *a = node->inputs[0];
    grad_in[0] = scatter_into_zeros(a->ndim, a->shape, ctx->dim, ctx->index, g);
    return grad_in[0] ? BL_OK : BL_ERR;
}

static void save_index(bl_node *node, int dim, bl_tensor *index) {
    if (!node) return;
    index_ctx *ctx = node->ctx;
    ctx->dim = dim;
    ctx->index = index;
}

/* ---- gather and scatter_add ------------------------------------------------------------------ */

bl_tensor *bl_gather(bl_tensor *a, int dim, bl_tensor *index) {
    BL_NONNULL(a, index);
    int d = check_index_for("bl_gather", a, dim, index);
    if (d < 0) return NULL;
    bl_tensor *out = bl_empty(a->dtype, index->ndim, index->shape);
    if (!out) return NULL;
    index_walk w = make_walk(d, index, out, a);
    gather_kernel(&w, a->data, index->data, out->data, bl_dtype_size(a->dtype));
    save_index(bl_autograd_record(out, "gather", scatter_backward, 1, &a, sizeof(index_ctx)), d, index);
    return out;
}

/* a's gradient is g; src's is g read back at the index, zero where src is larger than the index. */
static int scatter_add_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const index_ctx *ctx = node->ctx;
    const bl_tensor *a = node->inputs[0], *src = node->inputs[1], *index = ctx->index;
    if (a->requires_grad) grad_in[0] = g;
    if (src->requires_grad) {
        bl_tensor *picked = bl_gather(g, ctx->dim, ctx->index);
        int64_t pads[2 * BL_MAX_DIMS] = {0};
        bool larger = false;
        for (int k = 0; k < src->ndim; k++) {
            int d = src->ndim - 1 - k;
            pads[2 * k + 1] = src->shape[d] - index->shape[d];
            larger |= pads[2 * k + 1] > 0;
        }
        grad_in[1] = larger ? bl_pad(picked, 2 * src->ndim, pads, 0.0) : picked;
        if (!grad_in[1]) return BL_ERR;
    }
    return BL_OK;
}

bl_tensor *bl_scatter_add(bl_tensor *a, int dim, bl_tensor *index, bl_tensor *src) {
    BL_NONNULL(a, index, src);
    BL_CHECK(bl_dtype_is_float(a->dtype), "bl_scatter_add: input must be F32 or F64, got %s",
             bl_dtype_name(a->dtype));
    BL_CHECK(src->dtype == a->dtype, "bl_scatter_add: src is %s but the input is %s", bl_dtype_name(src->dtype),
             bl_dtype_name(a->dtype));
    int d = check_index_for("bl_scatter_add", a, dim, index);
    if (d < 0) return NULL;
    bool fits = src->ndim == index->ndim;
    for (int k = 0; fits && k < src->ndim; k++) fits = index->shape[k] <= src->shape[k];
    BL_CHECK(fits, "bl_scatter_add: index of shape %s is larger than src of shape %s", bl__shape(index),
             bl__shape(src));
    bl_tensor *out = bl_empty_like(a);
    if (!out || bl_copy_(out, a) != BL_OK) return NULL;
    run_scatter_add(out, d, index, src);
    bl_tensor *inputs[2] = {a, src};
    save_index(bl_autograd_record(out, "scatter_add", scatter_add_backward, 2, inputs, sizeof(index_ctx)), d, index);
    return out;
}

/* ---- index_select ---------------------------------------------------------------------------- */

static index_select_args index_select_shape(const bl_tensor *a, int dim, const bl_tensor *index) {
    index_select_args args = {.outer = 1, .size = a->shape[dim], .inner = 1, .n = bl_numel(index),
                              .index_stride = index->ndim ? index->stride[0] : 0,
                              .elem_size = bl_dtype_size(a->dtype)};
    for (int d = 0; d < dim; d++) args.outer *= a->shape[d];
    for (int d = dim + 1; d < a->ndim; d++) args.inner *= a->shape[d];
    return args;
}

/* Index-add of g into zeros. Under create_graph it is a scatter_add with the index broadcast over
 * g's shape (a stride-0 view, never materialized), so it stays differentiable in g; a first-order
 * backward adds whole blocks of g directly. */
static int index_select_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const index_ctx *ctx = node->ctx;
    const bl_tensor *a = node->inputs[0];
    if (bl_grad_enabled()) {
        bl_tensor *spread = bl__view_of(ctx->index);
        if (!spread) return BL_ERR;
        spread->ndim = g->ndim;
        for (int d = 0; d < g->ndim; d++) {
            spread->shape[d] = g->shape[d];
            spread->stride[d] = d == ctx->dim && ctx->index->ndim ? ctx->index->stride[0] : 0;
        }
        grad_in[0] = bl_scatter_add(bl_zeros_like(a), ctx->dim, spread, g);
        return grad_in[0] ? BL_OK : BL_ERR;
    }
    bl_tensor *dense = contiguous_untracked(g), *ga = bl_zeros_like(a);
    if (!dense || !ga) return BL_ERR;
    index_select_args args = index_select_shape(a, ctx->dim, ctx->index);
    index_add_kernel(&args, ga->data, dense->data, ctx->index->data, ga->dtype == BL_F64);
    grad_in[0] = ga;
    return BL_OK;
}

bl_tensor *bl_index_select(bl_tensor *a, int dim, bl_tensor *index) {
    BL_NONNULL(a, index);
    BL_CHECK(a->ndim >= 1, "bl_index_select: input must have at least 1 dim, got shape %s", bl__shape(a));
    int d = op_dim("bl_index_select", a, dim);
    if (d < 0) return NULL;
    BL_CHECK(index->dtype == BL_I64 && index->ndim <= 1, "bl_index_select: index must be a 1-D I64 tensor, got %s %s",
             bl_dtype_name(index->dtype), bl__shape(index));
    int64_t bad;
    BL_CHECK(!out_of_range(index, a->shape[d], &bad),
             "bl_index_select: index %lld is out of range for dim %d of size %lld (input shape %s)", (long long)bad, d,
             (long long)a->shape[d], bl__shape(a));
    bl_tensor *src = contiguous_untracked(a);
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = bl_numel(index);
    bl_tensor *out = src ? bl_empty(a->dtype, a->ndim, shape) : NULL;
    if (!out) return NULL;
    index_select_args args = index_select_shape(a, d, index);
    index_select_kernel(&args, src->data, index->data, out->data);
    save_index(bl_autograd_record(out, "index_select", index_select_backward, 1, &a, sizeof(index_ctx)), d, index);
    return out;
}

/* ---- masked_select --------------------------------------------------------------------------- */

/* The flat (row-major) positions of the selected elements. */
typedef struct { bl_tensor *positions; } masked_ctx;

static int masked_select_backward(bl_node *node, bl_tensor *g, bl_tensor **grad_in) {
    const masked_ctx *ctx = node->ctx;
    const bl_tensor *a = node->inputs[0];
    int64_t numel = bl_numel(a);
    bl_tensor *flat = scatter_into_zeros(1, &numel, 0, ctx->positions, g);
    grad_in[0] = flat ? bl_reshape(flat, a->ndim, a->shape) : NULL;
    return grad_in[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_masked_select(bl_tensor *a, bl_tensor *mask) {
    BL_NONNULL(a, mask);
    bool fits = mask->ndim <= a->ndim;
    for (int k = 1; fits && k <= mask->ndim; k++)
        fits = mask->shape[mask->ndim - k] == a->shape[a->ndim - k] || mask->shape[mask->ndim - k] == 1;
    BL_CHECK(fits, "bl_masked_select: mask of shape %s does not broadcast to the input's shape %s", bl__shape(mask),
             bl__shape(a));
    bl_tensor *keep = bl_empty(BL_BOOL, a->ndim, a->shape);
    if (!keep || bl_copy_(keep, mask) != BL_OK) return NULL;
    const uint8_t *flags = keep->data;
    int64_t numel = bl_numel(a), count = 0;
    for (int64_t i = 0; i < numel; i++) count += flags[i];
    /* Positions are written without a branch: every one is stored, only kept ones advance, so the
     * buffer has one spare slot. */
    int64_t capacity = count + 1;
    bl_tensor *positions = bl_empty(BL_I64, 1, &capacity), *out = bl_empty(a->dtype, 1, &count);
    bl_tensor *src = contiguous_untracked(a);
    bl_tensor *flat = src ? bl__wrap(a->dtype, 1, &numel, src->data) : NULL;
    if (!positions || !out || !flat) return NULL;
    positions->shape[0] = count;
    int64_t *pos = positions->data;
    for (int64_t i = 0, j = 0; i < numel; i++) {
        pos[j] = i;
        j += flags[i];
    }
    index_walk w = make_walk(0, positions, out, flat);
    gather_kernel(&w, flat->data, pos, out->data, bl_dtype_size(a->dtype));
    bl_node *node = bl_autograd_record(out, "masked_select", masked_select_backward, 1, &a, sizeof(masked_ctx));
    if (node) ((masked_ctx *)node->ctx)->positions = positions;
    return out;
}

/* ---- topk and sort --------------------------------------------------------------------------- */

/* The k best along dim, best first (with whole_line, k is the dim's size: a sort), recorded as
 * `node_name`. */
static int best_along(const char *op, const char *node_name, bl_tensor *a, int64_t k, bool whole_line, int dim,
                      bool largest, bl_tensor **values, bl_tensor **indices) {
    BL_CHECK_RC(values && indices, "%s: NULL output pointer", op);
    *values = *indices = NULL;
    BL_CHECK_RC(a, "%s: NULL input (an earlier op failed)", op);
    BL_CHECK_RC(bl_dtype_is_float(a->dtype), "%s: input must be F32 or F64, got %s", op, bl_dtype_name(a->dtype));
    BL_CHECK_RC(a->ndim >= 1, "%s: input must have at least 1 dim, got shape %s", op, bl__shape(a));
    int d = op_dim(op, a, dim);
    if (d < 0) return BL_ERR;
    if (whole_line) k = a->shape[d];
    BL_CHECK_RC(k >= 0 && k <= a->shape[d], "%s: k = %lld is out of range for dim %d of size %lld (shape %s)", op,
                (long long)k, d, (long long)a->shape[d], bl__shape(a));
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = k;
    topk_args args = {.outer = 1, .n = a->shape[d], .inner = 1, .k = k, .largest = largest};
    for (int j = 0; j < d; j++) args.outer *= a->shape[j];
    for (int j = d + 1; j < a->ndim; j++) args.inner *= a->shape[j];
    bl_tensor *src = contiguous_untracked(a);
    bl_tensor *v = bl_empty(a->dtype, a->ndim, shape), *idx = bl_empty(BL_I64, a->ndim, shape);
    ranked *scratch = bl_arena_alloc((size_t)bl__max_threads() * (size_t)topk_scratch_per_thread(args.n) * sizeof *scratch);
    if (!src || !v || !idx || !scratch) return BL_ERR;
    topk_kernel(&args, src->data, v->data, idx->data, a->dtype == BL_F64, scratch);
    save_index(bl_autograd_record(v, node_name, scatter_backward, 1, &a, sizeof(index_ctx)), d, idx);
    *values = v;
    *indices = idx;
    return BL_OK;
}

int bl_topk(bl_tensor *a, int k, int dim, bool largest, bl_tensor **values, bl_tensor **indices) {
    return best_along("bl_topk", "topk", a, k, false, dim, largest, values, indices);
}

/* A sort is a top-k that keeps the whole line. */
int bl_sort(bl_tensor *a, int dim, bool descending, bl_tensor **values, bl_tensor **indices) {
    return best_along("bl_sort", "sort", a, 0, true, dim, descending, values, indices);
}

/* ---- one_hot --------------------------------------------------------------------------------- */

bl_tensor *bl_one_hot(bl_tensor *labels, int64_t classes, bl_dtype dt) {
    BL_NONNULL(labels);
    BL_CHECK(labels->dtype == BL_I64, "bl_one_hot: labels must be I64, got %s", bl_dtype_name(labels->dtype));
    BL_CHECK(classes > 0, "bl_one_hot: classes must be positive, got %lld", (long long)classes);
    BL_CHECK(labels->ndim < BL_MAX_DIMS, "bl_one_hot: labels of shape %s leave no room for the class dim",
             bl__shape(labels));
    int64_t bad;
    BL_CHECK(!out_of_range(labels, classes, &bad), "bl_one_hot: label %lld is out of range for %lld classes",
             (long long)bad, (long long)classes);
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, labels->shape, sizeof shape);
    shape[labels->ndim] = classes;
    bl_tensor *dense = contiguous_untracked(labels), *out = bl_zeros(dt, labels->ndim + 1, shape);
    if (!dense || !out) return NULL;
    const int64_t *label = dense->data;
    for (int64_t i = 0, n = bl_numel(labels); i < n; i++) bl_set_flat(out, i * classes + label[i], 1.0);
    return out;
}
