/* The training loader: a background thread turns the epoch's order into augmented batches, two
 * buffers deep, while the caller trains on the previous batch. The caller copies a finished
 * buffer into step-arena tensors (the arena belongs to the caller's thread; the worker never
 * touches it) and hands the buffer back. Each image's randomness comes from its own stream keyed
 * by (seed, epoch, position in the epoch), so batches do not depend on thread timing. */
#include "ballast/data.h"

#include "core/internal.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

struct bl_loader {
    const bl_dataset *ds;
    bl_sampler *sampler;     /* NULL: sequential order */
    bl_augment aug;
    bool has_aug;
    int64_t batch, n, channels, height, width, n_batches;
    uint64_t seed;
    int64_t *order;          /* the epoch's dataset indices, n entries */
    int epoch;
    bool started;
    float *x[2];             /* the two batch buffers */
    int64_t *y[2];
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

/* Runs on the worker thread: transforms batch b into buffer `slot`. */
static int fill_batch(bl_loader *l, int64_t b, int slot) {
    int64_t chw = l->channels * l->height * l->width;
    const uint8_t *images = l->ds->images->data;
    const int64_t *labels = l->ds->labels ? l->ds->labels->data : NULL;
    for (int64_t i = 0, rows = batch_rows(l, b); i < rows; i++) {
        int64_t position = b * l->batch + i, idx = l->order[position];
        bl_rng rng = bl_augment_stream(l->seed, l->epoch, position);
        BL_TRY(bl_augment_image(l->has_aug ? &l->aug : NULL, images + idx * chw, l->channels, l->height, l->width,
                                &rng, l->x[slot] + i * chw));
        l->y[slot][i] = labels ? labels[idx] : -1;
    }
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

bl_loader *bl_loader_create(const bl_dataset *ds, bl_sampler *sampler, int64_t batch, bool drop_last,
                            const bl_augment *aug, uint64_t seed) {
    BL_CHECK(ds && ds->images && ds->images->dtype == BL_U8 && ds->images->ndim == 4 && bl_is_contiguous(ds->images),
             "loader: the dataset needs contiguous U8 (N, C, H, W) images");
    BL_CHECK(batch > 0, "loader: batch size must be positive, got %lld", (long long)batch);
    BL_CHECK(!ds->labels || (ds->labels->dtype == BL_I64 && bl_numel(ds->labels) == ds->images->shape[0] &&
                             bl_is_contiguous(ds->labels)),
             "loader: labels must be a contiguous I64 vector of one label per image");
    bl_loader *l = calloc(1, sizeof *l);
    BL_CHECK(l, "out of memory creating a loader");
    l->ds = ds;
    l->sampler = sampler;
    l->has_aug = aug != NULL;
    if (aug) l->aug = *aug;
    l->batch = batch;
    l->n = ds->images->shape[0];
    l->channels = ds->images->shape[1];
    l->height = ds->images->shape[2];
    l->width = ds->images->shape[3];
    l->n_batches = drop_last ? l->n / batch : (l->n + batch - 1) / batch;
    l->seed = seed;
    l->held[0] = l->held[1] = -1;
    size_t x_bytes = ((size_t)(batch * l->channels * l->height * l->width) * sizeof(float) + 63) / 64 * 64;
    l->order = malloc((size_t)(l->n ? l->n : 1) * sizeof *l->order);
    bool ok = l->order != NULL;
    for (int s = 0; s < 2; s++) {
        l->x[s] = aligned_alloc(64, x_bytes);
        l->y[s] = malloc((size_t)batch * sizeof *l->y[s]);
        ok = ok && l->x[s] && l->y[s];
    }
    pthread_mutex_init(&l->lock, NULL);
    pthread_cond_init(&l->changed, NULL);
    if (!ok || pthread_create(&l->thread, NULL, worker, l) != 0) {
        for (int s = 0; s < 2; s++) {
            free(l->x[s]);
            free(l->y[s]);
        }
        free(l->order);
        pthread_mutex_destroy(&l->lock);
        pthread_cond_destroy(&l->changed);
        free(l);
        bl_set_error(ok ? "loader: cannot start its thread" : "out of memory creating a loader (batch %lld)",
                     (long long)batch);
        return NULL;
    }
    return l;
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
    int64_t rows = batch_rows(l, b);
    bl_tensor *x = bl_empty(BL_F32, BL_SHAPE(rows, l->channels, l->height, l->width));
    bl_tensor *y = bl_empty(BL_I64, BL_SHAPE(rows));
    bl_tensor *index = bl_from_data(BL_I64, 1, &rows, l->order + b * l->batch);
    bool ok = x && y && index;
    if (ok) {
        memcpy(x->data, l->x[slot], bl_nbytes(x));
        memcpy(y->data, l->y[slot], bl_nbytes(y));
        out->size = rows;
        ok = bl_batch_set(out, "x", x, NULL) == BL_OK && bl_batch_set(out, "y", y, NULL) == BL_OK &&
             bl_batch_set(out, "index", index, NULL) == BL_OK;
    }
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
    for (int s = 0; s < 2; s++) {
        free(l->x[s]);
        free(l->y[s]);
    }
    free(l->order);
    free(l);
}
