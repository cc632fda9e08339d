/* Fast F32 batch norm and layer norm kernels (see norm.h); statistics take one pass over the data.
 * Over long contiguous runs (layer norm rows, batch norm channels of large maps), sums of deviations
 * from a shift (one value of the same row or channel) give the variance without the cancellation of
 * E[x^2] - E[x]^2 when |mean| >> std; they run in float over short blocks, which vectorises, and the
 * blocks are combined in double, so a channel of a million values keeps float accuracy. Batch norm
 * over large maps goes channel by channel, normalising each channel right after its statistics while
 * it is still in cache; over small maps it goes by blocks of channels (see SMALL_S); over
 * channels-last memory by rows, each thread summing its share of the rows per channel. The batch
 * norm kernels also add a residual and apply a ReLU on the way out, and their backward masks the
 * gradient by the ReLU and hands it to the residual, so a residual block's BN + add + ReLU is one
 * pass forward and two backward. */
#include "norm.h"

#include "core/internal.h"

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

/* ---- batch norm, with an optional residual and ReLU ---- */

/* Below this spatial size a channel's values are short runs strided across the batch (S = 1 for
 * (N, C) activations), and walking them channel by channel is mostly call and stride overhead.
 * Batch norm then takes blocks of channels whose COLUMNS values per sample are contiguous, and
 * accumulates them column by column, sample after sample. */
#define SMALL_S 128
#define COLUMNS 512
_Static_assert(SMALL_S <= COLUMNS, "a block holds at least one channel");
/* Channels last: the length of a run of whole rows, and the runs summed in float before the sums
 * move to double (see the channels-last kernels below). */
#define RUN_WIDTH 512
#define FLUSH_RUNS 64

/* Batch statistics from the sums of deviations from `shift` over M values. */
static void channel_stats(double sum, double sumsq, double M, float shift, float *mean, float *var) {
    const double m = sum / M;
    *mean = (float)(shift + m);
    *var = (float)fmax(sumsq / M - m * m, 0.0);
}

/* The backward of one channel as dx = k * (gz - mean_g - (x - mean) * coef), gz the gradient that
 * reaches the normalization (g, masked by the ReLU when there is one). In training,
 * k = weight * istd, mean_g = mean(gz) and coef = istd^2 * mean(gz * (x - mean)): the statistics'
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

/* One contiguous stretch of n values of the forward, with the per-channel constants spread over
 * it: y = act((x - mean) * scale + offset + residual), act zeroing values below `floor`. */
static void normalize_stretch(int64_t n, const float *x, const float *residual, const float *mean, const float *scale,
                              const float *offset, float floor, float *y) {
    if (residual) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float v = (x[j] - mean[j]) * scale[j] + offset[j] + residual[j];
            y[j] = v < floor ? 0.0f : v;
        }
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float v = (x[j] - mean[j]) * scale[j] + offset[j];
            y[j] = v < floor ? 0.0f : v;
        }
    }
}

/* One contiguous stretch of n values of the backward, with the per-channel constants spread over
 * it: dresidual = gz (when asked), dx = k * (gz - mean_g - (x - mean) * coef) (when asked), gz the
 * gradient g masked by the ReLU's output when there is one. */
static void grad_stretch(int64_t n, const float *g, const float *mask, const float *x, const float *mean,
                         const float *k, const float *mean_g, const float *coef, float *dx, float *dresidual) {
    if (dresidual && mask) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) dresidual[j] = mask[j] > 0 ? g[j] : 0.0f;
    } else if (dresidual) {
        memcpy(dresidual, g, (size_t)n * sizeof *g);
    }
    if (!dx) return;
    if (mask) {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float gz = mask[j] > 0 ? g[j] : 0.0f;
            dx[j] = k[j] * (gz - mean_g[j] - (x[j] - mean[j]) * coef[j]);
        }
    } else {
#pragma omp simd
        for (int64_t j = 0; j < n; j++) dx[j] = k[j] * (g[j] - mean_g[j] - (x[j] - mean[j]) * coef[j]);
    }
}

/* As grad_moments over gz = (y > 0 ? g : 0): the gradient below a ReLU whose output is y. */
static void masked_grad_moments(const float *g, const float *y, const float *x, int64_t n, float mu, double *sum_g,
                                double *sum_g_xc) {
    for (int64_t start = 0; start < n; start += BLOCK) {
        const int64_t end = min_i64(start + BLOCK, n);
        float s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
        for (int64_t i = start; i < end; i++) {
            float gz = y[i] > 0 ? g[i] : 0.0f;
            s1 += gz;
            s2 += gz * (x[i] - mu);
        }
        *sum_g += s1;
        *sum_g_xc += s2;
    }
}

/* y = max(y, 0) over n values, in place (NaN passes, as bl_relu). */
/* The activation as one comparison in the normalizing loops: values below `floor` become 0; the
 * floor is 0 for a ReLU (NaN passes, as bl_relu) and -inf for none. */
static float act_floor(bool relu) { return relu ? 0.0f : -INFINITY; }

/* One contiguous run of a channel: y = act((x - mu) * scale + offset + residual). */
static void normalize_run(int64_t n, const float *x, const float *residual, float mu, float scale, float offset,
                          bool relu, float *y) {
    const float floor = act_floor(relu);
    if (residual) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float v = (x[i] - mu) * scale + offset + residual[i];
            y[i] = v < floor ? 0.0f : v;
        }
    } else {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float v = (x[i] - mu) * scale + offset;
            y[i] = v < floor ? 0.0f : v;
        }
    }
}

/* One contiguous run of a channel's gradients: dresidual = gz (when asked), dx from channel_grad.
 * y is the ReLU's output (NULL without a ReLU). */
static void channel_grad_run(int64_t n, const float *g, const float *y, const float *x, float mu, channel_grad cg,
                             float *dx, float *dresidual) {
    if (y) {
        if (dresidual) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) dresidual[i] = y[i] > 0 ? g[i] : 0.0f;
        }
        if (dx) {
#pragma omp simd
            for (int64_t i = 0; i < n; i++) {
                float gz = y[i] > 0 ? g[i] : 0.0f;
                dx[i] = cg.k * (gz - cg.mean_g - (x[i] - mu) * cg.coef);
            }
        }
        return;
    }
    if (dresidual) memcpy(dresidual, g, (size_t)n * sizeof *g);
    if (dx) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) dx[i] = cg.k * (g[i] - cg.mean_g - (x[i] - mu) * cg.coef);
    }
}

/* -- channel planes (N, C, S), large S: channel by channel -- */

static void bn_act_fwd_channels(const cpu_bn_act_args *a, const float *x, const float *weight, const float *bias,
                                const float *residual, float *mean, float *var, float *invstd, float *y) {
    const int64_t N = a->bn.N, C = a->bn.C, S = a->bn.S;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c = 0; c < C; c++) {
        if (a->bn.training) {
            const float shift = x[c * S];
            double sum = 0, sumsq = 0;
            for (int64_t n = 0; n < N; n++) shifted_moments(x + (n * C + c) * S, S, shift, &sum, &sumsq);
            channel_stats(sum, sumsq, (double)(N * S), shift, &mean[c], &var[c]);
        }
        const float istd = (float)(1.0 / sqrt((double)var[c] + a->bn.eps));
        const float scale = istd * (weight ? weight[c] : 1.0f), offset = bias ? bias[c] : 0.0f;
        invstd[c] = istd;
        for (int64_t n = 0; n < N; n++) {
            const int64_t at = (n * C + c) * S;
            normalize_run(S, x + at, residual ? residual + at : NULL, mean[c], scale, offset, a->relu, y + at);
        }
    }
}

static void bn_act_bwd_channels(const cpu_bn_act_args *a, const float *g, const float *x, const float *y,
                                const float *mean, const float *invstd, const float *weight, float *dx,
                                float *dweight, float *dbias, float *dresidual) {
    const int64_t N = a->bn.N, C = a->bn.C, S = a->bn.S;
    const float *mask = a->relu ? y : NULL;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c = 0; c < C; c++) {
        const float mu = mean[c], istd = invstd[c];
        double sum_g = 0, sum_g_xc = 0;
        if (a->bn.training || dweight || dbias)
            for (int64_t n = 0; n < N; n++) {
                const int64_t at = (n * C + c) * S;
                if (mask)
                    masked_grad_moments(g + at, mask + at, x + at, S, mu, &sum_g, &sum_g_xc);
                else
                    grad_moments(g + at, x + at, S, mu, &sum_g, &sum_g_xc);
            }
        if (dweight) dweight[c] = (float)(sum_g_xc * istd);
        if (dbias) dbias[c] = (float)sum_g;
        const channel_grad cg = batch_norm_channel_grad(&a->bn, sum_g, sum_g_xc, istd, weight ? weight[c] : 1.0f);
        for (int64_t n = 0; n < N; n++) {
            const int64_t at = (n * C + c) * S;
            channel_grad_run(S, g + at, mask ? mask + at : NULL, x + at, mu, cg, dx ? dx + at : NULL,
                             dresidual ? dresidual + at : NULL);
        }
    }
}

/* -- channel planes (N, C, S), small S: blocks of channels as columns -- */

static void bn_act_fwd_columns(const cpu_bn_act_args *a, const float *x, const float *weight, const float *bias,
                               const float *residual, float *mean, float *var, float *invstd, float *y) {
    const int64_t N = a->bn.N, C = a->bn.C, S = a->bn.S, block = COLUMNS / S;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        const int64_t n_channels = min_i64(block, C - c0), cols = n_channels * S;
        float col_mean[COLUMNS], col_scale[COLUMNS], col_offset[COLUMNS];
        if (a->bn.training) {
            /* Summed in double straight away: each column gets one addition per sample. */
            double sum[COLUMNS] = {0}, sumsq[COLUMNS] = {0};
            for (int64_t n = 0; n < N; n++) {
                const float *xr = x + c0 * S + n * C * S;
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
            const float istd = (float)(1.0 / sqrt((double)var[c] + a->bn.eps));
            invstd[c] = istd;
            for (int64_t s = 0; s < S; s++) {
                col_mean[k * S + s] = mean[c];
                col_scale[k * S + s] = istd * (weight ? weight[c] : 1.0f);
                col_offset[k * S + s] = bias ? bias[c] : 0.0f;
            }
        }
        const float floor = act_floor(a->relu);
        for (int64_t n = 0; n < N; n++) {
            const int64_t at = c0 * S + n * C * S;
            normalize_stretch(cols, x + at, residual ? residual + at : NULL, col_mean, col_scale, col_offset, floor,
                              y + at);
        }
    }
}

static void bn_act_bwd_columns(const cpu_bn_act_args *a, const float *g, const float *x, const float *y,
                               const float *mean, const float *invstd, const float *weight, float *dx, float *dweight,
                               float *dbias, float *dresidual) {
    const int64_t N = a->bn.N, C = a->bn.C, S = a->bn.S, block = COLUMNS / S;
    const float *mask = a->relu ? y : NULL;
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
    for (int64_t c0 = 0; c0 < C; c0 += block) {
        const int64_t n_channels = min_i64(block, C - c0), cols = n_channels * S, offset = c0 * S;
        float col_mean[COLUMNS], col_k[COLUMNS], col_mean_g[COLUMNS], col_coef[COLUMNS];
        double sum_g[COLUMNS] = {0}, sum_g_xc[COLUMNS] = {0};
        for (int64_t j = 0; j < cols; j++) col_mean[j] = mean[c0 + j / S];
        if (a->bn.training || dweight || dbias)
            for (int64_t n = 0; n < N; n++) {
                const int64_t at = offset + n * C * S;
                const float *gr = g + at, *xr = x + at, *mr = mask ? mask + at : NULL;
                if (mr) {
#pragma omp simd
                    for (int64_t j = 0; j < cols; j++) {
                        float gz = mr[j] > 0 ? gr[j] : 0.0f;
                        sum_g[j] += gz;
                        sum_g_xc[j] += (double)gz * (xr[j] - col_mean[j]);
                    }
                } else {
#pragma omp simd
                    for (int64_t j = 0; j < cols; j++) {
                        sum_g[j] += gr[j];
                        sum_g_xc[j] += (double)gr[j] * (xr[j] - col_mean[j]);
                    }
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
                batch_norm_channel_grad(&a->bn, channel_g, channel_g_xc, invstd[c], weight ? weight[c] : 1.0f);
            for (int64_t s = 0; s < S; s++) {
                col_k[k * S + s] = cg.k;
                col_mean_g[k * S + s] = cg.mean_g;
                col_coef[k * S + s] = cg.coef;
            }
        }
        for (int64_t n = 0; n < N; n++) {
            const int64_t at = offset + n * C * S;
            grad_stretch(cols, g + at, mask ? mask + at : NULL, x + at, col_mean, col_k, col_mean_g, col_coef,
                         dx ? dx + at : NULL, dresidual ? dresidual + at : NULL);
        }
    }
}

/* -- channels last: an (M, C) matrix, M = N * S, one channel per column --
 * Rows are taken a run at a time: RUN_WIDTH / C consecutive rows (at least one) are one contiguous
 * run of `width` values, value j of channel j % C, so every inner loop is long and vectorizes
 * whatever C is (C = 16 would otherwise be one vector per loop). Per-channel constants are spread
 * over a run once ("run arrays"). The rows are split over the threads; each thread sums its runs
 * per column in float, moving the sums to its own slice of doubles every FLUSH_RUNS runs, and the
 * slices are added up. */

/* Scratch, in doubles: T slices of 2C sums; then floats: RUN_ARRAYS shared run arrays `width`
 * long, 3C per-channel constants, and T pairs of float accumulators `width` long. */
#define RUN_ARRAYS 4

static int64_t run_width(int64_t C) { return C >= RUN_WIDTH ? C : RUN_WIDTH / C * C; }

static int team_size(void) {
#ifdef _OPENMP
    return omp_get_num_threads();
#else
    return 1;
#endif
}

/* The rows [*begin, *end) of M that thread t of a team of T takes. */
static void thread_rows(int64_t M, int t, int T, int64_t *begin, int64_t *end) {
    const int64_t per = (M + T - 1) / T;
    *begin = min_i64((int64_t)t * per, M);
    *end = min_i64(*begin + per, M);
}

typedef struct {
    int64_t C, width;
    double *slices; /* T x 2C */
    float *arrays;  /* RUN_ARRAYS x width, shared */
    float *consts;  /* 3C, shared */
    float *acc;     /* T x 2 x width, one pair per thread */
} rows_scratch;

static size_t rows_scratch_doubles(int64_t C) {
    const size_t T = (size_t)bl__max_threads(), width = (size_t)run_width(C);
    const size_t floats = RUN_ARRAYS * width + 3 * (size_t)C + T * 2 * width;
    return T * 2 * (size_t)C + (floats + 1) / 2;
}

static rows_scratch rows_scratch_of(int64_t C, double *scratch) {
    const int64_t T = bl__max_threads(), width = run_width(C);
    float *arrays = (float *)(scratch + T * 2 * C), *consts = arrays + RUN_ARRAYS * width;
    return (rows_scratch){C, width, scratch, arrays, consts, consts + 3 * C};
}

/* run[j] = v[j % C] over the run's width (v NULL: `missing` everywhere). */
static void spread(const float *v, float missing, int64_t C, int64_t width, float *run) {
    for (int64_t j = 0; j < width; j++) run[j] = v ? v[j % C] : missing;
}

/* Adds the float accumulators of one thread (width values) into its double slice (2C values). */
static void flush(const rows_scratch *rs, float *s1, float *s2, double *sum) {
    for (int64_t j = 0; j < rs->width; j++) {
        sum[j % rs->C] += s1[j];
        sum[rs->C + j % rs->C] += s2[j];
        s1[j] = s2[j] = 0;
    }
}

/* The thread's slice gets sum(x - shift), sum((x - shift)^2) per channel over rows [r0, r1). */
static void rows_moments(const rows_scratch *rs, const float *x, const float *shift_run, int64_t r0, int64_t r1,
                         float *s1, float *s2, double *sum) {
    const int64_t C = rs->C, per_run = rs->width / C;
    memset(s1, 0, (size_t)rs->width * sizeof *s1);
    memset(s2, 0, (size_t)rs->width * sizeof *s2);
    for (int64_t r = r0, runs = 0; r < r1; r += per_run) {
        const int64_t n = min_i64(per_run, r1 - r) * C;
        const float *xr = x + r * C;
#pragma omp simd
        for (int64_t j = 0; j < n; j++) {
            float d = xr[j] - shift_run[j];
            s1[j] += d;
            s2[j] += d * d;
        }
        if (++runs % FLUSH_RUNS == 0) flush(rs, s1, s2, sum);
    }
    flush(rs, s1, s2, sum);
}

/* The thread's slice gets sum(gz), sum(gz * (x - mean)) per channel over rows [r0, r1), gz = g
 * masked by y (the ReLU's output) when y is not NULL. */
static void rows_grad_moments(const rows_scratch *rs, const float *g, const float *y, const float *x,
                              const float *mean_run, int64_t r0, int64_t r1, float *s1, float *s2, double *sum) {
    const int64_t C = rs->C, per_run = rs->width / C;
    memset(s1, 0, (size_t)rs->width * sizeof *s1);
    memset(s2, 0, (size_t)rs->width * sizeof *s2);
    for (int64_t r = r0, runs = 0; r < r1; r += per_run) {
        const int64_t n = min_i64(per_run, r1 - r) * C, at = r * C;
        const float *gr = g + at, *xr = x + at;
        if (y) {
            const float *yr = y + at;
#pragma omp simd
            for (int64_t j = 0; j < n; j++) {
                float gz = yr[j] > 0 ? gr[j] : 0.0f;
                s1[j] += gz;
                s2[j] += gz * (xr[j] - mean_run[j]);
            }
        } else {
#pragma omp simd
            for (int64_t j = 0; j < n; j++) {
                s1[j] += gr[j];
                s2[j] += gr[j] * (xr[j] - mean_run[j]);
            }
        }
        if (++runs % FLUSH_RUNS == 0) flush(rs, s1, s2, sum);
    }
    flush(rs, s1, s2, sum);
}

/* Adds the T per-thread slices of 2C doubles into the first one. */
static void add_slices(double *slices, int64_t C, int T) {
    for (int t = 1; t < T; t++)
        for (int64_t j = 0; j < 2 * C; j++) slices[j] += slices[(size_t)t * 2 * (size_t)C + (size_t)j];
}

/* y rows [r0, r1) = act((x - mean) * scale + offset + residual), with the constants as run arrays. */
static void normalize_rows(const cpu_bn_act_args *a, const rows_scratch *rs, int64_t r0, int64_t r1, const float *x,
                           const float *residual, const float *mean_run, const float *scale_run,
                           const float *offset_run, float *y) {
    const int64_t C = rs->C, per_run = rs->width / C;
    const float floor = act_floor(a->relu);
    for (int64_t r = r0; r < r1; r += per_run) {
        const int64_t at = r * C;
        normalize_stretch(min_i64(per_run, r1 - r) * C, x + at, residual ? residual + at : NULL, mean_run, scale_run,
                          offset_run, floor, y + at);
    }
}

/* One parallel region: each thread sums its rows, one thread combines the sums into the
 * statistics and the run arrays, and each thread normalizes its rows (the ones it just read, so
 * they are still in cache when they fit). */
static void bn_act_fwd_rows(const cpu_bn_act_args *a, const float *x, const float *weight, const float *bias,
                            const float *residual, float *mean, float *var, float *invstd, float *y,
                            double *scratch) {
    const int64_t C = a->bn.C, M = a->bn.N * a->bn.S;
    const rows_scratch rs = rows_scratch_of(C, scratch);
    float *mean_run = rs.arrays, *scale_run = mean_run + rs.width, *offset_run = scale_run + rs.width;
    float *shift_run = offset_run + rs.width;
    /* Deviations from the first row, which every thread shares, avoid cancellation. */
    if (a->bn.training) spread(x, 0, C, rs.width, shift_run);
#pragma omp parallel if (M * C >= PARALLEL_MIN)
    {
        const int t = bl__thread_index(), T = team_size();
        int64_t r0, r1;
        thread_rows(M, t, T, &r0, &r1);
        if (a->bn.training) {
            double *sum = rs.slices + (size_t)t * 2 * (size_t)C;
            float *s1 = rs.acc + (size_t)t * 2 * (size_t)rs.width;
            memset(sum, 0, 2 * (size_t)C * sizeof *sum);
            rows_moments(&rs, x, shift_run, r0, r1, s1, s1 + rs.width, sum);
#pragma omp barrier
        }
#pragma omp single
        {
            if (a->bn.training) {
                add_slices(rs.slices, C, T);
                for (int64_t c = 0; c < C; c++)
                    channel_stats(rs.slices[c], rs.slices[C + c], (double)M, x[c], &mean[c], &var[c]);
            }
            for (int64_t c = 0; c < C; c++) invstd[c] = (float)(1.0 / sqrt((double)var[c] + a->bn.eps));
            spread(mean, 0, C, rs.width, mean_run);
            spread(bias, 0, C, rs.width, offset_run);
            for (int64_t j = 0; j < rs.width; j++) scale_run[j] = invstd[j % C] * (weight ? weight[j % C] : 1.0f);
        }
        normalize_rows(a, &rs, r0, r1, x, residual, mean_run, scale_run, offset_run, y);
    }
}

/* Gradient rows [r0, r1): dresidual = gz (when asked), dx = k * (gz - mean_g - (x - mean) * coef)
 * (when asked), with the per-channel constants as run arrays. */
static void grad_rows(const rows_scratch *rs, int64_t r0, int64_t r1, const float *g, const float *mask,
                      const float *x, const float *mean_run, const float *k_run, const float *mean_g_run,
                      const float *coef_run, float *dx, float *dresidual) {
    const int64_t C = rs->C, per_run = rs->width / C;
    for (int64_t r = r0; r < r1; r += per_run) {
        const int64_t at = r * C;
        grad_stretch(min_i64(per_run, r1 - r) * C, g + at, mask ? mask + at : NULL, x + at, mean_run, k_run, mean_g_run,
                     coef_run, dx ? dx + at : NULL, dresidual ? dresidual + at : NULL);
    }
}

/* One parallel region, as the forward: sums, one thread's combination, then each thread's rows. */
static void bn_act_bwd_rows(const cpu_bn_act_args *a, const float *g, const float *x, const float *y,
                            const float *mean, const float *invstd, const float *weight, float *dx, float *dweight,
                            float *dbias, float *dresidual, double *scratch) {
    const int64_t C = a->bn.C, M = a->bn.N * a->bn.S;
    const rows_scratch rs = rows_scratch_of(C, scratch);
    const float *mask = a->relu ? y : NULL;
    const bool sums = a->bn.training || dweight || dbias;
    float *mean_run = rs.arrays, *k_run = mean_run + rs.width, *mean_g_run = k_run + rs.width;
    float *coef_run = mean_g_run + rs.width, *channel_consts = rs.consts; /* k, mean_g, coef per channel */
    spread(mean, 0, C, rs.width, mean_run);
#pragma omp parallel if (M * C >= PARALLEL_MIN)
    {
        const int t = bl__thread_index(), T = team_size();
        int64_t r0, r1;
        thread_rows(M, t, T, &r0, &r1);
        if (sums) {
            double *sum = rs.slices + (size_t)t * 2 * (size_t)C;
            float *s1 = rs.acc + (size_t)t * 2 * (size_t)rs.width;
            memset(sum, 0, 2 * (size_t)C * sizeof *sum);
            rows_grad_moments(&rs, g, mask, x, mean_run, r0, r1, s1, s1 + rs.width, sum);
#pragma omp barrier
        }
#pragma omp single
        {
            if (sums) add_slices(rs.slices, C, T);
            for (int64_t c = 0; c < C; c++) {
                const double sum_g = sums ? rs.slices[c] : 0.0, sum_g_xc = sums ? rs.slices[C + c] : 0.0;
                if (dweight) dweight[c] = (float)(sum_g_xc * invstd[c]);
                if (dbias) dbias[c] = (float)sum_g;
                const channel_grad cg =
                    batch_norm_channel_grad(&a->bn, sum_g, sum_g_xc, invstd[c], weight ? weight[c] : 1.0f);
                channel_consts[c] = cg.k;
                channel_consts[C + c] = cg.mean_g;
                channel_consts[2 * C + c] = cg.coef;
            }
            spread(channel_consts, 0, C, rs.width, k_run);
            spread(channel_consts + C, 0, C, rs.width, mean_g_run);
            spread(channel_consts + 2 * C, 0, C, rs.width, coef_run);
        }
        if (dx || dresidual)
            grad_rows(&rs, r0, r1, g, mask, x, mean_run, k_run, mean_g_run, coef_run, dx, dresidual);
    }
}

/* -- entry points -- */

size_t cpu_batch_norm_act_scratch(const cpu_bn_act_args *a) {
    return a->channels_last ? rows_scratch_doubles(a->bn.C) : 0;
}

void cpu_batch_norm_act_fwd(const cpu_bn_act_args *a, const float *x, const float *weight, const float *bias,
                            const float *residual, float *mean, float *var, float *invstd, float *y,
                            double *scratch) {
    if (a->channels_last)
        bn_act_fwd_rows(a, x, weight, bias, residual, mean, var, invstd, y, scratch);
    else if (a->bn.S < SMALL_S)
        bn_act_fwd_columns(a, x, weight, bias, residual, mean, var, invstd, y);
    else
        bn_act_fwd_channels(a, x, weight, bias, residual, mean, var, invstd, y);
}

void cpu_batch_norm_act_bwd(const cpu_bn_act_args *a, const float *g, const float *x, const float *y,
                            const float *mean, const float *invstd, const float *weight, float *dx, float *dweight,
                            float *dbias, float *dresidual, double *scratch) {
    if (a->channels_last)
        bn_act_bwd_rows(a, g, x, y, mean, invstd, weight, dx, dweight, dbias, dresidual, scratch);
    else if (a->bn.S < SMALL_S)
        bn_act_bwd_columns(a, g, x, y, mean, invstd, weight, dx, dweight, dbias, dresidual);
    else
        bn_act_bwd_channels(a, g, x, y, mean, invstd, weight, dx, dweight, dbias, dresidual);
}

void cpu_batch_norm_fwd(const bl_batch_norm_args *a, const float *x, const float *weight, const float *bias,
                        float *mean, float *var, float *invstd, float *y) {
    const cpu_bn_act_args plain = {.bn = *a};
    cpu_batch_norm_act_fwd(&plain, x, weight, bias, NULL, mean, var, invstd, y, NULL);
}

void cpu_batch_norm_bwd(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                        const float *invstd, const float *weight, float *dx, float *dweight, float *dbias) {
    const cpu_bn_act_args plain = {.bn = *a};
    cpu_batch_norm_act_bwd(&plain, g, x, NULL, mean, invstd, weight, dx, dweight, dbias, NULL, NULL);
}

/* -- synchronized batch norm: the moments processes add up, and the correction of dx -- */

size_t cpu_batch_norm_moments_scratch(const cpu_bn_act_args *a) {
    return a->channels_last ? (size_t)bl__max_threads() * 2 * (size_t)a->bn.C : 0;
}

void cpu_batch_norm_moments(const cpu_bn_act_args *a, const float *x, double *sums, double *scratch) {
    const int64_t N = a->bn.N, C = a->bn.C, S = a->bn.S;
    if (!a->channels_last) {
#pragma omp parallel for schedule(static) if (N * C * S >= PARALLEL_MIN)
        for (int64_t c = 0; c < C; c++) {
            double s1 = 0, s2 = 0;
            for (int64_t n = 0; n < N; n++) {
                const float *xc = x + (n * C + c) * S;
#pragma omp simd reduction(+ : s1, s2)
                for (int64_t i = 0; i < S; i++) {
                    s1 += xc[i];
                    s2 += (double)xc[i] * xc[i];
                }
            }
            sums[c] = s1;
            sums[C + c] = s2;
        }
        return;
    }
    /* channels last: each thread sums its rows into its own slice, then the slices are added */
    const int64_t M = N * S;
    int T = 1;
#pragma omp parallel if (M * C >= PARALLEL_MIN)
    {
        const int t = omp_get_thread_num();
#pragma omp single
        T = team_size();
        int64_t r0, r1;
        thread_rows(M, t, team_size(), &r0, &r1);
        double *slice = scratch + (size_t)t * 2 * (size_t)C;
        memset(slice, 0, 2 * (size_t)C * sizeof *slice);
        for (int64_t r = r0; r < r1; r++) {
            const float *xr = x + r * C;
            for (int64_t c = 0; c < C; c++) {
                slice[c] += xr[c];
                slice[C + c] += (double)xr[c] * xr[c];
            }
        }
    }
    memset(sums, 0, 2 * (size_t)C * sizeof *sums);
    for (int t = 0; t < T; t++)
        for (int64_t j = 0; j < 2 * C; j++) sums[j] += scratch[(size_t)t * 2 * (size_t)C + (size_t)j];
}

void cpu_batch_norm_sync_dx(const cpu_bn_act_args *a, const float *x, const float *mean, const float *shift,
                            const float *slope, float *dx) {
    const int64_t N = a->bn.N, C = a->bn.C, S = a->bn.S;
    if (!a->channels_last) {
#pragma omp parallel for collapse(2) schedule(static) if (N * C * S >= PARALLEL_MIN)
        for (int64_t n = 0; n < N; n++)
            for (int64_t c = 0; c < C; c++) {
                const int64_t at = (n * C + c) * S;
                const float mu = mean[c], u = shift[c], v = slope[c];
#pragma omp simd
                for (int64_t i = 0; i < S; i++) dx[at + i] -= u + (x[at + i] - mu) * v;
            }
        return;
    }
#pragma omp parallel for schedule(static) if (N * S * C >= PARALLEL_MIN)
    for (int64_t r = 0; r < N * S; r++) {
        const float *xr = x + r * C;
        float *dr = dx + r * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) dr[c] -= shift[c] + (xr[c] - mean[c]) * slope[c];
    }
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

size_t cpu_layer_norm_bwd_scratch(const bl_layer_norm_args *a) { return (size_t)bl__max_threads() * 2 * (size_t)a->D; }

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
