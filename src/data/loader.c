/* The training loader: a background thread turns the epoch's order into batches of a source, two
 * buffers deep, while the caller trains on the previous batch. The caller copies a finished
 * buffer into step-arena tensors (the arena belongs to the caller's thread; the worker never
 * touches it) and hands the buffer back. Each sample's randomness comes from its own stream keyed
 * by (seed, epoch, position in the epoch), so batches do not depend on thread timing. A sharded
 * loader (one process of a data-parallel job) walks the same global order and batches and yields
 * only its process's rows of each batch, with the streams of their global positions. */
#include "ballast/data.h"

#include "core/internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct bl_loader {
    bl_source src;
    bool owns_source;        /* made by bl_loader_create: released with the loader */
    bl_sampler *sampler;     /* NULL: sequential order */
    int64_t batch, n, n_batches;
    int rank, world;         /* this process's share of every batch: 0 and 1 when not sharded */
    uint64_t seed;
    int64_t *order;          /* the epoch's dataset indices, n entries */
    bl_rng *rngs;            /* the worker's per-sample streams, batch entries */
    int epoch;
    bool started;
    bl_host_batch buf[2];    /* the two batch buffers */
    int64_t held[2];         /* batch index a buffer holds, -1 when free */
    int64_t next_fill, next_take;
    bool busy, stop, failed;
    char error[1024];        /* the worker's error message, handed to the caller's thread */
    pthread_t thread;
    pthread_mutex_t lock;
    pthread_cond_t changed;
};

static int64_t batch_rows(const bl_loader *l, int64_t b) {
    int64_t rest = l->n - b * l->batch;
    return rest < l->batch ? rest : l->batch;
}

/* This process's rows of batch b: [*first, *first + return value) of the batch's global rows. */
static int64_t shard_rows(const bl_loader *l, int64_t b, int64_t *first) {
    const int64_t rows = batch_rows(l, b);
    *first = rows * l->rank / l->world;
    return rows * (l->rank + 1) / l->world - *first;
}

/* Runs on the worker thread: the source's samples of batch b into buffer `slot`. */
static int fill_batch(bl_loader *l, int64_t b, int slot) {
    bl_host_batch *out = &l->buf[slot];
    bl_host_batch_reset(out);
    int64_t first;
    const int64_t rows = shard_rows(l, b, &first), *idx = l->order + b * l->batch + first;
    for (int64_t i = 0; i < rows; i++) l->rngs[i] = bl_augment_stream(l->seed, l->epoch, b * l->batch + first + i);
    if (l->src.collate) {
        BL_TRY(l->src.collate(l->src.self, idx, rows, l->rngs, out));
        out->size = rows;
    } else {
        for (int64_t i = 0; i < rows; i++) {
            BL_TRY(l->src.get(l->src.self, idx[i], &l->rngs[i], out));
            out->size++;
        }
    }
    for (int f = 0; f < out->n_fields; f++)
        BL_CHECK_RC(out->fields[f].variable || out->fields[f].shape[0] == rows,
                    "source: field '%s' has %lld entries for a batch of %lld samples", out->fields[f].name,
                    (long long)out->fields[f].shape[0], (long long)rows);
    return BL_OK;
}

static void *worker(void *arg) {
    bl_loader *l = arg;
    pthread_mutex_lock(&l->lock);
    for (;;) {
        while (!l->stop && (!l->started || l->failed || l->next_fill >= l->n_batches || l->held[l->next_fill % 2] >= 0))
            pthread_cond_wait(&l->changed, &l->lock);
        if (l->stop) break;
        int64_t b = l->next_fill;
        int slot = (int)(b % 2);
        l->busy = true;
        pthread_mutex_unlock(&l->lock);
        int rc = fill_batch(l, b, slot);
        pthread_mutex_lock(&l->lock);
        l->busy = false;
        if (rc == BL_OK) {
            l->held[slot] = b;
            l->next_fill++;
        } else {
            l->failed = true;
            snprintf(l->error, sizeof l->error, "%s", bl_last_error());
            bl_clear_error();
        }
        pthread_cond_broadcast(&l->changed);
    }
    pthread_mutex_unlock(&l->lock);
    return NULL;
}

bl_loader *bl_loader_create_source(const bl_source *src, bl_sampler *sampler, int64_t batch, bool drop_last,
                                   uint64_t seed) {
    BL_CHECK(src && src->length && (src->get || src->collate), "loader: the source needs a length and get or collate");
    BL_CHECK(batch > 0, "loader: batch size must be positive, got %lld", (long long)batch);
    const int64_t n = src->length(src->self);
    BL_CHECK(n >= 0, "loader: the source has %lld samples", (long long)n);
    bl_loader *l = calloc(1, sizeof *l);
    BL_CHECK(l, "out of memory creating a loader");
    l->src = *src;
    l->sampler = sampler;
    l->batch = batch;
    l->n = n;
    l->n_batches = drop_last ? l->n / batch : (l->n + batch - 1) / batch;
    l->seed = seed;
    l->world = 1;
    l->held[0] = l->held[1] = -1;
    l->order = malloc((size_t)(l->n ? l->n : 1) * sizeof *l->order);
    l->rngs = malloc((size_t)batch * sizeof *l->rngs);
    bool ok = l->order && l->rngs;
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->changed, NULL);
    if (!ok || pthread_create(&l->thread, NULL, worker, l) != 0) {
        free(l->order);
        free(l->rngs);
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->changed);
        free(l);
        bl_set_error(ok ? "loader: cannot start its thread" : "out of memory creating a loader (batch %lld)",
                     (long long)batch);
        return NULL;
    }
    return l;
}

bl_loader *bl_loader_create(const bl_dataset *ds, bl_sampler *sampler, int64_t batch, bool drop_last,
                            const bl_augment *aug, uint64_t seed) {
    bl_source src;
    if (bl_image_source(ds, aug, &src) != BL_OK) return NULL;
    bl_loader *l = bl_loader_create_source(&src, sampler, batch, drop_last, seed);
    if (!l) {
        bl_source_free(&src);
        return NULL;
    }
    l->owns_source = true;
    return l;
}

int bl_loader_shard(bl_loader *l, int rank, int size) {
    BL_CHECK_RC(l, "no loader");
    BL_CHECK_RC(size >= 1 && rank >= 0 && rank < size, "loader: rank %d of %d processes", rank, size);
    pthread_mutex_lock(&l->lock);
    const bool started = l->started;
    pthread_mutex_unlock(&l->lock);
    BL_CHECK_RC(!started, "loader: shard it before its first epoch");
    const int64_t last = l->n_batches ? batch_rows(l, l->n_batches - 1) : size;
    BL_CHECK_RC(last >= size,
                "loader: the last batch of an epoch holds %lld samples, too few to give each of %d processes one "
                "(drop the last partial batch)",
                (long long)last, size);
    l->rank = rank;
    l->world = size;
    return BL_OK;
}

int64_t bl_loader_batch_rows(const bl_loader *l, int64_t b) {
    return l && b >= 0 && b < l->n_batches ? batch_rows(l, b) : 0;
}

int bl_loader_start_epoch(bl_loader *l, int epoch, int total_epochs) {
    BL_CHECK_RC(l, "no loader");
    pthread_mutex_lock(&l->lock);
    /* A batch in flight belongs to the previous epoch: let it finish before the order changes. */
    while (l->busy) pthread_cond_wait(&l->changed, &l->lock);
    int rc = BL_OK;
    if (l->sampler) {
        rc = bl_sampler_epoch(l->sampler, epoch, total_epochs, l->order, l->n);
    } else {
        for (int64_t i = 0; i < l->n; i++) l->order[i] = i;
    }
    l->epoch = epoch;
    l->next_fill = l->next_take = 0;
    l->held[0] = l->held[1] = -1;
    l->failed = false;
    l->started = rc == BL_OK;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    return rc;
}

bool bl_loader_next(bl_loader *l, bl_batch *out) {
    memset(out, 0, sizeof *out);
    if (!l) {
        bl_set_error("no loader");
        return false;
    }
    pthread_mutex_lock(&l->lock);
    if (!l->started || l->next_take >= l->n_batches) {
        bool started = l->started;
        pthread_mutex_unlock(&l->lock);
        if (!started) bl_set_error("loader: bl_loader_start_epoch was not called");
        return false;
    }
    int64_t b = l->next_take;
    int slot = (int)(b % 2);
    while (l->held[slot] != b && !l->failed) pthread_cond_wait(&l->changed, &l->lock);
    if (l->held[slot] != b) {
        char message[1024];
        snprintf(message, sizeof message, "%s", l->error);
        pthread_mutex_unlock(&l->lock);
        bl_set_error("loader, epoch %d batch %lld: %s", l->epoch, (long long)b, message);
        return false;
    }
    pthread_mutex_unlock(&l->lock);
    /* The worker leaves a held buffer alone, so it is read here without the lock; the order only
     * changes in bl_loader_start_epoch, on this thread. */
    const bl_host_batch *hb = &l->buf[slot];
    int64_t first, rows = shard_rows(l, b, &first);
    out->size = rows;
    bool ok = true;
    for (int f = 0; ok && f < hb->n_fields; f++) {
        const bl_host_field *hf = &hb->fields[f];
        bl_tensor *value = bl_from_data(hf->dtype, hf->ndim, hf->shape, hf->data);
        bl_tensor *lengths = hf->variable ? bl_from_data(BL_I64, 1, &rows, hf->lengths) : NULL;
        ok = value && (!hf->variable || lengths) && bl_batch_set(out, hf->name, value, lengths) == BL_OK;
    }
    bl_tensor *index = ok ? bl_from_data(BL_I64, 1, &rows, l->order + b * l->batch + first) : NULL;
    ok = ok && index && bl_batch_set(out, "index", index, NULL) == BL_OK;
    pthread_mutex_lock(&l->lock);
    l->held[slot] = -1;
    l->next_take++;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    return ok;
}

int64_t bl_loader_batches(const bl_loader *l) { return l ? l->n_batches : 0; }

void bl_loader_free(bl_loader *l) {
    if (!l) return;
    pthread_mutex_lock(&l->lock);
    l->stop = true;
    pthread_cond_broadcast(&l->changed);
    pthread_mutex_unlock(&l->lock);
    pthread_join(l->thread, NULL);
    pthread_mutex_destroy(&l->lock);
    pthread_cond_destroy(&l->changed);
    for (int s = 0; s < 2; s++) bl_host_batch_free(&l->buf[s]);
    if (l->owns_source) bl_source_free(&l->src);
    free(l->order);
    free(l->rngs);
    free(l);
}
