/* Convolution: the fast kernels (im2col + GEMM, oneDNN) against the reference loops on odd shapes
 * for all three passes, the reference itself against the adjoint identities and PyTorch, the
 * ops on strided inputs, both backward paths (fused first-order and composite), and gradient
 * checks of first and second order for conv2d and conv_transpose2d. */
#include "test.h"

#include "backend/cpu/conv.h"
#include "backend/ref/ref_conv.h"

#include <omp.h>

static double dot(const bl_tensor *a, const bl_tensor *b) {
    double s = 0;
    for (int64_t i = 0; i < bl_numel(a); i++) s += bl_get_flat(a, i) * bl_get_flat(b, i);
    return s;
}

/* ---- kernels ---- */

typedef struct {
    int64_t N, C, H, W, O, KH, KW, sh, sw, ph, pw, dh, dw, groups;
} conv_case;

static const conv_case kernel_cases[] = {
    {2, 3, 7, 5, 4, 3, 3, 2, 2, 1, 1, 2, 2, 1},    /* stride, padding and dilation together */
    {2, 3, 7, 5, 6, 3, 3, 2, 2, 1, 1, 2, 2, 3},    /* the same, grouped */
    {3, 5, 9, 8, 7, 3, 3, 1, 1, 1, 1, 1, 1, 1},    /* 3x3 "same"; 3 images over 2 threads */
    {2, 6, 6, 7, 4, 1, 1, 1, 1, 0, 0, 1, 1, 2},    /* pointwise (no unfolding), grouped */
    {1, 4, 11, 10, 5, 2, 3, 3, 2, 0, 1, 1, 1, 1},  /* one image, asymmetric kernel and stride */
    {2, 16, 8, 8, 32, 3, 3, 2, 2, 1, 1, 1, 1, 1},  /* a ResNet stage transition */
    {2, 4, 6, 5, 4, 1, 1, 2, 2, 0, 0, 1, 1, 1},    /* strided 1x1 (a ResNet shortcut) */
};

static bl_conv_geom geom_of(const conv_case *c) {
    bl_conv_geom g = {.N = c->N, .C = c->C, .H = c->H, .W = c->W, .O = c->O, .KH = c->KH, .KW = c->KW,
                      .stride_h = c->sh, .stride_w = c->sw, .pad_h = c->ph, .pad_w = c->pw,
                      .dilation_h = c->dh, .dilation_w = c->dw, .groups = c->groups};
    bl_conv_geom_output_size(&g);
    return g;
}

typedef struct {
    bl_tensor *x, *w, *dy, *bias_o, *bias_c;
} conv_data;

static conv_data conv_data_make(const bl_conv_geom *g, bl_dtype dt, uint64_t seed) {
    conv_data d;
    d.x = test_randn(dt, BL_SHAPE(g->N, g->C, g->H, g->W), seed);
    d.w = test_randn(dt, BL_SHAPE(g->O, g->C / g->groups, g->KH, g->KW), seed + 1);
    d.dy = test_randn(dt, BL_SHAPE(g->N, g->O, g->OH, g->OW), seed + 2);
    d.bias_o = test_randn(dt, BL_SHAPE(g->O), seed + 3);
    d.bias_c = test_randn(dt, BL_SHAPE(g->C), seed + 4);
    return d;
}

/* The three reference passes in F32, as the expected values. */
typedef struct {
    bl_tensor *y, *dx, *dw, *db;
} conv_results;

static conv_results reference_results(const bl_conv_geom *g, const conv_data *d) {
    conv_results r;
    r.y = bl_empty(BL_F32, BL_SHAPE(g->N, g->O, g->OH, g->OW));
    r.dx = bl_empty(BL_F32, BL_SHAPE(g->N, g->C, g->H, g->W));
    r.dw = bl_empty(BL_F32, BL_SHAPE(g->O, g->C / g->groups, g->KH, g->KW));
    r.db = bl_empty(BL_F32, BL_SHAPE(g->O));
    ref_conv2d_fwd_f32(g, r.y->data, d->x->data, d->w->data, d->bias_o->data);
    ref_conv2d_bwd_data_f32(g, r.dx->data, d->dy->data, d->w->data, d->bias_c->data);
    ref_conv2d_bwd_weight_f32(g, r.dw->data, d->x->data, d->dy->data);
    ref_channel_sum_f32(g->N, g->O, g->OH * g->OW, r.db->data, d->dy->data);
    return r;
}

static void check_results(const char *impl, int index, const conv_results *got, const conv_results *want) {
    double tol = 1e-4;
    CHECK(test_max_rel_diff(got->y, want->y) < tol, "%s case %d forward differs by %g", impl, index,
          test_max_rel_diff(got->y, want->y));
    CHECK(test_max_rel_diff(got->dx, want->dx) < tol, "%s case %d backward-data differs by %g", impl, index,
          test_max_rel_diff(got->dx, want->dx));
    CHECK(test_max_rel_diff(got->dw, want->dw) < tol, "%s case %d backward-weight differs by %g", impl, index,
          test_max_rel_diff(got->dw, want->dw));
    CHECK(test_max_rel_diff(got->db, want->db) < tol, "%s case %d bias gradient differs by %g", impl, index,
          test_max_rel_diff(got->db, want->db));
}

/* Results the kernels write into: exactly-sized heap buffers (so a sanitizer build catches a
 * write past the end), filled with NaN (so an element a kernel forgets to write cannot pass). */
static bl_tensor *nan_tensor(int ndim, const int64_t *shape) {
    bl_tensor *t = bl_tensor_new_persistent(BL_F32, ndim, shape);
    bl_fill_(t, NAN);
    return t;
}

static conv_results empty_results(const bl_conv_geom *g) {
    conv_results r;
    r.y = nan_tensor(BL_SHAPE(g->N, g->O, g->OH, g->OW));
    r.dx = nan_tensor(BL_SHAPE(g->N, g->C, g->H, g->W));
    r.dw = nan_tensor(BL_SHAPE(g->O, g->C / g->groups, g->KH, g->KW));
    r.db = nan_tensor(BL_SHAPE(g->O));
    return r;
}

static void free_results(conv_results *r) {
    bl_tensor_free(r->y);
    bl_tensor_free(r->dx);
    bl_tensor_free(r->dw);
    bl_tensor_free(r->db);
}

/* The three im2col passes with exactly-sized heap scratch. */
static void run_im2col(const bl_conv_geom *g, const conv_data *d, conv_results *got) {
    void *work[3] = {malloc(cpu_conv2d_workspace(g, BL_CONV_FWD) + 1),
                     malloc(cpu_conv2d_workspace(g, BL_CONV_BWD_DATA) + 1),
                     malloc(cpu_conv2d_workspace(g, BL_CONV_BWD_WEIGHT) + 1)};
    cpu_conv2d_fwd_f32(g, got->y->data, d->x->data, d->w->data, d->bias_o->data, work[0]);
    cpu_conv2d_bwd_data_f32(g, got->dx->data, d->dy->data, d->w->data, d->bias_c->data, work[1]);
    cpu_conv2d_bwd_weight_f32(g, got->dw->data, got->db->data, d->x->data, d->dy->data, work[2]);
    for (int i = 0; i < 3; i++) free(work[i]);
}

static void test_im2col_kernels_match_reference(void) {
    for (int i = 0; i < (int)(sizeof kernel_cases / sizeof kernel_cases[0]); i++) {
        bl_scope s = bl_scope_begin();
        bl_conv_geom g = geom_of(&kernel_cases[i]);
        conv_data d = conv_data_make(&g, BL_F32, 100 + 10 * (uint64_t)i);
        conv_results want = reference_results(&g, &d), got = empty_results(&g);
        run_im2col(&g, &d, &got);
        check_results("im2col", i, &got, &want);
        free_results(&got);
        bl_scope_end(s);
    }
}

static void test_im2col_kernels_single_thread(void) {
    /* With one thread the image loop is serial and the GEMM itself may use the pool; the
     * backward-weight kernel then has no partial sums to combine. */
    int threads = omp_get_max_threads();
    bl_set_threads(1);
    bl_conv_geom g = geom_of(&kernel_cases[1]);
    conv_data d = conv_data_make(&g, BL_F32, 7);
    conv_results want = reference_results(&g, &d), got = empty_results(&g);
    run_im2col(&g, &d, &got);
    check_results("im2col (1 thread)", 1, &got, &want);
    free_results(&got);
    bl_set_threads(threads);
}

static void test_onednn_kernels_match_reference(void) {
#ifdef BALLAST_HAVE_ONEDNN
    for (int i = 0; i < (int)(sizeof kernel_cases / sizeof kernel_cases[0]); i++) {
        bl_scope s = bl_scope_begin();
        bl_conv_geom g = geom_of(&kernel_cases[i]);
        conv_data d = conv_data_make(&g, BL_F32, 200 + 10 * (uint64_t)i);
        conv_results want = reference_results(&g, &d), got = empty_results(&g), again = empty_results(&g);
        size_t bytes[3] = {0, 0, 0};
        bool ok = onednn_conv2d_prepare(&g, BL_CONV_FWD, true, &bytes[0]) == BL_OK &&
                  onednn_conv2d_prepare(&g, BL_CONV_BWD_DATA, false, &bytes[1]) == BL_OK &&
                  onednn_conv2d_prepare(&g, BL_CONV_BWD_WEIGHT, true, &bytes[2]) == BL_OK;
        CHECK(ok, "oneDNN has no primitive for case %d", i);
        void *work[3] = {malloc(bytes[0] + 1), malloc(bytes[1] + 1), malloc(bytes[2] + 1)};
        if (ok) {
            CHECK(onednn_conv2d_fwd_f32(&g, got.y->data, d.x->data, d.w->data, d.bias_o->data, NULL, work[0]) == BL_OK,
                  "case %d forward", i);
            CHECK(onednn_conv2d_bwd_data_f32(&g, got.dx->data, d.dy->data, d.w->data, d.bias_c->data, work[1]) ==
                      BL_OK,
                  "case %d backward-data", i);
            CHECK(onednn_conv2d_bwd_weight_f32(&g, got.dw->data, got.db->data, d.x->data, d.dy->data, work[2]) ==
                      BL_OK,
                  "case %d backward-weight", i);
            check_results("oneDNN", i, &got, &want);
            /* A second call reuses the cached primitive with new buffers. */
            CHECK(onednn_conv2d_fwd_f32(&g, again.y->data, d.x->data, d.w->data, d.bias_o->data, NULL, work[0]) == BL_OK,
                  "case %d forward again", i);
            CHECK(test_max_rel_diff(again.y, want.y) < 1e-4, "case %d cached forward", i);
        }
        for (int k = 0; k < 3; k++) free(work[k]);
        free_results(&got);
        free_results(&again);
        bl_scope_end(s);
    }
    onednn_conv_release_all();
#endif
}

/* The fused backward: one reorder of dy for both passes, and x's copy left by the forward pass. */
static void test_onednn_fused_backward(void) {
#ifdef BALLAST_HAVE_ONEDNN
    for (int i = 0; i < (int)(sizeof kernel_cases / sizeof kernel_cases[0]); i++) {
        bl_scope s = bl_scope_begin();
        bl_conv_geom g = geom_of(&kernel_cases[i]);
        conv_data d = conv_data_make(&g, BL_F32, 400 + 10 * (uint64_t)i);
        conv_results want = reference_results(&g, &d);
        /* The reference input gradient has the transposed conv's bias; this pass adds none. */
        ref_conv2d_bwd_data_f32(&g, want.dx->data, d.dy->data, d.w->data, NULL);
        size_t fwd_bytes = 0, bwd_bytes = 0, saved_bytes = onednn_conv2d_saved_input_bytes(&g, true);
        CHECK(onednn_conv2d_prepare(&g, BL_CONV_FWD, true, &fwd_bytes) == BL_OK &&
                  onednn_conv2d_bwd_prepare(&g, true, &bwd_bytes) == BL_OK,
              "case %d: no primitives", i);
        /* A plain 3x3 convolution (the ResNet case) must take the shortcut. */
        CHECK(i != 5 || saved_bytes > 0, "case %d: the forward pass leaves no copy of x", i);
        void *saved_copy = saved_bytes ? malloc(saved_bytes) : NULL, *work = malloc(fwd_bytes + bwd_bytes + 1);
        for (int variant = 0; variant < 3; variant++) {
            /* 0: everything, with the saved copy; 1: no saved copy; 2: no input gradient, no bias. */
            conv_results got = empty_results(&g);
            onednn_saved_input saved = {variant == 1 ? NULL : saved_copy, true};
            CHECK(onednn_conv2d_fwd_f32(&g, got.y->data, d.x->data, d.w->data, d.bias_o->data, saved_copy, work) ==
                      BL_OK,
                  "case %d forward", i);
            CHECK(onednn_conv2d_bwd_f32(&g, variant == 2 ? NULL : got.dx->data, got.dw->data,
                                        variant == 2 ? NULL : got.db->data, d.dy->data, d.w->data, d.x->data, &saved,
                                        work) == BL_OK,
                  "case %d variant %d backward", i, variant);
            double tol = 1e-4;
            CHECK(test_max_rel_diff(got.y, want.y) < tol, "case %d variant %d forward", i, variant);
            CHECK(test_max_rel_diff(got.dw, want.dw) < tol, "case %d variant %d: weight gradient differs by %g", i,
                  variant, test_max_rel_diff(got.dw, want.dw));
            if (variant < 2) {
                CHECK(test_max_rel_diff(got.dx, want.dx) < tol, "case %d variant %d: input gradient differs by %g", i,
                      variant, test_max_rel_diff(got.dx, want.dx));
                CHECK(test_max_rel_diff(got.db, want.db) < tol, "case %d variant %d: bias gradient", i, variant);
            } else {
                CHECK(isnan(bl_get_flat(got.dx, 0)) && isnan(bl_get_flat(got.db, 0)), "unrequested outputs written");
            }
            free_results(&got);
        }
        free(saved_copy);
        free(work);
        bl_scope_end(s);
    }
#endif
}

static void test_reference_is_adjoint(void) {
    /* <conv(x, w), dy> = <x, bwd_data(dy, w)> = <w, bwd_weight(x, dy)>: the three reference loops
     * are written independently, so this ties each one to the other two. */
    for (int i = 0; i < (int)(sizeof kernel_cases / sizeof kernel_cases[0]); i++) {
        bl_scope s = bl_scope_begin();
        bl_conv_geom g = geom_of(&kernel_cases[i]);
        conv_data d = conv_data_make(&g, BL_F64, 300 + (uint64_t)i);
        bl_tensor *y = bl_empty(BL_F64, BL_SHAPE(g.N, g.O, g.OH, g.OW));
        bl_tensor *dx = bl_empty(BL_F64, BL_SHAPE(g.N, g.C, g.H, g.W));
        bl_tensor *dw = bl_empty(BL_F64, BL_SHAPE(g.O, g.C / g.groups, g.KH, g.KW));
        ref_conv2d_fwd_f64(&g, y->data, d.x->data, d.w->data, NULL);
        ref_conv2d_bwd_data_f64(&g, dx->data, d.dy->data, d.w->data, NULL);
        ref_conv2d_bwd_weight_f64(&g, dw->data, d.x->data, d.dy->data);
        double a = dot(y, d.dy), b = dot(d.x, dx), c = dot(d.w, dw);
        CHECK_CLOSE(b, a, 1e-12);
        CHECK_CLOSE(c, a, 1e-12);
        bl_scope_end(s);
    }
}

static void test_reference_small_example(void) {
    /* 1 image, 1 channel, 3x3 input, 2x2 kernel, no padding: worked out by hand. */
    double x[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9}, w[4] = {1, 0, -1, 2}, y[4], bias[1] = {0.5};
    bl_conv_geom g = {.N = 1, .C = 1, .H = 3, .W = 3, .O = 1, .KH = 2, .KW = 2, .stride_h = 1, .stride_w = 1,
                      .dilation_h = 1, .dilation_w = 1, .groups = 1};
    CHECK(bl_conv_geom_output_size(&g) && g.OH == 2 && g.OW == 2, "output %lldx%lld", (long long)g.OH,
          (long long)g.OW);
    ref_conv2d_fwd_f64(&g, y, x, w, bias);
    /* y[0][0] = 1*1 + 2*0 + 4*(-1) + 5*2 + 0.5 */
    CHECK_CLOSE(y[0], 7.5, 1e-15);
    CHECK_CLOSE(y[1], 1 * 2 - 5 + 6 * 2 + 0.5, 1e-15);
    CHECK_CLOSE(y[2], 1 * 4 - 7 + 8 * 2 + 0.5, 1e-15);
    CHECK_CLOSE(y[3], 1 * 5 - 8 + 9 * 2 + 0.5, 1e-15);
}

/* ---- ops ---- */

static bl_conv_args conv_args(int sh, int sw, int ph, int pw, int dh, int dw, int groups) {
    bl_conv_args a = bl_conv_args_make(1, 0);
    a.stride_h = sh, a.stride_w = sw, a.pad_h = ph, a.pad_w = pw, a.dilation_h = dh, a.dilation_w = dw;
    a.groups = groups;
    return a;
}

/* Golden values: torch.nn.functional on the same sin patterns in float64, reduced by checksum. */
static void test_conv_ops_match_torch(void) {
    for (int f = 0; f < 2; f++) {
        bl_dtype dt = f ? BL_F32 : BL_F64;
        double tol = f ? 1e-5 : 1e-12;
        bl_tensor *x = test_pattern(dt, BL_SHAPE(2, 3, 7, 5), 0.1);
        bl_tensor *y = bl_conv2d(x, test_pattern(dt, BL_SHAPE(6, 1, 3, 3), 0.2), test_pattern(dt, BL_SHAPE(6), 0.3),
                                 conv_args(2, 2, 1, 1, 2, 2, 3));
        CHECK(test_shape_is(y, BL_SHAPE(2, 6, 3, 2)), "conv2d groups 3 gives %s",
              y ? bl_shape_str(y, (char[64]){0}, 64) : "NULL");
        CHECK_CLOSE(test_checksum(y), 6.9067504862539, tol);
        y = bl_conv2d(x, test_pattern(dt, BL_SHAPE(4, 3, 3, 3), 0.2), test_pattern(dt, BL_SHAPE(4), 0.3),
                      conv_args(2, 1, 1, 2, 1, 2, 1));
        CHECK(test_shape_is(y, BL_SHAPE(2, 4, 4, 5)), "asymmetric conv2d");
        CHECK_CLOSE(test_checksum(y), 11.3044953508242, tol);

        bl_conv_args t = conv_args(2, 2, 1, 1, 1, 1, 2);
        t.output_pad_h = t.output_pad_w = 1;
        y = bl_conv_transpose2d(test_pattern(dt, BL_SHAPE(2, 4, 4, 3), 0.1), test_pattern(dt, BL_SHAPE(4, 2, 3, 3), 0.2),
                                test_pattern(dt, BL_SHAPE(4), 0.3), t);
        CHECK(test_shape_is(y, BL_SHAPE(2, 4, 8, 6)), "conv_transpose2d groups 2");
        CHECK_CLOSE(test_checksum(y), -1.66934023692262, tol);
        t = conv_args(2, 3, 0, 1, 2, 1, 1);
        t.output_pad_h = 1, t.output_pad_w = 2;
        y = bl_conv_transpose2d(test_pattern(dt, BL_SHAPE(1, 3, 3, 4), 0.1), test_pattern(dt, BL_SHAPE(3, 2, 2, 3), 0.2),
                                test_pattern(dt, BL_SHAPE(2), 0.3), t);
        CHECK(test_shape_is(y, BL_SHAPE(1, 2, 8, 12)), "asymmetric conv_transpose2d");
        CHECK_CLOSE(test_checksum(y), 25.6685465711121, tol);
    }
}

static void test_conv2d_strided_input(void) {
    /* The input is a transposed view (H and W swapped) and the weight a slice: the op must read
     * through the strides. Compared against the same values made contiguous. */
    bl_tensor *base = test_randn(BL_F32, BL_SHAPE(2, 6, 5, 7), 11);
    bl_tensor *x = bl_transpose(base, 2, 3);
    bl_tensor *wbase = test_randn(BL_F32, BL_SHAPE(8, 3, 3, 3), 12);
    bl_tensor *w = bl_slice(wbase, 0, 0, 8, 2);
    CHECK(x && w && !bl_is_contiguous(x) && !bl_is_contiguous(w), "views are strided");
    bl_conv_args a = conv_args(1, 2, 1, 1, 1, 1, 2);
    bl_tensor *got = bl_conv2d(x, w, NULL, a);
    bl_tensor *want = bl_conv2d(bl_contiguous(x), bl_contiguous(w), NULL, a);
    CHECK(got && want && test_max_rel_diff(got, want) == 0.0, "strided conv2d differs by %g",
          test_max_rel_diff(got, want));
}

typedef struct {
    bl_conv_args args;
    bool transpose;
} conv_fn_args;

static bl_tensor *conv_fn(bl_tensor *const *in, void *user) {
    const conv_fn_args *a = user;
    return a->transpose ? bl_conv_transpose2d(in[0], in[1], in[2], a->args) : bl_conv2d(in[0], in[1], in[2], a->args);
}

static void gradcheck_conv(bool transpose, bl_conv_args args, const int64_t *xs, const int64_t *ws, int64_t nb) {
    bl_tensor *in[3] = {test_randn(BL_F64, 4, xs, 21), test_randn(BL_F64, 4, ws, 22), test_randn(BL_F64, 1, &nb, 23)};
    for (int i = 0; i < 3; i++) in[i]->requires_grad = true;
    conv_fn_args a = {args, transpose};
    bl_clear_error();
    CHECK(bl_gradcheck(conv_fn, &a, 3, in, 1e-6, 1e-6, false) == BL_OK, "%s first order",
          transpose ? "conv_transpose2d" : "conv2d");
    bl_clear_error();
    CHECK(bl_gradcheck(conv_fn, &a, 3, in, 1e-6, 1e-6, true) == BL_OK, "%s second order",
          transpose ? "conv_transpose2d" : "conv2d");
}

static void test_conv2d_gradcheck(void) {
    gradcheck_conv(false, conv_args(2, 2, 1, 1, 2, 2, 1), (int64_t[]){2, 3, 7, 5}, (int64_t[]){4, 3, 3, 3}, 4);
    gradcheck_conv(false, conv_args(2, 2, 1, 1, 2, 2, 3), (int64_t[]){2, 3, 7, 5}, (int64_t[]){6, 1, 3, 3}, 6);
    gradcheck_conv(false, conv_args(1, 2, 0, 1, 1, 1, 1), (int64_t[]){1, 2, 4, 5}, (int64_t[]){3, 2, 2, 3}, 3);
}

static void test_conv_transpose2d_gradcheck(void) {
    bl_conv_args a = conv_args(2, 2, 1, 1, 1, 1, 2);
    a.output_pad_h = 1;
    gradcheck_conv(true, a, (int64_t[]){2, 4, 3, 4}, (int64_t[]){4, 2, 3, 3}, 4);
    a = conv_args(2, 1, 0, 1, 2, 1, 1);
    a.output_pad_h = 1;
    gradcheck_conv(true, a, (int64_t[]){1, 3, 3, 4}, (int64_t[]){3, 2, 2, 3}, 2);
}

static void test_second_order_reaches_inputs_only_through_other_inputs(void) {
    /* conv2d is bilinear: d2/dx2 is 0, so the gradient of <dL/dx, v> flows to w only (and to
     * nothing through x). A regression guard for the backward-data op's own gradient routing. */
    bl_tensor *x = test_randn(BL_F64, BL_SHAPE(1, 2, 4, 4), 31), *w = test_randn(BL_F64, BL_SHAPE(3, 2, 3, 3), 32);
    x->requires_grad = w->requires_grad = true;
    bl_tensor *y = bl_conv2d(x, w, NULL, bl_conv_args_make(1, 1));
    bl_tensor *r = test_randn(BL_F64, BL_SHAPE(1, 3, 4, 4), 33);
    bl_tensor *loss = bl_sum(bl_mul(y, r)), *gx[1];
    CHECK(bl_autograd_grad(1, &loss, NULL, 1, &x, gx, true) == BL_OK, "first gradient");
    bl_tensor *v = test_randn(BL_F64, BL_SHAPE(1, 2, 4, 4), 34);
    bl_tensor *g2 = bl_sum(bl_mul(gx[0], v)), *h[2];
    bl_tensor *wrt[2] = {x, w};
    CHECK(bl_autograd_grad(1, &g2, NULL, 2, wrt, h, false) == BL_OK, "second gradient");
    double hx = 0;
    for (int64_t i = 0; i < bl_numel(h[0]); i++) hx += fabs(bl_get_flat(h[0], i));
    CHECK(hx == 0.0, "d2/dx2 of a convolution is %g, expected 0", hx);
    /* d/dw <bwd_data(r, w), v> = bwd_weight(v, r), by the adjoint identity. */
    bl_conv_geom g = {.N = 1, .C = 2, .H = 4, .W = 4, .O = 3, .KH = 3, .KW = 3, .stride_h = 1, .stride_w = 1,
                      .pad_h = 1, .pad_w = 1, .dilation_h = 1, .dilation_w = 1, .groups = 1};
    bl_conv_geom_output_size(&g);
    bl_tensor *want = bl_empty(BL_F64, BL_SHAPE(3, 2, 3, 3));
    ref_conv2d_bwd_weight_f64(&g, want->data, v->data, r->data);
    CHECK(test_max_rel_diff(h[1], want) < 1e-12, "d2/dxdw differs by %g", test_max_rel_diff(h[1], want));
}

/* F32 gradients of sum(conv2d(x, w, b) * r) on both backward paths against the F64 reference. */
static void test_conv2d_backward_paths_f32(void) {
    const conv_case *c = &kernel_cases[5];
    bl_conv_geom g = geom_of(c);
    conv_data d = conv_data_make(&g, BL_F32, 41);
    bl_tensor *x = d.x, *w = d.w, *b = d.bias_o, *r = d.dy;
    x->requires_grad = w->requires_grad = b->requires_grad = true;
    bl_conv_args a = conv_args((int)c->sh, (int)c->sw, (int)c->ph, (int)c->pw, (int)c->dh, (int)c->dw, (int)c->groups);
    /* Expected, from the F64 reference kernels on the same values. */
    bl_tensor *x64 = bl_to_dtype(bl_detach(x), BL_F64), *r64 = bl_to_dtype(r, BL_F64);
    bl_tensor *w64 = bl_to_dtype(bl_detach(w), BL_F64);
    bl_tensor *gx = bl_empty(BL_F64, 4, x->shape), *gw = bl_empty(BL_F64, 4, w->shape);
    bl_tensor *gb = bl_empty(BL_F64, 1, b->shape);
    ref_conv2d_bwd_data_f64(&g, gx->data, r64->data, w64->data, NULL);
    ref_conv2d_bwd_weight_f64(&g, gw->data, x64->data, r64->data);
    ref_channel_sum_f64(g.N, g.O, g.OH * g.OW, gb->data, r64->data);
    for (int create_graph = 0; create_graph < 2; create_graph++) {
        bl_tensor *loss = bl_sum(bl_mul(bl_conv2d(x, w, b, a), r));
        bl_tensor *in[3] = {x, w, b}, *grads[3];
        CHECK(bl_autograd_grad(1, &loss, NULL, 3, in, grads, create_graph) == BL_OK, "gradients");
        CHECK(test_max_rel_diff(grads[0], gx) < 1e-4, "create_graph %d: input gradient differs by %g", create_graph,
              test_max_rel_diff(grads[0], gx));
        CHECK(test_max_rel_diff(grads[1], gw) < 1e-4, "create_graph %d: weight gradient differs by %g", create_graph,
              test_max_rel_diff(grads[1], gw));
        CHECK(test_max_rel_diff(grads[2], gb) < 1e-4, "create_graph %d: bias gradient differs by %g", create_graph,
              test_max_rel_diff(grads[2], gb));
    }
    /* Frozen weight: the bias gradient alone. */
    w->requires_grad = false;
    bl_tensor *loss = bl_sum(bl_mul(bl_conv2d(x, w, b, a), r));
    bl_tensor *grads[1];
    CHECK(bl_autograd_grad(1, &loss, NULL, 1, &b, grads, false) == BL_OK, "bias gradient");
    CHECK(test_max_rel_diff(grads[0], gb) < 1e-4, "bias-only gradient differs by %g", test_max_rel_diff(grads[0], gb));
}

static void test_conv_errors(void) {
    bl_tensor *x = bl_zeros(BL_F32, BL_SHAPE(2, 3, 7, 5));
    bl_clear_error();
    CHECK(!bl_conv2d(x, bl_zeros(BL_F32, BL_SHAPE(4, 2, 3, 3)), NULL, bl_conv_args_make(1, 1)) &&
              strstr(bl_last_error(), "conv2d") && strstr(bl_last_error(), "[4, 2, 3, 3]"),
          "channel mismatch");
    bl_clear_error();
    CHECK(!bl_conv2d(x, bl_zeros(BL_F32, BL_SHAPE(4, 3, 9, 3)), NULL, bl_conv_args_make(1, 0)) &&
              strstr(bl_last_error(), "smaller"),
          "kernel larger than the input");
    bl_clear_error();
    CHECK(!bl_conv2d(x, bl_zeros(BL_F64, BL_SHAPE(4, 3, 3, 3)), NULL, bl_conv_args_make(1, 0)) &&
              strstr(bl_last_error(), "dtype"),
          "dtype mismatch");
    bl_clear_error();
    bl_tensor *w = bl_zeros(BL_F32, BL_SHAPE(4, 3, 3, 3));
    CHECK(!bl_conv2d(x, w, bl_zeros(BL_F32, BL_SHAPE(5)), bl_conv_args_make(1, 0)) &&
              strstr(bl_last_error(), "bias"),
          "bias size");
    bl_clear_error();
    bl_conv_args a = bl_conv_args_make(2, 0);
    a.output_pad_h = 2;
    CHECK(!bl_conv_transpose2d(x, bl_zeros(BL_F32, BL_SHAPE(3, 2, 3, 3)), NULL, a) &&
              strstr(bl_last_error(), "output padding"),
          "output padding too large");
    bl_clear_error();
    CHECK(!bl_conv2d(NULL, x, NULL, bl_conv_args_make(1, 0)), "NULL input propagates");
}

/* The F32 op tests again on each implementation the ops can choose. */
static void test_ops_on_every_implementation(void) {
    static const char *const impls[] = {"ref", "im2col", "onednn"};
    for (int i = 0; i < 3; i++) {
        setenv("BALLAST_CONV", impls[i], 1);
        int failures = test_failures;
        test_conv_ops_match_torch();
        test_conv2d_strided_input();
        test_conv2d_backward_paths_f32();
        CHECK(failures == test_failures, "with BALLAST_CONV=%s", impls[i]);
    }
    unsetenv("BALLAST_CONV");
}

TEST_MAIN(TEST(test_im2col_kernels_match_reference), TEST(test_im2col_kernels_single_thread),
          TEST(test_onednn_kernels_match_reference), TEST(test_onednn_fused_backward),
          TEST(test_reference_is_adjoint),
          TEST(test_reference_small_example), TEST(test_conv_ops_match_torch), TEST(test_conv2d_strided_input),
          TEST(test_conv2d_gradcheck), TEST(test_conv_transpose2d_gradcheck),
          TEST(test_second_order_reaches_inputs_only_through_other_inputs), TEST(test_conv2d_backward_paths_f32),
          TEST(test_ops_on_every_implementation), TEST(test_conv_errors))
