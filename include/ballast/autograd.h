/* ballast autograd: a define-by-run tape over the step arena.
 *
 * Every op whose inputs require gradients (while grad mode is on) appends one node to the tape. The
 * tape is in creation order, so walking it backwards is a valid reverse topological order. A node's
 * backward function computes its inputs' gradients *with ops*; when the engine runs with
 * create_graph, grad mode stays on during backward, the backward ops are themselves recorded, and
 * gradients of gradients follow (IRM penalty, gradient matching). Without create_graph, backward
 * functions may call fused kernels directly (bl_grad_enabled() tells them which case they are in).
 *
 * Nodes and their saved tensors live in the step arena: the graph is always retained until the
 * enclosing bl_scope_end(), so backward may be run more than once on the same graph. */
#ifndef BALLAST_AUTOGRAD_H
#define BALLAST_AUTOGRAD_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct bl_node bl_node;

/* Computes grad_in[i] (same shape as node->inputs[i]) from grad_out (same shape as node->out).
 * Leave grad_in[i] NULL for inputs that do not require grad or receive no gradient.
 * Returns BL_OK or BL_ERR. */
typedef int (*bl_backward_fn)(bl_node *node, bl_tensor *grad_out, bl_tensor **grad_in);

struct bl_node {
    const char *name;          /* op name, for messages and profiles */
    bl_backward_fn backward;
    int n_inputs;
    bl_tensor **inputs;        /* the op's tensor inputs, as the op saw them */
    bl_tensor *out;            /* the op's output */
    void *ctx;                 /* op-specific saved state (arena memory, zeroed) */
    size_t index;              /* position on the tape */
    bl_tensor *grad_out;       /* engine-private: gradient pending for `out` */
};

/* ---- grad mode ----------------------------------------------------------------------------- */

bool bl_grad_enabled(void);
/* Sets grad mode and returns the previous one. */
bool bl_set_grad_enabled(bool on);
/* Runs the following statement/block with grad mode off (no `return`/`break` out of it):
 *   BL_NO_GRAD { bl_tensor *y = model_forward(x); ... }                                        */
#define BL_NO_GRAD                                                                             \
    for (bool bl__prev = bl_set_grad_enabled(false), bl__once = true; bl__once;             \
         bl_set_grad_enabled(bl__prev), bl__once = false)

/* ---- for op implementers ------------------------------------------------------------------- */

/* True when an op over these inputs must record a node: grad mode on and some input requires grad. */
bool bl_autograd_needed(int n, bl_tensor *const *inputs);
/* Records a node producing `out` from `inputs`, with `ctx_bytes` of zeroed op state in node->ctx.
 * Marks `out` as requiring grad. Returns the node, or NULL when recording is not needed (then
 * `out` is left untouched). */
bl_node *bl_autograd_record(bl_tensor *out, const char *name, bl_backward_fn backward, int n,
                            bl_tensor *const *inputs, size_t ctx_bytes);

/* ---- user API ------------------------------------------------------------------------------ */

/* Backpropagates from a scalar `loss` (gradient 1) and accumulates into `.grad` of every leaf that
 * requires grad (allocating it, zeroed, on first use, with the leaf's lifetime). First order only. */
int bl_backward(bl_tensor *loss);
/* Like bl_backward with an explicit output gradient (same shape as `out`). */
int bl_backward_with(bl_tensor *out, bl_tensor *grad_out);
/* Returns d(sum_k <outputs[k], grad_outputs[k]>)/d(inputs[i]) in grads[i] without touching
 * `.grad` (like torch.autograd.grad). grad_outputs may be NULL for scalar outputs (gradient 1).
 * An input the outputs do not depend on gets a zero tensor. With create_graph, the returned
 * gradients are themselves differentiable. */
int bl_autograd_grad(int n_out, bl_tensor *const *outputs, bl_tensor *const *grad_outputs,
                     int n_in, bl_tensor *const *inputs, bl_tensor **grads, bool create_graph);
/* A view of t that shares memory but is cut from the graph (requires_grad false). */
bl_tensor *bl_detach(bl_tensor *t);
/* Sets every element of a leaf's .grad to zero (no-op when it has none). */
void bl_zero_grad(bl_tensor *leaf);
/* Number of nodes currently on the tape. */
size_t bl_tape_length(void);

/* ---- finite-difference gradient check ---------------------------------------------------------
 * f maps n_in F64 tensors (which it must only read) to one F64 tensor. The check compares the
 * autograd gradient of sum(f(x) * w), w a fixed random weighting, against central differences
 * with step eps, for every element of every input with requires_grad set. With `order2`, it also
 * checks the gradient of g(x) = <grad of sum(f*w), v> (the Hessian-vector path) the same way,
 * which exercises every backward function's own backward. Returns BL_OK when all relative errors
 * are within tol, else BL_ERR with the worst element named in the error message. */
typedef bl_tensor *(*bl_gradcheck_fn)(bl_tensor *const *inputs, void *user);
int bl_gradcheck(bl_gradcheck_fn f, void *user, int n_in, bl_tensor *const *inputs, double eps,
                 double tol, bool order2);

#ifdef __cplusplus
}
#endif
#endif
