/* ballast regression metrics: how well predicted scores agree with target scores, as blind image
 * quality assessment (IQA) papers report it (pred: the model's quality scores, target: the
 * subjective scores, MOS or DMOS).
 *  - SRCC: Spearman rank-order correlation, the Pearson correlation of the ranks, ties getting the
 *    average of the ranks they span (scipy.stats.spearmanr).
 *  - KRCC: Kendall's tau-b (scipy.stats.kendalltau's default):
 *      (concordant - discordant) / sqrt((P - ties_pred) * (P - ties_target)),
 *    P = n (n - 1) / 2 pairs; a pair tied in both arrays counts in both tie counts. O(n^2) time:
 *    0.1 s at n = 1e4, 2 s at n = 4e4.
 *  - PLCC: Pearson linear correlation between the target and the prediction mapped by the 4-parameter
 *    logistic of VQEG,
 *      f(x) = (b1 - b2) / (1 + exp(-(x - b3) / |b4|)) + b2,
 *    fitted to (pred, target) by least squares (Levenberg-Marquardt, double precision) from the
 *    customary start b1 = max(target), b2 = min(target), b3 = mean(pred), b4 = std(pred) (population
 *    std; 1 should it be 0). The fit only rescales pred monotonically, so SRCC and KRCC are the same
 *    before and after it. plcc_raw is the plain Pearson correlation of pred and target, without the
 *    mapping: papers differ on which they report.
 *  - RMSE: sqrt(mean((f(pred) - target)^2)), in the units of target.
 *
 * Errors: every function returns BL_OK or BL_ERR and sets the library error (bl_last_error()), and
 * leaves its outputs untouched, when n is too small (2 for the correlations, 4 for the fit, which has 4
 * parameters), when an input holds a NaN or an infinity, or when pred or target is constant, where
 * every correlation is undefined (0 / 0). */
#ifndef BALLAST_REGRESSION_H
#define BALLAST_REGRESSION_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    double srcc, krcc;
    double plcc;        /* Pearson(f(pred), target), f the fitted logistic */
    double plcc_raw;    /* Pearson(pred, target) */
    double rmse;        /* of f(pred) against target */
    double logistic[4]; /* b1, b2, b3, b4 of f, b4 >= 0; b1 < b2 where f falls */
    int64_t n;
} bl_regression_metrics;

/* All of the above over n pairs (n >= 4). */
int bl_regression_metrics_compute(const double *pred, const double *target, int64_t n, bl_regression_metrics *out);

/* The single metrics (n >= 2). Each is symmetric in its two arrays. */
int bl_srcc(const double *pred, const double *target, int64_t n, double *out);
int bl_krcc(const double *pred, const double *target, int64_t n, double *out);
int bl_pearson(const double *pred, const double *target, int64_t n, double *out);

/* Fits beta = (b1, b2, b3, b4) of the logistic above to target ~ f(pred) (n >= 4), from the customary
 * start; b4 comes back >= 0 (f only sees |b4|). Stops when no step lowers the squared error any more,
 * or after 1000 iterations: a fit whose optimum lies at infinity (data the logistic can only approach
 * in its linear limit) returns the best parameters reached. */
int bl_logistic4_fit(const double *pred, const double *target, int64_t n, double beta[4]);
/* f(x) for parameters beta. */
double bl_logistic4(const double beta[4], double x);

#ifdef __cplusplus
}
#endif

#endif
