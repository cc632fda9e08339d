/* SGD, Adam and AdamW over a parameter store (see include/ballast/optim.h).
 *
 * A step splits the store's parameter block into chunks of at most CHUNK elements, each inside one
 * parameter entry, computes the per-entry scalars (bias corrections depend on the entry's own step
 * count, weight decay on its no_weight_decay flag), and runs the update kernel over all chunks in
 * one parallel loop. State blocks share the parameter block's layout, so an entry's state sits at
 * the same offset as its values. */
#include "ballast/io.h"
#include "ballast/optim.h"

#include "core/internal.h"
#include "update_kernels.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Small enough that a few hundred chunks balance the two-thread pool, large enough that the
 * per-chunk dispatch cost vanishes against the memory traffic of 16K elements. */
#define CHUNK 16384
/* Below this many elements a step is not worth waking the thread pool for. */
#define PARALLEL_MIN 32768

typedef struct {
    size_t offset;
    int64_t n;
    int entry;
} chunk;

struct bl_optim_work {
    chunk *chunks;
    sgd_update_args *sgd;   /* per entry, for the current step */
    adam_update_args *adam; /* per entry */
};

bl_optim_config bl_sgd_config(double lr, double momentum, double weight_decay) {
    return (bl_optim_config){.kind = BL_SGD, .lr = lr, .momentum = momentum, .weight_decay = weight_decay};
}

bl_optim_config bl_adam_config(double lr, double weight_decay) {
    return (bl_optim_config){
        .kind = BL_ADAM, .lr = lr, .weight_decay = weight_decay, .beta1 = 0.9, .beta2 = 0.999, .eps = 1e-8};
}

bl_optim_config bl_adamw_config(double lr, double weight_decay) {
    bl_optim_config c = bl_adam_config(lr, weight_decay);
    c.kind = BL_ADAMW;
    return c;
}

static const char *kind_name(bl_optim_kind k) {
    switch (k) {
    case BL_SGD: return "sgd";
    case BL_ADAM: return "adam";
    case BL_ADAMW: return "adamw";
    }
    return "?";
}

/* The checks torch.optim makes in its constructors, with the same limits. */
static int validate_config(const bl_optim_config *c) {
    const char *name = kind_name(c->kind);
    BL_CHECK_RC(c->kind == BL_SGD || c->kind == BL_ADAM || c->kind == BL_ADAMW, "optimizer: unknown kind %d",
                (int)c->kind);
    BL_CHECK_RC(c->lr >= 0 && isfinite(c->lr), "%s: invalid learning rate %g", name, c->lr);
    BL_CHECK_RC(c->weight_decay >= 0 && isfinite(c->weight_decay), "%s: invalid weight_decay %g", name,
                c->weight_decay);
    if (c->kind == BL_SGD) {
        BL_CHECK_RC(c->momentum >= 0 && isfinite(c->momentum), "sgd: invalid momentum %g", c->momentum);
        BL_CHECK_RC(isfinite(c->dampening), "sgd: invalid dampening %g", c->dampening);
        BL_CHECK_RC(!c->nesterov || (c->momentum > 0 && c->dampening == 0),
                    "sgd: nesterov momentum requires a momentum and zero dampening (momentum %g, dampening %g)",
                    c->momentum, c->dampening);
    } else {
        BL_CHECK_RC(c->beta1 >= 0 && c->beta1 < 1, "%s: invalid beta1 %g (needs 0 <= beta1 < 1)", name, c->beta1);
        BL_CHECK_RC(c->beta2 >= 0 && c->beta2 < 1, "%s: invalid beta2 %g (needs 0 <= beta2 < 1)", name, c->beta2);
        BL_CHECK_RC(c->eps >= 0 && isfinite(c->eps), "%s: invalid eps %g", name, c->eps);
    }
    return BL_OK;
}

static float *alloc_state(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes ? bytes : 64);
    if (p) memset(p, 0, bytes);
    return p;
}

/* Offset of a trainable entry's values inside the store's block. */
static size_t entry_offset(const bl_params *ps, const bl_param_entry *e) {
    return (size_t)((const float *)e->tensor->data - ps->data);
}

int bl_optimizer_init(bl_optimizer *opt, bl_params *ps, bl_optim_config cfg) {
    BL_CHECK_RC(opt && ps, "bl_optimizer_init: NULL argument");
    memset(opt, 0, sizeof *opt);
    BL_CHECK_RC(ps->finalized, "%s: the parameter store must be finalized before creating an optimizer",
                kind_name(cfg.kind));
    BL_TRY(validate_config(&cfg));
    opt->cfg = cfg;
    opt->params = ps;
    int max_chunks = 0;
    for (int i = 0; i < ps->count; i++)
        if (ps->entries[i].trainable) max_chunks += (int)((bl_numel(ps->entries[i].tensor) + CHUNK - 1) / CHUNK);
    bool adam = cfg.kind != BL_SGD;
    opt->work = calloc(1, sizeof *opt->work);
    opt->entry_steps = calloc((size_t)ps->count + 1, sizeof *opt->entry_steps);
    bool ok = opt->work && opt->entry_steps;
    if (ok) {
        opt->work->chunks = malloc(((size_t)max_chunks + 1) * sizeof(chunk));
        if (adam)
            opt->work->adam = malloc(((size_t)ps->count + 1) * sizeof(adam_update_args));
        else
            opt->work->sgd = malloc(((size_t)ps->count + 1) * sizeof(sgd_update_args));
        ok = opt->work->chunks && (opt->work->adam || opt->work->sgd);
    }
    if (ok && (adam || cfg.momentum != 0)) ok = (opt->state1 = alloc_state(ps->numel)) != NULL;
    if (ok && adam) ok = (opt->state2 = alloc_state(ps->numel)) != NULL;
    if (!ok) {
        bl_optimizer_free(opt);
        BL_CHECK_RC(false, "%s: out of memory allocating state for %zu parameters", kind_name(cfg.kind), ps->numel);
    }
    return BL_OK;
}

void bl_optimizer_free(bl_optimizer *opt) {
    if (!opt) return;
    if (opt->work) {
        free(opt->work->chunks);
        free(opt->work->sgd);
        free(opt->work->adam);
        free(opt->work);
    }
    free(opt->state1);
    free(opt->state2);
    free(opt->entry_steps);
    memset(opt, 0, sizeof *opt);
}

/* Fills the chunk list with the entries this step updates (trainable and not frozen), advances
 * their step counts and prepares their kernel arguments. Returns the number of chunks. */
static int plan_step(bl_optimizer *opt, int64_t *total) {
    const bl_optim_config *c = &opt->cfg;
    bl_params *ps = opt->params;
    bl_optim_work *w = opt->work;
    int nc = 0;
    *total = 0;
    for (int i = 0; i < ps->count; i++) {
        const bl_param_entry *e = &ps->entries[i];
        if (!e->trainable || !e->tensor->requires_grad) continue;
        int64_t n = bl_numel(e->tensor);
        size_t off = entry_offset(ps, e);
        for (int64_t s = 0; s < n; s += CHUNK)
            w->chunks[nc++] = (chunk){off + (size_t)s, n - s < CHUNK ? n - s : CHUNK, i};
        *total += n;
        double wd = c->skip_no_weight_decay && e->no_weight_decay ? 0.0 : c->weight_decay;
        int64_t t = ++opt->entry_steps[i];
        if (c->kind == BL_SGD) {
            w->sgd[i] = (sgd_update_args){.lr = (float)c->lr,
                                          .weight_decay = (float)wd,
                                          .momentum = (float)c->momentum,
                                          .one_minus_dampening = (float)(1.0 - c->dampening),
                                          .nesterov = c->nesterov,
                                          .first_step = t == 1};
        } else {
            bool decoupled = c->kind == BL_ADAMW;
            w->adam[i] = (adam_update_args){
                .weight_decay = decoupled ? 0.0f : (float)wd,
                .decoupled_factor = decoupled ? (float)(1.0 - c->lr * wd) : 1.0f,
                .one_minus_beta1 = (float)(1.0 - c->beta1),
                .beta2 = (float)c->beta2,
                .one_minus_beta2 = (float)(1.0 - c->beta2),
                .eps = (float)c->eps,
                .step_size = (float)(c->lr / (1.0 - pow(c->beta1, (double)t))),
                .bias_correction2_sqrt = (float)sqrt(1.0 - pow(c->beta2, (double)t)),
            };
        }
    }
    return nc;
}

int bl_optimizer_step(bl_optimizer *opt) {
    BL_CHECK_RC(opt && opt->params && opt->work, "bl_optimizer_step: optimizer not initialized");
    /* hyper-parameters may have been changed since init */
    BL_TRY(validate_config(&opt->cfg));
    BL_CHECK_RC((opt->cfg.kind != BL_SGD) == (opt->state2 != NULL), "optimizer: kind changed after init");
    BL_CHECK_RC(opt->cfg.kind != BL_SGD || opt->cfg.momentum == 0 || opt->state1,
                "sgd: momentum %g set after an init without momentum (no buffers)", opt->cfg.momentum);
    int64_t total;
    int nc = plan_step(opt, &total);
    opt->step++;
    const chunk *chunks = opt->work->chunks;
    float *p = opt->params->data, *s1 = opt->state1, *s2 = opt->state2;
    const float *g = opt->params->grad;
    if (opt->cfg.kind == BL_SGD) {
        const sgd_update_args *args = opt->work->sgd;
#pragma omp parallel for schedule(dynamic) if (total >= PARALLEL_MIN)
        for (int k = 0; k < nc; k++) {
            size_t o = chunks[k].offset;
            cpu_sgd_update(chunks[k].n, p + o, g + o, s1 ? s1 + o : NULL, &args[chunks[k].entry]);
        }
    } else {
        const adam_update_args *args = opt->work->adam;
#pragma omp parallel for schedule(dynamic) if (total >= PARALLEL_MIN)
        for (int k = 0; k < nc; k++) {
            size_t o = chunks[k].offset;
            cpu_adam_update(chunks[k].n, p + o, g + o, s1 + o, s2 + o, &args[chunks[k].entry]);
        }
    }
    return BL_OK;
}

/* ---- saving and restoring state ---- */

/* The state buffers of this optimizer kind, with PyTorch's names. */
static int state_buffers(const bl_optimizer *opt, const char **names, float **blocks) {
    if (opt->cfg.kind != BL_SGD) {
        names[0] = "exp_avg", blocks[0] = opt->state1;
        names[1] = "exp_avg_sq", blocks[1] = opt->state2;
        return 2;
    }
    if (!opt->state1) return 0;
    names[0] = "momentum_buffer", blocks[0] = opt->state1;
    return 1;
}

/* Builds one safetensors entry per (trainable entry, buffer) plus "<name>.step", as arena tensors
 * viewing the optimizer's blocks. */
static bl_safetensors_entry *state_entries(const bl_optimizer *opt, int *n_out) {
    const bl_params *ps = opt->params;
    const char *bufs[2];
    float *blocks[2];
    int nb = state_buffers(opt, bufs, blocks);
    bl_safetensors_entry *es = bl_arena_alloc(((size_t)ps->count * (size_t)(nb + 1) + 1) * sizeof *es);
    if (!es) return NULL;
    int n = 0;
    for (int i = 0; i < ps->count; i++) {
        const bl_param_entry *e = &ps->entries[i];
        if (!e->trainable) continue;
        for (int b = 0; b <= nb; b++) {
            char *name = bl_arena_alloc(BL_PARAM_NAME_MAX + 32);
            bl_tensor *t = b < nb ? bl__wrap(BL_F32, e->tensor->ndim, e->tensor->shape,
                                             blocks[b] + entry_offset(ps, e))
                                  : bl__wrap(BL_I64, 0, NULL, &opt->entry_steps[i]);
            if (!name || !t) return NULL;
            snprintf(name, BL_PARAM_NAME_MAX + 32, "%s.%s", e->name, b < nb ? bufs[b] : "step");
            es[n++] = (bl_safetensors_entry){name, t};
        }
    }
    *n_out = n;
    return es;
}

int bl_optimizer_save(const bl_optimizer *opt, const char *path) {
    BL_CHECK_RC(opt && opt->params && path, "bl_optimizer_save: NULL argument");
    bl_scope scope = bl_scope_begin();
    int n = 0, rc = BL_ERR;
    bl_safetensors_entry *es = state_entries(opt, &n);
    char steps[32];
    snprintf(steps, sizeof steps, "%lld", (long long)opt->step);
    const char *meta[] = {"optimizer", kind_name(opt->cfg.kind), "step", steps, NULL};
    if (es) rc = bl_safetensors_save(path, n, es, meta);
    bl_scope_end(scope);
    return rc;
}

/* Checks every expected state tensor against the file before anything is overwritten. */
static int check_state_file(const bl_safetensors *st, const char *path, const bl_safetensors_entry *es, int n,
                            const char *kind) {
    const char *file_kind = bl_safetensors_meta_get(st, "optimizer");
    BL_CHECK_RC(file_kind && strcmp(file_kind, kind) == 0, "%s: optimizer state for '%s', this optimizer is '%s'",
                path, file_kind ? file_kind : "(none)", kind);
    BL_CHECK_RC(st->count == n, "%s: %d state tensors in the file, this optimizer has %d", path, st->count, n);
    for (int k = 0; k < n; k++) {
        const bl_tensor *want = es[k].tensor, *got = bl_safetensors_get(st, es[k].name);
        BL_CHECK_RC(got, "%s: state tensor '%s' is missing", path, es[k].name);
        BL_CHECK_RC(got->dtype == want->dtype && bl_same_shape(got, want),
                    "%s: state tensor '%s' is %s %s, expected %s %s", path, es[k].name, bl_dtype_name(got->dtype),
                    bl__shape(got), bl_dtype_name(want->dtype), bl__shape(want));
    }
    return BL_OK;
}

int bl_optimizer_load(bl_optimizer *opt, const char *path) {
    BL_CHECK_RC(opt && opt->params && path, "bl_optimizer_load: NULL argument");
    bl_safetensors st;
    BL_TRY(bl_safetensors_load(path, &st));
    bl_scope scope = bl_scope_begin();
    int n = 0, rc = BL_ERR;
    bl_safetensors_entry *es = state_entries(opt, &n);
    const char *steps = bl_safetensors_meta_get(&st, "step");
    if (es && check_state_file(&st, path, es, n, kind_name(opt->cfg.kind)) == BL_OK) {
        for (int k = 0; k < n; k++) bl_copy_(es[k].tensor, bl_safetensors_get(&st, es[k].name));
        opt->step = steps ? strtoll(steps, NULL, 10) : 0;
        rc = BL_OK;
    }
    bl_scope_end(scope);
    bl_safetensors_free(&st);
    return rc;
}
