/* The ConvNet of the dataset condensation / distillation literature (Zhao et al., "Dataset
 * Condensation with Gradient Matching"): depth x [conv3x3 (with bias) -> instance norm -> ReLU ->
 * 2x2 average pool], then one linear "classifier". Its "instance norm" is GroupNorm(C, C) with an
 * affine part, exactly as the original code builds it, and the layers are numbered as that code's
 * nn.Sequential: features.{4d} is block d's conv, features.{4d+1} its norm. For 1-channel inputs
 * the first conv pads by 3, so 28x28 digits become 32x32 as in the original. All initial values
 * are PyTorch's defaults. */
#include "models/models_internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int depth;
    bl_conv2d_layer *conv;
    bl_groupnorm *norm;
} convnet;

static int build(bl_model *m, bl_rng *rng, bl_rng *dropout) {
    bl_params *ps = &m->params;
    int64_t width = m->opts.width, side = m->opts.image_size, channels = m->opts.in_channels;
    convnet *net = calloc(1, sizeof *net);
    BL_CHECK_RC(net, "%s: out of memory", m->name);
    m->impl = net;
    net->depth = (int)m->opts.depth;
    net->conv = calloc((size_t)net->depth, sizeof *net->conv);
    net->norm = calloc((size_t)net->depth, sizeof *net->norm);
    BL_CHECK_RC(net->conv && net->norm, "%s: out of memory", m->name);
    for (int d = 0; d < net->depth; d++) {
        char name[BL_PARAM_NAME_MAX];
        int pad = m->opts.in_channels == 1 && d == 0 ? 3 : 1;
        snprintf(name, sizeof name, "features.%d", 4 * d);
        BL_TRY(bl_conv2d_layer_init(&net->conv[d], ps, name, channels, width, 3, bl_conv_args_make(1, pad), true, rng));
        snprintf(name, sizeof name, "features.%d", 4 * d + 1);
        BL_TRY(bl_groupnorm_init(&net->norm[d], ps, name, width, width));
        channels = width;
        side = (side + 2 * pad - 2) / 2;
        BL_CHECK_RC(side >= 1, "%s: image size %lld is too small for %d blocks", m->name, (long long)m->opts.image_size,
                    net->depth);
    }
    m->feature_dim = width * side * side;
    return bl_linear_layer_init(&m->classifier, ps, "classifier", m->feature_dim, m->opts.num_classes, true, rng);
}

static int stages(bl_model *m, bl_tensor *x, bl_tensor **out, int cap) {
    convnet *net = m->impl;
    bl_tensor *h = x;
    int count = 0;
    for (int d = 0; d < net->depth; d++) {
        h = bl_relu(bl_groupnorm_forward(&net->norm[d], bl_conv2d_layer_forward(&net->conv[d], h)));
        h = bl_avg_pool2d(h, 2, 2, 0);
        if (!h) return -1;
        if (count < cap) out[count++] = h;
    }
    return count;
}

static bl_tensor *pool(bl_model *m, bl_tensor *last_stage) { return bl_flatten(last_stage, 1); }

static void free_impl(void *impl) {
    convnet *net = impl;
    if (net) {
        free(net->conv);
        free(net->norm);
    }
    free(net);
}

const bl_model_arch bl__convnet_archs[] = {
    {"convnet3", 10, 32, NULL, build, stages, pool, free_impl},
};
const int bl__convnet_arch_count = (int)(sizeof bl__convnet_archs / sizeof bl__convnet_archs[0]);
