/* What training steps share: the one place where a loss meets the labels, so batch mixing (mixup,
 * cutmix) applies to every recipe, and the common step (zero-grad, backward, all-reduce of the
 * gradients over the processes of a data-parallel job, clip, every optimizer), with what keeps
 * the processes' replicas identical: averaged buffers and a check that compares them. */
#include "train_internal.h"

#include "core/internal.h"

#include "ballast/dist.h"
#include "ballast/profile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

bl_tensor *bl_batch_label_loss(bl_batch *b, bl_tensor *logits, bl_label_loss_fn fn, const void *ctx) {
    BL_CHECK(b && fn, "bl_batch_label_loss: NULL argument");
    bl_tensor *y = bl_batch_get(b, "y"), *partner = bl_batch_get(b, "y_mix");
    BL_CHECK(y, "bl_batch_label_loss: the batch has no labels (field \"y\")");
    BL_NONNULL(logits);
    if (!partner) return fn(logits, y, ctx);
    b->mix_used = true;
    const double lam = b->mix_lam;
    return bl_add(bl_mul_scalar(fn(logits, y, ctx), lam), bl_mul_scalar(fn(logits, partner, ctx), 1.0 - lam));
}

static bl_tensor *cross_entropy(bl_tensor *logits, bl_tensor *y, const void *args) {
    return bl_cross_entropy(logits, y, *(const bl_ce_args *)args);
}

bl_tensor *bl_batch_cross_entropy(bl_batch *b, bl_tensor *logits, bl_ce_args args) {
    return bl_batch_label_loss(b, logits, cross_entropy, &args);
}

static void zero_grads(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    for (int i = 0; i < r->n_models; i++) bl_params_zero_grad(&r->models[i]->model->params);
    for (int i = 0; i < r->n_stores; i++)
        if (r->stores[i]->params.finalized) bl_params_zero_grad(&r->stores[i]->params);
}

/* ---- data parallelism -------------------------------------------------------------------------- */

double bl__shard_weight(const bl_run *run) {
    const struct bl_run_registry *r = run->registry;
    if (bl_dist_size() == 1 || r->batch_rows <= 0) return 1.0;
    return (double)r->shard_rows / (double)r->batch_rows;
}

/* True when some parameter of the store is trained now (all processes agree: same state). */
static bool has_trained(const bl_params *ps) {
    for (int i = 0; ps->finalized && i < ps->count; i++)
        if (ps->entries[i].trainable && ps->entries[i].tensor->requires_grad) return true;
    return false;
}

/* The registered stores (every model's, then the recipe's own) one by one; NULL after the last. */
static bl_params *store_at(const struct bl_run_registry *r, int k) {
    if (k < r->n_models) return &r->models[k]->model->params;
    return k < r->n_models + r->n_stores ? &r->stores[k - r->n_models]->params : NULL;
}

/* Sums every trained store's gradient block over the processes: one all-reduce per store. */
static int sum_grads(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    double t0 = bl_now();
    bl_params *ps;
    for (int k = 0; (ps = store_at(r, k)); k++)
        if (has_trained(ps) && bl_dist_allreduce_f32(ps->grad, ps->numel, BL_DIST_SUM) != BL_OK)
            return bl__add_context("all-reduce of the gradients");
    r->allreduce_seconds += bl_now() - t0;
    return BL_OK;
}

int bl_run_allreduce_grads(bl_run *run) {
    BL_CHECK_RC(run && run->registry, "bl_run_allreduce_grads: NULL run");
    if (bl_dist_size() == 1) return BL_OK;
    BL_TRY(bl_dist_agree(BL_OK));
    const float w = (float)bl__shard_weight(run);
    bl_params *ps;
    for (int k = 0; (ps = store_at(run->registry, k)); k++)
        for (size_t i = 0; has_trained(ps) && i < ps->numel; i++) ps->grad[i] *= w;
    return sum_grads(run);
}

/* Calls fn on every F32 buffer of every registered model, in registration order. */
static void for_each_model_buffer(const bl_run *run, void (*fn)(bl_tensor *t, void *user), void *user) {
    const struct bl_run_registry *r = run->registry;
    for (int i = 0; i < r->n_models; i++) {
        const bl_params *ps = &r->models[i]->model->params;
        for (int k = 0; k < ps->count; k++)
            if (!ps->entries[k].trainable && ps->entries[k].tensor->dtype == BL_F32) fn(ps->entries[k].tensor, user);
    }
}

typedef struct {
    double *values;
    size_t n;
    double weight;
    bool write_back;
} buffer_pack;

static void pack_buffer(bl_tensor *t, void *user) {
    buffer_pack *p = user;
    float *data = t->data;
    for (int64_t i = 0; i < bl_numel(t); i++, p->n++) {
        if (p->write_back) data[i] = (float)(p->values[p->n] * p->weight);
        else if (p->values) p->values[p->n] = (double)data[i] * p->weight;
    }
}

int bl__average_buffers_and_loss(bl_run *run, double *loss) {
    struct bl_run_registry *r = run->registry;
    if (bl_dist_size() == 1) return BL_OK;
    /* In doubles, each process's values times its sample count, summed, then divided by the
     * batch's count: values that are the same everywhere (frozen models, synchronized batch-norm
     * statistics) come back bit for bit. */
    buffer_pack p = {0};
    for_each_model_buffer(run, pack_buffer, &p);
    const size_t n = p.n + 1;
    double *values = malloc(n * sizeof *values);
    BL_CHECK_RC(values, "out of memory averaging the buffers over the processes");
    p = (buffer_pack){.values = values, .weight = (double)r->shard_rows};
    for_each_model_buffer(run, pack_buffer, &p);
    values[p.n] = *loss * (double)r->shard_rows;
    int rc = bl_dist_allreduce_f64(values, n, BL_DIST_SUM);
    if (rc == BL_OK) {
        p = (buffer_pack){.values = values, .weight = 1.0 / (double)r->batch_rows, .write_back = true};
        for_each_model_buffer(run, pack_buffer, &p);
        *loss = values[p.n] / (double)r->batch_rows;
    }
    free(values);
    /* A batch that the processes split unevenly made streams drawn per sample (dropout, a
     * recipe's own) advance by different amounts: the first process's go everywhere. */
    if (rc == BL_OK && r->batch_rows % bl_dist_size() != 0) {
        rc = bl_dist_broadcast(&run->rng, sizeof run->rng, 0);
        for (int i = 0; rc == BL_OK && i < r->n_rngs; i++) rc = bl_dist_broadcast(&r->rngs[i]->rng, sizeof(bl_rng), 0);
        for (int i = 0; rc == BL_OK && i < r->n_models; i++)
            rc = bl_dist_broadcast(&r->models[i]->model->head_drop.rng, sizeof(bl_rng), 0);
    }
    return rc;
}

static uint64_t fnv1a(uint64_t h, const void *data, size_t n) {
    const unsigned char *b = data;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* One hash per registered tensor and per optimizer state block, in a fixed order; with names
 * (when `names` is given) for the message. Returns the count. */
static size_t replica_hashes(const bl_run *run, int64_t *hashes, const char **owners, const char **names) {
    const struct bl_run_registry *r = run->registry;
    size_t n = 0;
    const bl_params *ps;
    for (int k = 0; (ps = store_at(r, k)); k++) {
        const char *owner = k < r->n_models ? r->models[k]->name : r->stores[k - r->n_models]->name;
        for (int i = 0; i < ps->count; i++, n++) {
            if (hashes) hashes[n] = (int64_t)fnv1a(1469598103934665603ull, ps->entries[i].tensor->data,
                                                   bl_nbytes(ps->entries[i].tensor));
            if (names) owners[n] = owner, names[n] = ps->entries[i].name;
        }
    }
    for (int i = 0; i <= r->n_rngs + r->n_models; i++, n++) {
        const bl_rng *rng = i == 0 ? &run->rng
                            : i <= r->n_rngs ? &r->rngs[i - 1]->rng
                                             : &r->models[i - 1 - r->n_rngs]->model->head_drop.rng;
        if (hashes) hashes[n] = (int64_t)fnv1a(1469598103934665603ull, rng, sizeof *rng);
        if (names) {
            owners[n] = i == 0 ? "run" : i <= r->n_rngs ? r->rngs[i - 1]->name : r->models[i - 1 - r->n_rngs]->name;
            names[n] = i == 0 || i <= r->n_rngs ? "random stream" : "dropout stream";
        }
    }
    for (int i = 0; i < r->n_optimizers; i++) {
        const bl_optimizer *o = &r->optimizers[i]->opt;
        for (int b = 0; b < 2; b++, n++) {
            const float *state = b == 0 ? o->state1 : o->state2;
            if (hashes) hashes[n] = state ? (int64_t)fnv1a(1469598103934665603ull, state,
                                                           o->params->numel * sizeof *state) : 0;
            if (names) owners[n] = r->optimizers[i]->name, names[n] = b == 0 ? "optimizer state 1" : "optimizer state 2";
        }
    }
    return n;
}

int bl__check_replicas(const bl_run *run) {
    if (bl_dist_size() == 1) return BL_OK;
    const size_t n = replica_hashes(run, NULL, NULL, NULL);
    int64_t *low = malloc(2 * (n + 1) * sizeof *low), *high = low ? low + n + 1 : NULL;
    const char **owners = malloc((n + 1) * sizeof *owners), **names = malloc((n + 1) * sizeof *names);
    int rc = low && owners && names ? BL_OK : BL_ERR;
    if (rc != BL_OK) bl_set_error("out of memory comparing the processes' state");
    if (rc == BL_OK) {
        replica_hashes(run, low, owners, names);
        memcpy(high, low, n * sizeof *low);
        rc = bl_dist_allreduce_i64(low, n, BL_DIST_MIN);
        if (rc == BL_OK) rc = bl_dist_allreduce_i64(high, n, BL_DIST_MAX);
    }
    for (size_t i = 0; rc == BL_OK && i < n; i++)
        if (low[i] != high[i]) {
            bl_set_error("'%s' %s differs between the processes at epoch %d: a recipe that changes a store, a "
                         "buffer or a random stream from its own share of the batch must make the processes agree "
                         "(ballast/dist.h)",
                         owners[i], names[i], run->epoch);
            rc = BL_ERR;
        }
    free(low);
    free(owners);
    free(names);
    return rc;
}

/* ---- the common step --------------------------------------------------------------------------- */

int bl_run_backward_step(bl_run *run, bl_tensor *loss, double *loss_value) {
    BL_CHECK_RC(run && run->registry && loss_value, "bl_run_backward_step: NULL argument");
    const bool parallel = bl_dist_size() > 1;
    int rc = loss ? BL_OK : BL_ERR; /* NULL: the loss's own error */
    if (rc == BL_OK && bl_numel(loss) != 1) {
        bl_set_error("recipe %s: the loss must be a scalar, got %s", run->recipe->name, bl__shape(loss));
        rc = BL_ERR;
    }
    const double v = rc == BL_OK ? bl_item(loss) : NAN;
    *loss_value = v;
    const struct bl_run_registry *r = run->registry;
    const double lr = r->n_optimizers ? r->optimizers[0]->opt.cfg.lr : NAN;
    if (rc == BL_OK && !isfinite(v)) {
        bl_set_error("loss is %g at epoch %d, step %lld (lr %g): training diverged", v, run->epoch + 1,
                     (long long)run->step + 1, lr);
        rc = BL_ERR;
    }
    /* Every process has its loss (or its failure) before any of them starts the backward, whose
     * all-reduces would otherwise wait for one that never comes. */
    if (parallel) rc = bl_dist_agree(rc);
    if (rc != BL_OK) return BL_ERR;
    zero_grads(run);
    /* Each process's gradient is weighted by its share of the batch, so that their sum is the
     * gradient of the whole batch's loss (and synchronized batch norm sums the same weighted
     * gradients). */
    const double w = bl__shard_weight(run);
    BL_TRY(bl_backward(w == 1.0 ? loss : bl_mul_scalar(loss, w)));
    if (parallel) BL_TRY(sum_grads(run));
    const double clip = bl_config_float(run->config, "train.clip_grad_norm");
    for (int i = 0; i < r->n_optimizers; i++) {
        if (clip > 0) {
            double norm = bl_clip_grad_norm(r->optimizers[i]->opt.params, clip, 2.0);
            BL_CHECK_RC(isfinite(norm), "gradient norm of optimizer '%s' is %g at epoch %d, step %lld",
                        r->optimizers[i]->name, norm, run->epoch + 1, (long long)run->step + 1);
        }
        BL_TRY(bl_optimizer_step(&r->optimizers[i]->opt));
    }
    return BL_OK;
}
