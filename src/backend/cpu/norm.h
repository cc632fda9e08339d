/* Fast F32 batch norm and layer norm kernels: one pass for the statistics, OpenMP over channels
 * (batch norm) or rows (layer norm), vectorised inner loops. Same contracts as the reference
 * kernels in backend/ref/ref_norm.h, which are their test oracle. */
#ifndef BALLAST_CPU_NORM_H
#define BALLAST_CPU_NORM_H

#include "backend/ref/ref_norm.h"

#include <stddef.h>

/* x (N, C, S); weight, bias (C) or NULL; mean, var (C): = batch statistics (var biased) when
 * training, else read; invstd (C) =; y (N, C, S) = (x - mean) * invstd * weight + bias. */
void cpu_batch_norm_fwd(const bl_batch_norm_args *a, const float *x, const float *weight, const float *bias,
                        float *mean, float *var, float *invstd, float *y);

/* g, x (N, C, S); mean, invstd (C); weight (C) or NULL. dx (N, C, S) =, dweight (C) =, dbias (C) =
 * (NULL skips). The classic form dx = invstd / M * (M * gw - sum(gw) - xhat * sum(gw * xhat)) in
 * training, dx = gw * invstd otherwise. */
void cpu_batch_norm_bwd(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                        const float *invstd, const float *weight, float *dx, float *dweight, float *dbias);

/* x (R, D); weight, bias (D) or NULL; mean, invstd (R) =; y (R, D) =. */
void cpu_layer_norm_fwd(const bl_layer_norm_args *a, const float *x, const float *weight, const float *bias,
                        float *mean, float *invstd, float *y);

/* Floats of scratch that cpu_layer_norm_bwd needs: per-thread partial sums of dweight and dbias. */
size_t cpu_layer_norm_bwd_scratch(const bl_layer_norm_args *a);

/* g, x (R, D); mean, invstd (R); weight (D) or NULL. dx (R, D) =, dweight (D) =, dbias (D) = (NULL
 * skips); scratch holds cpu_layer_norm_bwd_scratch(a) floats (overwritten). */
void cpu_layer_norm_bwd(const bl_layer_norm_args *a, const float *g, const float *x, const float *mean,
                        const float *invstd, const float *weight, float *dx, float *dweight, float *dbias,
                        float *scratch);

#endif
