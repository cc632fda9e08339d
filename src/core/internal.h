/* Internal helpers shared by the library's sources: small utilities (the error macros are public,
 * in ballast/error.h). Not installed; nothing outside src/ includes it. */
#ifndef BALLAST_INTERNAL_H
#define BALLAST_INTERNAL_H

#include "ballast/autograd.h"
#include "ballast/error.h"
#include "ballast/tensor.h"

#include <stdio.h>

/* The library's short name for bl_shape_text. */
static inline const char *bl__shape(const bl_tensor *t) { return bl_shape_text(t); }

/* Makes a tensor struct in the arena viewing `data` with the given shape and contiguous strides. */
bl_tensor *bl__wrap(bl_dtype dt, int ndim, const int64_t *shape, void *data);
/* Fills contiguous strides for shape. */
void bl__contiguous_strides(int ndim, const int64_t *shape, int64_t *stride);
/* The arena tensor struct, copied from t (same data, shape, strides), detached from autograd. */
bl_tensor *bl__view_of(const bl_tensor *t);

/* Iterates the logical (row-major) index space of `shape`, yielding for each of up to 4 operands
 * the element offset (strides given per operand, in elements). Used by the reference kernels for
 * arbitrary strides and broadcasting: the innermost dim is handed to `fn` as one strided run. */
typedef void (*bl__run_fn)(int64_t n, char *const *ptr, const int64_t *inner_stride_bytes, void *user);
void bl__for_each_run(int ndim, const int64_t *shape, int n_ops, char *const *base,
                      const int64_t (*strides)[BL_MAX_DIMS], const size_t *elem_size, bl__run_fn fn,
                      void *user);

/* The calling thread's index in the current OpenMP team (0 outside one), and the most threads a
 * parallel region may use: together they size and index per-thread scratch space. */
int bl__thread_index(void);
int bl__max_threads(void);

/* Broadcast shape of a and b (NumPy rules) into (ndim, shape); BL_ERR with a message naming
 * `op` when incompatible. */
int bl__broadcast_shape(const char *op, const bl_tensor *a, const bl_tensor *b, int *ndim, int64_t *shape);
/* Strides that read t as if broadcast to (ndim, shape): 0 on stretched and missing leading dims. */
void bl__broadcast_strides(const bl_tensor *t, int ndim, const int64_t *shape, int64_t *stride);

#endif
