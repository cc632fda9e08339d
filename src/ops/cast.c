/* Dtype conversion. Between F32 and F64 it is differentiable (the gradient is cast back); other
 * conversions (labels, pixels, half-precision storage) are plain copies. */
#include "ballast/ops.h"

#include "core/internal.h"

static int cast_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    gin[0] = bl_to_dtype(g, node->inputs[0]->dtype);
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_to_dtype(bl_tensor *a, bl_dtype dt) {
    BL_NONNULL(a);
    BL_CHECK((unsigned)dt < BL_DTYPE_COUNT, "to_dtype: unknown dtype %d", (int)dt);
    if (a->dtype == dt) return a;
    bl_tensor *out = bl_empty(dt, a->ndim, a->shape);
    if (!out || bl_copy_(out, a) != BL_OK) return NULL;
    if (bl_dtype_is_float(a->dtype) && bl_dtype_is_float(dt)) {
        bl_tensor *in[1] = {a};
        bl_autograd_record(out, "to_dtype", cast_backward, 1, in, 0);
    }
    return out;
}
