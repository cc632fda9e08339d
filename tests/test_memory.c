/* Step-arena memory during backward passes: a first-order pass reuses the memory of consumed
 * gradients (so a deep chain's backward needs a few gradients' worth of memory, not one per
 * layer), without changing any gradient, without touching what must outlive the pass (leaves'
 * .grad, bl_autograd_grad's results, the graph itself: backward can run twice), and with scopes
 * still releasing exactly what was allocated inside them. */
#include "test.h"

#define WIDTH 32768 /* floats per activation: 128 KiB, large enough to be recycled */
#define DEPTH 24

/* x -> relu(x * w_1 + b_1) -> ... with DEPTH layers; every activation WIDTH floats. */
static bl_tensor *chain(bl_tensor *x, bl_tensor *const *w, bl_tensor *const *b) {
    bl_tensor *h = x;
    for (int i = 0; i < DEPTH; i++) h = bl_relu(bl_add(bl_mul(h, w[i]), b[i]));
    return bl_sum(bl_mul(h, h));
}

typedef struct {
    bl_tensor *x, *w[DEPTH], *b[DEPTH];
} chain_inputs;

static chain_inputs make_chain(uint64_t seed) {
    chain_inputs c;
    c.x = test_randn(BL_F32, BL_SHAPE(WIDTH), seed);
    for (int i = 0; i < DEPTH; i++) {
        c.w[i] = bl_add_scalar(bl_abs(test_randn(BL_F32, BL_SHAPE(WIDTH), seed + 1 + (uint64_t)i)), 0.5);
        c.b[i] = test_randn(BL_F32, BL_SHAPE(WIDTH), seed + 100 + (uint64_t)i);
        c.w[i]->requires_grad = true;
    }
    c.x->requires_grad = true;
    return c;
}

/* A first-order backward allocates about as much as the forward pass without recycling (a
 * gradient per activation); with it, a few gradients' worth. The gradients equal those of the
 * create_graph pass, which recycles nothing. */
static void test_backward_reuses_consumed_gradients(void) {
    chain_inputs c = make_chain(1);
    bl_tensor *inputs[DEPTH + 1];
    inputs[0] = c.x;
    for (int i = 0; i < DEPTH; i++) inputs[i + 1] = c.w[i];
    bl_tensor *reference[DEPTH + 1], *got[DEPTH + 1];
    bl_tensor *loss = chain(c.x, c.w, c.b);
    CHECK(bl_autograd_grad(1, &loss, NULL, DEPTH + 1, inputs, reference, true) == BL_OK, "create_graph pass");

    size_t before = bl_arena_peak();
    bl_scope s = bl_scope_begin();
    size_t base = bl_arena_used();
    loss = chain(c.x, c.w, c.b);
    size_t forward = bl_arena_used() - base;
    CHECK(bl_autograd_grad(1, &loss, NULL, DEPTH + 1, inputs, got, false) == BL_OK, "first-order pass");
    size_t backward_growth = bl_arena_peak() > before ? bl_arena_peak() - base - forward : 0;
    const size_t activation = WIDTH * sizeof(float);
    /* The results (DEPTH + 1 of them) must stay; the rest of the pass fits in a few activations. */
    CHECK(backward_growth <= (DEPTH + 1 + 8) * activation,
          "the backward pass grew the arena by %zu bytes (%.1f activations) after a forward pass of %zu",
          backward_growth, (double)backward_growth / (double)activation, forward);
    for (int i = 0; i <= DEPTH; i++)
        CHECK(test_max_rel_diff(got[i], reference[i]) <= 1e-6, "gradient %d differs by %g", i,
              test_max_rel_diff(got[i], reference[i]));
    /* The results are not reused by later allocations. */
    bl_tensor *copies[DEPTH + 1];
    for (int i = 0; i <= DEPTH; i++) copies[i] = bl_add_scalar(got[i], 0.0);
    for (int i = 0; i < 4 * DEPTH; i++) bl_fill_(bl_empty(BL_F32, BL_SHAPE(WIDTH)), 7.0);
    for (int i = 0; i <= DEPTH; i++) CHECK(test_max_rel_diff(got[i], copies[i]) == 0.0, "result %d overwritten", i);
    bl_scope_end(s);
}

/* Gradients used twice (x + x, a residual), leaves' .grad, and a second backward on the graph. */
static void test_shared_gradients_and_leaves(void) {
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(WIDTH), 3), *w = test_randn(BL_F32, BL_SHAPE(WIDTH), 4);
    x->requires_grad = w->requires_grad = true;
    /* y = sum((x*w + x*w) * (x*w)) = 2 sum((x*w)^2); dy/dw = 4 x^2 w */
    bl_tensor *h = bl_mul(x, w);
    bl_tensor *loss = bl_sum(bl_mul(bl_add(h, h), h));
    bl_tensor *want = bl_mul_scalar(bl_mul(bl_mul(x, x), w), 4.0);
    for (int run = 0; run < 2; run++) {
        CHECK(bl_backward(loss) == BL_OK, "backward %d", run);
        for (int i = 0; i < 8; i++) bl_fill_(bl_empty(BL_F32, BL_SHAPE(WIDTH)), -3.0);
        bl_tensor *expected = bl_mul_scalar(want, (double)(run + 1)); /* .grad accumulates */
        CHECK(test_max_rel_diff(w->grad, expected) <= 1e-5, "run %d: dw differs by %g", run,
              test_max_rel_diff(w->grad, expected));
    }
}

/* An op whose backward hands one fresh tensor to both of its inputs (a + b, with the gradient
 * copied first): the first delivery must not free memory the second still reads, even when the
 * second leaf's .grad is allocated in between. */
static int shared_fresh_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    (void)node;
    bl_tensor *copy = bl_add_scalar(g, 0.0);
    gin[0] = gin[1] = copy;
    return copy ? BL_OK : BL_ERR;
}

static void test_one_gradient_for_two_inputs(void) {
    bl_tensor *a = test_randn(BL_F32, BL_SHAPE(WIDTH), 6), *b = test_randn(BL_F32, BL_SHAPE(WIDTH), 7);
    a->requires_grad = b->requires_grad = true;
    bl_tensor *y = bl_add(bl_detach(a), bl_detach(b));
    bl_autograd_record(y, "shared_fresh", shared_fresh_backward, 2, (bl_tensor *[]){a, b}, 0);
    bl_tensor *w = test_randn(BL_F32, BL_SHAPE(WIDTH), 8);
    CHECK(bl_backward(bl_sum(bl_mul(y, w))) == BL_OK, "backward");
    CHECK(test_max_rel_diff(a->grad, w) == 0.0 && test_max_rel_diff(b->grad, w) == 0.0,
          "the inputs' gradients differ from the weighting: %g, %g", test_max_rel_diff(a->grad, w),
          test_max_rel_diff(b->grad, w));
}

/* A scope inside a backward-like sequence: a block freed before the scope and reused inside it is
 * free again after it, so the arena's live bytes return to what they were. */
static void test_scopes_stay_exact(void) {
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(WIDTH), 5);
    x->requires_grad = true;
    bl_tensor *loss = bl_sum(bl_relu(bl_relu(bl_relu(x))));
    CHECK(bl_backward(loss) == BL_OK, "backward");
    size_t used = bl_arena_used(), peak = bl_arena_peak();
    for (int i = 0; i < 3; i++) {
        bl_scope s = bl_scope_begin();
        for (int k = 0; k < 3; k++) bl_fill_(bl_empty(BL_F32, BL_SHAPE(WIDTH)), 1.0);
        bl_scope_end(s);
        CHECK(bl_arena_used() == used, "scope %d leaves %zu bytes live, %zu before", i, bl_arena_used(), used);
    }
    CHECK(bl_arena_peak() - peak <= 3 * WIDTH * sizeof(float), "scopes grow the arena every time");
}

TEST_MAIN(TEST(test_backward_reuses_consumed_gradients), TEST(test_shared_gradients_and_leaves),
          TEST(test_one_gradient_for_two_inputs), TEST(test_scopes_stay_exact))
