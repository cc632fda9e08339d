/* Exponential moving average of a model's weights (mean teacher, EMA evaluation), kept in a second
 * parameter store with the same layout, so an update is one pass over the two parameter blocks and
 * the averaged model can be saved, loaded or swapped in like any other store. */
#include "ballast/optim.h"

#include "core/internal.h"
#include "update_kernels.h"

#include <stdlib.h>
#include <string.h>

#define CHUNK 16384
#define PARALLEL_MIN 32768

/* Same entries in the same order with the same names, kinds, dtypes and shapes: then the packed
 * blocks line up element for element. */
static int check_same_layout(const char *op, const bl_params *a, const bl_params *b) {
    BL_CHECK_RC(a && b, "%s: NULL parameter store", op);
    BL_CHECK_RC(a->finalized && b->finalized, "%s: both parameter stores must be finalized", op);
    BL_CHECK_RC(a->count == b->count && a->numel == b->numel,
                "%s: the stores differ (%d entries / %zu values against %d / %zu)", op, a->count, a->numel,
                b->count, b->numel);
    for (int i = 0; i < a->count; i++) {
        const bl_param_entry *x = &a->entries[i], *y = &b->entries[i];
        BL_CHECK_RC(strcmp(x->name, y->name) == 0, "%s: entry %d is '%s' in one store and '%s' in the other", op,
                    i, x->name, y->name);
        BL_CHECK_RC(x->trainable == y->trainable && x->tensor->dtype == y->tensor->dtype &&
                        bl_same_shape(x->tensor, y->tensor),
                    "%s: '%s' is %s %s%s in one store and %s %s%s in the other", op, x->name,
                    bl_dtype_name(x->tensor->dtype), bl__shape(x->tensor), x->trainable ? "" : " (buffer)",
                    bl_dtype_name(y->tensor->dtype), bl__shape(y->tensor), y->trainable ? "" : " (buffer)");
    }
    return BL_OK;
}

int bl_ema_init(bl_params *ema, const bl_params *model) {
    BL_CHECK_RC(ema && model && model->finalized, "ema_init: the model's parameter store must be finalized");
    bl_params_init(ema);
    for (int i = 0; i < model->count; i++) {
        const bl_param_entry *e = &model->entries[i];
        const bl_tensor *t = e->tensor;
        bl_tensor *copy = e->trainable ? bl_params_add(ema, e->name, t->ndim, t->shape)
                                       : bl_params_add_buffer(ema, e->name, t->dtype, t->ndim, t->shape);
        if (!copy) {
            bl_params_free(ema);
            return BL_ERR;
        }
        ema->entries[i].no_weight_decay = e->no_weight_decay;
    }
    if (bl_params_finalize(ema) != BL_OK) {
        bl_params_free(ema);
        return BL_ERR;
    }
    /* The average is never trained: no graph through it, and optimizers over it update nothing. */
    for (int i = 0; i < ema->count; i++) ema->entries[i].tensor->requires_grad = false;
    return bl_ema_update(ema, model, 0.0);
}

int bl_ema_update(bl_params *ema, const bl_params *model, double decay) {
    BL_TRY(check_same_layout("ema_update", ema, model));
    BL_CHECK_RC(decay >= 0 && decay <= 1, "ema_update: decay %g outside [0, 1]", decay);
    int64_t n = (int64_t)ema->numel, n_chunks = (n + CHUNK - 1) / CHUNK;
    float *avg = ema->data;
    const float *w = model->data;
    const float d = (float)decay, keep = (float)(1.0 - decay);
#pragma omp parallel for if (n >= PARALLEL_MIN) schedule(static)
    for (int64_t k = 0; k < n_chunks; k++) {
        int64_t len = n - k * CHUNK < CHUNK ? n - k * CHUNK : CHUNK;
        cpu_ema_update(len, avg + k * CHUNK, w + k * CHUNK, d, keep);
    }
    for (int i = 0; i < ema->count; i++)
        if (!ema->entries[i].trainable) BL_TRY(bl_copy_(ema->entries[i].tensor, model->entries[i].tensor));
    return BL_OK;
}

static void swap_bytes(unsigned char *a, unsigned char *b, size_t n) {
    for (size_t i = 0; i < n; i++) {
        unsigned char t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
}

int bl_ema_swap(bl_params *ema, bl_params *model) {
    BL_TRY(check_same_layout("ema_swap", ema, model));
    int64_t n = (int64_t)ema->numel;
    float *a = ema->data, *b = model->data;
#pragma omp parallel for simd if (n >= PARALLEL_MIN) schedule(static)
    for (int64_t i = 0; i < n; i++) {
        float t = a[i];
        a[i] = b[i];
        b[i] = t;
    }
    for (int i = 0; i < ema->count; i++)
        if (!ema->entries[i].trainable)
            swap_bytes(ema->entries[i].tensor->data, model->entries[i].tensor->data, bl_nbytes(ema->entries[i].tensor));
    return BL_OK;
}
