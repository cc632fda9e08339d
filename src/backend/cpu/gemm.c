/* CPU GEMM (see gemm.h): oneDNN's sgemm for F32 when the library is built with oneDNN, OpenBLAS
 * otherwise and for F64, plus a small register-blocked kernel for tiny products, where a library's
 * per-call setup (and, from many threads at once, OpenBLAS's buffer allocation lock) costs more
 * than the arithmetic.
 *
 * Why oneDNN for F32: it picks its kernels by the instruction sets the CPU reports, so it runs
 * AVX-512 wherever the CPU has it, while Debian's OpenBLAS 0.3.21 falls back to its Haswell (AVX2)
 * kernels on CPUs it does not know by name (AMD Zen 4/5 among them). On such a CPU oneDNN is about
 * twice as fast on every transformer-sized product; on small ones its setup costs more than
 * OpenBLAS's, hence the size threshold below.
 *
 * The own kernel follows the usual BLIS/GotoBLAS shape, minus the packing of A: op(B) is copied
 * into a thread-local buffer as panels of NR columns (zero-padded, so every panel is full), and a
 * micro-kernel keeps an MR x NR tile of C in registers while it walks K, broadcasting one element
 * of op(A) per row and multiplying it with two 8-wide vectors of the panel. MR x NR = 6 x 16 uses
 * 12 accumulators + 2 panel vectors + 1 broadcast = 15 of the 16 AVX2 registers. Written with
 * GCC vector extensions, so the same code compiles to FMA on AVX2 and to plain SSE elsewhere.
 *
 * OpenBLAS is the OpenMP build and oneDNN uses OpenMP too: called from inside an active parallel
 * region, both run on the calling thread only, so spreading a batch of products over our threads
 * never oversubscribes. */
#include "backend/cpu/gemm.h"

#include <cblas.h>
#include <string.h>

#ifdef BALLAST_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#define MR 6
#define NR 16
#define KC 256 /* K block: one 6 x KC slice of A stays in L1 while the panels stream from L2 */
#define NC 128 /* N block: KC x NC floats = 128 KiB of packed B per thread */

/* Products with at most this many multiply-adds use the own kernel (measured crossover). */
#define TINY_GEMM_WORK (20 * 20 * 20)
/* From this many multiply-adds on, oneDNN beats OpenBLAS (measured: at 32^3 they are even, at 48^3
 * oneDNN is 1.7x faster on one AVX-512 core). */
#define ONEDNN_GEMM_WORK (32 * 32 * 32)

typedef float v8f __attribute__((vector_size(32)));
typedef float v8f_unaligned __attribute__((vector_size(32), aligned(4)));

static _Thread_local float packed_b[KC * NC] __attribute__((aligned(64)));

static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* packed (ceil(nc/NR) panels, kc, NR) = op(B)[k0 : k0+kc, n0 : n0+nc], zero beyond nc. */
static void pack_b_f32(bool tb, const float *B, int64_t ldb, int64_t k0, int64_t kc, int64_t n0, int64_t nc,
                       float *packed) {
    for (int64_t p = 0; p * NR < nc; p++) {
        int64_t cols = min64(NR, nc - p * NR);
        float *dst = packed + p * NR * kc;
        for (int64_t k = 0; k < kc; k++, dst += NR) {
            int64_t j = n0 + p * NR;
            if (!tb) {
                memcpy(dst, B + (k0 + k) * ldb + j, (size_t)cols * sizeof *dst);
            } else {
                for (int64_t c = 0; c < cols; c++) dst[c] = B[(j + c) * ldb + k0 + k];
            }
            for (int64_t c = cols; c < NR; c++) dst[c] = 0.0f;
        }
    }
}

/* C (mr, nv) = alpha * a (mr, kc) @ panel (kc, NR)[:, :nv] + beta * C, where a(i, k) is
 * a[i * a_rs + k * a_ks]. Inlined with a constant mr so the row loops unroll into registers. */
static inline __attribute__((always_inline)) void micro_tile(int mr, int64_t kc, const float *a, int64_t a_rs,
                                                             int64_t a_ks, const float *panel, float alpha,
                                                             float beta, float *C, int64_t ldc, int64_t nv) {
    v8f acc[MR][2];
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) acc[r][0] = acc[r][1] = (v8f){0};
    for (int64_t k = 0; k < kc; k++, a += a_ks, panel += NR) {
        v8f b0 = *(const v8f *)panel, b1 = *(const v8f *)(panel + 8);
#pragma GCC unroll 6
        for (int r = 0; r < mr; r++) {
            float x = a[r * a_rs];
            acc[r][0] += x * b0;
            acc[r][1] += x * b1;
        }
    }
#pragma GCC unroll 6
    for (int r = 0; r < mr; r++) {
        float *c = C + r * ldc;
        if (nv == NR) {
            v8f_unaligned *c0 = (v8f_unaligned *)c, *c1 = (v8f_unaligned *)(c + 8);
            if (beta == 0.0f) {
                *c0 = alpha * acc[r][0];
                *c1 = alpha * acc[r][1];
            } else {
                *c0 = alpha * acc[r][0] + beta * *c0;
                *c1 = alpha * acc[r][1] + beta * *c1;
            }
        } else {
            float tile[NR];
            memcpy(tile, acc[r], sizeof tile);
            for (int64_t j = 0; j < nv; j++)
                c[j] = beta == 0.0f ? alpha * tile[j] : alpha * tile[j] + beta * c[j];
        }
    }
}

static void tile_rows(int64_t mr, int64_t kc, const float *a, int64_t a_rs, int64_t a_ks, const float *panel,
                      float alpha, float beta, float *C, int64_t ldc, int64_t nv) {
    switch (mr) {
    case 6: micro_tile(6, kc, a, a_rs, a_ks, panel, alpha, beta, C, ldc, nv); break;
    case 5: micro_tile(5, kc, a, a_rs, a_ks, panel, alpha, beta, C, ldc, nv); break;
    case 4: micro_tile(4, kc, a, a_rs, a_ks, panel, alpha, beta, C, ldc, nv); break;
    case 3: micro_tile(3, kc, a, a_rs, a_ks, panel, alpha, beta, C, ldc, nv); break;
    case 2: micro_tile(2, kc, a, a_rs, a_ks, panel, alpha, beta, C, ldc, nv); break;
    default: micro_tile(1, kc, a, a_rs, a_ks, panel, alpha, beta, C, ldc, nv); break;
    }
}

/* The own kernel, single-threaded; K > 0. */
static void sgemm_blocked(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                          int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    int64_t a_rs = ta ? 1 : lda, a_ks = ta ? lda : 1;
    for (int64_t n0 = 0; n0 < N; n0 += NC) {
        int64_t nc = min64(NC, N - n0);
        for (int64_t k0 = 0; k0 < K; k0 += KC) {
            int64_t kc = min64(KC, K - k0);
            pack_b_f32(tb, B, ldb, k0, kc, n0, nc, packed_b);
            /* Later K blocks add onto what the first one wrote. */
            float beta_block = k0 == 0 ? beta : 1.0f;
            for (int64_t i0 = 0; i0 < M; i0 += MR) {
                const float *a = A + i0 * a_rs + k0 * a_ks;
                for (int64_t p = 0; p * NR < nc; p++)
                    tile_rows(min64(MR, M - i0), kc, a, a_rs, a_ks, packed_b + p * NR * kc, alpha, beta_block,
                              C + i0 * ldc + n0 + p * NR, ldc, min64(NR, nc - p * NR));
            }
        }
    }
}

/* C = beta * C, for the products with nothing to sum (K == 0 or alpha == 0). */
#define SCALE_C(C, M, N, ldc, beta)                                                             \
    for (int64_t i = 0; i < (M); i++)                                                           \
        for (int64_t j = 0; j < (N); j++) (C)[i * (ldc) + j] = (beta) == 0 ? 0 : (beta) * (C)[i * (ldc) + j]

void bl_gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0f) {
        SCALE_C(C, M, N, ldc, beta);
        return;
    }
    if (M * N * K <= TINY_GEMM_WORK) {
        sgemm_blocked(ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
#ifdef BALLAST_HAVE_ONEDNN
    /* Row-major like ours; it fails only on invalid arguments, which the callers rule out. */
    if (M * N * K >= ONEDNN_GEMM_WORK &&
        dnnl_sgemm(ta ? 'T' : 'N', tb ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc) == dnnl_success)
        return;
#endif
    cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

void bl_gemm_f64(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
                 int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0) {
        SCALE_C(C, M, N, ldc, beta);
        return;
    }
    cblas_dgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

static int64_t batch_offset(const int64_t *offsets, int64_t stride, int64_t i) {
    return offsets ? offsets[i] : i * stride;
}

/* Spreading products over threads (each then single-threaded) beats running each on all threads
 * as long as there are enough of them to keep every thread busy and each is small enough that one
 * thread finishes it quickly. */
#define SPREAD_GEMM_WORK (256 * 256 * 256)

static bool spread_over_threads(const bl_gemm_batch *g) {
#ifdef _OPENMP
    if (g->batch < 2 || omp_in_parallel() || omp_get_max_threads() < 2) return false;
    return g->M * g->N * g->K <= SPREAD_GEMM_WORK || g->batch >= 4 * omp_get_max_threads();
#else
    (void)g;
    return false;
#endif
}

void bl_gemm_batched_f32(const bl_gemm_batch *g, float alpha, const float *A, const float *B, float beta,
                         float *C) {
#pragma omp parallel for schedule(static) if (spread_over_threads(g))
    for (int64_t i = 0; i < g->batch; i++)
        bl_gemm_f32(g->ta, g->tb, g->M, g->N, g->K, alpha, A + batch_offset(g->a_offset, g->a_stride, i), g->lda,
                    B + batch_offset(g->b_offset, g->b_stride, i), g->ldb, beta,
                    C + batch_offset(g->c_offset, g->c_stride, i), g->ldc);
}

void bl_gemm_batched_f64(const bl_gemm_batch *g, double alpha, const double *A, const double *B, double beta,
                         double *C) {
#pragma omp parallel for schedule(static) if (spread_over_threads(g))
    for (int64_t i = 0; i < g->batch; i++)
        bl_gemm_f64(g->ta, g->tb, g->M, g->N, g->K, alpha, A + batch_offset(g->a_offset, g->a_stride, i), g->lda,
                    B + batch_offset(g->b_offset, g->b_stride, i), g->ldb, beta,
                    C + batch_offset(g->c_offset, g->c_stride, i), g->ldc);
}
