/* Weight initializers (torch.nn.init's kaiming and truncated-normal families) and the activation
 * switch shared by the modules. Initializers write in place and are never recorded by autograd:
 * they run once, on parameters, before the store is finalized. */
#include "nn/nn_internal.h"

#include <math.h>

/* Writes one value per element in logical order; every draw comes from `next`. */
typedef double (*draw_fn)(bl_rng *rng, const void *args);

static int fill_with(bl_tensor *t, bl_rng *rng, draw_fn next, const void *args, const char *who) {
    BL_CHECK_RC(t && bl_dtype_is_float(t->dtype), "%s: needs an F32 or F64 tensor", who);
    int64_t n = bl_numel(t);
    if (bl_is_contiguous(t) && t->dtype == BL_F32) {
        float *p = t->data;
        for (int64_t i = 0; i < n; i++) p[i] = (float)next(rng, args);
    } else if (bl_is_contiguous(t)) {
        double *p = t->data;
        for (int64_t i = 0; i < n; i++) p[i] = next(rng, args);
    } else {
        for (int64_t i = 0; i < n; i++) bl_set_flat(t, i, next(rng, args));
    }
    return BL_OK;
}

int64_t bl_init_fan(const bl_tensor *w, bl_fan_mode mode) {
    if (!w || w->ndim < 1) return 0;
    if (w->ndim == 1) return w->shape[0];
    int64_t receptive = 1;
    for (int d = 2; d < w->ndim; d++) receptive *= w->shape[d];
    return (mode == BL_FAN_IN ? w->shape[1] : w->shape[0]) * receptive;
}

static double draw_uniform(bl_rng *rng, const void *args) {
    double bound = *(const double *)args;
    return bound * (2.0 * bl_rng_uniform(rng) - 1.0);
}

static double draw_normal(bl_rng *rng, const void *args) { return *(const double *)args * bl_rng_normal(rng); }

typedef struct {
    double mean, std, lo, hi;
} trunc_args;

static double draw_trunc_normal(bl_rng *rng, const void *args) {
    const trunc_args *a = args;
    /* Rejection: for the usual bounds (+-2 std or wider) fewer than 5% of draws are redrawn. */
    for (;;) {
        double v = a->mean + a->std * bl_rng_normal(rng);
        if (v >= a->lo && v <= a->hi) return v;
    }
}

int bl_init_kaiming_uniform_(bl_tensor *w, bl_rng *rng, double a) {
    BL_CHECK_RC(w && w->ndim >= 2, "kaiming_uniform_: needs a weight with at least 2 dims, got %s",
                w ? bl__shape(w) : "NULL");
    int64_t fan = bl_init_fan(w, BL_FAN_IN);
    double bound = fan > 0 ? sqrt(6.0 / ((1.0 + a * a) * (double)fan)) : 0.0;
    return fill_with(w, rng, draw_uniform, &bound, "kaiming_uniform_");
}

int bl_init_kaiming_normal_(bl_tensor *w, bl_rng *rng, bl_fan_mode mode) {
    BL_CHECK_RC(w && w->ndim >= 2, "kaiming_normal_: needs a weight with at least 2 dims, got %s",
                w ? bl__shape(w) : "NULL");
    int64_t fan = bl_init_fan(w, mode);
    double std = fan > 0 ? sqrt(2.0 / (double)fan) : 0.0;
    return fill_with(w, rng, draw_normal, &std, "kaiming_normal_");
}

int bl_init_trunc_normal_(bl_tensor *t, bl_rng *rng, double mean, double std, double lo, double hi) {
    BL_CHECK_RC(std >= 0 && lo < hi && mean + 4 * std > lo && mean - 4 * std < hi,
                "trunc_normal_: [%g, %g] leaves almost no mass of N(%g, %g^2)", lo, hi, mean, std);
    trunc_args a = {mean, std, lo, hi};
    return fill_with(t, rng, draw_trunc_normal, &a, "trunc_normal_");
}

/* The uniform(+-1/sqrt(fan_in)) bias of torch's Linear and Conv, fan_in taken from the weight. */
int bl__init_default_bias(bl_tensor *bias, const bl_tensor *weight, bl_rng *rng) {
    int64_t fan = bl_init_fan(weight, BL_FAN_IN);
    double bound = fan > 0 ? 1.0 / sqrt((double)fan) : 0.0;
    return fill_with(bias, rng, draw_uniform, &bound, "bias init");
}

bl_tensor *bl_activate(bl_tensor *x, bl_activation act) {
    switch (act) {
    case BL_ACT_IDENTITY: return x;
    case BL_ACT_RELU: return bl_relu(x);
    case BL_ACT_GELU: return bl_gelu(x);
    case BL_ACT_TANH: return bl_tanh(x);
    case BL_ACT_SIGMOID: return bl_sigmoid(x);
    }
    bl__error_at(__FILE__, __LINE__, "bl_activate: unknown activation %d", (int)act);
    return NULL;
}
