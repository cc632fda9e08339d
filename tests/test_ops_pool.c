/* Pooling and resizing: max/avg pools (fixed and adaptive) and nearest/bilinear upsampling
 * against naive per-element definitions written here, PyTorch golden checksums, gradient routing
 * of max pooling, strided inputs, and gradient checks of first and second order. */
#include "test.h"

/* "[2, 3, 4, 5]", in one of a few rotating buffers. */
static const char *shape_text(const bl_tensor *t) {
    static char buffers[4][64];
    static int next;
    return t ? bl_shape_str(t, buffers[next++ & 3], 64) : "NULL";
}

static double at(const bl_tensor *t, int64_t n, int64_t c, int64_t h, int64_t w) {
    return bl_get_flat(t, ((n * t->shape[1] + c) * t->shape[2] + h) * t->shape[3] + w);
}

/* ---- naive definitions ---- */

typedef enum { POOL_MAX, POOL_AVG } pool_kind;

/* torch.nn.functional.{max,avg}_pool2d (count_include_pad, floor mode), element by element. */
static bl_tensor *naive_pool(const bl_tensor *x, pool_kind kind, int k, int s, int p) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    int64_t OH = (H + 2 * p - k) / s + 1, OW = (W + 2 * p - k) / s + 1;
    bl_tensor *y = bl_empty(BL_F64, BL_SHAPE(N, C, OH, OW));
    int64_t o = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    double best = -INFINITY, sum = 0;
                    for (int64_t i = 0; i < k; i++)
                        for (int64_t j = 0; j < k; j++) {
                            int64_t h = oh * s - p + i, w = ow * s - p + j;
                            if (h < 0 || h >= H || w < 0 || w >= W) continue;
                            best = fmax(best, at(x, n, c, h, w));
                            sum += at(x, n, c, h, w);
                        }
                    bl_set_flat(y, o++, kind == POOL_MAX ? best : sum / (k * k));
                }
    return y;
}

static bl_tensor *naive_adaptive(const bl_tensor *x, pool_kind kind, int64_t OH, int64_t OW) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    bl_tensor *y = bl_empty(BL_F64, BL_SHAPE(N, C, OH, OW));
    int64_t o = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++) {
                    int64_t h0 = (int64_t)floor((double)(oh * H) / OH), h1 = (int64_t)ceil((double)((oh + 1) * H) / OH);
                    int64_t w0 = (int64_t)floor((double)(ow * W) / OW), w1 = (int64_t)ceil((double)((ow + 1) * W) / OW);
                    double best = -INFINITY, sum = 0;
                    for (int64_t h = h0; h < h1; h++)
                        for (int64_t w = w0; w < w1; w++) {
                            best = fmax(best, at(x, n, c, h, w));
                            sum += at(x, n, c, h, w);
                        }
                    bl_set_flat(y, o++, kind == POOL_MAX ? best : sum / (double)((h1 - h0) * (w1 - w0)));
                }
    return y;
}

/* Source coordinate of output o, as torch's area_pixel_compute_source_index. */
static double source_coord(int64_t o, int64_t in, int64_t out, bool align_corners) {
    if (align_corners) return out > 1 ? (double)o * (double)(in - 1) / (double)(out - 1) : 0.0;
    double s = ((double)o + 0.5) * (double)in / (double)out - 0.5;
    return s < 0 ? 0 : s;
}

static double bilinear_at(const bl_tensor *x, int64_t n, int64_t c, double sh, double sw) {
    int64_t H = x->shape[2], W = x->shape[3];
    int64_t h0 = (int64_t)sh, w0 = (int64_t)sw;
    int64_t h1 = h0 + 1 < H ? h0 + 1 : h0, w1 = w0 + 1 < W ? w0 + 1 : w0;
    double fh = sh - (double)h0, fw = sw - (double)w0;
    return (1 - fh) * ((1 - fw) * at(x, n, c, h0, w0) + fw * at(x, n, c, h0, w1)) +
           fh * ((1 - fw) * at(x, n, c, h1, w0) + fw * at(x, n, c, h1, w1));
}

static bl_tensor *naive_resize(const bl_tensor *x, bool bilinear, bool align_corners, int64_t OH, int64_t OW) {
    int64_t N = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    bl_tensor *y = bl_empty(BL_F64, BL_SHAPE(N, C, OH, OW));
    int64_t o = 0;
    for (int64_t n = 0; n < N; n++)
        for (int64_t c = 0; c < C; c++)
            for (int64_t oh = 0; oh < OH; oh++)
                for (int64_t ow = 0; ow < OW; ow++)
                    bl_set_flat(y, o++,
                                bilinear ? bilinear_at(x, n, c, source_coord(oh, H, OH, align_corners),
                                                       source_coord(ow, W, OW, align_corners))
                                         : at(x, n, c, oh * H / OH, ow * W / OW));
    return y;
}

/* ---- values ---- */

static void check_against(const char *what, bl_tensor *got, const bl_tensor *want, double tol) {
    CHECK(got && bl_same_shape(got, want), "%s: shape %s, expected %s", what, shape_text(got), shape_text(want));
    CHECK(test_max_rel_diff(got, want) <= tol, "%s differs by %g", what, test_max_rel_diff(got, want));
}

/* Pools on F32 and F64 inputs, contiguous and strided (a transposed view), odd shapes. */
static void test_pools_match_naive(void) {
    for (int f = 0; f < 2; f++) {
        bl_dtype dt = f ? BL_F32 : BL_F64;
        double tol = f ? 1e-6 : 1e-14;
        bl_tensor *base = test_randn(dt, BL_SHAPE(2, 3, 6, 9), 1);
        bl_tensor *inputs[2] = {test_randn(dt, BL_SHAPE(2, 3, 9, 6), 2), bl_transpose(base, 2, 3)};
        for (int v = 0; v < 2; v++) {
            bl_tensor *x = inputs[v], *x64 = bl_to_dtype(bl_contiguous(x), BL_F64);
            struct {
                const char *name;
                bl_tensor *got, *want;
            } cases[] = {
                {"max_pool2d k3 s2 p1", bl_max_pool2d(x, 3, 2, 1), naive_pool(x64, POOL_MAX, 3, 2, 1)},
                {"max_pool2d k2 s1 p0", bl_max_pool2d(x, 2, 1, 0), naive_pool(x64, POOL_MAX, 2, 1, 0)},
                {"max_pool2d k4 default stride p2", bl_max_pool2d(x, 4, 0, 2), naive_pool(x64, POOL_MAX, 4, 4, 2)},
                {"avg_pool2d k3 s2 p1", bl_avg_pool2d(x, 3, 2, 1), naive_pool(x64, POOL_AVG, 3, 2, 1)},
                {"avg_pool2d k2 s3 p1", bl_avg_pool2d(x, 2, 3, 1), naive_pool(x64, POOL_AVG, 2, 3, 1)},
                {"adaptive_avg_pool2d 4x4", bl_adaptive_avg_pool2d(x, 4, 4), naive_adaptive(x64, POOL_AVG, 4, 4)},
                {"adaptive_avg_pool2d 1x1", bl_adaptive_avg_pool2d(x, 1, 1), naive_adaptive(x64, POOL_AVG, 1, 1)},
                {"adaptive_avg_pool2d 11x7", bl_adaptive_avg_pool2d(x, 11, 7), naive_adaptive(x64, POOL_AVG, 11, 7)},
                {"adaptive_max_pool2d 4x5", bl_adaptive_max_pool2d(x, 4, 5), naive_adaptive(x64, POOL_MAX, 4, 5)},
            };
            for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
                check_against(cases[i].name, cases[i].got, cases[i].want, tol);
        }
    }
}

static void test_resize_matches_naive(void) {
    for (int f = 0; f < 2; f++) {
        bl_dtype dt = f ? BL_F32 : BL_F64;
        double tol = f ? 1e-6 : 1e-14;
        bl_tensor *base = test_randn(dt, BL_SHAPE(2, 3, 7, 4), 3);
        bl_tensor *inputs[2] = {test_randn(dt, BL_SHAPE(2, 3, 4, 7), 4), bl_transpose(base, 2, 3)};
        static const int64_t sizes[][2] = {{9, 13}, {8, 14}, {3, 5}, {1, 1}, {4, 7}};
        for (int v = 0; v < 2; v++) {
            bl_tensor *x = inputs[v], *x64 = bl_to_dtype(bl_contiguous(x), BL_F64);
            for (int s = 0; s < 5; s++) {
                int oh = (int)sizes[s][0], ow = (int)sizes[s][1];
                char what[96];
                snprintf(what, sizeof what, "upsample_nearest2d to %dx%d", oh, ow);
                check_against(what, bl_upsample_nearest2d(x, oh, ow), naive_resize(x64, false, false, oh, ow), tol);
                for (int ac = 0; ac < 2; ac++) {
                    snprintf(what, sizeof what, "upsample_bilinear2d to %dx%d, align_corners %d", oh, ow, ac);
                    check_against(what, bl_upsample_bilinear2d(x, oh, ow, ac), naive_resize(x64, true, ac, oh, ow),
                                  tol);
                }
            }
        }
    }
}

/* Golden values: torch.nn.functional on the same sin patterns in float64, reduced by checksum. */
static void test_match_torch(void) {
    bl_tensor *p = test_pattern(BL_F64, BL_SHAPE(2, 3, 7, 6), 0.4), *u = test_pattern(BL_F64, BL_SHAPE(2, 3, 4, 5), 0.5);
    struct {
        const char *name;
        bl_tensor *y;
        int64_t oh, ow;
        double want;
    } cases[] = {
        {"max_pool2d(3, 2, 1)", bl_max_pool2d(p, 3, 2, 1), 4, 3, 8.75739371436528},
        {"avg_pool2d(3, 2, 1)", bl_avg_pool2d(p, 3, 2, 1), 4, 3, 0.477423492339354},
        {"avg_pool2d(2)", bl_avg_pool2d(p, 2, 0, 0), 3, 3, 0.357702736952564},
        {"adaptive_avg_pool2d(3, 4)", bl_adaptive_avg_pool2d(p, 3, 4), 3, 4, 0.019576200674244},
        {"adaptive_max_pool2d(3, 4)", bl_adaptive_max_pool2d(p, 3, 4), 3, 4, 8.58894912047536},
        {"adaptive_avg_pool2d(9, 8)", bl_adaptive_avg_pool2d(p, 9, 8), 9, 8, 6.70798551085756},
        {"nearest to 7x9", bl_upsample_nearest2d(u, 7, 9), 7, 9, 112.811952858981},
        {"nearest to 3x2", bl_upsample_nearest2d(u, 3, 2), 3, 2, -1.60044489910859},
        {"bilinear to 7x9", bl_upsample_bilinear2d(u, 7, 9, false), 7, 9, 103.988230956945},
        {"bilinear to 7x9, align_corners", bl_upsample_bilinear2d(u, 7, 9, true), 7, 9, 106.253862034086},
        {"bilinear to 3x2", bl_upsample_bilinear2d(u, 3, 2, false), 3, 2, 2.58255860853972},
        {"bilinear to 1x3, align_corners", bl_upsample_bilinear2d(u, 1, 3, true), 1, 3, 1.68693213632397},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        CHECK(test_shape_is(cases[i].y, BL_SHAPE(2, 3, cases[i].oh, cases[i].ow)), "%s: shape %s", cases[i].name,
              shape_text(cases[i].y));
        CHECK(fabs(test_checksum(cases[i].y) - cases[i].want) < 1e-11, "%s: checksum %.15g, torch %.15g", cases[i].name,
              test_checksum(cases[i].y), cases[i].want);
    }
}

/* ---- gradients ---- */

static void test_max_pool_gradient_goes_to_argmax(void) {
    /* One 4x4 plane, 2x2 windows: each window's gradient lands on its largest element only; with
     * overlapping windows (stride 1) an element that wins twice gets both. */
    double v[16] = {1, 5, 2, 0, 3, 4, 8, 1, 0, 9, 2, 2, 7, 1, 3, 6};
    bl_tensor *x = bl_from_data(BL_F64, BL_SHAPE(1, 1, 4, 4), v);
    x->requires_grad = true;
    CHECK(bl_backward(bl_sum(bl_max_pool2d(x, 2, 2, 0))) == BL_OK, "backward");
    double want[16] = {0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1};
    for (int i = 0; i < 16; i++) CHECK(x->grad && bl_get_flat(x->grad, i) == want[i], "stride 2, element %d", i);
    bl_zero_grad(x);
    CHECK(bl_backward(bl_sum(bl_max_pool2d(x, 2, 1, 0))) == BL_OK, "backward");
    /* Windows (3x3 of them): maxima 5 8 8 / 9 9 8 / 9 9 6. */
    double want1[16] = {0, 1, 0, 0, 0, 0, 3, 0, 0, 4, 0, 0, 0, 0, 0, 1};
    for (int i = 0; i < 16; i++) CHECK(bl_get_flat(x->grad, i) == want1[i], "stride 1, element %d", i);
}

typedef enum { OP_MAX, OP_AVG, OP_ADAPTIVE_AVG, OP_ADAPTIVE_MAX, OP_NEAREST, OP_BILINEAR, OP_BILINEAR_AC } pool_op;

static const char *const names[] = {"max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d",
                                    "upsample_nearest2d", "upsample_bilinear2d", "upsample_bilinear2d (corners)"};

static bl_tensor *pool_fn(bl_tensor *const *in, void *user) {
    switch (*(const pool_op *)user) {
    case OP_MAX: return bl_max_pool2d(in[0], 3, 2, 1);
    case OP_AVG: return bl_avg_pool2d(in[0], 3, 2, 1);
    case OP_ADAPTIVE_AVG: return bl_adaptive_avg_pool2d(in[0], 3, 4);
    case OP_ADAPTIVE_MAX: return bl_adaptive_max_pool2d(in[0], 3, 2);
    case OP_NEAREST: return bl_upsample_nearest2d(in[0], 7, 4);
    case OP_BILINEAR: return bl_upsample_bilinear2d(in[0], 7, 4, false);
    default: return bl_upsample_bilinear2d(in[0], 7, 4, true);
    }
}

/* Every op is (piecewise) linear, so second order exercises each backward's own backward: the
 * second derivative is 0, and a wrong adjoint of the adjoint shows up as a nonzero one. */
static void test_gradcheck(void) {
    for (pool_op op = OP_MAX; op <= OP_BILINEAR_AC; op++) {
        bl_tensor *x = test_randn(BL_F64, BL_SHAPE(2, 2, 5, 6), 10 + op);
        x->requires_grad = true;
        bl_clear_error();
        CHECK(bl_gradcheck(pool_fn, &op, 1, &x, 1e-6, 1e-6, true) == BL_OK, "%s", names[op]);
    }
}

/* A function whose second derivative through a pool is not zero: sum(pool(x)^2 * r). Checks that
 * the gradient of the pool's backward (the adjoint's adjoint) carries the right values. */
static bl_tensor *squared_pool_fn(bl_tensor *const *in, void *user) {
    bl_tensor *y = pool_fn(in, user);
    return bl_mul(y, y);
}

static void test_gradcheck_curved(void) {
    for (pool_op op = OP_MAX; op <= OP_BILINEAR_AC; op++) {
        bl_tensor *x = test_randn(BL_F64, BL_SHAPE(1, 2, 5, 6), 20 + op);
        x->requires_grad = true;
        bl_clear_error();
        CHECK(bl_gradcheck(squared_pool_fn, &op, 1, &x, 1e-6, 1e-6, true) == BL_OK, "squared %s", names[op]);
    }
}

static void test_pool_errors(void) {
    bl_tensor *x = bl_zeros(BL_F32, BL_SHAPE(1, 2, 5, 5));
    bl_clear_error();
    CHECK(!bl_max_pool2d(x, 3, 1, 2) && strstr(bl_last_error(), "max_pool2d"), "padding over half the kernel");
    bl_clear_error();
    CHECK(!bl_avg_pool2d(x, 7, 1, 0) && strstr(bl_last_error(), "smaller"), "kernel larger than the input");
    bl_clear_error();
    CHECK(!bl_adaptive_avg_pool2d(bl_zeros(BL_F32, BL_SHAPE(2, 5, 5)), 1, 1) && strstr(bl_last_error(), "(N, C, H, W)"),
          "3-D input");
    bl_clear_error();
    CHECK(!bl_upsample_bilinear2d(x, 0, 3, false) && strstr(bl_last_error(), "upsample_bilinear2d"), "empty output");
    bl_clear_error();
    CHECK(!bl_upsample_nearest2d(bl_zeros(BL_I64, BL_SHAPE(1, 1, 2, 2)), 4, 4) && strstr(bl_last_error(), "I64"),
          "integer input");
    bl_clear_error();
}

TEST_MAIN(TEST(test_pools_match_naive), TEST(test_resize_matches_naive), TEST(test_match_torch),
          TEST(test_max_pool_gradient_goes_to_argmax), TEST(test_gradcheck), TEST(test_gradcheck_curved),
          TEST(test_pool_errors))
