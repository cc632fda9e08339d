/* Batches of named fields (see ballast/data.h). */
#include "ballast/data.h"

#include "core/internal.h"

#include <string.h>

bl_tensor *bl_batch_get(const bl_batch *b, const char *name) {
    if (!b || !name) return NULL;
    for (int i = 0; i < b->n_fields; i++)
        if (strcmp(b->fields[i].name, name) == 0) return b->fields[i].value;
    return NULL;
}

int bl_batch_set(bl_batch *b, const char *name, bl_tensor *value, bl_tensor *lengths) {
    BL_CHECK_RC(b && name && value, "bl_batch_set: NULL argument");
    BL_CHECK_RC(*name && strlen(name) < BL_BATCH_FIELD_NAME_MAX, "batch field name '%s' is empty or too long", name);
    if (lengths) {
        BL_CHECK_RC(lengths->dtype == BL_I64 && lengths->ndim == 1 && lengths->shape[0] == b->size,
                    "batch field '%s': lengths must be I64 (%lld), got %s", name, (long long)b->size,
                    bl__shape(lengths));
    } else {
        BL_CHECK_RC(value->ndim >= 1 && value->shape[0] == b->size,
                    "batch field '%s': shape %s does not start with the batch size %lld", name, bl__shape(value),
                    (long long)b->size);
    }
    int slot = 0;
    while (slot < b->n_fields && strcmp(b->fields[slot].name, name) != 0) slot++;
    BL_CHECK_RC(slot < BL_BATCH_MAX_FIELDS, "batch field '%s': a batch holds at most %d fields", name,
                BL_BATCH_MAX_FIELDS);
    if (slot == b->n_fields) b->n_fields++;
    bl_batch_field *f = &b->fields[slot];
    snprintf(f->name, sizeof f->name, "%s", name);
    f->value = value;
    f->lengths = lengths;
    return BL_OK;
}
