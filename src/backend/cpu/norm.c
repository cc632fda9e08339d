/* Fast F32 batch norm and layer norm kernels (see norm.h); statistics take one pass over the data.
 * Over long contiguous runs (layer norm rows, batch norm channels of large maps), sums of deviations
 * from a shift (one value of the same row or channel) give the variance without the cancellation of
 * E[x^2] - E[x]^2 when |mean| >> std; they run in float over short blocks, which vectorises, and the
 * blocks are combined in double, so a channel of a million values keeps float accuracy. Batch norm
 * over large maps goes channel by channel, normalising each channel right after its statistics while
 * it is still in cache; over small maps it goes by blocks of channels (see SMALL_S). */
#include "norm.h"

#include <math.h>
#include <string.h>

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a kernel stays on one thread: the fork costs more than it saves. */
#define PARALLEL_MIN 32768
/* Values summed in float before the partial sum moves to double. */
#define BLOCK 512

static int64_t min_i64(int64_t a, int64_t b) { return a < b ? a : b; }

/* sum += sum(x - shift), sumsq += sum((x - shift)^2) over n floats. */
static void shifted_moments(const float *x, int64_t n, float shift, double *sum, double *sumsq) {
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = min_i64(start + BLOCK, n);
        float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = start; i < end; i++) {
            float d = x[i] - shift;
            s1 += d;
            s2 += d * d;
        }
        *sum += s1;
        *sumsq += s2;
    }
}

/* sum_g += sum(g), sum_g_xc += sum(g * (x - mu)) over n floats. */
static void grad_moments(const float *g, const float *x, int64_t n, float mu, double *sum_g, double *sum_g_xc) {
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = min_i64(start + BLOCK, n);
        float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = start; i < end; i++) {
            s1 += g[i];
            s2 += g[i] * (x[i] - mu);
        }
        *sum_g += s1;
        *sum_g_xc += s2;
    }
}

/* As grad_moments with g * w in place of g (layer norm's per-feature weight). */
static void weighted_grad_moments(const float *g, const float *w, const float *x, int64_t n, float mu,
                                  double *sum_gw, double *sum_gw_xc) {
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = min_i64(start + BLOCK, n);
        float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = start; i < end; i++) {
            float gw = g[i] * w[i];
            s1 += gw;
            s2 += gw * (x[i] - mu);
        }
        *sum_gw += s1;
        *sum_gw_xc += s2;
    }
}

/* ---- batch norm ---- */

/* Below this spatial size a channel's values are short runs strided across the batch (S = 1 for
 * (N, C) activations), and walking them channel by channel is mostly call and stride overhead.
 * Batch norm then takes blocks of channels whose COLUMNS values per sample are contiguous, and
 * accumulates them column by column, sample after sample. */
#define SMALL_S 128
#define COLUMNS 512
_Static_assert(SMALL_S <= COLUMNS, "a block holds at least one channel");

/* Batch statistics from the sums of deviations from `shift` over M values. */
static void channel_stats(double sum, double sumsq, double M, float shift, float *mean, float *var) {
    const double m = sum / M;
    *mean = (float)(shift + m);
    *var = (float)fmax(sumsq / M - m * m, 0.0);
}

/* The backward of one channel as dx = k * (g - mean_g - (x - mean) * coef). In training,
 * k = weight * istd, mean_g = mean(g) and coef = istd^2 * mean(g * (x - mean)): the statistics'
 * dependence on x gives the two subtracted terms. In eval the statistics are constants. */
typedef struct { float k, mean_g, coef; } channel_grad;

static channel_grad batch_norm_channel_grad(const bl_batch_norm_args *a, double sum_g, double sum_g_xc, float istd,
                                            float w) {
    const double M = (double)(a->N * a->S);
    channel_grad cg = {istd * w, 0.0f, 0.0f};
    if (a->training) {
        cg.mean_g = (float)(sum_g / M);
        cg.coef = (float)(sum_g_xc / M * istd * istd);
    }
    return cg;
}

static void batch_norm_fwd_channels(const bl_batch_norm_args *a, const float *x, const float *weight,
                                    const float *bias, float *mean, float *var, float *invstd, float *y) {
    const int64_t N = a->N, C = a->C, S = a->S;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c = 0; c < C; c++) {
        if (a->training) {
            const float shift = x[c * S];
            double sum = 0, sumsq = 0;
            for (int64_t n = 0; n < N; n++) shifted_moments(x + (n * C + c) * S, S, shift, &sum, &sumsq);
            channel_stats(sum, sumsq, (double)(N * S), shift, &mean[c], &var[c]);
        }
        const float mu = mean[c];
        const float istd = (float)(1.0 / sqrt((double)var[c] + a->eps));
        const float scale = istd * (weight ? weight[c] : 1.0f), offset = bias ? bias[c] : 0.0f;
        invstd[c] = istd;
        for (int64_t n = 0; n < N; n++) {
            const float *xr = x + (n * C + c) * S;
            float *yr = y + (n * C + c) * S;
#pragma omp simd
            for (int64_t s = 0; s < S; s++) yr[s] = (xr[s] - mu) * scale + offset;
        }
    }
}

static void batch_norm_fwd_columns(const bl_batch_norm_args *a, const float *x, const float *weight,
                                   const float *bias, float *mean, float *var, float *invstd, float *y) {
    const int64_t N = a->N, C = a->C, S = a->S, block = COLUMNS / S;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        const int64_t n_channels = min_i64(block, C - c0), cols = n_channels * S;
        const float *xb = x + c0 * S;
        float *yb = y + c0 * S;
        float col_mean[COLUMNS], col_scale[COLUMNS], col_offset[COLUMNS];
        if (a->training) {
            /* Summed in double straight away: each column gets one addition per sample. */
            double sum[COLUMNS] = {0}, sumsq[COLUMNS] = {0};
            for (int64_t n = 0; n < N; n++) {
                const float *xr = xb + n * C * S;
#pragma omp simd
                for (int64_t j = 0; j < cols; j++) {
                    double v = xr[j];
                    sum[j] += v;
                    sumsq[j] += v * v;
                }
            }
            for (int64_t k = 0; k < n_channels; k++) {
                double channel_sum = 0, channel_sumsq = 0;
                for (int64_t s = 0; s < S; s++) {
                    channel_sum += sum[k * S + s];
                    channel_sumsq += sumsq[k * S + s];
                }
                channel_stats(channel_sum, channel_sumsq, (double)(N * S), 0.0f, &mean[c0 + k], &var[c0 + k]);
            }
        }
        for (int64_t k = 0; k < n_channels; k++) {
            const int64_t c = c0 + k;
            const float istd = (float)(1.0 / sqrt((double)var[c] + a->eps));
            invstd[c] = istd;
            for (int64_t s = 0; s < S; s++) {
                col_mean[k * S + s] = mean[c];
                col_scale[k * S + s] = istd * (weight ? weight[c] : 1.0f);
                col_offset[k * S + s] = bias ? bias[c] : 0.0f;
            }
        }
        for (int64_t n = 0; n < N; n++) {
            const float *xr = xb + n * C * S;
            float *yr = yb + n * C * S;
#pragma omp simd
            for (int64_t j = 0; j < cols; j++) yr[j] = (xr[j] - col_mean[j]) * col_scale[j] + col_offset[j];
        }
    }
}

void cpu_batch_norm_fwd(const bl_batch_norm_args *a, const float *x, const float *weight, const float *bias,
                        float *mean, float *var, float *invstd, float *y) {
    if (a->S < SMALL_S)
        batch_norm_fwd_columns(a, x, weight, bias, mean, var, invstd, y);
    else
        batch_norm_fwd_channels(a, x, weight, bias, mean, var, invstd, y);
}

static void batch_norm_bwd_channels(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                                    const float *invstd, const float *weight, float *dx, float *dweight,
                                    float *dbias) {
    const int64_t N = a->N, C = a->C, S = a->S;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c = 0; c < C; c++) {
        const float mu = mean[c], istd = invstd[c];
        double sum_g = 0, sum_g_xc = 0;
        if (a->training || dweight || dbias)
            for (int64_t n = 0; n < N; n++)
                grad_moments(g + (n * C + c) * S, x + (n * C + c) * S, S, mu, &sum_g, &sum_g_xc);
        if (dweight) dweight[c] = (float)(sum_g_xc * istd);
        if (dbias) dbias[c] = (float)sum_g;
        if (!dx) continue;
        const channel_grad cg = batch_norm_channel_grad(a, sum_g, sum_g_xc, istd, weight ? weight[c] : 1.0f);
        for (int64_t n = 0; n < N; n++) {
            const float *gr = g + (n * C + c) * S, *xr = x + (n * C + c) * S;
            float *dr = dx + (n * C + c) * S;
#pragma omp simd
            for (int64_t s = 0; s < S; s++) dr[s] = cg.k * (gr[s] - cg.mean_g - (xr[s] - mu) * cg.coef);
        }
    }
}

static void batch_norm_bwd_columns(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                                   const float *invstd, const float *weight, float *dx, float *dweight,
                                   float *dbias) {
    const int64_t N = a->N, C = a->C, S = a->S, block = COLUMNS / S;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        const int64_t n_channels = min_i64(block, C - c0), cols = n_channels * S, offset = c0 * S;
        float col_mean[COLUMNS], col_k[COLUMNS], col_mean_g[COLUMNS], col_coef[COLUMNS];
        double sum_g[COLUMNS] = {0}, sum_g_xc[COLUMNS] = {0};
        for (int64_t j = 0; j < cols; j++) col_mean[j] = mean[c0 + j / S];
        if (a->training || dweight || dbias)
            for (int64_t n = 0; n < N; n++) {
                const float *gr = g + offset + n * C * S, *xr = x + offset + n * C * S;
#pragma omp simd
                for (int64_t j = 0; j < cols; j++) {
                    sum_g[j] += gr[j];
                    sum_g_xc[j] += (double)gr[j] * (xr[j] - col_mean[j]);
                }
            }
        for (int64_t k = 0; k < n_channels; k++) {
            const int64_t c = c0 + k;
            double channel_g = 0, channel_g_xc = 0;
            for (int64_t s = 0; s < S; s++) {
                channel_g += sum_g[k * S + s];
                channel_g_xc += sum_g_xc[k * S + s];
            }
            if (dweight) dweight[c] = (float)(channel_g_xc * invstd[c]);
            if (dbias) dbias[c] = (float)channel_g;
            const channel_grad cg =
                batch_norm_channel_grad(a, channel_g, channel_g_xc, invstd[c], weight ? weight[c] : 1.0f);
            for (int64_t s = 0; s < S; s++) {
                col_k[k * S + s] = cg.k;
                col_mean_g[k * S + s] = cg.mean_g;
                col_coef[k * S + s] = cg.coef;
            }
        }
        if (!dx) continue;
        for (int64_t n = 0; n < N; n++) {
            const float *gr = g + offset + n * C * S, *xr = x + offset + n * C * S;
            float *dr = dx + offset + n * C * S;
#pragma omp simd
            for (int64_t j = 0; j < cols; j++)
                dr[j] = col_k[j] * (gr[j] - col_mean_g[j] - (xr[j] - col_mean[j]) * col_coef[j]);
        }
    }
}

void cpu_batch_norm_bwd(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                        const float *invstd, const float *weight, float *dx, float *dweight, float *dbias) {
    if (a->S < SMALL_S)
        batch_norm_bwd_columns(a, g, x, mean, invstd, weight, dx, dweight, dbias);
    else
        batch_norm_bwd_channels(a, g, x, mean, invstd, weight, dx, dweight, dbias);
}

/* ---- layer norm ---- */

void cpu_layer_norm_fwd(const bl_layer_norm_args *a, const float *x, const float *weight, const float *bias,
                        float *mean, float *invstd, float *y) {
    const int64_t R = a->R, D = a->D;
#pragma omp parallel for schedule(static) if (R * D >= PARALLEL_MIN)
    for (int64_t r = 0; r < R; r++) {
        const float *xr = x + r * D;
        float *yr = y + r * D;
        double sum = 0, sumsq = 0;
        shifted_moments(xr, D, xr[0], &sum, &sumsq);
        const double m = sum / (double)D;
        const float mu = (float)(xr[0] + m);
        const float istd = (float)(1.0 / sqrt(fmax(sumsq / (double)D - m * m, 0.0) + a->eps));
        mean[r] = mu;
        invstd[r] = istd;
        if (weight && bias) {
#pragma omp simd
            for (int64_t d = 0; d < D; d++) yr[d] = (xr[d] - mu) * istd * weight[d] + bias[d];
            continue;
        }
#pragma omp simd
        for (int64_t d = 0; d < D; d++) yr[d] = (xr[d] - mu) * istd;
        if (weight)
#pragma omp simd
            for (int64_t d = 0; d < D; d++) yr[d] *= weight[d];
        if (bias)
#pragma omp simd
            for (int64_t d = 0; d < D; d++) yr[d] += bias[d];
    }
}

static int max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

size_t cpu_layer_norm_bwd_scratch(const bl_layer_norm_args *a) { return (size_t)max_threads() * 2 * (size_t)a->D; }

void cpu_layer_norm_bwd(const bl_layer_norm_args *a, const float *g, const float *x, const float *mean,
                        const float *invstd, const float *weight, float *dx, float *dweight, float *dbias,
                        float *scratch) {
    const int64_t R = a->R, D = a->D;
    const bool want_params = dweight || dbias;
    int n_threads = 1;
    /* Each thread sums dweight and dbias over its own rows into its slice of scratch; the slices
     * are added up afterwards, so g and x are read once. */
#pragma omp parallel if (R * D >= PARALLEL_MIN)
    {
        int t = 0;
#ifdef _OPENMP
        t = omp_get_thread_num();
        if (t == 0) n_threads = omp_get_num_threads();
#endif
        float *part_w = scratch + (size_t)t * 2 * (size_t)D, *part_b = part_w + D;
        if (want_params) memset(part_w, 0, 2 * (size_t)D * sizeof *part_w);
#pragma omp for schedule(static)
        for (int64_t r = 0; r < R; r++) {
            const float *gr = g + r * D, *xr = x + r * D;
            const float mu = mean[r], istd = invstd[r];
            if (dx) {
                double sum_gw = 0, sum_gw_xc = 0;
                if (weight)
                    weighted_grad_moments(gr, weight, xr, D, mu, &sum_gw, &sum_gw_xc);
                else
                    grad_moments(gr, xr, D, mu, &sum_gw, &sum_gw_xc);
                /* dx = istd * (gw - mean(gw) - (x - mu) * istd^2 * mean(gw * (x - mu))) */
                const float mean_gw = (float)(sum_gw / (double)D);
                const float coef = (float)(sum_gw_xc / (double)D * istd * istd);
                float *dr = dx + r * D;
                if (weight) {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) dr[d] = istd * (gr[d] * weight[d] - mean_gw - (xr[d] - mu) * coef);
                } else {
#pragma omp simd
                    for (int64_t d = 0; d < D; d++) dr[d] = istd * (gr[d] - mean_gw - (xr[d] - mu) * coef);
                }
            }
            if (want_params) {
#pragma omp simd
                for (int64_t d = 0; d < D; d++) {
                    part_w[d] += gr[d] * (xr[d] - mu) * istd;
                    part_b[d] += gr[d];
                }
            }
        }
    }
    if (!want_params) return;
    for (int64_t d = 0; d < D; d++) {
        float sum_w = 0, sum_b = 0;
        for (int t = 0; t < n_threads; t++) {
            sum_w += scratch[(size_t)t * 2 * (size_t)D + (size_t)d];
            sum_b += scratch[(size_t)t * 2 * (size_t)D + (size_t)(D + d)];
        }
        if (dweight) dweight[d] = sum_w;
        if (dbias) dbias[d] = sum_b;
    }
}
