/* The single-op modules: linear, 2-D convolution, the normalization layers and dropout. Each init
 * registers its tensors under PyTorch's names and applies PyTorch's default initialization; each
 * forward checks the input against the module's sizes (so a mismatch names the module, not an op
 * deep inside a model) and calls one op. */
#include "nn/nn_internal.h"

#include <math.h>
#include <string.h>

static bl_tensor *add_param(bl_params *ps, const char *prefix, const char *name, int ndim, const int64_t *shape) {
    char full[BL_PARAM_NAME_MAX];
    return bl_params_add(ps, bl_param_name(full, prefix, name), ndim, shape);
}

/* ---- linear ---- */

int bl_linear_layer_init(bl_linear_layer *m, bl_params *ps, const char *prefix, int64_t in_features,
                         int64_t out_features, bool bias, bl_rng *rng) {
    BL_CHECK_RC(in_features > 0 && out_features > 0, "Linear '%s': sizes must be positive, got %lld -> %lld", prefix,
                (long long)in_features, (long long)out_features);
    memset(m, 0, sizeof *m);
    m->in_features = in_features;
    m->out_features = out_features;
    m->weight = add_param(ps, prefix, "weight", BL_SHAPE(out_features, in_features));
    if (!m->weight) return BL_ERR;
    BL_TRY(bl_init_kaiming_uniform_(m->weight, rng, sqrt(5.0)));
    if (bias) {
        m->bias = add_param(ps, prefix, "bias", BL_SHAPE(out_features));
        if (!m->bias) return BL_ERR;
        BL_TRY(bl__init_default_bias(m->bias, m->weight, rng));
    }
    return BL_OK;
}

bl_tensor *bl_linear_layer_forward(const bl_linear_layer *m, bl_tensor *x) {
    BL_NONNULL(x);
    BL_CHECK(x->ndim >= 1 && x->shape[x->ndim - 1] == m->in_features,
             "Linear(%lld -> %lld): input of shape %s, expected last dim %lld", (long long)m->in_features,
             (long long)m->out_features, bl__shape(x), (long long)m->in_features);
    return bl_linear(x, m->weight, m->bias);
}

/* ---- convolution ---- */

int bl_conv2d_layer_init(bl_conv2d_layer *m, bl_params *ps, const char *prefix, int64_t in_channels,
                         int64_t out_channels, int64_t kernel, bl_conv_args args, bool bias, bl_rng *rng) {
    int groups = args.groups > 0 ? args.groups : 1;
    BL_CHECK_RC(in_channels > 0 && out_channels > 0 && kernel > 0 && in_channels % groups == 0 &&
                    out_channels % groups == 0,
                "Conv2d '%s': invalid sizes %lld -> %lld, kernel %lld, groups %d", prefix, (long long)in_channels,
                (long long)out_channels, (long long)kernel, groups);
    memset(m, 0, sizeof *m);
    m->in_channels = in_channels;
    m->out_channels = out_channels;
    m->kernel = kernel;
    m->args = args;
    m->args.groups = groups;
    m->weight = add_param(ps, prefix, "weight", BL_SHAPE(out_channels, in_channels / groups, kernel, kernel));
    if (!m->weight) return BL_ERR;
    BL_TRY(bl_init_kaiming_uniform_(m->weight, rng, sqrt(5.0)));
    if (bias) {
        m->bias = add_param(ps, prefix, "bias", BL_SHAPE(out_channels));
        if (!m->bias) return BL_ERR;
        BL_TRY(bl__init_default_bias(m->bias, m->weight, rng));
    }
    return BL_OK;
}

bl_tensor *bl_conv2d_layer_forward(const bl_conv2d_layer *m, bl_tensor *x) {
    BL_NONNULL(x);
    BL_CHECK(x->ndim == 4 && x->shape[1] == m->in_channels,
             "Conv2d(%lld -> %lld, kernel %lld): input of shape %s, expected (N, %lld, H, W)",
             (long long)m->in_channels, (long long)m->out_channels, (long long)m->kernel, bl__shape(x),
             (long long)m->in_channels);
    return bl_conv2d(x, m->weight, m->bias, m->args);
}

/* ---- normalization ---- */

/* weight = 1, bias = 0: the affine part of every torch normalization layer starts as the identity. */
static int add_affine(bl_params *ps, const char *prefix, int64_t channels, bl_tensor **weight, bl_tensor **bias) {
    *weight = add_param(ps, prefix, "weight", BL_SHAPE(channels));
    *bias = add_param(ps, prefix, "bias", BL_SHAPE(channels));
    if (!*weight || !*bias) return BL_ERR;
    return bl_fill_(*weight, 1.0);
}

static bool channels_match(const bl_tensor *x, int64_t channels) { return x->ndim >= 2 && x->shape[1] == channels; }

int bl_batchnorm_init(bl_batchnorm *m, bl_params *ps, const char *prefix, int64_t num_features) {
    BL_CHECK_RC(num_features > 0, "BatchNorm '%s': num_features must be positive", prefix);
    memset(m, 0, sizeof *m);
    m->num_features = num_features;
    m->momentum = 0.1;
    m->eps = 1e-5;
    BL_TRY(add_affine(ps, prefix, num_features, &m->weight, &m->bias));
    char full[BL_PARAM_NAME_MAX];
    m->running_mean =
        bl_params_add_buffer(ps, bl_param_name(full, prefix, "running_mean"), BL_F32, BL_SHAPE(num_features));
    m->running_var =
        bl_params_add_buffer(ps, bl_param_name(full, prefix, "running_var"), BL_F32, BL_SHAPE(num_features));
    m->num_batches_tracked =
        bl_params_add_buffer(ps, bl_param_name(full, prefix, "num_batches_tracked"), BL_I64, 0, NULL);
    if (!m->running_mean || !m->running_var || !m->num_batches_tracked) return BL_ERR;
    return bl_fill_(m->running_var, 1.0);
}

bl_tensor *bl_batchnorm_forward(bl_batchnorm *m, bl_tensor *x, bool training) {
    BL_NONNULL(x);
    BL_CHECK(channels_match(x, m->num_features), "BatchNorm(%lld): input of shape %s, expected (N, %lld, ...)",
             (long long)m->num_features, bl__shape(x), (long long)m->num_features);
    bl_tensor *y = bl_batch_norm(x, m->weight, m->bias, m->running_mean, m->running_var, training, m->momentum, m->eps);
    if (y && training && m->num_batches_tracked) (*(int64_t *)m->num_batches_tracked->data)++;
    return y;
}

int bl_layernorm_init(bl_layernorm *m, bl_params *ps, const char *prefix, int64_t dim, double eps) {
    BL_CHECK_RC(dim > 0 && eps > 0, "LayerNorm '%s': needs dim > 0 and eps > 0", prefix);
    memset(m, 0, sizeof *m);
    m->dim = dim;
    m->eps = eps;
    return add_affine(ps, prefix, dim, &m->weight, &m->bias);
}

bl_tensor *bl_layernorm_forward(const bl_layernorm *m, bl_tensor *x) {
    BL_NONNULL(x);
    BL_CHECK(x->ndim >= 1 && x->shape[x->ndim - 1] == m->dim, "LayerNorm(%lld): input of shape %s", (long long)m->dim,
             bl__shape(x));
    return bl_layer_norm(x, 1, &m->dim, m->weight, m->bias, m->eps);
}

int bl_groupnorm_init(bl_groupnorm *m, bl_params *ps, const char *prefix, int64_t groups, int64_t channels) {
    BL_CHECK_RC(groups > 0 && channels > 0 && channels % groups == 0,
                "GroupNorm '%s': %lld channels do not split into %lld groups", prefix, (long long)channels,
                (long long)groups);
    memset(m, 0, sizeof *m);
    m->groups = groups;
    m->channels = channels;
    m->eps = 1e-5;
    return add_affine(ps, prefix, channels, &m->weight, &m->bias);
}

bl_tensor *bl_groupnorm_forward(const bl_groupnorm *m, bl_tensor *x) {
    BL_NONNULL(x);
    BL_CHECK(channels_match(x, m->channels), "GroupNorm(%lld, %lld): input of shape %s, expected (N, %lld, ...)",
             (long long)m->groups, (long long)m->channels, bl__shape(x), (long long)m->channels);
    return bl_group_norm(x, (int)m->groups, m->weight, m->bias, m->eps);
}

int bl_instancenorm_init(bl_instancenorm *m, bl_params *ps, const char *prefix, int64_t channels) {
    BL_CHECK_RC(channels > 0, "InstanceNorm '%s': channels must be positive", prefix);
    memset(m, 0, sizeof *m);
    m->channels = channels;
    m->eps = 1e-5;
    return add_affine(ps, prefix, channels, &m->weight, &m->bias);
}

bl_tensor *bl_instancenorm_forward(const bl_instancenorm *m, bl_tensor *x) {
    BL_NONNULL(x);
    BL_CHECK(channels_match(x, m->channels), "InstanceNorm(%lld): input of shape %s, expected (N, %lld, ...)",
             (long long)m->channels, bl__shape(x), (long long)m->channels);
    return bl_instance_norm(x, m->weight, m->bias, m->eps);
}

/* ---- dropout ---- */

void bl_dropout_layer_init(bl_dropout_layer *m, double p, bl_rng *rng) {
    m->p = p;
    m->rng = (bl_rng){0, 0};
    if (p > 0 && rng) m->rng = bl_rng_make(bl_rng_u64(rng), 0);
}

bl_tensor *bl_dropout_layer_forward(bl_dropout_layer *m, bl_tensor *x, bool training) {
    if (!training || m->p <= 0) return x;
    return bl_dropout(x, m->p, training, &m->rng);
}
