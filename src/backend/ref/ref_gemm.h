/* Reference GEMM: the plain triple loop that every fast matrix-product kernel is tested against.
 * Same row-major contract as bl_gemm_f32 in backend/cpu/gemm.h, in float and double. Slow on
 * purpose: it accumulates each output element in double, in the order k = 0, 1, ..., so it is an
 * independent oracle rather than a second copy of the fast code. */
#ifndef BALLAST_REF_GEMM_H
#define BALLAST_REF_GEMM_H

#include <stdbool.h>
#include <stdint.h>

/* C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C. Row-major.
 * A is stored (M, K) with row stride lda, or (K, M) when ta; B is stored (K, N), or (N, K) when
 * tb. With beta == 0, C is written (=) and its old contents are never read; otherwise it
 * accumulates (+=) scaled by beta. */
void ref_gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);
void ref_gemm_f64(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
                  int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc);

#endif
