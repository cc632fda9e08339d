/* Reference unary and along-dim reduction kernels (see ref_unary.h). Every kernel is written once
 * as a macro over the element type and instantiated for float and double; <tgmath.h> picks expf or
 * exp (and so on) from the argument type, so the float versions stay in single precision except for
 * sums, which accumulate in double. Large inputs are split across the OpenMP pool. */
#include "ref_unary.h"

#include <tgmath.h>

#define PARALLEL_MIN 16384
#define INV_SQRT_2PI 0.39894228040143267794

/* ---- scalar helpers ---- */

#define SCALAR_HELPERS(T, SFX)                                                                 \
    static inline T sign_##SFX(T v) { return (T)((v > 0) - (v < 0)); }                         \
    /* exp only ever sees -|v|, so neither branch can overflow. */                             \
    static inline T sigmoid_##SFX(T v) {                                                       \
        const T e = exp(-fabs(v));                                                             \
        return v >= 0 ? 1 / (1 + e) : e / (1 + e);                                             \
    }                                                                                          \
    /* erfc keeps full relative precision in the left tail, where 1 + erf(v) cancels. */       \
    static inline T normal_cdf_##SFX(T v) { return (T)0.5 * erfc(-v * (T)M_SQRT1_2); }        \
    static inline T normal_pdf_##SFX(T v) { return (T)INV_SQRT_2PI * exp((T)-0.5 * v * v); }  \
    /* torch.nn.functional.softplus with beta 1, threshold 20: linear above the threshold. */  \
    static inline T softplus_##SFX(T v) { return v > 20 ? v : log1p(exp(v)); }                \
    /* max then min, so lo > hi gives hi, and a NaN passes through. */                         \
    static inline T clamp_##SFX(T v, T lo, T hi) {                                             \
        const T t = v < lo ? lo : v;                                                           \
        return t > hi ? hi : t;                                                                \
    }

SCALAR_HELPERS(float, f32)
SCALAR_HELPERS(double, f64)

/* ---- elementwise ---- */

#define FOR_EACH_ELEMENT                                                                       \
    _Pragma("omp parallel for simd if (n >= PARALLEL_MIN) schedule(static)") for (int64_t i = 0; i < n; i++)

/* dx = dy * (EXPR), or dx = EXPR when there is no dy; one tight loop either way. */
#define TIMES_DY(EXPR)                                                                         \
    do {                                                                                       \
        if (dy) {                                                                              \
            FOR_EACH_ELEMENT dx[i] = dy[i] * (EXPR);                                           \
        } else {                                                                               \
            FOR_EACH_ELEMENT dx[i] = (EXPR);                                                   \
        }                                                                                      \
    } while (0)

#define UNARY_KERNELS(T, SFX)                                                                  \
    void ref_unary_fwd_##SFX(const bl_unary_args *args, int64_t n, const T *x, T *y) {        \
        const T slope = (T)args->slope, lo = (T)args->lo, hi = (T)args->hi;                    \
        switch (args->op) {                                                                    \
        case BL_UNARY_NEG: FOR_EACH_ELEMENT y[i] = -x[i]; break;                               \
        case BL_UNARY_EXP: FOR_EACH_ELEMENT y[i] = exp(x[i]); break;                           \
        case BL_UNARY_LOG: FOR_EACH_ELEMENT y[i] = log(x[i]); break;                           \
        case BL_UNARY_SQRT: FOR_EACH_ELEMENT y[i] = sqrt(x[i]); break;                         \
        case BL_UNARY_ABS: FOR_EACH_ELEMENT y[i] = fabs(x[i]); break;                          \
        case BL_UNARY_SIGN: FOR_EACH_ELEMENT y[i] = sign_##SFX(x[i]); break;                   \
        case BL_UNARY_RELU: FOR_EACH_ELEMENT y[i] = x[i] < 0 ? 0 : x[i]; break;                \
        case BL_UNARY_LEAKY_RELU: FOR_EACH_ELEMENT y[i] = x[i] > 0 ? x[i] : x[i] * slope; break; \
        case BL_UNARY_GELU: FOR_EACH_ELEMENT y[i] = x[i] * normal_cdf_##SFX(x[i]); break;      \
        case BL_UNARY_SIGMOID: FOR_EACH_ELEMENT y[i] = sigmoid_##SFX(x[i]); break;             \
        case BL_UNARY_TANH: FOR_EACH_ELEMENT y[i] = tanh(x[i]); break;                         \
        case BL_UNARY_SOFTPLUS: FOR_EACH_ELEMENT y[i] = softplus_##SFX(x[i]); break;           \
        case BL_UNARY_CLAMP: FOR_EACH_ELEMENT y[i] = clamp_##SFX(x[i], lo, hi); break;         \
        case BL_UNARY_NORMAL_CDF: FOR_EACH_ELEMENT y[i] = normal_cdf_##SFX(x[i]); break;       \
        default: break;                                                                        \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    void ref_unary_bwd_##SFX(const bl_unary_args *args, int64_t n, const T *x, const T *y, const T *dy, \
                             T *dx) {                                                          \
        const T slope = (T)args->slope, lo = (T)args->lo, hi = (T)args->hi;                    \
        switch (args->op) {                                                                    \
        case BL_UNARY_NEG: TIMES_DY((T)-1); break;                                             \
        case BL_UNARY_EXP: TIMES_DY(y[i]); break;                                              \
        case BL_UNARY_LOG: TIMES_DY(1 / x[i]); break;                                          \
        case BL_UNARY_SQRT: TIMES_DY((T)0.5 / y[i]); break;                                    \
        case BL_UNARY_ABS: TIMES_DY(sign_##SFX(x[i])); break;                                  \
        case BL_UNARY_SIGN: TIMES_DY((T)0); break;                                             \
        case BL_UNARY_RELU: TIMES_DY(x[i] > 0 ? (T)1 : (T)0); break;                           \
        case BL_UNARY_LEAKY_RELU: TIMES_DY(x[i] > 0 ? (T)1 : slope); break;                    \
        case BL_UNARY_GELU: TIMES_DY(normal_cdf_##SFX(x[i]) + x[i] * normal_pdf_##SFX(x[i])); break; \
        case BL_UNARY_SIGMOID: TIMES_DY(y[i] * (1 - y[i])); break;                             \
        case BL_UNARY_TANH: TIMES_DY(1 - y[i] * y[i]); break;                                  \
        case BL_UNARY_SOFTPLUS: TIMES_DY(sigmoid_##SFX(x[i])); break;                          \
        case BL_UNARY_CLAMP: TIMES_DY(x[i] >= lo && x[i] <= hi ? (T)1 : (T)0); break;          \
        case BL_UNARY_NORMAL_CDF: TIMES_DY(normal_pdf_##SFX(x[i])); break;                     \
        default: break;                                                                        \
        }                                                                                      \
    }

UNARY_KERNELS(float, f32)
UNARY_KERNELS(double, f64)

/* ---- reductions along a dim ----
 * The (outer, inner) results are cut into tiles of up to REDUCE_TILE neighbouring inner positions.
 * A tile walks the n rows of its slab with unit stride (the inner dim is the contiguous one), keeps
 * its running values in a small local array, and tiles are independent, so they run in parallel.
 * When inner is 1 (reducing the last dim) a tile is one contiguous row, reduced by the row helpers
 * below instead, whose sums OpenMP may reassociate into vector lanes. */

#define REDUCE_TILE 64

#define FOR_EACH_TILE(d)                                                                       \
    const int64_t tiles_per_outer = ((d).inner + REDUCE_TILE - 1) / REDUCE_TILE;               \
    _Pragma("omp parallel for if ((d).outer * (d).n * (d).inner >= PARALLEL_MIN) schedule(static)") \
    for (int64_t tile = 0; tile < (d).outer * tiles_per_outer; tile++)

/* Inside FOR_EACH_TILE: the tile's outer index o, first inner index i0, width w, and the slab of
 * x it reduces; its results go to (o, i0 .. i0 + w - 1). */
#define TILE_COORDS(T, d)                                                                      \
    const int64_t o = tile / tiles_per_outer, i0 = tile % tiles_per_outer * REDUCE_TILE;      \
    const int w = (int)((d).inner - i0 < REDUCE_TILE ? (d).inner - i0 : REDUCE_TILE);         \
    const T *slab = x + o * (d).n * (d).inner + i0

/* Whether v replaces the running extreme b: when it is more extreme, or the first NaN (a NaN then
 * stays, since every comparison with it is false), as torch.max does. */
#define TAKES_OVER(v, b, is_min) (((is_min) ? (v) < (b) : (v) > (b)) || ((v) != (v) && (b) == (b)))

#define ROW_HELPERS(T, SFX)                                                                    \
    static inline int64_t row_extreme_##SFX(const T *x, int64_t n, bool is_min) {              \
        int64_t at = 0;                                                                        \
        for (int64_t k = 1; k < n; k++)                                                        \
            if (TAKES_OVER(x[k], x[at], is_min)) at = k;                                       \
        return at;                                                                             \
    }                                                                                          \
    /* NaNs are skipped here; they still reach the result through the sum of exponentials. */  \
    static inline T row_max_##SFX(const T *x, int64_t n) {                                     \
        T m = -INFINITY;                                                                       \
        _Pragma("omp simd reduction(max : m)") for (int64_t k = 0; k < n; k++) m = x[k] > m ? x[k] : m; \
        return m;                                                                              \
    }                                                                                          \
    static inline double row_exp_sum_##SFX(const T *x, int64_t n, T shift) {                   \
        double s = 0;                                                                          \
        _Pragma("omp simd reduction(+ : s)") for (int64_t k = 0; k < n; k++) s += exp(x[k] - shift); \
        return s;                                                                              \
    }                                                                                          \
    static inline double row_sum_##SFX(const T *x, int64_t n) {                                \
        double s = 0;                                                                          \
        _Pragma("omp simd reduction(+ : s)") for (int64_t k = 0; k < n; k++) s += x[k];        \
        return s;                                                                              \
    }                                                                                          \
    static inline double row_squared_deviation_##SFX(const T *x, int64_t n, double mean) {     \
        double s = 0;                                                                          \
        _Pragma("omp simd reduction(+ : s)") for (int64_t k = 0; k < n; k++) s += (x[k] - mean) * (x[k] - mean); \
        return s;                                                                              \
    }                                                                                          \
    static inline double row_power_sum_##SFX(const T *x, int64_t n, double p) {                \
        double s = 0;                                                                          \
        if (p == 1) {                                                                          \
            _Pragma("omp simd reduction(+ : s)") for (int64_t k = 0; k < n; k++) s += fabs(x[k]); \
        } else if (p == 2) {                                                                   \
            _Pragma("omp simd reduction(+ : s)") for (int64_t k = 0; k < n; k++) s += (double)x[k] * x[k]; \
        } else {                                                                               \
            for (int64_t k = 0; k < n; k++) s += pow(fabs((double)x[k]), p);                   \
        }                                                                                      \
        return s;                                                                              \
    }

ROW_HELPERS(float, f32)
ROW_HELPERS(double, f64)

/* The p-norm from the sum of |x|^p. */
static double norm_from_power_sum(double s, double p) { return p == 1 ? s : p == 2 ? sqrt(s) : pow(s, 1 / p); }

/* An infinite max (all -inf, or some +inf) cannot be subtracted: shifting by 0 instead gives -inf or
 * +inf exactly, as torch does. */
#define FINITE_SHIFT(m) (isinf(m) ? 0 : (m))

#define REDUCE_KERNELS(T, SFX)                                                                 \
    void ref_extreme_dim_##SFX(bl_reduce_dims d, bool is_min, const T *x, T *values, int64_t *index) { \
        FOR_EACH_TILE(d) {                                                                     \
            TILE_COORDS(T, d);                                                                 \
            int64_t at[REDUCE_TILE] = {0};                                                     \
            if (d.inner == 1) {                                                                \
                at[0] = row_extreme_##SFX(slab, d.n, is_min);                                  \
            } else {                                                                           \
                T best[REDUCE_TILE];                                                           \
                for (int i = 0; i < w; i++) best[i] = slab[i];                                 \
                for (int64_t k = 1; k < d.n; k++) {                                            \
                    const T *row = slab + k * d.inner;                                         \
                    _Pragma("omp simd") for (int i = 0; i < w; i++) {                          \
                        const bool take = TAKES_OVER(row[i], best[i], is_min);                 \
                        best[i] = take ? row[i] : best[i];                                     \
                        at[i] = take ? k : at[i];                                              \
                    }                                                                          \
                }                                                                              \
            }                                                                                  \
            for (int i = 0; i < w; i++) {                                                      \
                index[o * d.inner + i0 + i] = at[i];                                           \
                if (values) values[o * d.inner + i0 + i] = slab[at[i] * d.inner + i];          \
            }                                                                                  \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    void ref_index_mask_dim_##SFX(bl_reduce_dims d, const int64_t *index, T *mask) {           \
        _Pragma("omp parallel for if (d.outer * d.n * d.inner >= PARALLEL_MIN) schedule(static)") \
        for (int64_t row = 0; row < d.outer * d.n; row++) {                                    \
            const int64_t o = row / d.n, k = row % d.n;                                        \
            for (int64_t i = 0; i < d.inner; i++) mask[row * d.inner + i] = index[o * d.inner + i] == k; \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    void ref_logsumexp_dim_##SFX(bl_reduce_dims d, const T *x, T *y) {                         \
        FOR_EACH_TILE(d) {                                                                     \
            TILE_COORDS(T, d);                                                                 \
            T *result = y + o * d.inner + i0;                                                  \
            if (d.inner == 1) {                                                                \
                const T shift = FINITE_SHIFT(row_max_##SFX(slab, d.n));                        \
                result[0] = (T)(shift + log(row_exp_sum_##SFX(slab, d.n, shift)));             \
                continue;                                                                      \
            }                                                                                  \
            T shift[REDUCE_TILE];                                                              \
            double total[REDUCE_TILE] = {0};                                                   \
            for (int i = 0; i < w; i++) shift[i] = -INFINITY;                                  \
            for (int64_t k = 0; k < d.n; k++)                                                  \
                for (int i = 0; i < w; i++) {                                                  \
                    const T v = slab[k * d.inner + i];                                         \
                    shift[i] = v > shift[i] ? v : shift[i];                                    \
                }                                                                              \
            for (int i = 0; i < w; i++) shift[i] = FINITE_SHIFT(shift[i]);                     \
            for (int64_t k = 0; k < d.n; k++)                                                  \
                for (int i = 0; i < w; i++) total[i] += exp(slab[k * d.inner + i] - shift[i]); \
            for (int i = 0; i < w; i++) result[i] = (T)(shift[i] + log(total[i]));             \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    void ref_logsumexp_dim_bwd_##SFX(bl_reduce_dims d, const T *dy, const T *x, const T *y, T *dx) { \
        _Pragma("omp parallel for if (d.outer * d.n * d.inner >= PARALLEL_MIN) schedule(static)") \
        for (int64_t row = 0; row < d.outer * d.n; row++) {                                    \
            const T *g = dy + row / d.n * d.inner, *lse = y + row / d.n * d.inner;             \
            for (int64_t i = 0; i < d.inner; i++)                                              \
                dx[row * d.inner + i] = g[i] * exp(x[row * d.inner + i] - lse[i]);             \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* Two passes, the second over deviations from the mean: no cancellation, unlike             \
     * E[x^2] - E[x]^2. */                                                                     \
    void ref_var_dim_##SFX(bl_reduce_dims d, int ddof, const T *x, T *y) {                     \
        const double dof = (double)(d.n - ddof);                                               \
        FOR_EACH_TILE(d) {                                                                     \
            TILE_COORDS(T, d);                                                                 \
            T *result = y + o * d.inner + i0;                                                  \
            if (d.inner == 1) {                                                                \
                const double mean = row_sum_##SFX(slab, d.n) / (double)d.n;                    \
                result[0] = (T)(dof > 0 ? row_squared_deviation_##SFX(slab, d.n, mean) / dof : NAN); \
                continue;                                                                      \
            }                                                                                  \
            double mean[REDUCE_TILE] = {0}, squares[REDUCE_TILE] = {0};                        \
            for (int64_t k = 0; k < d.n; k++)                                                  \
                for (int i = 0; i < w; i++) mean[i] += slab[k * d.inner + i];                  \
            for (int i = 0; i < w; i++) mean[i] /= (double)d.n;                                \
            for (int64_t k = 0; k < d.n; k++)                                                  \
                for (int i = 0; i < w; i++) {                                                  \
                    const double dev = slab[k * d.inner + i] - mean[i];                        \
                    squares[i] += dev * dev;                                                   \
                }                                                                              \
            for (int i = 0; i < w; i++) result[i] = (T)(dof > 0 ? squares[i] / dof : NAN);     \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    void ref_norm_dim_##SFX(bl_reduce_dims d, double p, const T *x, T *y) {                    \
        FOR_EACH_TILE(d) {                                                                     \
            TILE_COORDS(T, d);                                                                 \
            T *result = y + o * d.inner + i0;                                                  \
            if (d.inner == 1) {                                                                \
                result[0] = (T)norm_from_power_sum(row_power_sum_##SFX(slab, d.n, p), p);      \
                continue;                                                                      \
            }                                                                                  \
            double total[REDUCE_TILE] = {0};                                                   \
            for (int64_t k = 0; k < d.n; k++) {                                                \
                const T *row = slab + k * d.inner;                                             \
                if (p == 1) {                                                                  \
                    for (int i = 0; i < w; i++) total[i] += fabs(row[i]);                      \
                } else if (p == 2) {                                                           \
                    for (int i = 0; i < w; i++) total[i] += (double)row[i] * row[i];           \
                } else {                                                                       \
                    for (int i = 0; i < w; i++) total[i] += pow(fabs((double)row[i]), p);      \
                }                                                                              \
            }                                                                                  \
            for (int i = 0; i < w; i++) result[i] = (T)norm_from_power_sum(total[i], p);       \
        }                                                                                      \
    }

REDUCE_KERNELS(float, f32)
REDUCE_KERNELS(double, f64)
