/* The parameter store (see include/ballast/params.h). */
#include "ballast/params.h"

#include "internal.h"

#include <stdlib.h>
#include <string.h>

void bl_params_init(bl_params *ps) { memset(ps, 0, sizeof *ps); }

void bl_params_free(bl_params *ps) {
    for (int i = 0; i < ps->count; i++) {
        bl_tensor *t = ps->entries[i].tensor;
        if (ps->finalized && ps->entries[i].trainable) {
            /* data and grad live in the blocks: detach them before freeing the struct */
            t->owns_data = false;
            if (t->grad) t->grad->owns_data = false;
        }
        bl_tensor_free(t);
    }
    free(ps->entries);
    free(ps->data);
    free(ps->grad);
    memset(ps, 0, sizeof *ps);
}

const char *bl_param_name(char *buf, const char *prefix, const char *name) {
    if (prefix && prefix[0])
        snprintf(buf, BL_PARAM_NAME_MAX, "%s.%s", prefix, name);
    else
        snprintf(buf, BL_PARAM_NAME_MAX, "%s", name);
    return buf;
}

bl_tensor *bl_params_find(const bl_params *ps, const char *name) {
    for (int i = 0; i < ps->count; i++)
        if (strcmp(ps->entries[i].name, name) == 0) return ps->entries[i].tensor;
    return NULL;
}

static bl_tensor *add_entry(bl_params *ps, const char *name, bl_dtype dt, int ndim, const int64_t *shape,
                            bool trainable) {
    /* Buffers live outside the packed block, so methods may add them to a finalized store. */
    BL_CHECK(!ps->finalized || !trainable, "cannot add parameter '%s': the store is already finalized", name);
    BL_CHECK(strlen(name) < BL_PARAM_NAME_MAX, "parameter name too long: '%s'", name);
    BL_CHECK(!bl_params_find(ps, name), "duplicate parameter name '%s'", name);
    if (ps->count == ps->cap) {
        int cap = ps->cap ? ps->cap * 2 : 64;
        bl_param_entry *e = realloc(ps->entries, (size_t)cap * sizeof *e);
        BL_CHECK(e, "out of memory registering '%s'", name);
        ps->entries = e;
        ps->cap = cap;
    }
    bl_tensor *t = bl_tensor_new_persistent(dt, ndim, shape);
    if (!t) return NULL;
    bl_param_entry *e = &ps->entries[ps->count++];
    memset(e, 0, sizeof *e);
    snprintf(e->name, sizeof e->name, "%s", name);
    e->tensor = t;
    e->trainable = trainable;
    /* Biases and norm scales (1-D) are conventionally exempt from weight decay. */
    e->no_weight_decay = ndim <= 1;
    t->name = e->name;
    t->requires_grad = trainable;
    return t;
}

bl_tensor *bl_params_add(bl_params *ps, const char *name, int ndim, const int64_t *shape) {
    return add_entry(ps, name, BL_F32, ndim, shape, true);
}

bl_tensor *bl_params_add_buffer(bl_params *ps, const char *name, bl_dtype dt, int ndim, const int64_t *shape) {
    return add_entry(ps, name, dt, ndim, shape, false);
}

int bl_params_finalize(bl_params *ps) {
    BL_CHECK_RC(!ps->finalized, "parameter store finalized twice");
    size_t numel = 0;
    for (int i = 0; i < ps->count; i++)
        if (ps->entries[i].trainable) numel += (size_t)bl_numel(ps->entries[i].tensor);
    /* Keep each tensor 16-float aligned so vector kernels can use aligned loads. */
    size_t padded = numel + 16 * (size_t)ps->count;
    ps->data = aligned_alloc(64, (padded * sizeof(float) + 63) / 64 * 64);
    ps->grad = aligned_alloc(64, (padded * sizeof(float) + 63) / 64 * 64);
    BL_CHECK_RC(ps->data && ps->grad, "out of memory packing %zu parameters", numel);
    memset(ps->data, 0, padded * sizeof(float));
    memset(ps->grad, 0, padded * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < ps->count; i++) {
        bl_param_entry *e = &ps->entries[i];
        if (!e->trainable) continue;
        bl_tensor *t = e->tensor;
        size_t n = (size_t)bl_numel(t);
        memcpy(ps->data + off, t->data, n * sizeof(float));
        free(t->data);
        t->data = ps->data + off;
        t->owns_data = false;
        if (t->grad) bl_tensor_free(t->grad);
        bl_tensor *g = calloc(1, sizeof *g);
        BL_CHECK_RC(g, "out of memory");
        *g = *t;
        g->data = ps->grad + off;
        g->requires_grad = false;
        g->grad = NULL;
        g->persistent = true;
        g->owns_data = false;
        t->grad = g;
        off += (n + 15) / 16 * 16;
    }
    ps->numel = off;
    ps->finalized = true;
    return BL_OK;
}

void bl_params_zero_grad(bl_params *ps) {
    if (ps->grad) memset(ps->grad, 0, ps->numel * sizeof(float));
}

size_t bl_params_numel(const bl_params *ps) {
    size_t n = 0;
    for (int i = 0; i < ps->count; i++)
        if (ps->entries[i].trainable) n += (size_t)bl_numel(ps->entries[i].tensor);
    return n;
}
