/* Samplers: the order in which an epoch visits the training set. Instance sampling is a shuffle;
 * the re-balancing kinds draw a class from per-epoch probabilities p_c and then an image of that
 * class uniformly, with replacement (the definitions of Kang et al., "Decoupling Representation
 * and Classifier for Long-Tailed Recognition", 2020, section 3). */
#include "ballast/data.h"

#include "core/internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PURPOSE_SAMPLER 0x53616d706c000000ull /* "Sampl" */

typedef enum { KIND_INSTANCE, KIND_CLASS_BALANCED, KIND_SQRT, KIND_PROGRESSIVE, KIND_WEIGHTED, KIND_CUSTOM } sampler_kind;

static const char *const kind_names[] = {"instance", "class_balanced", "sqrt", "progressive", "weighted"};

struct bl_sampler {
    sampler_kind kind;
    char custom_kind[64];      /* KIND_CUSTOM: its name */
    bl_sampler_fn fn;          /* KIND_CUSTOM */
    void *user;
    const bl_tensor *weights;  /* KIND_WEIGHTED: (n) */
    uint64_t seed;
    int64_t num_classes, n;
    int64_t *members;  /* dataset indices grouped by class: class c's are members[start[c] .. start[c+1]) */
    int64_t *start;
    double *cdf;       /* scratch: cumulative class probabilities of the current epoch */
};

bl_sampler *bl_sampler_create(const char *kind, const bl_tensor *labels, int64_t num_classes, uint64_t seed) {
    int k = 0;
    while (k < 4 && !(kind && strcmp(kind, kind_names[k]) == 0)) k++;
    BL_CHECK(k < 4, "unknown sampler \"%s\" (instance, class_balanced, sqrt, progressive)", kind ? kind : "(null)");
    int64_t n = bl_class_counts(labels, num_classes, NULL);
    if (n < 0) return NULL;
    BL_CHECK(n > 0, "sampler \"%s\": the dataset is empty", kind);
    bl_sampler *s = calloc(1, sizeof *s);
    if (s) {
        s->start = calloc((size_t)num_classes + 1, sizeof *s->start);
        s->members = malloc((size_t)n * sizeof *s->members);
        s->cdf = malloc((size_t)num_classes * sizeof *s->cdf);
    }
    if (!s || !s->start || !s->members || !s->cdf) {
        bl_sampler_free(s);
        bl_set_error("out of memory creating a sampler over %lld labels", (long long)n);
        return NULL;
    }
    s->kind = (sampler_kind)k;
    s->seed = seed;
    s->num_classes = num_classes;
    s->n = n;
    const int64_t *y = labels->data;
    for (int64_t i = 0; i < n; i++) s->start[y[i] + 1]++;
    for (int64_t c = 0; c < num_classes; c++) s->start[c + 1] += s->start[c];
    int64_t *fill = calloc((size_t)num_classes, sizeof *fill);
    if (!fill) {
        bl_sampler_free(s);
        bl_set_error("out of memory creating a sampler");
        return NULL;
    }
    for (int64_t i = 0; i < n; i++) s->members[s->start[y[i]] + fill[y[i]]++] = i;
    free(fill);
    return s;
}

void bl_sampler_free(bl_sampler *s) {
    if (!s) return;
    free(s->members);
    free(s->start);
    free(s->cdf);
    free(s);
}

bl_sampler *bl_sampler_instance(int64_t n, uint64_t seed) {
    BL_CHECK(n > 0, "sampler \"instance\": the dataset is empty");
    bl_sampler *s = calloc(1, sizeof *s);
    BL_CHECK(s, "out of memory");
    s->kind = KIND_INSTANCE;
    s->seed = seed;
    s->n = n;
    return s;
}

bl_sampler *bl_sampler_weighted(const bl_tensor *weights, uint64_t seed) {
    BL_CHECK(weights && weights->ndim == 1 && weights->shape[0] > 0 &&
                 (weights->dtype == BL_F32 || weights->dtype == BL_F64),
             "sampler \"weighted\": needs a non-empty F32 or F64 vector of weights, got %s", bl__shape(weights));
    bl_sampler *s = calloc(1, sizeof *s);
    if (s) s->cdf = malloc((size_t)weights->shape[0] * sizeof *s->cdf);
    if (!s || !s->cdf) {
        bl_sampler_free(s);
        BL_CHECK(false, "out of memory");
    }
    s->kind = KIND_WEIGHTED;
    s->seed = seed;
    s->n = weights->shape[0];
    s->weights = weights;
    return s;
}

bl_sampler *bl_sampler_custom(const char *kind, int64_t n, bl_sampler_fn fn, void *user, uint64_t seed) {
    BL_CHECK(kind && *kind && strlen(kind) < 64 && fn && n > 0, "bl_sampler_custom: needs a name, a function and n > 0");
    bl_sampler *s = calloc(1, sizeof *s);
    BL_CHECK(s, "out of memory");
    s->kind = KIND_CUSTOM;
    snprintf(s->custom_kind, sizeof s->custom_kind, "%s", kind);
    s->fn = fn;
    s->user = user;
    s->seed = seed;
    s->n = n;
    return s;
}

const char *bl_sampler_kind(const bl_sampler *s) { return s->kind == KIND_CUSTOM ? s->custom_kind : kind_names[s->kind]; }

/* Draws n indices with replacement from the current weights, by bisection of their running sum. */
static int weighted_epoch(bl_sampler *s, bl_rng *r, int64_t *order, int64_t n) {
    double total = 0;
    for (int64_t i = 0; i < s->n; i++) {
        double w = bl_get_flat(s->weights, i);
        BL_CHECK_RC(w >= 0 && isfinite(w), "sampler \"weighted\": weight %lld is %g", (long long)i, w);
        total += w;
        s->cdf[i] = total;
    }
    BL_CHECK_RC(total > 0, "sampler \"weighted\": every weight is 0");
    for (int64_t i = 0; i < n; i++) {
        double u = bl_rng_uniform(r) * total;
        int64_t lo = 0, hi = s->n - 1; /* first index with cdf > u */
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            if (s->cdf[mid] > u) hi = mid;
            else lo = mid + 1;
        }
        while (lo > 0 && s->cdf[lo] == s->cdf[lo - 1]) lo--; /* never a zero-weight sample */
        order[i] = lo;
    }
    return BL_OK;
}

int bl_sampler_class_probs(const bl_sampler *s, int epoch, int total_epochs, double *probs) {
    BL_CHECK_RC(s && s->kind <= KIND_PROGRESSIVE && (s->start || s->kind == KIND_INSTANCE),
                "bl_sampler_class_probs: a class sampler over labels is needed");
    BL_CHECK_RC(s->start, "bl_sampler_class_probs: this instance sampler was made without labels");
    int64_t non_empty = 0;
    for (int64_t c = 0; c < s->num_classes; c++) non_empty += s->start[c + 1] > s->start[c];
    double t = total_epochs > 0 ? (double)epoch / total_epochs : 0.0;
    if (t < 0) t = 0;
    if (t > 1) t = 1;
    double sum = 0;
    for (int64_t c = 0; c < s->num_classes; c++) {
        int64_t count = s->start[c + 1] - s->start[c];
        double instance = (double)count / (double)s->n, balanced = count ? 1.0 / (double)non_empty : 0.0;
        switch (s->kind) {
        case KIND_INSTANCE: probs[c] = instance; break;
        case KIND_CLASS_BALANCED: probs[c] = balanced; break;
        case KIND_SQRT: probs[c] = sqrt((double)count); break;
        case KIND_PROGRESSIVE: probs[c] = (1.0 - t) * instance + t * balanced; break;
        case KIND_WEIGHTED:
        case KIND_CUSTOM: probs[c] = 0; break; /* refused above */
        }
        sum += probs[c];
    }
    for (int64_t c = 0; c < s->num_classes; c++) probs[c] /= sum;
    return BL_OK;
}

int bl_sampler_epoch(bl_sampler *s, int epoch, int total_epochs, int64_t *order, int64_t n) {
    BL_CHECK_RC(s && order && n >= 0, "bl_sampler_epoch: needs a sampler and an order buffer");
    bl_rng r = bl_rng_make(s->seed, PURPOSE_SAMPLER + (uint64_t)(uint32_t)epoch);
    if (s->kind == KIND_CUSTOM) return s->fn(s->user, epoch, total_epochs, &r, order, n);
    if (s->kind == KIND_WEIGHTED) return weighted_epoch(s, &r, order, n);
    if (s->kind == KIND_INSTANCE) {
        /* Every image once per pass; a longer epoch continues with fresh passes. */
        for (int64_t done = 0; done < n; done += s->n) {
            int64_t len = n - done < s->n ? n - done : s->n;
            int64_t *pass = order + done;
            if (len == s->n) {
                for (int64_t i = 0; i < s->n; i++) pass[i] = i;
                bl_rng_shuffle(&r, pass, s->n);
            } else {
                int64_t *full = malloc((size_t)s->n * sizeof *full);
                BL_CHECK_RC(full, "out of memory");
                for (int64_t i = 0; i < s->n; i++) full[i] = i;
                bl_rng_shuffle(&r, full, s->n);
                memcpy(pass, full, (size_t)len * sizeof *full);
                free(full);
            }
        }
        return BL_OK;
    }
    BL_TRY(bl_sampler_class_probs(s, epoch, total_epochs, s->cdf));
    int64_t last = 0; /* the last class that can be drawn: absorbs the cdf's rounding short of 1 */
    for (int64_t c = 0; c < s->num_classes; c++) {
        if (s->cdf[c] > 0) last = c;
        if (c) s->cdf[c] += s->cdf[c - 1];
    }
    for (int64_t i = 0; i < n; i++) {
        double u = bl_rng_uniform(&r);
        int64_t lo = 0, hi = last; /* first class with cdf > u */
        while (lo < hi) {
            int64_t mid = (lo + hi) / 2;
            if (s->cdf[mid] > u) hi = mid;
            else lo = mid + 1;
        }
        int64_t count = s->start[lo + 1] - s->start[lo];
        order[i] = s->members[s->start[lo] + bl_rng_below(&r, count)];
    }
    return BL_OK;
}
