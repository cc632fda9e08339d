/* Dense matrix products on the CPU: the one entry point for GEMM in the library. matmul, linear,
 * attention and the convolution lowering all call these; nothing else calls a BLAS directly.
 *
 * Layout: row-major. op(A) is (M, K): A is stored (M, K) with row stride lda, or, with ta, stored
 * (K, M) and read transposed. op(B) is (K, N): B is stored (K, N), or (N, K) with tb. C is (M, N)
 * with row stride ldc. Strides are in elements and must be at least the stored row length.
 *
 * Every function computes C = alpha * op(A) @ op(B) + beta * C. With beta == 0, C is written (=)
 * and its old contents are never read (they may be uninitialized); otherwise C accumulates (+=)
 * scaled by beta. K == 0 is allowed (C = beta * C).
 *
 * Threading: F32 products run on oneDNN's sgemm when the library has oneDNN, F64 ones (and F32
 * ones without oneDNN) on OpenBLAS, both on our OpenMP thread pool; tiny products run on a
 * register-blocked kernel on the calling thread. Called from inside an active OpenMP parallel
 * region, every product runs on the calling thread only, so callers may parallelise over
 * independent products themselves (one product per thread) without oversubscribing the cores.
 * Dimensions and leading dims must fit in an int (the BLAS interface). */
#ifndef BALLAST_CPU_GEMM_H
#define BALLAST_CPU_GEMM_H

#include <stdbool.h>
#include <stdint.h>

void bl_gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void bl_gemm_f64(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
                 int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc);

/* `batch` independent products of the same shape and transposition. Product i reads
 * A + a_offset[i] and B + b_offset[i] and writes C + c_offset[i]; an offset array left NULL means
 * i * x_stride instead (a stride of 0 reuses one matrix for every product, e.g. a shared weight).
 * The products' C matrices must not overlap. Small products are spread over the threads, large
 * ones run one after the other, each on all threads. */
typedef struct {
    bool ta, tb;
    int64_t M, N, K;
    int64_t lda, ldb, ldc;
    int64_t batch;
    const int64_t *a_offset, *b_offset, *c_offset; /* (batch) element offsets, or NULL */
    int64_t a_stride, b_stride, c_stride;          /* used where the offset array is NULL */
} bl_gemm_batch;

void bl_gemm_batched_f32(const bl_gemm_batch *g, float alpha, const float *A, const float *B, float beta,
                         float *C);
void bl_gemm_batched_f64(const bl_gemm_batch *g, double alpha, const double *A, const double *B,
                         double beta, double *C);

#endif
