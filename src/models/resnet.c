/* Residual networks: the CIFAR family (He et al. 2016, section 4.2: 6n+2 layers in three stages of
 * 16/32/64 channels with parameter-free "option A" shortcuts, as the widely used akamaster code),
 * torchvision's ImageNet ResNet-18/34/50, resnet18_cifar (torchvision's ResNet-18 with a 3x3
 * stride-1 stem and no max-pool for 32x32 inputs) and resnet32_bbn, the ResNet-32 variant of BBN
 * (Zhou et al. 2020) that the CIFAR-LT papers after it train, De-confound-TDE among them: 4 blocks
 * in layer3, then two parallel blocks on its output ("cb_block" and "rb_block", BBN's conventional
 * and re-balancing branches) whose outputs are concatenated into a 128-dimensional feature (with a
 * two-head causal-norm classifier each head sees one branch). One block type covers basic and
 * bottleneck blocks; what differs between the families is data in resnet_config. The trunk runs in
 * channels-last order, and each batch norm is fused with the residual add and ReLU after it. */
#include "models/models_internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int n_stages;
    int blocks[4];     /* blocks per stage */
    int64_t planes[4]; /* a stage's inner width; its output is planes * 4 for bottlenecks */
    int64_t stem_width;
    bool bottleneck;
    bool imagenet_stem; /* 7x7 stride-2 conv and 3x3 stride-2 max-pool; else one 3x3 stride-1 conv */
    /* The CIFAR family: option-A shortcuts, kaiming_normal(fan_in) on convs. Otherwise torchvision:
     * 1x1-conv + BN "downsample" shortcuts, kaiming_normal(fan_out) on convs. */
    bool cifar_family;
    bool bbn_branches;       /* two parallel last blocks, concatenated (resnet32_bbn) */
    const char *classifier;  /* the linear layer's name */
    bool classifier_kaiming; /* kaiming_normal(fan_in) as the akamaster code; else PyTorch's default */
} resnet_config;

typedef enum { SHORTCUT_IDENTITY, SHORTCUT_SUBSAMPLE_PAD, SHORTCUT_PROJECT } shortcut_kind;

typedef struct {
    int stage;
    int n_convs; /* 2 for a basic block, 3 for a bottleneck */
    bl_conv2d_layer conv[3];
    bl_batchnorm bn[3];
    shortcut_kind shortcut;
    int64_t pad_channels;      /* SUBSAMPLE_PAD: zero channels added on each side */
    bl_conv2d_layer down_conv; /* PROJECT: downsample.0 */
    bl_batchnorm down_bn;      /* PROJECT: downsample.1 */
} resnet_block;

typedef struct {
    bl_conv2d_layer conv1;
    bl_batchnorm bn1;
    int n_blocks;
    resnet_block *blocks;
    int n_branches;
    resnet_block branches[2]; /* BBN's cb_block and rb_block */
} resnet;

/* A bias-free conv with the family's weight init. */
static int add_conv(bl_conv2d_layer *c, bl_params *ps, const char *name, int64_t in, int64_t out, int64_t kernel,
                    int stride, const resnet_config *cfg, bl_rng *rng) {
    BL_TRY(bl_conv2d_layer_init(c, ps, name, in, out, kernel, bl_conv_args_make(stride, (int)kernel / 2), false, rng));
    return bl_init_kaiming_normal_(c->weight, rng, cfg->cifar_family ? BL_FAN_IN : BL_FAN_OUT);
}

static int build_block(resnet_block *b, bl_params *ps, const char *prefix, int64_t in, int64_t planes, int stride,
                       const resnet_config *cfg, bl_rng *rng) {
    char name[BL_PARAM_NAME_MAX], child[16];
    int64_t out = cfg->bottleneck ? 4 * planes : planes;
    /* Bottlenecks stride in the 3x3 conv (torchvision's "ResNet v1.5"). */
    const int64_t kernels[3] = {cfg->bottleneck ? 1 : 3, 3, 1};
    const int64_t outs[3] = {planes, cfg->bottleneck ? planes : out, out};
    const int strides[3] = {cfg->bottleneck ? 1 : stride, cfg->bottleneck ? stride : 1, 1};
    b->n_convs = cfg->bottleneck ? 3 : 2;
    int64_t c_in = in;
    for (int i = 0; i < b->n_convs; i++) {
        snprintf(child, sizeof child, "conv%d", i + 1);
        BL_TRY(add_conv(&b->conv[i], ps, bl_param_name(name, prefix, child), c_in, outs[i], kernels[i], strides[i], cfg,
                        rng));
        snprintf(child, sizeof child, "bn%d", i + 1);
        BL_TRY(bl_batchnorm_init(&b->bn[i], ps, bl_param_name(name, prefix, child), outs[i]));
        c_in = outs[i];
    }
    if (stride == 1 && in == out) {
        b->shortcut = SHORTCUT_IDENTITY;
    } else if (cfg->cifar_family) {
        b->shortcut = SHORTCUT_SUBSAMPLE_PAD;
        b->pad_channels = planes / 4;
        BL_CHECK_RC(stride == 2 && in + 2 * b->pad_channels == out,
                    "%s: an option-A shortcut cannot map %lld channels to %lld with stride %d", prefix, (long long)in,
                    (long long)out, stride);
    } else {
        b->shortcut = SHORTCUT_PROJECT;
        BL_TRY(add_conv(&b->down_conv, ps, bl_param_name(name, prefix, "downsample.0"), in, out, 1, stride, cfg, rng));
        BL_TRY(bl_batchnorm_init(&b->down_bn, ps, bl_param_name(name, prefix, "downsample.1"), out));
    }
    return BL_OK;
}

static int build(bl_model *m, bl_rng *rng, bl_rng *dropout) {
    const resnet_config *cfg = m->arch->config;
    bl_params *ps = &m->params;
    resnet *net = calloc(1, sizeof *net);
    BL_CHECK_RC(net, "%s: out of memory", m->name);
    m->impl = net;
    for (int s = 0; s < cfg->n_stages; s++) net->n_blocks += cfg->blocks[s];
    net->blocks = calloc((size_t)net->n_blocks, sizeof *net->blocks);
    BL_CHECK_RC(net->blocks, "%s: out of memory", m->name);

    BL_TRY(add_conv(&net->conv1, ps, "conv1", m->opts.in_channels, cfg->stem_width, cfg->imagenet_stem ? 7 : 3,
                    cfg->imagenet_stem ? 2 : 1, cfg, rng));
    BL_TRY(bl_batchnorm_init(&net->bn1, ps, "bn1", cfg->stem_width));
    int64_t channels = cfg->stem_width;
    for (int s = 0, i = 0; s < cfg->n_stages; s++) {
        for (int j = 0; j < cfg->blocks[s]; j++, i++) {
            char prefix[BL_PARAM_NAME_MAX];
            snprintf(prefix, sizeof prefix, "layer%d.%d", s + 1, j);
            BL_TRY(
                build_block(&net->blocks[i], ps, prefix, channels, cfg->planes[s], s > 0 && j == 0 ? 2 : 1, cfg, rng));
            net->blocks[i].stage = s;
            channels = cfg->bottleneck ? 4 * cfg->planes[s] : cfg->planes[s];
        }
    }
    const char *branch_names[2] = {"cb_block", "rb_block"};
    net->n_branches = cfg->bbn_branches ? 2 : 0;
    for (int b = 0; b < net->n_branches; b++) {
        BL_TRY(build_block(&net->branches[b], ps, branch_names[b], channels, channels, 1, cfg, rng));
        net->branches[b].stage = cfg->n_stages;
    }
    m->feature_dim = net->n_branches ? net->n_branches * channels : channels;
    BL_TRY(bl_linear_layer_init(&m->classifier, ps, cfg->classifier, m->feature_dim, m->opts.num_classes, true, rng));
    if (cfg->classifier_kaiming) BL_TRY(bl_init_kaiming_normal_(m->classifier.weight, rng, BL_FAN_IN));
    return BL_OK;
}

/* Option A: keep every other pixel and zero-pad the channels, so the shortcut adds no parameters. */
static bl_tensor *subsample_pad(bl_tensor *x, int64_t pad_channels) {
    BL_NONNULL(x);
    bl_tensor *sub = bl_slice(bl_slice(x, 2, 0, x->shape[2], 2), 3, 0, x->shape[3], 2);
    return bl_pad(sub, 6, (const int64_t[]){0, 0, 0, 0, pad_channels, pad_channels}, 0.0);
}

/* conv, then batch norm fused with the optional residual add and ReLU that follow it (in eval mode
 * all folded into the convolution). */
static bl_tensor *conv_bn(bl_conv2d_layer *conv, bl_batchnorm *bn, bl_tensor *x, bl_tensor *residual, bool relu,
                          bool training) {
    BL_NONNULL(x);
    BL_CHECK(x->ndim == 4 && x->shape[1] == conv->in_channels, "Conv2d(%lld -> %lld): input of shape %s",
             (long long)conv->in_channels, (long long)conv->out_channels, bl__shape(x));
    bl_tensor *y = bl_conv2d_bn_act(x, conv->weight, conv->args, bn->weight, bn->bias, bn->running_mean,
                                    bn->running_var, residual, relu, training, bn->momentum, bn->eps);
    if (y && training && bn->num_batches_tracked) (*(int64_t *)bn->num_batches_tracked->data)++;
    return y;
}

static bl_tensor *block_forward(resnet_block *b, bl_tensor *x, bool training) {
    bl_tensor *shortcut = x;
    if (b->shortcut == SHORTCUT_SUBSAMPLE_PAD)
        shortcut = subsample_pad(x, b->pad_channels);
    else if (b->shortcut == SHORTCUT_PROJECT)
        shortcut = conv_bn(&b->down_conv, &b->down_bn, x, NULL, false, training);
    bl_tensor *h = x;
    for (int i = 0; i + 1 < b->n_convs; i++) h = conv_bn(&b->conv[i], &b->bn[i], h, NULL, true, training);
    /* The last BN adds the shortcut and applies the block's ReLU in the same pass. */
    return conv_bn(&b->conv[b->n_convs - 1], &b->bn[b->n_convs - 1], h, shortcut, true, training);
}

/* The trunk runs channels last (bl_channels_last): every conv, BN and the final pool then work on
 * that order directly. Converting the stem's output too keeps it so when the input's order is
 * ambiguous (one channel). */
static int stages(bl_model *m, bl_tensor *x, bl_tensor **out, int cap) {
    const resnet_config *cfg = m->arch->config;
    resnet *net = m->impl;
    bl_tensor *h = bl_channels_last(conv_bn(&net->conv1, &net->bn1, bl_channels_last(x), NULL, true, m->training));
    if (cfg->imagenet_stem) h = bl_channels_last(bl_max_pool2d(h, 3, 2, 1));
    int count = 0;
    for (int i = 0; i < net->n_blocks; i++) {
        h = block_forward(&net->blocks[i], h, m->training);
        if (!h) return -1;
        bool last_of_stage = i + 1 == net->n_blocks || net->blocks[i + 1].stage != net->blocks[i].stage;
        if (last_of_stage && count < cap) out[count++] = h;
    }
    if (net->n_branches > 0) {
        bl_tensor *branch_out[2];
        for (int b = 0; b < net->n_branches; b++) branch_out[b] = block_forward(&net->branches[b], h, m->training);
        bl_tensor *joined = bl_concat(net->n_branches, branch_out, 1);
        if (!joined) return -1;
        if (count < cap) out[count++] = joined;
    }
    return count;
}

/* The global average pool as a 1x1 adaptive pool, which keeps to the channels-last order. */
static bl_tensor *pool(bl_model *m, bl_tensor *last_stage) {
    BL_NONNULL(last_stage);
    const int64_t features[2] = {last_stage->shape[0], last_stage->shape[1]};
    return bl_reshape(bl_adaptive_avg_pool2d(last_stage, 1, 1), 2, features);
}

static void free_impl(void *impl) {
    resnet *net = impl;
    if (net) free(net->blocks);
    free(net);
}

#define CIFAR_STAGES .n_stages = 3, .planes = {16, 32, 64}, .stem_width = 16, .cifar_family = true
#define CIFAR_RESNET(n) {CIFAR_STAGES, .blocks = {n, n, n}, .classifier = "linear", .classifier_kaiming = true}
#define TORCHVISION_STAGES .n_stages = 4, .planes = {64, 128, 256, 512}, .stem_width = 64, .classifier = "fc"
static const resnet_config resnet20 = CIFAR_RESNET(3), resnet32 = CIFAR_RESNET(5), resnet44 = CIFAR_RESNET(7),
                           resnet56 = CIFAR_RESNET(9), resnet110 = CIFAR_RESNET(18);
static const resnet_config resnet18 = {TORCHVISION_STAGES, .blocks = {2, 2, 2, 2}, .imagenet_stem = true},
                           resnet34 = {TORCHVISION_STAGES, .blocks = {3, 4, 6, 3}, .imagenet_stem = true},
                           resnet50 = {TORCHVISION_STAGES, .blocks = {3, 4, 6, 3}, .imagenet_stem = true,
                                       .bottleneck = true},
                           resnet18_cifar = {TORCHVISION_STAGES, .blocks = {2, 2, 2, 2}};
static const resnet_config resnet32_bbn = {CIFAR_STAGES, .blocks = {5, 5, 4}, .bbn_branches = true, .classifier = "fc"};

#define ARCH(name, classes, size) {#name, classes, size, &name, build, stages, pool, free_impl}
const bl_model_arch bl__resnet_archs[] = {
    ARCH(resnet20, 10, 32),    ARCH(resnet32, 10, 32),    ARCH(resnet44, 10, 32),
    ARCH(resnet56, 10, 32),    ARCH(resnet110, 10, 32),   ARCH(resnet18, 1000, 224),
    ARCH(resnet34, 1000, 224), ARCH(resnet50, 1000, 224), ARCH(resnet18_cifar, 10, 32),
    ARCH(resnet32_bbn, 10, 32),
};
const int bl__resnet_arch_count = (int)(sizeof bl__resnet_archs / sizeof bl__resnet_archs[0]);
