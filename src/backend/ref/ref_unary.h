/* Reference kernels for elementwise unary functions and for reductions along one dim, in float and
 * double, over contiguous memory. They are the F64 path of the ops and, with OpenMP over large
 * inputs, their F32 path too; the tests check them against libm directly. */
#ifndef BALLAST_REF_UNARY_H
#define BALLAST_REF_UNARY_H

#include <stdbool.h>
#include <stdint.h>

typedef enum {
    BL_UNARY_NEG, BL_UNARY_EXP, BL_UNARY_LOG, BL_UNARY_SQRT, BL_UNARY_ABS, BL_UNARY_SIGN,
    BL_UNARY_RELU, BL_UNARY_LEAKY_RELU, BL_UNARY_GELU, BL_UNARY_SIGMOID, BL_UNARY_TANH,
    BL_UNARY_SOFTPLUS, BL_UNARY_CLAMP,
    BL_UNARY_NORMAL_CDF, /* Phi(x) = P(Z <= x), Z ~ N(0, 1): the building block of GELU's gradient */
    BL_UNARY_COUNT
} bl_unary_op;

typedef struct {
    bl_unary_op op;
    double slope;  /* leaky_relu: the slope for x <= 0 */
    double lo, hi; /* clamp: the bounds (the result is hi wherever lo > hi, as torch.clamp) */
} bl_unary_args;

/* y (n) = f(x (n)). y may alias x. */
void ref_unary_fwd_f32(const bl_unary_args *args, int64_t n, const float *x, float *y);
void ref_unary_fwd_f64(const bl_unary_args *args, int64_t n, const double *x, double *y);

/* dx (n) = dy (n) * f'(x), given x (n) and y = f(x) (n) (each derivative reads what it needs).
 * dy may be NULL, read as all ones: dx is then f' itself. */
void ref_unary_bwd_f32(const bl_unary_args *args, int64_t n, const float *x, const float *y, const float *dy,
                       float *dx);
void ref_unary_bwd_f64(const bl_unary_args *args, int64_t n, const double *x, const double *y,
                       const double *dy, double *dx);

/* A contiguous tensor seen as (outer, n, inner) around the reduced dim of size n; every reduction
 * result is (outer, inner). */
typedef struct {
    int64_t outer, n, inner;
} bl_reduce_dims;

/* values (outer, inner) = max (or, with is_min, min) of x (outer, n, inner) over n; index (outer,
 * inner) = position of the first extreme value; a NaN counts as the extreme (as torch). values may be
 * NULL. Needs n >= 1. */
void ref_extreme_dim_f32(bl_reduce_dims d, bool is_min, const float *x, float *values, int64_t *index);
void ref_extreme_dim_f64(bl_reduce_dims d, bool is_min, const double *x, double *values, int64_t *index);

/* mask (outer, n, inner) = 1 where the position along n equals index (outer, inner), else 0. */
void ref_index_mask_dim_f32(bl_reduce_dims d, const int64_t *index, float *mask);
void ref_index_mask_dim_f64(bl_reduce_dims d, const int64_t *index, double *mask);

/* y (outer, inner) = log(sum over n of exp(x (outer, n, inner))), shifted by the max for stability. */
void ref_logsumexp_dim_f32(bl_reduce_dims d, const float *x, float *y);
void ref_logsumexp_dim_f64(bl_reduce_dims d, const double *x, double *y);

/* dx (outer, n, inner) = dy (outer, inner) * exp(x (outer, n, inner) - y (outer, inner)), the
 * gradient of logsumexp (y its forward result). */
void ref_logsumexp_dim_bwd_f32(bl_reduce_dims d, const float *dy, const float *x, const float *y, float *dx);
void ref_logsumexp_dim_bwd_f64(bl_reduce_dims d, const double *dy, const double *x, const double *y,
                               double *dx);

/* y (outer, inner) = sum over n of (x - mean)^2 / (n - ddof), two-pass, NaN when n <= ddof. */
void ref_var_dim_f32(bl_reduce_dims d, int ddof, const float *x, float *y);
void ref_var_dim_f64(bl_reduce_dims d, int ddof, const double *x, double *y);

/* y (outer, inner) = (sum over n of |x|^p)^(1/p), p >= 1 finite. */
void ref_norm_dim_f32(bl_reduce_dims d, double p, const float *x, float *y);
void ref_norm_dim_f64(bl_reduce_dims d, double p, const double *x, double *y);

#endif
