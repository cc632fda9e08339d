/* Optimizer update kernels: the per-element arithmetic of one optimizer step, EMA and gradient
 * clipping over contiguous F32 runs. Plain functions over pointers, no allocation, no threading
 * (the callers split the parameter block into chunks and run the chunks in parallel). */
#ifndef BALLAST_OPTIM_UPDATE_KERNELS_H
#define BALLAST_OPTIM_UPDATE_KERNELS_H

#include <stdbool.h>
#include <stdint.h>

typedef struct {
    float lr, weight_decay, momentum;
    float one_minus_dampening; /* computed in double, as torch passes it to its float kernels */
    bool nesterov;
    bool first_step; /* the momentum buffer starts as a copy of the (decayed) gradient */
} sgd_update_args;

/* p (n) updated in place, g (n) read, buf (n) = new momentum buffer (NULL when momentum == 0). */
void cpu_sgd_update(int64_t n, float *p, const float *g, float *buf, const sgd_update_args *a);

typedef struct {
    float weight_decay;          /* coupled (Adam): added to the gradient */
    float decoupled_factor;      /* AdamW: p *= this (1 - lr*wd) before the update; 1 for Adam */
    float one_minus_beta1, beta2, one_minus_beta2, eps; /* complements computed in double */
    float step_size;             /* lr / (1 - beta1^t) */
    float bias_correction2_sqrt; /* sqrt(1 - beta2^t) */
} adam_update_args;

/* p (n) updated in place, g (n) read, m (n) and v (n) updated in place (exp_avg, exp_avg_sq). */
void cpu_adam_update(int64_t n, float *p, const float *g, float *m, float *v, const adam_update_args *a);

/* ema (n) = decay * ema + one_minus_decay * w (n); the complement comes from the caller, computed
 * in double, because 1 - 0.9999f in float loses a quarter of its digits. */
void cpu_ema_update(int64_t n, float *ema, const float *w, float decay, float one_minus_decay);

/* Returns sum |g|^p over g (n) in double (p == 2 and p == 1 take fast paths), or max |g| when
 * p is infinite. */
double cpu_abs_pow_sum(int64_t n, const float *g, double p);

#endif
