/* What the transformer path keeps in the step arena, measured against the activations it needs:
 * multi-head attention in training keeps the packed qkv projection, the attention probabilities,
 * the heads' output and the projection (no per-head copies, no transposed copies), and its
 * backward adds one qkv-sized gradient to the input gradient; a ViT forward without gradients
 * keeps each block's output only. A copy or an unfused intermediate creeping back in fails these
 * bounds. Values themselves are checked elsewhere (tests/test_golden.c, test_models.c,
 * test_ops_attention.c). */
#include "test.h"

/* Allocation headers, tape nodes and small per-op state on top of the tensors themselves. */
#define SLACK 16384

static void test_attention_module_memory(void) {
    int64_t B = 8, T = 33, D = 64, H = 2; /* one activation (B T D floats) is 66 KiB, 4x the slack */
    size_t unit = sizeof(float) * (size_t)(B * T * D), probs = sizeof(float) * (size_t)(B * H * T * T);
    bl_params ps;
    bl_params_init(&ps);
    bl_rng rng = bl_rng_make(1, 2);
    bl_mha attn;
    CHECK(bl_mha_init(&attn, &ps, "attn", D, H, true, 0.0, &rng) == BL_OK);
    CHECK(bl_params_finalize(&ps) == BL_OK);
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(B, T, D), 3);
    x->requires_grad = true;

    size_t before = bl_arena_used();
    bl_tensor *y = bl_mha_forward(&attn, x, NULL, true);
    size_t forward = bl_arena_used() - before;
    /* qkv (3 units), probabilities, heads' output (1), projection (1) */
    CHECK(y && forward >= 5 * unit + probs && forward <= 5 * unit + probs + SLACK,
          "attention forward keeps %zu bytes; its activations are %zu", forward, 5 * unit + probs);

    before = bl_arena_used();
    bl_tensor *g = test_randn(BL_F32, BL_SHAPE(B, T, D), 4), *dx;
    CHECK(bl_autograd_grad(1, &y, &g, 1, &x, &dx, false) == BL_OK);
    size_t backward = bl_arena_used() - before - unit; /* less g itself */
    /* gradients of the heads' output (1), of qkv (3), of x (1), and of the weights */
    size_t weights = sizeof(float) * (size_t)(3 * D * D + 3 * D + D * D + D);
    CHECK(backward <= 5 * unit + weights + SLACK, "attention backward keeps %zu bytes; its gradients are %zu", backward,
          5 * unit + weights);
    bl_params_free(&ps);
}

static void test_vit_inference_memory(void) {
    int64_t N = 4;
    bl_model *m = bl_model_create("vit_tiny", &(bl_model_opts){.image_size = 16, .patch_size = 4, .num_classes = 3}, 5);
    CHECK(m);
    if (!m) return;
    m->training = false;
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(N, 3, 16, 16), 6), *y_grad, *y_none = NULL;
    size_t unit = sizeof(float) * (size_t)(N * 17 * 192);
    size_t before = bl_arena_used();
    y_grad = bl_model_forward(m, x);
    size_t with_grad = bl_arena_used() - before;
    before = bl_arena_used();
    BL_NO_GRAD { y_none = bl_model_forward(m, x); }
    size_t without = bl_arena_used() - before;
    CHECK(y_none && test_max_rel_diff(y_none, y_grad) < 1e-6, "same logits with and without gradients");
    /* 12 block outputs and the embedding's few tensors, against at least 14 per block with grad */
    CHECK(without <= 17 * unit + 4 * SLACK, "inference keeps %zu bytes (%.1f activations)", without,
          (double)without / (double)unit);
    CHECK(with_grad >= 12 * 14 * unit, "training keeps %zu bytes (%.1f activations)", with_grad,
          (double)with_grad / (double)unit);
    bl_model_free(m);
}

TEST_MAIN(TEST(test_attention_module_memory), TEST(test_vit_inference_memory))
