/* The things a recipe registers with its run (models, parameter stores, optimizers with their
 * schedules, random streams, phases) and their checkpoint: each model and store a safetensors
 * file, each optimizer's state a safetensors file, and state.json for everything that is not a
 * tensor (counters, phase, random streams, optimizer settings and schedules, frozen flags, the
 * sampler). Resume restores all of it, so a recipe never saves anything itself. */
#include "train_internal.h"

#include "core/internal.h"
#include "io/json.h"

#include "ballast/io.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Random-stream purposes of named streams: a hash of the name, so streams never depend on the
 * order in which recipes register them. */
static uint64_t name_purpose(const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (const char *p = name; *p; p++) h = (h ^ (unsigned char)*p) * 1099511628211ull;
    return h;
}

/* Names become file names in checkpoints: letters, digits, '_' and '-' only. */
static int check_name(const bl_run *run, const char *kind, const char *name, int count) {
    BL_CHECK_RC(run && run->registry, "%s: no run", kind);
    BL_CHECK_RC(!run->registry->setup_done, "%s '%s': registration is only possible in the recipe's setup", kind,
                name ? name : "");
    BL_CHECK_RC(name && *name && strlen(name) < BL__REG_NAME_MAX, "%s: a name of 1 to %d characters is needed", kind,
                BL__REG_NAME_MAX - 1);
    for (const char *p = name; *p; p++)
        BL_CHECK_RC((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') || *p == '_' ||
                        *p == '-',
                    "%s '%s': names may hold letters, digits, '_' and '-' only", kind, name);
    BL_CHECK_RC(count < BL__REG_MAX, "%s '%s': at most %d can be registered", kind, name, BL__REG_MAX);
    return BL_OK;
}

#define FIND(array, n, wanted)                                                                                   \
    for (int i_ = 0; i_ < (n); i_++)                                                                           \
        if (strcmp((array)[i_]->name, (wanted)) == 0) return (array)[i_]

static bl__reg_model *find_model(const struct bl_run_registry *r, const char *name) {
    FIND(r->models, r->n_models, name);
    return NULL;
}
static bl__reg_params *find_store(const struct bl_run_registry *r, const char *name) {
    FIND(r->stores, r->n_stores, name);
    return NULL;
}
static bl__reg_optimizer *find_optimizer(const struct bl_run_registry *r, const char *name) {
    FIND(r->optimizers, r->n_optimizers, name);
    return NULL;
}
static bl__reg_rng *find_rng(const struct bl_run_registry *r, const char *name) {
    FIND(r->rngs, r->n_rngs, name);
    return NULL;
}

/* ---- registering ------------------------------------------------------------------------------ */

static bl_model *model_from_config(const bl_run *run) {
    const bl_config *c = run->config;
    const bl_tensor *im = run->train.images;
    BL_CHECK(im && im->ndim == 4, "model: the run has no training images to size it by");
    BL_CHECK(im->shape[2] == im->shape[3], "dataset %s: images are %lldx%lld; models need square images",
             bl_config_string(c, "dataset.name"), (long long)im->shape[2], (long long)im->shape[3]);
    bl_model_opts opts = {0};
    opts.num_classes = run->num_classes;
    opts.image_size = im->shape[2];
    opts.in_channels = im->shape[1];
    opts.width = bl_config_int(c, "model.width");
    opts.depth = bl_config_int(c, "model.depth");
    opts.patch_size = bl_config_int(c, "model.patch_size");
    opts.drop_rate = bl_config_float(c, "model.drop_rate");
    const char *name = bl_config_string(c, "model.name");
    bl_model *m = bl_model_create(name, &opts, (uint64_t)bl_config_int(c, "train.seed"));
    if (!m) {
        char cause[1024];
        snprintf(cause, sizeof cause, "%s", bl_last_error());
        bl_clear_error();
        bl_set_error("%s: model.name '%s': %s", bl_config_source(c), name, cause);
    }
    return m;
}

bl_model *bl_run_add_model(bl_run *run, const char *name, bl_model *model) {
    if (check_name(run, "model", name, run && run->registry ? run->registry->n_models : 0) != BL_OK ||
        find_model(run->registry, name)) {
        if (run && run->registry && find_model(run->registry, name)) bl_set_error("model '%s' is registered twice", name);
        bl_model_free(model);
        return NULL;
    }
    bl__reg_model *e = calloc(1, sizeof *e);
    if (!model && e) model = model_from_config(run);
    if (!e || !model) {
        if (!e) bl_set_error("out of memory");
        free(e);
        bl_model_free(model);
        return NULL;
    }
    snprintf(e->name, sizeof e->name, "%s", name);
    e->model = model;
    run->registry->models[run->registry->n_models++] = e;
    return model;
}

bl_params *bl_run_add_params(bl_run *run, const char *name) {
    if (check_name(run, "parameter store", name, run && run->registry ? run->registry->n_stores : 0) != BL_OK)
        return NULL;
    BL_CHECK(!find_store(run->registry, name), "parameter store '%s' is registered twice", name);
    bl__reg_params *e = calloc(1, sizeof *e);
    BL_CHECK(e, "out of memory");
    snprintf(e->name, sizeof e->name, "%s", name);
    bl_params_init(&e->params);
    run->registry->stores[run->registry->n_stores++] = e;
    return &e->params;
}

bl_optimizer *bl_run_add_optimizer(bl_run *run, const char *name, bl_params *params, const bl_optim_config *cfg,
                                   const bl_schedule *schedule) {
    if (check_name(run, "optimizer", name, run && run->registry ? run->registry->n_optimizers : 0) != BL_OK)
        return NULL;
    BL_CHECK(!find_optimizer(run->registry, name), "optimizer '%s' is registered twice", name);
    BL_CHECK(params, "optimizer '%s': no parameters", name);
    if (!params->finalized && bl_params_finalize(params) != BL_OK) return NULL;
    bl__reg_optimizer *e = calloc(1, sizeof *e);
    BL_CHECK(e, "out of memory");
    bl_optim_config c;
    int rc = cfg ? (c = *cfg, BL_OK) : bl_optim_config_from_config(run->config, &c);
    if (rc == BL_OK) rc = schedule ? (e->schedule = *schedule, BL_OK) : bl_schedule_from_config(run->config, &e->schedule);
    if (rc == BL_OK) rc = bl_optimizer_init(&e->opt, params, c);
    if (rc != BL_OK) {
        free(e);
        return NULL;
    }
    snprintf(e->name, sizeof e->name, "%s", name);
    run->registry->optimizers[run->registry->n_optimizers++] = e;
    return &e->opt;
}

int bl_run_reset_optimizer(bl_run *run, const char *name, bl_optim_config cfg, bl_schedule schedule) {
    BL_CHECK_RC(run && run->registry && name, "bl_run_reset_optimizer: NULL argument");
    bl__reg_optimizer *e = find_optimizer(run->registry, name);
    BL_CHECK_RC(e, "bl_run_reset_optimizer: no optimizer '%s'", name);
    bl_params *params = e->opt.params;
    bl_optimizer fresh;
    BL_TRY(bl_optimizer_init(&fresh, params, cfg));
    BL_CHECK_RC(isfinite(bl_schedule_lr(&schedule, 0)), "optimizer '%s': invalid schedule: %s", name, bl_last_error());
    bl_optimizer_free(&e->opt);
    e->opt = fresh;
    e->schedule = schedule;
    e->origin = run->epoch;
    return BL_OK;
}

bl_rng *bl_run_add_rng(bl_run *run, const char *name) {
    if (check_name(run, "random stream", name, run && run->registry ? run->registry->n_rngs : 0) != BL_OK) return NULL;
    BL_CHECK(!find_rng(run->registry, name) && strcmp(name, "run") != 0, "random stream '%s' is registered twice",
             name);
    bl__reg_rng *e = calloc(1, sizeof *e);
    BL_CHECK(e, "out of memory");
    snprintf(e->name, sizeof e->name, "%s", name);
    e->rng = bl_rng_make((uint64_t)bl_config_int(run->config, "train.seed"), name_purpose(name));
    run->registry->rngs[run->registry->n_rngs++] = e;
    return &e->rng;
}

int bl_run_add_sampler(bl_run *run, const char *name, bl_sampler *sampler) {
    if (check_name(run, "sampler", name, run && run->registry ? run->registry->n_samplers : 0) != BL_OK) {
        bl_sampler_free(sampler);
        return BL_ERR;
    }
    struct bl_run_registry *r = run->registry;
    for (int i = 0; i < r->n_samplers; i++)
        if (strcmp(r->sampler_names[i], name) == 0) {
            bl_sampler_free(sampler);
            BL_CHECK_RC(false, "sampler '%s' is registered twice", name);
        }
    BL_CHECK_RC(sampler, "sampler '%s': no sampler", name);
    snprintf(r->sampler_names[r->n_samplers], BL__REG_NAME_MAX, "%s", name);
    r->samplers[r->n_samplers++] = sampler;
    return BL_OK;
}

int bl_run_add_phase(bl_run *run, const bl_phase *phase) {
    BL_CHECK_RC(run && run->registry && phase && phase->name, "bl_run_add_phase: NULL argument");
    struct bl_run_registry *r = run->registry;
    BL_CHECK_RC(!r->setup_done, "phase '%s': phases are added in the recipe's setup", phase->name);
    BL_CHECK_RC(phase->epochs >= 0, "phase '%s': %d epochs", phase->name, phase->epochs);
    BL_CHECK_RC(r->n_phases < BL__REG_MAX_PHASES, "phase '%s': at most %d phases", phase->name, BL__REG_MAX_PHASES);
    r->phases[r->n_phases++] = *phase;
    return BL_OK;
}

/* "the registered ones are a, b" for messages */
static const char *known_names(char *buf, size_t len, int n, const char *const *names) {
    size_t used = (size_t)snprintf(buf, len, n ? "registered: " : "none is registered");
    for (int i = 0; i < n && used < len; i++) used += (size_t)snprintf(buf + used, len - used, "%s%s", i ? ", " : "", names[i]);
    return buf;
}

#define LOOKUP(kind, array, n, wanted, member)                                                                   \
    do {                                                                                                        \
        const char *names_[BL__REG_MAX];                                                                        \
        for (int i_ = 0; i_ < (n); i_++) {                                                                      \
            if (strcmp((array)[i_]->name, (wanted)) == 0) return &(array)[i_]->member;                           \
            names_[i_] = (array)[i_]->name;                                                                     \
        }                                                                                                       \
        char buf_[512];                                                                                         \
        bl_set_error("no %s named '%s' (%s)", kind, wanted, known_names(buf_, sizeof buf_, (n), names_));       \
        return NULL;                                                                                            \
    } while (0)

bl_model *bl_run_model(const bl_run *run, const char *name) {
    BL_CHECK(run && run->registry && name, "bl_run_model: NULL argument");
    for (int i = 0; i < run->registry->n_models; i++)
        if (strcmp(run->registry->models[i]->name, name) == 0) return run->registry->models[i]->model;
    const char *names[BL__REG_MAX];
    for (int i = 0; i < run->registry->n_models; i++) names[i] = run->registry->models[i]->name;
    char buf[512];
    bl_set_error("no model named '%s' (%s)", name, known_names(buf, sizeof buf, run->registry->n_models, names));
    return NULL;
}

bl_params *bl_run_params(const bl_run *run, const char *name) {
    BL_CHECK(run && run->registry && name, "bl_run_params: NULL argument");
    LOOKUP("parameter store", run->registry->stores, run->registry->n_stores, name, params);
}

bl_optimizer *bl_run_optimizer(const bl_run *run, const char *name) {
    BL_CHECK(run && run->registry && name, "bl_run_optimizer: NULL argument");
    LOOKUP("optimizer", run->registry->optimizers, run->registry->n_optimizers, name, opt);
}

int bl_run_freeze(bl_run *run, const char *model, bool frozen, bool keep_classifier) {
    BL_CHECK_RC(run && run->registry && model, "bl_run_freeze: NULL argument");
    bl__reg_model *e = find_model(run->registry, model);
    if (!e) return bl_run_model(run, model) ? BL_OK : BL_ERR; /* the lookup's error */
    const bl_linear_layer *fc = &e->model->classifier;
    bl_params *ps = &e->model->params;
    for (int i = 0; i < ps->count; i++) {
        bl_tensor *t = ps->entries[i].tensor;
        if (!ps->entries[i].trainable || (keep_classifier && (t == fc->weight || t == fc->bias))) continue;
        t->requires_grad = !frozen;
    }
    e->frozen = frozen;
    return BL_OK;
}

void bl_run_set_training(bl_run *run, bool training) {
    if (!run || !run->registry) return;
    for (int i = 0; i < run->registry->n_models; i++)
        run->registry->models[i]->model->training = training && !run->registry->models[i]->frozen;
}

/* ---- closing and freeing ---------------------------------------------------------------------- */

int bl__registry_close(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    for (int i = 0; i < r->n_stores; i++)
        if (!r->stores[i]->params.finalized) BL_TRY(bl_params_finalize(&r->stores[i]->params));
    if (r->n_phases == 0) BL_TRY(bl_run_add_phase(run, &(bl_phase){.name = "main", .epochs = run->epochs}));
    r->setup_done = true;
    run->epochs = 0;
    for (int i = 0; i < r->n_phases; i++) run->epochs += r->phases[i].epochs;
    return BL_OK;
}

void bl__registry_free(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    if (!r) return;
    bl_loader_free(r->loader);
    if (r->sampler_owned) bl_sampler_free(r->sampler);
    for (int i = 0; i < r->n_samplers; i++) bl_sampler_free(r->samplers[i]);
    bl_source_free(&r->train_source);
    for (int i = 0; i < 3; i++) bl_source_free(&r->eval_sources[i]);
    for (int i = 0; i < r->n_optimizers; i++) {
        bl_optimizer_free(&r->optimizers[i]->opt);
        free(r->optimizers[i]);
    }
    for (int i = 0; i < r->n_stores; i++) {
        bl_params_free(&r->stores[i]->params);
        free(r->stores[i]);
    }
    for (int i = 0; i < r->n_models; i++) {
        bl_model_free(r->models[i]->model);
        free(r->models[i]);
    }
    for (int i = 0; i < r->n_rngs; i++) free(r->rngs[i]);
    free(r);
    run->registry = NULL;
}

int bl__registry_set_lr(bl_run *run, int epoch) {
    const bool at_start = bl_config_bool(run->config, "train.lr_at_epoch_start");
    for (int i = 0; i < run->registry->n_optimizers; i++) {
        bl__reg_optimizer *e = run->registry->optimizers[i];
        double lr = bl_schedule_epoch_lr(&e->schedule, epoch, e->origin, at_start);
        BL_CHECK_RC(isfinite(lr), "optimizer '%s': learning rate at epoch %d is %g", e->name, epoch + 1, lr);
        e->opt.cfg.lr = lr;
    }
    return BL_OK;
}

/* ---- state.json ------------------------------------------------------------------------------- */

static void write_rng(bl__text *t, const char *name, const bl_rng *rng, bool first) {
    bl__text_printf(t, "%s", first ? "" : ",");
    bl__text_append_json_string(t, name);
    bl__text_printf(t, ":[\"%016" PRIx64 "\",\"%016" PRIx64 "\"]", rng->key, rng->counter);
}

static void write_optimizer(bl__text *t, const bl__reg_optimizer *e) {
    const bl_optim_config *c = &e->opt.cfg;
    const bl_schedule *s = &e->schedule;
    bl__text_append_json_string(t, e->name);
    bl__text_printf(t,
                    ":{\"origin\":%d,\"kind\":%d,\"weight_decay\":%.17g,\"skip_no_weight_decay\":%s,\"momentum\":%.17g,"
                    "\"dampening\":%.17g,\"nesterov\":%s,\"beta1\":%.17g,\"beta2\":%.17g,\"eps\":%.17g,"
                    "\"schedule\":{\"kind\":%d,\"base_lr\":%.17g,\"gamma\":%.17g,\"t_max\":%.17g,\"eta_min\":%.17g,"
                    "\"warmup_epochs\":%.17g,\"warmup_start\":%.17g,\"milestones\":[",
                    e->origin, (int)c->kind, c->weight_decay, c->skip_no_weight_decay ? "true" : "false", c->momentum,
                    c->dampening, c->nesterov ? "true" : "false", c->beta1, c->beta2, c->eps, (int)s->kind, s->base_lr,
                    s->gamma, s->t_max, s->eta_min, s->warmup_epochs, s->warmup_start);
    for (int i = 0; i < s->n_milestones; i++) bl__text_printf(t, "%s%.17g", i ? "," : "", s->milestones[i]);
    bl__text_append(t, "]}}");
}

/* The names of a store's parameters that are not trained now (frozen), as a JSON array. */
static void write_frozen(bl__text *t, const char *name, const bl_params *ps, bool first) {
    bl__text_printf(t, "%s", first ? "" : ",");
    bl__text_append_json_string(t, name);
    bl__text_append(t, ":[");
    bool any = false;
    for (int i = 0; i < ps->count; i++) {
        if (!ps->entries[i].trainable || ps->entries[i].tensor->requires_grad) continue;
        bl__text_printf(t, "%s", any ? "," : "");
        bl__text_append_json_string(t, ps->entries[i].name);
        any = true;
    }
    bl__text_append(t, "]");
}

static int write_state(const bl_run *run, const char *path, bool final) {
    const struct bl_run_registry *r = run->registry;
    bl__text t = {0};
    bl__text_printf(&t, "{\"epoch\":%d,\"step\":%lld,\"final\":%s,\"phase\":%d,\"phase_epoch\":%d,\"phase_begun\":%s,",
                    run->epoch, (long long)run->step, final ? "true" : "false", r->phase, r->phase_epoch,
                    r->phase_begun ? "true" : "false");
    bl__text_append(&t, "\"sampler\":");
    bl__text_append_json_string(&t, r->sampler ? r->sampler_name : "");
    bl__text_append(&t, ",\"rngs\":{");
    write_rng(&t, "run", &run->rng, true);
    for (int i = 0; i < r->n_rngs; i++) write_rng(&t, r->rngs[i]->name, &r->rngs[i]->rng, false);
    bl__text_append(&t, "},\"models\":{");
    for (int i = 0; i < r->n_models; i++) {
        const bl__reg_model *m = r->models[i];
        bl__text_printf(&t, "%s", i ? "," : "");
        bl__text_append_json_string(&t, m->name);
        bl__text_printf(&t, ":{\"frozen\":%s,\"dropout\":", m->frozen ? "true" : "false");
        bl__text_printf(&t, "[\"%016" PRIx64 "\",\"%016" PRIx64 "\"]}", m->model->head_drop.rng.key,
                        m->model->head_drop.rng.counter);
    }
    bl__text_append(&t, "},\"untrained\":{");
    for (int i = 0; i < r->n_models; i++) write_frozen(&t, r->models[i]->name, &r->models[i]->model->params, i == 0);
    for (int i = 0; i < r->n_stores; i++)
        write_frozen(&t, r->stores[i]->name, &r->stores[i]->params, i == 0 && r->n_models == 0);
    bl__text_append(&t, "},\"optimizers\":{");
    for (int i = 0; i < r->n_optimizers; i++) {
        bl__text_printf(&t, "%s", i ? "," : "");
        write_optimizer(&t, r->optimizers[i]);
    }
    bl__text_append(&t, "}}\n");
    int rc = t.failed ? (bl_set_error("out of memory writing %s", path), BL_ERR) : bl_file_write_text(path, t.data);
    bl__text_free(&t);
    return rc;
}

/* ---- reading state.json ----------------------------------------------------------------------- */

typedef struct {
    const char *path;
    bool ok;
} reader;

static const bl__json *member(reader *rd, const bl__json *obj, const char *key, bl__json_type type) {
    const bl__json *v = obj ? bl__json_get(obj, key) : NULL;
    if (!v || v->type != type) {
        if (rd->ok) bl_set_error("%s: malformed trainer state: \"%s\" is missing or of the wrong type", rd->path, key);
        rd->ok = false;
        return NULL;
    }
    return v;
}

static int64_t int_member(reader *rd, const bl__json *obj, const char *key) {
    const bl__json *v = member(rd, obj, key, BL_JSON_NUMBER);
    if (v && !v->is_integer) {
        if (rd->ok) bl_set_error("%s: malformed trainer state: \"%s\" is not an integer", rd->path, key);
        rd->ok = false;
    }
    return v && v->is_integer ? v->integer : 0;
}

static double number_member(reader *rd, const bl__json *obj, const char *key) {
    const bl__json *v = member(rd, obj, key, BL_JSON_NUMBER);
    return v ? v->number : NAN;
}

static bool bool_member(reader *rd, const bl__json *obj, const char *key) {
    const bl__json *v = member(rd, obj, key, BL_JSON_BOOL);
    return v && v->boolean;
}

static bl_rng rng_member(reader *rd, const bl__json *obj, const char *key) {
    const bl__json *v = member(rd, obj, key, BL_JSON_ARRAY);
    bl_rng rng = {0, 0};
    const bl__json *a = v ? v->child : NULL, *b = a ? a->next : NULL;
    char *end_a = NULL, *end_b = NULL;
    if (a && b && a->type == BL_JSON_STRING && b->type == BL_JSON_STRING) {
        errno = 0;
        rng.key = strtoull(a->string, &end_a, 16);
        rng.counter = strtoull(b->string, &end_b, 16);
    }
    if (v && (!end_a || !end_b || *end_a || *end_b || errno)) {
        if (rd->ok) bl_set_error("%s: malformed trainer state: random stream \"%s\"", rd->path, key);
        rd->ok = false;
    }
    return rng;
}

/* An optimizer's settings and schedule; it is made anew with them (zeroed state, which the
 * checkpoint's optimizer file then fills), since a phase may have changed its kind. */
static void read_optimizer(reader *rd, const bl__json *o, bl__reg_optimizer *e) {
    bl_optim_config c = e->opt.cfg;
    bl_schedule *s = &e->schedule;
    e->origin = (int)int_member(rd, o, "origin");
    c.kind = (bl_optim_kind)int_member(rd, o, "kind");
    c.weight_decay = number_member(rd, o, "weight_decay");
    c.skip_no_weight_decay = bool_member(rd, o, "skip_no_weight_decay");
    c.momentum = number_member(rd, o, "momentum");
    c.dampening = number_member(rd, o, "dampening");
    c.nesterov = bool_member(rd, o, "nesterov");
    c.beta1 = number_member(rd, o, "beta1");
    c.beta2 = number_member(rd, o, "beta2");
    c.eps = number_member(rd, o, "eps");
    const bl__json *so = member(rd, o, "schedule", BL_JSON_OBJECT);
    s->kind = (bl_sched_kind)int_member(rd, so, "kind");
    s->base_lr = number_member(rd, so, "base_lr");
    s->gamma = number_member(rd, so, "gamma");
    s->t_max = number_member(rd, so, "t_max");
    s->eta_min = number_member(rd, so, "eta_min");
    s->warmup_epochs = number_member(rd, so, "warmup_epochs");
    s->warmup_start = number_member(rd, so, "warmup_start");
    const bl__json *ms = member(rd, so, "milestones", BL_JSON_ARRAY);
    s->n_milestones = 0;
    for (const bl__json *m = ms ? ms->child : NULL; m && s->n_milestones < BL_SCHED_MAX_MILESTONES; m = m->next)
        s->milestones[s->n_milestones++] = m->type == BL_JSON_NUMBER ? m->number : NAN;
    if (!rd->ok) return;
    c.lr = s->base_lr;
    bl_params *params = e->opt.params;
    bl_optimizer fresh;
    if (bl_optimizer_init(&fresh, params, c) != BL_OK) {
        char cause[512];
        snprintf(cause, sizeof cause, "%s", bl_last_error());
        bl_clear_error();
        bl_set_error("%s: optimizer '%s': %s", rd->path, e->name, cause);
        rd->ok = false;
        return;
    }
    bl_optimizer_free(&e->opt);
    e->opt = fresh;
}

/* requires_grad of a store's parameters: false for the listed names, true for the others. */
static void read_untrained(reader *rd, const bl__json *list, const char *owner, bl_params *ps) {
    if (!rd->ok) return;
    if (!list || list->type != BL_JSON_ARRAY) {
        bl_set_error("%s: malformed trainer state: no frozen list for '%s'", rd->path, owner);
        rd->ok = false;
        return;
    }
    for (int i = 0; i < ps->count; i++)
        if (ps->entries[i].trainable) ps->entries[i].tensor->requires_grad = true;
    for (const bl__json *n = list->child; n; n = n->next) {
        bl_tensor *t = n->type == BL_JSON_STRING ? bl_params_find(ps, n->string) : NULL;
        if (!t) {
            bl_set_error("%s: '%s' has no parameter %s", rd->path, owner, n->type == BL_JSON_STRING ? n->string : "?");
            rd->ok = false;
            return;
        }
        t->requires_grad = false;
    }
}

static int load_state(bl_run *run, const char *path, bool for_training) {
    size_t len = 0;
    char *text = bl_file_read(path, &len);
    if (!text) return BL_ERR;
    bl__json_pool pool = {0};
    char err[128];
    const bl__json *root = bl__json_parse(text, len, &pool, err, sizeof err);
    reader rd = {path, root != NULL};
    if (!root) bl_set_error("%s: malformed trainer state: %s", path, err);
    struct bl_run_registry *r = run->registry;
    int64_t epoch = int_member(&rd, root, "epoch"), step = int_member(&rd, root, "step");
    int64_t phase = int_member(&rd, root, "phase"), phase_epoch = int_member(&rd, root, "phase_epoch");
    if (rd.ok && (epoch < 0 || step < 0 || phase < 0 || phase > r->n_phases || phase_epoch < 0 ||
                  (phase < r->n_phases && phase_epoch > r->phases[phase].epochs))) {
        bl_set_error("%s: epoch %lld, step %lld, phase %lld (epoch %lld of it) do not fit this recipe's %d phases", path,
                     (long long)epoch, (long long)step, (long long)phase, (long long)phase_epoch, r->n_phases);
        rd.ok = false;
    }
    run->epoch = (int)epoch;
    run->step = step;
    run->finished = bool_member(&rd, root, "final");
    r->phase = (int)phase;
    r->phase_epoch = (int)phase_epoch;
    r->phase_begun = bool_member(&rd, root, "phase_begun");
    const bl__json *rngs = member(&rd, root, "rngs", BL_JSON_OBJECT);
    run->rng = rng_member(&rd, rngs, "run");
    for (int i = 0; i < r->n_rngs; i++) r->rngs[i]->rng = rng_member(&rd, rngs, r->rngs[i]->name);
    const bl__json *models = member(&rd, root, "models", BL_JSON_OBJECT);
    const bl__json *untrained = member(&rd, root, "untrained", BL_JSON_OBJECT);
    for (int i = 0; i < r->n_models; i++) {
        const bl__json *m = member(&rd, models, r->models[i]->name, BL_JSON_OBJECT);
        r->models[i]->frozen = bool_member(&rd, m, "frozen");
        r->models[i]->model->head_drop.rng = rng_member(&rd, m, "dropout");
        read_untrained(&rd, untrained ? bl__json_get(untrained, r->models[i]->name) : NULL, r->models[i]->name,
                       &r->models[i]->model->params);
    }
    for (int i = 0; i < r->n_stores; i++)
        read_untrained(&rd, untrained ? bl__json_get(untrained, r->stores[i]->name) : NULL, r->stores[i]->name,
                       &r->stores[i]->params);
    const bl__json *optimizers = member(&rd, root, "optimizers", BL_JSON_OBJECT);
    for (int i = 0; for_training && i < r->n_optimizers; i++)
        read_optimizer(&rd, member(&rd, optimizers, r->optimizers[i]->name, BL_JSON_OBJECT), r->optimizers[i]);
    const bl__json *sampler = member(&rd, root, "sampler", BL_JSON_STRING);
    char kind[64] = "";
    if (sampler) snprintf(kind, sizeof kind, "%s", sampler->string);
    bl__json_pool_free(&pool);
    free(text);
    if (!rd.ok) return BL_ERR;
    if (for_training && *kind && (!r->sampler || strcmp(kind, r->sampler_name) != 0))
        BL_TRY(bl_run_set_sampler(run, kind));
    return BL_OK;
}

/* ---- the checkpoint's files ------------------------------------------------------------------- */

static void file_in(char *buf, size_t len, const char *dir, const char *name, const char *suffix) {
    snprintf(buf, len, "%s/%s%s", dir, name, suffix);
}

int bl__registry_save(const bl_run *run, const char *dir, bool final) {
    const struct bl_run_registry *r = run->registry;
    char path[800], epoch_text[32];
    snprintf(epoch_text, sizeof epoch_text, "%d", run->epoch);
    for (int i = 0; i < r->n_models; i++) {
        const char *meta[] = {"method", run->recipe->name, "model", r->models[i]->model->name, "epoch", epoch_text, NULL};
        file_in(path, sizeof path, dir, r->models[i]->name, ".safetensors");
        BL_TRY(bl_params_save(&r->models[i]->model->params, path, meta));
    }
    for (int i = 0; i < r->n_stores; i++) {
        const char *meta[] = {"method", run->recipe->name, "epoch", epoch_text, NULL};
        file_in(path, sizeof path, dir, r->stores[i]->name, ".params.safetensors");
        BL_TRY(bl_params_save(&r->stores[i]->params, path, meta));
    }
    for (int i = 0; i < r->n_optimizers; i++) {
        file_in(path, sizeof path, dir, r->optimizers[i]->name, ".optimizer.safetensors");
        BL_TRY(bl_optimizer_save(&r->optimizers[i]->opt, path));
    }
    file_in(path, sizeof path, dir, "state", ".json");
    return write_state(run, path, final);
}

int bl__registry_load(bl_run *run, const char *dir, bool for_training) {
    const struct bl_run_registry *r = run->registry;
    char path[800];
    for (int i = 0; i < r->n_models; i++) {
        file_in(path, sizeof path, dir, r->models[i]->name, ".safetensors");
        BL_TRY(bl_params_load(&r->models[i]->model->params, path, true));
    }
    for (int i = 0; i < r->n_stores; i++) {
        file_in(path, sizeof path, dir, r->stores[i]->name, ".params.safetensors");
        BL_TRY(bl_params_load(&r->stores[i]->params, path, true));
    }
    file_in(path, sizeof path, dir, "state", ".json");
    BL_TRY(load_state(run, path, for_training));
    for (int i = 0; for_training && i < r->n_optimizers; i++) {
        file_in(path, sizeof path, dir, r->optimizers[i]->name, ".optimizer.safetensors");
        BL_TRY(bl_optimizer_load(&r->optimizers[i]->opt, path));
    }
    return BL_OK;
}
