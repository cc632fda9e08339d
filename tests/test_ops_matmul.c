/* Matrix products: the GEMM kernels against the naive reference (every transposition, odd shapes,
 * padded leading dims, alpha/beta, K and N beyond one cache block, calls from inside a parallel
 * region, batches with offsets and shared matrices); bl_matmul and bl_linear against a direct
 * triple loop over broadcast batches, 1-D operands, transposed, sliced and expanded operands, in
 * F32 and F64; first- and second-order gradient checks in F64; error reporting. The fused linear
 * backward against the backward built from ops. The fused MLP (linear, GELU, linear) against the
 * composition of the three ops: values, gradients of both orders for every subset of inputs that
 * requires grad, row chunks, strided inputs, and the memory it keeps. */
#include "test.h"

#include "backend/cpu/gemm.h"
#include "backend/ref/ref_gemm.h"
#include "ops/dense.h"

#include <omp.h>

/* ---- kernels -------------------------------------------------------------------------------- */

typedef struct { int64_t M, N, K; } gemm_shape;

/* Tiny products (the own kernel, including its K and N blocking: 1x3x1000, 2x300x5), mid-sized
 * ones (OpenBLAS: 3x150x20) and larger ones (oneDNN when the library has it: 20x7x300 and up). */
static const gemm_shape kernel_shapes[] = {
    {1, 1, 1},    {7, 5, 3},    {6, 16, 4},  {13, 17, 9},  {5, 33, 1},     {1, 3, 1000},
    {2, 300, 5},  {65, 65, 64}, {3, 150, 20}, {20, 7, 300}, {70, 140, 270},
};

static void fill_random_f32(float *p, int64_t n, uint64_t seed) {
    bl_rng r = bl_rng_make(seed, 5);
    for (int64_t i = 0; i < n; i++) p[i] = (float)(2 * bl_rng_uniform(&r) - 1);
}

static void fill_random_f64(double *p, int64_t n, uint64_t seed) {
    bl_rng r = bl_rng_make(seed, 6);
    for (int64_t i = 0; i < n; i++) p[i] = 2 * bl_rng_uniform(&r) - 1;
}

/* Runs bl_gemm_f32 on every shape and transposition with padded leading dims and compares to
 * ref_gemm_f32; with `inside_parallel`, each call is made by one thread of a 2-thread team. */
static void check_gemm_f32(bool inside_parallel) {
    for (size_t s = 0; s < sizeof kernel_shapes / sizeof kernel_shapes[0]; s++) {
        gemm_shape sh = kernel_shapes[s];
        for (int t = 0; t < 4; t++) {
            bool ta = t & 1, tb = t & 2;
            int64_t lda = (ta ? sh.M : sh.K) + 3, ldb = (tb ? sh.K : sh.N) + 2, ldc = sh.N + 5;
            int64_t a_rows = ta ? sh.K : sh.M, b_rows = tb ? sh.N : sh.K;
            float *A = bl_arena_alloc(sizeof(float) * a_rows * lda), *B = bl_arena_alloc(sizeof(float) * b_rows * ldb);
            float *C = bl_arena_alloc(sizeof(float) * sh.M * ldc), *R = bl_arena_alloc(sizeof(float) * sh.M * ldc);
            fill_random_f32(A, a_rows * lda, 1 + s);
            fill_random_f32(B, b_rows * ldb, 2 + s);
            float alphas[2] = {1.0f, -0.5f}, betas[2] = {0.0f, 0.75f};
            for (int ab = 0; ab < 2; ab++) {
                fill_random_f32(R, sh.M * ldc, 3 + s);
                memcpy(C, R, sizeof(float) * sh.M * ldc);
                /* beta == 0 must not read C: poison it. */
                if (betas[ab] == 0)
                    for (int64_t i = 0; i < sh.M * ldc; i++) C[i] = NAN;
                ref_gemm_f32(ta, tb, sh.M, sh.N, sh.K, alphas[ab], A, lda, B, ldb, betas[ab], R, ldc);
                if (inside_parallel) {
#pragma omp parallel num_threads(2)
                    if (omp_get_thread_num() == omp_get_num_threads() - 1)
                        bl_gemm_f32(ta, tb, sh.M, sh.N, sh.K, alphas[ab], A, lda, B, ldb, betas[ab], C, ldc);
                } else {
                    bl_gemm_f32(ta, tb, sh.M, sh.N, sh.K, alphas[ab], A, lda, B, ldb, betas[ab], C, ldc);
                }
                double worst = 0;
                for (int64_t i = 0; i < sh.M; i++)
                    for (int64_t j = 0; j < sh.N; j++) {
                        double d = fabs(C[i * ldc + j] - R[i * ldc + j]) / (1 + fabs(R[i * ldc + j]));
                        if (!(d <= worst)) worst = d;
                    }
                CHECK(worst < 2e-5, "gemm_f32 %lldx%lldx%lld ta=%d tb=%d alpha=%g beta=%g parallel=%d: error %g",
                      (long long)sh.M, (long long)sh.N, (long long)sh.K, ta, tb, alphas[ab], betas[ab], inside_parallel,
                      worst);
                /* Padding between rows of C is never written. */
                bool padding_kept = true;
                for (int64_t i = 0; i < sh.M; i++)
                    for (int64_t j = sh.N; j < ldc; j++)
                        if (!(C[i * ldc + j] == R[i * ldc + j] || (isnan(C[i * ldc + j]) && betas[ab] == 0)))
                            padding_kept = false;
                CHECK(padding_kept, "gemm_f32 wrote outside the %lldx%lld block of C", (long long)sh.M, (long long)sh.N);
            }
        }
    }
}

static void test_gemm_f32_vs_reference(void) { check_gemm_f32(false); }
static void test_gemm_f32_inside_parallel_region(void) { check_gemm_f32(true); }

static void test_gemm_f64_vs_reference(void) {
    for (size_t s = 0; s < sizeof kernel_shapes / sizeof kernel_shapes[0]; s++) {
        gemm_shape sh = kernel_shapes[s];
        for (int t = 0; t < 4; t++) {
            bool ta = t & 1, tb = t & 2;
            int64_t lda = (ta ? sh.M : sh.K) + 1, ldb = (tb ? sh.K : sh.N) + 4, ldc = sh.N + 2;
            int64_t a_rows = ta ? sh.K : sh.M, b_rows = tb ? sh.N : sh.K;
            double *A = bl_arena_alloc(sizeof(double) * a_rows * lda), *B = bl_arena_alloc(sizeof(double) * b_rows * ldb);
            double *C = bl_arena_alloc(sizeof(double) * sh.M * ldc), *R = bl_arena_alloc(sizeof(double) * sh.M * ldc);
            fill_random_f64(A, a_rows * lda, 11 + s);
            fill_random_f64(B, b_rows * ldb, 12 + s);
            fill_random_f64(R, sh.M * ldc, 13 + s);
            memcpy(C, R, sizeof(double) * sh.M * ldc);
            ref_gemm_f64(ta, tb, sh.M, sh.N, sh.K, 0.5, A, lda, B, ldb, -1.5, R, ldc);
#pragma omp parallel num_threads(2) if (t >= 2)
            if (omp_get_thread_num() == 0) bl_gemm_f64(ta, tb, sh.M, sh.N, sh.K, 0.5, A, lda, B, ldb, -1.5, C, ldc);
            double worst = 0;
            for (int64_t i = 0; i < sh.M; i++)
                for (int64_t j = 0; j < sh.N; j++) {
                    double d = fabs(C[i * ldc + j] - R[i * ldc + j]) / (1 + fabs(R[i * ldc + j]));
                    if (!(d <= worst)) worst = d;
                }
            CHECK(worst < 1e-12, "gemm_f64 %lldx%lldx%lld ta=%d tb=%d: error %g", (long long)sh.M, (long long)sh.N,
                  (long long)sh.K, ta, tb, worst);
        }
    }
}

static void test_gemm_degenerate_sizes(void) {
    float A[4] = {1, 2, 3, 4}, B[4] = {5, 6, 7, 8}, C[4] = {1, 1, 1, 1};
    bl_gemm_f32(false, false, 2, 2, 0, 1.0f, A, 1, B, 2, 0.5f, C, 2); /* K == 0: C = beta C */
    CHECK(C[0] == 0.5f && C[3] == 0.5f, "K == 0 gave %g %g", C[0], C[3]);
    bl_gemm_f32(false, false, 2, 2, 0, 1.0f, A, 1, B, 2, 0.0f, C, 2);
    CHECK(C[0] == 0.0f && C[3] == 0.0f, "K == 0, beta 0 gave %g %g", C[0], C[3]);
    C[0] = 9;
    bl_gemm_f32(false, false, 0, 2, 2, 1.0f, A, 2, B, 2, 0.0f, C, 2); /* M == 0: nothing */
    CHECK(C[0] == 9, "M == 0 wrote into C");
}

/* Batches: per-product offsets, a shared (stride 0) matrix, and both the spread-over-threads
 * path (small products) and the one-after-another path (large products, few of them). */
static void test_gemm_batched_vs_reference(void) {
    gemm_shape shapes[] = {{5, 7, 3}, {65, 65, 64}, {300, 300, 40}};
    for (size_t s = 0; s < 3; s++) {
        gemm_shape sh = shapes[s];
        int64_t batch = s == 2 ? 2 : 9, a_size = sh.M * sh.K, b_size = sh.K * sh.N, c_size = sh.M * sh.N;
        float *A = bl_arena_alloc(sizeof(float) * batch * a_size), *B = bl_arena_alloc(sizeof(float) * b_size);
        float *C = bl_arena_alloc(sizeof(float) * batch * c_size), *R = bl_arena_alloc(sizeof(float) * batch * c_size);
        fill_random_f32(A, batch * a_size, 21 + s);
        fill_random_f32(B, b_size, 22 + s);
        /* A's products in reverse order through offsets, B shared, C by stride. */
        int64_t *a_offset = bl_arena_alloc(sizeof(int64_t) * batch);
        for (int64_t i = 0; i < batch; i++) a_offset[i] = (batch - 1 - i) * a_size;
        bl_gemm_batch g = {.ta = false, .tb = true, .M = sh.M, .N = sh.N, .K = sh.K, .lda = sh.K, .ldb = sh.K,
                           .ldc = sh.N, .batch = batch, .a_offset = a_offset, .b_stride = 0, .c_stride = c_size};
        bl_gemm_batched_f32(&g, 2.0f, A, B, 0.0f, C);
        for (int64_t i = 0; i < batch; i++)
            ref_gemm_f32(false, true, sh.M, sh.N, sh.K, 2.0f, A + a_offset[i], sh.K, B, sh.K, 0.0f, R + i * c_size, sh.N);
        double worst = 0;
        for (int64_t i = 0; i < batch * c_size; i++) {
            double d = fabs(C[i] - R[i]) / (1 + fabs(R[i]));
            if (!(d <= worst)) worst = d;
        }
        CHECK(worst < 2e-5, "batched gemm %lldx%lldx%lld x%lld: error %g", (long long)sh.M, (long long)sh.N,
              (long long)sh.K, (long long)batch, worst);

        double *Ad = bl_arena_alloc(sizeof(double) * batch * a_size), *Bd = bl_arena_alloc(sizeof(double) * b_size);
        double *Cd = bl_arena_alloc(sizeof(double) * batch * c_size), *Rd = bl_arena_alloc(sizeof(double) * c_size);
        fill_random_f64(Ad, batch * a_size, 31 + s);
        fill_random_f64(Bd, b_size, 32 + s);
        g.a_offset = NULL;
        g.a_stride = a_size;
        bl_gemm_batched_f64(&g, 1.0, Ad, Bd, 0.0, Cd);
        ref_gemm_f64(false, true, sh.M, sh.N, sh.K, 1.0, Ad + (batch - 1) * a_size, sh.K, Bd, sh.K, 0.0, Rd, sh.N);
        double worst_d = 0;
        for (int64_t i = 0; i < c_size; i++) worst_d = fmax(worst_d, fabs(Cd[(batch - 1) * c_size + i] - Rd[i]));
        CHECK(worst_d < 1e-12, "batched gemm f64 last product: error %g", worst_d);
    }
}

/* ---- bl_matmul against a direct loop -------------------------------------------------------- */

/* Element of t at a multi-index of a (possibly bigger) broadcast shape aligned at the right. */
static double at_broadcast(const bl_tensor *t, int ndim, const int64_t *idx) {
    int64_t offset = 0;
    for (int d = 0; d < t->ndim; d++) {
        int64_t i = idx[ndim - t->ndim + d];
        if (t->shape[d] != 1) offset += i * t->stride[d];
    }
    const char *p = (const char *)t->data + offset * (int64_t)bl_dtype_size(t->dtype);
    return t->dtype == BL_F32 ? *(const float *)p : *(const double *)p;
}

/* torch.matmul semantics written out: promote 1-D operands, broadcast batch dims, triple loop,
 * then drop the promoted dims. Returns the largest relative difference to `out`. */
static double matmul_error(const bl_tensor *a, const bl_tensor *b, const bl_tensor *out) {
    bl_tensor a2 = *a, b2 = *b;
    if (a->ndim == 1) {
        a2.ndim = 2;
        a2.shape[0] = 1; a2.shape[1] = a->shape[0];
        a2.stride[0] = 0; a2.stride[1] = a->stride[0];
    }
    if (b->ndim == 1) {
        b2.ndim = 2;
        b2.shape[0] = b->shape[0]; b2.shape[1] = 1;
        b2.stride[0] = b->stride[0]; b2.stride[1] = 0;
    }
    int64_t M = a2.shape[a2.ndim - 2], K = a2.shape[a2.ndim - 1], N = b2.shape[b2.ndim - 1];
    int batch_ndim = (a2.ndim > b2.ndim ? a2.ndim : b2.ndim) - 2;
    int64_t batch_shape[BL_MAX_DIMS], batch = 1;
    for (int d = 0; d < batch_ndim; d++) {
        int da = d - (batch_ndim - (a2.ndim - 2)), db = d - (batch_ndim - (b2.ndim - 2));
        int64_t sa = da >= 0 ? a2.shape[da] : 1, sb = db >= 0 ? b2.shape[db] : 1;
        batch_shape[d] = sa > sb ? sa : sb;
        batch *= batch_shape[d];
    }
    int64_t expected_numel = batch * M * N;
    if (!out || bl_numel(out) != expected_numel) return INFINITY;
    double worst = 0;
    int64_t idx[BL_MAX_DIMS + 2] = {0};
    for (int64_t bi = 0; bi < batch; bi++) {
        int64_t rest = bi;
        for (int d = batch_ndim - 1; d >= 0; d--) {
            idx[d] = rest % batch_shape[d];
            rest /= batch_shape[d];
        }
        for (int64_t i = 0; i < M; i++)
            for (int64_t j = 0; j < N; j++) {
                double acc = 0;
                for (int64_t k = 0; k < K; k++) {
                    idx[batch_ndim] = i; idx[batch_ndim + 1] = k;
                    double x = at_broadcast(&a2, batch_ndim + 2, idx);
                    idx[batch_ndim] = k; idx[batch_ndim + 1] = j;
                    acc += x * at_broadcast(&b2, batch_ndim + 2, idx);
                }
                double got = bl_get_flat(out, (bi * M + i) * N + j), d = fabs(got - acc) / (1 + fabs(acc));
                if (!(d <= worst)) worst = d;
            }
    }
    return worst;
}

typedef struct {
    int a_ndim; int64_t a_shape[4];
    int b_ndim; int64_t b_shape[4];
    int out_ndim; int64_t out_shape[4];
} matmul_case;

static const matmul_case matmul_cases[] = {
    {2, {7, 3}, 2, {3, 5}, 2, {7, 5}},
    {3, {2, 7, 3}, 3, {2, 3, 5}, 3, {2, 7, 5}},
    {4, {2, 1, 7, 3}, 3, {4, 3, 5}, 4, {2, 4, 7, 5}},  /* batch broadcast both ways */
    {2, {7, 3}, 3, {2, 3, 5}, 3, {2, 7, 5}},
    {3, {4, 7, 3}, 2, {3, 5}, 3, {4, 7, 5}},           /* shared right matrix: folded */
    {4, {2, 3, 7, 3}, 4, {1, 1, 3, 5}, 4, {2, 3, 7, 5}},
    {1, {3}, 1, {3}, 0, {0}},                          /* dot */
    {1, {3}, 3, {2, 3, 5}, 2, {2, 5}},
    {3, {2, 7, 3}, 1, {3}, 2, {2, 7}},
    {2, {1, 1}, 2, {1, 1}, 2, {1, 1}},
    {2, {0, 3}, 2, {3, 5}, 2, {0, 5}},
    {2, {4, 0}, 2, {0, 5}, 2, {4, 5}},                 /* empty inner dim: zeros */
};

static void test_matmul_values(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++)
        for (size_t c = 0; c < sizeof matmul_cases / sizeof matmul_cases[0]; c++) {
            const matmul_case *mc = &matmul_cases[c];
            bl_tensor *a = test_randn(dts[di], mc->a_ndim, mc->a_shape, 100 + c);
            bl_tensor *b = test_randn(dts[di], mc->b_ndim, mc->b_shape, 200 + c);
            bl_tensor *out = bl_matmul(a, b);
            CHECK(out && out->ndim == mc->out_ndim && out->dtype == dts[di], "case %zu", c);
            for (int d = 0; out && d < mc->out_ndim; d++) CHECK(out->shape[d] == mc->out_shape[d], "case %zu dim %d", c, d);
            double err = matmul_error(a, b, out);
            CHECK(err < (dts[di] == BL_F32 ? 1e-5 : 1e-12), "case %zu %s: error %g", c, bl_dtype_name(dts[di]), err);
        }
}

/* Operands that are views: transposed (read in place), sliced with a step and expanded (copied
 * or read with stride-0 batch dims). */
static void test_matmul_strided_operands(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = dts[di];
        bl_tensor *at = test_randn(dt, BL_SHAPE(2, 3, 7), 1), *bt = test_randn(dt, BL_SHAPE(5, 3), 2);
        bl_tensor *a = bl_transpose(at, 1, 2), *b = bl_transpose(bt, 0, 1); /* (2, 7, 3), (3, 5) */
        CHECK(matmul_error(a, b, bl_matmul(a, b)) < 1e-5, "transposed operands %s", bl_dtype_name(dt));

        bl_tensor *wide = test_randn(dt, BL_SHAPE(7, 9), 3);
        bl_tensor *sliced = bl_slice(wide, 1, 1, 8, 2);               /* (7, 4), column stride 2 */
        bl_tensor *rows = bl_slice(test_randn(dt, BL_SHAPE(9, 5), 4), 0, 0, 8, 2); /* (4, 5), row stride 10 */
        CHECK(matmul_error(sliced, rows, bl_matmul(sliced, rows)) < 1e-5, "sliced operands %s", bl_dtype_name(dt));

        bl_tensor *shared = bl_expand(test_randn(dt, BL_SHAPE(1, 4, 3), 5), BL_SHAPE(6, 4, 3));
        bl_tensor *batch = test_randn(dt, BL_SHAPE(6, 3, 2), 6);
        CHECK(matmul_error(shared, batch, bl_matmul(shared, batch)) < 1e-5, "expanded operand %s", bl_dtype_name(dt));
        bl_tensor *shared_t = bl_transpose(shared, 1, 2), *right4 = test_randn(dt, BL_SHAPE(6, 4, 2), 11);
        CHECK(matmul_error(shared_t, right4, bl_matmul(shared_t, right4)) < 1e-5, "expanded, transposed %s",
              bl_dtype_name(dt));

        bl_tensor *row_block = bl_slice(test_randn(dt, BL_SHAPE(3, 10, 4), 7), 1, 2, 9, 1); /* (3, 7, 4) rows of a bigger block */
        bl_tensor *right = test_randn(dt, BL_SHAPE(4, 6), 8);
        CHECK(matmul_error(row_block, right, bl_matmul(row_block, right)) < 1e-5, "row slice folded %s", bl_dtype_name(dt));
    }
    /* A large batch of attention-sized products takes the spread-over-threads path. */
    bl_tensor *q = test_randn(BL_F32, BL_SHAPE(2, 3, 65, 16), 9), *k = test_randn(BL_F32, BL_SHAPE(2, 3, 65, 16), 10);
    bl_tensor *kt = bl_transpose(k, -2, -1);
    CHECK(matmul_error(q, kt, bl_matmul(q, kt)) < 1e-5, "batched q k^T");
}

static void test_matmul_errors(void) {
    bl_tensor *a = bl_zeros(BL_F32, BL_SHAPE(2, 3)), *b = bl_zeros(BL_F32, BL_SHAPE(4, 5));
    bl_clear_error();
    CHECK(bl_matmul(a, b) == NULL && strstr(bl_last_error(), "matmul") && strstr(bl_last_error(), "[2, 3]") &&
              strstr(bl_last_error(), "[4, 5]"),
          "inner mismatch message: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_matmul(a, bl_zeros(BL_F64, BL_SHAPE(3, 5))) == NULL && strstr(bl_last_error(), "F64"), "dtype mismatch");
    bl_clear_error();
    CHECK(bl_matmul(bl_zeros(BL_F32, BL_SHAPE(2, 2, 3)), bl_zeros(BL_F32, BL_SHAPE(3, 3, 5))) == NULL &&
              strstr(bl_last_error(), "broadcast"),
          "batch mismatch: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_matmul(NULL, b) == NULL, "NULL input");
    CHECK(bl_matmul(bl_scalar(BL_F32, 1), b) == NULL, "0-d operand");
    bl_clear_error();
    CHECK(bl_linear(a, bl_zeros(BL_F32, BL_SHAPE(4, 2)), NULL) == NULL && strstr(bl_last_error(), "linear"),
          "linear in_features mismatch: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_linear(a, bl_zeros(BL_F32, BL_SHAPE(4, 3)), bl_zeros(BL_F32, BL_SHAPE(5))) == NULL &&
              strstr(bl_last_error(), "bias"),
          "linear bias mismatch: %s", bl_last_error());
    bl_clear_error();
}

/* ---- bl_linear ------------------------------------------------------------------------------- */

static double linear_error(const bl_tensor *x, const bl_tensor *w, const bl_tensor *bias, const bl_tensor *out) {
    int64_t in = w->shape[1], outf = w->shape[0], rows = bl_numel(x) / in;
    if (!out || bl_numel(out) != rows * outf) return INFINITY;
    double worst = 0;
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < outf; o++) {
            double acc = bias ? bl_get_flat(bias, o) : 0;
            for (int64_t i = 0; i < in; i++) acc += bl_get_flat(x, r * in + i) * bl_get_flat(w, o * in + i);
            double d = fabs(bl_get_flat(out, r * outf + o) - acc) / (1 + fabs(acc));
            if (!(d <= worst)) worst = d;
        }
    return worst;
}

static void test_linear_values(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = dts[di];
        double tol = dt == BL_F32 ? 1e-5 : 1e-12;
        bl_tensor *w = test_randn(dt, BL_SHAPE(5, 3), 1), *bias = test_randn(dt, BL_SHAPE(5), 2);
        bl_tensor *x3 = test_randn(dt, BL_SHAPE(2, 7, 3), 3), *x1 = test_randn(dt, BL_SHAPE(3), 4);
        bl_tensor *y = bl_linear(x3, w, bias);
        CHECK(y && y->ndim == 3 && y->shape[0] == 2 && y->shape[1] == 7 && y->shape[2] == 5, "shape");
        CHECK(linear_error(x3, w, bias, y) < tol, "3-D with bias %s", bl_dtype_name(dt));
        CHECK(linear_error(x3, w, NULL, bl_linear(x3, w, NULL)) < tol, "no bias");
        bl_tensor *y1 = bl_linear(x1, w, bias);
        CHECK(y1 && y1->ndim == 1 && y1->shape[0] == 5 && linear_error(x1, w, bias, y1) < tol, "1-D input");
        /* A transposed input, a transposed-view weight and a strided bias. */
        bl_tensor *xt = bl_transpose(test_randn(dt, BL_SHAPE(3, 9), 5), 0, 1);
        bl_tensor *wt = bl_transpose(test_randn(dt, BL_SHAPE(3, 5), 6), 0, 1);
        bl_tensor *bs = bl_slice(test_randn(dt, BL_SHAPE(10), 7), 0, 0, 10, 2);
        CHECK(linear_error(xt, wt, bs, bl_linear(xt, wt, bs)) < tol, "strided operands %s", bl_dtype_name(dt));
    }
    /* Big enough for OpenBLAS, ViT-shaped. */
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(4, 65, 48), 8), *w = test_randn(BL_F32, BL_SHAPE(40, 48), 9);
    bl_tensor *b = test_randn(BL_F32, BL_SHAPE(40), 10);
    CHECK(linear_error(x, w, b, bl_linear(x, w, b)) < 1e-5, "large linear");
}

/* ---- gradients -------------------------------------------------------------------------------- */

static bl_tensor *matmul_fn(bl_tensor *const *in, void *user) { return bl_matmul(in[0], in[1]); }
static bl_tensor *matmul_bt_fn(bl_tensor *const *in, void *user) { return bl_matmul(in[0], bl_transpose(in[1], -2, -1)); }
static bl_tensor *linear_fn(bl_tensor *const *in, void *user) { return bl_linear(in[0], in[1], user ? in[2] : NULL); }

static bl_tensor *leaf(int ndim, const int64_t *shape, uint64_t seed) {
    bl_tensor *t = test_randn(BL_F64, ndim, shape, seed);
    t->requires_grad = true;
    return t;
}

static void test_matmul_gradcheck(void) {
    for (size_t c = 0; c < sizeof matmul_cases / sizeof matmul_cases[0] - 2; c++) {
        const matmul_case *mc = &matmul_cases[c];
        bl_tensor *in[2] = {leaf(mc->a_ndim, mc->a_shape, 300 + c), leaf(mc->b_ndim, mc->b_shape, 400 + c)};
        CHECK(bl_gradcheck(matmul_fn, NULL, 2, in, 1e-6, 1e-6, true) == BL_OK, "matmul case %zu", c);
    }
    bl_tensor *in[2] = {leaf(BL_SHAPE(2, 1, 4, 3), 1), leaf(BL_SHAPE(3, 5, 3), 2)};
    CHECK(bl_gradcheck(matmul_bt_fn, NULL, 2, in, 1e-6, 1e-6, true) == BL_OK, "a @ b^T broadcast");
    /* Only one operand requiring grad. */
    bl_tensor *half[2] = {leaf(BL_SHAPE(3, 4, 2), 3), test_randn(BL_F64, BL_SHAPE(2, 5), 4)};
    CHECK(bl_gradcheck(matmul_fn, NULL, 2, half, 1e-6, 1e-6, true) == BL_OK, "one operand");
}

static void test_linear_gradcheck(void) {
    bl_tensor *in[3] = {leaf(BL_SHAPE(2, 3, 4), 1), leaf(BL_SHAPE(5, 4), 2), leaf(BL_SHAPE(5), 3)};
    CHECK(bl_gradcheck(linear_fn, in, 3, in, 1e-6, 1e-6, true) == BL_OK, "linear with bias");
    CHECK(bl_gradcheck(linear_fn, NULL, 2, in, 1e-6, 1e-6, true) == BL_OK, "linear without bias");
    bl_tensor *in1[3] = {leaf(BL_SHAPE(4), 4), leaf(BL_SHAPE(3, 4), 5), leaf(BL_SHAPE(3), 6)};
    CHECK(bl_gradcheck(linear_fn, in1, 3, in1, 1e-6, 1e-6, true) == BL_OK, "linear on a vector");
}

/* bl_backward accumulates the same gradients into leaves as the closed forms. */
static void test_linear_backward_closed_form(void) {
    bl_tensor *x = leaf(BL_SHAPE(3, 4), 1), *w = leaf(BL_SHAPE(2, 4), 2), *b = leaf(BL_SHAPE(2), 3);
    CHECK(bl_backward(bl_sum(bl_linear(x, w, b))) == BL_OK, "backward");
    /* d sum(x W^T + b): dx[r][i] = sum_o W[o][i], dW[o][i] = sum_r x[r][i], db[o] = rows. */
    for (int64_t i = 0; i < 4; i++) {
        double col_w = bl_get_flat(w, i) + bl_get_flat(w, 4 + i), col_x = 0;
        for (int64_t r = 0; r < 3; r++) {
            col_x += bl_get_flat(x, r * 4 + i);
            CHECK_CLOSE(bl_get_flat(x->grad, r * 4 + i), col_w, 1e-12);
        }
        CHECK_CLOSE(bl_get_flat(w->grad, i), col_x, 1e-12);
        CHECK_CLOSE(bl_get_flat(w->grad, 4 + i), col_x, 1e-12);
    }
    CHECK_CLOSE(bl_get_flat(b->grad, 0), 3.0, 1e-12);
    CHECK_CLOSE(bl_get_flat(b->grad, 1), 3.0, 1e-12);
}

/* The first-order linear backward (kernels) against the one built from ops (create_graph), with a
 * strided input and a strided gradient. */
static void test_linear_fused_backward_matches_ops(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    /* (rows, out): a small one, and 3 x 150 rows of 300 outputs, enough for the threaded bias sums */
    int64_t sizes[2][2] = {{5, 6}, {150, 300}};
    for (int d = 0; d < 4; d++) {
        int64_t R = sizes[d / 2][0], O = sizes[d / 2][1];
        bl_tensor *x = bl_transpose(test_randn(dts[d % 2], BL_SHAPE(3, 7, R), 501), 1, 2); /* (3, R, 7) */
        bl_tensor *w = test_randn(dts[d % 2], BL_SHAPE(O, 7), 502), *b = test_randn(dts[d % 2], BL_SHAPE(O), 503);
        x->requires_grad = w->requires_grad = b->requires_grad = true;
        bl_tensor *y = bl_linear(x, w, b);
        bl_tensor *g = bl_transpose(test_randn(dts[d % 2], BL_SHAPE(3, O, R), 504), 1, 2), *ins[3] = {x, w, b}, *fused[3], *ops[3];
        CHECK(bl_autograd_grad(1, &y, &g, 3, ins, fused, false) == BL_OK && bl_autograd_grad(1, &y, &g, 3, ins, ops, true) == BL_OK);
        for (int i = 0; i < 3; i++)
            /* (in F32 the ops path's own bias sum, bl_sum_to over 450 rows, is off by about 1e-5) */
            CHECK(test_max_rel_diff(fused[i], ops[i]) < (d % 2 ? 1e-12 : 5e-5), "%s %lld rows input %d: %g",
                  bl_dtype_name(dts[d % 2]), (long long)R, i, test_max_rel_diff(fused[i], ops[i]));
    }
}

/* ---- the fused MLP ---------------------------------------------------------------------------- */

typedef struct {
    int64_t rows_a, rows_b, in, hidden, out; /* x is (rows_a, rows_b, in) */
    bool bias1, bias2, strided_x;
} mlp_case;

/* hidden = 4096 puts 128 rows in a chunk, so 2 x 150 rows run in three chunks. */
static const mlp_case mlp_cases[] = {
    {2, 3, 5, 7, 4, true, true, false},
    {1, 6, 4, 9, 3, false, true, true},
    {3, 2, 6, 5, 6, true, false, false},
    {2, 150, 5, 4096, 3, true, true, true},
};

typedef struct {
    bl_tensor *x, *w1, *b1, *w2, *b2;
} mlp_inputs;

static mlp_inputs make_mlp_inputs(const mlp_case *c, bl_dtype dt, uint64_t seed) {
    mlp_inputs m;
    m.x = c->strided_x ? bl_transpose(test_randn(dt, BL_SHAPE(c->rows_b, c->rows_a, c->in), seed), 0, 1)
                       : test_randn(dt, BL_SHAPE(c->rows_a, c->rows_b, c->in), seed);
    /* weights scaled like a trained layer's, so that GELU sees both signs and its tails */
    m.w1 = bl_mul_scalar(test_randn(dt, BL_SHAPE(c->hidden, c->in), seed + 1), 0.8);
    m.b1 = c->bias1 ? test_randn(dt, BL_SHAPE(c->hidden), seed + 2) : NULL;
    m.w2 = bl_mul_scalar(test_randn(dt, BL_SHAPE(c->out, c->hidden), seed + 3), 0.3);
    m.b2 = c->bias2 ? test_randn(dt, BL_SHAPE(c->out), seed + 4) : NULL;
    return m;
}

static bl_tensor *mlp_by_ops(const mlp_inputs *m) { return bl_linear(bl_gelu(bl_linear(m->x, m->w1, m->b1)), m->w2, m->b2); }
static bl_tensor *mlp_fused(const mlp_inputs *m) { return bl__mlp_gelu(m->x, m->w1, m->b1, m->w2, m->b2); }

static void test_mlp_values_and_gradients(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int d = 0; d < 2; d++)
        for (size_t c = 0; c < sizeof mlp_cases / sizeof mlp_cases[0]; c++) {
            bl_dtype dt = dts[d];
            /* F32 sums hundreds of products in another order than the composition: float noise; F64 is
             * where the algorithm is checked to the last digits */
            double tol = dt == BL_F32 ? 1e-4 : 1e-12;
            mlp_inputs m = make_mlp_inputs(&mlp_cases[c], dt, 600 + 10 * c);
            bl_tensor *want = mlp_by_ops(&m), *got = NULL;
            BL_NO_GRAD { got = mlp_fused(&m); } /* inference: nothing kept */
            CHECK(got && bl_same_shape(got, want) && test_max_rel_diff(got, want) < tol, "%s case %zu inference: %g",
                  bl_dtype_name(dt), c, test_max_rel_diff(got, want));
            /* every one of the 31 non-empty subsets of inputs requiring grad (absent biases skipped) */
            bl_tensor *all[5] = {m.x, m.w1, m.b1, m.w2, m.b2};
            for (int subset = 1; subset < 32; subset++) {
                bl_tensor *ins[5];
                int n = 0;
                bool valid = true;
                for (int i = 0; i < 5; i++) {
                    bool on = subset >> i & 1;
                    if (on && !all[i]) valid = false;
                    if (all[i]) all[i]->requires_grad = on;
                    if (on && all[i]) ins[n++] = all[i];
                }
                if (!valid) continue;
                bl_tensor *y_fused = mlp_fused(&m), *y_ops = mlp_by_ops(&m);
                CHECK(test_max_rel_diff(y_fused, y_ops) < tol, "forward with grad");
                bl_tensor *g = test_randn(dt, y_ops->ndim, y_ops->shape, 700 + subset), *fused[5], *second[5], *ops[5];
                CHECK(bl_autograd_grad(1, &y_fused, &g, n, ins, fused, false) == BL_OK, "fused backward");
                CHECK(bl_autograd_grad(1, &y_fused, &g, n, ins, second, true) == BL_OK, "backward from ops");
                CHECK(bl_autograd_grad(1, &y_ops, &g, n, ins, ops, false) == BL_OK, "backward of the composition");
                for (int i = 0; i < n; i++) {
                    CHECK(test_max_rel_diff(fused[i], ops[i]) < tol, "%s case %zu subset %d input %d: fused differs by %g",
                          bl_dtype_name(dt), c, subset, i, test_max_rel_diff(fused[i], ops[i]));
                    CHECK(test_max_rel_diff(second[i], ops[i]) < tol,
                          "%s case %zu subset %d input %d: create_graph differs by %g", bl_dtype_name(dt), c, subset, i,
                          test_max_rel_diff(second[i], ops[i]));
                }
                /* dx = (g W2 * gelu'(h)) W1 depends on the weights: differentiable under create_graph */
                if (subset == 31) CHECK(second[0]->requires_grad, "create_graph gradient is differentiable");
                /* the bigger cases check only a few subsets: all inputs, x alone, fc2's weight alone */
                if (mlp_cases[c].hidden > 100 && subset == 1) subset = 7;
                if (mlp_cases[c].hidden > 100 && subset == 8) subset = 30;
            }
            for (int i = 0; i < 5; i++)
                if (all[i]) all[i]->requires_grad = false;
        }
}

static bl_tensor *mlp_fn(bl_tensor *const *in, void *user) { return bl__mlp_gelu(in[0], in[1], in[2], in[3], in[4]); }
static bl_tensor *mlp_no_bias_fn(bl_tensor *const *in, void *user) { return bl__mlp_gelu(in[0], in[1], NULL, in[2], NULL); }

static void test_mlp_gradcheck(void) {
    bl_tensor *in[5] = {leaf(BL_SHAPE(2, 3), 801), leaf(BL_SHAPE(4, 3), 802), leaf(BL_SHAPE(4), 803),
                        leaf(BL_SHAPE(2, 4), 804), leaf(BL_SHAPE(2), 805)};
    CHECK(bl_gradcheck(mlp_fn, NULL, 5, in, 1e-6, 1e-6, true) == BL_OK, "mlp with biases");
    bl_tensor *no_bias[3] = {in[0], in[1], in[3]};
    CHECK(bl_gradcheck(mlp_no_bias_fn, NULL, 3, no_bias, 1e-6, 1e-6, true) == BL_OK, "mlp without biases");
}

/* What a training step keeps: the fused op holds the output and fc1's pre-activation (its chunk
 * scratch goes back to the arena), the composition also the GELU output and more. */
static void test_mlp_memory(void) {
    mlp_case c = {4, 100, 32, 512, 32, true, true, false};
    mlp_inputs m = make_mlp_inputs(&c, BL_F32, 900);
    m.w1->requires_grad = true;
    size_t before = bl_arena_used();
    bl_tensor *y = mlp_fused(&m);
    size_t kept = bl_arena_used() - before, activations = sizeof(float) * 400 * (512 + 32);
    CHECK(y && kept >= activations && kept < activations + 4096, "fused MLP keeps %zu bytes for %zu of activations", kept,
          activations);
    before = bl_arena_used();
    CHECK(mlp_by_ops(&m) && bl_arena_used() - before > activations + sizeof(float) * 400 * 512,
          "the composition keeps more");
}

static void test_mlp_errors(void) {
    bl_tensor *x = bl_zeros(BL_F32, BL_SHAPE(2, 3)), *w1 = bl_zeros(BL_F32, BL_SHAPE(4, 3)), *w2 = bl_zeros(BL_F32, BL_SHAPE(5, 4));
    bl_clear_error();
    CHECK(!bl__mlp_gelu(x, w1, NULL, bl_zeros(BL_F32, BL_SHAPE(5, 3)), NULL) && strstr(bl_last_error(), "[5, 3]"),
          "fc2 does not take fc1's output: %s", bl_last_error());
    bl_clear_error();
    CHECK(!bl__mlp_gelu(bl_zeros(BL_F32, BL_SHAPE(2, 4)), w1, NULL, w2, NULL) && strstr(bl_last_error(), "[2, 4]"),
          "input width: %s", bl_last_error());
    bl_clear_error();
    CHECK(!bl__mlp_gelu(x, w1, bl_zeros(BL_F32, BL_SHAPE(3)), w2, NULL) && strstr(bl_last_error(), "bias"),
          "bias size: %s", bl_last_error());
    bl_clear_error();
    CHECK(!bl__mlp_gelu(x, w1, NULL, bl_zeros(BL_F64, BL_SHAPE(5, 4)), NULL) && strstr(bl_last_error(), "F64"),
          "dtypes: %s", bl_last_error());
    bl_clear_error();
}

TEST_MAIN(TEST(test_gemm_f32_vs_reference), TEST(test_gemm_f32_inside_parallel_region), TEST(test_gemm_f64_vs_reference),
          TEST(test_gemm_degenerate_sizes), TEST(test_gemm_batched_vs_reference), TEST(test_matmul_values),
          TEST(test_matmul_strided_operands), TEST(test_matmul_errors), TEST(test_linear_values),
          TEST(test_matmul_gradcheck), TEST(test_linear_gradcheck), TEST(test_linear_backward_closed_form),
          TEST(test_linear_fused_backward_matches_ops), TEST(test_mlp_values_and_gradients), TEST(test_mlp_gradcheck),
          TEST(test_mlp_memory), TEST(test_mlp_errors))
