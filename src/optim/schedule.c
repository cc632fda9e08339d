/* Learning-rate schedules as closed-form functions of time (see include/ballast/optim.h): no
 * state, so resuming a run at epoch e needs nothing but e, and per-iteration schedules are the
 * same functions evaluated at fractional epochs. */
#include "ballast/optim.h"

#include "core/internal.h"

#include <math.h>

bl_schedule bl_schedule_constant(double base_lr) {
    return (bl_schedule){.kind = BL_SCHED_CONSTANT, .base_lr = base_lr, .warmup_start = 1.0};
}

bl_schedule bl_schedule_multistep(double base_lr, int n, const double *milestones, double gamma) {
    bl_schedule s = {.kind = BL_SCHED_MULTISTEP, .base_lr = base_lr, .gamma = gamma, .warmup_start = 1.0};
    /* Out-of-range counts are kept and reported by bl_schedule_lr. */
    s.n_milestones = n;
    for (int i = 0; i < n && i < BL_SCHED_MAX_MILESTONES; i++) s.milestones[i] = milestones[i];
    return s;
}

bl_schedule bl_schedule_cosine(double base_lr, double t_max, double eta_min) {
    return (bl_schedule){
        .kind = BL_SCHED_COSINE, .base_lr = base_lr, .t_max = t_max, .eta_min = eta_min, .warmup_start = 1.0};
}

bl_schedule bl_schedule_with_warmup(bl_schedule s, double epochs, double start_factor) {
    s.warmup_epochs = epochs;
    s.warmup_start = start_factor;
    return s;
}

static int validate(const bl_schedule *s) {
    BL_CHECK_RC(s->base_lr >= 0 && isfinite(s->base_lr), "schedule: invalid base learning rate %g", s->base_lr);
    BL_CHECK_RC(s->warmup_epochs >= 0 && isfinite(s->warmup_epochs), "schedule: invalid warmup length %g",
                s->warmup_epochs);
    BL_CHECK_RC(s->warmup_start >= 0 && s->warmup_start <= 1, "schedule: warmup start factor %g outside [0, 1]",
                s->warmup_start);
    switch (s->kind) {
    case BL_SCHED_CONSTANT: return BL_OK;
    case BL_SCHED_MULTISTEP:
        BL_CHECK_RC(s->n_milestones >= 0 && s->n_milestones <= BL_SCHED_MAX_MILESTONES,
                    "schedule: %d milestones (at most %d)", s->n_milestones, BL_SCHED_MAX_MILESTONES);
        for (int i = 1; i < s->n_milestones; i++)
            BL_CHECK_RC(s->milestones[i] > s->milestones[i - 1], "schedule: milestones must increase (%g then %g)",
                        s->milestones[i - 1], s->milestones[i]);
        BL_CHECK_RC(s->gamma >= 0 && isfinite(s->gamma), "schedule: invalid gamma %g", s->gamma);
        return BL_OK;
    case BL_SCHED_COSINE:
        BL_CHECK_RC(s->t_max > 0 && isfinite(s->t_max), "schedule: cosine t_max must be positive, got %g", s->t_max);
        BL_CHECK_RC(s->eta_min >= 0 && isfinite(s->eta_min), "schedule: invalid eta_min %g", s->eta_min);
        return BL_OK;
    }
    BL_CHECK_RC(false, "schedule: unknown kind %d", (int)s->kind);
}

double bl_schedule_lr(const bl_schedule *s, double t) {
    BL_CHECK_OR(NAN, s, "bl_schedule_lr: NULL schedule");
    if (validate(s) != BL_OK) return NAN;
    BL_CHECK_OR(NAN, t >= 0 && isfinite(t), "schedule: invalid time %g", t);
    double lr = s->base_lr;
    if (s->kind == BL_SCHED_MULTISTEP) {
        for (int i = 0; i < s->n_milestones; i++)
            if (t >= s->milestones[i]) lr *= s->gamma;
    } else if (s->kind == BL_SCHED_COSINE) {
        /* Held at eta_min after t_max, where torch's formula would start climbing again. */
        double tc = t < s->t_max ? t : s->t_max;
        lr = s->eta_min + (s->base_lr - s->eta_min) * (1 + cos(M_PI * tc / s->t_max)) / 2;
    }
    if (t < s->warmup_epochs) lr *= s->warmup_start + (1 - s->warmup_start) * t / s->warmup_epochs;
    return lr;
}
