/* Summation: sum_to (the inverse of broadcasting) is the one reduction kernel; sum, mean,
 * sum_dim and mean_dim are shapes around it. Its gradient is expand, whose gradient is sum_to,
 * so derivatives of any order stay within these two ops. */
#include "ballast/ops.h"
#include "ballast/profile.h"

#include "core/internal.h"

#include <string.h>

typedef struct { bl_dtype dt; } accum_args;

static void accumulate_run(int64_t n, char *const *p, const int64_t *st, void *user) {
    const accum_args *args = user;
    if (args->dt == BL_F32) {
        if (st[0] == 0) {
            float acc = 0;
            for (int64_t i = 0; i < n; i++) acc += *(const float *)(p[1] + i * st[1]);
            *(float *)p[0] += acc;
        } else {
            for (int64_t i = 0; i < n; i++) *(float *)(p[0] + i * st[0]) += *(const float *)(p[1] + i * st[1]);
        }
    } else {
        if (st[0] == 0) {
            double acc = 0;
            for (int64_t i = 0; i < n; i++) acc += *(const double *)(p[1] + i * st[1]);
            *(double *)p[0] += acc;
        } else {
            for (int64_t i = 0; i < n; i++) *(double *)(p[0] + i * st[0]) += *(const double *)(p[1] + i * st[1]);
        }
    }
}

/* out (shape) = a summed over the dims where it was broadcast to a's shape. No autograd. */
static bl_tensor *sum_to_kernel(bl_tensor *a, int ndim, const int64_t *shape) {
    bl_tensor *out = bl_zeros(a->dtype, ndim, shape);
    if (!out) return NULL;
    int64_t n = bl_numel(a);
    if (bl_numel(out) == 1 && bl_is_contiguous(a)) {
        /* Whole-tensor sum: parallel, accumulated in double for accuracy. */
        double acc = 0;
        if (a->dtype == BL_F32) {
            const float *x = a->data;
#pragma omp parallel for reduction(+ : acc) if (n >= 65536)
            for (int64_t i = 0; i < n; i++) acc += x[i];
        } else {
            const double *x = a->data;
#pragma omp parallel for reduction(+ : acc) if (n >= 65536)
            for (int64_t i = 0; i < n; i++) acc += x[i];
        }
        bl_set_flat(out, 0, acc);
        return out;
    }
    int64_t strides[2][BL_MAX_DIMS];
    bl__broadcast_strides(out, a->ndim, a->shape, strides[0]);
    memcpy(strides[1], a->stride, sizeof strides[1]);
    char *base[2] = {out->data, a->data};
    size_t es[2] = {bl_dtype_size(a->dtype), bl_dtype_size(a->dtype)};
    accum_args args = {a->dtype};
    bl__for_each_run(a->ndim, a->shape, 2, base, (const int64_t(*)[BL_MAX_DIMS])strides, es, accumulate_run, &args);
    return out;
}

static int sum_to_backward(bl_node *node, bl_tensor *g, bl_tensor **gin) {
    bl_tensor *a = node->inputs[0];
    gin[0] = bl_expand(g, a->ndim, a->shape);
    return gin[0] ? BL_OK : BL_ERR;
}

bl_tensor *bl_sum_to(bl_tensor *a, int ndim, const int64_t *shape) {
    BL_NONNULL(a);
    BL_CHECK(bl_dtype_is_float(a->dtype), "sum: needs a float tensor, got %s", bl_dtype_name(a->dtype));
    BL_CHECK(ndim <= a->ndim, "sum_to: cannot reduce %s to %d dims", bl__shape(a), ndim);
    bool same = ndim == a->ndim;
    for (int i = 0; i < ndim; i++) {
        int64_t from = a->shape[a->ndim - ndim + i];
        BL_CHECK(shape[i] == from || shape[i] == 1, "sum_to: %s does not broadcast from the target shape", bl__shape(a));
        same = same && shape[i] == from;
    }
    if (same) return a;
    double t0 = bl_profile_start();
    bl_tensor *out = sum_to_kernel(a, ndim, shape);
    bl_profile_stop("sum", t0, (double)bl_numel(a));
    bl_tensor *in[1] = {a};
    bl_autograd_record(out, "sum_to", sum_to_backward, 1, in, 0);
    return out;
}

bl_tensor *bl_sum(bl_tensor *a) { return bl_sum_to(a, 0, NULL); }

bl_tensor *bl_mean(bl_tensor *a) {
    BL_NONNULL(a);
    return bl_mul_scalar(bl_sum(a), 1.0 / (double)(bl_numel(a) ? bl_numel(a) : 1));
}

bl_tensor *bl_sum_dim(bl_tensor *a, int dim, bool keepdim) {
    BL_NONNULL(a);
    int d = bl_wrap_dim(a, dim);
    if (d < 0) return NULL;
    if (a->ndim == 0) return a;
    int64_t shape[BL_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[d] = 1;
    bl_tensor *s = bl_sum_to(a, a->ndim, shape);
    return keepdim ? s : bl_squeeze(s, d);
}

bl_tensor *bl_mean_dim(bl_tensor *a, int dim, bool keepdim) {
    BL_NONNULL(a);
    int d = bl_wrap_dim(a, dim);
    if (d < 0) return NULL;
    int64_t n = a->ndim ? a->shape[d] : 1;
    return bl_mul_scalar(bl_sum_dim(a, d, keepdim), 1.0 / (double)(n ? n : 1));
}
