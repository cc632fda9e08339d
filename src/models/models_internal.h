/* How a model family plugs into the generic handle of models.h. Not installed.
 *
 * A family describes each of its models with one bl_model_arch entry. bl_model_create resolves the
 * options, calls `build` (which registers every parameter in m->params in the reference code's
 * order, sets m->feature_dim and m->classifier, and stores its modules in m->impl), then finalizes
 * the store. Every forward goes through `stages` (the trunk, keeping each stage's output) and
 * `pool` (last stage -> feature vector), so features, logits and multi-scale outputs share one path. */
#ifndef BALLAST_MODELS_INTERNAL_H
#define BALLAST_MODELS_INTERNAL_H

#include "ballast/models.h"
#include "nn/nn_internal.h"

/* Most stages any model reports (ViT-Base has 12 blocks). */
#define BL_MODEL_MAX_STAGES 64

typedef struct bl_model_arch {
    const char *name;
    int64_t default_classes, default_image_size;
    const void *config; /* the family's description of this model */
    /* Initial values come from `init`; dropout layers take their streams from `dropout`, so the
     * initial values never depend on the dropout rate. */
    int (*build)(bl_model *m, bl_rng *init, bl_rng *dropout);
    /* x -> the output of every stage, in order, into out[0..cap); returns the count or -1. */
    int (*stages)(bl_model *m, bl_tensor *x, bl_tensor **out, int cap);
    bl_tensor *(*pool)(bl_model *m, bl_tensor *last_stage);
    void (*free_impl)(void *impl);
} bl_model_arch;

/* The families' model tables. */
extern const bl_model_arch bl__resnet_archs[];
extern const int bl__resnet_arch_count;
extern const bl_model_arch bl__convnet_archs[];
extern const int bl__convnet_arch_count;
extern const bl_model_arch bl__vit_archs[];
extern const int bl__vit_arch_count;

#endif
