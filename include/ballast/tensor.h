/* ballast tensors: a typed, strided view of memory, up to 6 dims.
 *
 * A tensor is a small struct that points into memory it does not necessarily own. Memory comes
 * from one of two places:
 *  - the step arena (default): bump-allocated, released wholesale by bl_scope_end(). Every tensor an
 *    op returns, and every autograd node, lives here. A training step allocates nothing else.
 *  - persistent memory (parameters, optimizer state, datasets): bl_tensor_new_persistent(), freed by
 *    bl_tensor_free(), or views into a bl_param_store.
 * Views (reshape, permute, slice, expand, ...) share memory and only change shape/strides/offset.
 * Strides are in elements, never bytes. The public layout is always NCHW for images and (B, T, D)
 * for token sequences; kernels may use other layouts internally.
 *
 * Errors: functions returning a pointer return NULL on failure and set a message (bl_last_error());
 * every op accepts NULL inputs and returns NULL, so chained calls need only one check at the end.
 * Functions returning int return BL_OK (0) or BL_ERR (-1). Nothing here calls exit(). */
#ifndef BALLAST_TENSOR_H
#define BALLAST_TENSOR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define BL_MAX_DIMS 6
#define BL_OK 0
#define BL_ERR (-1)

typedef enum {
    BL_F32 = 0, /* compute type */
    BL_F64,     /* compute type, used by gradient checks */
    BL_I32,
    BL_I64,     /* class labels and indices, like PyTorch's long */
    BL_U8,      /* raw image pixels, masks */
    BL_BOOL,    /* one byte per element, 0 or 1 */
    BL_F16,     /* storage only: convert with bl_to_dtype */
    BL_BF16,    /* storage only */
    BL_DTYPE_COUNT
} bl_dtype;

struct bl_node;

typedef struct bl_tensor {
    void *data;                     /* address of the element at index (0, ..., 0) */
    bl_dtype dtype;
    int ndim;                       /* 0 for a scalar */
    int64_t shape[BL_MAX_DIMS];
    int64_t stride[BL_MAX_DIMS];    /* in elements; 0 on a broadcast (expanded) dim */
    bool requires_grad;             /* set on leaves by the user, on op outputs by autograd */
    bool persistent;                /* memory outlives the step arena */
    bool owns_data;                 /* bl_tensor_free() releases data */
    struct bl_tensor *grad;         /* leaves: accumulated gradient (same shape, contiguous) */
    struct bl_node *grad_fn;        /* op that produced it; NULL for leaves and detached tensors */
    const char *name;               /* optional, for messages (parameters carry their full name) */
} bl_tensor;

/* ---- errors ------------------------------------------------------------------------------ */

/* The message of the first error since the last bl_clear_error(), or "" when none. */
const char *bl_last_error(void);
void bl_clear_error(void);
/* Records an error (printf-style). Keeps the first message when one is already pending. */
void bl_set_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- dtypes ------------------------------------------------------------------------------ */

size_t bl_dtype_size(bl_dtype dt);
const char *bl_dtype_name(bl_dtype dt);
bool bl_dtype_is_float(bl_dtype dt); /* F32 or F64: the types ops compute in */

/* ---- step arena and scopes ----------------------------------------------------------------- */

/* A scope mark: everything allocated in the arena (tensors, tape nodes) after bl_scope_begin() is
 * released by the matching bl_scope_end(). Scopes nest. A training loop wraps each step in one. */
typedef struct { size_t chunk, offset, tape_len, bytes; } bl_scope;
bl_scope bl_scope_begin(void);
void bl_scope_end(bl_scope mark);
/* Raw arena allocation (64-byte aligned, uninitialized), for kernels' scratch space. */
void *bl_arena_alloc(size_t bytes);
/* Bytes currently allocated in the arena and the high-water mark since start. */
size_t bl_arena_used(void);
size_t bl_arena_peak(void);
/* Frees all arena chunks (only valid with no open scope); for leak checkers and tests. */
void bl_arena_release_all(void);

/* ---- creation ---------------------------------------------------------------------------- */

/* New contiguous tensors in the step arena. `shape` has `ndim` entries. Contents: empty =
 * uninitialized, zeros, ones, full = value. */
bl_tensor *bl_empty(bl_dtype dt, int ndim, const int64_t *shape);
bl_tensor *bl_zeros(bl_dtype dt, int ndim, const int64_t *shape);
bl_tensor *bl_ones(bl_dtype dt, int ndim, const int64_t *shape);
bl_tensor *bl_full(bl_dtype dt, int ndim, const int64_t *shape, double value);
bl_tensor *bl_scalar(bl_dtype dt, double value);
bl_tensor *bl_empty_like(const bl_tensor *t);
bl_tensor *bl_zeros_like(const bl_tensor *t);
/* 0, 1, ..., n-1 */
bl_tensor *bl_arange(bl_dtype dt, int64_t n);
/* Copies `numel` values of type `dt` from `src` into a new arena tensor. */
bl_tensor *bl_from_data(bl_dtype dt, int ndim, const int64_t *shape, const void *src);

/* Convenience for literal shapes: BL_SHAPE(2, 3) expands to `2, (int64_t[]){2, 3}`. */
#define BL_SHAPE(...) (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (int64_t[]){__VA_ARGS__}

/* Persistent tensors (malloc'ed, zero-filled), for state that outlives steps. Free with
 * bl_tensor_free(), which also frees its grad. */
bl_tensor *bl_tensor_new_persistent(bl_dtype dt, int ndim, const int64_t *shape);
void bl_tensor_free(bl_tensor *t);

/* ---- shape queries ----------------------------------------------------------------------- */

int64_t bl_numel(const bl_tensor *t);
size_t bl_nbytes(const bl_tensor *t);
bool bl_is_contiguous(const bl_tensor *t);
bool bl_same_shape(const bl_tensor *a, const bl_tensor *b);
/* Normalizes a possibly negative dim; returns -1 (and sets an error) when out of range. */
int bl_wrap_dim(const bl_tensor *t, int dim);
/* Formats the shape as "[2, 3, 4]" into buf; returns buf. */
const char *bl_shape_str(const bl_tensor *t, char *buf, size_t len);

/* ---- element access (slow; for tests, I/O and small bookkeeping) ------------------------- */

/* Reads/writes element at linear index i of the tensor's logical (row-major) order. */
double bl_get_flat(const bl_tensor *t, int64_t i);
void bl_set_flat(bl_tensor *t, int64_t i, double v);
/* Reads the single element of a 1-element tensor. */
double bl_item(const bl_tensor *t);

/* ---- copies and conversion (not recorded by autograd unless stated) ---------------------- */

/* Copies src into dst elementwise, converting dtype; shapes must match or src broadcast to dst. */
int bl_copy_(bl_tensor *dst, const bl_tensor *src);
/* Fills every element of t with value. */
int bl_fill_(bl_tensor *t, double value);

/* ---- RNG: counter-based (Philox-style) streams, one per purpose ---------------------------- */

typedef struct { uint64_t key; uint64_t counter; } bl_rng;
/* A stream for (seed, purpose): different purposes give independent streams, so adding a random
 * draw to data loading does not change model initialization. */
bl_rng bl_rng_make(uint64_t seed, uint64_t purpose);
uint64_t bl_rng_u64(bl_rng *r);
double bl_rng_uniform(bl_rng *r);            /* [0, 1) */
double bl_rng_normal(bl_rng *r);             /* standard normal */
int64_t bl_rng_below(bl_rng *r, int64_t n);  /* uniform integer in [0, n) */
double bl_rng_gamma(bl_rng *r, double shape); /* Gamma(shape, 1); NaN unless shape > 0 */
double bl_rng_beta(bl_rng *r, double a, double b); /* Beta(a, b) */
void bl_rng_shuffle(bl_rng *r, int64_t *idx, int64_t n);
/* Fills a float tensor in place. */
int bl_fill_uniform_(bl_tensor *t, bl_rng *r, double lo, double hi);
int bl_fill_normal_(bl_tensor *t, bl_rng *r, double mean, double std);

/* ---- threads ----------------------------------------------------------------------------- */

/* Number of worker threads used by kernels (OpenMP); set once at start. */
void bl_set_threads(int n);
int bl_get_threads(void);

#ifdef __cplusplus
}
#endif
#endif
