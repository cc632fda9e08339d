/* Internal helpers shared by the library's sources: error macros and small utilities.
 * Not installed; nothing outside src/ includes it. */
#ifndef BALLAST_INTERNAL_H
#define BALLAST_INTERNAL_H

#include "ballast/autograd.h"
#include "ballast/tensor.h"

#include <stdio.h>

/* Records "file:line: message" as the pending error. */
void bl__error_at(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* On failure of `cond`, set an error naming this source line and return `ret`. */
#define BL_CHECK_OR(ret, cond, ...)                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            bl__error_at(__FILE__, __LINE__, __VA_ARGS__);                                     \
            return ret;                                                                        \
        }                                                                                      \
    } while (0)
/* For functions returning a pointer. */
#define BL_CHECK(cond, ...) BL_CHECK_OR(NULL, cond, __VA_ARGS__)
/* For functions returning BL_OK/BL_ERR. */
#define BL_CHECK_RC(cond, ...) BL_CHECK_OR(BL_ERR, cond, __VA_ARGS__)
/* Propagates a NULL input: an earlier op already recorded why. */
#define BL_NONNULL(...)                                                                        \
    do {                                                                                       \
        const void *bl__in[] = {__VA_ARGS__};                                                  \
        for (size_t bl__i = 0; bl__i < sizeof bl__in / sizeof bl__in[0]; bl__i++)             \
            if (!bl__in[bl__i]) return NULL;                                                   \
    } while (0)
/* Evaluates an int-returning call and returns BL_ERR from the caller when it fails. */
#define BL_TRY(call)                                                                           \
    do {                                                                                       \
        if ((call) != BL_OK) return BL_ERR;                                                    \
    } while (0)

/* Shape string for messages, in a rotating static buffer (valid for a few calls). */
const char *bl__shape(const bl_tensor *t);

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
