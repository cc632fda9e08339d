/* Golden tests against PyTorch: a CIFAR ResNet-32 and a timm-style ViT block, built in PyTorch by
 * tools/make_golden.py with the same deterministic parameter values as here. Compared: the
 * training-mode forward output, the loss, the input gradient, every parameter gradient, and three
 * SGD steps (losses, updated parameters, BatchNorm buffers).
 *
 * Tolerances: F32 kernels sum in other orders than PyTorch's, so values agree to about 1e-6
 * relative. Forward outputs and losses are held to that. Gradients are compared by relative L2
 * error (||a - b|| / ||b||): one pre-activation that lands within rounding of 0 flips its ReLU, which
 * changes a few gradient entries near it by a few percent (seen: 0.25% of the input gradient's norm)
 * but nothing else, while a wrong backward formula moves the whole tensor by O(1). */
#include "test.h"

#define FIXTURE "tests/fixtures/golden.safetensors"
#define PREFIX 64

static bl_safetensors golden;

static uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* make_golden.py's hashed_uniform: element i of `stream`, in [-1, 1). */
static double hashed_uniform(uint64_t stream, int64_t i) {
    return (double)(mix64(stream << 32 | (uint64_t)i) >> 11) * 0x1.0p-52 - 1.0;
}

/* make_golden.py's formula_init: parameter k in sorted-name order. */
static void formula_init(bl_params *ps) {
    int n = 0;
    const char *names[1024];
    for (int i = 0; i < ps->count && n < 1024; i++)
        if (ps->entries[i].trainable) names[n++] = ps->entries[i].name;
    for (int a = 1; a < n; a++) /* insertion sort: byte order, as Python's sorted() */
        for (int b = a; b > 0 && strcmp(names[b - 1], names[b]) > 0; b--) {
            const char *t = names[b];
            names[b] = names[b - 1];
            names[b - 1] = t;
        }
    for (int k = 0; k < n; k++) {
        bl_tensor *p = bl_params_find(ps, names[k]);
        int64_t numel = bl_numel(p);
        size_t len = strlen(names[k]);
        bool weight = len >= 6 && strcmp(names[k] + len - 6, "weight") == 0;
        for (int64_t i = 0; i < numel; i++) {
            double u = hashed_uniform((uint64_t)k + 1, i);
            double v = p->ndim >= 2 ? sqrt(3.0 / ((double)numel / (double)p->shape[0])) * u
                                    : (weight ? 1.0 + 0.1 * u : 0.1 * u);
            ((float *)p->data)[i] = (float)v;
        }
    }
}

static bl_tensor *formula_input(int ndim, const int64_t *shape) {
    bl_tensor *x = bl_empty(BL_F32, ndim, shape);
    for (int64_t i = 0; i < bl_numel(x); i++) ((float *)x->data)[i] = (float)hashed_uniform(1000, i);
    return x;
}

static bl_tensor *expected(const char *prefix, const char *name) {
    char key[256];
    snprintf(key, sizeof key, "%s%s", prefix, name);
    bl_tensor *t = bl_safetensors_get(&golden, key);
    if (!t) fprintf(stderr, "fixture has no tensor '%s'\n", key);
    return t;
}

/* Relative error of `got` against `want` over the first `count` elements (all when count < 0):
 * max |a - b| / max |b| when `l2` is false, ||a - b|| / ||b|| when true. */
static double rel_error(const bl_tensor *got, const bl_tensor *want, int64_t count, bool l2) {
    int64_t n = count < 0 ? bl_numel(want) : count;
    double worst = 0, scale = 1e-30, diff2 = 0, norm2 = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        double x = bl_get_flat(got, i), y = bl_get_flat(want, i);
        if (!(fabs(x - y) <= worst)) worst = fabs(x - y);
        if (fabs(y) > scale) scale = fabs(y);
        diff2 += (x - y) * (x - y);
        norm2 += y * y;
    }
    return l2 ? sqrt(diff2 / norm2) : worst / scale;
}

#define FORWARD_TOL 1e-4 /* max-relative, outputs and losses */
#define GRAD_TOL 1e-2    /* L2-relative, gradients and parameters after SGD */

static void check_tensor(const char *what, const bl_tensor *got, const bl_tensor *want, int64_t count, bool l2,
                         double tol) {
    CHECK(got && want, "%s missing", what);
    if (!got || !want) return;
    CHECK(count >= 0 || bl_numel(got) == bl_numel(want), "%s: %lld elements, expected %lld", what,
          (long long)bl_numel(got), (long long)bl_numel(want));
    double err = rel_error(got, want, count, l2);
    CHECK(err <= tol, "%s: relative error %.3g > %.3g", what, err, tol);
}

typedef bl_tensor *(*forward_fn)(void *model, bl_tensor *x, bl_tensor *labels);

/* Forward + backward, compare, then three SGD steps and compare again. */
static void run_golden(const char *prefix, void *model, bl_params *ps, forward_fn forward, bl_tensor *x,
                       bl_tensor *labels, bl_optim_config cfg) {
    x->requires_grad = true;
    bl_tensor *loss = forward(model, x, labels);
    CHECK(loss != NULL);
    if (!loss) return;
    check_tensor("loss", loss, expected(prefix, "loss"), -1, false, FORWARD_TOL);
    CHECK(bl_backward(loss) == BL_OK);
    check_tensor("input gradient", x->grad, expected(prefix, "input_grad"), -1, true, GRAD_TOL);
    int checked = 0;
    for (int i = 0; i < ps->count; i++) {
        if (!ps->entries[i].trainable) continue;
        char key[200];
        snprintf(key, sizeof key, "grad.%s", ps->entries[i].name);
        check_tensor(key, ps->entries[i].tensor->grad, expected(prefix, key), -1, true, GRAD_TOL);
        checked++;
    }
    CHECK(checked > 5);
    bl_optimizer opt;
    CHECK(bl_optimizer_init(&opt, ps, cfg) == BL_OK);
    bl_tensor *want_losses = expected(prefix, "sgd_losses");
    for (int step = 0; step < 3; step++) {
        bl_scope s = bl_scope_begin();
        bl_params_zero_grad(ps);
        bl_tensor *l = forward(model, bl_detach(x), labels);
        CHECK(l && fabs(bl_item(l) - bl_get_flat(want_losses, step)) <= 1e-3 * fabs(bl_get_flat(want_losses, step)),
              "SGD step %d: loss %.8g, PyTorch %.8g", step, l ? bl_item(l) : NAN, bl_get_flat(want_losses, step));
        CHECK(bl_backward(l) == BL_OK && bl_optimizer_step(&opt) == BL_OK);
        bl_scope_end(s);
    }
    for (int i = 0; i < ps->count; i++) {
        char key[200];
        snprintf(key, sizeof key, "after_sgd.%s", ps->entries[i].name);
        bool trainable = ps->entries[i].trainable;
        check_tensor(key, ps->entries[i].tensor, expected(prefix, key), trainable ? PREFIX : -1, true, GRAD_TOL);
    }
    bl_optimizer_free(&opt);
}

static bl_tensor *resnet_loss(void *model, bl_tensor *x, bl_tensor *labels) {
    bl_model *m = model;
    bl_tensor *logits = bl_model_forward(m, x);
    static int first = 1;
    if (first && logits) {
        check_tensor("resnet32 logits", logits, expected("resnet32.", "output"), -1, false, FORWARD_TOL);
        first = 0;
    }
    return bl_cross_entropy(logits, labels, bl_ce_args_default());
}

static void test_resnet32_matches_pytorch(void) {
    bl_model_opts opts = {.num_classes = 10};
    bl_model *m = bl_model_create("resnet32", &opts, 0);
    CHECK(m != NULL);
    if (!m) return;
    formula_init(&m->params);
    m->training = true;
    bl_tensor *x = formula_input(BL_SHAPE(8, 3, 32, 32));
    bl_tensor *labels = bl_empty(BL_I64, BL_SHAPE(8));
    for (int i = 0; i < 8; i++) ((int64_t *)labels->data)[i] = i % 10;
    run_golden("resnet32.", m, &m->params, resnet_loss, x, labels, bl_sgd_config(0.02, 0.9, 5e-4));
    bl_model_free(m);
}

static bl_tensor *block_loss(void *model, bl_tensor *x, bl_tensor *labels) {
    bl_tensor *y = bl_transformer_block_forward(model, x, true);
    static int first = 1;
    if (first && y) {
        check_tensor("vit block output", y, expected("vit_block.", "output"), -1, false, FORWARD_TOL);
        first = 0;
    }
    return bl_mean(bl_mul(y, y));
}

static void test_vit_block_matches_pytorch(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_transformer_block block;
    bl_rng rng = bl_rng_make(0, 1);
    CHECK(bl_transformer_block_init(&block, &ps, "", 64, 4, 4.0, true, 0.0, 1e-6, &rng) == BL_OK);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    formula_init(&ps);
    bl_tensor *x = formula_input(BL_SHAPE(2, 17, 64));
    run_golden("vit_block.", &block, &ps, block_loss, x, NULL, bl_sgd_config(0.05, 0.9, 0.0));
    bl_params_free(&ps);
}

int main(void) {
    if (bl_safetensors_load(FIXTURE, &golden) != BL_OK) {
        fprintf(stderr, "cannot load %s: %s (regenerate with /usr/bin/python3 tools/make_golden.py tests/fixtures)\n",
                FIXTURE, bl_last_error());
        return 1;
    }
    const test_case cases[] = {TEST(test_resnet32_matches_pytorch), TEST(test_vit_block_matches_pytorch)};
    int rc = test_run_all(cases, 2);
    bl_safetensors_free(&golden);
    return rc;
}
