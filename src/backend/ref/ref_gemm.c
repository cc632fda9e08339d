/* Reference GEMM kernels (see ref_gemm.h): the test oracle for backend/cpu/gemm.c. */
#include "backend/ref/ref_gemm.h"

#define REF_GEMM_BODY                                                                           \
    for (int64_t i = 0; i < M; i++) {                                                           \
        for (int64_t j = 0; j < N; j++) {                                                       \
            double acc = 0.0;                                                                   \
            for (int64_t k = 0; k < K; k++) {                                                   \
                double a = ta ? A[k * lda + i] : A[i * lda + k];                                \
                double b = tb ? B[j * ldb + k] : B[k * ldb + j];                                \
                acc += a * b;                                                                   \
            }                                                                                   \
            double old = beta == 0 ? 0.0 : (double)beta * C[i * ldc + j];                       \
            C[i * ldc + j] = (alpha * acc) + old;                                               \
        }                                                                                       \
    }

void ref_gemm_f32(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                  int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc) {
    REF_GEMM_BODY
}

void ref_gemm_f64(bool ta, bool tb, int64_t M, int64_t N, int64_t K, double alpha, const double *A,
                  int64_t lda, const double *B, int64_t ldb, double beta, double *C, int64_t ldc) {
    REF_GEMM_BODY
}
