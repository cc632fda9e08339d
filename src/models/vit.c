/* Vision Transformers (Dosovitskiy et al. 2021) as timm's VisionTransformer, with its names
 * (patch_embed.proj, cls_token, pos_embed, blocks.{i}.*, norm, head) and its default initialization:
 * trunc_normal(std .02) for pos_embed and every linear weight, zero linear biases, N(0, 1e-6) for
 * the class token, PyTorch's default for the patch-embedding conv. Class-token pooling. */
#include "models/models_internal.h"

#include <stdio.h>
#include <stdlib.h>

typedef struct {
    int64_t dim, depth, heads;
} vit_config;

typedef struct {
    bl_conv2d_layer patch_embed;
    bl_tensor *cls_token, *pos_embed;
    bl_dropout_layer pos_drop;
    int depth;
    bl_transformer_block *blocks;
    bl_layernorm norm;
} vit;

/* timm's trunc_normal_(std=.02) keeps the default absolute bounds [-2, 2], 100 std away. */
static int init_linear(bl_linear_layer *l, bl_rng *rng) {
    BL_TRY(bl_init_trunc_normal_(l->weight, rng, 0.0, 0.02, -2.0, 2.0));
    return l->bias ? bl_fill_(l->bias, 0.0) : BL_OK;
}

static int build(bl_model *m, bl_rng *rng, bl_rng *dropout) {
    const vit_config *cfg = m->arch->config;
    bl_params *ps = &m->params;
    int64_t D = cfg->dim, patch = m->opts.patch_size, side = m->opts.image_size / patch;
    BL_CHECK_RC(side >= 1 && m->opts.image_size % patch == 0,
                "%s: image size %lld is not a multiple of patch size %lld", m->name, (long long)m->opts.image_size,
                (long long)patch);
    vit *net = calloc(1, sizeof *net);
    BL_CHECK_RC(net, "%s: out of memory", m->name);
    m->impl = net;
    net->depth = (int)cfg->depth;
    net->blocks = calloc((size_t)net->depth, sizeof *net->blocks);
    BL_CHECK_RC(net->blocks, "%s: out of memory", m->name);

    /* Registered in timm's state-dict order. */
    net->cls_token = bl_params_add(ps, "cls_token", BL_SHAPE(1, 1, D));
    net->pos_embed = bl_params_add(ps, "pos_embed", BL_SHAPE(1, side * side + 1, D));
    if (!net->cls_token || !net->pos_embed) return BL_ERR;
    BL_TRY(bl_conv2d_layer_init(&net->patch_embed, ps, "patch_embed.proj", m->opts.in_channels, D, patch,
                                bl_conv_args_make((int)patch, 0), true, rng));
    BL_TRY(bl_init_trunc_normal_(net->pos_embed, rng, 0.0, 0.02, -2.0, 2.0));
    BL_TRY(bl_fill_normal_(net->cls_token, rng, 0.0, 1e-6));
    bl_dropout_layer_init(&net->pos_drop, m->opts.drop_rate, dropout);
    for (int i = 0; i < net->depth; i++) {
        char prefix[BL_PARAM_NAME_MAX];
        bl_transformer_block *b = &net->blocks[i];
        snprintf(prefix, sizeof prefix, "blocks.%d", i);
        /* Built without dropout so that the block draws only initial values from `rng`. */
        BL_TRY(bl_transformer_block_init(b, ps, prefix, D, cfg->heads, 4.0, true, 0.0, 1e-6, rng));
        bl_dropout_layer_init(&b->attn.proj_drop, m->opts.drop_rate, dropout);
        bl_dropout_layer_init(&b->mlp.drop, m->opts.drop_rate, dropout);
        BL_TRY(init_linear(&b->attn.qkv, rng));
        BL_TRY(init_linear(&b->attn.proj, rng));
        BL_TRY(init_linear(&b->mlp.fc1, rng));
        BL_TRY(init_linear(&b->mlp.fc2, rng));
    }
    BL_TRY(bl_layernorm_init(&net->norm, ps, "norm", D, 1e-6));
    m->feature_dim = D;
    BL_TRY(bl_linear_layer_init(&m->classifier, ps, "head", D, m->opts.num_classes, true, rng));
    return init_linear(&m->classifier, rng);
}

/* A block's output, computed in its own arena scope when gradients are off: nothing but the
 * output is needed afterwards, so the block's intermediates (ten activations of the residual
 * stream's size) are released at once instead of at the end of the whole forward. */
static bl_tensor *block_forward(bl_transformer_block *block, bl_tensor *h, bool training) {
    if (bl_grad_enabled()) return bl_transformer_block_forward(block, h, training);
    bl_tensor *out = h ? bl_empty(h->dtype, h->ndim, h->shape) : NULL;
    if (!out) return NULL;
    bl_scope scope = bl_scope_begin();
    bl_tensor *y = bl_transformer_block_forward(block, h, training);
    int rc = y ? bl_copy_(out, y) : BL_ERR;
    bl_scope_end(scope);
    return rc == BL_OK ? out : NULL;
}

static int stages(bl_model *m, bl_tensor *x, bl_tensor **out, int cap) {
    vit *net = m->impl;
    bl_tensor *patches = bl_conv2d_layer_forward(&net->patch_embed, x); /* (N, D, H/p, W/p) */
    if (!patches) return -1;
    int64_t N = patches->shape[0], D = patches->shape[1];
    BL_CHECK_OR(-1, patches->shape[2] * patches->shape[3] + 1 == net->pos_embed->shape[1],
                "%s: input of shape %s gives %lld patches, the model was built for %lld", m->name, bl__shape(x),
                (long long)(patches->shape[2] * patches->shape[3]), (long long)net->pos_embed->shape[1] - 1);
    bl_tensor *tokens = bl_transpose(bl_flatten(patches, 2), 1, 2); /* (N, T, D) */
    bl_tensor *cls = bl_expand(net->cls_token, BL_SHAPE(N, 1, D));
    bl_tensor *h = bl_add(bl_concat(2, (bl_tensor *[]){cls, tokens}, 1), net->pos_embed);
    h = bl_dropout_layer_forward(&net->pos_drop, h, m->training);
    int count = 0;
    for (int i = 0; i < net->depth; i++) {
        h = block_forward(&net->blocks[i], h, m->training);
        if (!h) return -1;
        if (count < cap) out[count++] = h;
    }
    return count;
}

/* The final LayerNorm is per token, so normalizing only the class token equals timm's norm-then-select. */
static bl_tensor *pool(bl_model *m, bl_tensor *last_stage) {
    vit *net = m->impl;
    return bl_layernorm_forward(&net->norm, bl_select(last_stage, 1, 0));
}

static void free_impl(void *impl) {
    vit *net = impl;
    if (net) free(net->blocks);
    free(net);
}

static const vit_config vit_tiny = {192, 12, 3}, vit_small = {384, 12, 6}, vit_base = {768, 12, 12};

#define ARCH(name) {#name, 1000, 224, &name, build, stages, pool, free_impl}
const bl_model_arch bl__vit_archs[] = {ARCH(vit_tiny), ARCH(vit_small), ARCH(vit_base)};
const int bl__vit_arch_count = (int)(sizeof bl__vit_archs / sizeof bl__vit_archs[0]);
