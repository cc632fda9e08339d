/* ballast optimizers, learning-rate schedules, gradient clipping and weight EMA.
 *
 * Everything here works on a finalized bl_params store: the optimizer keeps its state (momentum
 * buffers, Adam moments) in blocks with exactly the layout of the store's data block, so a step is
 * one parallel pass over flat arrays. The update rules are PyTorch's, line for line, so a recipe
 * ported from a paper's PyTorch code trains the same way:
 *  - SGD:   g = grad + wd*p;  buf = g on the first step, else momentum*buf + (1-dampening)*g;
 *           g = nesterov ? g + momentum*buf : buf;  p -= lr*g.
 *  - Adam:  g = grad + wd*p;  m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;
 *           p -= lr/(1-b1^t) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
 *  - AdamW: as Adam without wd in g, after p *= 1 - lr*wd (decoupled weight decay).
 * Entries whose tensor has requires_grad false (frozen, as in a second training stage that only
 * retrains a classifier) are skipped, as PyTorch skips parameters without a gradient. */
#ifndef BALLAST_OPTIM_H
#define BALLAST_OPTIM_H

#include "ballast/params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- optimizers -------------------------------------------------------------------------- */

typedef enum { BL_SGD, BL_ADAM, BL_ADAMW } bl_optim_kind;

typedef struct {
    bl_optim_kind kind;
    double lr;
    double weight_decay;
    /* When set, entries flagged no_weight_decay (biases, norm scales) get no weight decay;
     * otherwise every entry is decayed, as PyTorch does with a single parameter group. */
    bool skip_no_weight_decay;
    double momentum, dampening; /* SGD */
    bool nesterov;              /* SGD: needs momentum > 0 and dampening == 0 */
    double beta1, beta2, eps;   /* Adam, AdamW */
} bl_optim_config;

/* Configs with PyTorch's defaults for everything not passed: SGD dampening 0, no nesterov;
 * Adam/AdamW betas (0.9, 0.999), eps 1e-8. skip_no_weight_decay starts false. */
bl_optim_config bl_sgd_config(double lr, double momentum, double weight_decay);
bl_optim_config bl_adam_config(double lr, double weight_decay);
bl_optim_config bl_adamw_config(double lr, double weight_decay);

typedef struct bl_optim_work bl_optim_work;

typedef struct {
    bl_optim_config cfg;   /* hyper-parameters may change between steps (cfg.lr, for schedules);
                            * kind, and SGD momentum being zero or not, are fixed by init */
    bl_params *params;
    float *state1;         /* SGD momentum buffers or Adam exp_avg; layout of params->data */
    float *state2;         /* Adam exp_avg_sq; NULL for SGD */
    int64_t step;          /* steps taken */
    int64_t *entry_steps;  /* per store entry: steps that updated it (PyTorch's per-parameter
                            * "step", which differs from `step` for entries frozen a while) */
    bl_optim_work *work;   /* private: how a step is split into parallel chunks */
} bl_optimizer;

/* Validates cfg (ranges as PyTorch checks them) and allocates zeroed state for a finalized store. */
int bl_optimizer_init(bl_optimizer *opt, bl_params *ps, bl_optim_config cfg);
void bl_optimizer_free(bl_optimizer *opt);
/* One update of every trainable, unfrozen parameter from its gradient, with learning rate cfg.lr. */
int bl_optimizer_step(bl_optimizer *opt);
/* Saves/restores the state (step count and per-parameter buffers, named "<param>.<buffer>") as a
 * safetensors file, for resuming training. Load needs an optimizer of the same kind over a store of
 * the same layout. */
int bl_optimizer_save(const bl_optimizer *opt, const char *path);
int bl_optimizer_load(bl_optimizer *opt, const char *path);

/* ---- learning-rate schedules --------------------------------------------------------------- */

typedef enum { BL_SCHED_CONSTANT, BL_SCHED_MULTISTEP, BL_SCHED_COSINE } bl_sched_kind;

#define BL_SCHED_MAX_MILESTONES 16

/* The learning rate at time t (epochs, or fractional epochs for per-iteration updates), as
 *   lr(t) = base_lr * main(t) * warmup(t)
 * with main(t) = 1 (constant), gamma^(number of milestones <= t) (multistep, torch MultiStepLR),
 * or eta_min/base_lr + (1 - eta_min/base_lr) * (1 + cos(pi * min(t, t_max) / t_max)) / 2 (cosine,
 * torch CosineAnnealingLR's closed form), and warmup(t) = start + (1 - start) * t / warmup_epochs
 * for t < warmup_epochs, else 1 (torch LinearLR). Milestones and t_max count from t = 0, warmup
 * included, so "decay at epochs 160 and 180 after a 5-epoch warmup" is written as it is said. */
typedef struct {
    bl_sched_kind kind;
    double base_lr;
    int n_milestones;
    double milestones[BL_SCHED_MAX_MILESTONES]; /* increasing */
    double gamma;
    double t_max, eta_min;                       /* cosine */
    double warmup_epochs;                        /* 0: no warmup */
    double warmup_start;                         /* factor at t = 0, in [0, 1] */
} bl_schedule;

bl_schedule bl_schedule_constant(double base_lr);
/* `n` milestones (at most BL_SCHED_MAX_MILESTONES, increasing). */
bl_schedule bl_schedule_multistep(double base_lr, int n, const double *milestones, double gamma);
bl_schedule bl_schedule_cosine(double base_lr, double t_max, double eta_min);
/* Adds a linear warmup from start_factor * lr over `epochs` to any schedule. */
bl_schedule bl_schedule_with_warmup(bl_schedule s, double epochs, double start_factor);
/* The learning rate at time t; NAN (and an error) when the schedule is invalid. */
double bl_schedule_lr(const bl_schedule *s, double t);

/* ---- gradient clipping --------------------------------------------------------------------- */

/* Scales every gradient in the store by min(1, max_norm / (total + 1e-6)), where total is the
 * norm_type-norm (2, any p > 0, or INFINITY for max |g|) of all gradients taken together; returns
 * total, as torch.nn.utils.clip_grad_norm_. A non-finite total is returned as is (and, as in
 * PyTorch, the gradients become non-finite): callers may skip the step. NAN on invalid arguments. */
double bl_clip_grad_norm(bl_params *ps, double max_norm, double norm_type);

/* ---- weight EMA (mean teacher, model averaging) -------------------------------------------- */

/* Makes `ema` a finalized copy of `model`: same names, shapes, dtypes, flags and values. */
int bl_ema_init(bl_params *ema, const bl_params *model);
/* ema = decay * ema + (1 - decay) * model for parameters; buffers (BatchNorm statistics) are
 * copied. Both stores must have the same layout (bl_ema_init, or the same model built twice). */
int bl_ema_update(bl_params *ema, const bl_params *model, double decay);
/* Exchanges all values (parameters and buffers) of two stores of the same layout: swap, evaluate
 * the model with the averaged weights, swap back. */
int bl_ema_swap(bl_params *ema, bl_params *model);

#ifdef __cplusplus
}
#endif
#endif
