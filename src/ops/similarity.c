/* L2 normalisation and cosine similarity along a dim, as torch.nn.functional.normalize (p = 2) and
 * cosine_similarity. Both are compositions of elementwise ops and reductions, so they are
 * differentiable to any order. */
#include "ballast/ops.h"

#include "core/internal.h"

#include <string.h>

/* max(||x||, eps) along dim, keeping the dim. Computed as sqrt(max(sum x^2, eps^2)): the same value,
 * but a zero vector then takes the gradient of a constant instead of 0 / sqrt(0). */
static bl_tensor *clamped_norm(bl_tensor *x, int dim, double eps) {
    bl_tensor *squares = bl_sum_dim(bl_mul(x, x), dim, true);
    return bl_sqrt(bl_maximum(squares, bl_scalar(x->dtype, eps * eps)));
}

bl_tensor *bl_l2_normalize(bl_tensor *x, int dim, double eps) {
    BL_NONNULL(x);
    BL_CHECK(bl_dtype_is_float(x->dtype), "l2_normalize: needs an F32 or F64 tensor, got %s", bl_dtype_name(x->dtype));
    BL_CHECK(eps >= 0, "l2_normalize: eps %g is negative", eps);
    BL_CHECK(dim >= -x->ndim && dim < x->ndim, "l2_normalize: dim %d is out of range for shape %s", dim,
             bl__shape(x));
    return bl_div(x, clamped_norm(x, dim < 0 ? dim + x->ndim : dim, eps));
}

/* a and b broadcast to a common shape, in which dim is counted. Each is normalised with its own
 * norm clamped at eps before the dot product, as torch does since 1.12 (this keeps the result in
 * [-1, 1]). */
bl_tensor *bl_cosine_similarity(bl_tensor *a, bl_tensor *b, int dim, double eps) {
    BL_NONNULL(a, b);
    BL_CHECK(bl_dtype_is_float(a->dtype) && a->dtype == b->dtype,
             "cosine_similarity: needs two F32 or two F64 tensors, got %s and %s", bl_dtype_name(a->dtype),
             bl_dtype_name(b->dtype));
    BL_CHECK(eps >= 0, "cosine_similarity: eps %g is negative", eps);
    int ndim;
    int64_t shape[BL_MAX_DIMS];
    if (bl__broadcast_shape("cosine_similarity", a, b, &ndim, shape) != BL_OK) return NULL;
    BL_CHECK(dim >= -ndim && dim < ndim, "cosine_similarity: dim %d is out of range for shapes %s and %s", dim,
             bl__shape(a), bl__shape(b));
    const int d = dim < 0 ? dim + ndim : dim;
    bl_tensor *ae = bl_expand(a, ndim, shape), *be = bl_expand(b, ndim, shape);
    return bl_sum_dim(bl_mul(bl_l2_normalize(ae, d, eps), bl_l2_normalize(be, d, eps)), d, false);
}
