/* ballast checkpoints: the safetensors format, read and written by ballast itself.
 *
 * A safetensors file is an 8-byte little-endian header length, a JSON header
 *   {"__metadata__": {"key": "value", ...}, "name": {"dtype": "F32", "shape": [2, 3],
 *    "data_offsets": [begin, end]}, ...}
 * and the raw little-endian data, offsets counted from the end of the header. Files written here
 * load in PyTorch (safetensors.torch.load_file) and files PyTorch writes load here.
 *
 * Reading validates strictly and names the file (and the tensor) in every error: header length
 * within the file and at most 100 MB, well-formed JSON, known dtype, byte count == numel * size,
 * offsets inside the data and tiling it without overlaps or gaps, names unique.
 * Writing is atomic: the file appears complete under its name or not at all (written to
 * "<path>.tmp.<pid>", flushed and synced, then renamed; every write is checked, so a full disk
 * gives an error naming the file and leaves no temporary behind). */
#ifndef BALLAST_IO_H
#define BALLAST_IO_H

#include "ballast/params.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const char *name;
    bl_tensor *tensor;
} bl_safetensors_entry;

typedef struct {
    const char *key;
    const char *value;
} bl_safetensors_meta;

/* A loaded file: persistent, contiguous tensors in file order, owned by the struct. */
typedef struct {
    int count;
    bl_safetensors_entry *entries;
    int n_meta;
    bl_safetensors_meta *meta;
    char *strings; /* storage for names, keys and values */
} bl_safetensors;

/* Writes `n` tensors (any dtype, any strides; saved contiguous in their own dtype) and the
 * optional `metadata`, a NULL-terminated list of alternating keys and values. Names must be
 * unique and non-empty; "__metadata__" is reserved. */
int bl_safetensors_save(const char *path, int n, const bl_safetensors_entry *entries,
                        const char *const *metadata);
/* Reads a whole file into `out` (zeroed on failure); free with bl_safetensors_free. */
int bl_safetensors_load(const char *path, bl_safetensors *out);
void bl_safetensors_free(bl_safetensors *st);
/* The tensor or metadata value under `name`/`key`, or NULL when absent (no error set). */
bl_tensor *bl_safetensors_get(const bl_safetensors *st, const char *name);
const char *bl_safetensors_meta_get(const bl_safetensors *st, const char *key);

/* Saves every parameter and buffer of a finalized store under its full name (the names PyTorch's
 * state_dict uses), with optional metadata as above. */
int bl_params_save(const bl_params *ps, const char *path, const char *const *metadata);
/* Loads values into an existing store. Refuses, naming the file and the tensor, when a tensor has
 * another shape or dtype (F16/BF16 data load into F32 tensors, converted), and, with `strict`, when
 * a tensor of the store is missing from the file or the file has a tensor the store lacks; without
 * `strict` those are skipped. Nothing is changed unless the whole load succeeds. */
int bl_params_load(bl_params *ps, const char *path, bool strict);

#ifdef __cplusplus
}
#endif
#endif
