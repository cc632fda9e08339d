/* Tests of concat, stack, split and pad: every result against a naive element-by-element
 * computation on odd shapes (negative dims, transposed inputs, integer dtypes), the error cases,
 * and finite-difference gradient checks of first and second order in F64. */
#include "test.h"

static const bl_dtype float_types[] = {BL_F32, BL_F64};

/* ---- naive helpers ---- */

static void unravel(int64_t flat, int ndim, const int64_t *shape, int64_t *idx) {
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
}

/* Element of t at multi-index idx (logical, whatever t's strides). */
static double at(const bl_tensor *t, const int64_t *idx) {
    int64_t flat = 0;
    for (int d = 0; d < t->ndim; d++) flat = flat * t->shape[d] + idx[d];
    return bl_get_flat(t, flat);
}

/* A tensor of `shape` whose memory has dims 0 and 1 swapped, so that it is not contiguous. */
static bl_tensor *randn_strided(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    int64_t swapped[BL_MAX_DIMS];
    memcpy(swapped, shape, (size_t)ndim * sizeof *shape);
    swapped[0] = shape[1];
    swapped[1] = shape[0];
    return bl_transpose(test_randn(dt, ndim, swapped, seed), 0, 1);
}



static bl_tensor *square(bl_tensor *t) { return bl_mul(t, t); }

/* out[idx] from the input holding idx along dim, at idx shifted by the sizes of the inputs before. */
static double naive_concat_at(int n, bl_tensor *const *ts, int dim, const int64_t *idx) {
    int64_t local[BL_MAX_DIMS];
    memcpy(local, idx, sizeof local);
    for (int i = 0; i < n; i++) {
        if (local[dim] < ts[i]->shape[dim]) return at(ts[i], local);
        local[dim] -= ts[i]->shape[dim];
    }
    return NAN;
}

static void check_concat(int n, bl_tensor *const *ts, int dim, int wrapped) {
    bl_tensor *out = bl_concat(n, ts, dim);
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, ts[0]->shape, sizeof shape);
    shape[wrapped] = 0;
    for (int i = 0; i < n; i++) shape[wrapped] += ts[i]->shape[wrapped];
    CHECK(test_shape_is(out, ts[0]->ndim, shape), "concat along dim %d", dim);
    if (!out) return;
    CHECK(out->dtype == ts[0]->dtype, "concat changed the dtype");
    int bad = 0;
    int64_t idx[BL_MAX_DIMS];
    for (int64_t f = 0; f < bl_numel(out); f++) {
        unravel(f, out->ndim, out->shape, idx);
        bad += bl_get_flat(out, f) != naive_concat_at(n, ts, wrapped, idx);
    }
    CHECK(bad == 0, "%d wrong elements concatenating along dim %d", bad, dim);
}

/* ---- concat ---- */

static void test_concat_matches_naive(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *along1[3] = {test_randn(dt, BL_SHAPE(2, 3, 5), 1), test_randn(dt, BL_SHAPE(2, 1, 5), 2),
                                bl_transpose(test_randn(dt, BL_SHAPE(2, 5, 4), 3), 1, 2)};
        check_concat(3, along1, 1, 1);
        check_concat(3, along1, -2, 1);
        bl_tensor *along0[2] = {test_randn(dt, BL_SHAPE(1, 3, 5), 4), randn_strided(dt, BL_SHAPE(3, 3, 5), 5)};
        check_concat(2, along0, 0, 0);
        bl_tensor *along_last[3] = {test_randn(dt, BL_SHAPE(2, 3, 5), 6), test_randn(dt, BL_SHAPE(2, 3, 2), 7),
                                    test_randn(dt, BL_SHAPE(2, 3, 0), 8)};
        check_concat(3, along_last, -1, 2);
        check_concat(1, along_last, 2, 2);
        /* Long rows are copied whole, short ones element by element: both paths. */
        bl_tensor *long_rows[3] = {test_randn(dt, BL_SHAPE(2, 3, 17), 9), test_randn(dt, BL_SHAPE(2, 2, 17), 10),
                                   randn_strided(dt, BL_SHAPE(2, 1, 17), 11)};
        check_concat(3, long_rows, 1, 1);
        bl_tensor *long_blocks[2] = {test_randn(dt, BL_SHAPE(1, 3, 17), 12), randn_strided(dt, BL_SHAPE(2, 3, 17), 13)};
        check_concat(2, long_blocks, 0, 0);
    }
    bl_tensor *labels[2] = {bl_arange(BL_I64, 3), bl_arange(BL_I64, 4)};
    check_concat(2, labels, 0, 0);
}

static void test_concat_errors(void) {
    bl_tensor *a = test_randn(BL_F32, BL_SHAPE(2, 3), 1), *b = test_randn(BL_F32, BL_SHAPE(3, 3), 2);
    bl_tensor *pair[2] = {a, b};
    CHECK_FAILS(bl_concat(2, pair, 1), "bl_concat", "[3, 3]");
    CHECK(bl_concat(2, pair, 0) != NULL, "concat of [2, 3] and [3, 3] along dim 0");
    CHECK_FAILS(bl_concat(2, pair, 2), "bl_concat", "dim 2");
    CHECK_FAILS(bl_concat(2, pair, -3), "bl_concat", "dim -3");
    bl_tensor *mixed[2] = {a, test_randn(BL_F64, BL_SHAPE(2, 3), 3)};
    CHECK_FAILS(bl_concat(2, mixed, 0), "bl_concat", "F64");
    bl_tensor *ranks[2] = {a, test_randn(BL_F32, BL_SHAPE(2, 3, 1), 4)};
    CHECK_FAILS(bl_concat(2, ranks, 0), "bl_concat", "[2, 3, 1]");
    CHECK_FAILS(bl_concat(0, pair, 0), "bl_concat", "at least one");
    bl_tensor *scalars[2] = {bl_scalar(BL_F32, 1), bl_scalar(BL_F32, 2)};
    CHECK_FAILS(bl_concat(2, scalars, 0), "bl_concat", "0-d");
    bl_tensor *with_null[2] = {a, NULL};
    CHECK(bl_concat(2, with_null, 0) == NULL, "a NULL input gives NULL");
}

/* ---- stack ---- */

static void check_stack(int n, bl_tensor *const *ts, int dim, int wrapped) {
    bl_tensor *out = bl_stack(n, ts, dim);
    int64_t shape[BL_MAX_DIMS];
    for (int k = 0, j = 0; k <= ts[0]->ndim; k++) shape[k] = k == wrapped ? n : ts[0]->shape[j++];
    CHECK(test_shape_is(out, ts[0]->ndim + 1, shape), "stack along dim %d", dim);
    if (!out) return;
    int bad = 0;
    int64_t idx[BL_MAX_DIMS], inner[BL_MAX_DIMS];
    for (int64_t f = 0; f < bl_numel(out); f++) {
        unravel(f, out->ndim, out->shape, idx);
        for (int k = 0, j = 0; k < out->ndim; k++)
            if (k != wrapped) inner[j++] = idx[k];
        bad += bl_get_flat(out, f) != at(ts[idx[wrapped]], inner);
    }
    CHECK(bad == 0, "%d wrong elements stacking along dim %d", bad, dim);
}

static void test_stack_matches_naive(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *ts[3] = {test_randn(dt, BL_SHAPE(3, 5), 1), randn_strided(dt, BL_SHAPE(3, 5), 2),
                            test_randn(dt, BL_SHAPE(3, 5), 3)};
        check_stack(3, ts, 0, 0);
        check_stack(3, ts, 1, 1);
        check_stack(3, ts, 2, 2);
        check_stack(3, ts, -1, 2);
        check_stack(3, ts, -3, 0);
        check_stack(1, ts, 1, 1);
        bl_tensor *long_rows[2] = {test_randn(dt, BL_SHAPE(3, 17), 4), test_randn(dt, BL_SHAPE(3, 17), 5)};
        check_stack(2, long_rows, 0, 0);
        check_stack(2, long_rows, 1, 1);
        bl_tensor *scalars[4] = {bl_scalar(dt, 1), bl_scalar(dt, -2), bl_scalar(dt, 3.5), bl_scalar(dt, 0)};
        check_stack(4, scalars, 0, 0);
    }
}

static void test_stack_errors(void) {
    bl_tensor *ts[2] = {test_randn(BL_F32, BL_SHAPE(3, 5), 1), test_randn(BL_F32, BL_SHAPE(3, 4), 2)};
    CHECK_FAILS(bl_stack(2, ts, 0), "bl_stack", "[3, 4]");
    ts[1] = test_randn(BL_F32, BL_SHAPE(3, 5), 3);
    CHECK_FAILS(bl_stack(2, ts, 3), "bl_stack", "dim 3");
    CHECK_FAILS(bl_stack(2, ts, -4), "bl_stack", "dim -4");
    CHECK(bl_stack(2, ts, -3) != NULL, "stack along dim -3 of 2-D inputs");
}

/* ---- split ---- */

static void test_split_gives_views(void) {
    bl_tensor *a = test_randn(BL_F64, BL_SHAPE(4, 7), 1);
    bl_tensor *pieces[3];
    CHECK(bl_split(a, -1, 3, (int64_t[]){2, 0, 5}, pieces) == BL_OK, "split [4, 7] into 2, 0, 5");
    if (!pieces[0] || !pieces[1] || !pieces[2]) return;
    CHECK(test_shape_is(pieces[0], BL_SHAPE(4, 2)) && test_shape_is(pieces[1], BL_SHAPE(4, 0)) &&
          test_shape_is(pieces[2], BL_SHAPE(4, 5)), "piece shapes");
    CHECK(pieces[0]->data == a->data && pieces[2]->data == (double *)a->data + 2, "pieces must view a's memory");
    int bad = 0;
    for (int64_t i = 0; i < 4; i++)
        for (int64_t j = 0; j < 7; j++) {
            const bl_tensor *p = j < 2 ? pieces[0] : pieces[2];
            int64_t pj = j < 2 ? j : j - 2;
            bad += at(p, (int64_t[]){i, pj}) != at(a, (int64_t[]){i, j});
        }
    CHECK(bad == 0, "%d wrong elements", bad);

    bl_tensor *rows[2];
    CHECK(bl_split(randn_strided(BL_F32, BL_SHAPE(5, 3), 2), 0, 2, (int64_t[]){1, 4}, rows) == BL_OK,
          "split of a strided tensor");
    CHECK(test_shape_is(rows[0], BL_SHAPE(1, 3)) && test_shape_is(rows[1], BL_SHAPE(4, 3)), "row piece shapes");
}

static void test_split_errors(void) {
    bl_tensor *a = test_randn(BL_F32, BL_SHAPE(4, 7), 1), *out[2];
    CHECK(bl_split(a, 1, 2, (int64_t[]){3, 3}, out) == BL_ERR && strstr(bl_last_error(), "bl_split") &&
          strstr(bl_last_error(), "sum to 6"), "sizes that do not add up");
    CHECK(out[0] == NULL && out[1] == NULL, "a failed split leaves no pieces");
    bl_clear_error();
    CHECK(bl_split(a, 1, 2, (int64_t[]){-1, 8}, out) == BL_ERR && strstr(bl_last_error(), "negative"), "negative size");
    bl_clear_error();
    CHECK(bl_split(a, 2, 2, (int64_t[]){2, 2}, out) == BL_ERR && strstr(bl_last_error(), "dim 2"), "dim out of range");
    bl_clear_error();
    CHECK(bl_split(NULL, 0, 2, (int64_t[]){2, 2}, out) == BL_ERR, "NULL input");
    bl_clear_error();
}

/* ---- pad ---- */

static void check_pad(bl_tensor *a, int n_pads, const int64_t *pads, double value) {
    bl_tensor *out = bl_pad(a, n_pads, pads, value);
    int64_t shape[BL_MAX_DIMS], left[BL_MAX_DIMS] = {0};
    memcpy(shape, a->shape, sizeof shape);
    for (int k = 0; k < n_pads / 2; k++) {
        int d = a->ndim - 1 - k;
        left[d] = pads[2 * k];
        shape[d] += pads[2 * k] + pads[2 * k + 1];
    }
    CHECK(test_shape_is(out, a->ndim, shape), "pad of %d values", n_pads);
    if (!out) return;
    int bad = 0;
    int64_t idx[BL_MAX_DIMS];
    for (int64_t f = 0; f < bl_numel(out); f++) {
        unravel(f, out->ndim, out->shape, idx);
        bool inside = true;
        for (int d = 0; d < a->ndim; d++) {
            idx[d] -= left[d];
            inside = inside && idx[d] >= 0 && idx[d] < a->shape[d];
        }
        double want = inside ? at(a, idx) : value;
        bad += bl_get_flat(out, f) != (a->dtype == BL_F32 ? (double)(float)want : want);
    }
    CHECK(bad == 0, "%d wrong elements", bad);
}

static void test_pad_matches_naive(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *a = test_randn(dt, BL_SHAPE(2, 3, 4), 1), *strided = randn_strided(dt, BL_SHAPE(3, 2, 5), 2);
        check_pad(a, 2, (int64_t[]){1, 2}, 0.0);
        check_pad(a, 4, (int64_t[]){0, 1, 2, 0}, 1.5);
        check_pad(a, 6, (int64_t[]){1, 1, 1, 1, 1, 1}, -3.0);
        check_pad(a, 0, NULL, 0.0);
        check_pad(strided, 4, (int64_t[]){2, 1, 1, 0}, 0.25);
        check_pad(strided, 6, (int64_t[]){0, 0, 1, 1, 0, 2}, 0.0);
        bl_tensor *long_rows = test_randn(dt, BL_SHAPE(2, 3, 20), 3);
        check_pad(long_rows, 4, (int64_t[]){0, 0, 1, 1}, 2.0);
        check_pad(long_rows, 2, (int64_t[]){1, 2}, 0.0);
    }
    check_pad(bl_arange(BL_I64, 5), 2, (int64_t[]){3, 1}, -1.0);
}

static void test_pad_errors(void) {
    bl_tensor *a = test_randn(BL_F32, BL_SHAPE(2, 3), 1);
    CHECK_FAILS(bl_pad(a, 2, (int64_t[]){-1, 0}, 0.0), "bl_pad", "negative");
    CHECK_FAILS(bl_pad(a, 3, (int64_t[]){1, 1, 1}, 0.0), "bl_pad", "3 pad values");
    CHECK_FAILS(bl_pad(a, 6, (int64_t[]){1, 1, 1, 1, 1, 1}, 0.0), "bl_pad", "[2, 3]");
    CHECK(bl_pad(NULL, 2, (int64_t[]){1, 1}, 0.0) == NULL, "NULL input");
}

/* ---- gradients ---- */

/* Each function squares its result so that the second derivative runs through the op's backward. */
static bl_tensor *concat_fn(bl_tensor *const *x, void *user) {
    bl_tensor *parts[3] = {x[0], bl_transpose(x[1], 0, 1), x[2]};
    return square(bl_concat(3, parts, -1));
}

static bl_tensor *stack_fn(bl_tensor *const *x, void *user) {
    bl_tensor *parts[3] = {x[0], x[1], x[0]};
    return square(bl_stack(3, parts, *(int *)user));
}

static bl_tensor *split_fn(bl_tensor *const *x, void *user) {
    bl_tensor *pieces[3];
    if (bl_split(x[0], 1, 3, (int64_t[]){2, 1, 2}, pieces) != BL_OK) return NULL;
    bl_tensor *parts[2] = {square(pieces[2]), bl_mul(pieces[0], pieces[1])};
    return bl_concat(2, parts, 1);
}

static bl_tensor *pad_fn(bl_tensor *const *x, void *user) {
    return square(bl_pad(bl_transpose(x[0], 0, 2), 4, (int64_t[]){1, 2, 0, 1}, 0.5));
}

static void test_gradcheck(void) {
    bl_tensor *c[3] = {test_randn(BL_F64, BL_SHAPE(2, 3), 1), test_randn(BL_F64, BL_SHAPE(2, 2), 2),
                       test_randn(BL_F64, BL_SHAPE(2, 1), 3)};
    c[0]->requires_grad = c[1]->requires_grad = c[2]->requires_grad = true;
    CHECK(bl_gradcheck(concat_fn, NULL, 3, c, 1e-6, 1e-6, true) == BL_OK, "concat");
    /* A constant input in the middle must not break the gradient of the others. */
    c[1]->requires_grad = false;
    CHECK(bl_gradcheck(concat_fn, NULL, 3, c, 1e-6, 1e-6, true) == BL_OK, "concat with a constant input");

    bl_tensor *s[2] = {test_randn(BL_F64, BL_SHAPE(2, 3), 4), test_randn(BL_F64, BL_SHAPE(2, 3), 5)};
    s[0]->requires_grad = s[1]->requires_grad = true;
    int dims[3] = {0, 1, -1};
    for (int i = 0; i < 3; i++)
        CHECK(bl_gradcheck(stack_fn, &dims[i], 2, s, 1e-6, 1e-6, true) == BL_OK, "stack along dim %d", dims[i]);

    bl_tensor *x = test_randn(BL_F64, BL_SHAPE(3, 5), 6);
    x->requires_grad = true;
    CHECK(bl_gradcheck(split_fn, NULL, 1, &x, 1e-6, 1e-6, true) == BL_OK, "split");

    bl_tensor *p = test_randn(BL_F64, BL_SHAPE(3, 2, 2), 7);
    p->requires_grad = true;
    CHECK(bl_gradcheck(pad_fn, NULL, 1, &p, 1e-6, 1e-6, true) == BL_OK, "pad");
}

TEST_MAIN(TEST(test_concat_matches_naive), TEST(test_concat_errors), TEST(test_stack_matches_naive),
          TEST(test_stack_errors), TEST(test_split_gives_views), TEST(test_split_errors),
          TEST(test_pad_matches_naive), TEST(test_pad_errors), TEST(test_gradcheck))
