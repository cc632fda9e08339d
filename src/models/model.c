/* The generic model handle: the name registry, option defaults, creation and the forward entry
 * points shared by every family (see models_internal.h for how a family plugs in). */
#include "models/models_internal.h"

#include <stdlib.h>
#include <string.h>

/* Purposes of the model's random streams (bl_rng_make), fixed so a seed always builds the same model. */
static const uint64_t RNG_INIT = 0x6d6f64656c01ull, RNG_DROPOUT = 0x6d6f64656c02ull;

typedef struct {
    const bl_model_arch *archs;
    const int *count;
} family;

static const family families[] = {
    {bl__resnet_archs, &bl__resnet_arch_count},
    {bl__convnet_archs, &bl__convnet_arch_count},
    {bl__vit_archs, &bl__vit_arch_count},
};
#define N_FAMILIES (int)(sizeof families / sizeof families[0])

static const bl_model_arch *find_arch(const char *name) {
    for (int f = 0; f < N_FAMILIES; f++)
        for (int i = 0; i < *families[f].count; i++)
            if (strcmp(families[f].archs[i].name, name) == 0) return &families[f].archs[i];
    return NULL;
}

const char *const *bl_model_names(void) {
    /* Built once from the family tables; small enough to keep for the process's life. */
    static const char *names[64];
    if (!names[0]) {
        int n = 0;
        for (int f = 0; f < N_FAMILIES; f++)
            for (int i = 0; i < *families[f].count && n + 1 < 64; i++) names[n++] = families[f].archs[i].name;
        names[n] = NULL;
    }
    return names;
}

static int resolve_opts(bl_model *m, const bl_model_opts *given) {
    bl_model_opts o = given ? *given : (bl_model_opts){0};
    if (o.num_classes == 0) o.num_classes = m->arch->default_classes;
    if (o.image_size == 0) o.image_size = m->arch->default_image_size;
    if (o.patch_size == 0) o.patch_size = 16;
    if (o.in_channels == 0) o.in_channels = 3;
    if (o.width == 0) o.width = 128;
    if (o.depth == 0) o.depth = 3;
    BL_CHECK_RC(o.num_classes > 0 && o.image_size > 0 && o.patch_size > 0 && o.in_channels > 0 && o.width > 0 &&
                    o.depth > 0,
                "%s: options must be positive (num_classes %lld, image_size %lld, patch_size %lld, in_channels "
                "%lld, width %lld, depth %lld)",
                m->name, (long long)o.num_classes, (long long)o.image_size, (long long)o.patch_size,
                (long long)o.in_channels, (long long)o.width, (long long)o.depth);
    BL_CHECK_RC(o.drop_rate >= 0 && o.drop_rate < 1, "%s: drop_rate %g is not in [0, 1)", m->name, o.drop_rate);
    m->opts = o;
    return BL_OK;
}

bl_model *bl_model_create(const char *name, const bl_model_opts *opts, uint64_t seed) {
    BL_CHECK(name, "bl_model_create: NULL name");
    const bl_model_arch *arch = find_arch(name);
    if (!arch) {
        char known[1024] = "";
        for (const char *const *n = bl_model_names(); *n; n++) {
            strncat(known, " ", sizeof known - strlen(known) - 1);
            strncat(known, *n, sizeof known - strlen(known) - 1);
        }
        BL_CHECK(false, "bl_model_create: unknown model '%s' (known:%s)", name, known);
    }
    bl_model *m = calloc(1, sizeof *m);
    BL_CHECK(m, "bl_model_create: out of memory");
    snprintf(m->name, sizeof m->name, "%s", name);
    m->arch = arch;
    m->training = true;
    bl_params_init(&m->params);
    bl_rng init = bl_rng_make(seed, RNG_INIT), dropout = bl_rng_make(seed, RNG_DROPOUT);
    if (resolve_opts(m, opts) != BL_OK || arch->build(m, &init, &dropout) != BL_OK ||
        bl_params_finalize(&m->params) != BL_OK) {
        bl_model_free(m);
        return NULL;
    }
    bl_dropout_layer_init(&m->head_drop, m->opts.drop_rate, &dropout);
    return m;
}

void bl_model_free(bl_model *m) {
    if (!m) return;
    if (m->arch && m->arch->free_impl) m->arch->free_impl(m->impl);
    bl_params_free(&m->params);
    free(m);
}

/* Checks the input against the model, so a wrong layout fails with the model's name. */
static bool check_input(const bl_model *m, const bl_tensor *x) {
    BL_CHECK_OR(false, m && x, "bl_model: NULL %s", m ? "input" : "model");
    BL_CHECK_OR(false, x->ndim == 4 && x->shape[1] == m->opts.in_channels,
                "%s: input of shape %s, expected (N, %lld, H, W)", m->name, bl__shape(x),
                (long long)m->opts.in_channels);
    return true;
}

static int run_stages(bl_model *m, bl_tensor *x, bl_tensor **all) {
    if (!check_input(m, x)) return -1;
    return m->arch->stages(m, x, all, BL_MODEL_MAX_STAGES);
}

bl_tensor *bl_model_features(bl_model *m, bl_tensor *x) {
    bl_tensor *all[BL_MODEL_MAX_STAGES];
    int n = run_stages(m, x, all);
    if (n <= 0) return NULL;
    return m->arch->pool(m, all[n - 1]);
}

bl_tensor *bl_model_classifier(bl_model *m, bl_tensor *features) {
    BL_NONNULL(m, features);
    BL_CHECK(features->ndim == 2 && features->shape[1] == m->feature_dim,
             "%s: classifier input of shape %s, expected (N, %lld)", m->name, bl__shape(features),
             (long long)m->feature_dim);
    return bl_linear_layer_forward(&m->classifier, bl_dropout_layer_forward(&m->head_drop, features, m->training));
}

bl_tensor *bl_model_forward(bl_model *m, bl_tensor *x) { return bl_model_classifier(m, bl_model_features(m, x)); }

int bl_model_stages(bl_model *m, bl_tensor *x, int max, bl_tensor **out) {
    BL_CHECK_RC(max >= 0, "bl_model_stages: negative max %d", max);
    bl_tensor *all[BL_MODEL_MAX_STAGES];
    int n = run_stages(m, x, all);
    if (n < 0) return -1;
    int keep = n < max ? n : max;
    for (int i = 0; i < keep; i++) out[i] = all[n - keep + i];
    return keep;
}

size_t bl_model_num_params(const bl_model *m) { return m ? bl_params_numel(&m->params) : 0; }

bl_tensor *bl_model_param(const bl_model *m, const char *name) { return m ? bl_params_find(&m->params, name) : NULL; }
