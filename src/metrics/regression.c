/* Regression metrics of IQA (see include/ballast/regression.h), written to agree with scipy.stats
 * (spearmanr, kendalltau, pearsonr) and with scipy.optimize.curve_fit of the VQEG logistic. */
#include "ballast/regression.h"

#include "core/internal.h"

#include <float.h>
#include <math.h>
#include <stdlib.h>

/* Finite values, not all equal: a constant array has zero variance and every correlation with
 * it is 0 / 0. Equality is tested exactly, since a computed variance of equal values need not be 0. */
static int check_array(const char *fn, const char *name, const double *v, int64_t n) {
    bool constant = true;
    for (int64_t i = 0; i < n; i++) {
        BL_CHECK_RC(isfinite(v[i]), "%s: %s[%lld] is %g: values must be finite", fn, name, (long long)i, v[i]);
        constant &= v[i] == v[0];
    }
    BL_CHECK_RC(!constant, "%s: %s is constant (all %lld values are %g): the correlation is undefined", fn, name,
                (long long)n, v[0]);
    return BL_OK;
}

static int check_inputs(const char *fn, const double *pred, const double *target, int64_t n, int64_t min_n) {
    BL_CHECK_RC(pred && target, "%s: NULL pred or target", fn);
    BL_CHECK_RC(n >= min_n, "%s: needs at least %lld pairs, got %lld", fn, (long long)min_n, (long long)n);
    BL_TRY(check_array(fn, "pred", pred, n));
    return check_array(fn, "target", target, n);
}

/* Two-pass (centred) sums, so large offsets such as MOS on a 0..100 scale cost no precision. Clamped
 * because rounding can put |r| a few ulps above 1, as scipy's pearsonr also clips. */
static double pearson(const double *x, const double *y, int64_t n) {
    double mx = 0, my = 0, sxy = 0, sxx = 0, syy = 0;
    for (int64_t i = 0; i < n; i++) mx += x[i], my += y[i];
    mx /= (double)n, my /= (double)n;
    for (int64_t i = 0; i < n; i++) {
        double dx = x[i] - mx, dy = y[i] - my;
        sxy += dx * dy, sxx += dx * dx, syy += dy * dy;
    }
    double r = sxy / (sqrt(sxx) * sqrt(syy));
    return r > 1 ? 1 : r < -1 ? -1 : r;
}

int bl_pearson(const double *pred, const double *target, int64_t n, double *out) {
    BL_TRY(check_inputs("pearson", pred, target, n, 2));
    BL_CHECK_RC(out, "pearson: NULL out");
    *out = pearson(pred, target, n);
    return BL_OK;
}

typedef struct { double v; int64_t i; } keyed;

static int by_value(const void *a, const void *b) {
    double x = ((const keyed *)a)->v, y = ((const keyed *)b)->v;
    return (x > y) - (x < y);
}

/* Ranks 1..n; a run of equal values at sorted positions i..j-1 shares the mean of ranks i+1..j
 * (scipy.stats.rankdata's 'average'). */
static void average_ranks(const double *v, int64_t n, keyed *sorted, double *rank) {
    for (int64_t i = 0; i < n; i++) sorted[i] = (keyed){v[i], i};
    qsort(sorted, (size_t)n, sizeof *sorted, by_value);
    for (int64_t i = 0, j; i < n; i = j) {
        for (j = i + 1; j < n && sorted[j].v == sorted[i].v; j++) {}
        for (int64_t k = i; k < j; k++) rank[sorted[k].i] = 0.5 * (double)(i + 1 + j);
    }
}

int bl_srcc(const double *pred, const double *target, int64_t n, double *out) {
    BL_TRY(check_inputs("srcc", pred, target, n, 2));
    BL_CHECK_RC(out, "srcc: NULL out");
    double *ranks = malloc(2 * (size_t)n * sizeof *ranks);
    keyed *sorted = malloc((size_t)n * sizeof *sorted);
    if (!ranks || !sorted) {
        free(ranks), free(sorted);
        BL_CHECK_RC(false, "srcc: out of memory for %lld pairs", (long long)n);
    }
    average_ranks(pred, n, sorted, ranks);
    average_ranks(target, n, sorted, ranks + n);
    *out = pearson(ranks, ranks + n, n);
    free(ranks), free(sorted);
    return BL_OK;
}

/* All pairs, counted exactly in int64 (n (n - 1) / 2 fits for any n that O(n^2) can finish);
 * only the final ratio is floating point. A pair tied in both arrays is in both tie counts and
 * adds nothing to concordant - discordant, as in tau-b. */
int bl_krcc(const double *pred, const double *target, int64_t n, double *out) {
    BL_TRY(check_inputs("krcc", pred, target, n, 2));
    BL_CHECK_RC(out, "krcc: NULL out");
    int64_t s = 0, ties_pred = 0, ties_target = 0;
    for (int64_t i = 0; i < n - 1; i++) {
        double xi = pred[i], yi = target[i];
        for (int64_t j = i + 1; j < n; j++) {
            int dx = (pred[j] > xi) - (pred[j] < xi), dy = (target[j] > yi) - (target[j] < yi);
            s += dx * dy;
            ties_pred += dx == 0;
            ties_target += dy == 0;
        }
    }
    int64_t pairs = n * (n - 1) / 2;
    /* Neither factor is 0, both arrays being non-constant. Their product is exact up to n ~ 13000,
     * so a perfect agreement with equal tie counts gives exactly 1. */
    *out = (double)s / sqrt((double)(pairs - ties_pred) * (double)(pairs - ties_target));
    return BL_OK;
}

/* 1 / (1 + exp(-z)) without overflow of exp for very negative z. */
static double sigmoid(double z) {
    if (z >= 0) return 1 / (1 + exp(-z));
    double e = exp(z);
    return e / (1 + e);
}

double bl_logistic4(const double beta[4], double x) {
    return (beta[0] - beta[1]) * sigmoid((x - beta[2]) / fabs(beta[3])) + beta[1];
}

/* NaN or infinite when the parameters are unusable (|b4| = 0 at x = b3): a step there is refused. */
static double squared_error(const double beta[4], const double *x, const double *y, int64_t n) {
    double e = 0;
    for (int64_t i = 0; i < n; i++) {
        double r = y[i] - bl_logistic4(beta, x[i]);
        e += r * r;
    }
    return e;
}

/* a d = g by Gaussian elimination with partial pivoting (a and g are overwritten); false when singular. */
static bool solve4(double a[4][4], double g[4], double d[4]) {
    for (int c = 0; c < 4; c++) {
        int p = c;
        for (int r = c + 1; r < 4; r++)
            if (fabs(a[r][c]) > fabs(a[p][c])) p = r;
        if (!(fabs(a[p][c]) > 0)) return false;
        for (int k = 0; k < 4; k++) {
            double t = a[c][k];
            a[c][k] = a[p][k], a[p][k] = t;
        }
        double t = g[c];
        g[c] = g[p], g[p] = t;
        for (int r = c + 1; r < 4; r++) {
            double f = a[r][c] / a[c][c];
            for (int k = c; k < 4; k++) a[r][k] -= f * a[c][k];
            g[r] -= f * g[c];
        }
    }
    for (int c = 3; c >= 0; c--) {
        double s = g[c];
        for (int k = c + 1; k < 4; k++) s -= a[c][k] * d[k];
        d[c] = s / a[c][c];
    }
    return true;
}

/* Levenberg-Marquardt with the analytic Jacobian and Marquardt's scaling (damping proportional to
 * the diagonal of J^T J, which makes the steps independent of the units of pred and target). It
 * runs until no damping, however strong, finds a lower error: the optimum to rounding, tighter than
 * MINPACK's default tolerances in curve_fit, which is why the tests' reference uses tight ones. */
int bl_logistic4_fit(const double *pred, const double *target, int64_t n, double beta[4]) {
    BL_TRY(check_inputs("logistic4_fit", pred, target, n, 4));
    BL_CHECK_RC(beta, "logistic4_fit: NULL beta");
    double b[4] = {target[0], target[0], 0, 0};
    for (int64_t i = 0; i < n; i++) {
        b[0] = fmax(b[0], target[i]), b[1] = fmin(b[1], target[i]);
        b[2] += pred[i];
    }
    b[2] /= (double)n;
    for (int64_t i = 0; i < n; i++) b[3] += (pred[i] - b[2]) * (pred[i] - b[2]);
    b[3] = sqrt(b[3] / (double)n);
    if (!(b[3] > 0)) b[3] = 1;

    double err = squared_error(b, pred, target, n), lambda = 1e-3;
    for (int iter = 0; iter < 1000 && err > 0; iter++) {
        double jtj[4][4] = {{0}}, jtr[4] = {0};
        for (int64_t i = 0; i < n; i++) {
            /* f = (b1 - b2) g(z) + b2, z = (x - b3) / |b4|, g' = g (1 - g) */
            double s = fabs(b[3]), z = (pred[i] - b[2]) / s, g = sigmoid(z), h = (b[0] - b[1]) * g * (1 - g) / s;
            double jac[4] = {g, 1 - g, -h, -h * z * copysign(1, b[3])};
            double r = target[i] - ((b[0] - b[1]) * g + b[1]);
            for (int k = 0; k < 4; k++) {
                jtr[k] += jac[k] * r;
                for (int l = 0; l < 4; l++) jtj[k][l] += jac[k] * jac[l];
            }
        }
        /* b1 = b2 zeroes the b3, b4 columns (the first two never both vanish: g + (1 - g) = 1);
         * the floor keeps the damped system solvable there. */
        double diag_max = fmax(fmax(jtj[0][0], jtj[1][1]), fmax(jtj[2][2], jtj[3][3]));
        bool stepped = false;
        while (!stepped && lambda < 1e16) {
            double a[4][4], g[4], d[4], trial[4];
            for (int k = 0; k < 4; k++) {
                for (int l = 0; l < 4; l++) a[k][l] = jtj[k][l];
                a[k][k] += lambda * fmax(jtj[k][k], 1e-12 * diag_max);
                g[k] = jtr[k];
            }
            if (solve4(a, g, d)) {
                for (int k = 0; k < 4; k++) trial[k] = b[k] + d[k];
                double e = squared_error(trial, pred, target, n);
                if (e < err) {
                    for (int k = 0; k < 4; k++) b[k] = trial[k];
                    err = e, stepped = true;
                    lambda = fmax(lambda / 10, 1e-12);
                }
            }
            if (!stepped) lambda *= 10;
        }
        if (!stepped) break;
    }
    /* f depends on |b4| only; the sign the iteration left is noise */
    for (int k = 0; k < 4; k++) beta[k] = k == 3 ? fabs(b[k]) : b[k];
    return BL_OK;
}

int bl_regression_metrics_compute(const double *pred, const double *target, int64_t n, bl_regression_metrics *out) {
    BL_TRY(check_inputs("regression metrics", pred, target, n, 4));
    BL_CHECK_RC(out, "regression metrics: NULL out");
    bl_regression_metrics m = {.n = n};
    BL_TRY(bl_srcc(pred, target, n, &m.srcc));
    BL_TRY(bl_krcc(pred, target, n, &m.krcc));
    BL_TRY(bl_pearson(pred, target, n, &m.plcc_raw));
    BL_TRY(bl_logistic4_fit(pred, target, n, m.logistic));
    double *fitted = malloc((size_t)n * sizeof *fitted);
    BL_CHECK_RC(fitted, "regression metrics: out of memory for %lld pairs", (long long)n);
    double se = 0;
    bool flat = true;
    for (int64_t i = 0; i < n; i++) {
        fitted[i] = bl_logistic4(m.logistic, pred[i]);
        se += (fitted[i] - target[i]) * (fitted[i] - target[i]);
        flat &= fitted[i] == fitted[0];
    }
    if (flat) free(fitted);
    BL_CHECK_RC(!flat, "regression metrics: the fitted logistic is constant (%g) over pred: PLCC is undefined",
                bl_logistic4(m.logistic, pred[0]));
    m.rmse = sqrt(se / (double)n);
    m.plcc = pearson(fitted, target, n);
    free(fitted);
    *out = m;
    return BL_OK;
}
