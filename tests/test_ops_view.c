/* Reshape as a view: when the new dims only split or merge runs of dims laid out one inside the
 * other, the result shares the input's memory whatever its strides (a permuted, sliced or
 * expanded tensor); otherwise it is a copy. Checked on the values (against index arithmetic on a
 * contiguous copy), on whether memory is shared (a write through the result shows in the input),
 * and by first- and second-order gradient checks through strided reshapes. */
#include "test.h"

/* Whether r's storage is t's: writing through r changes t. */
static bool shares_memory(bl_tensor *r, const bl_tensor *t) {
    if (bl_numel(r) == 0) return false;
    double before = bl_get_flat(r, 0);
    bl_set_flat(r, 0, before + 1000);
    bool shared = false;
    for (int64_t i = 0; i < bl_numel(t) && !shared; i++) shared = bl_get_flat(t, i) == before + 1000;
    bl_set_flat(r, 0, before);
    return shared;
}

/* r holds t's values in row-major order (what reshape means, view or copy). */
static bool same_values_in_order(const bl_tensor *r, const bl_tensor *t) {
    if (!r || bl_numel(r) != bl_numel(t)) return false;
    for (int64_t i = 0; i < bl_numel(t); i++)
        if (bl_get_flat(r, i) != bl_get_flat(t, i)) return false;
    return true;
}

static void test_viewable_reshapes_share_memory(void) {
    bl_tensor *base = bl_reshape(bl_arange(BL_F32, 2 * 3 * 4 * 5), BL_SHAPE(2, 3, 4, 5));
    /* (2, 3, 4, 5) -> permute (1, 0, 2, 3) -> (3, 2, 4, 5): the last two dims stay nested */
    bl_tensor *q = bl_permute(base, (const int[]){1, 0, 2, 3});
    /* (2, 3, 4, 5) -> permute (0, 2, 1, 3) -> (2, 4, 3, 5): no two dims nested but the last */
    bl_tensor *p = bl_permute(base, (const int[]){0, 2, 1, 3});
    struct { bl_tensor *t; int ndim; int64_t shape[BL_MAX_DIMS]; const char *what; } views[] = {
        {q, 3, {3, 2, 20}, "merge the inner nested pair"},
        {q, 5, {3, 2, 2, 2, 5}, "split a dim"},
        {p, 5, {2, 2, 2, 3, 5}, "split an outer dim"},
        {p, 4, {2, 4, 3, 5}, "same shape"},
        {bl_select(p, 2, 1), 3, {2, 4, 5}, "squeeze after select (the per-head view)"},
        {bl_transpose(bl_transpose(base, 1, 2), 1, 2), 2, {6, 20}, "transposed back: contiguous again"},
        {bl_slice(base, 3, 0, 5, 2), 3, {6, 4, 3}, "merge outer dims of a strided slice"},
        {bl_expand(bl_reshape(bl_arange(BL_F32, 5), BL_SHAPE(1, 5)), BL_SHAPE(4, 5)), 3, {2, 2, 5}, "split an expanded dim"},
        {bl_unsqueeze(p, 2), 5, {2, 4, 1, 3, 5}, "size-1 dims"},
    };
    for (size_t i = 0; i < sizeof views / sizeof views[0]; i++) {
        bl_tensor *r = bl_reshape(views[i].t, views[i].ndim, views[i].shape);
        CHECK(same_values_in_order(r, views[i].t), "%s: values", views[i].what);
        CHECK(r && shares_memory(r, views[i].t), "%s: shares memory", views[i].what);
    }
}

static void test_other_reshapes_copy(void) {
    bl_tensor *base = bl_reshape(bl_arange(BL_F32, 24), BL_SHAPE(2, 3, 4));
    struct { bl_tensor *t; int ndim; int64_t shape[BL_MAX_DIMS]; const char *what; } copies[] = {
        {bl_transpose(base, 1, 2), 2, {2, 12}, "merge transposed dims"},
        {bl_transpose(base, 0, 2), 1, {24}, "flatten a transpose"},
        {bl_permute(bl_reshape(base, BL_SHAPE(2, 3, 2, 2)), (const int[]){0, 2, 1, 3}), 3, {2, 6, 2},
         "merge dims a permute separated"},
        {bl_slice(base, 2, 0, 3, 1), 2, {2, 9}, "merge across a gap"},
    };
    for (size_t i = 0; i < sizeof copies / sizeof copies[0]; i++) {
        bl_tensor *r = bl_reshape(copies[i].t, copies[i].ndim, copies[i].shape);
        CHECK(same_values_in_order(r, copies[i].t), "%s: values", copies[i].what);
        CHECK(r && bl_is_contiguous(r) && !shares_memory(r, copies[i].t), "%s: a contiguous copy", copies[i].what);
    }
    bl_tensor *empty = bl_reshape(bl_transpose(bl_zeros(BL_F32, BL_SHAPE(0, 3)), 0, 1), BL_SHAPE(3, 0, 1));
    CHECK(empty && empty->shape[1] == 0, "an empty tensor reshapes");
}

static bl_tensor *permuted_reshape_fn(bl_tensor *const *in, void *user) {
    /* (2, 3, 4) -> (3, 2, 4) by permute, then (3, 2, 2, 2) (a view: the last dim splits) and,
     * from a transpose, (6, 4) (a copy) */
    bl_tensor *viewed = bl_reshape(bl_permute(in[0], (const int[]){1, 0, 2}), BL_SHAPE(3, 2, 2, 2));
    bl_tensor *copied = bl_reshape(bl_transpose(in[0], 0, 1), BL_SHAPE(6, 4));
    return bl_add(bl_reshape(bl_mul(viewed, viewed), BL_SHAPE(3, 8)), bl_reshape(bl_mul(copied, copied), BL_SHAPE(3, 8)));
}

static void test_gradients_through_strided_reshapes(void) {
    bl_tensor *x = test_randn(BL_F64, BL_SHAPE(2, 3, 4), 1);
    x->requires_grad = true;
    CHECK(bl_gradcheck(permuted_reshape_fn, NULL, 1, &x, 1e-6, 1e-6, true) == BL_OK, "gradcheck");
}

TEST_MAIN(TEST(test_viewable_reshapes_share_memory), TEST(test_other_reshapes_copy),
          TEST(test_gradients_through_strided_reshapes))
