/* Gradient clipping by the global norm of all gradients in a parameter store, with the semantics of
 * torch.nn.utils.clip_grad_norm_ (see include/ballast/optim.h). The norm is accumulated in double
 * over the whole gradient block in one parallel pass; padding between entries holds zeros and
 * changes neither the norm nor the result. */
#include "ballast/optim.h"

#include "core/internal.h"
#include "update_kernels.h"

#include <math.h>

#define CHUNK 16384
#define PARALLEL_MIN 32768

static double global_norm(const float *g, int64_t n, double p) {
    int64_t n_chunks = (n + CHUNK - 1) / CHUNK;
    if (isinf(p)) {
        double largest = 0;
        int saw_nan = 0;
#pragma omp parallel for reduction(max : largest) reduction(| : saw_nan) if (n >= PARALLEL_MIN)
        for (int64_t k = 0; k < n_chunks; k++) {
            int64_t len = n - k * CHUNK < CHUNK ? n - k * CHUNK : CHUNK;
            double r = cpu_abs_pow_sum(len, g + k * CHUNK, p);
            if (isnan(r))
                saw_nan = 1;
            else if (r > largest)
                largest = r;
        }
        return saw_nan ? NAN : largest;
    }
    double acc = 0;
#pragma omp parallel for reduction(+ : acc) if (n >= PARALLEL_MIN)
    for (int64_t k = 0; k < n_chunks; k++) {
        int64_t len = n - k * CHUNK < CHUNK ? n - k * CHUNK : CHUNK;
        acc += cpu_abs_pow_sum(len, g + k * CHUNK, p);
    }
    return p == 1 ? acc : p == 2 ? sqrt(acc) : pow(acc, 1.0 / p);
}

double bl_clip_grad_norm(bl_params *ps, double max_norm, double norm_type) {
    BL_CHECK_OR(NAN, ps && ps->finalized, "clip_grad_norm: the parameter store must be finalized");
    BL_CHECK_OR(NAN, norm_type > 0, "clip_grad_norm: norm_type must be positive or INFINITY, got %g", norm_type);
    BL_CHECK_OR(NAN, max_norm >= 0, "clip_grad_norm: max_norm must be non-negative, got %g", max_norm);
    int64_t n = (int64_t)ps->numel;
    float *g = ps->grad;
    double total = global_norm(g, n, norm_type);
    double coef = max_norm / (total + 1e-6);
    /* torch multiplies by min(coef, 1) unconditionally: a NaN coefficient poisons the gradients */
    if (coef < 1 || isnan(coef)) {
        const float scale = (float)coef;
#pragma omp parallel for simd if (n >= PARALLEL_MIN) schedule(static)
        for (int64_t i = 0; i < n; i++) g[i] *= scale;
    }
    return total;
}
