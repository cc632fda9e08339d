/* Reference kernels for batch norm and layer norm, in float and double: straightforward two-pass
 * statistics accumulated in double. They are the oracle for the fast CPU kernels and the F64 path
 * of the ops. Group and instance norm reuse the layer norm kernels on a reshaped view. */
#ifndef BALLAST_REF_NORM_H
#define BALLAST_REF_NORM_H

#include <stdbool.h>
#include <stdint.h>

/* Batch norm over x viewed as (N, C, S), S the product of the spatial dims: one mean and variance
 * per channel over its M = N * S values. */
typedef struct {
    int64_t N, C, S;
    double eps;
    bool training; /* statistics come from x (and depend on it); otherwise they are given constants */
} bl_batch_norm_args;

/* Layer norm over x viewed as (R, D): one mean and variance per row of D values. */
typedef struct {
    int64_t R, D;
    double eps;
} bl_layer_norm_args;

/* x (N, C, S); weight, bias (C) or NULL; mean, var (C): = the batch statistics (var biased) when
 * training, else read; invstd (C) = 1 / sqrt(var + eps); y (N, C, S) = (x - mean) * invstd * weight + bias. */
void ref_batch_norm_fwd_f32(const bl_batch_norm_args *a, const float *x, const float *weight, const float *bias,
                            float *mean, float *var, float *invstd, float *y);
void ref_batch_norm_fwd_f64(const bl_batch_norm_args *a, const double *x, const double *weight,
                            const double *bias, double *mean, double *var, double *invstd, double *y);

/* g, x (N, C, S); mean, invstd (C) as the forward left them; weight (C) or NULL.
 * dx (N, C, S) =, dweight (C) = sum(g * xhat), dbias (C) = sum(g); a NULL output is skipped.
 * Training: dx = invstd / M * (M * gw - sum(gw) - xhat * sum(gw * xhat)), gw = g * weight;
 * otherwise dx = gw * invstd. */
void ref_batch_norm_bwd_f32(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                            const float *invstd, const float *weight, float *dx, float *dweight, float *dbias);
void ref_batch_norm_bwd_f64(const bl_batch_norm_args *a, const double *g, const double *x, const double *mean,
                            const double *invstd, const double *weight, double *dx, double *dweight,
                            double *dbias);

/* x (R, D); weight, bias (D) or NULL; mean, invstd (R) =; y (R, D) = (x - mean) * invstd * weight + bias. */
void ref_layer_norm_fwd_f32(const bl_layer_norm_args *a, const float *x, const float *weight, const float *bias,
                            float *mean, float *invstd, float *y);
void ref_layer_norm_fwd_f64(const bl_layer_norm_args *a, const double *x, const double *weight,
                            const double *bias, double *mean, double *invstd, double *y);

/* g, x (R, D); mean, invstd (R); weight (D) or NULL. dx (R, D) = invstd / D * (D * gw - sum(gw) -
 * xhat * sum(gw * xhat)) per row, gw = g * weight; dweight (D) = sum over rows of g * xhat;
 * dbias (D) = sum over rows of g; a NULL output is skipped. */
void ref_layer_norm_bwd_f32(const bl_layer_norm_args *a, const float *g, const float *x, const float *mean,
                            const float *invstd, const float *weight, float *dx, float *dweight, float *dbias);
void ref_layer_norm_bwd_f64(const bl_layer_norm_args *a, const double *g, const double *x, const double *mean,
                            const double *invstd, const double *weight, double *dx, double *dweight,
                            double *dbias);

#endif
