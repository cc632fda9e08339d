/* Reference binary elementwise kernels over arbitrary strides (see ref_elementwise.h). The strided
 * iterator hands each innermost run to a loop specialised per op and type, so broadcasting a bias or
 * a scalar costs no extra copy. */
#include "ref_elementwise.h"

#include "core/internal.h"

#include <math.h>

typedef struct { bl_binary_op op; } binary_args;

#define BINARY_RUN(T, SUFFIX)                                                                  \
    static void binary_run_##SUFFIX(int64_t n, char *const *p, const int64_t *st, void *user) { \
        const binary_args *args = user;                                                        \
        T *o = (T *)p[0];                                                                      \
        const char *a = p[1], *b = p[2];                                                       \
        int64_t sa = st[1], sb = st[2];                                                        \
        switch (args->op) {                                                                    \
        case BL_BIN_ADD: for (int64_t i = 0; i < n; i++) o[i] = *(const T *)(a + i * sa) + *(const T *)(b + i * sb); break; \
        case BL_BIN_SUB: for (int64_t i = 0; i < n; i++) o[i] = *(const T *)(a + i * sa) - *(const T *)(b + i * sb); break; \
        case BL_BIN_MUL: for (int64_t i = 0; i < n; i++) o[i] = *(const T *)(a + i * sa) * *(const T *)(b + i * sb); break; \
        case BL_BIN_DIV: for (int64_t i = 0; i < n; i++) o[i] = *(const T *)(a + i * sa) / *(const T *)(b + i * sb); break; \
        case BL_BIN_MAX: for (int64_t i = 0; i < n; i++) { T x = *(const T *)(a + i * sa), y = *(const T *)(b + i * sb); o[i] = x >= y ? x : y; } break; \
        case BL_BIN_MIN: for (int64_t i = 0; i < n; i++) { T x = *(const T *)(a + i * sa), y = *(const T *)(b + i * sb); o[i] = x <= y ? x : y; } break; \
        case BL_BIN_POW: for (int64_t i = 0; i < n; i++) o[i] = (T)pow(*(const T *)(a + i * sa), *(const T *)(b + i * sb)); break; \
        default: break;                                                                        \
        }                                                                                      \
    }                                                                                          \
    static void compare_run_##SUFFIX(int64_t n, char *const *p, const int64_t *st, void *user) { \
        const binary_args *args = user;                                                        \
        uint8_t *o = (uint8_t *)p[0];                                                          \
        const char *a = p[1], *b = p[2];                                                       \
        for (int64_t i = 0; i < n; i++) {                                                      \
            T x = *(const T *)(a + i * st[1]), y = *(const T *)(b + i * st[2]);                \
            switch (args->op) {                                                                \
            case BL_BIN_GT: o[i] = x > y; break;                                               \
            case BL_BIN_GE: o[i] = x >= y; break;                                              \
            case BL_BIN_LT: o[i] = x < y; break;                                               \
            default: o[i] = x == y; break;                                                     \
            }                                                                                  \
        }                                                                                      \
    }

BINARY_RUN(float, f32)
BINARY_RUN(double, f64)

void ref_binary(bl_binary_op op, bl_dtype dt, int ndim, const int64_t *shape, void *out, const void *a,
                const int64_t *stride_a, const void *b, const int64_t *stride_b) {
    int64_t strides[3][BL_MAX_DIMS];
    bl__contiguous_strides(ndim, shape, strides[0]);
    for (int d = 0; d < ndim; d++) {
        strides[1][d] = stride_a[d];
        strides[2][d] = stride_b[d];
    }
    size_t es = bl_dtype_size(dt);
    size_t sizes[3] = {bl_binary_is_compare(op) ? 1 : es, es, es};
    char *base[3] = {out, (char *)a, (char *)b};
    binary_args args = {op};
    bl__run_fn fn = bl_binary_is_compare(op) ? (dt == BL_F32 ? compare_run_f32 : compare_run_f64)
                                             : (dt == BL_F32 ? binary_run_f32 : binary_run_f64);
    bl__for_each_run(ndim, shape, 3, base, (const int64_t(*)[BL_MAX_DIMS])strides, sizes, fn, &args);
}

typedef struct { bl_dtype cond_dt; } where_args;

static int truthy(const char *p, bl_dtype dt) {
    switch (dt) {
    case BL_F32: return *(const float *)p != 0;
    case BL_F64: return *(const double *)p != 0;
    case BL_I32: return *(const int32_t *)p != 0;
    case BL_I64: return *(const int64_t *)p != 0;
    default: return *(const uint8_t *)p != 0;
    }
}

#define WHERE_RUN(T, SUFFIX)                                                                   \
    static void where_run_##SUFFIX(int64_t n, char *const *p, const int64_t *st, void *user) { \
        const where_args *args = user;                                                         \
        T *o = (T *)p[0];                                                                      \
        for (int64_t i = 0; i < n; i++)                                                        \
            o[i] = truthy(p[1] + i * st[1], args->cond_dt) ? *(const T *)(p[2] + i * st[2])    \
                                                            : *(const T *)(p[3] + i * st[3]);  \
    }

WHERE_RUN(float, f32)
WHERE_RUN(double, f64)

void ref_where(bl_dtype dt, int ndim, const int64_t *shape, void *out, const void *cond, bl_dtype cond_dt,
               const int64_t *stride_c, const void *a, const int64_t *stride_a, const void *b,
               const int64_t *stride_b) {
    int64_t strides[4][BL_MAX_DIMS];
    bl__contiguous_strides(ndim, shape, strides[0]);
    for (int d = 0; d < ndim; d++) {
        strides[1][d] = stride_c[d];
        strides[2][d] = stride_a[d];
        strides[3][d] = stride_b[d];
    }
    size_t es = bl_dtype_size(dt);
    size_t sizes[4] = {es, bl_dtype_size(cond_dt), es, es};
    char *base[4] = {out, (char *)cond, (char *)a, (char *)b};
    where_args args = {cond_dt};
    bl__for_each_run(ndim, shape, 4, base, (const int64_t(*)[BL_MAX_DIMS])strides, sizes,
                     dt == BL_F32 ? where_run_f32 : where_run_f64, &args);
}
