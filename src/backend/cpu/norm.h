/* Fast F32 batch norm and layer norm kernels: one pass for the statistics, OpenMP over channels
 * or rows of channels-last memory (batch norm) or rows (layer norm), vectorised inner loops. Same
 * contracts as the reference kernels in backend/ref/ref_norm.h, which are their test oracle. */
#ifndef BALLAST_CPU_NORM_H
#define BALLAST_CPU_NORM_H

#include "backend/ref/ref_norm.h"

#include <stdbool.h>
#include <stddef.h>

/* Batch norm fused with what follows it in a residual network: y = act(bn(x) + residual), act the
 * identity or ReLU, over x in channel planes (N, C, S) or channels last (N, S, C). */
typedef struct {
    bl_batch_norm_args bn; /* N, C, S, eps, training */
    bool channels_last;    /* memory order (N, S, C): each position's C channels adjacent */
    bool relu;
} cpu_bn_act_args;

/* Doubles of scratch the fused kernels need (per-thread partial sums for channels last; 0 otherwise). */
size_t cpu_batch_norm_act_scratch(const cpu_bn_act_args *a);

/* x, residual (or NULL), y in the order a gives; weight, bias (C) or NULL; mean, var (C): = batch
 * statistics (var biased) when training, else read; invstd (C) =;
 * y = act((x - mean) * invstd * weight + bias + residual) =. */
void cpu_batch_norm_act_fwd(const cpu_bn_act_args *a, const float *x, const float *weight, const float *bias,
                            const float *residual, float *mean, float *var, float *invstd, float *y,
                            double *scratch);

/* g, x, y (the forward's output, read for the ReLU's mask) in the order a gives; mean, invstd (C)
 * as the forward left them; weight (C) or NULL. With gz = g where y > 0 and 0 elsewhere (ReLU), or
 * gz = g: dresidual = gz, and dx, dweight, dbias = batch norm's gradients for gz (as
 * cpu_batch_norm_bwd); every output may be NULL (skipped). */
void cpu_batch_norm_act_bwd(const cpu_bn_act_args *a, const float *g, const float *x, const float *y,
                            const float *mean, const float *invstd, const float *weight, float *dx, float *dweight,
                            float *dbias, float *dresidual, double *scratch);

/* Synchronized batch norm, where the statistics are those of the whole batch over every process:
 * the per-channel sums each process contributes, sums[c] = sum(x), sums[C + c] = sum(x^2) over
 * x in the order a gives (double accumulation); scratch holds cpu_batch_norm_moments_scratch(a)
 * doubles. The forward then normalizes with the total's mean and variance (the kernels above in
 * eval mode), and the backward, from the eval-mode gradient dx = k gz and the total's sum(gz) and
 * sum(gz * xhat), subtracts the statistics' part: dx[i] -= shift[c] + (x[i] - mean[c]) * slope[c]. */
size_t cpu_batch_norm_moments_scratch(const cpu_bn_act_args *a);
void cpu_batch_norm_moments(const cpu_bn_act_args *a, const float *x, double *sums, double *scratch);
void cpu_batch_norm_sync_dx(const cpu_bn_act_args *a, const float *x, const float *mean, const float *shift,
                            const float *slope, float *dx);

/* Plain batch norm in channel planes (the fused kernels without residual and activation).
 * x (N, C, S); weight, bias (C) or NULL; mean, var (C): = batch statistics (var biased) when
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
