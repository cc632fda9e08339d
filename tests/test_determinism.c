/* Determinism: the same seed and thread count give bit-identical training; another seed does not. */
#include "test.h"

/* Builds resnet20 from `seed`, trains three SGD steps on seeded random data, returns a copy of the
 * parameter block (malloc'ed, `numel` floats). */
static float *train_three_steps(uint64_t seed, size_t *numel) {
    bl_model *m = bl_model_create("resnet20", &(bl_model_opts){.num_classes = 10}, seed);
    if (!m) return NULL;
    bl_optimizer opt;
    bl_optimizer_init(&opt, &m->params, bl_sgd_config(0.1, 0.9, 5e-4));
    bl_rng data = bl_rng_make(seed, 99);
    for (int step = 0; step < 3; step++) {
        bl_scope s = bl_scope_begin();
        bl_tensor *x = bl_empty(BL_F32, BL_SHAPE(16, 3, 32, 32));
        bl_tensor *y = bl_empty(BL_I64, BL_SHAPE(16));
        bl_fill_normal_(x, &data, 0, 1);
        for (int i = 0; i < 16; i++) ((int64_t *)y->data)[i] = bl_rng_below(&data, 10);
        bl_params_zero_grad(&m->params);
        bl_tensor *loss = bl_cross_entropy(bl_model_forward(m, x), y, bl_ce_args_default());
        CHECK(bl_backward(loss) == BL_OK && bl_optimizer_step(&opt) == BL_OK);
        bl_scope_end(s);
    }
    *numel = m->params.numel;
    float *copy = malloc(*numel * sizeof *copy);
    memcpy(copy, m->params.data, *numel * sizeof *copy);
    bl_optimizer_free(&opt);
    bl_model_free(m);
    return copy;
}

static void test_same_seed_same_weights(void) {
    bl_set_threads(2);
    size_t n1, n2, n3;
    float *a = train_three_steps(5, &n1), *b = train_three_steps(5, &n2), *c = train_three_steps(6, &n3);
    CHECK(a && b && c && n1 == n2 && n2 == n3);
    if (a && b && c) {
        CHECK(memcmp(a, b, n1 * sizeof *a) == 0, "two runs with seed 5 differ");
        CHECK(memcmp(a, c, n1 * sizeof *a) != 0, "seeds 5 and 6 gave the same weights");
    }
    free(a);
    free(b);
    free(c);
}

TEST_MAIN(TEST(test_same_seed_same_weights))
