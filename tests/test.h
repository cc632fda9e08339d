/* A minimal test harness: CHECK records a failure with file:line and carries on; TEST_MAIN runs
 * the listed test functions and prints "N passed, N failed". */
#ifndef BALLAST_TEST_H
#define BALLAST_TEST_H

#include "ballast/ballast.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures;

#define CHECK(cond, ...)                                                                       \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            test_failures++;                                                                   \
            fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, " " __VA_ARGS__);                                                  \
            fprintf(stderr, " [last error: %s]\n", bl_last_error());                           \
        }                                                                                      \
    } while (0)

#define CHECK_CLOSE(a, b, tol)                                                                 \
    do {                                                                                       \
        double ca_ = (a), cb_ = (b);                                                           \
        CHECK(fabs(ca_ - cb_) <= (tol) * (1.0 + fabs(cb_)), "%s = %.9g, %s = %.9g", #a, ca_, #b, cb_); \
    } while (0)

/* Largest |a_i - b_i| / (1 + |b_i|) over two tensors of the same numel. */
static inline double test_max_rel_diff(const bl_tensor *a, const bl_tensor *b) {
    double worst = 0;
    if (!a || !b || bl_numel(a) != bl_numel(b)) return INFINITY;
    for (int64_t i = 0; i < bl_numel(a); i++) {
        double x = bl_get_flat(a, i), y = bl_get_flat(b, i);
        double d = fabs(x - y) / (1.0 + fabs(y));
        if (!(d <= worst)) worst = d; /* NaN propagates as worst */
    }
    return worst;
}

/* The tensor's elements in logical (row-major) order, as doubles in the arena. */
static inline double *test_values(const bl_tensor *t) {
    if (!t) return NULL;
    double *v = bl_arena_alloc((size_t)(bl_numel(t) ? bl_numel(t) : 1) * sizeof *v);
    for (int64_t i = 0; i < bl_numel(t); i++) v[i] = bl_get_flat(t, i);
    return v;
}

/* Largest |t_i - ref_i| / (1 + |ref_i|) against n doubles; infinite when t is NULL or of another size. */
static inline double test_max_rel_diff_values(const bl_tensor *t, const double *ref, int64_t n) {
    if (!t || bl_numel(t) != n) return INFINITY;
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs(bl_get_flat(t, i) - ref[i]) / (1.0 + fabs(ref[i]));
        if (!(d <= worst)) worst = d;
    }
    return worst;
}

/* A tensor with values drawn from N(0, 1) (seeded), in the arena. */
static inline bl_tensor *test_randn(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    bl_rng r = bl_rng_make(seed, 77);
    if (t) bl_fill_normal_(t, &r, 0.0, 1.0);
    return t;
}

/* Deterministic contents that PyTorch can reproduce: t[i] = sin(0.37 i + phase). */
static inline bl_tensor *test_pattern(bl_dtype dt, int ndim, const int64_t *shape, double phase) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    for (int64_t i = 0; t && i < bl_numel(t); i++) bl_set_flat(t, i, sin(0.37 * (double)i + phase));
    return t;
}

/* sum_i t[i] cos(0.11 i): one number that changes when any element moves or changes. */
static inline double test_checksum(const bl_tensor *t) {
    double s = 0;
    for (int64_t i = 0; t && i < bl_numel(t); i++) s += bl_get_flat(t, i) * cos(0.11 * (double)i);
    return t ? s : NAN;
}

static inline bool test_shape_is(const bl_tensor *t, int ndim, const int64_t *shape) {
    if (!t || t->ndim != ndim) return false;
    for (int d = 0; d < ndim; d++)
        if (t->shape[d] != shape[d]) return false;
    return true;
}

/* The op returned NULL with a message naming `op` and mentioning `detail`. */
static inline bool test_failed_with(const void *result, const char *op, const char *detail) {
    return result == NULL && strstr(bl_last_error(), op) && strstr(bl_last_error(), detail);
}
#define CHECK_FAILS(result, op, detail)                                                            \
    do {                                                                                           \
        CHECK(test_failed_with(result, op, detail), "%s should fail mentioning '%s'", op, detail); \
        bl_clear_error();                                                                          \
    } while (0)

/* A new tensor (in the arena) with t's shape, dtype and values. */
static inline bl_tensor *test_copy(const bl_tensor *t) {
    bl_tensor *copy = bl_empty(t->dtype, t->ndim, t->shape);
    if (copy) bl_copy_(copy, t);
    return copy;
}

typedef void (*test_fn)(void);
typedef struct { const char *name; test_fn fn; } test_case;

static inline int test_run_all(const test_case *cases, int n) {
    int passed = 0, failed = 0;
    for (int i = 0; i < n; i++) {
        int before = test_failures;
        bl_clear_error();
        bl_scope s = bl_scope_begin();
        cases[i].fn();
        bl_scope_end(s);
        if (test_failures == before) {
            passed++;
            printf("ok   %s\n", cases[i].name);
        } else {
            failed++;
            printf("FAIL %s\n", cases[i].name);
        }
    }
    printf("%d passed, %d failed\n", passed, failed);
    bl_arena_release_all();
    return failed ? 1 : 0;
}

#define TEST(fn) {#fn, fn}
#define TEST_MAIN(...)                                                                         \
    int main(void) {                                                                           \
        const test_case cases[] = {__VA_ARGS__};                                               \
        return test_run_all(cases, (int)(sizeof cases / sizeof cases[0]));                     \
    }

#endif
