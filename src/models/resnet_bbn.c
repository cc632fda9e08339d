/* The ResNet-32 variant of BBN (Zhou et al. 2020) that the CIFAR-LT papers after it train,
 * De-confound-TDE among them: the CIFAR ResNet-32 trunk with only 4 blocks in layer3, followed by
 * two parallel 64-channel blocks on the same layer3 output ("cb_block" and "rb_block", BBN's
 * conventional and re-balancing branches) whose outputs are concatenated, so the pooled feature has
 * 128 dimensions. With a two-head causal-norm classifier each head sees one branch. Blocks are the
 * CIFAR basic blocks with option-A shortcuts and kaiming_normal(fan_in) conv weights, as the
 * original code; the classifier "fc" is a default-initialised linear layer (methods with their own
 * classifier re-initialise it). Stages reported: layer1, layer2, layer3, and the concatenated
 * branches. */
#include "models/models_internal.h"

#include <stdio.h>
#include <stdlib.h>

enum { LAYER1_BLOCKS = 5, LAYER2_BLOCKS = 5, LAYER3_BLOCKS = 4, BRANCHES = 2 };
#define TRUNK_BLOCKS (LAYER1_BLOCKS + LAYER2_BLOCKS + LAYER3_BLOCKS)

typedef struct {
    bl_conv2d_layer conv1, conv2;
    bl_batchnorm bn1, bn2;
    int64_t pad_channels; /* > 0: option-A shortcut (every other pixel, zero channels each side) */
} basic_block;

typedef struct {
    bl_conv2d_layer conv1;
    bl_batchnorm bn1;
    basic_block trunk[TRUNK_BLOCKS];
    basic_block branch[BRANCHES];
} resnet_bbn;

static int add_conv(bl_conv2d_layer *c, bl_params *ps, const char *name, int64_t in, int64_t out, int stride,
                    bl_rng *rng) {
    BL_TRY(bl_conv2d_layer_init(c, ps, name, in, out, 3, bl_conv_args_make(stride, 1), false, rng));
    return bl_init_kaiming_normal_(c->weight, rng, BL_FAN_IN);
}

static int build_block(basic_block *b, bl_params *ps, const char *prefix, int64_t in, int64_t planes, int stride,
                       bl_rng *rng) {
    char name[BL_PARAM_NAME_MAX];
    BL_TRY(add_conv(&b->conv1, ps, bl_param_name(name, prefix, "conv1"), in, planes, stride, rng));
    BL_TRY(bl_batchnorm_init(&b->bn1, ps, bl_param_name(name, prefix, "bn1"), planes));
    BL_TRY(add_conv(&b->conv2, ps, bl_param_name(name, prefix, "conv2"), planes, planes, 1, rng));
    BL_TRY(bl_batchnorm_init(&b->bn2, ps, bl_param_name(name, prefix, "bn2"), planes));
    b->pad_channels = stride != 1 || in != planes ? planes / 4 : 0;
    return BL_OK;
}

static int build(bl_model *m, bl_rng *rng, bl_rng *dropout) {
    bl_params *ps = &m->params;
    resnet_bbn *net = calloc(1, sizeof *net);
    BL_CHECK_RC(net, "%s: out of memory", m->name);
    m->impl = net;
    BL_TRY(add_conv(&net->conv1, ps, "conv1", m->opts.in_channels, 16, 1, rng));
    BL_TRY(bl_batchnorm_init(&net->bn1, ps, "bn1", 16));
    const int blocks[3] = {LAYER1_BLOCKS, LAYER2_BLOCKS, LAYER3_BLOCKS};
    const int64_t planes[3] = {16, 32, 64};
    int64_t channels = 16;
    for (int s = 0, i = 0; s < 3; s++) {
        for (int j = 0; j < blocks[s]; j++, i++) {
            char prefix[BL_PARAM_NAME_MAX];
            snprintf(prefix, sizeof prefix, "layer%d.%d", s + 1, j);
            BL_TRY(build_block(&net->trunk[i], ps, prefix, channels, planes[s], s > 0 && j == 0 ? 2 : 1, rng));
            channels = planes[s];
        }
    }
    BL_TRY(build_block(&net->branch[0], ps, "cb_block", channels, channels, 1, rng));
    BL_TRY(build_block(&net->branch[1], ps, "rb_block", channels, channels, 1, rng));
    m->feature_dim = BRANCHES * channels;
    return bl_linear_layer_init(&m->classifier, ps, "fc", m->feature_dim, m->opts.num_classes, true, rng);
}

static bl_tensor *block_forward(basic_block *b, bl_tensor *x, bool training) {
    BL_NONNULL(x);
    bl_tensor *h = bl_relu(bl_batchnorm_forward(&b->bn1, bl_conv2d_layer_forward(&b->conv1, x), training));
    h = bl_batchnorm_forward(&b->bn2, bl_conv2d_layer_forward(&b->conv2, h), training);
    bl_tensor *shortcut = x;
    if (b->pad_channels > 0) {
        bl_tensor *sub = bl_slice(bl_slice(x, 2, 0, x->shape[2], 2), 3, 0, x->shape[3], 2);
        shortcut = bl_pad(sub, 6, (const int64_t[]){0, 0, 0, 0, b->pad_channels, b->pad_channels}, 0.0);
    }
    return bl_relu(bl_add(h, shortcut));
}

static int stages(bl_model *m, bl_tensor *x, bl_tensor **out, int cap) {
    resnet_bbn *net = m->impl;
    bl_tensor *h = bl_relu(bl_batchnorm_forward(&net->bn1, bl_conv2d_layer_forward(&net->conv1, x), m->training));
    int count = 0;
    for (int i = 0; i < TRUNK_BLOCKS; i++) {
        h = block_forward(&net->trunk[i], h, m->training);
        if (!h) return -1;
        bool last_of_stage = i + 1 == LAYER1_BLOCKS || i + 1 == LAYER1_BLOCKS + LAYER2_BLOCKS || i + 1 == TRUNK_BLOCKS;
        if (last_of_stage && count < cap) out[count++] = h;
    }
    bl_tensor *branches[BRANCHES];
    for (int b = 0; b < BRANCHES; b++) branches[b] = block_forward(&net->branch[b], h, m->training);
    bl_tensor *joined = bl_concat(BRANCHES, branches, 1);
    if (!joined) return -1;
    if (count < cap) out[count++] = joined;
    return count;
}

static bl_tensor *pool(bl_model *m, bl_tensor *last_stage) { return bl__global_avg_pool(last_stage); }

static void free_impl(void *impl) { free(impl); }

const bl_model_arch bl__resnet_bbn_archs[] = {
    {"resnet32_bbn", 10, 32, NULL, build, stages, pool, free_impl},
};
const int bl__resnet_bbn_arch_count = (int)(sizeof bl__resnet_bbn_archs / sizeof bl__resnet_bbn_archs[0]);
