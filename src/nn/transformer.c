/* The transformer's composite modules, laid out as timm's so that state dicts map one to one:
 * Mlp (fc1, act, fc2), Attention (one fused qkv linear, per-head scaled dot-product attention, proj)
 * and the pre-norm Block built from them. Their hot paths are single ops (ops/dense.h): attention
 * reads the heads straight out of the qkv projection, and a GELU Mlp without dropout is one op
 * that keeps only fc1's output for the backward; both equal timm's composition, gradients
 * included. */
#include "nn/nn_internal.h"
#include "ops/dense.h"

#include <string.h>

/* ---- Mlp ---- */

int bl_mlp_init(bl_mlp *m, bl_params *ps, const char *prefix, int64_t in_features, int64_t hidden_features,
                int64_t out_features, bl_activation act, double drop, bl_rng *rng) {
    char name[BL_PARAM_NAME_MAX];
    memset(m, 0, sizeof *m);
    m->act = act;
    BL_TRY(
        bl_linear_layer_init(&m->fc1, ps, bl_param_name(name, prefix, "fc1"), in_features, hidden_features, true, rng));
    BL_TRY(bl_linear_layer_init(&m->fc2, ps, bl_param_name(name, prefix, "fc2"), hidden_features, out_features, true,
                                rng));
    bl_dropout_layer_init(&m->drop, drop, rng);
    return BL_OK;
}

bl_tensor *bl_mlp_forward(bl_mlp *m, bl_tensor *x, bool training) {
    /* Without dropout in between, a GELU Mlp is one op: fc1's output is all it keeps. */
    if (m->act == BL_ACT_GELU && (!training || m->drop.p <= 0)) {
        BL_NONNULL(x);
        BL_CHECK(x->ndim >= 1 && x->shape[x->ndim - 1] == m->fc1.in_features,
                 "Mlp(%lld -> %lld -> %lld): input of shape %s", (long long)m->fc1.in_features,
                 (long long)m->fc1.out_features, (long long)m->fc2.out_features, bl__shape(x));
        return bl__mlp_gelu(x, m->fc1.weight, m->fc1.bias, m->fc2.weight, m->fc2.bias);
    }
    bl_tensor *h = bl_activate(bl_linear_layer_forward(&m->fc1, x), m->act);
    h = bl_dropout_layer_forward(&m->drop, h, training);
    h = bl_linear_layer_forward(&m->fc2, h);
    return bl_dropout_layer_forward(&m->drop, h, training);
}

/* ---- multi-head attention ---- */

int bl_mha_init(bl_mha *m, bl_params *ps, const char *prefix, int64_t dim, int64_t heads, bool qkv_bias, double drop,
                bl_rng *rng) {
    BL_CHECK_RC(dim > 0 && heads > 0 && dim % heads == 0, "Attention '%s': dim %lld is not divisible by %lld heads",
                prefix, (long long)dim, (long long)heads);
    char name[BL_PARAM_NAME_MAX];
    memset(m, 0, sizeof *m);
    m->dim = dim;
    m->heads = heads;
    BL_TRY(bl_linear_layer_init(&m->qkv, ps, bl_param_name(name, prefix, "qkv"), dim, 3 * dim, qkv_bias, rng));
    BL_TRY(bl_linear_layer_init(&m->proj, ps, bl_param_name(name, prefix, "proj"), dim, dim, true, rng));
    bl_dropout_layer_init(&m->proj_drop, drop, rng);
    return BL_OK;
}

bl_tensor *bl_mha_forward(bl_mha *m, bl_tensor *x, bl_tensor *mask, bool training) {
    BL_NONNULL(x);
    BL_CHECK(x->ndim == 3 && x->shape[2] == m->dim,
             "Attention(dim %lld, %lld heads): input of shape %s, expected (B, T, %lld)", (long long)m->dim,
             (long long)m->heads, bl__shape(x), (long long)m->dim);
    /* The fused projection's features are ordered (q|k|v, head, head_dim), as timm splits them;
     * the packed op reads the heads in place and returns them concatenated, (B, T, dim). */
    bl_tensor *o = bl__attention_packed_qkv(bl_linear_layer_forward(&m->qkv, x), m->heads, mask, false, 0.0);
    o = bl_linear_layer_forward(&m->proj, o);
    return bl_dropout_layer_forward(&m->proj_drop, o, training);
}

/* ---- pre-norm block ---- */

int bl_transformer_block_init(bl_transformer_block *m, bl_params *ps, const char *prefix, int64_t dim, int64_t heads,
                              double mlp_ratio, bool qkv_bias, double drop, double norm_eps, bl_rng *rng) {
    int64_t hidden = (int64_t)(dim * mlp_ratio);
    BL_CHECK_RC(hidden > 0, "Block '%s': mlp_ratio %g gives no hidden units", prefix, mlp_ratio);
    char name[BL_PARAM_NAME_MAX];
    memset(m, 0, sizeof *m);
    BL_TRY(bl_layernorm_init(&m->norm1, ps, bl_param_name(name, prefix, "norm1"), dim, norm_eps));
    BL_TRY(bl_mha_init(&m->attn, ps, bl_param_name(name, prefix, "attn"), dim, heads, qkv_bias, drop, rng));
    BL_TRY(bl_layernorm_init(&m->norm2, ps, bl_param_name(name, prefix, "norm2"), dim, norm_eps));
    return bl_mlp_init(&m->mlp, ps, bl_param_name(name, prefix, "mlp"), dim, hidden, dim, BL_ACT_GELU, drop, rng);
}

bl_tensor *bl_transformer_block_forward(bl_transformer_block *m, bl_tensor *x, bool training) {
    x = bl_add(x, bl_mha_forward(&m->attn, bl_layernorm_forward(&m->norm1, x), NULL, training));
    return bl_add(x, bl_mlp_forward(&m->mlp, bl_layernorm_forward(&m->norm2, x), training));
}
