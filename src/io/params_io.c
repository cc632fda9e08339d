/* Checkpoints of a parameter store: every parameter and buffer under its full name, as one
 * safetensors file (see include/ballast/io.h). Loading checks the whole file against the store
 * before changing a single value, so a refused checkpoint leaves the model as it was. */
#include "ballast/io.h"

#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

int bl_params_save(const bl_params *ps, const char *path, const char *const *metadata) {
    BL_CHECK_RC(ps && path, "bl_params_save: NULL argument");
    bl_safetensors_entry *entries = malloc(((size_t)ps->count + 1) * sizeof *entries);
    BL_CHECK_RC(entries, "%s: out of memory", path);
    for (int i = 0; i < ps->count; i++) entries[i] = (bl_safetensors_entry){ps->entries[i].name, ps->entries[i].tensor};
    int rc = bl_safetensors_save(path, ps->count, entries, metadata);
    free(entries);
    return rc;
}

/* Reduced-precision checkpoints (F16/BF16) load into F32 tensors; anything else must match. */
static bool dtype_loads_into(bl_dtype file, bl_dtype store) {
    return file == store || (store == BL_F32 && (file == BL_F16 || file == BL_BF16));
}

/* For each store entry, the file's tensor of the same name (NULL when absent), after checking
 * shapes, dtypes and, with `strict`, that the names match one to one. */
static int match_entries(const bl_params *ps, const bl_safetensors *st, const char *path, bool strict,
                         bl_tensor **src) {
    int missing = 0, used = 0;
    const char *first_missing = NULL;
    for (int i = 0; i < ps->count; i++) {
        const bl_param_entry *e = &ps->entries[i];
        bl_tensor *t = src[i] = bl_safetensors_get(st, e->name);
        if (!t) {
            if (!missing++) first_missing = e->name;
            continue;
        }
        used++;
        BL_CHECK_RC(bl_same_shape(t, e->tensor), "%s: tensor '%s' has shape %s in the file, the model expects %s", path,
                    e->name, bl__shape(t), bl__shape(e->tensor));
        BL_CHECK_RC(dtype_loads_into(t->dtype, e->tensor->dtype),
                    "%s: tensor '%s' is %s in the file, the model expects %s", path, e->name, bl_dtype_name(t->dtype),
                    bl_dtype_name(e->tensor->dtype));
    }
    if (!strict) return BL_OK;
    BL_CHECK_RC(!missing, "%s: tensor '%s' of the model is missing from the file (%d missing in all)", path,
                first_missing, missing);
    for (int k = 0; k < st->count && used < st->count; k++)
        BL_CHECK_RC(bl_params_find(ps, st->entries[k].name),
                    "%s: the file has tensor '%s', which the model does not have (%d unexpected in all)", path,
                    st->entries[k].name, st->count - used);
    return BL_OK;
}

int bl_params_load(bl_params *ps, const char *path, bool strict) {
    BL_CHECK_RC(ps && path, "bl_params_load: NULL argument");
    bl_safetensors st;
    BL_TRY(bl_safetensors_load(path, &st));
    bl_tensor **src = calloc((size_t)ps->count + 1, sizeof *src);
    int rc = src ? match_entries(ps, &st, path, strict, src) : BL_ERR;
    if (!src) bl_set_error("%s: out of memory", path);
    for (int i = 0; i < ps->count && rc == BL_OK; i++)
        if (src[i]) rc = bl_copy_(ps->entries[i].tensor, src[i]);
    free(src);
    bl_safetensors_free(&st);
    return rc;
}
