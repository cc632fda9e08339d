/* Tensor structs, creation, element access, dtype conversion and the strided iterator that the
 * reference kernels use for arbitrary strides and broadcasting. */
#include "internal.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const size_t dtype_sizes[BL_DTYPE_COUNT] = {4, 8, 4, 8, 1, 1, 2, 2};
static const char *const dtype_names[BL_DTYPE_COUNT] = {"F32", "F64", "I32", "I64",
                                                         "U8",  "BOOL", "F16", "BF16"};

size_t bl_dtype_size(bl_dtype dt) { return (unsigned)dt < BL_DTYPE_COUNT ? dtype_sizes[dt] : 0; }
const char *bl_dtype_name(bl_dtype dt) { return (unsigned)dt < BL_DTYPE_COUNT ? dtype_names[dt] : "?"; }
bool bl_dtype_is_float(bl_dtype dt) { return dt == BL_F32 || dt == BL_F64; }

void bl__contiguous_strides(int ndim, const int64_t *shape, int64_t *stride) {
    int64_t s = 1;
    for (int d = ndim - 1; d >= 0; d--) {
        stride[d] = s;
        s *= shape[d];
    }
}

static int64_t shape_numel(int ndim, const int64_t *shape) {
    int64_t n = 1;
    for (int d = 0; d < ndim; d++) n *= shape[d];
    return n;
}

static bool valid_shape(int ndim, const int64_t *shape) {
    if (ndim < 0 || ndim > BL_MAX_DIMS) return false;
    for (int d = 0; d < ndim; d++)
        if (shape[d] < 0) return false;
    return true;
}

bl_tensor *bl__wrap(bl_dtype dt, int ndim, const int64_t *shape, void *data) {
    bl_tensor *t = bl_arena_alloc(sizeof *t);
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->data = data;
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    bl__contiguous_strides(ndim, shape, t->stride);
    return t;
}

bl_tensor *bl__view_of(const bl_tensor *t) {
    bl_tensor *v = bl_arena_alloc(sizeof *v);
    if (!v) return NULL;
    *v = *t;
    v->requires_grad = false;
    v->owns_data = false;
    v->grad = NULL;
    v->grad_fn = NULL;
    return v;
}

bl_tensor *bl_empty(bl_dtype dt, int ndim, const int64_t *shape) {
    BL_CHECK((unsigned)dt < BL_DTYPE_COUNT, "unknown dtype %d", (int)dt);
    BL_CHECK(valid_shape(ndim, shape), "invalid shape (ndim %d, at most %d dims, no negative sizes)",
             ndim, BL_MAX_DIMS);
    size_t bytes = (size_t)shape_numel(ndim, shape) * bl_dtype_size(dt);
    void *data = bl_arena_alloc(bytes);
    if (!data) return NULL;
    return bl__wrap(dt, ndim, shape, data);
}

bl_tensor *bl_full(bl_dtype dt, int ndim, const int64_t *shape, double value) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    if (t && bl_fill_(t, value) != BL_OK) return NULL;
    return t;
}

bl_tensor *bl_zeros(bl_dtype dt, int ndim, const int64_t *shape) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    if (t) memset(t->data, 0, bl_nbytes(t));
    return t;
}

bl_tensor *bl_ones(bl_dtype dt, int ndim, const int64_t *shape) { return bl_full(dt, ndim, shape, 1.0); }
bl_tensor *bl_scalar(bl_dtype dt, double value) { return bl_full(dt, 0, NULL, value); }
bl_tensor *bl_empty_like(const bl_tensor *t) { return t ? bl_empty(t->dtype, t->ndim, t->shape) : NULL; }
bl_tensor *bl_zeros_like(const bl_tensor *t) { return t ? bl_zeros(t->dtype, t->ndim, t->shape) : NULL; }

bl_tensor *bl_arange(bl_dtype dt, int64_t n) {
    bl_tensor *t = bl_empty(dt, 1, &n);
    if (!t) return NULL;
    for (int64_t i = 0; i < n; i++) bl_set_flat(t, i, (double)i);
    return t;
}

bl_tensor *bl_from_data(bl_dtype dt, int ndim, const int64_t *shape, const void *src) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    if (t) memcpy(t->data, src, bl_nbytes(t));
    return t;
}

bl_tensor *bl_tensor_new_persistent(bl_dtype dt, int ndim, const int64_t *shape) {
    BL_CHECK((unsigned)dt < BL_DTYPE_COUNT, "unknown dtype %d", (int)dt);
    BL_CHECK(valid_shape(ndim, shape), "invalid shape (ndim %d)", ndim);
    bl_tensor *t = calloc(1, sizeof *t);
    size_t bytes = (size_t)shape_numel(ndim, shape) * bl_dtype_size(dt);
    void *data = calloc(1, bytes ? bytes : 1);
    if (!t || !data) {
        free(t);
        free(data);
        bl_set_error("out of memory allocating a persistent tensor of %zu bytes", bytes);
        return NULL;
    }
    t->data = data;
    t->dtype = dt;
    t->ndim = ndim;
    if (ndim) memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    bl__contiguous_strides(ndim, shape, t->stride);
    t->persistent = true;
    t->owns_data = true;
    return t;
}

void bl_tensor_free(bl_tensor *t) {
    if (!t || !t->persistent) return;
    if (t->grad) bl_tensor_free(t->grad);
    if (t->owns_data) free(t->data);
    free(t);
}

int64_t bl_numel(const bl_tensor *t) { return shape_numel(t->ndim, t->shape); }
size_t bl_nbytes(const bl_tensor *t) { return (size_t)bl_numel(t) * bl_dtype_size(t->dtype); }

bool bl_is_contiguous(const bl_tensor *t) {
    int64_t s = 1;
    for (int d = t->ndim - 1; d >= 0; d--) {
        if (t->shape[d] != 1 && t->stride[d] != s) return false;
        s *= t->shape[d];
    }
    return true;
}

bool bl_same_shape(const bl_tensor *a, const bl_tensor *b) {
    if (a->ndim != b->ndim) return false;
    for (int d = 0; d < a->ndim; d++)
        if (a->shape[d] != b->shape[d]) return false;
    return true;
}

int bl_wrap_dim(const bl_tensor *t, int dim) {
    int n = t->ndim ? t->ndim : 1;
    int d = dim < 0 ? dim + n : dim;
    if (d < 0 || d >= n) {
        bl_set_error("dim %d out of range for a tensor with %d dims", dim, t->ndim);
        return -1;
    }
    return d;
}

const char *bl_shape_str(const bl_tensor *t, char *buf, size_t len) {
    size_t n = (size_t)snprintf(buf, len, "[");
    for (int d = 0; d < t->ndim && n < len; d++)
        n += (size_t)snprintf(buf + n, len - n, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    if (n < len) snprintf(buf + n, len - n, "]");
    return buf;
}

const char *bl_shape_text(const bl_tensor *t) {
    static _Thread_local char bufs[4][96];
    static _Thread_local int next;
    char *b = bufs[next++ & 3];
    return t ? bl_shape_str(t, b, 96) : "(null)";
}

/* ---- f16 / bf16 conversion (storage types) ---- */

static float half_to_float(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, bits;
    if (exp == 0) {
        if (man == 0) {
            bits = sign;
        } else { /* subnormal: renormalize */
            exp = 127 - 15 + 1;
            while (!(man & 0x400)) {
                man <<= 1;
                exp--;
            }
            bits = sign | (exp << 23) | ((man & 0x3ff) << 13);
        }
    } else if (exp == 31) {
        bits = sign | 0x7f800000u | (man << 13);
    } else {
        bits = sign | ((exp + 127 - 15) << 23) | (man << 13);
    }
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t float_to_half(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    uint32_t sign = (x >> 16) & 0x8000;
    int32_t exp = (int32_t)((x >> 23) & 0xff) - 127 + 15;
    uint32_t man = x & 0x7fffff;
    if (((x >> 23) & 0xff) == 0xff) return (uint16_t)(sign | 0x7c00 | (man ? 0x200 : 0));
    if (exp >= 31) return (uint16_t)(sign | 0x7c00);
    if (exp <= 0) {
        if (exp < -10) return (uint16_t)sign;
        man |= 0x800000;
        uint32_t shift = (uint32_t)(14 - exp);
        uint32_t half = man >> shift, rem = man & ((1u << shift) - 1), mid = 1u << (shift - 1);
        if (rem > mid || (rem == mid && (half & 1))) half++;
        return (uint16_t)(sign | half);
    }
    uint32_t half = sign | ((uint32_t)exp << 10) | (man >> 13);
    uint32_t rem = man & 0x1fff;
    if (rem > 0x1000 || (rem == 0x1000 && (half & 1))) half++; /* round to nearest even */
    return (uint16_t)half;
}

static float bf16_to_float(uint16_t h) {
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}

static uint16_t float_to_bf16(float f) {
    uint32_t x;
    memcpy(&x, &f, 4);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 0x40);
    x += 0x7fff + ((x >> 16) & 1); /* round to nearest even */
    return (uint16_t)(x >> 16);
}

static double load(const char *p, bl_dtype dt) {
    switch (dt) {
    case BL_F32: return *(const float *)p;
    case BL_F64: return *(const double *)p;
    case BL_I32: return *(const int32_t *)p;
    case BL_I64: return (double)*(const int64_t *)p;
    case BL_U8: return *(const uint8_t *)p;
    case BL_BOOL: return *(const uint8_t *)p != 0;
    case BL_F16: return half_to_float(*(const uint16_t *)p);
    case BL_BF16: return bf16_to_float(*(const uint16_t *)p);
    default: return 0;
    }
}

static void store(char *p, bl_dtype dt, double v) {
    switch (dt) {
    case BL_F32: *(float *)p = (float)v; break;
    case BL_F64: *(double *)p = v; break;
    case BL_I32: *(int32_t *)p = (int32_t)v; break;
    case BL_I64: *(int64_t *)p = (int64_t)v; break;
    case BL_U8: *(uint8_t *)p = (uint8_t)v; break;
    case BL_BOOL: *(uint8_t *)p = v != 0; break;
    case BL_F16: *(uint16_t *)p = float_to_half((float)v); break;
    case BL_BF16: *(uint16_t *)p = float_to_bf16((float)v); break;
    default: break;
    }
}

static int64_t flat_offset(const bl_tensor *t, int64_t i) {
    int64_t off = 0;
    for (int d = t->ndim - 1; d >= 0; d--) {
        off += (i % t->shape[d]) * t->stride[d];
        i /= t->shape[d];
    }
    return off;
}

double bl_get_flat(const bl_tensor *t, int64_t i) {
    return load((const char *)t->data + flat_offset(t, i) * (int64_t)bl_dtype_size(t->dtype), t->dtype);
}

void bl_set_flat(bl_tensor *t, int64_t i, double v) {
    store((char *)t->data + flat_offset(t, i) * (int64_t)bl_dtype_size(t->dtype), t->dtype, v);
}

double bl_item(const bl_tensor *t) {
    if (!t) return NAN;
    if (bl_numel(t) != 1) {
        bl_set_error("bl_item: tensor of shape %s has %lld elements, expected 1", bl__shape(t),
                     (long long)bl_numel(t));
        return NAN;
    }
    return bl_get_flat(t, 0);
}

/* ---- the strided iterator ---- */

void bl__for_each_run(int ndim, const int64_t *shape, int n_ops, char *const *base,
                      const int64_t (*strides)[BL_MAX_DIMS], const size_t *elem_size, bl__run_fn fn,
                      void *user) {
    for (int d = 0; d < ndim; d++)
        if (shape[d] == 0) return;
    char *ptr[4];
    int64_t inner[4];
    int64_t n_inner = ndim ? shape[ndim - 1] : 1;
    for (int k = 0; k < n_ops; k++) inner[k] = ndim ? strides[k][ndim - 1] * (int64_t)elem_size[k] : 0;
    int64_t idx[BL_MAX_DIMS] = {0};
    for (;;) {
        for (int k = 0; k < n_ops; k++) {
            int64_t off = 0;
            for (int d = 0; d < ndim - 1; d++) off += idx[d] * strides[k][d];
            ptr[k] = base[k] + off * (int64_t)elem_size[k];
        }
        fn(n_inner, ptr, inner, user);
        int d = ndim - 2;
        for (; d >= 0; d--) {
            if (++idx[d] < shape[d]) break;
            idx[d] = 0;
        }
        if (d < 0) return;
    }
}

/* ---- copy and fill ---- */

typedef struct { bl_dtype dst, src; } copy_types;

static void copy_run(int64_t n, char *const *p, const int64_t *st, void *user) {
    const copy_types *ty = user;
    char *d = p[0];
    const char *s = p[1];
    if (ty->dst == ty->src && ty->dst == BL_F32) {
        for (int64_t i = 0; i < n; i++) *(float *)(d + i * st[0]) = *(const float *)(s + i * st[1]);
        return;
    }
    for (int64_t i = 0; i < n; i++) store(d + i * st[0], ty->dst, load(s + i * st[1], ty->src));
}

int bl_copy_(bl_tensor *dst, const bl_tensor *src) {
    BL_CHECK_RC(dst && src, "bl_copy_: NULL tensor");
    BL_CHECK_RC(src->ndim <= dst->ndim, "bl_copy_: cannot copy %s into %s", bl__shape(src), bl__shape(dst));
    int64_t sstride[BL_MAX_DIMS] = {0};
    int off = dst->ndim - src->ndim;
    for (int d = 0; d < src->ndim; d++) {
        BL_CHECK_RC(src->shape[d] == dst->shape[off + d] || src->shape[d] == 1,
                    "bl_copy_: cannot broadcast %s to %s", bl__shape(src), bl__shape(dst));
        sstride[off + d] = src->shape[d] == 1 ? 0 : src->stride[d];
    }
    if (dst->dtype == src->dtype && bl_is_contiguous(dst) && bl_is_contiguous(src) &&
        bl_same_shape(dst, src)) {
        memcpy(dst->data, src->data, bl_nbytes(dst));
        return BL_OK;
    }
    int64_t strides[2][BL_MAX_DIMS];
    memcpy(strides[0], dst->stride, sizeof strides[0]);
    memcpy(strides[1], sstride, sizeof strides[1]);
    char *base[2] = {dst->data, src->data};
    size_t es[2] = {bl_dtype_size(dst->dtype), bl_dtype_size(src->dtype)};
    copy_types ty = {dst->dtype, src->dtype};
    bl__for_each_run(dst->ndim, dst->shape, 2, base, (const int64_t(*)[BL_MAX_DIMS])strides, es,
                     copy_run, &ty);
    return BL_OK;
}

typedef struct { bl_dtype dt; double v; } fill_args;

static void fill_run(int64_t n, char *const *p, const int64_t *st, void *user) {
    const fill_args *a = user;
    for (int64_t i = 0; i < n; i++) store(p[0] + i * st[0], a->dt, a->v);
}

int bl_fill_(bl_tensor *t, double value) {
    BL_CHECK_RC(t, "bl_fill_: NULL tensor");
    if (value == 0.0 && bl_is_contiguous(t)) {
        memset(t->data, 0, bl_nbytes(t));
        return BL_OK;
    }
    if (t->dtype == BL_F32 && bl_is_contiguous(t)) {
        float *p = t->data, v = (float)value;
        for (int64_t i = 0, n = bl_numel(t); i < n; i++) p[i] = v;
        return BL_OK;
    }
    char *base[1] = {t->data};
    size_t es[1] = {bl_dtype_size(t->dtype)};
    fill_args a = {t->dtype, value};
    bl__for_each_run(t->ndim, t->shape, 1, base, (const int64_t(*)[BL_MAX_DIMS])t->stride, es, fill_run, &a);
    return BL_OK;
}

/* ---- broadcasting ---- */

int bl__broadcast_shape(const char *op, const bl_tensor *a, const bl_tensor *b, int *ndim, int64_t *shape) {
    int n = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < n; i++) {
        int da = a->ndim - n + i, db = b->ndim - n + i;
        int64_t sa = da >= 0 ? a->shape[da] : 1, sb = db >= 0 ? b->shape[db] : 1;
        BL_CHECK_RC(sa == sb || sa == 1 || sb == 1, "%s: shapes %s and %s do not broadcast", op,
                    bl__shape(a), bl__shape(b));
        shape[i] = sa == 1 ? sb : sa;
    }
    *ndim = n;
    return BL_OK;
}

void bl__broadcast_strides(const bl_tensor *t, int ndim, const int64_t *shape, int64_t *stride) {
    for (int i = 0; i < ndim; i++) {
        int d = t->ndim - ndim + i;
        stride[i] = (d < 0 || t->shape[d] == 1) && shape[i] != 1 ? 0 : (d < 0 ? 0 : t->stride[d]);
    }
}
