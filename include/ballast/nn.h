/* ballast nn: the building blocks of models, each a small struct with an init and a forward.
 *
 * A module owns nothing: its init registers its parameters (and buffers) in a bl_params under
 * PyTorch's names, "<prefix>.weight", "<prefix>.bias", ..., fills them with PyTorch's default
 * initialization, and keeps pointers to them. Its forward is a composition of ops (ops.h), so
 * autograd, second-order gradients and every backend come for free. Because a module only holds
 * tensor pointers, it can be pointed at other tensors of the same shapes (F64 copies for a gradient
 * check, a teacher's weights, ...) by assigning its fields.
 *
 * Init functions take the bl_rng stream that all of a model's initial values are drawn from, in
 * registration order, and return BL_OK or BL_ERR. Forwards follow the ops' conventions: a NULL
 * input gives NULL, errors name the module. Forwards that behave differently in training (dropout,
 * batch statistics) take `bool training`. */
#ifndef BALLAST_NN_H
#define BALLAST_NN_H

#include "ballast/ops.h"
#include "ballast/params.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- initializers (in place, any float tensor; not recorded by autograd) ---------------------- */

typedef enum { BL_FAN_IN = 0, BL_FAN_OUT } bl_fan_mode;
/* For a weight (O, I, k...): fan_in = I * prod(k), fan_out = O * prod(k), as torch.nn.init. */
int64_t bl_init_fan(const bl_tensor *w, bl_fan_mode mode);
/* U(-b, b) with b = sqrt(6 / ((1 + a^2) fan_in)): torch's kaiming_uniform_(w, a). PyTorch's default
 * for Linear and Conv weights is a = sqrt(5), which makes b = 1 / sqrt(fan_in). */
int bl_init_kaiming_uniform_(bl_tensor *w, bl_rng *rng, double a);
/* N(0, 2 / fan): torch's kaiming_normal_(w, mode=mode, nonlinearity='relu'). */
int bl_init_kaiming_normal_(bl_tensor *w, bl_rng *rng, bl_fan_mode mode);
/* N(mean, std^2) restricted to [lo, hi] (absolute bounds), as torch's trunc_normal_. */
int bl_init_trunc_normal_(bl_tensor *t, bl_rng *rng, double mean, double std, double lo, double hi);

/* ---- activations ------------------------------------------------------------------------------ */

typedef enum { BL_ACT_IDENTITY = 0, BL_ACT_RELU, BL_ACT_GELU, BL_ACT_TANH, BL_ACT_SIGMOID } bl_activation;
bl_tensor *bl_activate(bl_tensor *x, bl_activation act);

/* ---- linear and convolution -------------------------------------------------------------------- */

/* torch.nn.Linear: x (.., in) -> (.., out). weight (out, in), bias (out) or NULL. */
typedef struct {
    bl_tensor *weight, *bias;
    int64_t in_features, out_features;
} bl_linear_layer;
int bl_linear_layer_init(bl_linear_layer *m, bl_params *ps, const char *prefix, int64_t in_features,
                         int64_t out_features, bool bias, bl_rng *rng);
bl_tensor *bl_linear_layer_forward(const bl_linear_layer *m, bl_tensor *x);

/* torch.nn.Conv2d with a square kernel: x (N, C, H, W) -> (N, O, OH, OW). weight (O, C/groups, K, K),
 * bias (O) or NULL. `args` gives stride, padding, dilation and groups (bl_conv_args_make). */
typedef struct {
    bl_tensor *weight, *bias;
    int64_t in_channels, out_channels, kernel;
    bl_conv_args args;
} bl_conv2d_layer;
int bl_conv2d_layer_init(bl_conv2d_layer *m, bl_params *ps, const char *prefix, int64_t in_channels,
                         int64_t out_channels, int64_t kernel, bl_conv_args args, bool bias, bl_rng *rng);
bl_tensor *bl_conv2d_layer_forward(const bl_conv2d_layer *m, bl_tensor *x);

/* ---- normalization ----------------------------------------------------------------------------- */

/* torch.nn.BatchNorm1d/2d over (N, C, ...): weight = 1, bias = 0 (parameters), running_mean = 0,
 * running_var = 1 and num_batches_tracked (BL_I64 scalar) as buffers. Training normalizes with batch
 * statistics and updates the running ones; eval uses the running ones. momentum and eps (0.1, 1e-5)
 * may be changed after init. */
typedef struct {
    bl_tensor *weight, *bias, *running_mean, *running_var, *num_batches_tracked;
    int64_t num_features;
    double momentum, eps;
} bl_batchnorm;
int bl_batchnorm_init(bl_batchnorm *m, bl_params *ps, const char *prefix, int64_t num_features);
bl_tensor *bl_batchnorm_forward(bl_batchnorm *m, bl_tensor *x, bool training);

/* torch.nn.LayerNorm(dim, eps) over the last dim: weight = 1, bias = 0. */
typedef struct {
    bl_tensor *weight, *bias;
    int64_t dim;
    double eps;
} bl_layernorm;
int bl_layernorm_init(bl_layernorm *m, bl_params *ps, const char *prefix, int64_t dim, double eps);
bl_tensor *bl_layernorm_forward(const bl_layernorm *m, bl_tensor *x);

/* torch.nn.GroupNorm(groups, channels, eps=1e-5, affine=True) over (N, C, ...). */
typedef struct {
    bl_tensor *weight, *bias;
    int64_t groups, channels;
    double eps;
} bl_groupnorm;
int bl_groupnorm_init(bl_groupnorm *m, bl_params *ps, const char *prefix, int64_t groups, int64_t channels);
bl_tensor *bl_groupnorm_forward(const bl_groupnorm *m, bl_tensor *x);

/* torch.nn.InstanceNorm2d(channels, affine=True): per-sample, per-channel statistics, no running
 * estimates; eps 1e-5. */
typedef struct {
    bl_tensor *weight, *bias;
    int64_t channels;
    double eps;
} bl_instancenorm;
int bl_instancenorm_init(bl_instancenorm *m, bl_params *ps, const char *prefix, int64_t channels);
bl_tensor *bl_instancenorm_forward(const bl_instancenorm *m, bl_tensor *x);

/* ---- dropout ----------------------------------------------------------------------------------- */

/* torch.nn.Dropout(p) with its own random stream, split off `rng` only when p > 0: a p = 0 layer
 * leaves the stream, and so every later initial value, unchanged. */
typedef struct {
    double p;
    bl_rng rng;
} bl_dropout_layer;
void bl_dropout_layer_init(bl_dropout_layer *m, double p, bl_rng *rng);
bl_tensor *bl_dropout_layer_forward(bl_dropout_layer *m, bl_tensor *x, bool training);

/* ---- composite blocks -------------------------------------------------------------------------- */

/* timm's Mlp: fc1 -> act -> dropout -> fc2 -> dropout, parameters "<prefix>.fc1.*", "<prefix>.fc2.*". */
typedef struct {
    bl_linear_layer fc1, fc2;
    bl_activation act;
    bl_dropout_layer drop;
} bl_mlp;
int bl_mlp_init(bl_mlp *m, bl_params *ps, const char *prefix, int64_t in_features, int64_t hidden_features,
                int64_t out_features, bl_activation act, double drop, bl_rng *rng);
bl_tensor *bl_mlp_forward(bl_mlp *m, bl_tensor *x, bool training);

/* Multi-head self-attention as timm's Attention: one fused "<prefix>.qkv" linear (dim -> 3 dim, its
 * output split as (3, heads, head_dim)), scaled dot-product attention per head, "<prefix>.proj"
 * (dim -> dim), then dropout. x (B, T, D) -> (B, T, D). */
typedef struct {
    bl_linear_layer qkv, proj;
    int64_t dim, heads;
    bl_dropout_layer proj_drop;
} bl_mha;
int bl_mha_init(bl_mha *m, bl_params *ps, const char *prefix, int64_t dim, int64_t heads, bool qkv_bias, double drop,
                bl_rng *rng);
/* mask: NULL or as bl_scaled_dot_product_attention's, broadcast to (B, heads, T, T). */
bl_tensor *bl_mha_forward(bl_mha *m, bl_tensor *x, bl_tensor *mask, bool training);

/* timm's pre-norm transformer Block: x + attn(norm1(x)), then + mlp(norm2(x)) with a GELU MLP of
 * hidden size mlp_ratio * dim. Names: norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2. */
typedef struct {
    bl_layernorm norm1, norm2;
    bl_mha attn;
    bl_mlp mlp;
} bl_transformer_block;
int bl_transformer_block_init(bl_transformer_block *m, bl_params *ps, const char *prefix, int64_t dim, int64_t heads,
                              double mlp_ratio, bool qkv_bias, double drop, double norm_eps, bl_rng *rng);
bl_tensor *bl_transformer_block_forward(bl_transformer_block *m, bl_tensor *x, bool training);

#ifdef __cplusplus
}
#endif
#endif
