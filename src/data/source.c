/* Data sources and the host batches they fill (see ballast/data.h), and the source of a labelled
 * image dataset. */
#include "ballast/data.h"

#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

/* ---- host batches ------------------------------------------------------------------------------ */

static bl_host_field *find_or_add(bl_host_batch *b, const char *name) {
    for (int i = 0; i < b->n_fields; i++)
        if (strcmp(b->fields[i].name, name) == 0) return &b->fields[i];
    BL_CHECK(*name && strlen(name) < BL_BATCH_FIELD_NAME_MAX, "batch field name '%s' is empty or too long", name);
    BL_CHECK(b->n_fields < BL_BATCH_MAX_FIELDS, "batch field '%s': a batch holds at most %d fields", name,
             BL_BATCH_MAX_FIELDS);
    bl_host_field *f = &b->fields[b->n_fields++];
    memset(f, 0, sizeof *f);
    snprintf(f->name, sizeof f->name, "%s", name);
    return f;
}

static bool reserve(void **data, size_t *cap, size_t bytes) {
    if (bytes <= *cap) return true;
    size_t want = *cap ? *cap : 256;
    while (want < bytes) want *= 2;
    void *grown = realloc(*data, want);
    if (!grown) return false;
    *data = grown;
    *cap = want;
    return true;
}

static int64_t numel_of(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) n *= shape[i];
    return n;
}

void *bl_host_batch_field(bl_host_batch *b, const char *name, bl_dtype dt, int ndim, const int64_t *shape) {
    BL_CHECK(b && name && shape && ndim >= 1 && ndim <= BL_MAX_DIMS, "bl_host_batch_field: bad arguments");
    bl_host_field *f = find_or_add(b, name);
    if (!f) return NULL;
    size_t bytes = (size_t)numel_of(ndim, shape) * bl_dtype_size(dt);
    BL_CHECK(reserve(&f->data, &f->cap, bytes ? bytes : 1), "batch field '%s': out of memory", name);
    f->dtype = dt;
    f->ndim = ndim;
    memcpy(f->shape, shape, (size_t)ndim * sizeof *shape);
    f->variable = false;
    return f->data;
}

int bl_host_batch_append(bl_host_batch *b, const char *name, bl_dtype dt, int ndim, const int64_t *sample_shape,
                         const void *data, bool variable) {
    BL_CHECK_RC(b && name && (data || ndim == 0), "bl_host_batch_append: NULL argument");
    BL_CHECK_RC(ndim >= 0 && ndim + (variable ? 0 : 1) <= BL_MAX_DIMS && (!variable || ndim >= 1),
                "batch field '%s': a sample of %d dimensions cannot be batched%s", name, ndim,
                variable ? " as a variable-size field (it needs at least one)" : "");
    bl_host_field *f = find_or_add(b, name);
    if (!f) return BL_ERR;
    /* the field's shape in the batch: (samples, *sample_shape), or (rows, *sample_shape[1:]) */
    const int field_ndim = variable ? ndim : ndim + 1;
    const int64_t *row_shape = variable ? sample_shape + 1 : sample_shape;
    const int row_ndim = variable ? ndim - 1 : ndim;
    const int64_t rows = variable ? sample_shape[0] : 1;
    bool fresh = f->shape[0] == 0 && (!f->variable || !f->lengths || b->size == 0);
    if (fresh) {
        f->dtype = dt;
        f->ndim = field_ndim;
        f->variable = variable;
        if (row_ndim > 0) memcpy(f->shape + 1, row_shape, (size_t)row_ndim * sizeof *row_shape);
    } else {
        /* a scalar sample has no shape to compare (sample_shape may be NULL) */
        bool same = f->dtype == dt && f->ndim == field_ndim && f->variable == variable &&
                    (row_ndim == 0 || memcmp(f->shape + 1, row_shape, (size_t)row_ndim * sizeof *row_shape) == 0);
        BL_CHECK_RC(same, "batch field '%s': sample %lld has another dtype or shape than the ones before it", name,
                    (long long)b->size);
    }
    const size_t row_bytes = (size_t)numel_of(row_ndim, row_shape) * bl_dtype_size(dt);
    BL_CHECK_RC(reserve(&f->data, &f->cap, (size_t)(f->shape[0] + rows) * row_bytes + 1),
                "batch field '%s': out of memory", name);
    memcpy((char *)f->data + (size_t)f->shape[0] * row_bytes, data, (size_t)rows * row_bytes);
    f->shape[0] += rows;
    if (variable) {
        void *lengths = f->lengths;
        size_t cap = f->lengths_cap * sizeof *f->lengths;
        BL_CHECK_RC(reserve(&lengths, &cap, ((size_t)b->size + 1) * sizeof *f->lengths),
                    "batch field '%s': out of memory", name);
        f->lengths = lengths;
        f->lengths_cap = cap / sizeof *f->lengths;
        f->lengths[b->size] = rows;
    }
    return BL_OK;
}

void bl_host_batch_reset(bl_host_batch *b) {
    b->size = 0;
    for (int i = 0; i < b->n_fields; i++) b->fields[i].shape[0] = 0;
}

void bl_host_batch_free(bl_host_batch *b) {
    if (!b) return;
    for (int i = 0; i < b->n_fields; i++) {
        free(b->fields[i].data);
        free(b->fields[i].lengths);
    }
    memset(b, 0, sizeof *b);
}

void bl_source_free(bl_source *s) {
    if (!s) return;
    if (s->release) s->release(s->self);
    memset(s, 0, sizeof *s);
}

/* ---- the image source ---------------------------------------------------------------------------- */

typedef struct {
    const bl_dataset *ds;
    bl_augment aug;
    bool has_aug;
} image_source;

static int64_t image_length(void *self) { return ((image_source *)self)->ds->images->shape[0]; }

static int image_collate(void *self, const int64_t *rows, int64_t n, bl_rng *rngs, bl_host_batch *out) {
    const image_source *s = self;
    const bl_tensor *im = s->ds->images;
    const int64_t c = im->shape[1], h = im->shape[2], w = im->shape[3], chw = c * h * w;
    float *x = bl_host_batch_field(out, "x", BL_F32, 4, (int64_t[]){n, c, h, w});
    int64_t *y = bl_host_batch_field(out, "y", BL_I64, 1, &n);
    if (!x || !y) return BL_ERR;
    const uint8_t *pixels = im->data;
    const int64_t *labels = s->ds->labels ? s->ds->labels->data : NULL;
    for (int64_t i = 0; i < n; i++) {
        BL_TRY(bl_augment_image(s->has_aug ? &s->aug : NULL, pixels + rows[i] * chw, c, h, w, &rngs[i], x + i * chw));
        y[i] = labels ? labels[rows[i]] : -1;
    }
    return BL_OK;
}

int bl_image_source(const bl_dataset *ds, const bl_augment *aug, bl_source *out) {
    BL_CHECK_RC(out, "bl_image_source: NULL output");
    memset(out, 0, sizeof *out);
    BL_CHECK_RC(ds && ds->images && ds->images->dtype == BL_U8 && ds->images->ndim == 4 && bl_is_contiguous(ds->images),
                "image source: the dataset needs contiguous U8 (N, C, H, W) images");
    BL_CHECK_RC(!ds->labels || (ds->labels->dtype == BL_I64 && bl_numel(ds->labels) == ds->images->shape[0] &&
                                bl_is_contiguous(ds->labels)),
                "image source: labels must be a contiguous I64 vector of one label per image");
    image_source *s = calloc(1, sizeof *s);
    BL_CHECK_RC(s, "out of memory");
    s->ds = ds;
    s->has_aug = aug != NULL;
    if (aug) s->aug = *aug;
    *out = (bl_source){.self = s, .length = image_length, .collate = image_collate, .release = free};
    return BL_OK;
}
