/* Losses, similarities and dropout: every option of every loss against a naive double-precision
 * computation written here, a few values computed by PyTorch, finite-difference gradient checks of
 * first and second order in F64, and the error messages. */
#include "test.h"

/* ---- helpers ---------------------------------------------------------------------------------- */

static const bl_reduction reductions[3] = {BL_REDUCE_MEAN, BL_REDUCE_SUM, BL_REDUCE_NONE};

static bl_tensor *leaf(bl_tensor *t) {
    if (t) t->requires_grad = true;
    return t;
}

/* dL/dx of `out` (weighted by grad_out when not NULL), through the fused kernels or, with
 * create_graph, through the op-built backward. */
static bl_tensor *gradient(bl_tensor *out, bl_tensor *grad_out, bl_tensor *x, bool create_graph) {
    bl_tensor *g = NULL;
    if (!out || bl_autograd_grad(1, &out, grad_out ? &grad_out : NULL, 1, &x, &g, create_graph) != BL_OK) return NULL;
    return g;
}

/* ---- naive cross-entropy over class indices ------------------------------------------------------
 * loss_i = -(1 - e) w_t logp_it - (e / C) sum_c w_c logp_ic for rows not ignored; MEAN divides by
 * the sum of w_t over those rows. */

typedef struct {
    int64_t N, C, S;         /* x viewed as (N, C, S) in logical order */
    const double *weight;    /* (C) or NULL */
    double smoothing;
    int64_t ignore_index;
    bl_reduction reduction;
} ce_case;

/* Returns the reduced loss (NONE: 0) and fills rows (N * S). With grad, also fills dL/dx for
 * L = the reduced loss, or sum_i upstream_i * loss_i for NONE. */
static double naive_cross_entropy(const ce_case *k, const double *x, const int64_t *target, const double *upstream,
                                  double *rows, double *grad) {
    double total = 0, total_weight = 0, weight_sum = 0;
    for (int64_t c = 0; c < k->C; c++) weight_sum += k->weight ? k->weight[c] : 1.0;
    for (int64_t n = 0; n < k->N; n++)
        for (int64_t s = 0; s < k->S; s++) {
            int64_t i = n * k->S + s, t = target[i];
            rows[i] = 0;
            if (t == k->ignore_index) continue;
            double mx = -INFINITY, z = 0;
            for (int64_t c = 0; c < k->C; c++) mx = fmax(mx, x[(n * k->C + c) * k->S + s]);
            for (int64_t c = 0; c < k->C; c++) z += exp(x[(n * k->C + c) * k->S + s] - mx);
            double wt = k->weight ? k->weight[t] : 1.0;
            for (int64_t c = 0; c < k->C; c++) {
                double logp = x[(n * k->C + c) * k->S + s] - mx - log(z);
                double wc = k->weight ? k->weight[c] : 1.0;
                rows[i] -= k->smoothing / (double)k->C * wc * logp + (c == t ? (1 - k->smoothing) * wt * logp : 0);
            }
            total += rows[i];
            total_weight += wt;
        }
    if (grad) {
        for (int64_t n = 0; n < k->N; n++)
            for (int64_t s = 0; s < k->S; s++) {
                int64_t i = n * k->S + s, t = target[i];
                double up = k->reduction == BL_REDUCE_NONE ? upstream[i]
                            : k->reduction == BL_REDUCE_MEAN ? 1.0 / total_weight
                                                             : 1.0;
                double mx = -INFINITY, z = 0;
                for (int64_t c = 0; c < k->C; c++) mx = fmax(mx, x[(n * k->C + c) * k->S + s]);
                for (int64_t c = 0; c < k->C; c++) z += exp(x[(n * k->C + c) * k->S + s] - mx);
                for (int64_t c = 0; c < k->C; c++) {
                    int64_t at = (n * k->C + c) * k->S + s;
                    if (t == k->ignore_index) {
                        grad[at] = 0;
                        continue;
                    }
                    /* d(-logp_k)/dx_c = p_c - [c == k] */
                    double p = exp(x[at] - mx) / z, wt = k->weight ? k->weight[t] : 1.0;
                    double d = (1 - k->smoothing) * wt * (p - (c == t));
                    for (int64_t j = 0; j < k->C; j++)
                        d += k->smoothing / (double)k->C * (k->weight ? k->weight[j] : 1.0) * (p - (c == j));
                    grad[at] = up * d;
                }
            }
    }
    if (k->reduction == BL_REDUCE_SUM) return total;
    if (k->reduction == BL_REDUCE_MEAN) return total / total_weight;
    return 0;
}

/* Random logits of the given layout (class dim 1, or 0 when 1-D) and targets with some rows set
 * to ignore_index. `transposed` builds (N, C) logits as a non-contiguous view of a (C, N) tensor. */
typedef struct {
    int ndim;
    int64_t shape[4];
    bool transposed;
} ce_layout;

static void ce_layout_dims(const ce_layout *l, int64_t *N, int64_t *C, int64_t *S) {
    *N = l->ndim == 1 ? 1 : l->shape[0];
    *C = l->ndim == 1 ? l->shape[0] : l->shape[1];
    *S = 1;
    for (int d = 2; d < l->ndim; d++) *S *= l->shape[d];
}

static bl_tensor *ce_logits(const ce_layout *l, bl_dtype dt, uint64_t seed) {
    if (l->transposed) {
        bl_tensor *base = test_randn(dt, BL_SHAPE(l->shape[1], l->shape[0]), seed);
        return bl_transpose(base, 0, 1);
    }
    bl_tensor *x = test_randn(dt, l->ndim, l->shape, seed);
    bl_scale_(x, 2.0);
    return x;
}

static bl_tensor *ce_targets(const ce_layout *l, int64_t ignore_index, bool with_ignored, uint64_t seed) {
    int64_t N, C, S;
    ce_layout_dims(l, &N, &C, &S);
    int64_t shape[4] = {0}, nd = 0;
    if (l->ndim > 1) shape[nd++] = N;
    for (int d = 2; d < l->ndim; d++) shape[nd++] = l->shape[d];
    bl_tensor *t = bl_empty(BL_I64, (int)nd, shape);
    bl_rng r = bl_rng_make(seed, 5);
    for (int64_t i = 0; i < N * S; i++) {
        int64_t v = bl_rng_below(&r, C);
        if (with_ignored && i % 3 == 1) v = ignore_index;
        bl_set_flat(t, i, (double)v);
    }
    return t;
}

/* ---- cross-entropy ---------------------------------------------------------------------------- */

/* Reference values from PyTorch 1.13 (float64):
 *   x = [[0.5, -1, 2, 0.25], [1.5, 0, -0.5, 3], [-2, 1, 0.75, -0.25]], t = [1, -100, 3],
 *   w = [0.5, 1, 2, 1.5]
 *   F.cross_entropy(x, t, weight=w, label_smoothing=0.2, reduction=r) for r = mean, sum, none, and
 *   torch.autograd.grad of the mean; F.cross_entropy(x, [1, 0, 3]) (plain mean);
 *   xs = [[[0.1, -0.4], [0.3, 0.9], [-1.2, 0.5]], [[2, 0], [-0.7, 0.2], [0.4, -0.3]]],
 *   ts = [[2, 0], [1, 2]]: F.cross_entropy(xs, ts, label_smoothing=0.1) and
 *   F.cross_entropy(xs, ts, weight=[1, 2, 0.5], reduction='none'). */
static void test_cross_entropy_matches_torch(void) {
    const double x_values[12] = {0.5, -1.0, 2.0, 0.25, 1.5, 0.0, -0.5, 3.0, -2.0, 1.0, 0.75, -0.25};
    const int64_t t_values[3] = {1, -100, 3}, t_plain[3] = {1, 0, 3};
    const double w_values[4] = {0.5, 1.0, 2.0, 1.5};
    const double torch_mean = 2.354574377139449, torch_sum = 5.886435942848623;
    const double torch_none[3] = {3.1064929483706663, 0.0, 2.779942994477956};
    const double torch_grad[12] = {0.05477862661934813, -0.32554593466822956, 0.250317662911443, 0.020449645137438476,
                                   0, 0, 0, 0,
                                   0.00365259326894162, 0.2542196662005903, 0.173562490770599, -0.4314347502401307};
    const double xs_values[12] = {0.1, -0.4, 0.3, 0.9, -1.2, 0.5, 2.0, 0.0, -0.7, 0.2, 0.4, -0.3};
    const int64_t ts_values[4] = {2, 0, 1, 2};
    const double ws_values[3] = {1.0, 2.0, 0.5};
    const double torch_spatial_smooth = 2.0455668559600237;
    const double torch_spatial_none[4] = {1.1069308022045834, 1.9641569137923467, 5.8766191759402515, 0.6929696588342278};
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = di ? BL_F32 : BL_F64;
        double tol = dt == BL_F32 ? 1e-5 : 1e-12;
        bl_tensor *x = leaf(bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(3, 4), x_values), dt));
        bl_tensor *t = bl_from_data(BL_I64, BL_SHAPE(3), t_values);
        bl_ce_args args = bl_ce_args_default();
        args.class_weight = bl_from_data(BL_F64, BL_SHAPE(4), w_values);
        args.label_smoothing = 0.2;
        bl_tensor *mean = bl_cross_entropy(x, t, args);
        CHECK_CLOSE(bl_item(mean), torch_mean, tol);
        args.reduction = BL_REDUCE_SUM;
        CHECK_CLOSE(bl_item(bl_cross_entropy(x, t, args)), torch_sum, tol);
        args.reduction = BL_REDUCE_NONE;
        CHECK(test_max_rel_diff_values(bl_cross_entropy(x, t, args), torch_none, 3) < tol);
        CHECK(test_max_rel_diff_values(gradient(mean, NULL, x, false), torch_grad, 12) < tol);
        CHECK(test_max_rel_diff_values(gradient(mean, NULL, x, true), torch_grad, 12) < tol);
        CHECK_CLOSE(bl_item(bl_cross_entropy(x, bl_from_data(BL_I64, BL_SHAPE(3), t_plain), bl_ce_args_default())),
                    2.377711623216345, tol);

        bl_tensor *xs = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(2, 3, 2), xs_values), dt);
        bl_tensor *ts = bl_from_data(BL_I64, BL_SHAPE(2, 2), ts_values);
        bl_ce_args sargs = bl_ce_args_default();
        sargs.label_smoothing = 0.1;
        CHECK_CLOSE(bl_item(bl_cross_entropy(xs, ts, sargs)), torch_spatial_smooth, tol);
        sargs = bl_ce_args_default();
        sargs.class_weight = bl_from_data(BL_F64, BL_SHAPE(3), ws_values);
        sargs.reduction = BL_REDUCE_NONE;
        bl_tensor *none = bl_cross_entropy(xs, ts, sargs);
        CHECK(none && none->ndim == 2 && none->shape[0] == 2 && none->shape[1] == 2);
        CHECK(test_max_rel_diff_values(none, torch_spatial_none, 4) < tol);
    }
}

/* One configuration of cross-entropy against the naive computation: the value, the kernel
 * gradient and the op-built (create_graph) gradient. `label` names the configuration in failures. */
static void check_cross_entropy_case(const ce_layout *l, uint64_t seed, bl_dtype dt, const double *weights,
                                     double smoothing, int64_t ignore_index, bool with_ignored,
                                     bl_reduction reduction, const char *label) {
    const double tol = dt == BL_F32 ? 2e-5 : 1e-11;
    ce_case k = {0, 0, 0, weights, smoothing, ignore_index, reduction};
    ce_layout_dims(l, &k.N, &k.C, &k.S);
    bl_tensor *x = leaf(ce_logits(l, dt, 100 + seed));
    bl_tensor *t = ce_targets(l, ignore_index, with_ignored, 200 + seed);
    bl_ce_args args = bl_ce_args_default();
    if (weights) args.class_weight = bl_from_data(BL_F64, BL_SHAPE(k.C), weights);
    args.label_smoothing = smoothing;
    args.ignore_index = ignore_index;
    args.reduction = reduction;

    const int64_t rows_n = k.N * k.S;
    double *rows = bl_arena_alloc((size_t)rows_n * sizeof *rows);
    double *grad = bl_arena_alloc((size_t)(rows_n * k.C) * sizeof *grad);
    bl_tensor *upstream = reduction == BL_REDUCE_NONE ? test_randn(dt, t->ndim, t->shape, 300 + seed) : NULL;
    double expected = naive_cross_entropy(&k, test_values(x), t->data, upstream ? test_values(upstream) : NULL, rows, grad);
    bl_tensor *loss = bl_cross_entropy(x, t, args);
    CHECK(loss, "%s", label);
    if (!loss) return;
    if (reduction == BL_REDUCE_NONE) {
        CHECK(bl_same_shape(loss, t), "%s", label);
        CHECK(test_max_rel_diff_values(loss, rows, rows_n) < tol, "%s", label);
    } else {
        CHECK(loss->ndim == 0, "%s", label);
        CHECK(fabs(bl_item(loss) - expected) < tol * (1 + fabs(expected)), "%s: %.10g vs %.10g", label,
              bl_item(loss), expected);
    }
    double kernel_err = test_max_rel_diff_values(gradient(loss, upstream, x, false), grad, rows_n * k.C);
    double composite_err = test_max_rel_diff_values(gradient(loss, upstream, x, true), grad, rows_n * k.C);
    CHECK(kernel_err < tol && composite_err < tol, "%s: gradient error %g (kernel), %g (ops)", label, kernel_err,
          composite_err);
}

/* Every combination of layout, dtype, class weights, smoothing, ignored rows and reduction. */
static void test_cross_entropy_all_options(void) {
    const ce_layout layouts[] = {
        {2, {5, 7}, false}, {3, {3, 4, 5}, false}, {4, {2, 3, 2, 3}, false}, {1, {6}, false}, {2, {4, 9}, true},
    };
    const double weights[9] = {0.3, 1.0, 2.5, 0.7, 1.2, 0.1, 1.9, 0.8, 1.4};
    /* ignore configurations: none, some rows at -100, some rows at an ignore_index that names a class */
    const int64_t ignore_values[3] = {-100, -100, 1};
    const bool with_ignored[3] = {false, true, true};
    for (size_t li = 0; li < sizeof layouts / sizeof layouts[0]; li++)
        for (int di = 0; di < 2; di++)
            for (int wi = 0; wi < 2; wi++)
                for (int si = 0; si < 2; si++)
                    for (int ii = 0; ii < 3; ii++)
                        for (int ri = 0; ri < 3; ri++) {
                            char label[128];
                            snprintf(label, sizeof label, "layout %zu, %s, weights %d, smoothing %d, ignore %d, reduction %d",
                                     li, di ? "F32" : "F64", wi, si, ii, ri);
                            bl_scope scope = bl_scope_begin();
                            check_cross_entropy_case(&layouts[li], li, di ? BL_F32 : BL_F64, wi ? weights : NULL,
                                                     si ? 0.15 : 0.0, ignore_values[ii], with_ignored[ii],
                                                     reductions[ri], label);
                            bl_scope_end(scope);
                        }
}

/* Without autograd the fused forward records nothing but gives the same value. */
static void test_cross_entropy_without_grad(void) {
    const ce_layout l = {2, {40, 1000}, false}; /* large enough for the parallel kernel */
    bl_tensor *x = leaf(ce_logits(&l, BL_F32, 9));
    bl_tensor *t = ce_targets(&l, -100, true, 10);
    bl_ce_args args = bl_ce_args_default();
    args.label_smoothing = 0.05;
    bl_tensor *with_grad = bl_cross_entropy(x, t, args), *without = NULL;
    BL_NO_GRAD { without = bl_cross_entropy(x, t, args); }
    CHECK(with_grad && with_grad->requires_grad);
    CHECK(without && !without->requires_grad);
    CHECK_CLOSE(bl_item(without), bl_item(with_grad), 1e-7);
    ce_case k = {40, 1000, 1, NULL, 0.05, -100, BL_REDUCE_MEAN};
    double *rows = bl_arena_alloc(40 * sizeof *rows), *grad = bl_arena_alloc(40000 * sizeof *grad);
    double expected = naive_cross_entropy(&k, test_values(x), t->data, NULL, rows, grad);
    CHECK_CLOSE(bl_item(without), expected, 1e-5);
    CHECK(test_max_rel_diff_values(gradient(with_grad, NULL, x, false), grad, 40000) < 1e-6);
    /* The graph is kept until the scope ends: a second backward gives the same gradient. */
    CHECK(test_max_rel_diff_values(gradient(with_grad, NULL, x, false), grad, 40000) < 1e-6);
}

/* Logits far apart: the loss of a target whose probability underflows float is still finite and
 * exact, in the vectorised rows (11 classes) and in the strided ones (a spatial dim). */
static void test_cross_entropy_extreme_logits(void) {
    double values[11];
    for (int c = 0; c < 11; c++) values[c] = c == 3 ? -250.0 : c == 7 ? 40.0 : 0.5 * c;
    const int64_t target[1] = {3};
    ce_case k = {1, 11, 1, NULL, 0.0, -100, BL_REDUCE_SUM};
    double rows[1], grad[11];
    double expected = naive_cross_entropy(&k, values, target, NULL, rows, grad);
    bl_tensor *x = leaf(bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(1, 11), values), BL_F32));
    bl_ce_args args = bl_ce_args_default();
    args.reduction = BL_REDUCE_SUM;
    bl_tensor *loss = bl_cross_entropy(x, bl_from_data(BL_I64, BL_SHAPE(1), target), args);
    CHECK_CLOSE(bl_item(loss), expected, 1e-6);
    CHECK(test_max_rel_diff_values(gradient(loss, NULL, x, false), grad, 11) < 1e-6);
    /* The same row at two spatial positions. */
    bl_tensor *spatial = bl_contiguous(bl_expand(bl_unsqueeze(x, 2), BL_SHAPE(1, 11, 2)));
    const int64_t targets[2] = {3, 3};
    loss = bl_cross_entropy(spatial, bl_from_data(BL_I64, BL_SHAPE(1, 2), targets), args);
    CHECK_CLOSE(bl_item(loss), 2 * expected, 1e-6);
}

typedef struct {
    bl_tensor *target;
    bl_ce_args args;
    bool log_softmax_first; /* nll_loss(log_softmax(x)) instead of cross_entropy(x) */
} class_loss_fn;

static bl_tensor *class_loss(bl_tensor *const *in, void *user) {
    const class_loss_fn *f = user;
    if (f->log_softmax_first) return bl_nll_loss(bl_log_softmax(in[0], in[0]->ndim == 1 ? 0 : 1), f->target, f->args);
    return bl_cross_entropy(in[0], f->target, f->args);
}

static void test_cross_entropy_gradcheck(void) {
    const ce_layout layouts[] = {{2, {3, 4}, false}, {3, {2, 3, 2}, false}, {1, {5}, false}};
    const double weights[5] = {0.5, 2.0, 1.0, 1.5, 0.8};
    for (size_t li = 0; li < 3; li++)
        for (int ri = 0; ri < 3; ri++)
            for (int nll = 0; nll < 2; nll++) {
                const ce_layout *l = &layouts[li];
                int64_t N, C, S;
                ce_layout_dims(l, &N, &C, &S);
                class_loss_fn f = {ce_targets(l, -100, li != 2, 40 + li), bl_ce_args_default(), nll};
                f.args.class_weight = bl_from_data(BL_F64, BL_SHAPE(C), weights);
                f.args.label_smoothing = 0.1;
                f.args.reduction = reductions[ri];
                bl_tensor *x = leaf(ce_logits(l, BL_F64, 50 + li));
                CHECK(bl_gradcheck(class_loss, &f, 1, &x, 1e-6, 1e-6, true) == BL_OK,
                      "layout %zu reduction %d %s", li, ri, nll ? "nll(log_softmax)" : "cross_entropy");
            }
}

/* ---- NLL -------------------------------------------------------------------------------------- */

/* NLL over arbitrary inputs is -sum_c q_ic input_ic: a check of the formula that does not go
 * through a softmax, with ignored rows, weights, smoothing and every reduction. */
static void test_nll_loss(void) {
    const double weight[4] = {1.5, 0.5, 1.0, 2.0};
    for (int di = 0; di < 2; di++)
        for (int si = 0; si < 2; si++)
            for (int ri = 0; ri < 3; ri++) {
                bl_dtype dt = di ? BL_F32 : BL_F64;
                double tol = dt == BL_F32 ? 1e-5 : 1e-12;
                const ce_layout l = {3, {3, 4, 2}, false};
                bl_tensor *x = leaf(ce_logits(&l, dt, 61));
                bl_tensor *t = ce_targets(&l, -100, true, 62);
                bl_ce_args args = bl_ce_args_default();
                args.class_weight = bl_from_data(BL_F64, BL_SHAPE(4), weight);
                args.label_smoothing = si ? 0.3 : 0.0;
                args.reduction = reductions[ri];
                bl_tensor *upstream = args.reduction == BL_REDUCE_NONE ? test_randn(dt, 2, t->shape, 63) : NULL;
                const double *xv = test_values(x), *up = upstream ? test_values(upstream) : NULL;
                const int64_t *tv = t->data;
                double rows[6], grad[24], total = 0, total_weight = 0;
                for (int64_t n = 0; n < 3; n++)
                    for (int64_t s = 0; s < 2; s++) {
                        int64_t i = n * 2 + s;
                        rows[i] = 0;
                        if (tv[i] != -100) total_weight += weight[tv[i]];
                        for (int64_t c = 0; c < 4; c++) {
                            double q = tv[i] == -100 ? 0
                                                     : args.label_smoothing / 4 * weight[c] +
                                                           (c == tv[i] ? (1 - args.label_smoothing) * weight[c] : 0);
                            rows[i] -= q * xv[(n * 4 + c) * 2 + s];
                            grad[(n * 4 + c) * 2 + s] = -q;
                        }
                        total += rows[i];
                    }
                for (int64_t i = 0; i < 24; i++)
                    grad[i] *= args.reduction == BL_REDUCE_NONE ? up[(i / 8) * 2 + i % 2]
                               : args.reduction == BL_REDUCE_MEAN ? 1.0 / total_weight
                                                                  : 1.0;
                bl_tensor *loss = bl_nll_loss(x, t, args);
                if (args.reduction == BL_REDUCE_NONE)
                    CHECK(test_max_rel_diff_values(loss, rows, 6) < tol);
                else
                    CHECK_CLOSE(bl_item(loss), args.reduction == BL_REDUCE_SUM ? total : total / total_weight, tol);
                CHECK(test_max_rel_diff_values(gradient(loss, upstream, x, false), grad, 24) < tol, "dtype %d smooth %d "
                      "reduction %d", di, si, ri);
            }
    /* Without smoothing only the target's log-probability is read, so -inf elsewhere is harmless. */
    const double lp[6] = {-INFINITY, -0.5, -1.0, -2.0, -INFINITY, -0.25};
    const int64_t tv[2] = {1, 0};
    bl_tensor *loss = bl_nll_loss(bl_from_data(BL_F64, BL_SHAPE(2, 3), lp), bl_from_data(BL_I64, BL_SHAPE(2), tv),
                                  bl_ce_args_default());
    CHECK_CLOSE(bl_item(loss), 1.25, 1e-12);
    /* nll_loss of log_softmax is cross-entropy, with every option. */
    const ce_layout l = {2, {6, 5}, false};
    bl_tensor *x = ce_logits(&l, BL_F32, 64), *t = ce_targets(&l, 3, true, 65);
    bl_ce_args args = bl_ce_args_default();
    args.label_smoothing = 0.2;
    args.ignore_index = 3;
    const double weight5[5] = {0.4, 1.0, 1.7, 0.9, 2.2};
    args.class_weight = bl_from_data(BL_F64, BL_SHAPE(5), weight5);
    CHECK_CLOSE(bl_item(bl_nll_loss(bl_log_softmax(x, 1), t, args)), bl_item(bl_cross_entropy(x, t, args)), 1e-6);
}

/* ---- soft-target cross-entropy ---------------------------------------------------------------- */

static bl_tensor *soft_loss(bl_tensor *const *in, void *user) {
    return bl_cross_entropy_soft(in[0], in[1], *(const bl_reduction *)user);
}

/* Target rows that are probability distributions (softmax of random numbers). */
static bl_tensor *soft_targets(bl_dtype dt, int ndim, const int64_t *shape, uint64_t seed) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    bl_tensor *p = bl_softmax(test_randn(dt, ndim, shape, seed), 1);
    bl_copy_(t, p);
    return t;
}

static void test_cross_entropy_soft(void) {
    for (int di = 0; di < 2; di++)
        for (int ri = 0; ri < 3; ri++)
            for (int spatial = 0; spatial < 2; spatial++) {
                bl_dtype dt = di ? BL_F32 : BL_F64;
                double tol = dt == BL_F32 ? 1e-5 : 1e-12;
                const int64_t N = 4, C = 5, S = spatial ? 3 : 1;
                int64_t shape[3] = {N, C, S};
                int ndim = spatial ? 3 : 2;
                bl_tensor *x = leaf(test_randn(dt, ndim, shape, 70 + spatial));
                bl_tensor *t = soft_targets(dt, ndim, shape, 72);
                bl_tensor *upstream = NULL;
                if (reductions[ri] == BL_REDUCE_NONE) upstream = test_randn(dt, ndim - 1, (int64_t[]){N, S}, 74);
                const double *xv = test_values(x), *tv = test_values(t), *up = upstream ? test_values(upstream) : NULL;
                double rows[12], grad[60], total = 0;
                for (int64_t n = 0; n < N; n++)
                    for (int64_t s = 0; s < S; s++) {
                        double mx = -INFINITY, z = 0, tsum = 0;
                        for (int64_t c = 0; c < C; c++) mx = fmax(mx, xv[(n * C + c) * S + s]);
                        for (int64_t c = 0; c < C; c++) z += exp(xv[(n * C + c) * S + s] - mx);
                        for (int64_t c = 0; c < C; c++) tsum += tv[(n * C + c) * S + s];
                        rows[n * S + s] = 0;
                        double g = upstream ? up[n * S + s] : reductions[ri] == BL_REDUCE_MEAN ? 1.0 / (double)(N * S) : 1.0;
                        for (int64_t c = 0; c < C; c++) {
                            int64_t at = (n * C + c) * S + s;
                            rows[n * S + s] -= tv[at] * (xv[at] - mx - log(z));
                            grad[at] = g * (exp(xv[at] - mx) / z * tsum - tv[at]);
                        }
                        total += rows[n * S + s];
                    }
                bl_tensor *loss = bl_cross_entropy_soft(x, t, reductions[ri]);
                if (reductions[ri] == BL_REDUCE_NONE)
                    CHECK(test_max_rel_diff_values(loss, rows, N * S) < tol);
                else
                    CHECK_CLOSE(bl_item(loss), reductions[ri] == BL_REDUCE_SUM ? total : total / (double)(N * S), tol);
                CHECK(test_max_rel_diff_values(gradient(loss, upstream, x, false), grad, N * C * S) < tol);
                if (dt == BL_F64) {
                    bl_tensor *in[2] = {x, leaf(t)};
                    bl_reduction r = reductions[ri];
                    CHECK(bl_gradcheck(soft_loss, &r, 2, in, 1e-6, 1e-6, true) == BL_OK, "reduction %d spatial %d",
                          ri, spatial);
                }
            }
}

/* ---- pointwise losses: MSE, smooth L1, BCE with logits, KL divergence ---------------------------- */

/* Naive pointwise loss of (x, y) with a parameter (beta, pos_weight); *dx = its x-derivative. */
typedef double (*naive_pointwise)(double x, double y, double param, double *dx);

static double naive_mse(double x, double y, double param, double *dx) {
    *dx = 2 * (x - y);
    return (x - y) * (x - y);
}

static double naive_smooth_l1(double x, double y, double beta, double *dx) {
    double d = x - y, sign = d > 0 ? 1 : d < 0 ? -1 : 0;
    if (fabs(d) < beta) {
        *dx = d / beta;
        return 0.5 * d * d / beta;
    }
    *dx = sign;
    return fabs(d) - 0.5 * beta;
}

static double naive_bce(double x, double y, double pos_weight, double *dx) {
    double log_weight = 1 + (pos_weight - 1) * y;
    double softplus_neg = fmax(-x, 0) + log1p(exp(-fabs(x))); /* log(1 + exp(-x)) */
    *dx = (1 - y) - log_weight / (1 + exp(x));
    return (1 - y) * x + log_weight * softplus_neg;
}

static double naive_kl(double log_x, double y, double param, double *dx) {
    *dx = -y;
    return y > 0 ? y * (log(y) - log_x) : 0;
}

typedef enum { LOSS_MSE, LOSS_SMOOTH_L1, LOSS_BCE, LOSS_KL } pointwise_kind;

typedef struct {
    pointwise_kind kind;
    double beta;          /* smooth L1 */
    bl_tensor *pos_weight; /* BCE, (C) or NULL */
    bl_reduction reduction;
} pointwise_case;

static bl_tensor *pointwise_loss(bl_tensor *const *in, void *user) {
    const pointwise_case *k = user;
    switch (k->kind) {
    case LOSS_MSE: return bl_mse_loss(in[0], in[1], k->reduction);
    case LOSS_SMOOTH_L1: return bl_smooth_l1_loss(in[0], in[1], k->beta, k->reduction);
    case LOSS_BCE: return bl_bce_with_logits(in[0], in[1], k->pos_weight ? in[2] : NULL, k->reduction);
    default: return bl_kl_div(in[0], in[1], k->reduction);
    }
}

/* x (N, C) and y of the kind's domain: targets in [0, 1] for BCE, log-probabilities and
 * probabilities (some exactly 0 unless positive_targets) for KL. */
static void pointwise_inputs(pointwise_kind kind, bl_dtype dt, bool positive_targets, bl_tensor **x, bl_tensor **y) {
    const int64_t N = 5, C = 3;
    *x = test_randn(dt, BL_SHAPE(N, C), 80);
    *y = test_randn(dt, BL_SHAPE(N, C), 81);
    if (kind == LOSS_BCE) {
        bl_rng r = bl_rng_make(82, 0);
        bl_fill_uniform_(*y, &r, 0.0, 1.0);
    } else if (kind == LOSS_KL) {
        *x = bl_log_softmax(*x, 1);
        bl_tensor *p = bl_softmax(*y, 1);
        if (!positive_targets) {
            bl_set_flat(p, 1, 0.0);
            bl_set_flat(p, 7, 0.0);
        }
        *y = p;
    }
    *x = leaf(bl_contiguous(*x));
    *y = bl_contiguous(*y);
}

static void test_pointwise_losses(void) {
    const naive_pointwise naive[4] = {naive_mse, naive_smooth_l1, naive_bce, naive_kl};
    const double pos_weight[3] = {2.0, 0.5, 1.0};
    const double betas[3] = {1.0, 0.5, 0.0};
    for (int kind = 0; kind < 4; kind++)
        for (int variant = 0; variant < (kind == LOSS_SMOOTH_L1 ? 3 : kind == LOSS_BCE ? 2 : 1); variant++)
            for (int di = 0; di < 2; di++)
                for (int ri = 0; ri < 3; ri++) {
                    bl_dtype dt = di ? BL_F32 : BL_F64;
                    double tol = dt == BL_F32 ? 1e-5 : 1e-12;
                    pointwise_case k = {kind, kind == LOSS_SMOOTH_L1 ? betas[variant] : 0, NULL, reductions[ri]};
                    bl_tensor *x, *y;
                    pointwise_inputs(kind, dt, false, &x, &y);
                    bl_tensor *pw = NULL;
                    if (kind == LOSS_BCE && variant) {
                        pw = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(3), pos_weight), dt);
                        k.pos_weight = pw;
                    }
                    const int64_t n = bl_numel(x);
                    bl_tensor *upstream = k.reduction == BL_REDUCE_NONE ? test_randn(dt, 2, x->shape, 83) : NULL;
                    const double *xv = test_values(x), *yv = test_values(y), *up = upstream ? test_values(upstream) : NULL;
                    double values[15], grad[15], total = 0;
                    double divisor = k.reduction != BL_REDUCE_MEAN ? 1.0 : kind == LOSS_KL ? (double)x->shape[0] : (double)n;
                    for (int64_t i = 0; i < n; i++) {
                        double param = kind == LOSS_SMOOTH_L1 ? k.beta : kind == LOSS_BCE ? (pw ? pos_weight[i % 3] : 1.0) : 0;
                        values[i] = naive[kind](xv[i], yv[i], param, &grad[i]);
                        grad[i] *= up ? up[i] : 1.0 / divisor;
                        total += values[i];
                    }
                    bl_tensor *in[3] = {x, y, pw};
                    bl_tensor *loss = pointwise_loss(in, &k);
                    if (k.reduction == BL_REDUCE_NONE)
                        CHECK(test_max_rel_diff_values(loss, values, n) < tol, "kind %d variant %d dtype %d", kind, variant, di);
                    else
                        CHECK(loss && fabs(bl_item(loss) - total / divisor) < tol * (1 + fabs(total / divisor)),
                              "kind %d variant %d dtype %d reduction %d: %.10g vs %.10g", kind, variant, di, ri,
                              loss ? bl_item(loss) : NAN, total / divisor);
                    CHECK(test_max_rel_diff_values(gradient(loss, upstream, x, false), grad, n) < tol,
                          "kind %d variant %d dtype %d reduction %d: input gradient", kind, variant, di, ri);
                    if (dt == BL_F64) {
                        /* Every float input differentiable; KL's targets kept away from 0, where the
                         * loss has a kink. */
                        pointwise_inputs(kind, dt, true, &in[0], &in[1]);
                        leaf(in[1]);
                        if (pw) leaf(in[2] = bl_contiguous(bl_to_dtype(pw, BL_F64)));
                        CHECK(bl_gradcheck(pointwise_loss, &k, pw ? 3 : 2, in, 1e-6, 1e-6, true) == BL_OK,
                              "kind %d variant %d reduction %d", kind, variant, ri);
                    }
                }
}

/* Reference values from PyTorch 1.13 (float64), a = [[0.2, -1.5, 3], [0.4, 0.1, -0.05]],
 * b = [[0, 0.5, 1], [0.3, 0.9, 0]]: F.smooth_l1_loss(a, b, beta=0.5), F.mse_loss(a, b,
 * reduction='sum'), F.binary_cross_entropy_with_logits(a, b, pos_weight=[2, 0.5, 1]),
 * F.cosine_similarity(a, b, dim=1); and F.kl_div(log_softmax([[0.2, -0.1, 0.5], [1, 0.3, -0.6]], 1),
 * [[0.3, 0, 0.7], [0.2, 0.5, 0.3]], reduction='batchmean'). */
/* Where the target is 0, KL's pointwise loss and both its gradients are 0, as torch's. */
static void test_kl_div_zero_targets(void) {
    bl_tensor *x, *y;
    pointwise_inputs(LOSS_KL, BL_F64, false, &x, &y);
    leaf(y);
    bl_tensor *in[2] = {x, y}, *grads[2] = {NULL, NULL};
    bl_tensor *loss = bl_kl_div(x, y, BL_REDUCE_NONE);
    CHECK(loss && bl_get_flat(loss, 1) == 0 && bl_get_flat(loss, 7) == 0);
    bl_tensor *total = bl_sum(loss);
    CHECK(total && bl_autograd_grad(1, &total, NULL, 2, in, grads, false) == BL_OK);
    CHECK(grads[0] && bl_get_flat(grads[0], 1) == 0 && bl_get_flat(grads[0], 7) == 0);
    CHECK(grads[1] && bl_get_flat(grads[1], 1) == 0 && bl_get_flat(grads[1], 7) == 0, "target gradient %g %g",
          grads[1] ? bl_get_flat(grads[1], 1) : NAN, grads[1] ? bl_get_flat(grads[1], 7) : NAN);
    /* Elsewhere d/dy = log(y) + 1 - x. */
    CHECK(grads[1] && fabs(bl_get_flat(grads[1], 0) - (log(bl_get_flat(y, 0)) + 1 - bl_get_flat(x, 0))) < 1e-12);
}

static void test_pointwise_match_torch(void) {
    const double a_values[6] = {0.2, -1.5, 3.0, 0.4, 0.1, -0.05}, b_values[6] = {0.0, 0.5, 1.0, 0.3, 0.9, 0.0};
    const double pw_values[3] = {2.0, 0.5, 1.0};
    const double kl_x[6] = {0.2, -0.1, 0.5, 1.0, 0.3, -0.6}, kl_t[6] = {0.3, 0.0, 0.7, 0.2, 0.5, 0.3};
    const double torch_cos[2] = {0.5989361693759311, 0.5329708913388167};
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = di ? BL_F32 : BL_F64;
        double tol = dt == BL_F32 ? 1e-6 : 1e-12;
        bl_tensor *a = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(2, 3), a_values), dt);
        bl_tensor *b = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(2, 3), b_values), dt);
        bl_tensor *pw = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(3), pw_values), dt);
        CHECK_CLOSE(bl_item(bl_smooth_l1_loss(a, b, 0.5, BL_REDUCE_MEAN)), 0.68375, tol);
        CHECK_CLOSE(bl_item(bl_mse_loss(a, b, BL_REDUCE_SUM)), 8.6925, tol);
        CHECK_CLOSE(bl_item(bl_bce_with_logits(a, b, pw, BL_REDUCE_MEAN)), 0.5587639697693478, tol);
        CHECK(test_max_rel_diff_values(bl_cosine_similarity(a, b, 1, 1e-8), torch_cos, 2) < tol);
        bl_tensor *kx = bl_log_softmax(bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(2, 3), kl_x), dt), 1);
        bl_tensor *kt = bl_to_dtype(bl_from_data(BL_F64, BL_SHAPE(2, 3), kl_t), dt);
        CHECK_CLOSE(bl_item(bl_kl_div(kx, kt, BL_REDUCE_MEAN)), 0.3188038299187371, tol);
    }
}

/* Large logits: the stable form gives exact values where a naive log(sigmoid) overflows. */
static void test_bce_stability(void) {
    const float x[3] = {100.0f, -100.0f, 0.0f}, y[3] = {0.0f, 1.0f, 0.5f};
    bl_tensor *logits = leaf(bl_from_data(BL_F32, BL_SHAPE(3), x));
    bl_tensor *loss = bl_bce_with_logits(logits, bl_from_data(BL_F32, BL_SHAPE(3), y), NULL, BL_REDUCE_NONE);
    CHECK_CLOSE(bl_get_flat(loss, 0), 100.0, 1e-6);
    CHECK_CLOSE(bl_get_flat(loss, 1), 100.0, 1e-6);
    CHECK_CLOSE(bl_get_flat(loss, 2), log(2.0), 1e-6);
    bl_tensor *g = gradient(bl_sum(loss), NULL, logits, false);
    CHECK(g && fabs(bl_get_flat(g, 0) - 1.0) < 1e-6 && fabs(bl_get_flat(g, 1) + 1.0) < 1e-6 &&
          fabs(bl_get_flat(g, 2)) < 1e-6);
}

/* Transposed (non-contiguous) inputs give what their contiguous copies give, value and gradient. */
static bl_tensor *loss_of_kind(int kind, bl_tensor *x, bl_tensor *y) {
    const int64_t target[4] = {2, 0, 4, 1};
    bl_ce_args args = bl_ce_args_default();
    args.label_smoothing = 0.1;
    switch (kind) {
    case 0: return bl_mse_loss(x, y, BL_REDUCE_MEAN);
    case 1: return bl_smooth_l1_loss(x, y, 0.7, BL_REDUCE_SUM);
    case 2: return bl_bce_with_logits(x, bl_sigmoid(y), NULL, BL_REDUCE_MEAN);
    case 3: return bl_kl_div(bl_log_softmax(x, 1), bl_softmax(y, 1), BL_REDUCE_MEAN);
    case 4: return bl_cross_entropy_soft(x, bl_softmax(y, 1), BL_REDUCE_MEAN);
    case 5: return bl_nll_loss(x, bl_from_data(BL_I64, BL_SHAPE(4), target), args);
    case 6: return bl_cross_entropy(x, bl_from_data(BL_I64, BL_SHAPE(4), target), args);
    default: return bl_sum(bl_cosine_similarity(x, y, 1, 1e-8));
    }
}

static void test_noncontiguous_inputs(void) {
    for (int kind = 0; kind < 8; kind++) {
        bl_tensor *xt = leaf(test_randn(BL_F64, BL_SHAPE(5, 4), 120)), *yt = test_randn(BL_F64, BL_SHAPE(5, 4), 121);
        bl_tensor *x = bl_transpose(xt, 0, 1), *y = bl_transpose(yt, 0, 1); /* (4, 5), strided */
        bl_tensor *xc = leaf(bl_contiguous(bl_detach(x))), *yc = bl_contiguous(y);
        bl_tensor *strided = loss_of_kind(kind, x, y), *contiguous = loss_of_kind(kind, xc, yc);
        CHECK(strided && contiguous && fabs(bl_item(strided) - bl_item(contiguous)) < 1e-14, "kind %d", kind);
        bl_tensor *g = gradient(strided, NULL, xt, false), *gc = gradient(contiguous, NULL, xc, false);
        CHECK(g && gc && test_max_rel_diff(bl_transpose(g, 0, 1), gc) < 1e-14, "kind %d", kind);
    }
}

/* ---- similarities ----------------------------------------------------------------------------- */

static bl_tensor *normalize_fn(bl_tensor *const *in, void *user) { return bl_l2_normalize(in[0], *(int *)user, 1e-6); }
static bl_tensor *cosine_fn(bl_tensor *const *in, void *user) { return bl_cosine_similarity(in[0], in[1], *(int *)user, 1e-8); }

static void test_l2_normalize(void) {
    const int64_t shape[3] = {3, 4, 5};
    for (int di = 0; di < 2; di++)
        for (int dim = -1; dim < 3; dim++) {
            bl_dtype dt = di ? BL_F32 : BL_F64;
            bl_tensor *x = test_randn(dt, 3, shape, 90 + dim);
            bl_tensor *y = bl_l2_normalize(x, dim, 1e-12);
            int d = dim < 0 ? dim + 3 : dim;
            double expected[60];
            for (int64_t i = 0; i < 60; i++) {
                int64_t idx[3] = {i / 20, i / 5 % 4, i % 5}, at[3];
                double norm = 0;
                for (int64_t j = 0; j < shape[d]; j++) {
                    memcpy(at, idx, sizeof at);
                    at[d] = j;
                    double v = bl_get_flat(x, (at[0] * 4 + at[1]) * 5 + at[2]);
                    norm += v * v;
                }
                expected[i] = bl_get_flat(x, i) / sqrt(norm);
            }
            CHECK(bl_same_shape(y, x) && test_max_rel_diff_values(y, expected, 60) < (dt == BL_F32 ? 1e-6 : 1e-14),
                  "dim %d dtype %d", dim, di);
            if (dt == BL_F64) {
                bl_tensor *in = leaf(bl_contiguous(x));
                CHECK(bl_gradcheck(normalize_fn, &dim, 1, &in, 1e-6, 1e-6, true) == BL_OK, "dim %d", dim);
            }
        }
    /* A vector shorter than eps is divided by eps, and a zero vector gets a finite gradient. */
    const double small[4] = {0.0, 0.0, 3e-4, 4e-4};
    bl_tensor *x = leaf(bl_from_data(BL_F64, BL_SHAPE(2, 2), small));
    bl_tensor *y = bl_l2_normalize(x, 1, 1e-3);
    CHECK_CLOSE(bl_get_flat(y, 2), 0.3, 1e-12);
    CHECK_CLOSE(bl_get_flat(y, 3), 0.4, 1e-12);
    bl_tensor *g = gradient(bl_sum(y), NULL, x, false);
    CHECK(g && bl_get_flat(g, 0) == 1e3 && bl_get_flat(g, 1) == 1e3, "zero row gradient %g %g",
          g ? bl_get_flat(g, 0) : NAN, g ? bl_get_flat(g, 1) : NAN);
}

static void test_cosine_similarity(void) {
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = di ? BL_F32 : BL_F64;
        /* a (4, 1, 5) and b (3, 5) broadcast to (4, 3, 5); dim -1 gives (4, 3). */
        bl_tensor *a = test_randn(dt, BL_SHAPE(4, 1, 5), 95), *b = test_randn(dt, BL_SHAPE(3, 5), 96);
        bl_tensor *cos = bl_cosine_similarity(a, b, -1, 1e-8);
        CHECK(cos && cos->ndim == 2 && cos->shape[0] == 4 && cos->shape[1] == 3);
        double expected[12];
        for (int64_t i = 0; i < 4; i++)
            for (int64_t j = 0; j < 3; j++) {
                double ab = 0, aa = 0, bb = 0;
                for (int64_t c = 0; c < 5; c++) {
                    double u = bl_get_flat(a, i * 5 + c), v = bl_get_flat(b, j * 5 + c);
                    ab += u * v;
                    aa += u * u;
                    bb += v * v;
                }
                expected[i * 3 + j] = ab / (sqrt(aa) * sqrt(bb));
            }
        CHECK(test_max_rel_diff_values(cos, expected, 12) < (dt == BL_F32 ? 1e-6 : 1e-14));
        if (dt == BL_F64) {
            bl_tensor *in[2] = {leaf(a), leaf(b)};
            int dim = -1;
            CHECK(bl_gradcheck(cosine_fn, &dim, 2, in, 1e-6, 1e-6, true) == BL_OK);
            bl_tensor *c[2] = {leaf(test_randn(dt, BL_SHAPE(6, 3), 97)), leaf(test_randn(dt, BL_SHAPE(6, 3), 98))};
            dim = 0;
            CHECK(bl_gradcheck(cosine_fn, &dim, 2, c, 1e-6, 1e-6, true) == BL_OK);
        }
    }
    /* Each norm is clamped at eps separately, as torch: cos([1e-9, 0], [1e-9, 0]) = 1e-12 at eps 1e-3. */
    const double tiny[2] = {1e-9, 0.0};
    bl_tensor *t = bl_from_data(BL_F64, BL_SHAPE(1, 2), tiny);
    CHECK_CLOSE(bl_item(bl_cosine_similarity(t, t, 1, 1e-3)), 1e-12, 1e-12);
}

/* ---- dropout ---------------------------------------------------------------------------------- */

static bl_tensor *dropout_fn(bl_tensor *const *in, void *user) {
    bl_rng r = *(const bl_rng *)user; /* the same mask on every call */
    return bl_dropout(in[0], 0.4, true, &r);
}

static void test_dropout(void) {
    const double p = 0.3;
    const int64_t n = 200001; /* odd, and large enough for the parallel mask */
    for (int di = 0; di < 2; di++) {
        bl_dtype dt = di ? BL_F32 : BL_F64;
        bl_tensor *x = leaf(bl_add_scalar(test_randn(dt, BL_SHAPE(n), 100), 5.0)); /* no zeros */
        bl_rng rng = bl_rng_make(7, 1), start = rng;
        bl_tensor *y = bl_dropout(x, p, true, &rng);
        CHECK(y && bl_same_shape(y, x));
        if (!y) continue;
        CHECK(rng.counter != start.counter, "the stream advances");
        bl_tensor *g = gradient(bl_sum(y), NULL, x, false);
        int64_t kept = 0;
        int bad = 0;
        for (int64_t i = 0; i < n; i++) {
            double xi = bl_get_flat(x, i), yi = bl_get_flat(y, i), gi = bl_get_flat(g, i);
            bool keep = yi != 0;
            kept += keep;
            double scale = keep ? 1.0 / (1.0 - p) : 0.0, tol = dt == BL_F32 ? 1e-6 : 1e-15;
            if (fabs(yi - xi * scale) > tol * (1 + fabs(yi)) || fabs(gi - scale) > tol * scale) bad++;
        }
        CHECK(bad == 0, "%d elements are neither 0 nor x / (1 - p), or their gradient is not the mask", bad);
        /* The mask read from the stream one draw at a time: element i is dropped when the
         * (i % 2)-th 32-bit half of draw i / 2 is below p * 2^32. */
        bl_rng sequential = start;
        int64_t mismatches = 0;
        for (int64_t i = 0; i < n; i += 2) {
            uint64_t bits = bl_rng_u64(&sequential);
            for (int64_t j = i; j < i + 2 && j < n; j++) {
                uint64_t half = j % 2 ? bits >> 32 : bits & 0xffffffffu;
                mismatches += (half >= (uint64_t)(p * 4294967296.0)) != (bl_get_flat(y, j) != 0);
            }
        }
        CHECK(mismatches == 0, "%lld elements differ from the sequential mask", (long long)mismatches);
        CHECK(rng.counter == sequential.counter, "the stream advances by the draws used");
        /* The kept fraction is 1 - p within 5 standard deviations. */
        double sd = sqrt(p * (1 - p) / (double)n);
        CHECK(fabs((double)kept / (double)n - (1 - p)) < 5 * sd, "kept %lld of %lld", (long long)kept, (long long)n);
        /* The same stream position gives the same mask, whatever the thread count. */
        int threads = bl_get_threads();
        bl_set_threads(threads == 1 ? 2 : 1);
        bl_rng again = start;
        CHECK(test_max_rel_diff(bl_dropout(x, p, true, &again), y) == 0);
        bl_set_threads(threads);
        CHECK(again.counter == rng.counter);
        CHECK(test_max_rel_diff(bl_dropout(x, p, true, &rng), y) > 0, "the next call draws a new mask");
    }
    bl_rng rng = bl_rng_make(8, 1);
    bl_tensor *x = leaf(test_randn(BL_F64, BL_SHAPE(3, 4), 101));
    CHECK(bl_dropout(x, 0.5, false, &rng) == x, "identity when not training");
    CHECK(bl_dropout(x, 0.0, true, &rng) == x, "identity at p = 0");
    bl_tensor *zeros = bl_dropout(x, 1.0, true, &rng);
    CHECK(zeros && bl_item(bl_sum(bl_abs(zeros))) == 0, "p = 1 drops everything");
    bl_tensor *g = gradient(bl_sum(zeros), NULL, x, false);
    CHECK(g && bl_item(bl_sum(bl_abs(g))) == 0);
    /* A non-contiguous input. */
    bl_tensor *xt = bl_transpose(x, 0, 1);
    bl_rng r1 = rng, r2 = rng;
    CHECK(test_max_rel_diff(bl_dropout(xt, 0.5, true, &r1), bl_dropout(bl_contiguous(xt), 0.5, true, &r2)) == 0);
    bl_rng fixed = bl_rng_make(9, 1);
    CHECK(bl_gradcheck(dropout_fn, &fixed, 1, &x, 1e-6, 1e-6, true) == BL_OK);
    bl_clear_error();
    CHECK(!bl_dropout(x, 1.5, true, &rng) && strstr(bl_last_error(), "1.5"));
    bl_clear_error();
    CHECK(!bl_dropout(x, 0.5, true, NULL) && strstr(bl_last_error(), "random stream"));
    bl_clear_error();
}

/* ---- errors ----------------------------------------------------------------------------------- */

static void test_errors(void) {
    bl_tensor *x = test_randn(BL_F32, BL_SHAPE(3, 5), 110);
    const int64_t bad_target[3] = {0, 7, 2}, negative[3] = {0, -1, 2};
    bl_clear_error();
    CHECK(!bl_cross_entropy(x, bl_from_data(BL_I64, BL_SHAPE(3), bad_target), bl_ce_args_default()));
    CHECK(strstr(bl_last_error(), "target 7") && strstr(bl_last_error(), "5 classes"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_nll_loss(x, bl_from_data(BL_I64, BL_SHAPE(3), negative), bl_ce_args_default()));
    CHECK(strstr(bl_last_error(), "target -1") && strstr(bl_last_error(), "5 classes"), "%s", bl_last_error());
    bl_clear_error();
    /* -1 is fine when it is the ignore_index. */
    bl_ce_args ignore_minus_one = bl_ce_args_default();
    ignore_minus_one.ignore_index = -1;
    CHECK(bl_cross_entropy(x, bl_from_data(BL_I64, BL_SHAPE(3), negative), ignore_minus_one));
    bl_clear_error();
    CHECK(!bl_cross_entropy(x, bl_zeros(BL_I64, BL_SHAPE(4)), bl_ce_args_default()));
    CHECK(strstr(bl_last_error(), "[4]") && strstr(bl_last_error(), "[3, 5]"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_cross_entropy(x, bl_zeros(BL_I32, BL_SHAPE(3)), bl_ce_args_default()));
    CHECK(strstr(bl_last_error(), "I32"), "%s", bl_last_error());
    bl_clear_error();
    bl_ce_args args = bl_ce_args_default();
    args.class_weight = bl_ones(BL_F32, BL_SHAPE(4));
    CHECK(!bl_cross_entropy(x, bl_zeros(BL_I64, BL_SHAPE(3)), args));
    CHECK(strstr(bl_last_error(), "class_weight") && strstr(bl_last_error(), "[4]"), "%s", bl_last_error());
    bl_clear_error();
    args = bl_ce_args_default();
    args.label_smoothing = 1.5;
    CHECK(!bl_cross_entropy(x, bl_zeros(BL_I64, BL_SHAPE(3)), args));
    CHECK(strstr(bl_last_error(), "label_smoothing"), "%s", bl_last_error());
    bl_clear_error();
    bl_tensor *y = test_randn(BL_F32, BL_SHAPE(5, 3), 111);
    CHECK(!bl_mse_loss(x, y, BL_REDUCE_MEAN));
    CHECK(strstr(bl_last_error(), "mse_loss") && strstr(bl_last_error(), "[3, 5]") && strstr(bl_last_error(), "[5, 3]"),
          "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_kl_div(x, bl_to_dtype(x, BL_F64), BL_REDUCE_SUM));
    CHECK(strstr(bl_last_error(), "kl_div"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_cross_entropy_soft(x, y, BL_REDUCE_MEAN));
    CHECK(strstr(bl_last_error(), "[5, 3]"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_smooth_l1_loss(x, x, -1.0, BL_REDUCE_MEAN));
    CHECK(strstr(bl_last_error(), "beta"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_bce_with_logits(x, x, bl_ones(BL_F32, BL_SHAPE(4)), BL_REDUCE_MEAN));
    CHECK(strstr(bl_last_error(), "[4]") && strstr(bl_last_error(), "[3, 5]"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_cosine_similarity(x, y, 1, 1e-8));
    CHECK(strstr(bl_last_error(), "[3, 5]") && strstr(bl_last_error(), "[5, 3]"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_l2_normalize(x, 2, 1e-12));
    CHECK(strstr(bl_last_error(), "l2_normalize") && strstr(bl_last_error(), "dim 2"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!bl_cosine_similarity(x, x, -3, 1e-8));
    CHECK(strstr(bl_last_error(), "cosine_similarity") && strstr(bl_last_error(), "dim -3"), "%s", bl_last_error());
    bl_clear_error();
    /* NULL in, NULL out, without a new message. */
    CHECK(!bl_cross_entropy(NULL, NULL, bl_ce_args_default()) && !bl_mse_loss(NULL, x, BL_REDUCE_SUM));
    CHECK(bl_last_error()[0] == '\0');
}

TEST_MAIN(TEST(test_cross_entropy_matches_torch), TEST(test_cross_entropy_all_options),
          TEST(test_cross_entropy_without_grad), TEST(test_cross_entropy_extreme_logits), TEST(test_cross_entropy_gradcheck), TEST(test_nll_loss),
          TEST(test_cross_entropy_soft), TEST(test_pointwise_losses), TEST(test_kl_div_zero_targets), TEST(test_pointwise_match_torch),
          TEST(test_bce_stability), TEST(test_noncontiguous_inputs), TEST(test_l2_normalize), TEST(test_cosine_similarity), TEST(test_dropout),
          TEST(test_errors))
