/* Reference batch norm and layer norm kernels (see ref_norm.h). One body serves float and double:
 * elements are read and written through get/put with the element type chosen at run time, and all
 * arithmetic is in double. Clarity over speed: this is the oracle and the gradient-check path. */
#include "ref_norm.h"

#include <math.h>

static double get(const void *p, bool f64, int64_t i) {
    return f64 ? ((const double *)p)[i] : (double)((const float *)p)[i];
}

static void put(void *p, bool f64, int64_t i, double v) {
    if (f64)
        ((double *)p)[i] = v;
    else
        ((float *)p)[i] = (float)v;
}

/* ---- batch norm ---- */

/* Element (n, c, s) of a (N, C, S) tensor. */
static int64_t at_ncs(const bl_batch_norm_args *a, int64_t n, int64_t c, int64_t s) {
    return (n * a->C + c) * a->S + s;
}

static void batch_norm_fwd(const bl_batch_norm_args *a, bool f64, const void *x, const void *weight,
                           const void *bias, void *mean, void *var, void *invstd, void *y) {
    const int64_t M = a->N * a->S;
    for (int64_t c = 0; c < a->C; c++) {
        double mu, sigma2;
        if (a->training) {
            double sum = 0, sq = 0;
            for (int64_t n = 0; n < a->N; n++)
                for (int64_t s = 0; s < a->S; s++) sum += get(x, f64, at_ncs(a, n, c, s));
            mu = sum / (double)M;
            for (int64_t n = 0; n < a->N; n++)
                for (int64_t s = 0; s < a->S; s++) {
                    double d = get(x, f64, at_ncs(a, n, c, s)) - mu;
                    sq += d * d;
                }
            sigma2 = sq / (double)M;
            put(mean, f64, c, mu);
            put(var, f64, c, sigma2);
        } else {
            mu = get(mean, f64, c);
            sigma2 = get(var, f64, c);
        }
        double istd = 1.0 / sqrt(sigma2 + a->eps);
        put(invstd, f64, c, istd);
        double w = weight ? get(weight, f64, c) : 1.0, b = bias ? get(bias, f64, c) : 0.0;
        for (int64_t n = 0; n < a->N; n++)
            for (int64_t s = 0; s < a->S; s++) {
                int64_t i = at_ncs(a, n, c, s);
                put(y, f64, i, (get(x, f64, i) - mu) * istd * w + b);
            }
    }
}

static void batch_norm_bwd(const bl_batch_norm_args *a, bool f64, const void *g, const void *x,
                           const void *mean, const void *invstd, const void *weight, void *dx, void *dweight,
                           void *dbias) {
    const double M = (double)(a->N * a->S);
    for (int64_t c = 0; c < a->C; c++) {
        double mu = get(mean, f64, c), istd = get(invstd, f64, c), w = weight ? get(weight, f64, c) : 1.0;
        double sum_g = 0, sum_g_xhat = 0;
        for (int64_t n = 0; n < a->N; n++)
            for (int64_t s = 0; s < a->S; s++) {
                int64_t i = at_ncs(a, n, c, s);
                double gi = get(g, f64, i);
                sum_g += gi;
                sum_g_xhat += gi * (get(x, f64, i) - mu) * istd;
            }
        if (dweight) put(dweight, f64, c, sum_g_xhat);
        if (dbias) put(dbias, f64, c, sum_g);
        if (!dx) continue;
        for (int64_t n = 0; n < a->N; n++)
            for (int64_t s = 0; s < a->S; s++) {
                int64_t i = at_ncs(a, n, c, s);
                double gi = get(g, f64, i), d = gi;
                if (a->training) {
                    double xhat = (get(x, f64, i) - mu) * istd;
                    d = (M * gi - sum_g - xhat * sum_g_xhat) / M;
                }
                put(dx, f64, i, d * w * istd);
            }
    }
}

void ref_batch_norm_fwd_f32(const bl_batch_norm_args *a, const float *x, const float *weight, const float *bias,
                            float *mean, float *var, float *invstd, float *y) {
    batch_norm_fwd(a, false, x, weight, bias, mean, var, invstd, y);
}

void ref_batch_norm_fwd_f64(const bl_batch_norm_args *a, const double *x, const double *weight,
                            const double *bias, double *mean, double *var, double *invstd, double *y) {
    batch_norm_fwd(a, true, x, weight, bias, mean, var, invstd, y);
}

void ref_batch_norm_bwd_f32(const bl_batch_norm_args *a, const float *g, const float *x, const float *mean,
                            const float *invstd, const float *weight, float *dx, float *dweight, float *dbias) {
    batch_norm_bwd(a, false, g, x, mean, invstd, weight, dx, dweight, dbias);
}

void ref_batch_norm_bwd_f64(const bl_batch_norm_args *a, const double *g, const double *x, const double *mean,
                            const double *invstd, const double *weight, double *dx, double *dweight,
                            double *dbias) {
    batch_norm_bwd(a, true, g, x, mean, invstd, weight, dx, dweight, dbias);
}

/* ---- layer norm ---- */

static void layer_norm_fwd(const bl_layer_norm_args *a, bool f64, const void *x, const void *weight,
                           const void *bias, void *mean, void *invstd, void *y) {
    for (int64_t r = 0; r < a->R; r++) {
        const int64_t row = r * a->D;
        double sum = 0, sq = 0;
        for (int64_t d = 0; d < a->D; d++) sum += get(x, f64, row + d);
        double mu = sum / (double)a->D;
        for (int64_t d = 0; d < a->D; d++) {
            double dev = get(x, f64, row + d) - mu;
            sq += dev * dev;
        }
        double istd = 1.0 / sqrt(sq / (double)a->D + a->eps);
        put(mean, f64, r, mu);
        put(invstd, f64, r, istd);
        for (int64_t d = 0; d < a->D; d++) {
            double v = (get(x, f64, row + d) - mu) * istd;
            if (weight) v *= get(weight, f64, d);
            if (bias) v += get(bias, f64, d);
            put(y, f64, row + d, v);
        }
    }
}

static void layer_norm_bwd(const bl_layer_norm_args *a, bool f64, const void *g, const void *x,
                           const void *mean, const void *invstd, const void *weight, void *dx, void *dweight,
                           void *dbias) {
    const double D = (double)a->D;
    if (dx) {
        for (int64_t r = 0; r < a->R; r++) {
            const int64_t row = r * a->D;
            double mu = get(mean, f64, r), istd = get(invstd, f64, r);
            double sum_gw = 0, sum_gw_xhat = 0;
            for (int64_t d = 0; d < a->D; d++) {
                double gw = get(g, f64, row + d) * (weight ? get(weight, f64, d) : 1.0);
                sum_gw += gw;
                sum_gw_xhat += gw * (get(x, f64, row + d) - mu) * istd;
            }
            for (int64_t d = 0; d < a->D; d++) {
                double gw = get(g, f64, row + d) * (weight ? get(weight, f64, d) : 1.0);
                double xhat = (get(x, f64, row + d) - mu) * istd;
                put(dx, f64, row + d, istd / D * (D * gw - sum_gw - xhat * sum_gw_xhat));
            }
        }
    }
    for (int64_t d = 0; d < a->D && (dweight || dbias); d++) {
        double sum_g = 0, sum_g_xhat = 0;
        for (int64_t r = 0; r < a->R; r++) {
            double gi = get(g, f64, r * a->D + d);
            sum_g += gi;
            sum_g_xhat += gi * (get(x, f64, r * a->D + d) - get(mean, f64, r)) * get(invstd, f64, r);
        }
        if (dweight) put(dweight, f64, d, sum_g_xhat);
        if (dbias) put(dbias, f64, d, sum_g);
    }
}

void ref_layer_norm_fwd_f32(const bl_layer_norm_args *a, const float *x, const float *weight, const float *bias,
                            float *mean, float *invstd, float *y) {
    layer_norm_fwd(a, false, x, weight, bias, mean, invstd, y);
}

void ref_layer_norm_fwd_f64(const bl_layer_norm_args *a, const double *x, const double *weight,
                            const double *bias, double *mean, double *invstd, double *y) {
    layer_norm_fwd(a, true, x, weight, bias, mean, invstd, y);
}

void ref_layer_norm_bwd_f32(const bl_layer_norm_args *a, const float *g, const float *x, const float *mean,
                            const float *invstd, const float *weight, float *dx, float *dweight, float *dbias) {
    layer_norm_bwd(a, false, g, x, mean, invstd, weight, dx, dweight, dbias);
}

void ref_layer_norm_bwd_f64(const bl_layer_norm_args *a, const double *g, const double *x, const double *mean,
                            const double *invstd, const double *weight, double *dx, double *dweight,
                            double *dbias) {
    layer_norm_bwd(a, true, g, x, mean, invstd, weight, dx, dweight, dbias);
}
