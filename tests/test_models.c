/* Models: parameter counts and names as PyTorch's reference code (torchvision, timm, the CIFAR
 * ResNet, the dataset distillation ConvNet), initial value statistics, output and stage shapes,
 * whole-network forwards against naive re-implementations written here from the papers'
 * definitions (reading weights by name), BatchNorm train/eval behaviour, and gradients: every
 * parameter receives one, and a finite difference along the gradient matches its norm. */
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------------------- */

static bool has_shape(const bl_tensor *t, int ndim, const int64_t *shape) {
    if (!t || t->ndim != ndim) return false;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d]) return false;
    return true;
}

static bool ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

/* Non-trivial BatchNorm state (the defaults make eval-mode BN the identity, which would hide bugs). */
static void randomize_norms(bl_model *m, uint64_t seed) {
    bl_rng r = bl_rng_make(seed, 9);
    for (int i = 0; i < m->params.count; i++) {
        const char *name = m->params.entries[i].name;
        bl_tensor *t = m->params.entries[i].tensor;
        if (ends_with(name, "running_mean")) bl_fill_normal_(t, &r, 0.0, 0.1);
        if (ends_with(name, "running_var")) bl_fill_uniform_(t, &r, 0.5, 1.5);
        if (t->ndim == 1 && ends_with(name, "weight")) bl_fill_normal_(t, &r, 1.0, 0.2);
        if (t->ndim == 1 && ends_with(name, "bias")) bl_fill_normal_(t, &r, 0.0, 0.1);
    }
}

/* A naive feature map: values in NCHW order. */
typedef struct {
    double *v;
    int64_t n, c, h, w;
} fmap;

static fmap fm_new(int64_t n, int64_t c, int64_t h, int64_t w) {
    fmap f = {bl_arena_alloc((size_t)(n * c * h * w) * sizeof(double)), n, c, h, w};
    memset(f.v, 0, (size_t)(n * c * h * w) * sizeof(double));
    return f;
}

static fmap fm_from(const bl_tensor *t) {
    fmap f = fm_new(t->shape[0], t->shape[1], t->shape[2], t->shape[3]);
    for (int64_t i = 0; i < bl_numel(t); i++) f.v[i] = bl_get_flat(t, i);
    return f;
}

static int64_t fm_size(fmap f) { return f.n * f.c * f.h * f.w; }

static const bl_tensor *param(const bl_model *m, const char *prefix, const char *name) {
    char full[BL_PARAM_NAME_MAX];
    const bl_tensor *t = bl_model_param(m, bl_param_name(full, prefix, name));
    if (!t) {
        fprintf(stderr, "missing parameter %s\n", full);
        abort();
    }
    return t;
}

/* Convolution reading "<prefix>.weight" (O, C, K, K) and, when present, "<prefix>.bias". */
static fmap fm_conv(const bl_model *m, const char *prefix, fmap x, int stride, int pad) {
    const bl_tensor *wt = param(m, prefix, "weight");
    char full[BL_PARAM_NAME_MAX];
    const bl_tensor *bt = bl_model_param(m, bl_param_name(full, prefix, "bias"));
    int64_t O = wt->shape[0], K = wt->shape[2];
    fmap y = fm_new(x.n, O, (x.h + 2 * pad - K) / stride + 1, (x.w + 2 * pad - K) / stride + 1);
    const float *w = wt->data;
    for (int64_t n = 0; n < x.n; n++)
        for (int64_t o = 0; o < O; o++)
            for (int64_t i = 0; i < y.h; i++)
                for (int64_t j = 0; j < y.w; j++) {
                    double s = bt ? bl_get_flat(bt, o) : 0;
                    for (int64_t c = 0; c < x.c; c++)
                        for (int64_t ki = 0; ki < K; ki++)
                            for (int64_t kj = 0; kj < K; kj++) {
                                int64_t r = i * stride - pad + ki, q = j * stride - pad + kj;
                                if (r >= 0 && r < x.h && q >= 0 && q < x.w)
                                    s +=
                                        x.v[((n * x.c + c) * x.h + r) * x.w + q] * w[((o * x.c + c) * K + ki) * K + kj];
                            }
                    y.v[((n * O + o) * y.h + i) * y.w + j] = s;
                }
    return y;
}

/* Eval-mode BatchNorm from the running statistics. */
static fmap fm_bn(const bl_model *m, const char *prefix, fmap x) {
    const bl_tensor *w = param(m, prefix, "weight"), *b = param(m, prefix, "bias");
    const bl_tensor *rm = param(m, prefix, "running_mean"), *rv = param(m, prefix, "running_var");
    fmap y = fm_new(x.n, x.c, x.h, x.w);
    for (int64_t i = 0; i < fm_size(x); i++) {
        int64_t c = (i / (x.h * x.w)) % x.c;
        y.v[i] =
            (x.v[i] - bl_get_flat(rm, c)) / sqrt(bl_get_flat(rv, c) + 1e-5) * bl_get_flat(w, c) + bl_get_flat(b, c);
    }
    return y;
}

static fmap fm_relu(fmap x) {
    for (int64_t i = 0; i < fm_size(x); i++) x.v[i] = x.v[i] > 0 ? x.v[i] : 0;
    return x;
}

static fmap fm_add(fmap a, fmap b) {
    for (int64_t i = 0; i < fm_size(a); i++) a.v[i] += b.v[i];
    return a;
}

static fmap fm_max_pool(fmap x, int k, int stride, int pad) {
    fmap y = fm_new(x.n, x.c, (x.h + 2 * pad - k) / stride + 1, (x.w + 2 * pad - k) / stride + 1);
    for (int64_t p = 0; p < x.n * x.c; p++)
        for (int64_t i = 0; i < y.h; i++)
            for (int64_t j = 0; j < y.w; j++) {
                double best = -INFINITY;
                for (int a = 0; a < k; a++)
                    for (int b = 0; b < k; b++) {
                        int64_t r = i * stride - pad + a, q = j * stride - pad + b;
                        if (r >= 0 && r < x.h && q >= 0 && q < x.w && x.v[(p * x.h + r) * x.w + q] > best)
                            best = x.v[(p * x.h + r) * x.w + q];
                    }
                y.v[(p * y.h + i) * y.w + j] = best;
            }
    return y;
}

static fmap fm_avg_pool2(fmap x) {
    fmap y = fm_new(x.n, x.c, x.h / 2, x.w / 2);
    for (int64_t p = 0; p < x.n * x.c; p++)
        for (int64_t i = 0; i < y.h; i++)
            for (int64_t j = 0; j < y.w; j++) {
                const double *s = x.v + (p * x.h + 2 * i) * x.w + 2 * j;
                y.v[(p * y.h + i) * y.w + j] = (s[0] + s[1] + s[x.w] + s[x.w + 1]) / 4;
            }
    return y;
}

/* Option A: x[:, :, ::2, ::2] with `pad` zero channels on each side. */
static fmap fm_subsample_pad(fmap x, int64_t pad) {
    fmap y = fm_new(x.n, x.c + 2 * pad, (x.h + 1) / 2, (x.w + 1) / 2);
    for (int64_t n = 0; n < x.n; n++)
        for (int64_t c = 0; c < x.c; c++)
            for (int64_t i = 0; i < y.h; i++)
                for (int64_t j = 0; j < y.w; j++)
                    y.v[((n * y.c + c + pad) * y.h + i) * y.w + j] = x.v[((n * x.c + c) * x.h + 2 * i) * x.w + 2 * j];
    return y;
}

/* (N, C, H, W) -> per-sample feature vectors (N, C) */
static double *fm_global_mean(fmap x) {
    double *f = bl_arena_alloc((size_t)(x.n * x.c) * sizeof *f);
    for (int64_t p = 0; p < x.n * x.c; p++) {
        double s = 0;
        for (int64_t i = 0; i < x.h * x.w; i++) s += x.v[p * x.h * x.w + i];
        f[p] = s / (x.h * x.w);
    }
    return f;
}

/* logits (rows, out) from features (rows, in) through "<prefix>.weight/bias" */
static double *naive_head(const bl_model *m, const char *prefix, const double *f, int64_t rows, int64_t in) {
    const bl_tensor *w = param(m, prefix, "weight"), *b = param(m, prefix, "bias");
    int64_t out = w->shape[0];
    double *y = bl_arena_alloc((size_t)(rows * out) * sizeof *y);
    for (int64_t r = 0; r < rows; r++)
        for (int64_t o = 0; o < out; o++) {
            double s = bl_get_flat(b, o);
            for (int64_t i = 0; i < in; i++) s += f[r * in + i] * bl_get_flat(w, o * in + i);
            y[r * out + o] = s;
        }
    return y;
}

/* One residual block from its definition (He et al.; torchvision's v1.5 bottleneck). */
static fmap naive_block(const bl_model *m, const char *prefix, fmap x, int stride, bool bottleneck, bool option_a) {
    char name[BL_PARAM_NAME_MAX];
    fmap h;
    if (bottleneck) {
        h = fm_relu(
            fm_bn(m, bl_param_name(name, prefix, "bn1"), fm_conv(m, bl_param_name(name, prefix, "conv1"), x, 1, 0)));
        h = fm_relu(fm_bn(m, bl_param_name(name, prefix, "bn2"),
                          fm_conv(m, bl_param_name(name, prefix, "conv2"), h, stride, 1)));
        h = fm_bn(m, bl_param_name(name, prefix, "bn3"), fm_conv(m, bl_param_name(name, prefix, "conv3"), h, 1, 0));
    } else {
        h = fm_relu(fm_bn(m, bl_param_name(name, prefix, "bn1"),
                          fm_conv(m, bl_param_name(name, prefix, "conv1"), x, stride, 1)));
        h = fm_bn(m, bl_param_name(name, prefix, "bn2"), fm_conv(m, bl_param_name(name, prefix, "conv2"), h, 1, 1));
    }
    fmap shortcut = x;
    if (h.c != x.c || stride != 1) {
        if (option_a) {
            shortcut = fm_subsample_pad(x, (h.c - x.c) / 2);
        } else {
            shortcut = fm_conv(m, bl_param_name(name, prefix, "downsample.0"), x, stride, 0);
            shortcut = fm_bn(m, bl_param_name(name, prefix, "downsample.1"), shortcut);
        }
    }
    return fm_relu(fm_add(h, shortcut));
}

/* Eval-mode logits of a ResNet, with `blocks` per stage. */
static double *naive_resnet(const bl_model *m, const bl_tensor *x, int stages, const int *blocks, bool bottleneck,
                            bool cifar_family, bool imagenet_stem, int64_t *feature_dim) {
    fmap h = fm_from(x);
    h = fm_relu(fm_bn(m, "bn1", fm_conv(m, "conv1", h, imagenet_stem ? 2 : 1, imagenet_stem ? 3 : 1)));
    if (imagenet_stem) h = fm_max_pool(h, 3, 2, 1);
    for (int s = 0; s < stages; s++)
        for (int b = 0; b < blocks[s]; b++) {
            char prefix[32];
            snprintf(prefix, sizeof prefix, "layer%d.%d", s + 1, b);
            h = naive_block(m, prefix, h, s > 0 && b == 0 ? 2 : 1, bottleneck, cifar_family);
        }
    *feature_dim = h.c;
    return naive_head(m, cifar_family ? "linear" : "fc", fm_global_mean(h), h.n, h.c);
}

static int count_entries(const bl_model *m) { return m ? m->params.count : -1; }

/* ---- tests ------------------------------------------------------------------------------------ */

static void test_names_list_and_errors(void) {
    const char *expected[] = {"resnet20", "resnet32",       "resnet44", "resnet56", "resnet110", "resnet18", "resnet34",
                              "resnet50", "resnet18_cifar", "convnet3", "vit_tiny", "vit_small", "vit_base",
                              "resnet32_bbn"};
    const int n_expected = (int)(sizeof expected / sizeof expected[0]);
    int n = 0;
    for (const char *const *name = bl_model_names(); *name; name++) n++;
    CHECK(n == n_expected, "%d names", n);
    for (int i = 0; i < n_expected; i++) {
        bool found = false;
        for (const char *const *name = bl_model_names(); *name; name++) found |= strcmp(*name, expected[i]) == 0;
        CHECK(found, "%s is listed", expected[i]);
    }
    CHECK(bl_model_create("resnet99", NULL, 0) == NULL);
    CHECK(strstr(bl_last_error(), "unknown model 'resnet99'") && strstr(bl_last_error(), "resnet32"), "%s",
          bl_last_error());
    bl_clear_error();
    CHECK(bl_model_create("vit_tiny", &(bl_model_opts){.image_size = 30, .patch_size = 8}, 0) == NULL);
    CHECK(strstr(bl_last_error(), "patch size") != NULL);
    bl_clear_error();
    CHECK(bl_model_create("resnet20", &(bl_model_opts){.num_classes = -3}, 0) == NULL);
    bl_clear_error();
    CHECK(bl_model_create("convnet3", &(bl_model_opts){.image_size = 4}, 0) == NULL, "4x4 is too small for 3 pools");
    bl_clear_error();
    bl_model *m = bl_model_create("resnet20", NULL, 0);
    CHECK(m && bl_model_forward(m, test_randn(BL_F32, BL_SHAPE(1, 1, 8, 8), 1)) == NULL);
    CHECK(strstr(bl_last_error(), "resnet20: input of shape [1, 1, 8, 8]") != NULL, "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_model_classifier(m, test_randn(BL_F32, BL_SHAPE(2, 63), 1)) == NULL);
    bl_clear_error();
    CHECK(bl_model_forward(m, NULL) == NULL);
    bl_clear_error();
    bl_model_free(m);
    bl_model_free(NULL);
}

/* Names (with shapes) that must, or must not, be in a model built with default options; buffers
 * are not trained and every parameter has its gradient slot in the store. */
static void check_names(const bl_model *m) {
    struct {
        const char *model, *name;
        int ndim;
        int64_t shape[4];
    } present[] = {
        {"resnet32", "conv1.weight", 4, {16, 3, 3, 3}},
        {"resnet32", "layer1.0.conv1.weight", 4, {16, 16, 3, 3}},
        {"resnet32", "layer2.0.conv1.weight", 4, {32, 16, 3, 3}},
        {"resnet32", "layer3.4.bn2.running_var", 1, {64}},
        {"resnet32", "layer2.0.bn1.num_batches_tracked", 0, {0}},
        {"resnet32", "linear.weight", 2, {10, 64}},
        {"resnet18", "conv1.weight", 4, {64, 3, 7, 7}},
        {"resnet18", "layer2.0.downsample.0.weight", 4, {128, 64, 1, 1}},
        {"resnet18", "layer4.1.bn2.running_mean", 1, {512}},
        {"resnet18", "fc.weight", 2, {1000, 512}},
        {"resnet18_cifar", "conv1.weight", 4, {64, 3, 3, 3}},
        {"resnet18_cifar", "fc.bias", 1, {10}},
        {"resnet50", "layer1.0.downsample.0.weight", 4, {256, 64, 1, 1}},
        {"resnet50", "layer3.5.conv2.weight", 4, {256, 256, 3, 3}},
        {"resnet50", "layer4.2.conv3.weight", 4, {2048, 512, 1, 1}},
        {"resnet50", "fc.weight", 2, {1000, 2048}},
        {"convnet3", "features.0.weight", 4, {128, 3, 3, 3}},
        {"convnet3", "features.1.weight", 1, {128}},
        {"convnet3", "features.8.bias", 1, {128}},
        {"convnet3", "features.9.bias", 1, {128}},
        {"convnet3", "classifier.weight", 2, {10, 2048}},
        {"vit_tiny", "cls_token", 3, {1, 1, 192}},
        {"vit_tiny", "pos_embed", 3, {1, 197, 192}},
        {"vit_tiny", "patch_embed.proj.weight", 4, {192, 3, 16, 16}},
        {"vit_tiny", "blocks.11.attn.qkv.weight", 2, {576, 192}},
        {"vit_tiny", "blocks.0.mlp.fc1.weight", 2, {768, 192}},
        {"vit_tiny", "blocks.5.norm2.bias", 1, {192}},
        {"vit_tiny", "norm.weight", 1, {192}},
        {"vit_tiny", "head.weight", 2, {1000, 192}},
    };
    struct {
        const char *model, *name;
    } absent[] = {
        {"resnet32", "layer2.0.downsample.0.weight"},
        {"resnet32", "fc.weight"},
        {"resnet18", "layer1.0.downsample.0.weight"},
        {"resnet18", "linear.weight"},
        {"convnet3", "features.12.weight"},
        {"vit_tiny", "blocks.12.norm1.weight"},
        {"vit_tiny", "fc_norm.weight"},
    };
    for (size_t i = 0; i < sizeof present / sizeof present[0]; i++) {
        if (strcmp(present[i].model, m->name)) continue;
        bl_tensor *t = bl_model_param(m, present[i].name);
        CHECK(has_shape(t, present[i].ndim, present[i].shape), "%s: %s", m->name, present[i].name);
    }
    for (size_t i = 0; i < sizeof absent / sizeof absent[0]; i++)
        if (!strcmp(absent[i].model, m->name))
            CHECK(!bl_model_param(m, absent[i].name), "%s: %s", m->name, absent[i].name);
    for (int i = 0; i < m->params.count; i++) {
        const bl_param_entry *e = &m->params.entries[i];
        bool buffer = ends_with(e->name, "running_mean") || ends_with(e->name, "running_var") ||
                      ends_with(e->name, "num_batches_tracked");
        CHECK(e->trainable == !buffer, "%s", e->name);
        CHECK(buffer || (e->tensor->grad && e->tensor->requires_grad), "%s", e->name);
    }
}

/* Counts equal sum(p.numel() for p in model.parameters()) of the reference implementations; the
 * entry counts equal len(model.state_dict()). */
static void test_parameter_counts_and_names(void) {
    struct {
        const char *name;
        bl_model_opts opts;
        size_t params;
        int entries;
    } cases[] = {
        {"resnet20", {0}, 269722, 116},
        {"resnet32", {0}, 464154, 188},
        {"resnet32", {.num_classes = 100}, 464154 + 90 * 65, 188},
        {"resnet44", {0}, 658586, 260},
        {"resnet56", {0}, 853018, 332},
        {"resnet110", {0}, 1727962, 656},
        {"resnet18", {0}, 11689512, 122},
        {"resnet34", {0}, 21797672, 218},
        {"resnet50", {0}, 25557032, 320},
        {"resnet18_cifar", {0}, 11173962, 122},
        {"convnet3", {0}, 320010, 14},
        {"convnet3", {.in_channels = 1, .image_size = 28}, 320010 - 2 * 128 * 9, 14},
        {"convnet3",
         {.width = 64, .depth = 4, .image_size = 64},
         3 * 64 * 9 + 64 + 3 * (64 * 64 * 9 + 64) + 4 * 128 + 64 * 16 * 10 + 10,
         18},
        {"vit_tiny", {0}, 5717416, 152},
        {"vit_small", {0}, 22050664, 152},
        {"vit_tiny",
         {.image_size = 32, .patch_size = 4, .num_classes = 10},
         5717416 - 196 * 192 - 3 * 192 * 240 - 990 * 193 + 64 * 192,
         152},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bl_model *m = bl_model_create(cases[i].name, &cases[i].opts, 0);
        CHECK(m, "%s", cases[i].name);
        if (!m) continue;
        CHECK(bl_model_num_params(m) == cases[i].params, "%s: %zu parameters, expected %zu", cases[i].name,
              bl_model_num_params(m), cases[i].params);
        CHECK(count_entries(m) == cases[i].entries, "%s: %d entries, expected %d", cases[i].name, count_entries(m),
              cases[i].entries);
        CHECK(m->params.finalized && m->training);
        bool default_opts = memcmp(&cases[i].opts, &(bl_model_opts){0}, sizeof(bl_model_opts)) == 0;
        if (default_opts) check_names(m);
        bl_model_free(m);
    }
    /* state-dict order of the CIFAR ResNet's first keys */
    bl_model *m = bl_model_create("resnet20", NULL, 0);
    const char *order[] = {"conv1.weight",          "bn1.weight",         "bn1.bias",
                           "bn1.running_mean",      "bn1.running_var",    "bn1.num_batches_tracked",
                           "layer1.0.conv1.weight", "layer1.0.bn1.weight"};
    for (int i = 0; i < 8 && m; i++) CHECK(strcmp(m->params.entries[i].name, order[i]) == 0, "%d", i);
    CHECK(m && strcmp(m->params.entries[m->params.count - 1].name, "linear.bias") == 0);
    bl_model_free(m);
}

static double tensor_std(const bl_tensor *t, double *max_abs) {
    double s = 0, s2 = 0, mx = 0;
    int64_t n = bl_numel(t);
    for (int64_t i = 0; i < n; i++) {
        double v = bl_get_flat(t, i);
        s += v, s2 += v * v;
        if (fabs(v) > mx) mx = fabs(v);
    }
    if (max_abs) *max_abs = mx;
    return sqrt(s2 / n - (s / n) * (s / n));
}

static void test_initial_values(void) {
    double mx;
    bl_model *a = bl_model_create("resnet20", NULL, 5), *b = bl_model_create("resnet20", NULL, 5);
    bl_model *c = bl_model_create("resnet20", NULL, 6);
    CHECK(a && b && c && a->params.numel == b->params.numel);
    CHECK(memcmp(a->params.data, b->params.data, a->params.numel * sizeof(float)) == 0, "same seed, same model");
    CHECK(memcmp(a->params.data, c->params.data, a->params.numel * sizeof(float)) != 0, "another seed differs");
    /* CIFAR family: kaiming_normal(fan_in) for convs and the linear layer, default uniform bias */
    CHECK(fabs(tensor_std(bl_model_param(a, "layer3.1.conv2.weight"), NULL) / sqrt(2.0 / 576) - 1) < 0.03);
    CHECK(fabs(tensor_std(bl_model_param(a, "linear.weight"), NULL) / sqrt(2.0 / 64) - 1) < 0.15);
    tensor_std(bl_model_param(a, "linear.bias"), &mx);
    CHECK(mx <= 1 / 8.0 && mx > 0);
    CHECK(bl_get_flat(bl_model_param(a, "layer2.1.bn1.weight"), 3) == 1 &&
          bl_get_flat(bl_model_param(a, "bn1.bias"), 0) == 0);
    CHECK(bl_get_flat(bl_model_param(a, "layer2.1.bn1.running_var"), 3) == 1);
    bl_model_free(a);
    bl_model_free(b);
    bl_model_free(c);

    /* torchvision: kaiming_normal(fan_out) for convs, default init for fc */
    bl_model *r = bl_model_create("resnet18", NULL, 1);
    CHECK(fabs(tensor_std(bl_model_param(r, "layer4.0.conv2.weight"), NULL) / sqrt(2.0 / (512 * 9)) - 1) < 0.03);
    CHECK(fabs(tensor_std(bl_model_param(r, "layer1.0.conv1.weight"), NULL) / sqrt(2.0 / (64 * 9)) - 1) < 0.03);
    tensor_std(bl_model_param(r, "fc.weight"), &mx);
    CHECK(mx <= 1 / sqrt(512.0) && mx > 0.99 / sqrt(512.0));
    bl_model_free(r);

    /* timm ViT: trunc_normal(.02) linears with zero bias, tiny class token */
    bl_model *v = bl_model_create("vit_tiny", &(bl_model_opts){.image_size = 32, .patch_size = 8}, 1);
    CHECK(fabs(tensor_std(bl_model_param(v, "blocks.3.attn.qkv.weight"), NULL) / 0.02 - 1) < 0.03);
    CHECK(fabs(tensor_std(bl_model_param(v, "head.weight"), NULL) / 0.02 - 1) < 0.1);
    CHECK(fabs(tensor_std(bl_model_param(v, "pos_embed"), NULL) / 0.02 - 1) < 0.1);
    tensor_std(bl_model_param(v, "blocks.7.mlp.fc2.bias"), &mx);
    CHECK(mx == 0);
    tensor_std(bl_model_param(v, "head.bias"), &mx);
    CHECK(mx == 0);
    tensor_std(bl_model_param(v, "cls_token"), &mx);
    CHECK(mx > 0 && mx < 1e-5);
    tensor_std(bl_model_param(v, "patch_embed.proj.weight"), &mx);
    CHECK(mx <= 1 / sqrt(192.0) && mx > 0.99 / sqrt(192.0), "patch embedding keeps the default conv init");
    CHECK(bl_get_flat(bl_model_param(v, "blocks.0.norm1.weight"), 0) == 1);
    bl_model_free(v);
}

static void test_output_and_stage_shapes(void) {
    struct {
        const char *name;
        bl_model_opts opts;
        int64_t n, c, size, features, classes;
        int stages;
        int64_t last_stage[4];
    } cases[] = {
        {"resnet20", {0}, 2, 3, 8, 64, 10, 3, {2, 64, 2, 2}},
        {"resnet110", {.num_classes = 100}, 2, 3, 8, 64, 100, 3, {2, 64, 2, 2}},
        {"resnet18_cifar", {0}, 2, 3, 8, 512, 10, 4, {2, 512, 1, 1}},
        {"resnet18", {.num_classes = 7}, 2, 3, 32, 512, 7, 4, {2, 512, 1, 1}},
        {"resnet50", {.num_classes = 7}, 2, 3, 32, 2048, 7, 4, {2, 2048, 1, 1}},
        {"convnet3", {0}, 2, 3, 32, 2048, 10, 3, {2, 128, 4, 4}},
        {"convnet3", {.in_channels = 1, .image_size = 28}, 2, 1, 28, 2048, 10, 3, {2, 128, 4, 4}},
        {"vit_tiny", {.image_size = 16, .patch_size = 8, .num_classes = 5}, 2, 3, 16, 192, 5, 12, {2, 5, 192}},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bl_scope s = bl_scope_begin();
        bl_model *m = bl_model_create(cases[i].name, &cases[i].opts, 3);
        CHECK(m, "%s", cases[i].name);
        if (!m) continue;
        m->training = false;
        CHECK(m->feature_dim == cases[i].features, "%s: feature_dim %lld", cases[i].name, (long long)m->feature_dim);
        bl_tensor *x = test_randn(BL_F32, BL_SHAPE(cases[i].n, cases[i].c, cases[i].size, cases[i].size), 4);
        BL_NO_GRAD {
            bl_tensor *f = bl_model_features(m, x), *y = bl_model_forward(m, x);
            CHECK(has_shape(f, BL_SHAPE(cases[i].n, cases[i].features)), "%s features", cases[i].name);
            CHECK(has_shape(y, BL_SHAPE(cases[i].n, cases[i].classes)), "%s logits: %s", cases[i].name,
                  bl_last_error());
            bl_tensor *again = bl_model_classifier(m, f);
            CHECK(test_max_rel_diff(again, y) == 0, "%s: forward = classifier(features)", cases[i].name);
            bl_tensor *stages[24];
            CHECK(bl_model_stages(m, x, 24, stages) == cases[i].stages, "%s stages", cases[i].name);
            int nd = cases[i].last_stage[3] ? 4 : 3;
            CHECK(has_shape(stages[cases[i].stages - 1], nd, cases[i].last_stage), "%s last stage", cases[i].name);
            bl_tensor *last2[2];
            CHECK(bl_model_stages(m, x, 2, last2) == 2 && test_max_rel_diff(last2[1], stages[cases[i].stages - 1]) == 0,
                  "%s: a short list keeps the deepest stages", cases[i].name);
        }
        bl_model_free(m);
        bl_scope_end(s);
    }
    /* every stage of the CIFAR ResNet, and ViT's input size check */
    bl_model *m = bl_model_create("resnet20", NULL, 3);
    bl_tensor *st[3];
    CHECK(bl_model_stages(m, test_randn(BL_F32, BL_SHAPE(2, 3, 8, 8), 5), 3, st) == 3);
    CHECK(has_shape(st[0], BL_SHAPE(2, 16, 8, 8)) && has_shape(st[1], BL_SHAPE(2, 32, 4, 4)));
    bl_model_free(m);
    bl_model *v = bl_model_create("vit_tiny", &(bl_model_opts){.image_size = 16, .patch_size = 8}, 3);
    CHECK(bl_model_forward(v, test_randn(BL_F32, BL_SHAPE(1, 3, 24, 24), 5)) == NULL);
    CHECK(strstr(bl_last_error(), "9 patches") != NULL, "%s", bl_last_error());
    bl_clear_error();
    bl_model_free(v);
}

static void check_resnet_against_naive(const char *name, bl_model_opts opts, int stages, const int *blocks,
                                       bool bottleneck, bool cifar_family, bool imagenet_stem, int64_t size) {
    bl_model *m = bl_model_create(name, &opts, 11);
    CHECK(m, "%s", name);
    if (!m) return;
    randomize_norms(m, 12);
    m->training = false;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, size, size), 13);
    int64_t fdim;
    double *ref = naive_resnet(m, x, stages, blocks, bottleneck, cifar_family, imagenet_stem, &fdim);
    bl_tensor *y;
    BL_NO_GRAD { y = bl_model_forward(m, x); }
    CHECK(fdim == m->feature_dim);
    CHECK(test_max_rel_diff_values(y, ref, 2 * opts.num_classes) < 1e-4, "%s: %g", name, test_max_rel_diff_values(y, ref, 2 * opts.num_classes));
    bl_model_free(m);
}

static void test_resnets_match_naive(void) {
    check_resnet_against_naive("resnet20", (bl_model_opts){.num_classes = 10}, 3, (const int[]){3, 3, 3}, false, true,
                               false, 8);
    check_resnet_against_naive("resnet18", (bl_model_opts){.num_classes = 6}, 4, (const int[]){2, 2, 2, 2}, false,
                               false, true, 32);
    check_resnet_against_naive("resnet18_cifar", (bl_model_opts){.num_classes = 10}, 4, (const int[]){2, 2, 2, 2},
                               false, false, false, 8);
    check_resnet_against_naive("resnet50", (bl_model_opts){.num_classes = 6}, 4, (const int[]){3, 4, 6, 3}, true, false,
                               true, 32);
}

static void test_convnet_matches_naive(void) {
    bl_model_opts opts[2] = {{.image_size = 16}, {.in_channels = 1, .image_size = 12, .width = 8, .depth = 2}};
    for (int k = 0; k < 2; k++) {
        bl_model *m = bl_model_create("convnet3", &opts[k], 21);
        CHECK(m);
        if (!m) continue;
        randomize_norms(m, 22);
        int64_t C = opts[k].in_channels ? opts[k].in_channels : 3, depth = opts[k].depth ? opts[k].depth : 3;
        bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, C, opts[k].image_size, opts[k].image_size), 23);
        fmap h = fm_from(x);
        for (int d = 0; d < depth; d++) {
            char conv[32], norm[32];
            snprintf(conv, sizeof conv, "features.%d", 4 * d);
            snprintf(norm, sizeof norm, "features.%d", 4 * d + 1);
            h = fm_conv(m, conv, h, 1, C == 1 && d == 0 ? 3 : 1);
            /* GroupNorm(C, C): every (sample, channel) plane normalized on its own, then affine */
            const bl_tensor *w = param(m, norm, "weight"), *b = param(m, norm, "bias");
            for (int64_t p = 0; p < h.n * h.c; p++) {
                double *v = h.v + p * h.h * h.w, mean = 0, var = 0;
                for (int64_t i = 0; i < h.h * h.w; i++) mean += v[i] / (h.h * h.w);
                for (int64_t i = 0; i < h.h * h.w; i++) var += (v[i] - mean) * (v[i] - mean) / (h.h * h.w);
                for (int64_t i = 0; i < h.h * h.w; i++)
                    v[i] = (v[i] - mean) / sqrt(var + 1e-5) * bl_get_flat(w, p % h.c) + bl_get_flat(b, p % h.c);
            }
            h = fm_avg_pool2(fm_relu(h));
        }
        int64_t fdim = h.c * h.h * h.w;
        CHECK(fdim == m->feature_dim, "%lld vs %lld", (long long)fdim, (long long)m->feature_dim);
        double *ref = naive_head(m, "classifier", h.v, 2, fdim);
        bl_tensor *y, *f;
        BL_NO_GRAD {
            f = bl_model_features(m, x);
            y = bl_model_forward(m, x);
        }
        CHECK(test_max_rel_diff_values(f, h.v, 2 * fdim) < 1e-4, "features %g", test_max_rel_diff_values(f, h.v, 2 * fdim));
        CHECK(test_max_rel_diff_values(y, ref, 20) < 1e-4, "logits %g", test_max_rel_diff_values(y, ref, 20));
        bl_model_free(m);
    }
}

/* A transformer block bound to the model's parameters "blocks.<i>.*" (it registers throwaway
 * parameters in `scratch`, then points at the model's). */
static void bind_block(bl_transformer_block *blk, bl_params *scratch, const bl_model *m, int i, int64_t D,
                       int64_t heads) {
    char prefix[32];
    snprintf(prefix, sizeof prefix, "blocks.%d", i);
    bl_rng r = bl_rng_make(0, 0);
    bl_transformer_block_init(blk, scratch, prefix, D, heads, 4.0, true, 0.0, 1e-6, &r);
    bl_tensor **slots[12] = {&blk->norm1.weight,     &blk->norm1.bias,     &blk->attn.qkv.weight, &blk->attn.qkv.bias,
                             &blk->attn.proj.weight, &blk->attn.proj.bias, &blk->norm2.weight,    &blk->norm2.bias,
                             &blk->mlp.fc1.weight,   &blk->mlp.fc1.bias,   &blk->mlp.fc2.weight,  &blk->mlp.fc2.bias};
    const char *names[12] = {"norm1.weight",     "norm1.bias",     "attn.qkv.weight", "attn.qkv.bias",
                             "attn.proj.weight", "attn.proj.bias", "norm2.weight",    "norm2.bias",
                             "mlp.fc1.weight",   "mlp.fc1.bias",   "mlp.fc2.weight",  "mlp.fc2.bias"};
    for (int k = 0; k < 12; k++) *slots[k] = (bl_tensor *)param(m, prefix, names[k]);
}

/* ViT assembly: naive patch embedding + class token + position embedding; each model stage equals
 * the (separately tested) transformer block applied to the previous one; features are the final
 * LayerNorm of the class token and logits the head of those. */
static void test_vit_matches_naive(void) {
    const int64_t N = 2, S = 16, P = 8, D = 192, T = 5;
    bl_model *m = bl_model_create("vit_tiny", &(bl_model_opts){.image_size = S, .patch_size = P, .num_classes = 7}, 31);
    CHECK(m);
    if (!m) return;
    m->training = false;
    randomize_norms(m, 32);
    bl_rng r = bl_rng_make(33, 1);
    bl_fill_normal_(bl_model_param(m, "cls_token"), &r, 0.0, 0.5); /* visible in the check */
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, 16, 16), 34);
    fmap patches = fm_conv(m, "patch_embed.proj", fm_from(x), (int)P, 0); /* (N, D, 2, 2) */
    const bl_tensor *cls = bl_model_param(m, "cls_token"), *pos = bl_model_param(m, "pos_embed");
    double *emb = bl_arena_alloc((size_t)(N * T * D) * sizeof *emb);
    for (int64_t n = 0; n < N; n++)
        for (int64_t t = 0; t < T; t++)
            for (int64_t d = 0; d < D; d++)
                emb[(n * T + t) * D + d] =
                    bl_get_flat(pos, t * D + d) + (t == 0 ? bl_get_flat(cls, d) : patches.v[(n * D + d) * 4 + (t - 1)]);
    bl_tensor *stages[12], *f, *y;
    BL_NO_GRAD {
        CHECK(bl_model_stages(m, x, 12, stages) == 12);
        f = bl_model_features(m, x);
        y = bl_model_forward(m, x);
        bl_params scratch;
        bl_params_init(&scratch);
        bl_tensor *h = bl_from_data(BL_F64, BL_SHAPE(2, 5, 192), emb);
        h = bl_to_dtype(h, BL_F32);
        for (int i = 0; i < 12; i++) {
            bl_transformer_block blk;
            bind_block(&blk, &scratch, m, i, D, 3);
            bl_tensor *expect = bl_transformer_block_forward(&blk, i == 0 ? h : stages[i - 1], false);
            CHECK(test_max_rel_diff(stages[i], expect) < 1e-5, "block %d: %g", i, test_max_rel_diff(stages[i], expect));
        }
        bl_params_free(&scratch);
    }
    /* final LayerNorm(eps 1e-6) of the class token, then the head */
    const bl_tensor *nw = bl_model_param(m, "norm.weight"), *nb = bl_model_param(m, "norm.bias");
    double feat[2 * 192];
    for (int64_t n = 0; n < N; n++) {
        double mean = 0, var = 0;
        for (int64_t d = 0; d < D; d++) mean += bl_get_flat(stages[11], n * T * D + d) / D;
        for (int64_t d = 0; d < D; d++) var += pow(bl_get_flat(stages[11], n * T * D + d) - mean, 2) / D;
        for (int64_t d = 0; d < D; d++)
            feat[n * D + d] = (bl_get_flat(stages[11], n * T * D + d) - mean) / sqrt(var + 1e-6) * bl_get_flat(nw, d) +
                              bl_get_flat(nb, d);
    }
    CHECK(test_max_rel_diff_values(f, feat, N * D) < 1e-5, "features %g", test_max_rel_diff_values(f, feat, N * D));
    CHECK(test_max_rel_diff_values(y, naive_head(m, "head", feat, N, D), N * 7) < 1e-5);
    bl_model_free(m);
}

static int64_t batches_tracked(const bl_model *m, const char *bn) {
    return *(const int64_t *)param(m, bn, "num_batches_tracked")->data;
}

static void test_batchnorm_train_vs_eval(void) {
    bl_model *m = bl_model_create("resnet20", NULL, 41);
    CHECK(m);
    if (!m) return;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(4, 3, 8, 8), 42);
    bl_tensor *train1, *train_part, *eval1, *eval2, *eval_part;
    BL_NO_GRAD {
        train1 = bl_model_forward(m, x);
        CHECK(batches_tracked(m, "bn1") == 1 && batches_tracked(m, "layer3.2.bn2") == 1);
        CHECK(bl_get_flat(bl_model_param(m, "bn1.running_mean"), 0) != 0, "training updates the running mean");
        CHECK(bl_get_flat(bl_model_param(m, "layer1.0.bn1.running_var"), 0) != 1);
        train_part = bl_model_forward(m, bl_slice(x, 0, 0, 2, 1));
        CHECK(batches_tracked(m, "layer2.0.bn1") == 2);
        m->training = false;
        double before = bl_get_flat(bl_model_param(m, "layer2.1.bn2.running_mean"), 5);
        eval1 = bl_model_forward(m, x);
        eval2 = bl_model_forward(m, x);
        eval_part = bl_model_forward(m, bl_slice(x, 0, 0, 2, 1));
        CHECK(bl_get_flat(bl_model_param(m, "layer2.1.bn2.running_mean"), 5) == before, "eval leaves statistics alone");
        CHECK(batches_tracked(m, "bn1") == 2);
    }
    CHECK(test_max_rel_diff(eval1, eval2) == 0, "eval is deterministic");
    double eval_vs_part = 0, train_vs_part = 0, train_vs_eval = 0;
    for (int64_t i = 0; i < 20; i++) {
        eval_vs_part = fmax(eval_vs_part, fabs(bl_get_flat(eval1, i) - bl_get_flat(eval_part, i)));
        train_vs_part = fmax(train_vs_part, fabs(bl_get_flat(train1, i) - bl_get_flat(train_part, i)));
    }
    for (int64_t i = 0; i < 40; i++)
        train_vs_eval = fmax(train_vs_eval, fabs(bl_get_flat(train1, i) - bl_get_flat(eval1, i)));
    CHECK(eval_vs_part < 1e-5, "in eval a sample's logits do not depend on its batch (%g)", eval_vs_part);
    CHECK(train_vs_part > 1e-3, "in training they do, through batch statistics (%g)", train_vs_part);
    CHECK(train_vs_eval > 1e-3, "%g", train_vs_eval);
    bl_model_free(m);
}

/* sum(logits * w) with grad mode off, for finite differences */
static double weighted_logits(bl_model *m, bl_tensor *x, bl_tensor *w) {
    double v;
    bl_scope s = bl_scope_begin();
    BL_NO_GRAD { v = bl_item(bl_sum(bl_mul(bl_model_forward(m, x), w))); }
    bl_scope_end(s);
    return v;
}

/* One backward: every parameter gets a non-zero gradient, and moving all parameters together by h
 * along the normalized gradient changes the loss by h |g| (central difference), which checks all
 * of the backward at once through the flat parameter block. h is small because batch statistics
 * over few values make the loss strongly curved; F32 still resolves it along the gradient. */
static void check_gradients(const char *name, bl_model_opts opts, int64_t size, bool training) {
    bl_model *m = bl_model_create(name, &opts, 51);
    CHECK(m, "%s", name);
    if (!m) return;
    m->training = training;
    int64_t C = opts.in_channels ? opts.in_channels : 3;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, C, size, size), 52);
    bl_tensor *y = bl_model_forward(m, x);
    bl_tensor *w = test_randn(BL_F32, 2, y ? y->shape : (int64_t[]){1, 1}, 53);
    bl_params_zero_grad(&m->params);
    CHECK(y && bl_backward(bl_sum(bl_mul(y, w))) == BL_OK, "%s: %s", name, bl_last_error());
    int zero = 0;
    for (int i = 0; i < m->params.count; i++) {
        bl_param_entry *e = &m->params.entries[i];
        if (!e->trainable) continue;
        double norm = 0;
        for (int64_t j = 0; j < bl_numel(e->tensor); j++) norm += fabs(bl_get_flat(e->tensor->grad, j));
        if (norm == 0 && zero++ < 3) fprintf(stderr, "%s: %s has a zero gradient\n", name, e->name);
    }
    CHECK(zero == 0, "%s: %d parameters without gradient", name, zero);
    double g2 = 0;
    for (size_t i = 0; i < m->params.numel; i++) g2 += (double)m->params.grad[i] * m->params.grad[i];
    double gnorm = sqrt(g2), h = 1e-4;
    float *saved = malloc(m->params.numel * sizeof *saved);
    memcpy(saved, m->params.data, m->params.numel * sizeof *saved);
    double values[2];
    for (int k = 0; k < 2; k++) {
        double step = (k == 0 ? h : -h) / gnorm;
        for (size_t i = 0; i < m->params.numel; i++) m->params.data[i] = (float)(saved[i] + step * m->params.grad[i]);
        values[k] = weighted_logits(m, x, w);
    }
    memcpy(m->params.data, saved, m->params.numel * sizeof *saved);
    free(saved);
    double slope = (values[0] - values[1]) / (2 * h);
    CHECK(fabs(slope - gnorm) < 0.02 * gnorm, "%s (%s): directional derivative %g, gradient norm %g", name,
          training ? "train" : "eval", slope, gnorm);
    bl_model_free(m);
}

static void test_gradients(void) {
    check_gradients("resnet20", (bl_model_opts){0}, 8, true);
    check_gradients("resnet20", (bl_model_opts){0}, 8, false);
    check_gradients("resnet18", (bl_model_opts){.num_classes = 5}, 64, true);
    check_gradients("resnet50", (bl_model_opts){.num_classes = 5}, 32, false);
    check_gradients("convnet3", (bl_model_opts){.image_size = 16, .width = 16}, 16, true);
    check_gradients("vit_tiny", (bl_model_opts){.image_size = 16, .patch_size = 8, .num_classes = 5}, 16, true);
}

static void test_dropout_before_classifier(void) {
    bl_model *m = bl_model_create("convnet3", &(bl_model_opts){.image_size = 8, .width = 8, .drop_rate = 0.5}, 61);
    bl_model *plain = bl_model_create("convnet3", &(bl_model_opts){.image_size = 8, .width = 8}, 61);
    CHECK(m && plain && m->head_drop.p == 0.5 && plain->head_drop.p == 0);
    CHECK(memcmp(m->params.data, plain->params.data, m->params.numel * sizeof(float)) == 0,
          "the dropout stream is separate from initialization");
    bl_tensor *f = bl_ones(BL_F32, BL_SHAPE(4, m->feature_dim));
    bl_tensor *a = bl_model_classifier(m, f), *b = bl_model_classifier(m, f);
    CHECK(test_max_rel_diff(a, b) > 1e-6, "training draws a new mask per call");
    m->training = false;
    CHECK(test_max_rel_diff(bl_model_classifier(m, f), bl_model_classifier(plain, f)) < 1e-6, "eval: no dropout");
    bl_model_free(m);
    bl_model_free(plain);
    /* ViT's dropout layers (after pos_embed, in every block) do not shift the initial values either */
    bl_model_opts vit_opts = {.image_size = 16, .patch_size = 8, .num_classes = 3};
    plain = bl_model_create("vit_tiny", &vit_opts, 62);
    vit_opts.drop_rate = 0.2;
    m = bl_model_create("vit_tiny", &vit_opts, 62);
    CHECK(m && plain && memcmp(m->params.data, plain->params.data, m->params.numel * sizeof(float)) == 0);
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(2, 3, 16, 16), 63);
    bl_tensor *with = bl_model_features(m, x), *without = bl_model_features(plain, x);
    CHECK(test_max_rel_diff(with, without) > 1e-3, "training applies dropout inside the trunk");
    m->training = plain->training = false;
    CHECK(test_max_rel_diff(bl_model_forward(m, x), bl_model_forward(plain, x)) < 1e-6, "eval: no dropout");
    bl_model_free(m);
    bl_model_free(plain);
}

TEST_MAIN(TEST(test_names_list_and_errors), TEST(test_parameter_counts_and_names), TEST(test_initial_values),
          TEST(test_output_and_stage_shapes), TEST(test_resnets_match_naive), TEST(test_convnet_matches_naive),
          TEST(test_vit_matches_naive), TEST(test_batchnorm_train_vs_eval), TEST(test_gradients),
          TEST(test_dropout_before_classifier))
