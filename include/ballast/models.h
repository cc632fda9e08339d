/* ballast models: image classifiers behind one handle, built by name.
 *
 * Every model is split the way long-tailed and representation-learning methods need it:
 *   features   = bl_model_features(m, x)       the pooled penultimate vector (N, feature_dim)
 *   logits     = bl_model_classifier(m, features)
 *   bl_model_forward(m, x) is the two in sequence.
 * Parameters and buffers live in m->params under the names of the reference PyTorch code (torchvision
 * for resnet18/34/50, timm for vit_*, the common CIFAR ResNet for resnet20..110, the dataset
 * distillation ConvNet for convnet3), so checkpoints map one to one. Forwards honour m->training
 * (batch statistics and dropout); set it directly.
 *
 * Models: resnet20 resnet32 resnet44 resnet56 resnet110 (CIFAR, 3 stages of 16/32/64 channels,
 * option-A shortcuts), resnet18 resnet34 resnet50 (torchvision), resnet18_cifar (resnet18 with a
 * 3x3 stride-1 stem and no max-pool, for 32x32 images), resnet32_bbn (the BBN / De-confound-TDE
 * CIFAR variant: 4 blocks in the last stage and two parallel branch blocks, a 128-d feature),
 * convnet3, vit_tiny vit_small vit_base. */
#ifndef BALLAST_MODELS_H
#define BALLAST_MODELS_H

#include "ballast/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Zero (or NULL opts) means the model's default, given in brackets. */
typedef struct {
    int64_t num_classes; /* [10 for the CIFAR models and convnet3, 1000 for resnet18/34/50 and vit_*] */
    int64_t image_size;  /* input height = width; sizes ViT's pos_embed and ConvNet's classifier [32 / 224] */
    int64_t patch_size;  /* ViT patch side [16] */
    int64_t in_channels; /* [3] */
    int64_t width;       /* ConvNet channels per block [128] */
    int64_t depth;       /* ConvNet blocks [3] */
    double drop_rate;    /* dropout before the classifier; ViT also after pos_embed, attn.proj and the MLP [0] */
} bl_model_opts;

struct bl_model_arch; /* private: the model family's functions */

typedef struct bl_model {
    char name[32];
    bl_model_opts opts;         /* as resolved, defaults filled in */
    bl_params params;           /* finalized: every parameter and buffer */
    bool training;              /* starts true */
    int64_t feature_dim;        /* size of bl_model_features' output */
    bl_linear_layer classifier; /* the final linear layer (fc, linear, classifier or head) */
    const struct bl_model_arch *arch;
    bl_dropout_layer head_drop; /* before the classifier, p = opts.drop_rate */
    void *impl;                 /* the family's modules */
} bl_model;

/* Builds model `name` with initial values drawn from `seed`; NULL (and an error) on an unknown name
 * or invalid options. */
bl_model *bl_model_create(const char *name, const bl_model_opts *opts, uint64_t seed);
void bl_model_free(bl_model *m);
/* NULL-terminated list of the names bl_model_create accepts. */
const char *const *bl_model_names(void);

/* x (N, in_channels, H, W) -> logits (N, num_classes). */
bl_tensor *bl_model_forward(bl_model *m, bl_tensor *x);
/* x (N, in_channels, H, W) -> (N, feature_dim): ResNets' globally pooled last stage, ConvNet's
 * flattened last block, ViT's normalized class token. */
bl_tensor *bl_model_features(bl_model *m, bl_tensor *x);
/* features (N, feature_dim) -> logits (N, num_classes): m->head_drop, then m->classifier. */
bl_tensor *bl_model_classifier(bl_model *m, bl_tensor *features);
/* Intermediate outputs for multi-scale methods: ResNets' layer1..layerK outputs (N, C, H, W),
 * ConvNet's blocks (after pooling), ViT's blocks (N, T + 1, D). Writes at most `max` tensors to
 * `out` (the last ones when the model has more) and returns how many, or -1 on error. */
int bl_model_stages(bl_model *m, bl_tensor *x, int max, bl_tensor **out);

/* Number of trainable parameters, as sum(p.numel() for p in model.parameters()). */
size_t bl_model_num_params(const bl_model *m);
/* Convenience: m->params entry by name, NULL when absent. */
bl_tensor *bl_model_param(const bl_model *m, const char *name);

#ifdef __cplusplus
}
#endif
#endif
