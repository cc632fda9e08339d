/* Fast F32 transcendental unary kernels (see unary.h). Each function is one loop over 16-lane
 * vectors from vec_math.h, with the ragged end loaded and stored partially (padding lanes are
 * computed and dropped). Elements are independent, so the loops split into contiguous slices, one
 * per thread, once there is enough work to pay for waking the threads. */
#include "backend/cpu/unary.h"

#include "backend/cpu/vec_math.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* Below this many elements a kernel stays on the calling thread. */
#define PARALLEL_MIN 32768

/* ---- one slice --------------------------------------------------------------------------------- */

/* y (=) f(x) for f one of the vectorized forward functions. */
static inline v16f forward_lanes(bl_unary_op op, v16f x) {
    switch (op) {
    case BL_UNARY_EXP: return v16_exp(x);
    /* exp only sees -|x|, so neither branch overflows: 1 / (1 + e) for x >= 0, e / (1 + e) below */
    case BL_UNARY_SIGMOID: {
        v16f e = v16_exp(-v16_abs(x)), r = 1.0f / (1.0f + e);
        return v16_select(x >= 0, r, e * r);
    }
    case BL_UNARY_TANH: return v16_tanh(x);
    case BL_UNARY_GELU: return x * v16_normal_cdf(x, NULL);
    default: return v16_normal_cdf(x, NULL); /* BL_UNARY_NORMAL_CDF */
    }
}

static void forward_slice(bl_unary_op op, int64_t n, const float *x, float *y) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) v16_store(y + i, forward_lanes(op, v16_load(x + i)));
    if (i < n) v16_store_partial(y + i, n - i, forward_lanes(op, v16_load_partial(x + i, n - i, 0.0f)));
}

/* f'(x) for GELU (Phi + x phi) and the normal CDF (phi). */
static inline v16f derivative_lanes(bl_unary_op op, v16f x) {
    v16f density, cdf = v16_normal_cdf(x, &density);
    return op == BL_UNARY_GELU ? cdf + x * density : density;
}

static void backward_slice(bl_unary_op op, int64_t n, const float *x, const float *dy, float *dx) {
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        v16f d = derivative_lanes(op, v16_load(x + i));
        v16_store(dx + i, dy ? d * v16_load(dy + i) : d);
    }
    if (i < n) {
        v16f d = derivative_lanes(op, v16_load_partial(x + i, n - i, 0.0f));
        v16_store_partial(dx + i, n - i, dy ? d * v16_load_partial(dy + i, n - i, 0.0f) : d);
    }
}

/* ---- threads ------------------------------------------------------------------------------------ */

/* Runs slice(first, count) over [0, n) in one contiguous piece per thread, each a multiple of 16
 * elements but the last. */
#define FOR_SLICES(n, slice)                                                                           \
    do {                                                                                               \
        int64_t n_ = (n);                                                                              \
        _Pragma("omp parallel if (n_ >= PARALLEL_MIN)") {                                              \
            int threads_ = 1, me_ = 0;                                                                 \
            SLICE_THREAD_IDS(threads_, me_);                                                           \
            int64_t per_ = ((n_ + 15) / 16 + threads_ - 1) / threads_ * 16;                            \
            int64_t first_ = per_ * me_, count_ = n_ - first_ < per_ ? n_ - first_ : per_;             \
            if (count_ > 0) slice(first_, count_);                                                     \
        }                                                                                              \
    } while (0)

#ifdef _OPENMP
#define SLICE_THREAD_IDS(threads, me) ((threads) = omp_get_num_threads(), (me) = omp_get_thread_num())
#else
#define SLICE_THREAD_IDS(threads, me) ((void)0)
#endif

static bool vectorized_forward(bl_unary_op op) {
    return op == BL_UNARY_EXP || op == BL_UNARY_SIGMOID || op == BL_UNARY_TANH || op == BL_UNARY_GELU ||
           op == BL_UNARY_NORMAL_CDF;
}

void cpu_unary_fwd_f32(const bl_unary_args *args, int64_t n, const float *x, float *y) {
    if (!vectorized_forward(args->op)) {
        ref_unary_fwd_f32(args, n, x, y);
        return;
    }
#define FORWARD(first, count) forward_slice(args->op, count, x + first, y + first)
    FOR_SLICES(n, FORWARD);
#undef FORWARD
}

void cpu_unary_bwd_f32(const bl_unary_args *args, int64_t n, const float *x, const float *y, const float *dy,
                       float *dx) {
    if (args->op != BL_UNARY_GELU && args->op != BL_UNARY_NORMAL_CDF) {
        ref_unary_bwd_f32(args, n, x, y, dy, dx);
        return;
    }
#define BACKWARD(first, count) backward_slice(args->op, count, x + first, dy ? dy + first : NULL, dx + first)
    FOR_SLICES(n, BACKWARD);
#undef BACKWARD
}

void cpu_gelu_f32(int64_t n, const float *x, float *y) { forward_slice(BL_UNARY_GELU, n, x, y); }

void cpu_gelu_with_derivative_f32(int64_t n, const float *x, float *y, float *dy_dx) {
    int64_t i = 0;
    v16f density;
    for (; i + 16 <= n; i += 16) {
        v16f v = v16_load(x + i), cdf = v16_normal_cdf(v, &density);
        v16_store(y + i, v * cdf);
        v16_store(dy_dx + i, cdf + v * density);
    }
    if (i < n) {
        v16f v = v16_load_partial(x + i, n - i, 0.0f), cdf = v16_normal_cdf(v, &density);
        v16_store_partial(y + i, n - i, v * cdf);
        v16_store_partial(dy_dx + i, n - i, cdf + v * density);
    }
}
