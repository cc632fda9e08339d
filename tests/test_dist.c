/* Data-parallel training over MPI, run as `mpirun -np 2 test_dist` (CMake registers it so when it
 * finds MPI). Each case compares a run of the two processes, with half the batch each, against
 * the same run in one process (run by the first process alone, in solo mode), or checks that a
 * failure on one process stops both with its message instead of a hang (ctest's timeout is the
 * hang detector):
 *  - the same weights as one process after N steps: ConvNet-3 (instance norm, nothing depends on
 *    the batch split), a last batch that splits unevenly, and ResNet-32 with synchronized batch
 *    norm; with per-process batch norm ResNet-32 differs, by the documented amount;
 *  - a batch size the processes do not divide, a bad file on one process, a NaN loss on one
 *    process in the middle of training, a failure outside the step on one process, and a recipe
 *    that lets the processes' state drift apart: every process fails, naming the culprit;
 *  - resuming with one process a run that two processes checkpointed, and the reverse.
 *
 * Tolerances: float sums over a batch come in another order when each process sums its half
 * (rounding ~1e-7 relative per step), and ReLU / max-pool networks amplify that by flipping the
 * odd unit near a kink; measured here, 1 step stays under 1e-7 and 4 steps under 1e-6, so 1e-5
 * and 1e-4 leave room while a real fault (a gradient not averaged, a sample taken twice, another
 * batch-norm statistic) is off by 1e-3 and more after one step. */
#include "test.h"

#include "../methods/recipes.h"
#include "ballast/dist.h"
#include "ballast/train.h"
#include "train/train_internal.h"

#include <unistd.h>

static char temp_root[256];
static int rank, world;

/* ---- runs ------------------------------------------------------------------------------------ */

/* Overrides ("section.key=value"), NULL-terminated. */
#define SET(...) ((const char *const[]){__VA_ARGS__, NULL})
#define NO_SET NULL

/* A small run in temp_root/tag: the synthetic dataset (4 classes, train_per_class each, 2 of them
 * for validation), a batch of 16 split over the processes, and the overrides. */
static bl_run *make_run(const char *tag, const char *model, const char *method, int train_per_class,
                        const char *const *set, int epochs, bool resume) {
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "dataset: {name: synthetic, split_seed: 1, val_per_class: 2,\n"
             "          synthetic: {classes: 4, train_per_class: %d, test_per_class: 4, size: 8, noise: 2}}\n"
             "model: {name: %s, width: 8, depth: 2}\n"
             "train: {epochs: %d, batch_size: 16, lr: 0.02, schedule: constant, eval_every: 1,\n"
             "        checkpoint_every: 1, log_every: 1, threads: 1, seed: 5}\n"
             "method: {name: %s}\n"
             "output: {dir: %s/%s}\n",
             train_per_class, model, epochs, method, temp_root, tag);
    bl_config *config = bl_config_parse(yaml, tag);
    for (int i = 0; config && set && set[i]; i++)
        if (bl_config_set(config, set[i]) != BL_OK) {
            bl_config_free(config);
            config = NULL;
        }
    if (!config && bl_dist_size() > 1) bl_dist_agree(BL_ERR); /* as bl_run_create would */
    return config ? bl_run_create(config, &(bl_run_opts){.quiet = true, .resume = resume}) : NULL;
}

/* Every F32 tensor (parameters and buffers) of the run's model "model", concatenated: malloc'ed,
 * *n values. */
static double *model_values(const bl_run *run, size_t *n) {
    const bl_params *ps = &bl_run_model(run, "model")->params;
    size_t total = 0;
    for (int i = 0; i < ps->count; i++)
        if (ps->entries[i].tensor->dtype == BL_F32) total += (size_t)bl_numel(ps->entries[i].tensor);
    double *v = malloc((total ? total : 1) * sizeof *v);
    size_t k = 0;
    for (int i = 0; v && i < ps->count; i++)
        for (int64_t j = 0; ps->entries[i].tensor->dtype == BL_F32 && j < bl_numel(ps->entries[i].tensor); j++)
            v[k++] = ((const float *)ps->entries[i].tensor->data)[j];
    *n = total;
    return v;
}

/* The model's values before training, per model name (every run of this file with the same model
 * starts from the same initialization: same seed), taken from the first run of each. */
static struct {
    const char *model;
    double *values;
    size_t n;
} initial[4];

static const double *initial_values(const char *model, size_t *n) {
    for (size_t i = 0; i < sizeof initial / sizeof initial[0] && initial[i].model; i++)
        if (strcmp(initial[i].model, model) == 0) {
            *n = initial[i].n;
            return initial[i].values;
        }
    return NULL;
}

static void remember_initial(const bl_run *run, const char *model) {
    size_t n, i = 0;
    if (!run || initial_values(model, &n)) return;
    while (i < sizeof initial / sizeof initial[0] - 1 && initial[i].model) i++;
    initial[i].model = model;
    initial[i].values = model_values(run, &initial[i].n);
}

/* The run trained by the first process alone (NULL on the others, which wait meanwhile). */
static bl_run *solo_run(const char *tag, const char *model, int train_per_class, const char *const *set, int epochs,
                        bool resume) {
    bl_run *run = NULL;
    if (rank == 0) {
        bl_dist_set_solo(true);
        run = make_run(tag, model, "ce", train_per_class, set, epochs, resume);
        if (!resume) remember_initial(run, model);
        CHECK(run && bl_run_train(run) == BL_OK, "%s in one process", tag);
        bl_dist_set_solo(false);
    }
    bl_dist_barrier();
    return run;
}

static bl_run *parallel_run(const char *tag, const char *model, int train_per_class, const char *const *set,
                            int epochs, bool resume) {
    bl_run *run = make_run(tag, model, "ce", train_per_class, set, epochs, resume);
    CHECK(run && bl_run_train(run) == BL_OK, "%s in %d processes", tag, world);
    return run;
}

/* How far the weights of `parallel` are from those of `solo`, relative to how far training moved
 * them: ||w_parallel - w_solo|| / ||w_solo - w_initial|| (2-norms over every F32 parameter and
 * buffer of the model), and the largest elementwise |difference| into *max_abs. */
static double update_error(const bl_run *solo, const bl_run *parallel, double *max_abs) {
    size_t na, nb, n0 = 0;
    const double *w0 = initial_values(bl_run_model(solo, "model")->name, &n0);
    double *a = model_values(parallel, &na), *b = model_values(solo, &nb), diff = 0, moved = 0;
    *max_abs = 0;
    if (!w0 || !a || !b || na != nb || nb != n0) {
        free(a);
        free(b);
        return INFINITY;
    }
    for (size_t i = 0; i < na; i++) {
        diff += (a[i] - b[i]) * (a[i] - b[i]);
        moved += (b[i] - w0[i]) * (b[i] - w0[i]);
        if (!(fabs(a[i] - b[i]) <= *max_abs)) *max_abs = fabs(a[i] - b[i]);
    }
    free(a);
    free(b);
    return moved > 0 ? sqrt(diff / moved) : INFINITY;
}

/* On the first process: the parallel run's update within `tol` of the single process's (see
 * update_error); returns the error (0 elsewhere). */
static double compare(const char *what, const bl_run *solo, const bl_run *parallel, double tol) {
    if (rank != 0 || !solo || !parallel) return 0;
    double max_abs, e = update_error(solo, parallel, &max_abs);
    CHECK(e <= tol, "%s: %d processes differ from one by %.3g of the update (largest difference %.3g), tolerance %g",
          what, world, e, max_abs, tol);
    printf("     %s: %.3g of the update (largest difference %.3g)\n", what, e, max_abs);
    return e;
}

/* ---- same weights as one process --------------------------------------------------------------- */

static void test_same_weights_convnet(void) {
    /* 4 classes of 4 training images (2 more per class go to validation): one batch of 16 */
    bl_run *solo = solo_run("convnet_1step_p1", "convnet3", 4 + 2, NO_SET, 1, false);
    bl_run *parallel = parallel_run("convnet_1step_p2", "convnet3", 4 + 2, NO_SET, 1, false);
    CHECK(!parallel || parallel->step == 1, "one step expected, got %lld", parallel ? (long long)parallel->step : -1);
    compare("convnet3, 1 step", solo, parallel, 1e-5);
    bl_run_free(solo);
    bl_run_free(parallel);
    solo = solo_run("convnet_p1", "convnet3", 16 + 2, NO_SET, 1, false);
    parallel = parallel_run("convnet_p2", "convnet3", 16 + 2, NO_SET, 1, false);
    CHECK(!parallel || parallel->step == 4, "four steps expected");
    compare("convnet3, 4 steps", solo, parallel, 1e-4);
    if (parallel && rank == 0) {
        /* the mean loss of the epoch is the whole batch's, as in one process */
        char path[600];
        snprintf(path, sizeof path, "%s/convnet_p2/log.jsonl", temp_root);
        char *log = bl_file_read(path, NULL);
        CHECK(log && strstr(log, "\"processes\":2") && strstr(log, "\"allreduce_seconds\":"), "%s", path);
        free(log);
    }
    bl_run_free(solo);
    bl_run_free(parallel);
}

static void test_uneven_last_batch(void) {
    /* A long-tailed subset of 13, 10, 8 and 6 images (imbalance 2, no validation split) is 37
     * images: batches of 10, 10, 10 and a last one of 7 without drop_last, which the processes
     * split 3 + 4, so each one's gradient must count by its share. */
    const char *const *set = SET("dataset.imbalance=2", "dataset.val_per_class=0", "train.batch_size=10",
                                 "train.drop_last=false");
    bl_run *solo = solo_run("uneven_p1", "convnet3", 13, set, 1, false);
    bl_run *parallel = parallel_run("uneven_p2", "convnet3", 13, set, 1, false);
    CHECK(!parallel || (parallel->step == 4 && bl_run_split_size(parallel, "train") == 37),
          "four steps over 37 images expected");
    compare("uneven last batch", solo, parallel, 1e-4);
    bl_run_free(solo);
    bl_run_free(parallel);
    /* with dropout, whose stream each process advances by its own share: the processes still
     * agree at the checkpoints (which compare every stream) */
    parallel = parallel_run("uneven_dropout_p2", "convnet3", 13,
                            SET("dataset.imbalance=2", "dataset.val_per_class=0", "train.batch_size=10",
                                "train.drop_last=false", "model.drop_rate=0.3"),
                            2, false);
    bl_run_free(parallel);
}

static void test_sync_batch_norm(void) {
    bl_run *solo = solo_run("bn_p1", "resnet32", 16 + 2, NO_SET, 1, false);
    bl_run *sync = parallel_run("bn_sync_p2", "resnet32", 16 + 2, SET("train.sync_bn=true"), 1, false);
    bl_run *own = parallel_run("bn_own_p2", "resnet32", 16 + 2, NO_SET, 1, false);
    /* ReLU flips are likelier here (2x2 maps in the last stage, where one unit is a quarter of a
     * channel's gradient): 1e-3 of the update, against 0.1 and more for per-process statistics */
    compare("resnet32, synchronized batch norm, 4 steps", solo, sync, 1e-3);
    if (rank == 0 && solo && own) {
        /* Per-process statistics normalize each half of the batch on its own: the weights move
         * elsewhere (the documented difference; PyTorch DDP without SyncBatchNorm does the same). */
        double max_abs, e = update_error(solo, own, &max_abs);
        CHECK(e > 0.05, "per-process batch norm should differ from one process, differs by %.3g of the update", e);
        printf("     resnet32, per-process batch norm, 4 steps: %.3g of the update (largest difference %.3g)\n", e,
               max_abs);
    }
    bl_run_free(solo);
    bl_run_free(sync);
    bl_run_free(own);
}

/* ---- synchronized batch norm, the op alone ------------------------------------------------------ */

/* A leaf copy of rows [r0, r1) of t (all of it for r0 = 0, r1 = N). */
static bl_tensor *leaf_rows(bl_tensor *t, int64_t r0, int64_t r1) {
    bl_tensor *rows = bl_contiguous(bl_slice(t, 0, r0, r1, 1));
    bl_tensor *leaf = rows ? test_copy(rows) : NULL;
    if (leaf) leaf->requires_grad = true;
    return leaf;
}

/* Batch norm fused with a residual and a ReLU over x (N, C, H, W), in one process over the whole
 * batch and synchronized over this process's half: the same output and input gradients for the
 * half, and weight and bias gradients that add up over the processes to the whole batch's. */
static void check_sync_op(int64_t N, int64_t C, int64_t H, bool channels_last) {
    const int64_t shape[4] = {N, C, H, H};
    bl_tensor *x = test_randn(BL_F32, 4, shape, 11), *g = test_randn(BL_F32, 4, shape, 12);
    bl_tensor *res = test_randn(BL_F32, 4, shape, 13), *w0 = test_randn(BL_F32, 1, &C, 14);
    bl_tensor *b0 = test_randn(BL_F32, 1, &C, 15);
    /* an offset, as activations have, so that the variance is not E[x^2] */
    x = bl_add_scalar(x, 3.0);
    const int64_t r0 = N / 2 * rank, r1 = N / 2 * (rank + 1);
    bl_tensor *out[2], *xs[2], *rs[2], *ws[2], *bs[2], *means[2], *vars[2];
    for (int k = 0; k < 2; k++) { /* k = 0: one process, the whole batch; 1: synchronized halves */
        const int64_t a = k ? r0 : 0, z = k ? r1 : N;
        xs[k] = leaf_rows(x, a, z);
        rs[k] = leaf_rows(res, a, z);
        ws[k] = leaf_rows(w0, 0, C);
        bs[k] = leaf_rows(b0, 0, C);
        means[k] = bl_zeros(BL_F32, 1, &C);
        vars[k] = bl_ones(BL_F32, 1, &C);
        bl_tensor *in = channels_last ? bl_channels_last(xs[k]) : xs[k];
        bool was = bl_batch_norm_set_sync(k == 1);
        out[k] = bl_batch_norm_act(in, ws[k], bs[k], means[k], vars[k], rs[k], true, true, 0.1, 1e-5);
        bl_tensor *gk = bl_contiguous(bl_slice(g, 0, a, z, 1));
        CHECK(out[k] && bl_backward(bl_sum(bl_mul(out[k], gk))) == BL_OK, "%s", bl_last_error());
        bl_batch_norm_set_sync(was);
    }
    if (!out[0] || !out[1]) return;
    const double tol = 1e-5;
    CHECK(test_max_rel_diff(out[1], bl_slice(out[0], 0, r0, r1, 1)) < tol, "y");
    CHECK(test_max_rel_diff(xs[1]->grad, bl_slice(xs[0]->grad, 0, r0, r1, 1)) < tol, "dx: %g",
          test_max_rel_diff(xs[1]->grad, bl_slice(xs[0]->grad, 0, r0, r1, 1)));
    CHECK(test_max_rel_diff(rs[1]->grad, bl_slice(rs[0]->grad, 0, r0, r1, 1)) < tol, "dresidual");
    CHECK(test_max_rel_diff(means[1], means[0]) < tol && test_max_rel_diff(vars[1], vars[0]) < tol, "running stats");
    bl_tensor *dw = test_copy(ws[1]->grad), *db = test_copy(bs[1]->grad);
    bl_dist_allreduce_f32(dw->data, (size_t)C, BL_DIST_SUM);
    bl_dist_allreduce_f32(db->data, (size_t)C, BL_DIST_SUM);
    CHECK(test_max_rel_diff(dw, ws[0]->grad) < tol && test_max_rel_diff(db, bs[0]->grad) < tol, "dweight, dbias");
}

static void test_sync_batch_norm_op(void) {
    check_sync_op(8, 3, 5, false);  /* small maps: the column kernels in one process */
    check_sync_op(4, 2, 12, false); /* large maps: channel by channel */
    check_sync_op(8, 5, 4, true);   /* channels last */
}

/* ---- failures ---------------------------------------------------------------------------------- */

/* Every process failed (NULL run / BL_ERR) with a message naming `culprit` and `detail`. */
static void check_everyone_failed(bool failed, const char *what, const char *culprit, const char *detail) {
    CHECK(failed, "%s: should fail on every process", what);
    CHECK(strstr(bl_last_error(), culprit) && strstr(bl_last_error(), detail), "%s: message '%s' should name '%s' and '%s'",
          what, bl_last_error(), culprit, detail);
    bl_clear_error();
    bl_dist_clear_failure();
}

static void test_batch_not_divisible(void) {
    bl_run *run = make_run("indivisible", "convnet3", "ce", 10, SET("train.batch_size=15"), 1, false);
    check_everyone_failed(run == NULL, "batch 15 over 2 processes", "train.batch_size 15", "divisible");
    bl_run_free(run);
}

static void test_bad_file_on_one_rank(void) {
    /* The second process's machine holds a corrupt copy of MNIST (its config names that copy; the
     * first process's names the synthetic data): building the run fails there, and everywhere. */
    char root[600];
    snprintf(root, sizeof root, "%s/rank1_data/mnist", temp_root);
    if (rank == 0) {
        char command[1600];
        snprintf(command, sizeof command,
                 "mkdir -p '%s' && cd '%s' && for f in train-images-idx3-ubyte train-labels-idx1-ubyte "
                 "t10k-images-idx3-ubyte t10k-labels-idx1-ubyte; do printf 'not idx' > $f; done",
                 root, root);
        CHECK(system(command) == 0, "%s", command);
    }
    bl_dist_barrier();
    bl_run *run = NULL;
    if (rank == 1) {
        char yaml[1024];
        snprintf(yaml, sizeof yaml,
                 "dataset: {name: mnist, root: \"%s\"}\nmodel: {name: convnet3, width: 8, depth: 2}\n"
                 "train: {epochs: 1, batch_size: 16, threads: 1}\noutput: {dir: %s/bad_file}\n",
                 root, temp_root);
        bl_config *config = bl_config_parse(yaml, "bad_file");
        CHECK(config != NULL);
        run = config ? bl_run_create(config, &(bl_run_opts){.quiet = true}) : NULL;
    } else {
        run = make_run("bad_file", "convnet3", "ce", 10, NO_SET, 1, false);
    }
    check_everyone_failed(run == NULL, "a corrupt file on process 1", "rank 1", "train-images-idx3-ubyte");
    bl_run_free(run);
}

/* ce, except that on process 1 the loss of the third step is NaN. */
typedef struct {
    bl_model *model;
} faulty;

static int faulty_setup(bl_run *run, void *state) {
    faulty *s = state;
    s->model = bl_run_add_model(run, "model", NULL);
    return s->model && bl_run_add_optimizer(run, "model", &s->model->params, NULL, NULL) ? BL_OK : BL_ERR;
}

static bl_tensor *faulty_predict(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((faulty *)state)->model, bl_batch_get(b, "x"));
}

static int nan_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    faulty *s = state;
    bl_tensor *l = bl_batch_cross_entropy(b, bl_model_forward(s->model, bl_batch_get(b, "x")), bl_ce_args_default());
    if (bl_dist_rank() == 1 && run->step == 2) l = bl_mul_scalar(l, NAN);
    return bl_run_backward_step(run, l, loss);
}

static const bl_recipe nan_recipe = {
    .name = "test_nan_on_rank1",
    .summary = "ce with a NaN loss on process 1 at step 3 (test only)",
    .state_size = sizeof(faulty),
    .setup = faulty_setup,
    .step = nan_step,
    .predict = faulty_predict,
};

static int plain_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    faulty *s = state;
    bl_tensor *logits = bl_model_forward(s->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, bl_ce_args_default()), loss);
}

/* At the start of the second epoch, process 1 reads a file its machine does not have. */
static int missing_file_epoch(bl_run *run, void *state, int epoch) {
    if (bl_dist_rank() != 1 || epoch != 1) return BL_OK;
    char path[600];
    snprintf(path, sizeof path, "%s/only_on_rank0.txt", temp_root);
    char *text = bl_file_read(path, NULL);
    free(text);
    return text ? BL_OK : BL_ERR;
}

static const bl_recipe missing_file_recipe = {
    .name = "test_missing_file_on_rank1",
    .summary = "ce whose epoch hook fails on process 1 in the second epoch (test only)",
    .state_size = sizeof(faulty),
    .setup = faulty_setup,
    .step = plain_step,
    .predict = faulty_predict,
    .epoch_begin = missing_file_epoch,
};

/* A store that each process changes from its own share of the batch and never reconciles. */
typedef struct {
    bl_model *model;
    bl_tensor *seen;
} drifting;

static int drift_setup(bl_run *run, void *state) {
    drifting *s = state;
    s->model = bl_run_add_model(run, "model", NULL);
    bl_params *store = bl_run_add_params(run, "seen");
    s->seen = store ? bl_params_add_buffer(store, "seen", BL_F32, 1, (int64_t[]){bl_run_split_size(run, "train")})
                    : NULL;
    return s->model && s->seen && bl_run_add_optimizer(run, "model", &s->model->params, NULL, NULL) ? BL_OK : BL_ERR;
}

static int drift_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    drifting *s = state;
    const bl_tensor *index = bl_batch_get(b, "index");
    for (int64_t i = 0; i < bl_numel(index); i++) ((float *)s->seen->data)[((const int64_t *)index->data)[i]] += 1;
    bl_tensor *logits = bl_model_forward(s->model, bl_batch_get(b, "x"));
    return bl_run_backward_step(run, bl_batch_cross_entropy(b, logits, bl_ce_args_default()), loss);
}

static bl_tensor *drift_predict(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((drifting *)state)->model, bl_batch_get(b, "x"));
}

static const bl_recipe drift_recipe = {
    .name = "test_drifting_store",
    .summary = "a per-sample buffer each process updates from its own samples only (test only)",
    .state_size = sizeof(drifting),
    .setup = drift_setup,
    .step = drift_step,
    .predict = drift_predict,
};

static void test_nan_on_one_rank(void) {
    bl_run *run = make_run("nan", "convnet3", "test_nan_on_rank1", 18, NO_SET, 1, false);
    CHECK(run != NULL);
    int rc = run ? bl_run_train(run) : BL_ERR;
    check_everyone_failed(rc != BL_OK, "a NaN loss on process 1", "rank 1", "loss is nan at epoch 1, step 3");
    if (run) CHECK(run->step == 2, "training stopped after step %lld, expected 2", (long long)run->step);
    if (rank == 0) {
        char path[600];
        snprintf(path, sizeof path, "%s/nan/log.jsonl", temp_root);
        char *log = bl_file_read(path, NULL);
        CHECK(log && strstr(log, "{\"error\":\"rank 1: "), "the log should record the error: %s", log ? log : "");
        free(log);
    }
    bl_run_free(run);
}

static void test_failure_outside_a_step(void) {
    bl_run *run = make_run("missing_file", "convnet3", "test_missing_file_on_rank1", 10, NO_SET, 2, false);
    CHECK(run != NULL);
    int rc = run ? bl_run_train(run) : BL_ERR;
    check_everyone_failed(rc != BL_OK, "a missing file on process 1", "rank 1", "only_on_rank0.txt");
    if (run) CHECK(run->epoch == 1, "training stopped at epoch %d, expected 1", run->epoch);
    bl_run_free(run);
}

static void test_drifting_state_is_caught(void) {
    bl_run *run = make_run("drift", "convnet3", "test_drifting_store", 10, NO_SET, 1, false);
    CHECK(run != NULL);
    int rc = run ? bl_run_train(run) : BL_ERR;
    check_everyone_failed(rc != BL_OK, "a store that differs between the processes", "'seen' seen",
                          "differs between the processes");
    bl_run_free(run);
}

/* ---- resume with another number of processes ---------------------------------------------------- */

/* On the first process: the directory a run killed after `cut` epochs leaves (config, split, that
 * epoch's checkpoint and the pointer to it), copied from run `from` as run `to`. */
static void crashed_copy(const char *from, const char *to, int cut) {
    if (rank == 0) {
        char src[600], dst[600], command[8192];
        snprintf(src, sizeof src, "%s/%s", temp_root, from);
        snprintf(dst, sizeof dst, "%s/%s", temp_root, to);
        snprintf(command, sizeof command,
                 "mkdir -p '%s/checkpoints' && cp '%s'/split_*.idx '%s/' && "
                 "cp -r '%s/checkpoints/epoch_%04d' '%s/checkpoints/' && "
                 "printf '{\"latest\":\"checkpoints/epoch_%04d\"}' > '%s/checkpoint.json' && "
                 "sed 's|%s|%s|' '%s/config.yaml' > '%s/config.yaml'",
                 dst, src, dst, src, cut, dst, cut, dst, src, dst, src, dst);
        CHECK(system(command) == 0, "%s", command);
    }
    bl_dist_barrier();
}

static void test_resume_across_process_counts(void) {
    /* 2 epochs of 2 steps: straight through in one process, and in two */
    bl_run *solo = solo_run("resume_p1", "convnet3", 8 + 2, NO_SET, 2, false);
    bl_run *parallel = parallel_run("resume_p2", "convnet3", 8 + 2, NO_SET, 2, false);
    compare("2 epochs", solo, parallel, 1e-4);
    bl_run_free(parallel);
    /* two processes checkpointed epoch 1, one continues */
    crashed_copy("resume_p2", "resume_p2_then_p1", 1);
    bl_run *resumed = solo_run("resume_p2_then_p1", "convnet3", 8 + 2, NO_SET, 2, true);
    if (rank == 0) CHECK(resumed && resumed->epoch == 2 && resumed->step == 4, "the resumed run should end at epoch 2");
    compare("checkpoint of 2 processes resumed in 1", solo, resumed, 1e-4);
    bl_run_free(resumed);
    /* one process checkpointed epoch 1, two continue */
    crashed_copy("resume_p1", "resume_p1_then_p2", 1);
    resumed = parallel_run("resume_p1_then_p2", "convnet3", 8 + 2, NO_SET, 2, true);
    CHECK(resumed && resumed->epoch == 2 && resumed->step == 4, "the resumed run should end at epoch 2");
    compare("checkpoint of 1 process resumed in 2", solo, resumed, 1e-4);
    bl_run_free(resumed);
    bl_run_free(solo);
}

/* ---- the runner --------------------------------------------------------------------------------- */

int main(int argc, char **argv) {
    if (bl_dist_init(&argc, &argv) != BL_OK) {
        fprintf(stderr, "%s\n", bl_last_error());
        return 1;
    }
    rank = bl_dist_rank();
    world = bl_dist_size();
    if (world != 2) {
        fprintf(stderr, "test_dist: run it as mpirun -np 2 (got %d processes)\n", world);
        bl_dist_finalize();
        return 1;
    }
    CHECK(bl_recipes_register_builtin() == BL_OK);
    CHECK(bl_recipe_register(&nan_recipe) == BL_OK && bl_recipe_register(&missing_file_recipe) == BL_OK &&
          bl_recipe_register(&drift_recipe) == BL_OK);
    if (rank == 0) {
        snprintf(temp_root, sizeof temp_root, "/tmp/ballast_dist_XXXXXX");
        CHECK(mkdtemp(temp_root) != NULL);
    }
    bl_dist_broadcast(temp_root, sizeof temp_root, 0);
    const test_case cases[] = {
        TEST(test_same_weights_convnet),     TEST(test_uneven_last_batch),
        TEST(test_sync_batch_norm_op),       TEST(test_sync_batch_norm),
        TEST(test_batch_not_divisible),
        TEST(test_bad_file_on_one_rank),     TEST(test_nan_on_one_rank),
        TEST(test_failure_outside_a_step),   TEST(test_drifting_state_is_caught),
        TEST(test_resume_across_process_counts),
    };
    int passed = 0, failed = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int before = test_failures;
        bl_clear_error();
        bl_scope s = bl_scope_begin();
        cases[i].fn();
        bl_scope_end(s);
        /* a case fails when it failed on either process */
        double mine = test_failures > before ? 1 : 0;
        bl_dist_allreduce_f64(&mine, 1, BL_DIST_MAX);
        if (mine > 0) failed++;
        else passed++;
        if (rank == 0) printf("%s %s\n", mine > 0 ? "FAIL" : "ok  ", cases[i].name);
        fflush(stdout);
    }
    if (rank == 0) printf("%d passed, %d failed (%d processes)\n", passed, failed, world);
    bl_dist_barrier();
    if (rank == 0 && !getenv("KEEPTMP")) {
        char command[300];
        snprintf(command, sizeof command, "rm -rf '%s'", temp_root);
        CHECK(system(command) == 0);
    }
    for (size_t i = 0; i < sizeof initial / sizeof initial[0]; i++) free(initial[i].values);
    bl_arena_release_all();
    bl_dist_finalize();
    return failed ? 1 : 0;
}
