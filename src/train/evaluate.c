/* Evaluation: the evaluator kinds (classification, regression), their registry, and the pass that
 * feeds a recipe's predictions over a dataset into one. */
#include "train_internal.h"

#include "core/internal.h"
#include "io/json.h"

#include "ballast/regression.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define EVAL_LOADER_SEED 0

/* ---- classification: bl_metrics ------------------------------------------------------------- */

typedef struct {
    bl_metrics m;
    const int64_t *train_counts; /* the run's, for the many/medium/few groups */
    bl_metrics_summary summary;
    bool summarized;
} classification;

static void *classification_create(const bl_run *run) {
    classification *c = calloc(1, sizeof *c);
    BL_CHECK(c, "out of memory");
    if (bl_metrics_init(&c->m, run->num_classes) != BL_OK) {
        free(c);
        return NULL;
    }
    c->train_counts = run->class_counts;
    return c;
}

static int classification_add(void *self, const bl_tensor *logits, const bl_batch *batch) {
    classification *c = self;
    const bl_tensor *y = bl_batch_get(batch, "y");
    BL_CHECK_RC(y, "classification evaluator: the batch has no labels (field \"y\")");
    c->summarized = false;
    return bl_metrics_add(&c->m, logits, y);
}

static const bl_metrics_summary *summary_of(classification *c) {
    if (!c->summarized && bl_metrics_summarize(&c->m, c->train_counts, &c->summary) != BL_OK) return NULL;
    c->summarized = true;
    return &c->summary;
}

static double classification_metric(void *self, const char *name) {
    const bl_metrics_summary *s = summary_of(self);
    if (!s) return NAN;
    const struct { const char *name; double value; } values[] = {
        {"top1", s->top1}, {"top5", s->top5}, {"many", s->many}, {"medium", s->medium}, {"few", s->few},
        {"macro_precision", s->macro_precision}, {"macro_recall", s->macro_recall}, {"ece", s->ece},
    };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        if (strcmp(values[i].name, name) == 0) return values[i].value;
    return NAN;
}

/* bl_metrics_json writes a whole object; the evaluator hands out its members. */
static char *classification_json(void *self) {
    const bl_metrics_summary *s = summary_of(self);
    char *object = s ? bl_metrics_json(s, NULL) : NULL;
    if (!object) return NULL;
    size_t n = strlen(object);
    memmove(object, object + 1, n - 2);
    object[n - 2] = '\0';
    return object;
}

static void classification_free(void *self) {
    classification *c = self;
    if (!c) return;
    bl_metrics_free(&c->m);
    free(c);
}

static const char *const classification_metrics[] = {"top1", "top5", "many", "medium", "few",
                                                      "macro_precision", "macro_recall", "ece", NULL};

static const bl_evaluator_kind classification_kind = {
    .name = "classification",
    .metrics = classification_metrics,
    .create = classification_create,
    .add = classification_add,
    .metric = classification_metric,
    .json = classification_json,
    .free = classification_free,
};

/* ---- regression: scores against the batch's "score" --------------------------------------------- */

typedef struct {
    double *pred, *target;
    int64_t n, cap;
    bl_regression_metrics result;
    bool computed, failed;
} regression;

static void *regression_create(const bl_run *run) {
    (void)run;
    regression *r = calloc(1, sizeof *r);
    BL_CHECK(r, "out of memory");
    return r;
}

static int regression_add(void *self, const bl_tensor *pred, const bl_batch *batch) {
    regression *r = self;
    const bl_tensor *score = bl_batch_get(batch, "score");
    BL_CHECK_RC(score, "regression evaluator: the batch has no target scores (field \"score\")");
    BL_CHECK_RC(pred && bl_numel(pred) == batch->size && bl_numel(score) == batch->size,
                "regression evaluator: predictions %s and scores %s must hold one value per sample (%lld)",
                bl__shape(pred), bl__shape(score), (long long)batch->size);
    if (r->n + batch->size > r->cap) {
        int64_t cap = r->cap ? 2 * r->cap : 1024;
        while (cap < r->n + batch->size) cap *= 2;
        double *p = realloc(r->pred, (size_t)cap * sizeof *p);
        if (p) r->pred = p;
        double *t = p ? realloc(r->target, (size_t)cap * sizeof *t) : NULL;
        if (t) r->target = t;
        BL_CHECK_RC(p && t, "regression evaluator: out of memory");
        r->cap = cap;
    }
    for (int64_t i = 0; i < batch->size; i++) {
        r->pred[r->n + i] = bl_get_flat(pred, i);
        r->target[r->n + i] = bl_get_flat(score, i);
    }
    r->n += batch->size;
    r->computed = false;
    return BL_OK;
}

static const bl_regression_metrics *result_of(regression *r) {
    if (!r->computed) {
        r->failed = bl_regression_metrics_compute(r->pred, r->target, r->n, &r->result) != BL_OK;
        r->computed = true;
    }
    return r->failed ? NULL : &r->result;
}

static double regression_metric(void *self, const char *name) {
    const bl_regression_metrics *m = result_of(self);
    if (!m) return NAN;
    const struct { const char *name; double value; } values[] = {
        {"srcc", m->srcc}, {"plcc", m->plcc}, {"krcc", m->krcc}, {"rmse", m->rmse}, {"plcc_raw", m->plcc_raw},
    };
    for (size_t i = 0; i < sizeof values / sizeof values[0]; i++)
        if (strcmp(values[i].name, name) == 0) return values[i].value;
    return NAN;
}

static char *regression_json(void *self) {
    regression *r = self;
    const bl_regression_metrics *m = result_of(r);
    if (!m) return NULL;
    bl__text t = {0};
    bl__text_printf(&t,
                    "\"count\":%lld,\"srcc\":%.9g,\"plcc\":%.9g,\"krcc\":%.9g,\"rmse\":%.9g,\"plcc_raw\":%.9g,"
                    "\"logistic\":[%.9g,%.9g,%.9g,%.9g]",
                    (long long)r->n, m->srcc, m->plcc, m->krcc, m->rmse, m->plcc_raw, m->logistic[0], m->logistic[1],
                    m->logistic[2], m->logistic[3]);
    if (t.failed) {
        bl__text_free(&t);
        BL_CHECK(false, "out of memory");
    }
    return t.data;
}

static void regression_free(void *self) {
    regression *r = self;
    if (!r) return;
    free(r->pred);
    free(r->target);
    free(r);
}

static const char *const regression_metrics[] = {"srcc", "plcc", "krcc", "rmse", "plcc_raw", NULL};

static const bl_evaluator_kind regression_kind = {
    .name = "regression",
    .metrics = regression_metrics,
    .create = regression_create,
    .add = regression_add,
    .metric = regression_metric,
    .json = regression_json,
    .free = regression_free,
};

/* ---- the registry of kinds ---------------------------------------------------------------------- */

#define MAX_KINDS 32
static const bl_evaluator_kind *kinds[MAX_KINDS] = {&classification_kind, &regression_kind};
static int n_kinds = 2;

int bl_evaluator_register(const bl_evaluator_kind *kind) {
    BL_CHECK_RC(kind && kind->name && kind->metrics && kind->metrics[0] && kind->create && kind->add && kind->metric &&
                    kind->json && kind->free,
                "bl_evaluator_register: an evaluator kind needs a name, metrics and every function");
    for (int i = 0; i < n_kinds; i++) {
        if (kinds[i] == kind) return BL_OK;
        BL_CHECK_RC(strcmp(kinds[i]->name, kind->name) != 0, "evaluator '%s' is registered twice", kind->name);
    }
    BL_CHECK_RC(n_kinds < MAX_KINDS, "evaluator '%s': at most %d kinds", kind->name, MAX_KINDS);
    kinds[n_kinds++] = kind;
    return BL_OK;
}

const bl_evaluator_kind *bl_evaluator_find(const char *name) {
    BL_CHECK(name, "bl_evaluator_find: NULL name");
    for (int i = 0; i < n_kinds; i++)
        if (strcmp(kinds[i]->name, name) == 0) return kinds[i];
    bl_set_error("unknown evaluator '%s'", name);
    return NULL;
}

double bl_evaluator_metric(const bl_evaluator *e, const char *metric) {
    return e && e->kind && e->self && metric ? e->kind->metric(e->self, metric) : NAN;
}

const char *bl_evaluator_primary(const bl_evaluator *e, double *value) {
    if (!e || !e->kind) return NULL;
    if (value) *value = bl_evaluator_metric(e, e->kind->metrics[0]);
    return e->kind->metrics[0];
}

char *bl_evaluator_json(const bl_evaluator *e) {
    BL_CHECK(e && e->kind && e->self, "bl_evaluator_json: no evaluation");
    return e->kind->json(e->self);
}

void bl_evaluator_free(bl_evaluator *e) {
    if (e && e->kind && e->self) e->kind->free(e->self);
    if (e) e->self = NULL;
}

bl_metrics *bl_evaluator_classification(const bl_evaluator *e) {
    return e && e->kind == &classification_kind && e->self ? &((classification *)e->self)->m : NULL;
}

/* ---- evaluating a run ------------------------------------------------------------------------ */

int bl_run_for_each_batch(bl_run *run, const char *split, bl_batch_fn fn, void *user) {
    BL_CHECK_RC(run && run->registry && fn, "bl_run_for_each_batch: NULL argument");
    const bl_source *src = bl__split_source(run, split);
    if (!src) return BL_ERR;
    if (!src->length || src->length(src->self) == 0) return BL_OK;
    bl_loader *l = bl_loader_create_source(src, NULL, bl_config_int(run->config, "train.eval_batch_size"), false,
                                           EVAL_LOADER_SEED);
    if (!l || bl_loader_start_epoch(l, 0, 1) != BL_OK) {
        bl_loader_free(l);
        return BL_ERR;
    }
    bool grad = bl_set_grad_enabled(false);
    bl_run_set_training(run, false);
    int rc = BL_OK;
    int64_t batches = 0;
    for (;;) {
        bl_scope scope = bl_scope_begin();
        bl_batch batch;
        bool more = bl_loader_next(l, &batch);
        if (more) {
            rc = fn(run, &batch, user);
            batches++;
        }
        bl_scope_end(scope);
        if (!more || rc != BL_OK) break;
    }
    if (rc == BL_OK && batches != bl_loader_batches(l)) rc = BL_ERR; /* the loader stopped early: its error */
    bl_run_set_training(run, true);
    bl_set_grad_enabled(grad);
    bl_loader_free(l);
    return rc;
}

static int evaluate_batch(bl_run *run, bl_batch *batch, void *user) {
    bl_evaluator *e = user;
    bl_tensor *prediction = run->recipe->predict(run, run->recipe_state, batch);
    return prediction ? e->kind->add(e->self, prediction, batch) : BL_ERR;
}

int bl_run_evaluate(bl_run *run, const char *split, bl_evaluator *out) {
    BL_CHECK_RC(run && split && out, "bl_run_evaluate: NULL argument");
    memset(out, 0, sizeof *out);
    out->kind = bl_evaluator_find(run->recipe->evaluator ? run->recipe->evaluator : "classification");
    if (!out->kind) return bl__add_context("recipe %s", run->recipe->name);
    out->self = out->kind->create(run);
    if (!out->self) return BL_ERR;
    if (bl_run_for_each_batch(run, split, evaluate_batch, out) != BL_OK) {
        bl_evaluator_free(out);
        return bl__add_context("recipe %s: evaluation", run->recipe->name);
    }
    return BL_OK;
}
