/* Scaled dot-product attention: the fused forward (with and without keeping probabilities for
 * backward) against a direct double-precision computation, with no mask, boolean masks (full and
 * broadcast), additive masks, causal masking, an explicit scale, broadcast batch dims, strided q/k/v
 * (the per-head views of a packed qkv projection, a transposed k) and query blocks that do not
 * fit one scores buffer; the fused first-order backward against the backward built from ops;
 * first- and second-order gradient checks in F64 with and without masks; outputs and gradients
 * laid out like the inputs; the packed multi-head form against timm's composition of views and
 * the public op, forward and gradients of both orders; error reporting. */
#include "test.h"

#include "ops/dense.h"

/* Element of t at a multi-index of a (possibly bigger) broadcast shape aligned at the right. */
static double at_broadcast(const bl_tensor *t, int ndim, const int64_t *idx) {
    int64_t offset = 0;
    for (int d = 0; d < t->ndim; d++) {
        int64_t i = idx[ndim - t->ndim + d];
        if (t->shape[d] != 1) offset += i * t->stride[d];
    }
    const char *p = (const char *)t->data + offset * (int64_t)bl_dtype_size(t->dtype);
    switch (t->dtype) {
    case BL_F32: return *(const float *)p;
    case BL_F64: return *(const double *)p;
    default: return *(const uint8_t *)p;
    }
}

/* softmax(q k^T * scale + mask) v written out with loops, for q (B.., Tq, D) etc. sharing the
 * batch shape of `out`; returns the largest relative difference to out. */
static double attention_error(const bl_tensor *q, const bl_tensor *k, const bl_tensor *v, const bl_tensor *mask,
                              bool causal, double scale, const bl_tensor *out) {
    if (!out) return INFINITY;
    int nd = out->ndim;
    int64_t Tq = q->shape[q->ndim - 2], D = q->shape[q->ndim - 1], Tk = k->shape[k->ndim - 2], Dv = v->shape[v->ndim - 1];
    if (scale <= 0) scale = 1 / sqrt((double)D);
    int64_t batch = bl_numel(out) / (Tq * Dv);
    double worst = 0, *p = malloc(sizeof(double) * (size_t)(Tk ? Tk : 1));
    int64_t idx[BL_MAX_DIMS] = {0};
    for (int64_t b = 0; b < batch; b++) {
        int64_t rest = b;
        for (int d = nd - 3; d >= 0; d--) {
            idx[d] = rest % out->shape[d];
            rest /= out->shape[d];
        }
        for (int64_t i = 0; i < Tq; i++) {
            double max = -INFINITY, sum = 0;
            for (int64_t j = 0; j < Tk; j++) {
                double s = 0;
                for (int64_t c = 0; c < D; c++) {
                    idx[nd - 2] = i; idx[nd - 1] = c;
                    double qv = at_broadcast(q, nd, idx);
                    idx[nd - 2] = j;
                    s += qv * at_broadcast(k, nd, idx);
                }
                s *= scale;
                if (mask) {
                    idx[nd - 2] = i; idx[nd - 1] = j;
                    double m = at_broadcast(mask, nd, idx);
                    if (mask->dtype == BL_BOOL) s = m ? s : -INFINITY;
                    else s += m;
                }
                if (causal && j > i) s = -INFINITY;
                p[j] = s;
                max = fmax(max, s);
            }
            for (int64_t j = 0; j < Tk; j++) sum += (p[j] = exp(p[j] - max));
            for (int64_t c = 0; c < Dv; c++) {
                double o = 0;
                for (int64_t j = 0; j < Tk; j++) {
                    idx[nd - 2] = j; idx[nd - 1] = c;
                    o += p[j] / sum * at_broadcast(v, nd, idx);
                }
                double got = bl_get_flat(out, (b * Tq + i) * Dv + c), d = fabs(got - o) / (1 + fabs(o));
                if (!(d <= worst)) worst = d;
            }
        }
    }
    free(p);
    return worst;
}

/* A BOOL mask with about a third of the entries dropped but every query row keeping a key. */
static bl_tensor *random_keep_mask(int ndim, const int64_t *shape, uint64_t seed) {
    bl_tensor *m = bl_empty(BL_BOOL, ndim, shape);
    bl_rng r = bl_rng_make(seed, 9);
    int64_t Tk = shape[ndim - 1];
    for (int64_t i = 0; i < bl_numel(m); i++) bl_set_flat(m, i, i % Tk == 0 || bl_rng_uniform(&r) > 0.35);
    return m;
}

typedef struct {
    const char *name;
    int mask_kind;      /* 0 none, 1 boolean (Tq, Tk), 2 boolean broadcast (B, 1, 1, Tk), 3 additive (Tq, Tk) */
    bool causal;
    double scale;
} attention_case;

static const attention_case cases[] = {
    {"plain", 0, false, 0}, {"bool mask", 1, false, 0}, {"broadcast bool mask", 2, false, 0.3},
    {"additive mask", 3, false, 0}, {"causal", 0, true, 0}, {"causal + bool mask", 1, true, 1.5},
};
#define N_CASES ((int)(sizeof cases / sizeof cases[0]))

static bl_tensor *make_mask(const attention_case *c, bl_dtype dt, int64_t B, int64_t Tq, int64_t Tk, uint64_t seed) {
    switch (c->mask_kind) {
    case 1: return random_keep_mask(BL_SHAPE(Tq, Tk), seed);
    case 2: return random_keep_mask(BL_SHAPE(B, 1, 1, Tk), seed);
    case 3: return test_randn(dt, BL_SHAPE(Tq, Tk), seed);
    default: return NULL;
    }
}

/* Without gradients (scores in a per-thread buffer) and with (probabilities kept for backward),
 * against the loops. */
static void test_values_both_paths(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    int64_t B = 2, H = 3, Tq = 5, Tk = 6, D = 4, Dv = 7;
    for (int di = 0; di < 2; di++)
        for (int c = 0; c < N_CASES; c++) {
            bl_dtype dt = dts[di];
            double tol = dt == BL_F32 ? 2e-5 : 1e-12;
            bl_tensor *q = test_randn(dt, BL_SHAPE(B, H, Tq, D), 1 + c), *k = test_randn(dt, BL_SHAPE(B, H, Tk, D), 2 + c);
            bl_tensor *v = test_randn(dt, BL_SHAPE(B, H, Tk, Dv), 3 + c);
            bl_tensor *mask = make_mask(&cases[c], dt, B, Tq, Tk, 4 + c);
            bl_tensor *fused = bl_scaled_dot_product_attention(q, k, v, mask, cases[c].causal, cases[c].scale);
            CHECK(fused && fused->ndim == 4 && fused->shape[2] == Tq && fused->shape[3] == Dv, "%s shape", cases[c].name);
            double e = attention_error(q, k, v, mask, cases[c].causal, cases[c].scale, fused);
            CHECK(e < tol, "inference %s %s: error %g", cases[c].name, bl_dtype_name(dt), e);
            CHECK(fused && !fused->requires_grad && !fused->grad_fn, "inference records nothing");

            q->requires_grad = true;
            bl_tensor *training = bl_scaled_dot_product_attention(q, k, v, mask, cases[c].causal, cases[c].scale);
            CHECK(training && training->requires_grad, "%s: recorded for autograd", cases[c].name);
            e = attention_error(q, k, v, mask, cases[c].causal, cases[c].scale, training);
            CHECK(e < tol, "training %s %s: error %g", cases[c].name, bl_dtype_name(dt), e);
        }
}

/* q, k, v as the transformer makes them: per-head views into one packed (B, T, 3, H, hd) tensor;
 * also a transposed k, broadcast batch dims, and an F32 run large enough to use several threads. */
static void test_strided_and_broadcast_inputs(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = dts[di];
        double tol = dt == BL_F32 ? 2e-5 : 1e-12;
        int64_t B = 2, T = 9, H = 2, hd = 5;
        bl_tensor *qkv = test_randn(dt, BL_SHAPE(B, T, 3, H, hd), 11);
        bl_tensor *heads = bl_permute(qkv, (const int[]){2, 0, 3, 1, 4});
        bl_tensor *q = bl_select(heads, 0, 0), *k = bl_select(heads, 0, 1), *v = bl_select(heads, 0, 2);
        bl_tensor *out = bl_scaled_dot_product_attention(q, k, v, NULL, true, 0);
        CHECK(attention_error(q, k, v, NULL, true, 0, out) < tol, "packed qkv views %s", bl_dtype_name(dt));

        bl_tensor *kt = bl_transpose(test_randn(dt, BL_SHAPE(B, H, hd, T), 12), -2, -1); /* column-major k */
        out = bl_scaled_dot_product_attention(q, kt, v, NULL, false, 0);
        CHECK(attention_error(q, kt, v, NULL, false, 0, out) < tol, "transposed k %s", bl_dtype_name(dt));

        /* One k, v shared by every batch entry and head; q batch (2, 3). */
        bl_tensor *qb = test_randn(dt, BL_SHAPE(2, 3, 4, 5), 13), *ks = test_randn(dt, BL_SHAPE(6, 5), 14);
        bl_tensor *vs = test_randn(dt, BL_SHAPE(1, 6, 3), 15), *m = random_keep_mask(BL_SHAPE(3, 1, 6), 16);
        out = bl_scaled_dot_product_attention(qb, ks, vs, m, false, 0);
        CHECK(out && out->ndim == 4 && out->shape[0] == 2 && out->shape[1] == 3, "broadcast output shape");
        CHECK(attention_error(qb, ks, vs, m, false, 0, out) < tol, "broadcast batch %s", bl_dtype_name(dt));
    }
    /* More query rows than one scores block holds, and keys longer than a block on their own. */
    bl_tensor *q = test_randn(BL_F32, BL_SHAPE(2, 300, 4), 21), *k = test_randn(BL_F32, BL_SHAPE(2, 65, 4), 22);
    bl_tensor *v = test_randn(BL_F32, BL_SHAPE(2, 65, 3), 23);
    CHECK(attention_error(q, k, v, NULL, true, 0, bl_scaled_dot_product_attention(q, k, v, NULL, true, 0)) < 2e-5,
          "query blocks");
    bl_tensor *q2 = test_randn(BL_F32, BL_SHAPE(3, 2), 24), *k2 = test_randn(BL_F32, BL_SHAPE(17000, 2), 25);
    bl_tensor *v2 = test_randn(BL_F32, BL_SHAPE(17000, 2), 26);
    CHECK(attention_error(q2, k2, v2, NULL, false, 0, bl_scaled_dot_product_attention(q2, k2, v2, NULL, false, 0)) < 2e-5,
          "long keys");
    /* ViT-sized: (batch, heads) = (8, 3), T = 65, head dim 64. */
    bl_tensor *qv = test_randn(BL_F32, BL_SHAPE(8, 3, 65, 64), 27), *kv = test_randn(BL_F32, BL_SHAPE(8, 3, 65, 64), 28);
    bl_tensor *vv = test_randn(BL_F32, BL_SHAPE(8, 3, 65, 64), 29);
    CHECK(attention_error(qv, kv, vv, NULL, false, 0, bl_scaled_dot_product_attention(qv, kv, vv, NULL, false, 0)) < 2e-5,
          "ViT-sized");
}

/* ---- gradients ---------------------------------------------------------------------------------- */

typedef struct {
    const attention_case *c;
    bl_tensor *mask; /* boolean masks; an additive mask is input 3 instead */
} fn_args;

static bl_tensor *attention_fn(bl_tensor *const *in, void *user) {
    const fn_args *a = user;
    bl_tensor *mask = a->c->mask_kind == 3 ? in[3] : a->mask;
    return bl_scaled_dot_product_attention(in[0], in[1], in[2], mask, a->c->causal, a->c->scale);
}

static void test_gradcheck(void) {
    int64_t B = 2, Tq = 3, Tk = 4, D = 2, Dv = 3;
    for (int c = 0; c < N_CASES; c++) {
        bl_tensor *in[4] = {test_randn(BL_F64, BL_SHAPE(B, 1, Tq, D), 31 + c), test_randn(BL_F64, BL_SHAPE(B, 1, Tk, D), 32 + c),
                            test_randn(BL_F64, BL_SHAPE(B, 1, Tk, Dv), 33 + c), NULL};
        fn_args a = {&cases[c], make_mask(&cases[c], BL_F64, B, Tq, Tk, 34 + c)};
        int n = 3;
        if (cases[c].mask_kind == 3) {
            in[3] = a.mask;
            n = 4;
        }
        for (int i = 0; i < n; i++) in[i]->requires_grad = true;
        CHECK(bl_gradcheck(attention_fn, &a, n, in, 1e-6, 1e-6, true) == BL_OK, "%s", cases[c].name);
    }
}

/* k and v shared by the whole batch: the first-order backward takes the ops path too. */
static bl_tensor *shared_kv_fn(bl_tensor *const *in, void *user) {
    return bl_scaled_dot_product_attention(in[0], in[1], in[2], NULL, true, 0);
}

static void test_gradcheck_broadcast(void) {
    bl_tensor *in[3] = {test_randn(BL_F64, BL_SHAPE(2, 3, 2), 41), test_randn(BL_F64, BL_SHAPE(4, 2), 42),
                        test_randn(BL_F64, BL_SHAPE(1, 4, 3), 43)};
    for (int i = 0; i < 3; i++) in[i]->requires_grad = true;
    CHECK(bl_gradcheck(shared_kv_fn, NULL, 3, in, 1e-6, 1e-6, true) == BL_OK, "shared k, v");
}

/* The fused first-order backward (create_graph off) against the backward built from ops
 * (create_graph on), for every mask kind, in F32 and F64, on per-head views of a packed qkv. */
static void test_fused_backward_matches_ops(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    int64_t B = 3, T = 7, H = 2, hd = 5;
    for (int di = 0; di < 2; di++)
        for (int c = 0; c < N_CASES; c++) {
            bl_dtype dt = dts[di];
            bl_tensor *qkv = test_randn(dt, BL_SHAPE(B, T, 3, H, hd), 50 + c);
            qkv->requires_grad = true;
            bl_tensor *heads = bl_permute(qkv, (const int[]){2, 0, 3, 1, 4});
            bl_tensor *q = bl_select(heads, 0, 0), *k = bl_select(heads, 0, 1), *v = bl_select(heads, 0, 2);
            bl_tensor *mask = make_mask(&cases[c], dt, B, T, T, 60 + c);
            bl_tensor *out = bl_scaled_dot_product_attention(q, k, v, mask, cases[c].causal, cases[c].scale);
            bl_tensor *g = test_randn(dt, out->ndim, out->shape, 70 + c);
            bl_tensor *ins[3] = {q, k, v}, *fused[3], *ops[3];
            CHECK(bl_autograd_grad(1, &out, &g, 3, ins, fused, false) == BL_OK, "fused");
            CHECK(bl_autograd_grad(1, &out, &g, 3, ins, ops, true) == BL_OK, "ops");
            double tol = dt == BL_F32 ? 1e-5 : 1e-12;
            for (int i = 0; i < 3; i++)
                CHECK(test_max_rel_diff(fused[i], ops[i]) < tol, "%s %s input %d: %g", cases[c].name, bl_dtype_name(dt), i,
                      test_max_rel_diff(fused[i], ops[i]));
            CHECK(ops[0] && ops[0]->requires_grad, "create_graph gradients are differentiable");
        }
}

/* Per-head views of a packed (B, T, 3, H, hd) projection: the output and the gradients come back
 * in the inputs' memory order, so transposing heads and tokens back gives contiguous tensors. */
static void test_results_keep_input_layout(void) {
    int64_t B = 2, T = 5, H = 3, hd = 4;
    bl_tensor *qkv = test_randn(BL_F32, BL_SHAPE(B, T, 3, H, hd), 81);
    qkv->requires_grad = true;
    bl_tensor *heads = bl_permute(qkv, (const int[]){2, 0, 3, 1, 4});
    bl_tensor *q = bl_select(heads, 0, 0), *k = bl_select(heads, 0, 1), *v = bl_select(heads, 0, 2);
    bl_tensor *out = bl_scaled_dot_product_attention(q, k, v, NULL, false, 0);
    CHECK(out && !bl_is_contiguous(out) && bl_is_contiguous(bl_transpose(out, 1, 2)), "out laid out (B, T, H, hd)");
    CHECK(attention_error(q, k, v, NULL, false, 0, out) < 2e-5, "values in that layout");
    bl_tensor *g = test_randn(BL_F32, out->ndim, out->shape, 82), *ins[3] = {q, k, v}, *grads[3];
    CHECK(bl_autograd_grad(1, &out, &g, 3, ins, grads, false) == BL_OK, "backward");
    for (int i = 0; i < 3; i++)
        CHECK(grads[i] && bl_is_contiguous(bl_transpose(grads[i], 1, 2)), "gradient %d laid out like its input", i);
    /* Contiguous inputs keep giving contiguous results. */
    bl_tensor *qc = test_randn(BL_F32, BL_SHAPE(B, H, T, hd), 83);
    CHECK(bl_is_contiguous(bl_scaled_dot_product_attention(qc, qc, qc, NULL, false, 0)), "contiguous stays");
}

/* timm's split of a packed projection followed by the public op, for the packed op to match. */
typedef struct {
    int64_t heads;
    bool causal;
    int mask_kind; /* 0 none, 1 boolean (B, 1, T, T), 2 additive (T, T) (input 1 when differentiated) */
    bl_tensor *mask;
} packed_args;

static bl_tensor *attention_by_views(bl_tensor *qkv, bl_tensor *mask, const packed_args *a) {
    int64_t B = qkv->shape[0], T = qkv->shape[1], D = qkv->shape[2] / 3;
    bl_tensor *heads = bl_permute(bl_reshape(qkv, BL_SHAPE(B, T, 3, a->heads, D / a->heads)), (const int[]){2, 0, 3, 1, 4});
    bl_tensor *o = bl_scaled_dot_product_attention(bl_select(heads, 0, 0), bl_select(heads, 0, 1), bl_select(heads, 0, 2),
                                                   mask, a->causal, 0);
    return bl_reshape(bl_transpose(o, 1, 2), BL_SHAPE(B, T, D));
}

static bl_tensor *packed_fn(bl_tensor *const *in, void *user) {
    const packed_args *a = user;
    return bl__attention_packed_qkv(in[0], a->heads, a->mask_kind == 2 ? in[1] : a->mask, a->causal, 0);
}

static bl_tensor *packed_mask(int kind, bl_dtype dt, int64_t B, int64_t T, uint64_t seed) {
    if (kind == 1) return random_keep_mask(BL_SHAPE(B, 1, T, T), seed);
    if (kind == 2) return test_randn(dt, BL_SHAPE(T, T), seed);
    return NULL;
}

static void test_packed_matches_views(void) {
    bl_dtype dts[2] = {BL_F32, BL_F64};
    int64_t B = 3, T = 7, H = 2, hd = 5;
    for (int di = 0; di < 2; di++)
        for (int kind = 0; kind < 3; kind++) {
            bl_dtype dt = dts[di];
            double tol = dt == BL_F32 ? 2e-5 : 1e-12;
            packed_args a = {H, kind == 1, kind, packed_mask(kind, dt, B, T, 90 + kind)};
            bl_tensor *qkv = test_randn(dt, BL_SHAPE(B, T, 3 * H * hd), 91 + kind);
            qkv->requires_grad = true;
            bl_tensor *packed = bl__attention_packed_qkv(qkv, H, a.mask, a.causal, 0);
            bl_tensor *views = attention_by_views(qkv, a.mask, &a);
            CHECK(packed && bl_is_contiguous(packed) && bl_same_shape(packed, views), "packed output shape");
            CHECK(test_max_rel_diff(packed, views) < tol, "%s mask %d: forward differs by %g", bl_dtype_name(dt), kind,
                  test_max_rel_diff(packed, views));
            bl_tensor *g = test_randn(dt, BL_SHAPE(B, T, H * hd), 92 + kind), *got[2], *want;
            CHECK(bl_autograd_grad(1, &packed, &g, 1, &qkv, &got[0], false) == BL_OK, "fused backward");
            CHECK(bl_autograd_grad(1, &packed, &g, 1, &qkv, &got[1], true) == BL_OK, "backward from ops");
            CHECK(bl_autograd_grad(1, &views, &g, 1, &qkv, &want, false) == BL_OK, "backward of the views");
            for (int i = 0; i < 2; i++)
                CHECK(test_max_rel_diff(got[i], want) < tol, "%s mask %d, %s backward: gradient differs by %g",
                      bl_dtype_name(dt), kind, i ? "ops" : "fused", test_max_rel_diff(got[i], want));
            CHECK(got[1] && got[1]->requires_grad, "create_graph gradient is differentiable");
        }
    /* The packed op is an op of its own: both orders of gradients, also into an additive mask. */
    for (int kind = 0; kind < 3; kind++) {
        packed_args a = {2, kind == 1, kind, packed_mask(kind, BL_F64, 2, 3, 95 + kind)};
        bl_tensor *in[2] = {test_randn(BL_F64, BL_SHAPE(2, 3, 3 * 2 * 2), 96 + kind), a.mask};
        in[0]->requires_grad = true;
        if (kind == 2) in[1]->requires_grad = true;
        CHECK(bl_gradcheck(packed_fn, &a, kind == 2 ? 2 : 1, in, 1e-6, 1e-6, true) == BL_OK, "packed gradcheck, mask %d",
              kind);
    }
    /* A qkv whose features are not adjacent in memory is read through a copy. */
    bl_tensor *wide = bl_transpose(test_randn(BL_F32, BL_SHAPE(2, 12, 4), 97), 1, 2); /* (2, 4, 12) */
    packed_args a = {2, false, 0, NULL};
    CHECK(test_max_rel_diff(bl__attention_packed_qkv(wide, 2, NULL, false, 0), attention_by_views(wide, NULL, &a)) < 2e-5,
          "strided qkv");
    bl_clear_error();
    CHECK(!bl__attention_packed_qkv(bl_zeros(BL_F32, BL_SHAPE(2, 3, 10)), 2, NULL, false, 0) &&
              strstr(bl_last_error(), "[2, 3, 10]"),
          "3 D not divisible by heads: %s", bl_last_error());
    bl_clear_error();
}

static void test_errors(void) {
    bl_tensor *q = bl_zeros(BL_F32, BL_SHAPE(2, 3, 4)), *k = bl_zeros(BL_F32, BL_SHAPE(2, 5, 4));
    bl_tensor *v = bl_zeros(BL_F32, BL_SHAPE(2, 5, 6));
    bl_clear_error();
    CHECK(bl_scaled_dot_product_attention(q, bl_zeros(BL_F32, BL_SHAPE(2, 5, 3)), v, NULL, false, 0) == NULL &&
              strstr(bl_last_error(), "attention") && strstr(bl_last_error(), "[2, 5, 3]"),
          "head dim mismatch: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_scaled_dot_product_attention(q, k, bl_zeros(BL_F32, BL_SHAPE(2, 4, 6)), NULL, false, 0) == NULL,
          "key count mismatch");
    bl_clear_error();
    CHECK(bl_scaled_dot_product_attention(q, k, v, bl_zeros(BL_BOOL, BL_SHAPE(3, 4)), false, 0) == NULL &&
              strstr(bl_last_error(), "mask"),
          "mask shape: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_scaled_dot_product_attention(q, k, v, bl_zeros(BL_F64, BL_SHAPE(3, 5)), false, 0) == NULL &&
              strstr(bl_last_error(), "mask"),
          "mask dtype: %s", bl_last_error());
    bl_clear_error();
    CHECK(bl_scaled_dot_product_attention(q, k, bl_zeros(BL_F64, BL_SHAPE(2, 5, 6)), NULL, false, 0) == NULL,
          "dtype mismatch");
    bl_clear_error();
    CHECK(bl_scaled_dot_product_attention(q, bl_zeros(BL_F32, BL_SHAPE(3, 5, 4)), v, NULL, false, 0) == NULL &&
              strstr(bl_last_error(), "broadcast"),
          "batch mismatch: %s", bl_last_error());
    bl_clear_error();
}

TEST_MAIN(TEST(test_values_both_paths), TEST(test_strided_and_broadcast_inputs), TEST(test_gradcheck),
          TEST(test_gradcheck_broadcast), TEST(test_fused_backward_matches_ops), TEST(test_results_keep_input_layout),
          TEST(test_packed_matches_views), TEST(test_errors))
