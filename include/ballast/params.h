/* ballast parameter store: every trainable parameter of a model in one contiguous F32 block, its
 * gradients in a second block of the same layout, and non-trainable buffers (BatchNorm running
 * statistics, num_batches_tracked) beside them.
 *
 * Modules register tensors by full PyTorch-style name ("layer1.0.conv1.weight") while a model is
 * built; bl_params_finalize() then packs the parameters into the blocks and points each tensor's
 * data and .grad into them. After that, zero-grad, an optimizer step, a gradient all-reduce or a
 * checkpoint are each one pass over a flat array. Tensor pointers stay valid across finalize. */
#ifndef BALLAST_PARAMS_H
#define BALLAST_PARAMS_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BL_PARAM_NAME_MAX 128

typedef struct {
    char name[BL_PARAM_NAME_MAX];
    bl_tensor *tensor;      /* persistent; for parameters, data points into the store's block */
    bool trainable;         /* false for buffers */
    bool no_weight_decay;   /* norms and biases, for optimizers that honour it */
} bl_param_entry;

typedef struct {
    bl_param_entry *entries;
    int count, cap;
    float *data;            /* trainable values, packed in registration order (after finalize) */
    float *grad;            /* their gradients, same layout */
    size_t numel;           /* elements in data/grad, including zero padding that keeps each
                             * parameter 64-byte aligned */
    bool finalized;
} bl_params;

void bl_params_init(bl_params *ps);
/* Frees every tensor and both blocks. */
void bl_params_free(bl_params *ps);
/* Registers a new zero-filled F32 parameter (requires_grad) named `name`. Fails on a duplicate
 * name or after finalize. Returns the tensor (owned by the store). */
bl_tensor *bl_params_add(bl_params *ps, const char *name, int ndim, const int64_t *shape);
/* Registers a buffer (not trained, saved in checkpoints), of any dtype; also allowed after
 * finalize, so a method can attach state (e.g. a running feature direction) to a built model. */
bl_tensor *bl_params_add_buffer(bl_params *ps, const char *name, bl_dtype dt, int ndim, const int64_t *shape);
/* Packs parameters into the contiguous blocks; gradients start at zero. */
int bl_params_finalize(bl_params *ps);
/* Looks a tensor up by name (parameters and buffers); NULL when absent (no error set). */
bl_tensor *bl_params_find(const bl_params *ps, const char *name);
/* Zeroes every gradient (one memset). */
void bl_params_zero_grad(bl_params *ps);
/* Number of trainable elements. */
size_t bl_params_numel(const bl_params *ps);

/* Builds "prefix.name" (or "name" when prefix is empty) into buf; returns buf. */
const char *bl_param_name(char *buf, const char *prefix, const char *name);

#ifdef __cplusplus
}
#endif
#endif
