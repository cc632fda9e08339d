/* Reference strided kernels for binary elementwise math and comparisons, in float and double.
 * They accept any strides (0 for broadcast dims), so they double as the general path of the ops. */
#ifndef BALLAST_REF_ELEMENTWISE_H
#define BALLAST_REF_ELEMENTWISE_H

#include "ballast/tensor.h"

typedef enum {
    BL_BIN_ADD, BL_BIN_SUB, BL_BIN_MUL, BL_BIN_DIV, BL_BIN_MAX, BL_BIN_MIN, BL_BIN_POW,
    BL_BIN_GT, BL_BIN_GE, BL_BIN_LT, BL_BIN_EQ,
    BL_BIN_COUNT
} bl_binary_op;

/* True for the comparisons, whose output is BL_BOOL. */
static inline int bl_binary_is_compare(bl_binary_op op) { return op >= BL_BIN_GT; }

/* out (shape, contiguous) = a op b, where a and b have dtype dt (F32/F64) and are read with the given
 * element strides over `shape` (ndim dims). out has dtype dt, or BL_BOOL for comparisons. */
void ref_binary(bl_binary_op op, bl_dtype dt, int ndim, const int64_t *shape, void *out, const void *a,
                const int64_t *stride_a, const void *b, const int64_t *stride_b);

/* out (shape, contiguous, dtype dt) = cond ? a : b; cond any dtype (nonzero = true), strided. */
void ref_where(bl_dtype dt, int ndim, const int64_t *shape, void *out, const void *cond, bl_dtype cond_dt,
               const int64_t *stride_c, const void *a, const int64_t *stride_a, const void *b,
               const int64_t *stride_b);

#endif
