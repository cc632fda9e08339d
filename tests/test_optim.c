/* Optimizers, schedules, gradient clipping and weight EMA against independent double-precision
 * loops written from the published update rules (PyTorch's documentation), over a store whose
 * entries have odd sizes, several dtypes of buffers, decay-exempt entries and frozen entries. */
#include "test.h"

#include <unistd.h>

#define MAX_ENTRIES 8

/* Files go to a private temporary directory, removed at exit. */
static char temp_dir[256];
static char temp_files[4][320];

static void remove_temp_dir(void) {
    for (int i = 0; i < 4; i++)
        if (temp_files[i][0]) remove(temp_files[i]);
    rmdir(temp_dir);
}

static const char *temp_path(int slot, const char *name) {
    if (!temp_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(temp_dir, sizeof temp_dir, "%s/ballast_optim_XXXXXX", base && base[0] ? base : "/tmp");
        if (!mkdtemp(temp_dir)) return name;
        atexit(remove_temp_dir);
    }
    snprintf(temp_files[slot], sizeof temp_files[slot], "%s/%s", temp_dir, name);
    return temp_files[slot];
}

/* A small model's store: matrices that are decayed, a bias and a norm scale that are exempt
 * (1-D), a 3-D weight, and BatchNorm buffers. */
static void make_store(bl_params *ps, uint64_t seed) {
    bl_params_init(ps);
    bl_params_add(ps, "conv.weight", BL_SHAPE(3, 5));
    bl_params_add(ps, "conv.bias", BL_SHAPE(5));
    bl_params_add(ps, "fc.weight", BL_SHAPE(2, 3, 7));
    bl_params_add(ps, "bn.weight", BL_SHAPE(17));
    bl_params_add_buffer(ps, "bn.running_mean", BL_F32, BL_SHAPE(5));
    bl_params_add_buffer(ps, "bn.num_batches_tracked", BL_I64, 0, NULL);
    CHECK(bl_params_finalize(ps) == BL_OK);
    bl_rng r = bl_rng_make(seed, 1);
    for (int i = 0; i < ps->count; i++) {
        bl_tensor *t = ps->entries[i].tensor;
        if (t->dtype == BL_F32) bl_fill_normal_(t, &r, 0.0, 1.0);
        else bl_fill_(t, 7);
    }
}

/* Gradients for step `step`, deterministic, written into the store's grad block. */
static void set_grads(bl_params *ps, int step) {
    bl_rng r = bl_rng_make(1000 + (uint64_t)step, 2);
    for (int i = 0; i < ps->count; i++)
        if (ps->entries[i].trainable) bl_fill_normal_(ps->entries[i].tensor->grad, &r, 0.0, 1.0);
}

/* ---- the reference: one double array per entry ---- */

typedef struct {
    int n_entries;
    int64_t n[MAX_ENTRIES];
    bool trainable[MAX_ENTRIES], exempt[MAX_ENTRIES];
    double *p[MAX_ENTRIES], *buf[MAX_ENTRIES], *m[MAX_ENTRIES], *v[MAX_ENTRIES];
    int64_t steps[MAX_ENTRIES];
} reference;

static void ref_init(reference *R, const bl_params *ps) {
    memset(R, 0, sizeof *R);
    R->n_entries = ps->count;
    for (int e = 0; e < ps->count; e++) {
        const bl_tensor *t = ps->entries[e].tensor;
        R->n[e] = bl_numel(t);
        R->trainable[e] = ps->entries[e].trainable;
        R->exempt[e] = ps->entries[e].no_weight_decay;
        R->p[e] = calloc((size_t)R->n[e] + 1, sizeof(double));
        R->buf[e] = calloc((size_t)R->n[e] + 1, sizeof(double));
        R->m[e] = calloc((size_t)R->n[e] + 1, sizeof(double));
        R->v[e] = calloc((size_t)R->n[e] + 1, sizeof(double));
        for (int64_t i = 0; i < R->n[e]; i++) R->p[e][i] = bl_get_flat(t, i);
    }
}

static void ref_free(reference *R) {
    for (int e = 0; e < R->n_entries; e++) {
        free(R->p[e]);
        free(R->buf[e]);
        free(R->m[e]);
        free(R->v[e]);
    }
}

/* torch.optim.SGD / Adam / AdamW as documented, for entry e with gradient g. */
static void ref_step_entry(reference *R, const bl_optim_config *c, int e, const bl_tensor *grad) {
    double wd = c->skip_no_weight_decay && R->exempt[e] ? 0 : c->weight_decay;
    int64_t t = ++R->steps[e];
    for (int64_t i = 0; i < R->n[e]; i++) {
        double g = bl_get_flat(grad, i), *p = &R->p[e][i];
        if (c->kind == BL_SGD) {
            g += wd * *p;
            if (c->momentum != 0) {
                double *b = &R->buf[e][i];
                *b = t == 1 ? g : c->momentum * *b + (1 - c->dampening) * g;
                g = c->nesterov ? g + c->momentum * *b : *b;
            }
            *p -= c->lr * g;
        } else {
            if (c->kind == BL_ADAMW)
                *p *= 1 - c->lr * wd;
            else
                g += wd * *p;
            double *m = &R->m[e][i], *v = &R->v[e][i];
            *m = c->beta1 * *m + (1 - c->beta1) * g;
            *v = c->beta2 * *v + (1 - c->beta2) * g * g;
            double m_hat = *m / (1 - pow(c->beta1, (double)t)), v_hat = *v / (1 - pow(c->beta2, (double)t));
            *p -= c->lr * m_hat / (sqrt(v_hat) + c->eps);
        }
    }
}

static double ref_max_diff(const reference *R, const bl_params *ps) {
    double worst = 0;
    for (int e = 0; e < R->n_entries; e++)
        for (int64_t i = 0; i < R->n[e]; i++) {
            double d = fabs(bl_get_flat(ps->entries[e].tensor, i) - R->p[e][i]) / (1 + fabs(R->p[e][i]));
            if (!(d <= worst)) worst = d;
        }
    return worst;
}

/* Runs `steps` steps of the optimizer and the reference side by side, with a learning rate that
 * changes every step and "fc.weight" frozen during steps [freeze_from, freeze_to). */
static void run_against_reference(bl_optim_config cfg, int steps, int freeze_from, int freeze_to) {
    bl_params ps;
    make_store(&ps, 42);
    reference R;
    ref_init(&R, &ps);
    bl_optimizer opt;
    CHECK(bl_optimizer_init(&opt, &ps, cfg) == BL_OK);
    bl_tensor *frozen = bl_params_find(&ps, "fc.weight");
    double base_lr = cfg.lr;
    for (int s = 0; s < steps; s++) {
        set_grads(&ps, s);
        frozen->requires_grad = !(s >= freeze_from && s < freeze_to);
        opt.cfg.lr = cfg.lr = base_lr * (1.0 - 0.1 * s);
        CHECK(bl_optimizer_step(&opt) == BL_OK);
        for (int e = 0; e < ps.count; e++)
            if (R.trainable[e] && ps.entries[e].tensor->requires_grad)
                ref_step_entry(&R, &cfg, e, ps.entries[e].tensor->grad);
        double diff = ref_max_diff(&R, &ps);
        CHECK(diff < 2e-6, "kind %d, step %d: max relative difference %g", (int)cfg.kind, s, diff);
    }
    CHECK(opt.step == steps);
    /* buffers are not touched by the optimizer */
    CHECK(bl_get_flat(bl_params_find(&ps, "bn.num_batches_tracked"), 0) == 7);
    CHECK(bl_get_flat(bl_params_find(&ps, "bn.running_mean"), 0) == R.p[4][0]);
    bl_optimizer_free(&opt);
    ref_free(&R);
    bl_params_free(&ps);
}

static void test_sgd_plain(void) { run_against_reference(bl_sgd_config(0.1, 0, 0), 5, 99, 99); }

static void test_sgd_momentum_dampening_decay(void) {
    bl_optim_config c = bl_sgd_config(0.05, 0.9, 1e-2);
    c.dampening = 0.3;
    run_against_reference(c, 6, 1, 3);
}

static void test_sgd_nesterov_skip_decay(void) {
    bl_optim_config c = bl_sgd_config(0.05, 0.8, 5e-2);
    c.nesterov = true;
    c.skip_no_weight_decay = true;
    run_against_reference(c, 6, 0, 2);
}

static void test_adam(void) {
    bl_optim_config c = bl_adam_config(1e-2, 0.05);
    c.beta1 = 0.8;
    c.beta2 = 0.95;
    c.eps = 1e-6;
    run_against_reference(c, 7, 2, 4);
}

static void test_adam_defaults_no_decay(void) { run_against_reference(bl_adam_config(3e-3, 0), 5, 99, 99); }

static void test_adamw_skip_decay(void) {
    bl_optim_config c = bl_adamw_config(2e-2, 0.1);
    c.skip_no_weight_decay = true;
    run_against_reference(c, 7, 3, 5);
}

static void test_adamw_decays_everything_by_default(void) {
    run_against_reference(bl_adamw_config(2e-2, 0.1), 4, 99, 99);
}

/* A step over a store big enough to run in parallel, chunked, checked element by element. */
static void test_large_store_parallel_step(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_params_add(&ps, "big", BL_SHAPE(300, 311));
    bl_params_add(&ps, "small", BL_SHAPE(3));
    CHECK(bl_params_finalize(&ps) == BL_OK);
    bl_rng r = bl_rng_make(5, 5);
    bl_fill_normal_(ps.entries[0].tensor, &r, 0, 1);
    bl_fill_normal_(ps.entries[0].tensor->grad, &r, 0, 1);
    bl_fill_normal_(ps.entries[1].tensor->grad, &r, 0, 1);
    int64_t n = bl_numel(ps.entries[0].tensor);
    double *p0 = malloc((size_t)n * sizeof *p0);
    for (int64_t i = 0; i < n; i++) p0[i] = bl_get_flat(ps.entries[0].tensor, i);
    bl_optimizer opt;
    CHECK(bl_optimizer_init(&opt, &ps, bl_adamw_config(0.01, 0.1)) == BL_OK);
    CHECK(bl_optimizer_step(&opt) == BL_OK);
    double worst = 0;
    for (int64_t i = 0; i < n; i++) {
        double g = bl_get_flat(ps.entries[0].tensor->grad, i);
        /* first Adam step: m_hat = g, v_hat = g^2, so the update is lr * sign(g) (up to eps) */
        double want = p0[i] * (1 - 0.01 * 0.1) - 0.01 * g / (fabs(g) + 1e-8);
        double d = fabs(bl_get_flat(ps.entries[0].tensor, i) - want);
        if (!(d <= worst)) worst = d;
    }
    CHECK(worst < 1e-6, "worst %g", worst);
    bl_optimizer_free(&opt);
    free(p0);
    bl_params_free(&ps);
}

static void test_invalid_configs(void) {
    bl_params ps;
    bl_params_init(&ps);
    bl_params_add(&ps, "w", BL_SHAPE(2));
    bl_optimizer opt;
    CHECK(bl_optimizer_init(&opt, &ps, bl_sgd_config(0.1, 0, 0)) == BL_ERR);
    CHECK(strstr(bl_last_error(), "finalized"));
    bl_clear_error();
    CHECK(bl_params_finalize(&ps) == BL_OK);
    bl_optim_config c = bl_sgd_config(0.1, 0.9, 0);
    c.nesterov = true;
    c.dampening = 0.1;
    CHECK(bl_optimizer_init(&opt, &ps, c) == BL_ERR);
    CHECK(strstr(bl_last_error(), "nesterov"));
    bl_clear_error();
    CHECK(bl_optimizer_init(&opt, &ps, bl_sgd_config(-1, 0, 0)) == BL_ERR);
    CHECK(strstr(bl_last_error(), "learning rate"));
    bl_clear_error();
    c = bl_adam_config(0.1, 0);
    c.beta2 = 1.0;
    CHECK(bl_optimizer_init(&opt, &ps, c) == BL_ERR);
    CHECK(strstr(bl_last_error(), "beta2"));
    bl_clear_error();
    CHECK(bl_optimizer_init(&opt, &ps, bl_adam_config(0.1, 0)) == BL_OK);
    opt.cfg.lr = NAN;
    CHECK(bl_optimizer_step(&opt) == BL_ERR);
    CHECK(strstr(bl_last_error(), "learning rate"));
    bl_clear_error();
    bl_optimizer_free(&opt);
    CHECK(bl_optimizer_init(&opt, &ps, bl_sgd_config(0.1, 0, 0)) == BL_OK);
    opt.cfg.momentum = 0.9;
    CHECK(bl_optimizer_step(&opt) == BL_ERR);
    CHECK(strstr(bl_last_error(), "momentum"));
    bl_clear_error();
    bl_optimizer_free(&opt);
    bl_params_free(&ps);
}

/* Saving the state mid-run and resuming in a fresh optimizer continues the same trajectory. */
static void test_state_save_resume(void) {
    const char *path = temp_path(0, "state.safetensors"), *params_path = temp_path(1, "params.safetensors");
    bl_optim_kind kinds[2] = {BL_SGD, BL_ADAM};
    for (int k = 0; k < 2; k++) {
        bl_params a, b;
        make_store(&a, 3);
        make_store(&b, 3);
        bl_optim_config c = kinds[k] == BL_SGD ? bl_sgd_config(0.1, 0.9, 1e-3) : bl_adam_config(0.01, 1e-3);
        bl_optimizer oa, ob;
        CHECK(bl_optimizer_init(&oa, &a, c) == BL_OK);
        CHECK(bl_optimizer_init(&ob, &b, c) == BL_OK);
        for (int s = 0; s < 3; s++) {
            set_grads(&a, s);
            CHECK(bl_optimizer_step(&oa) == BL_OK);
        }
        CHECK(bl_optimizer_save(&oa, path) == BL_OK);
        CHECK(bl_params_save(&a, params_path, NULL) == BL_OK);
        CHECK(bl_params_load(&b, params_path, true) == BL_OK);
        CHECK(bl_optimizer_load(&ob, path) == BL_OK);
        CHECK(ob.step == 3);
        for (int s = 3; s < 6; s++) {
            set_grads(&a, s);
            set_grads(&b, s);
            CHECK(bl_optimizer_step(&oa) == BL_OK);
            CHECK(bl_optimizer_step(&ob) == BL_OK);
        }
        CHECK(memcmp(a.data, b.data, a.numel * sizeof(float)) == 0, "kind %d: resumed run differs", k);
        /* state of another kind is refused */
        bl_optimizer other;
        CHECK(bl_optimizer_init(&other, &b, kinds[k] == BL_SGD ? bl_adam_config(0.1, 0) : bl_sgd_config(0.1, 0.9, 0)) ==
              BL_OK);
        CHECK(bl_optimizer_load(&other, path) == BL_ERR);
        CHECK(strstr(bl_last_error(), path));
        bl_clear_error();
        bl_optimizer_free(&other);
        bl_optimizer_free(&oa);
        bl_optimizer_free(&ob);
        bl_params_free(&a);
        bl_params_free(&b);
    }
}

/* ---- schedules: values from torch.optim.lr_scheduler at the same epochs ---- */

static void test_schedule_cosine(void) {
    const double torch_lr[8] = {0.40000000000000002, 0.38068892924097175, 0.32658051136245309, 0.24839158212148135,
                                0.16160841787851873, 0.083419488637546974, 0.029311070759028286, 0.01};
    bl_schedule s = bl_schedule_cosine(0.4, 7, 0.01);
    for (int e = 0; e < 8; e++) CHECK_CLOSE(bl_schedule_lr(&s, e), torch_lr[e], 1e-12);
    CHECK_CLOSE(bl_schedule_lr(&s, 9), 0.01, 1e-12); /* held at eta_min after t_max */
    CHECK_CLOSE(bl_schedule_lr(&s, 3.5), 0.01 + 0.39 * (1 + cos(M_PI * 0.5)) / 2, 1e-12);
}

static void test_schedule_multistep_and_warmup(void) {
    const double torch_multistep[7] = {0.4, 0.4, 0.04, 0.04, 0.04, 0.004, 0.004};
    /* ChainedScheduler([LinearLR(start_factor=0.25, total_iters=3), MultiStepLR([2, 5], 0.1)]) */
    const double torch_chained[7] = {0.1, 0.2, 0.03, 0.04, 0.04, 0.004, 0.004};
    const double milestones[2] = {2, 5};
    bl_schedule s = bl_schedule_multistep(0.4, 2, milestones, 0.1);
    bl_schedule w = bl_schedule_with_warmup(s, 3, 0.25);
    for (int e = 0; e < 7; e++) {
        CHECK_CLOSE(bl_schedule_lr(&s, e), torch_multistep[e], 1e-12);
        CHECK_CLOSE(bl_schedule_lr(&w, e), torch_chained[e], 1e-12);
    }
    CHECK_CLOSE(bl_schedule_lr(&s, 1.999), 0.4, 1e-12);
    CHECK_CLOSE(bl_schedule_lr(&w, 0.5), 0.4 * (0.25 + 0.75 * 0.5 / 3), 1e-12);
    bl_schedule c = bl_schedule_with_warmup(bl_schedule_cosine(1.0, 10, 0.1), 2, 0.1);
    CHECK_CLOSE(bl_schedule_lr(&c, 0), 0.1, 1e-12);
    CHECK_CLOSE(bl_schedule_lr(&c, 1), (0.1 + 0.9 * (1 + cos(M_PI / 10)) / 2) * 0.55, 1e-12);
    CHECK_CLOSE(bl_schedule_lr(&c, 2), 0.1 + 0.9 * (1 + cos(M_PI / 5)) / 2, 1e-12);
    bl_schedule k = bl_schedule_constant(0.3);
    CHECK_CLOSE(bl_schedule_lr(&k, 123), 0.3, 1e-15);
}

static void test_schedule_invalid(void) {
    const double bad[2] = {5, 2};
    bl_schedule s = bl_schedule_multistep(0.1, 2, bad, 0.1);
    CHECK(isnan(bl_schedule_lr(&s, 1)));
    CHECK(strstr(bl_last_error(), "milestones must increase"));
    bl_clear_error();
    s = bl_schedule_cosine(0.1, 0, 0);
    CHECK(isnan(bl_schedule_lr(&s, 1)));
    CHECK(strstr(bl_last_error(), "t_max"));
    bl_clear_error();
    s = bl_schedule_constant(0.1);
    CHECK(isnan(bl_schedule_lr(&s, -1)));
    bl_clear_error();
}

/* ---- clipping ---- */

static double grads_norm(const bl_params *ps, double p) {
    double acc = 0;
    for (int e = 0; e < ps->count; e++) {
        if (!ps->entries[e].trainable) continue;
        const bl_tensor *g = ps->entries[e].tensor->grad;
        for (int64_t i = 0; i < bl_numel(g); i++) {
            double x = fabs(bl_get_flat(g, i));
            if (isinf(p)) acc = x > acc ? x : acc;
            else acc += pow(x, p);
        }
    }
    return isinf(p) ? acc : pow(acc, 1 / p);
}

static void test_clip_grad_norm(void) {
    bl_params ps;
    make_store(&ps, 9);
    const double norms[4] = {2, 1, 3, INFINITY};
    for (int k = 0; k < 4; k++) {
        double p = norms[k];
        set_grads(&ps, k);
        double want = grads_norm(&ps, p);
        float before = ((float *)ps.entries[2].tensor->grad->data)[4];
        /* a large limit leaves gradients alone */
        CHECK_CLOSE(bl_clip_grad_norm(&ps, want * 2, p), want, 1e-9);
        CHECK(((float *)ps.entries[2].tensor->grad->data)[4] == before);
        /* a small one scales them to the limit */
        double max_norm = want / 3;
        CHECK_CLOSE(bl_clip_grad_norm(&ps, max_norm, p), want, 1e-9);
        CHECK_CLOSE(grads_norm(&ps, p), max_norm * want / (want + 1e-6), 1e-6);
        CHECK_CLOSE(((float *)ps.entries[2].tensor->grad->data)[4], before * max_norm / (want + 1e-6), 1e-6);
    }
    /* with tiny gradients the 1e-6 added to the norm matters, as in torch */
    bl_params_zero_grad(&ps);
    float *g0 = ps.entries[0].tensor->grad->data;
    g0[3] = 1e-6f;
    CHECK_CLOSE(bl_clip_grad_norm(&ps, 1e-7, 2), 1e-6, 1e-9);
    CHECK(fabs(g0[3] / 5e-8 - 1) < 1e-5, "clipped to %g, expected 5e-8", g0[3]);
    /* torch's semantics for a non-finite norm: returned as is, gradients poisoned */
    set_grads(&ps, 0);
    ((float *)ps.entries[0].tensor->grad->data)[1] = NAN;
    CHECK(isnan(bl_clip_grad_norm(&ps, 1.0, 2)));
    CHECK(isnan(bl_clip_grad_norm(&ps, 1.0, INFINITY)));
    CHECK(isnan(bl_clip_grad_norm(&ps, 1.0, 0)));
    CHECK(strstr(bl_last_error(), "norm_type"));
    bl_clear_error();
    bl_params_free(&ps);
}

/* ---- EMA ---- */

static void test_ema(void) {
    bl_params model, ema;
    make_store(&model, 11);
    CHECK(bl_ema_init(&ema, &model) == BL_OK);
    CHECK(memcmp(ema.data, model.data, model.numel * sizeof(float)) == 0);
    CHECK(!ema.entries[0].tensor->requires_grad);
    CHECK(ema.entries[1].no_weight_decay && !ema.entries[0].no_weight_decay);
    reference R;
    ref_init(&R, &model);
    bl_rng r = bl_rng_make(4, 4);
    const double decay = 0.9;
    for (int s = 0; s < 4; s++) {
        /* the model moves; its buffers change too */
        for (int e = 0; e < model.count; e++)
            if (model.entries[e].tensor->dtype == BL_F32) bl_fill_normal_(model.entries[e].tensor, &r, 0, 1);
        bl_fill_(bl_params_find(&model, "bn.num_batches_tracked"), s + 1);
        CHECK(bl_ema_update(&ema, &model, decay) == BL_OK);
        for (int e = 0; e < model.count; e++) {
            const bl_tensor *w = model.entries[e].tensor;
            for (int64_t i = 0; i < R.n[e]; i++)
                R.p[e][i] = R.trainable[e] ? decay * R.p[e][i] + (1 - decay) * bl_get_flat(w, i) : bl_get_flat(w, i);
        }
        CHECK(ref_max_diff(&R, &ema) < 1e-6, "step %d: %g", s, ref_max_diff(&R, &ema));
    }
    CHECK(bl_get_flat(bl_params_find(&ema, "bn.num_batches_tracked"), 0) == 4);
    CHECK(!bl_last_error()[0]);
    /* swap twice: values exchanged, then restored */
    float m0 = model.data[0], e0 = ema.data[0];
    double rm = bl_get_flat(bl_params_find(&model, "bn.running_mean"), 2);
    bl_fill_(bl_params_find(&ema, "bn.running_mean"), 5);
    CHECK(bl_ema_swap(&ema, &model) == BL_OK);
    CHECK(model.data[0] == e0 && ema.data[0] == m0);
    CHECK(bl_get_flat(bl_params_find(&model, "bn.running_mean"), 2) == 5);
    CHECK(bl_ema_swap(&ema, &model) == BL_OK);
    CHECK(model.data[0] == m0 && ema.data[0] == e0);
    CHECK(bl_get_flat(bl_params_find(&model, "bn.running_mean"), 2) == rm);
    /* a store of another layout is refused */
    bl_params other;
    bl_params_init(&other);
    bl_params_add(&other, "conv.weight", BL_SHAPE(3, 5));
    CHECK(bl_params_finalize(&other) == BL_OK);
    CHECK(bl_ema_update(&other, &model, 0.9) == BL_ERR);
    CHECK(strstr(bl_last_error(), "differ"));
    bl_clear_error();
    CHECK(bl_ema_update(&ema, &model, 1.5) == BL_ERR);
    bl_clear_error();
    bl_params_free(&other);
    ref_free(&R);
    bl_params_free(&ema);
    bl_params_free(&model);
}

TEST_MAIN(TEST(test_sgd_plain), TEST(test_sgd_momentum_dampening_decay), TEST(test_sgd_nesterov_skip_decay),
          TEST(test_adam), TEST(test_adam_defaults_no_decay), TEST(test_adamw_skip_decay),
          TEST(test_adamw_decays_everything_by_default), TEST(test_large_store_parallel_step),
          TEST(test_invalid_configs), TEST(test_state_save_resume), TEST(test_schedule_cosine),
          TEST(test_schedule_multistep_and_warmup), TEST(test_schedule_invalid), TEST(test_clip_grad_norm),
          TEST(test_ema))
