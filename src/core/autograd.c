/* The tape and the reverse-mode engine. See include/ballast/autograd.h for the model. A
 * first-order pass lets the arena reuse each gradient's memory once the gradient is consumed (see
 * arena.c), so a backward pass needs about as much memory as the few gradients pending at once
 * rather than one per activation. */
#include "ballast/ops.h"
#include "internal.h"

#include <stdlib.h>
#include <string.h>

static struct {
    bl_node **nodes;
    size_t len, cap;
} tape;

static _Thread_local bool grad_mode = true;

size_t bl__tape_len(void) { return tape.len; }
size_t bl__tape_truncate(size_t len) {
    if (len < tape.len) tape.len = len;
    if (len == 0) {
        free(tape.nodes);
        memset(&tape, 0, sizeof tape);
    }
    return tape.len;
}
size_t bl_tape_length(void) { return tape.len; }

bool bl_grad_enabled(void) { return grad_mode; }
bool bl_set_grad_enabled(bool on) {
    bool prev = grad_mode;
    grad_mode = on;
    return prev;
}

bool bl_autograd_needed(int n, bl_tensor *const *inputs) {
    if (!grad_mode) return false;
    for (int i = 0; i < n; i++)
        if (inputs[i] && inputs[i]->requires_grad) return true;
    return false;
}

bl_node *bl_autograd_record(bl_tensor *out, const char *name, bl_backward_fn backward, int n,
                            bl_tensor *const *inputs, size_t ctx_bytes) {
    if (!out || !bl_autograd_needed(n, inputs)) return NULL;
    if (tape.len == tape.cap) {
        size_t cap = tape.cap ? tape.cap * 2 : 1024;
        bl_node **nodes = realloc(tape.nodes, cap * sizeof *nodes);
        BL_CHECK(nodes, "out of memory growing the autograd tape");
        tape.nodes = nodes;
        tape.cap = cap;
    }
    bl_node *node = bl_arena_alloc(sizeof *node);
    bl_tensor **ins = bl_arena_alloc((size_t)n * sizeof *ins);
    void *ctx = ctx_bytes ? bl_arena_alloc(ctx_bytes) : NULL;
    if (!node || !ins || (ctx_bytes && !ctx)) return NULL;
    memcpy(ins, inputs, (size_t)n * sizeof *ins);
    if (ctx) memset(ctx, 0, ctx_bytes);
    *node = (bl_node){.name = name, .backward = backward, .n_inputs = n, .inputs = ins, .out = out,
                      .ctx = ctx, .index = tape.len};
    tape.nodes[tape.len++] = node;
    out->grad_fn = node;
    out->requires_grad = true;
    return node;
}

bl_tensor *bl_detach(bl_tensor *t) {
    BL_NONNULL(t);
    return bl__view_of(t);
}

void bl_zero_grad(bl_tensor *leaf) {
    if (leaf && leaf->grad) bl_fill_(leaf->grad, 0.0);
}

/* ---- engine ---- */

/* Recycling of gradient memory (arena.c): during a first-order pass the engine tells the arena
 * which gradients are pending (held) and which are consumed (released), so that the large blocks
 * of consumed ones are reused by the gradients computed after them. Gradients that outlive the
 * pass (leaves' .grad, bl_autograd_grad's results) are pinned. */
void bl__arena_recycling_begin(void);
void bl__arena_recycling_end(void);
bool bl__arena_recycling(void);
void bl__arena_hold(const void *p);
void bl__arena_release(const void *p);
void bl__arena_release_unheld(const void *p);
void bl__arena_pin(const void *p);

typedef struct {
    int n_wanted;
    bl_tensor *const *wanted;
    bl_tensor **wanted_grads; /* NULL: accumulate into leaves' .grad instead */
} targets;

/* Memory one node's backward leaves behind: a slot's previous tensor (one hold to drop) and
 * gradients that nothing holds any more. They are released only after all of the node's
 * gradients are delivered, so that none of its deliveries can be handed a block another one
 * still reads (a backward function may return one tensor for several inputs). */
typedef struct {
    const void **dropped, **loose;
    int n_dropped, n_loose;
} leftovers;

static void release_leftovers(const leftovers *l) {
    for (int i = 0; i < l->n_dropped; i++) bl__arena_release(l->dropped[i]);
    for (int i = 0; i < l->n_loose; i++) bl__arena_release_unheld(l->loose[i]);
}

/* Adds g into the pending gradient *slot (a node's grad_out): the slot holds its tensor's memory;
 * the tensors the sum replaces are left over. */
static int sum_into(bl_tensor **slot, bl_tensor *g, leftovers *l) {
    if (!*slot) {
        *slot = g;
        bl__arena_hold(g->data);
        return BL_OK;
    }
    bl_tensor *sum = bl_add(*slot, g);
    if (!sum) return BL_ERR;
    bl__arena_hold(sum->data);
    l->dropped[l->n_dropped++] = (*slot)->data;
    l->loose[l->n_loose++] = g->data;
    *slot = sum;
    return BL_OK;
}

/* Adds g into a result the caller of bl_autograd_grad receives: never recycled. */
static int sum_into_result(bl_tensor **slot, bl_tensor *g) {
    bl_tensor *sum = *slot ? bl_add(*slot, g) : g;
    if (!sum) return BL_ERR;
    bl__arena_pin(sum->data);
    *slot = sum;
    return BL_OK;
}

static int accumulate_leaf_grad(bl_tensor *leaf, bl_tensor *g, leftovers *l) {
    if (!leaf->grad) {
        leaf->grad = leaf->persistent ? bl_tensor_new_persistent(leaf->dtype, leaf->ndim, leaf->shape)
                                      : bl_zeros(leaf->dtype, leaf->ndim, leaf->shape);
        BL_CHECK_RC(leaf->grad, "could not allocate the gradient of %s", leaf->name ? leaf->name : "a leaf");
        bl__arena_pin(leaf->grad->data);
    }
    BL_TRY(bl_axpy_(leaf->grad, 1.0, g));
    l->loose[l->n_loose++] = g->data;
    return BL_OK;
}

static int wanted_index(const targets *tg, const bl_tensor *t) {
    for (int i = 0; i < tg->n_wanted; i++)
        if (tg->wanted[i] == t) return i;
    return -1;
}

/* Routes gradient g to tensor t: its producer node, a wanted slot, or a leaf's .grad. */
static int deliver(const targets *tg, bl_tensor *t, bl_tensor *g, leftovers *l) {
    int w = wanted_index(tg, t);
    if (t->grad_fn) {
        /* A wanted non-leaf takes its gradient when its node is reached (all uses seen by then). */
        return sum_into(&t->grad_fn->grad_out, g, l);
    }
    if (w >= 0 && tg->wanted_grads) return sum_into_result(&tg->wanted_grads[w], g);
    if (t->requires_grad && !tg->wanted_grads) return accumulate_leaf_grad(t, g, l);
    l->loose[l->n_loose++] = g->data;
    return BL_OK;
}

static int run_backward(bl_node *node, const targets *tg) {
    bl_tensor *g = node->grad_out;
    node->grad_out = NULL;
    int w = wanted_index(tg, node->out);
    if (w >= 0 && tg->wanted_grads) BL_TRY(sum_into_result(&tg->wanted_grads[w], g));
    const size_t n = (size_t)node->n_inputs;
    bl_tensor **gin = bl_arena_alloc(n * sizeof *gin);
    leftovers l = {bl_arena_alloc((n + 1) * sizeof(void *)), bl_arena_alloc(n * sizeof(void *)), 0, 0};
    BL_CHECK_RC(gin && l.dropped && l.loose, "out of memory in backward of %s", node->name);
    memset(gin, 0, n * sizeof *gin);
    if (node->backward(node, g, gin) != BL_OK) {
        bl_set_error("backward of %s failed", node->name);
        return BL_ERR;
    }
    for (size_t i = 0; i < n; i++) {
        bl_tensor *in = node->inputs[i];
        if (!gin[i]) continue;
        if (!in || !in->requires_grad) {
            l.loose[l.n_loose++] = gin[i]->data;
            continue;
        }
        BL_CHECK_RC(bl_same_shape(gin[i], in), "backward of %s gave input %zu a gradient of shape %s, expected %s",
                    node->name, i, bl__shape(gin[i]), bl__shape(in));
        BL_TRY(deliver(tg, in, gin[i], &l));
    }
    /* Consumed: the gradients delivered above hold whatever part of it they still use. */
    l.dropped[l.n_dropped++] = g->data;
    release_leftovers(&l);
    return BL_OK;
}

static int engine(int n_roots, bl_tensor *const *roots, bl_tensor *const *root_grads, bool create_graph,
                  const targets *tg) {
    bool prev = bl_set_grad_enabled(create_graph);
    /* With create_graph the gradients are part of a graph that may be differentiated again, so
     * nothing is recycled; nor inside another pass (a backward function that runs one). */
    bool recycle = !create_graph && !bl__arena_recycling();
    if (recycle) bl__arena_recycling_begin();
    int rc = BL_OK;
    size_t top = 0;
    for (int r = 0; r < n_roots && rc == BL_OK; r++) {
        bl_tensor *root = roots[r], *g = root_grads ? root_grads[r] : NULL;
        if (!root) {
            rc = BL_ERR;
            break;
        }
        if (!g) {
            if (bl_numel(root) != 1) {
                bl_set_error("backward: output of shape %s is not a scalar; pass its gradient", bl__shape(root));
                rc = BL_ERR;
                break;
            }
            g = bl_ones(root->dtype, root->ndim, root->shape);
        } else if (!bl_same_shape(g, root)) {
            bl_set_error("backward: gradient of shape %s given for an output of shape %s", bl__shape(g),
                         bl__shape(root));
            rc = BL_ERR;
            break;
        }
        if (root->grad_fn && root->grad_fn->index + 1 > top) top = root->grad_fn->index + 1;
        const void *dropped[1], *loose[1];
        leftovers l = {dropped, loose, 0, 0};
        rc = deliver(tg, root, g, &l);
        release_leftovers(&l);
    }
    for (size_t i = top; i-- > 0 && rc == BL_OK;)
        if (tape.nodes[i]->grad_out) rc = run_backward(tape.nodes[i], tg);
    if (rc != BL_OK)
        for (size_t i = 0; i < top; i++) tape.nodes[i]->grad_out = NULL;
    if (recycle) bl__arena_recycling_end();
    bl_set_grad_enabled(prev);
    return rc;
}

int bl_backward_with(bl_tensor *out, bl_tensor *grad_out) {
    BL_CHECK_RC(out, "bl_backward: NULL output (an earlier op failed)");
    BL_CHECK_RC(out->requires_grad, "bl_backward: the output does not require grad (no parameter reached it?)");
    targets tg = {0, NULL, NULL};
    return engine(1, &out, grad_out ? &grad_out : NULL, false, &tg);
}

int bl_backward(bl_tensor *loss) { return bl_backward_with(loss, NULL); }

int bl_autograd_grad(int n_out, bl_tensor *const *outputs, bl_tensor *const *grad_outputs, int n_in,
                     bl_tensor *const *inputs, bl_tensor **grads, bool create_graph) {
    for (int i = 0; i < n_in; i++) grads[i] = NULL;
    for (int i = 0; i < n_out; i++) BL_CHECK_RC(outputs[i], "bl_autograd_grad: output %d is NULL", i);
    for (int i = 0; i < n_in; i++) BL_CHECK_RC(inputs[i], "bl_autograd_grad: input %d is NULL", i);
    targets tg = {n_in, inputs, grads};
    BL_TRY(engine(n_out, outputs, grad_outputs, create_graph, &tg));
    for (int i = 0; i < n_in; i++) {
        if (!grads[i]) grads[i] = bl_zeros_like(inputs[i]);
        BL_CHECK_RC(grads[i], "bl_autograd_grad: could not allocate a zero gradient");
    }
    return BL_OK;
}
