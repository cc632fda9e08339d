/* Optimizer update kernels (see update_kernels.h). Scalars arrive precomputed the way PyTorch
 * computes them (in double, then rounded to float), and each element is updated in float with
 * PyTorch's order of operations, so trajectories match torch's to float rounding. */
#include "update_kernels.h"

#include <math.h>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

void cpu_sgd_update(int64_t n, float *p, const float *g, float *buf, const sgd_update_args *a) {
    const float lr = a->lr, wd = a->weight_decay, mom = a->momentum, keep = a->one_minus_dampening;
    if (!buf) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) p[i] -= lr * (g[i] + wd * p[i]);
        return;
    }
    if (a->first_step) {
#pragma omp simd
        for (int64_t i = 0; i < n; i++) {
            float d = g[i] + wd * p[i];
            buf[i] = d;
            p[i] -= lr * (a->nesterov ? d + mom * d : d);
        }
        return;
    }
#pragma omp simd
    for (int64_t i = 0; i < n; i++) {
        float d = g[i] + wd * p[i];
        float b = mom * buf[i] + keep * d;
        buf[i] = b;
        p[i] -= lr * (a->nesterov ? d + mom * b : b);
    }
}

void cpu_adam_update(int64_t n, float *p, const float *g, float *m, float *v, const adam_update_args *a) {
    const float wd = a->weight_decay, shrink = a->decoupled_factor, c1 = a->one_minus_beta1;
    const float b2 = a->beta2, c2 = a->one_minus_beta2, eps = a->eps, step_size = a->step_size;
    const float bc2_sqrt = a->bias_correction2_sqrt;
    int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
    /* Written out because sqrtf may set errno, which keeps the compiler from vectorising it. */
    const __m256 v_shrink = _mm256_set1_ps(shrink), v_wd = _mm256_set1_ps(wd), v_c1 = _mm256_set1_ps(c1);
    const __m256 v_b2 = _mm256_set1_ps(b2), v_c2 = _mm256_set1_ps(c2), v_eps = _mm256_set1_ps(eps);
    const __m256 v_step = _mm256_set1_ps(step_size), v_bc2 = _mm256_set1_ps(bc2_sqrt);
    for (; i + 8 <= n; i += 8) {
        __m256 w = _mm256_mul_ps(_mm256_loadu_ps(p + i), v_shrink);
        __m256 d = _mm256_fmadd_ps(v_wd, w, _mm256_loadu_ps(g + i));
        __m256 mo = _mm256_loadu_ps(m + i);
        __m256 mi = _mm256_fmadd_ps(v_c1, _mm256_sub_ps(d, mo), mo);
        __m256 vi = _mm256_fmadd_ps(v_c2, _mm256_mul_ps(d, d), _mm256_mul_ps(v_b2, _mm256_loadu_ps(v + i)));
        __m256 denom = _mm256_add_ps(_mm256_div_ps(_mm256_sqrt_ps(vi), v_bc2), v_eps);
        _mm256_storeu_ps(m + i, mi);
        _mm256_storeu_ps(v + i, vi);
        _mm256_storeu_ps(p + i, _mm256_fnmadd_ps(v_step, _mm256_div_ps(mi, denom), w));
    }
#endif
    for (; i < n; i++) {
        float w = p[i] * shrink;
        float d = g[i] + wd * w;
        /* torch updates exp_avg with lerp: m + (1 - beta1) * (g - m) */
        float mi = m[i] + c1 * (d - m[i]);
        float vi = b2 * v[i] + c2 * (d * d);
        m[i] = mi;
        v[i] = vi;
        p[i] = w - step_size * (mi / (sqrtf(vi) / bc2_sqrt + eps));
    }
}

void cpu_ema_update(int64_t n, float *ema, const float *w, float decay, float one_minus_decay) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) ema[i] = decay * ema[i] + one_minus_decay * w[i];
}

double cpu_abs_pow_sum(int64_t n, const float *g, double p) {
    double acc = 0;
    if (isinf(p)) {
        float mx = 0;
        for (int64_t i = 0; i < n; i++) {
            float x = fabsf(g[i]);
            if (isnan(x)) return NAN; /* as torch's max, a NaN gradient makes the norm NaN */
            if (x > mx) mx = x;
        }
        return mx;
    }
    if (p == 2) {
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < n; i++) acc += (double)g[i] * g[i];
    } else if (p == 1) {
#pragma omp simd reduction(+ : acc)
        for (int64_t i = 0; i < n; i++) acc += fabs((double)g[i]);
    } else {
        for (int64_t i = 0; i < n; i++) acc += pow(fabs((double)g[i]), p);
    }
    return acc;
}
