/* Tests of the indexing ops: gather, scatter_add, index_select, masked_select, topk, sort and
 * one_hot against naive element-by-element computations on odd shapes (negative dims, transposed
 * inputs and indices, repeated indices, ties and NaN), their error cases, the first-order
 * backward against the create_graph one, and finite-difference gradient checks of first and
 * second order in F64. */
#include "test.h"

static const bl_dtype float_types[] = {BL_F32, BL_F64};

/* ---- naive helpers ---- */

static void unravel(int64_t flat, int ndim, const int64_t *shape, int64_t *idx) {
    for (int d = ndim - 1; d >= 0; d--) {
        idx[d] = flat % shape[d];
        flat /= shape[d];
    }
}

static int64_t ravel(const bl_tensor *t, const int64_t *idx) {
    int64_t flat = 0;
    for (int d = 0; d < t->ndim; d++) flat = flat * t->shape[d] + idx[d];
    return flat;
}

/* Element of t at multi-index idx (logical, whatever t's strides). */
static double at(const bl_tensor *t, const int64_t *idx) { return bl_get_flat(t, ravel(t, idx)); }

/* A tensor of `shape` whose memory has dims 0 and 1 swapped, so that it is not contiguous. */
static bl_tensor *strided(bl_tensor *(*make)(bl_dtype, int, const int64_t *, uint64_t), bl_dtype dt, int ndim,
                          const int64_t *shape, uint64_t seed) {
    int64_t swapped[BL_MAX_DIMS];
    memcpy(swapped, shape, (size_t)ndim * sizeof *shape);
    swapped[0] = shape[1];
    swapped[1] = shape[0];
    return bl_transpose(make(dt, ndim, swapped, seed), 0, 1);
}

static bl_tensor *randn(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    return test_randn(dt, ndim, shape, seed);
}

/* An I64 tensor of values drawn uniformly from [0, below). */
static bl_tensor *random_index_of(int ndim, const int64_t *shape, int64_t below, uint64_t seed) {
    bl_tensor *t = bl_empty(BL_I64, ndim, shape);
    bl_rng r = bl_rng_make(seed, 91);
    for (int64_t i = 0; t && i < bl_numel(t); i++) ((int64_t *)t->data)[i] = bl_rng_below(&r, below);
    return t;
}

static bl_tensor *index_of(int64_t n, const int64_t *values) { return bl_from_data(BL_I64, 1, &n, values); }



static double tolerance(bl_dtype dt) { return dt == BL_F32 ? 1e-5 : 1e-12; }

static bl_tensor *square(bl_tensor *t) { return bl_mul(t, t); }

/* ---- gather ---- */

static void check_gather(bl_tensor *a, int dim, int wrapped, bl_tensor *index) {
    bl_tensor *out = bl_gather(a, dim, index);
    CHECK(test_shape_is(out, index->ndim, index->shape), "gather along dim %d", dim);
    if (!out) return;
    int bad = 0;
    int64_t idx[BL_MAX_DIMS];
    for (int64_t f = 0; f < bl_numel(out); f++) {
        unravel(f, out->ndim, out->shape, idx);
        idx[wrapped] = (int64_t)bl_get_flat(index, f);
        bad += bl_get_flat(out, f) != at(a, idx);
    }
    CHECK(bad == 0, "%d wrong elements gathering along dim %d", bad, dim);
}

static void test_gather_matches_naive(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *a = randn(dt, BL_SHAPE(4, 5, 3), 1), *a_strided = strided(randn, dt, BL_SHAPE(4, 5, 3), 2);
        /* The index may be smaller than the input in every dim, and larger along the gathered one. */
        check_gather(a, 0, 0, random_index_of(BL_SHAPE(6, 5, 2), 4, 3));
        check_gather(a, 1, 1, random_index_of(BL_SHAPE(2, 7, 3), 5, 4));
        check_gather(a, -1, 2, random_index_of(BL_SHAPE(4, 2, 4), 3, 5));
        check_gather(a_strided, -3, 0, random_index_of(BL_SHAPE(3, 4, 3), 4, 6));
        check_gather(a_strided, 2, 2, bl_transpose(random_index_of(BL_SHAPE(5, 3, 2), 3, 7), 0, 1));
        check_gather(a, 1, 1, random_index_of(BL_SHAPE(4, 0, 3), 5, 8));
    }
    check_gather(bl_arange(BL_I64, 7), 0, 0, random_index_of(BL_SHAPE(9), 7, 9));
}

static void test_gather_errors(void) {
    bl_tensor *a = randn(BL_F32, BL_SHAPE(4, 3), 1);
    bl_tensor *bad = bl_from_data(BL_I64, BL_SHAPE(1, 2), (int64_t[]){1, 9});
    CHECK_FAILS(bl_gather(a, 0, bad), "bl_gather", "index 9 is out of range for dim 0 of size 4");
    bl_tensor *negative = bl_from_data(BL_I64, BL_SHAPE(1, 2), (int64_t[]){-1, 0});
    CHECK_FAILS(bl_gather(a, -1, negative), "bl_gather", "index -1 is out of range for dim 1 of size 3");
    CHECK_FAILS(bl_gather(a, 0, bl_zeros(BL_I32, BL_SHAPE(1, 2))), "bl_gather", "I64");
    CHECK_FAILS(bl_gather(a, 0, bl_zeros(BL_I64, BL_SHAPE(2))), "bl_gather", "[2]");
    CHECK_FAILS(bl_gather(a, 0, bl_zeros(BL_I64, BL_SHAPE(2, 4))), "bl_gather", "[2, 4]");
    CHECK_FAILS(bl_gather(a, 2, bl_zeros(BL_I64, BL_SHAPE(2, 2))), "bl_gather", "dim 2");
    CHECK(bl_gather(NULL, 0, bad) == NULL, "NULL input");
}

/* ---- scatter_add ---- */

static void check_scatter_add(bl_tensor *a, int dim, int wrapped, bl_tensor *index, bl_tensor *src) {
    bl_tensor *out = bl_scatter_add(a, dim, index, src);
    CHECK(test_shape_is(out, a->ndim, a->shape), "scatter_add along dim %d", dim);
    if (!out) return;
    double *want = bl_arena_alloc((size_t)bl_numel(a) * sizeof *want);
    for (int64_t f = 0; f < bl_numel(a); f++) want[f] = bl_get_flat(a, f);
    int64_t idx[BL_MAX_DIMS];
    for (int64_t f = 0; f < bl_numel(index); f++) {
        unravel(f, index->ndim, index->shape, idx);
        double v = at(src, idx);
        idx[wrapped] = (int64_t)bl_get_flat(index, f);
        want[ravel(a, idx)] += v;
    }
    double worst = 0;
    for (int64_t f = 0; f < bl_numel(a); f++) worst = fmax(worst, fabs(bl_get_flat(out, f) - want[f]));
    CHECK(worst <= tolerance(a->dtype), "scatter_add along dim %d is off by %g", dim, worst);
}

static void test_scatter_add_matches_naive(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *a = randn(dt, BL_SHAPE(4, 3), 1);
        /* Few distinct targets: positions collide and must add up. src is larger than the index. */
        check_scatter_add(a, 0, 0, random_index_of(BL_SHAPE(5, 3), 2, 2), randn(dt, BL_SHAPE(6, 4), 3));
        check_scatter_add(a, -1, 1, random_index_of(BL_SHAPE(3, 6), 3, 4), strided(randn, dt, BL_SHAPE(4, 7), 5));
        check_scatter_add(strided(randn, dt, BL_SHAPE(4, 3), 6), 1, 1,
                          bl_transpose(random_index_of(BL_SHAPE(2, 4), 3, 7), 0, 1), randn(dt, BL_SHAPE(4, 2), 8));
    }
}

static void test_scatter_add_errors(void) {
    bl_tensor *a = randn(BL_F32, BL_SHAPE(4, 3), 1), *src = randn(BL_F32, BL_SHAPE(2, 3), 2);
    bl_tensor *bad = bl_from_data(BL_I64, BL_SHAPE(1, 1), (int64_t[]){4});
    CHECK_FAILS(bl_scatter_add(a, 0, bad, src), "bl_scatter_add", "index 4 is out of range for dim 0 of size 4");
    CHECK_FAILS(bl_scatter_add(a, 0, bl_zeros(BL_I64, BL_SHAPE(3, 3)), src), "bl_scatter_add", "[2, 3]");
    CHECK_FAILS(bl_scatter_add(a, 0, bad, randn(BL_F64, BL_SHAPE(2, 3), 3)), "bl_scatter_add", "F64");
    CHECK_FAILS(bl_scatter_add(bl_zeros(BL_I64, BL_SHAPE(4, 3)), 0, bad, src), "bl_scatter_add", "I64");
}

/* ---- index_select ---- */

static void check_index_select(bl_tensor *a, int dim, int wrapped, bl_tensor *index) {
    bl_tensor *out = bl_index_select(a, dim, index);
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[wrapped] = bl_numel(index);
    CHECK(test_shape_is(out, a->ndim, shape), "index_select along dim %d", dim);
    if (!out) return;
    int bad = 0;
    int64_t idx[BL_MAX_DIMS];
    for (int64_t f = 0; f < bl_numel(out); f++) {
        unravel(f, out->ndim, out->shape, idx);
        idx[wrapped] = (int64_t)bl_get_flat(index, idx[wrapped]);
        bad += bl_get_flat(out, f) != at(a, idx);
    }
    CHECK(bad == 0, "%d wrong elements selecting along dim %d", bad, dim);
}

static void test_index_select_matches_naive(void) {
    bl_tensor *repeated = index_of(5, (int64_t[]){4, 0, 4, 2, 1});
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *a = randn(dt, BL_SHAPE(3, 5, 7), 1);
        check_index_select(a, 1, 1, repeated);
        check_index_select(a, -1, 2, repeated);
        check_index_select(a, 0, 0, index_of(2, (int64_t[]){2, 2}));
        check_index_select(strided(randn, dt, BL_SHAPE(5, 3, 7), 2), 0, 0, repeated);
        check_index_select(a, 2, 2, bl_slice(index_of(6, (int64_t[]){6, 9, 0, 9, 3, 9}), 0, 0, 6, 2));
        check_index_select(a, 2, 2, bl_scalar(BL_I64, 5));
        check_index_select(a, 1, 1, bl_zeros(BL_I64, BL_SHAPE(0)));
    }
    check_index_select(bl_arange(BL_I64, 6), 0, 0, repeated);
}

static void test_index_select_errors(void) {
    bl_tensor *a = randn(BL_F32, BL_SHAPE(3, 5), 1);
    CHECK_FAILS(bl_index_select(a, 0, index_of(2, (int64_t[]){0, 3})), "bl_index_select",
                "index 3 is out of range for dim 0 of size 3");
    CHECK_FAILS(bl_index_select(a, 1, bl_zeros(BL_I64, BL_SHAPE(2, 2))), "bl_index_select", "[2, 2]");
    CHECK_FAILS(bl_index_select(a, 1, bl_zeros(BL_F32, BL_SHAPE(2))), "bl_index_select", "F32");
    CHECK_FAILS(bl_index_select(a, -3, index_of(1, (int64_t[]){0})), "bl_index_select", "dim -3");
}

/* ---- masked_select ---- */

static void check_masked_select(bl_tensor *a, bl_tensor *mask) {
    bl_tensor *out = bl_masked_select(a, mask);
    CHECK(out && out->ndim == 1, "masked_select gives a 1-D tensor");
    if (!out) return;
    int64_t idx[BL_MAX_DIMS], midx[BL_MAX_DIMS], n = 0;
    int bad = 0;
    for (int64_t f = 0; f < bl_numel(a); f++) {
        unravel(f, a->ndim, a->shape, idx);
        for (int d = 0; d < mask->ndim; d++) {
            int ad = a->ndim - mask->ndim + d;
            midx[d] = mask->shape[d] == 1 ? 0 : idx[ad];
        }
        if (at(mask, midx) == 0) continue;
        bad += n >= out->shape[0] || bl_get_flat(out, n) != bl_get_flat(a, f);
        n++;
    }
    CHECK(n == out->shape[0] && bad == 0, "selected %lld of %lld elements, %d wrong", (long long)out->shape[0],
          (long long)n, bad);
}

static void test_masked_select_matches_naive(void) {
    bl_tensor *mask = bl_empty(BL_BOOL, BL_SHAPE(3, 4));
    bl_rng r = bl_rng_make(5, 1);
    for (int64_t i = 0; i < 12; i++) bl_set_flat(mask, i, (double)bl_rng_below(&r, 2));
    bl_tensor *row_mask = bl_from_data(BL_U8, BL_SHAPE(4), (uint8_t[]){1, 0, 0, 1});
    bl_tensor *float_mask = bl_from_data(BL_F32, BL_SHAPE(3, 1), (float[]){0.5f, 0.f, -2.f});
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *a = randn(dt, BL_SHAPE(3, 4), 1);
        check_masked_select(a, mask);
        check_masked_select(a, row_mask);
        check_masked_select(a, float_mask);
        check_masked_select(strided(randn, dt, BL_SHAPE(3, 4), 2), mask);
        check_masked_select(strided(randn, dt, BL_SHAPE(2, 3, 4), 3), row_mask);
        check_masked_select(a, bl_zeros(BL_BOOL, BL_SHAPE(3, 4)));
    }
    CHECK_FAILS(bl_masked_select(randn(BL_F32, BL_SHAPE(3, 4), 1), bl_zeros(BL_BOOL, BL_SHAPE(3))),
                "bl_masked_select", "[3]");
    CHECK_FAILS(bl_masked_select(randn(BL_F32, BL_SHAPE(4), 1), bl_zeros(BL_BOOL, BL_SHAPE(2, 4))),
                "bl_masked_select", "[2, 4]");
}

/* ---- topk and sort ---- */

/* Whether a comes before b in a line ordered best first: by value with NaN above every number,
 * ties by position. */
static bool naive_before(double a, int64_t ia, double b, int64_t ib, bool largest) {
    if (isnan(a) || isnan(b)) {
        if (isnan(a) && isnan(b)) return ia < ib;
        return largest ? isnan(a) : isnan(b);
    }
    if (a != b) return largest ? a > b : a < b;
    return ia < ib;
}

/* Checks values/indices against ranking each element of each line by counting what beats it. */
static void check_best(bl_tensor *a, int dim, int wrapped, int64_t k, bool largest, bl_tensor *values,
                       bl_tensor *indices) {
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[wrapped] = k;
    CHECK(test_shape_is(values, a->ndim, shape) && test_shape_is(indices, a->ndim, shape) && indices->dtype == BL_I64,
          "top %lld along dim %d", (long long)k, dim);
    if (!values || !indices) return;
    int64_t n = a->shape[wrapped], idx[BL_MAX_DIMS], other[BL_MAX_DIMS];
    int bad = 0;
    for (int64_t f = 0; f < bl_numel(a); f++) {
        unravel(f, a->ndim, a->shape, idx);
        double v = at(a, idx);
        int64_t rank = 0;
        memcpy(other, idx, sizeof other);
        for (other[wrapped] = 0; other[wrapped] < n; other[wrapped]++)
            rank += naive_before(at(a, other), other[wrapped], v, idx[wrapped], largest);
        if (rank >= k) continue;
        int64_t pos = idx[wrapped];
        idx[wrapped] = rank;
        double got = at(values, idx);
        bad += at(indices, idx) != pos || !(got == v || (isnan(got) && isnan(v)));
    }
    CHECK(bad == 0, "%d wrong entries in the top %lld along dim %d (largest %d)", bad, (long long)k, dim, largest);
}

/* Values from a small set, so that lines have ties. */
static bl_tensor *with_ties(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    bl_rng r = bl_rng_make(seed, 3);
    for (int64_t i = 0; t && i < bl_numel(t); i++) bl_set_flat(t, i, 0.5 * (double)bl_rng_below(&r, 4) - 1.0);
    return t;
}

static void test_topk_matches_naive(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *inputs[3] = {with_ties(dt, BL_SHAPE(3, 7, 2), 1), randn(dt, BL_SHAPE(3, 7, 2), 2),
                                strided(with_ties, dt, BL_SHAPE(3, 7, 2), 3)};
        for (int i = 0; i < 3; i++)
            for (int largest = 0; largest < 2; largest++) {
                bl_tensor *a = inputs[i], *v, *idx;
                const int dims[4] = {1, -2, 0, -1}, wrapped[4] = {1, 1, 0, 2}, ks[4] = {3, 7, 2, 0};
                for (int j = 0; j < 4; j++) {
                    CHECK(bl_topk(a, ks[j], dims[j], largest, &v, &idx) == BL_OK, "topk");
                    check_best(a, dims[j], wrapped[j], ks[j], largest, v, idx);
                }
            }
        /* Long lines, where a few best are picked by a heap and larger k by a full sort. */
        bl_tensor *rows[3] = {with_ties(dt, BL_SHAPE(2, 101), 4), randn(dt, BL_SHAPE(2, 101), 5),
                              with_ties(dt, BL_SHAPE(2, 300), 6)};
        const int ks[5] = {1, 5, 6, 7, 60};
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < 5; j++) {
                bl_tensor *v, *idx;
                CHECK(bl_topk(rows[i], ks[j], 1, j % 2, &v, &idx) == BL_OK, "topk");
                check_best(rows[i], 1, 1, ks[j], j % 2, v, idx);
            }
    }
}

static void test_sort_is_stable(void) {
    for (int t = 0; t < 2; t++) {
        bl_dtype dt = float_types[t];
        bl_tensor *a = with_ties(dt, BL_SHAPE(4, 37), 1), *v, *idx, *wide = randn(dt, BL_SHAPE(3, 200), 2);
        bl_set_flat(a, 2, NAN);
        bl_set_flat(a, 5, NAN);
        bl_set_flat(a, 20, NAN);
        for (int descending = 0; descending < 2; descending++) {
            CHECK(bl_sort(a, -1, descending, &v, &idx) == BL_OK, "sort");
            check_best(a, -1, 1, 37, descending, v, idx);
            CHECK(bl_sort(a, 0, descending, &v, &idx) == BL_OK, "sort");
            check_best(a, 0, 0, 4, descending, v, idx);
            bl_tensor *b = bl_transpose(a, 0, 1);
            CHECK(bl_sort(b, 0, descending, &v, &idx) == BL_OK, "sort of a transposed input");
            check_best(b, 0, 0, 37, descending, v, idx);
            bl_set_flat(wide, 7, NAN);
            bl_set_flat(wide, 250, -0.0);
            bl_set_flat(wide, 260, 0.0);
            CHECK(bl_sort(wide, 1, descending, &v, &idx) == BL_OK, "sort of long lines");
            check_best(wide, 1, 1, 200, descending, v, idx);
        }
    }
    /* The stated order on one literal line. */
    bl_tensor *line = bl_from_data(BL_F64, BL_SHAPE(6), (double[]){2, 0.0, 2, NAN, -0.0, 3}), *v, *idx;
    CHECK(bl_sort(line, 0, false, &v, &idx) == BL_OK, "sort");
    const int64_t ascending[6] = {1, 4, 0, 2, 5, 3}, descending[6] = {3, 5, 0, 2, 1, 4};
    for (int i = 0; idx && i < 6; i++) CHECK(((int64_t *)idx->data)[i] == ascending[i], "ascending position %d", i);
    CHECK(bl_sort(line, 0, true, &v, &idx) == BL_OK, "sort");
    for (int i = 0; idx && i < 6; i++) CHECK(((int64_t *)idx->data)[i] == descending[i], "descending position %d", i);
}

static void test_topk_errors(void) {
    bl_tensor *a = randn(BL_F32, BL_SHAPE(3, 4), 1), *v = a, *idx = a;
    CHECK(bl_topk(a, 5, 1, true, &v, &idx) == BL_ERR && strstr(bl_last_error(), "bl_topk") &&
              strstr(bl_last_error(), "k = 5") && v == NULL && idx == NULL,
          "k larger than the dim");
    bl_clear_error();
    CHECK(bl_topk(a, -1, 1, true, &v, &idx) == BL_ERR && strstr(bl_last_error(), "k = -1"), "negative k");
    bl_clear_error();
    CHECK(bl_topk(a, 1, 2, true, &v, &idx) == BL_ERR && strstr(bl_last_error(), "dim 2"), "dim out of range");
    bl_clear_error();
    CHECK(bl_sort(bl_arange(BL_I64, 4), 0, true, &v, &idx) == BL_ERR && strstr(bl_last_error(), "bl_sort") &&
              strstr(bl_last_error(), "I64"),
          "integer input");
    bl_clear_error();
    CHECK(bl_sort(NULL, 0, true, &v, &idx) == BL_ERR, "NULL input");
    bl_clear_error();
}

/* ---- one_hot ---- */

static void test_one_hot(void) {
    bl_tensor *labels = bl_transpose(bl_from_data(BL_I64, BL_SHAPE(3, 2), (int64_t[]){4, 0, 2, 2, 1, 3}), 0, 1);
    for (int t = 0; t < 2; t++) {
        bl_tensor *out = bl_one_hot(labels, 5, float_types[t]);
        CHECK(test_shape_is(out, BL_SHAPE(2, 3, 5)) && out->dtype == float_types[t], "one_hot shape and dtype");
        if (!out) continue;
        int bad = 0;
        for (int64_t f = 0; f < 30; f++) bad += bl_get_flat(out, f) != (bl_get_flat(labels, f / 5) == f % 5);
        CHECK(bad == 0, "%d wrong entries", bad);
    }
    CHECK_FAILS(bl_one_hot(index_of(3, (int64_t[]){0, 5, 1}), 5, BL_F32), "bl_one_hot",
                "label 5 is out of range for 5 classes");
    CHECK_FAILS(bl_one_hot(index_of(1, (int64_t[]){-2}), 5, BL_F32), "bl_one_hot", "label -2");
    CHECK_FAILS(bl_one_hot(bl_zeros(BL_I32, BL_SHAPE(2)), 5, BL_F32), "bl_one_hot", "I32");
}

/* ---- gradients ---- */

/* Each function squares its result so that the second derivative runs through the op's backward. */
static bl_tensor *gather_fn(bl_tensor *const *x, void *index) {
    return square(bl_gather(bl_transpose(x[0], 0, 1), 0, index));
}

static bl_tensor *scatter_add_fn(bl_tensor *const *x, void *index) {
    return square(bl_scatter_add(x[0], -1, index, x[1]));
}

static bl_tensor *index_select_fn(bl_tensor *const *x, void *index) {
    return square(bl_index_select(x[0], 1, index));
}

static bl_tensor *masked_select_fn(bl_tensor *const *x, void *mask) {
    return square(bl_masked_select(bl_transpose(x[0], 0, 1), mask));
}

static bl_tensor *topk_fn(bl_tensor *const *x, void *user) {
    bl_tensor *v, *idx;
    return bl_topk(x[0], 2, *(int *)user, true, &v, &idx) == BL_OK ? square(v) : NULL;
}

static bl_tensor *sort_fn(bl_tensor *const *x, void *user) {
    bl_tensor *v, *idx;
    return bl_sort(x[0], 0, true, &v, &idx) == BL_OK ? square(v) : NULL;
}

static void test_gradcheck(void) {
    bl_tensor *a = randn(BL_F64, BL_SHAPE(4, 3), 1);
    a->requires_grad = true;
    CHECK(bl_gradcheck(gather_fn, random_index_of(BL_SHAPE(5, 4), 3, 2), 1, &a, 1e-6, 1e-6, true) == BL_OK,
          "gather");

    bl_tensor *scatter_in[2] = {randn(BL_F64, BL_SHAPE(3, 4), 3), randn(BL_F64, BL_SHAPE(4, 5), 4)};
    scatter_in[0]->requires_grad = scatter_in[1]->requires_grad = true;
    bl_tensor *scatter_index = random_index_of(BL_SHAPE(3, 3), 4, 5);
    CHECK(bl_gradcheck(scatter_add_fn, scatter_index, 2, scatter_in, 1e-6, 1e-6, true) == BL_OK, "scatter_add");
    scatter_in[0]->requires_grad = false;
    CHECK(bl_gradcheck(scatter_add_fn, scatter_index, 2, scatter_in, 1e-6, 1e-6, true) == BL_OK,
          "scatter_add into a constant");

    bl_tensor *b = randn(BL_F64, BL_SHAPE(2, 4, 3), 6);
    b->requires_grad = true;
    CHECK(bl_gradcheck(index_select_fn, index_of(5, (int64_t[]){1, 3, 1, 0, 1}), 1, &b, 1e-6, 1e-6, true) == BL_OK,
          "index_select");

    bl_tensor *mask = bl_from_data(BL_BOOL, BL_SHAPE(4), (uint8_t[]){1, 0, 1, 1});
    CHECK(bl_gradcheck(masked_select_fn, mask, 1, &a, 1e-6, 1e-6, true) == BL_OK, "masked_select");

    /* Normal draws are distinct by far more than the step, so the order is stable under it. */
    bl_tensor *c = randn(BL_F64, BL_SHAPE(3, 5), 7);
    c->requires_grad = true;
    for (int dim = -1; dim <= 0; dim++)
        CHECK(bl_gradcheck(topk_fn, &dim, 1, &c, 1e-6, 1e-6, true) == BL_OK, "topk along dim %d", dim);
    CHECK(bl_gradcheck(sort_fn, NULL, 1, &c, 1e-6, 1e-6, true) == BL_OK, "sort");
}

/* A first-order backward (fused kernels) and a create_graph backward (composite ops) must agree, in
 * F32 where the fast paths run. */
static void test_backward_paths_agree(void) {
    bl_tensor *a = randn(BL_F32, BL_SHAPE(6, 5), 1), *w = randn(BL_F32, BL_SHAPE(4, 5), 2);
    a->requires_grad = true;
    bl_tensor *index = index_of(4, (int64_t[]){5, 0, 5, 3});
    bl_tensor *outs[3] = {bl_index_select(a, 0, index), bl_gather(a, 0, random_index_of(BL_SHAPE(4, 5), 6, 3)),
                          bl_masked_select(a, bl_gt_scalar(a, 0.0))};
    const char *names[3] = {"index_select", "gather", "masked_select"};
    for (int i = 0; i < 3; i++) {
        bl_tensor *loss = i < 2 ? bl_sum(bl_mul(outs[i], w)) : bl_sum(square(outs[i]));
        bl_tensor *fused, *composite;
        CHECK(bl_autograd_grad(1, &loss, NULL, 1, &a, &fused, false) == BL_OK, "%s first order", names[i]);
        CHECK(bl_autograd_grad(1, &loss, NULL, 1, &a, &composite, true) == BL_OK, "%s create_graph", names[i]);
        CHECK(test_max_rel_diff(fused, composite) <= 1e-6, "%s: the two backward paths differ", names[i]);
    }
    /* index_select's gradient, naively: rows of w added at their indices. */
    bl_tensor *grad;
    CHECK(bl_autograd_grad(1, (bl_tensor *[]){bl_sum(bl_mul(outs[0], w))}, NULL, 1, &a, &grad, false) == BL_OK,
          "index_select gradient");
    double worst = 0;
    for (int64_t r = 0; r < 6; r++)
        for (int64_t c = 0; c < 5; c++) {
            double want = 0;
            for (int64_t j = 0; j < 4; j++) want += ((int64_t *)index->data)[j] == r ? bl_get_flat(w, j * 5 + c) : 0;
            worst = fmax(worst, fabs(bl_get_flat(grad, r * 5 + c) - want));
        }
    CHECK(worst <= 1e-6, "index_select gradient off by %g", worst);
}

TEST_MAIN(TEST(test_gather_matches_naive), TEST(test_gather_errors), TEST(test_scatter_add_matches_naive),
          TEST(test_scatter_add_errors), TEST(test_index_select_matches_naive), TEST(test_index_select_errors),
          TEST(test_masked_select_matches_naive), TEST(test_topk_matches_naive), TEST(test_sort_is_stable),
          TEST(test_topk_errors), TEST(test_one_hot), TEST(test_gradcheck), TEST(test_backward_paths_agree))
