/* The trainer end to end on the generated dataset: a few epochs of a small ConvNet on a
 * long-tailed 4-class problem (the loss falls, the run directory holds what train.h promises, the
 * long-tailed counts follow the formula), resume reproducing an uninterrupted run bit for bit,
 * opening a finished run for evaluation, the second-stage mechanisms (frozen backbone, another
 * sampler), the errors (unknown key, missing data, existing run, non-finite loss) and the
 * progress display. */
#include "../methods/recipes.h"
#include "ballast/train.h"

#include "train/train_internal.h"

#include "test.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp_root[256];

/* A fresh directory for one test's runs. */
static const char *scratch(const char *name) {
    static char path[512];
    if (!tmp_root[0]) {
        snprintf(tmp_root, sizeof tmp_root, "/tmp/ballast_train_XXXXXX");
        if (!mkdtemp(tmp_root)) return NULL;
    }
    snprintf(path, sizeof path, "%s/%s", tmp_root, name);
    return path;
}

/* 4 classes of 8x8 RGB patterns, 64 training images per class made long-tailed with r = 4:
 * n_i = floor(64 * (1/4)^(i/3)) = 64, 40, 25, 16. */
static const char *base_config =
    "dataset:\n"
    "  name: synthetic\n"
    "  imbalance: 4\n"
    "  split_seed: 3\n"
    "  val_per_class: 4\n"
    "  synthetic:\n"
    "    classes: 4\n"
    "    train_per_class: 64\n"
    "    test_per_class: 16\n"
    "    size: 8\n"
    "    noise: 0.7\n"
    "model:\n"
    "  name: convnet3\n"
    "  width: 8\n"
    "  depth: 2\n"
    "train:\n"
    "  epochs: 4\n"
    "  batch_size: 16\n"
    "  lr: 0.1\n"
    "  schedule: constant\n"
    "  weight_decay: 0.0005\n"
    "  threads: 2\n"
    "  seed: 11\n"
    "  eval_every: 1\n"
    "  checkpoint_every: 1\n"
    "  log_every: 1\n"
    "  augment:\n"
    "    crop_pad: 1\n"
    "    hflip: true\n"
    "method:\n"
    "  name: ce\n";

static bl_run *make_run(const char *dir, bool resume, const char *const *overrides, int n_overrides) {
    if (bl_recipes_register_builtin() != BL_OK) return NULL;
    bl_config *c = bl_config_parse(base_config, "tiny.yaml");
    if (!c) return NULL;
    char out[600];
    snprintf(out, sizeof out, "output.dir=%s", dir);
    if (bl_config_set(c, out) != BL_OK) return NULL;
    for (int i = 0; i < n_overrides; i++)
        if (bl_config_set(c, overrides[i]) != BL_OK) {
            bl_config_free(c);
            return NULL;
        }
    bl_run_opts opts = {.resume = resume, .quiet = true};
    return bl_run_create(c, &opts);
}

static bool exists(const char *dir, const char *file) {
    char path[800];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    struct stat st;
    return stat(path, &st) == 0;
}

/* Mean loss of each epoch, read back from the log's epoch_end records. */
static int epoch_losses(const char *dir, double *losses, int max) {
    char path[800], line[8192];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    while (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "\"mean_loss\":");
        if (p && n < max) losses[n++] = atof(p + strlen("\"mean_loss\":"));
    }
    fclose(f);
    return n;
}

static int count_lines_with(const char *dir, const char *needle) {
    char path[800], line[65536];
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    int n = 0;
    while (fgets(line, sizeof line, f)) n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static void test_tiny_run_end_to_end(void) {
    const char *dir = scratch("tiny");
    char d[512];
    snprintf(d, sizeof d, "%s", dir);
    bl_run *run = make_run(d, false, NULL, 0);
    CHECK(run);
    if (!run) return;
    /* the long-tailed subset follows n_i = floor(64 * 0.25^(i/3)) = 64, 40, 25, 16; validation
     * images come from the images it left out, except for class 0, which it kept whole and which
     * gives up 4 of its training images instead */
    const int64_t want[4] = {60, 40, 25, 16};
    for (int k = 0; k < 4; k++) CHECK(run->class_counts[k] == want[k], "class %d: %lld", k, (long long)run->class_counts[k]);
    CHECK(bl_numel(run->train.labels) == 141 && bl_numel(run->val.labels) == 16 && bl_numel(run->test.labels) == 64);
    int64_t val_counts[4] = {0};
    CHECK(bl_class_counts(run->val.labels, 4, val_counts) == 16);
    for (int k = 0; k < 4; k++) CHECK(val_counts[k] == 4);
    /* no validation image is also a training image: compare the pixel rows */
    int64_t px = 3 * 8 * 8, overlap = 0;
    const uint8_t *tr = run->train.images->data, *va = run->val.images->data;
    for (int64_t i = 0; i < 16; i++)
        for (int64_t j = 0; j < 141; j++) overlap += memcmp(va + i * px, tr + j * px, (size_t)px) == 0;
    CHECK(overlap == 0);
    CHECK(bl_run_train(run) == BL_OK);
    CHECK(run->epoch == 4 && run->step == 4 * (141 / 16), "epoch %d step %lld", run->epoch, (long long)run->step);
    bl_run_free(run);

    double losses[8];
    CHECK(epoch_losses(d, losses, 8) == 4);
    CHECK(losses[3] < 0.7 * losses[0], "loss %.4f -> %.4f", losses[0], losses[3]);
    const char *files[] = {"config.yaml", "log.jsonl", "checkpoint.json", "results.json", "split_train.idx",
                           "split_val.idx", "checkpoints/epoch_0001/model.safetensors",
                           "checkpoints/epoch_0004/model.optimizer.safetensors", "checkpoints/final/model.safetensors",
                           "checkpoints/final/state.json"};
    for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) CHECK(exists(d, files[i]), "%s", files[i]);
    CHECK(count_lines_with(d, "\"eval\":\"val\"") == 5); /* every epoch, and the final evaluation */
    CHECK(count_lines_with(d, "\"eval\":\"test\"") == 1);
    CHECK(count_lines_with(d, "\"img_per_s\"") == 4 * 8);

    /* the finished run opens for evaluation, by directory and by checkpoint file, and a trained
     * model beats chance (0.25) on the balanced test set by far */
    char ck[800];
    snprintf(ck, sizeof ck, "%s/checkpoints/final/model.safetensors", d);
    const char *paths[2] = {d, ck};
    double top1[2] = {0};
    for (int i = 0; i < 2; i++) {
        bl_run *opened = bl_run_open(paths[i], NULL, 0);
        CHECK(opened, "%s", paths[i]);
        if (!opened) continue;
        CHECK(opened->epoch == 4 && opened->log == NULL);
        bl_evaluator e;
        bl_metrics_summary s = {0};
        CHECK(bl_run_evaluate(opened, "test", &e) == BL_OK);
        bl_metrics *m = bl_evaluator_classification(&e);
        CHECK(m && bl_metrics_summarize(m, opened->class_counts, &s) == BL_OK);
        top1[i] = s.top1;
        CHECK(bl_evaluator_metric(&e, "top1") == s.top1, "the evaluator's primary metric is the summary's top-1");
        CHECK(s.count == 64 && s.n_many == 0 && s.n_medium == 3 && s.n_few == 1, "groups %lld/%lld/%lld",
              (long long)s.n_many, (long long)s.n_medium, (long long)s.n_few);
        bl_evaluator_free(&e);
        bl_run_free(opened);
    }
    CHECK(top1[0] > 0.6 && top1[0] == top1[1], "top-1 %.4f / %.4f", top1[0], top1[1]);
    /* and results.json holds the same number */
    snprintf(ck, sizeof ck, "%s/results.json", d);
    FILE *f = fopen(ck, "r");
    char text[16384] = {0};
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    const char *test = strstr(text, "\"test\":");
    const char *t1 = test ? strstr(test, "\"top1\":") : NULL;
    CHECK(t1 && fabs(atof(t1 + 7) - top1[0]) < 1e-6, "%s", text);
    CHECK(strstr(text, "\"train_counts\":[60,40,25,16]"), "%s", text);

    /* a second run into the same directory is refused, naming it */
    run = make_run(d, false, NULL, 0);
    CHECK(!run && strstr(bl_last_error(), d) && strstr(bl_last_error(), "--resume"), "%s", bl_last_error());
    bl_clear_error();
    /* and resuming with a changed setting is refused, naming the key */
    const char *changed[] = {"train.lr=0.3"};
    run = make_run(d, true, changed, 1);
    CHECK(!run && strstr(bl_last_error(), "train.lr"), "%s", bl_last_error());
    bl_clear_error();
}

/* Compares every tensor of two checkpoint files exactly. */
static bool same_weights(const char *a, const char *b) {
    bl_safetensors x, y;
    if (bl_safetensors_load(a, &x) != BL_OK) return false;
    if (bl_safetensors_load(b, &y) != BL_OK) {
        bl_safetensors_free(&x);
        return false;
    }
    bool same = x.count == y.count && x.count > 0;
    for (int i = 0; same && i < x.count; i++) {
        bl_tensor *t = bl_safetensors_get(&y, x.entries[i].name);
        same = t && bl_nbytes(t) == bl_nbytes(x.entries[i].tensor) &&
               memcmp(t->data, x.entries[i].tensor->data, bl_nbytes(t)) == 0;
    }
    bl_safetensors_free(&x);
    bl_safetensors_free(&y);
    return same;
}

static void test_resume_reproduces_uninterrupted_run(void) {
    char a[512], b[512], fa[800], fb[800];
    snprintf(a, sizeof a, "%s", scratch("whole"));
    snprintf(b, sizeof b, "%s", scratch("interrupted"));
    /* dropout, a class-balanced sampler and batch mixing make more of the state that resume must
     * restore matter */
    const char *over[] = {"model.drop_rate=0.2",       "train.sampler=class_balanced", "train.schedule=multistep",
                          "train.milestones=[3]",      "train.augment.mixup=0.4",      "train.augment.cutmix=1",
                          "train.augment.mix_prob=0.8"};
    bl_run *run = make_run(a, false, over, 7);
    CHECK(run && bl_run_train(run) == BL_OK);
    bl_run_free(run);

    /* the same run killed after 2 epochs: its directory as the crash leaves it (the config, the
     * split, the epoch-2 checkpoint and the pointer to it), then continued with resume */
    char command[8192];
    snprintf(command, sizeof command,
             "mkdir -p '%s/checkpoints' && cp '%s/split_train.idx' '%s/' && cp -r '%s/checkpoints/epoch_0002' "
             "'%s/checkpoints/' && sed 's|%s|%s|' '%s/config.yaml' > '%s/config.yaml' && "
             "printf '{\"latest\":\"checkpoints/epoch_0002\"}' > '%s/checkpoint.json'",
             b, a, b, a, b, a, b, a, b, b);
    CHECK(system(command) == 0, "%s", command);
    run = make_run(b, true, over, 7);
    CHECK(run && run->epoch == 2 && run->step == 2 * 8);
    CHECK(run && bl_run_train(run) == BL_OK);
    bl_run_free(run);
    snprintf(fa, sizeof fa, "%s/checkpoints/final/model.safetensors", a);
    snprintf(fb, sizeof fb, "%s/checkpoints/final/model.safetensors", b);
    CHECK(same_weights(fa, fb));
    snprintf(fa, sizeof fa, "%s/checkpoints/final/model.optimizer.safetensors", a);
    snprintf(fb, sizeof fb, "%s/checkpoints/final/model.optimizer.safetensors", b);
    CHECK(same_weights(fa, fb));
    CHECK(count_lines_with(b, "\"resume\":2") == 1);
    /* and the check can fail: an earlier checkpoint differs from the final weights */
    snprintf(fb, sizeof fb, "%s/checkpoints/epoch_0002/model.safetensors", b);
    snprintf(fa, sizeof fa, "%s/checkpoints/final/model.safetensors", a);
    CHECK(!same_weights(fa, fb));
}

/* What two-stage methods (cRT, LWS) build on: a frozen backbone keeps every weight but the
 * classifier's, and the sampler can be swapped for a second stage. */
/* One pass over the training loader through the recipe's step, as the trainer's epoch does. */
static int train_one_epoch(bl_run *run, int epoch) {
    bl_loader *l = run->registry->loader;
    BL_TRY(bl_loader_start_epoch(l, epoch, 8));
    int rc = BL_OK;
    for (;;) {
        bl_scope scope = bl_scope_begin();
        bl_batch b;
        bool more = bl_loader_next(l, &b);
        double loss;
        if (more) {
            bl_run_set_training(run, true);
            rc = run->recipe->step(run, run->recipe_state, &b, &loss);
        }
        bl_scope_end(scope);
        if (!more || rc != BL_OK) return rc;
    }
}

static void test_second_stage_mechanisms(void) {
    char d[512];
    snprintf(d, sizeof d, "%s", scratch("stages"));
    const char *over[] = {"train.epochs=1"};
    bl_run *run = make_run(d, false, over, 1);
    CHECK(run && train_one_epoch(run, 0) == BL_OK);
    if (!run) return;
    bl_model *m = bl_run_model(run, "model");
    bl_params *ps = &m->params;
    float *before = malloc(ps->numel * sizeof *before);
    memcpy(before, ps->data, ps->numel * sizeof *before);
    /* the classifier's weight and bias, as ranges of the parameter block */
    bl_tensor *fc = m->classifier.weight, *fc_bias = m->classifier.bias;
    size_t fc_at = (size_t)((float *)fc->data - ps->data), fc_n = (size_t)bl_numel(fc);
    size_t bias_at = (size_t)((float *)fc_bias->data - ps->data), bias_n = (size_t)bl_numel(fc_bias);
    CHECK(bl_run_freeze(run, "model", true, true) == BL_OK);
    CHECK(bl_run_set_sampler(run, "class_balanced") == BL_OK);
    bl_optim_config cfg;
    CHECK(bl_optim_config_from_config(run->config, &cfg) == BL_OK);
    CHECK(bl_run_reset_optimizer(run, "model", cfg, bl_schedule_constant(0.01)) == BL_OK);
    CHECK(bl_run_optimizer(run, "model")->step == 0, "a reset optimizer starts afresh");
    bl_run_optimizer(run, "model")->cfg.lr = 0.01;
    CHECK(train_one_epoch(run, 1) == BL_OK);
    size_t changed_backbone = 0, changed_fc = 0;
    for (size_t i = 0; i < ps->numel; i++) {
        bool in_fc = (i >= fc_at && i < fc_at + fc_n) || (i >= bias_at && i < bias_at + bias_n);
        bool changed = ps->data[i] != before[i];
        if (in_fc) changed_fc += changed;
        else changed_backbone += changed;
    }
    CHECK(changed_backbone == 0 && changed_fc > fc_n / 2, "backbone %zu changed, classifier %zu", changed_backbone,
          changed_fc);
    CHECK(strcmp(bl_sampler_kind(run->registry->sampler), "class_balanced") == 0);
    CHECK(!m->training || !run->registry->models[0]->frozen, "a frozen model trains in eval mode");
    /* unfreezing trains everything again */
    CHECK(bl_run_freeze(run, "model", false, true) == BL_OK);
    memcpy(before, ps->data, ps->numel * sizeof *before);
    CHECK(train_one_epoch(run, 2) == BL_OK);
    changed_backbone = 0;
    size_t backbone_end = fc_at < bias_at ? fc_at : bias_at;
    for (size_t i = 0; i < backbone_end; i++) changed_backbone += ps->data[i] != before[i];
    CHECK(changed_backbone > backbone_end / 2);
    free(before);
    bl_run_free(run);
}

/* A recipe step whose loss turns non-finite on its third step. */
static int nan_step(bl_run *run, void *state, bl_batch *b, double *loss_value) {
    bl_tensor *x = bl_batch_get(b, "x"), *y = bl_batch_get(b, "y");
    bl_tensor *loss = bl_cross_entropy(bl_model_forward(bl_run_model(run, "model"), x), y, bl_ce_args_default());
    return bl_run_backward_step(run, run->step == 2 ? bl_mul_scalar(loss, NAN) : loss, loss_value);
}

/* A loss that meets the labels without bl_batch_label_loss (so it would ignore a mixed batch's
 * second labels). */
static int unmixed_step(bl_run *run, void *state, bl_batch *b, double *loss_value) {
    bl_tensor *x = bl_batch_get(b, "x"), *y = bl_batch_get(b, "y");
    bl_tensor *loss = bl_cross_entropy(bl_model_forward(bl_run_model(run, "model"), x), y, bl_ce_args_default());
    return bl_run_backward_step(run, loss, loss_value);
}

static void test_errors(void) {
    char d[512];
    /* an unknown key names itself and the file */
    bl_config *c = bl_config_parse("dataset:\n  name: synthetic\ntrain:\n  epoch: 3\n", "typo.yaml");
    CHECK(c);
    bl_run_opts quiet = {.quiet = true};
    CHECK(bl_run_create(c, &quiet) == NULL);
    CHECK(strstr(bl_last_error(), "train.epoch") && strstr(bl_last_error(), "typo.yaml:4"), "%s", bl_last_error());
    bl_clear_error();
    /* a wrong type names the key and value */
    snprintf(d, sizeof d, "%s", scratch("types"));
    const char *bad_type[] = {"train.batch_size=big"};
    CHECK(make_run(d, false, bad_type, 1) == NULL);
    CHECK(strstr(bl_last_error(), "train.batch_size") && strstr(bl_last_error(), "big"), "%s", bl_last_error());
    bl_clear_error();
    /* a method's unknown option is caught too */
    const char *bad_option[] = {"method.alpha=1"};
    CHECK(make_run(d, false, bad_option, 1) == NULL && strstr(bl_last_error(), "method.alpha"));
    bl_clear_error();
    const char *bad_method[] = {"method.name=nonsense"};
    CHECK(make_run(d, false, bad_method, 1) == NULL && strstr(bl_last_error(), "nonsense") &&
          strstr(bl_last_error(), "ce"));
    bl_clear_error();
    /* augmentation values out of range name their key */
    const char *bad_augment[][1] = {{"train.augment.color_jitter=[0.4, -1, 0]"}, {"train.augment.color_jitter=[0.4]"},
                                    {"train.augment.mixup=-1"}, {"train.augment.mix_prob=2"}};
    const char *augment_key[] = {"color_jitter", "color_jitter", "mixup", "mix_prob"};
    for (int i = 0; i < 4; i++) {
        CHECK(make_run(d, false, bad_augment[i], 1) == NULL && strstr(bl_last_error(), augment_key[i]), "%s",
              bl_last_error());
        bl_clear_error();
    }
    /* missing data names where it looked */
    snprintf(d, sizeof d, "%s", scratch("missing"));
    c = bl_config_parse("dataset:\n  name: cifar10\n  root: /nonexistent/ballast-data\n", "cifar.yaml");
    CHECK(c && bl_config_set(c, "output.dir=/nonexistent/run") == BL_OK);
    CHECK(bl_run_create(c, &quiet) == NULL);
    CHECK(strstr(bl_last_error(), "/nonexistent/ballast-data"), "%s", bl_last_error());
    bl_clear_error();

    /* a non-finite loss stops training with the epoch and step */
    snprintf(d, sizeof d, "%s", scratch("nan"));
    bl_run *run = make_run(d, false, NULL, 0);
    CHECK(run);
    if (!run) return;
    bl_recipe broken = *run->recipe;
    broken.step = nan_step;
    run->recipe = &broken;
    CHECK(bl_run_train(run) == BL_ERR);
    CHECK(strstr(bl_last_error(), "epoch 1") && strstr(bl_last_error(), "step 3"), "%s", bl_last_error());
    CHECK(run->step == 2);
    bl_clear_error();
    bl_run_free(run);
    CHECK(count_lines_with(d, "\"error\":") == 1);

    /* a mixed batch whose loss bypassed bl_batch_label_loss is refused, not trained on wrong targets */
    snprintf(d, sizeof d, "%s", scratch("unmixed"));
    const char *mixing[] = {"train.augment.mixup=1"};
    run = make_run(d, false, mixing, 1);
    CHECK(run);
    if (!run) return;
    broken = *run->recipe;
    broken.step = unmixed_step;
    run->recipe = &broken;
    CHECK(bl_run_train(run) == BL_ERR && strstr(bl_last_error(), "does not take mixed batches"), "%s",
          bl_last_error());
    bl_clear_error();
    bl_run_free(run);
}

/* Off a terminal the display prints plain lines: one per epoch with the loss, lr and throughput. */
static void test_progress_plain_lines(void) {
    FILE *f = tmpfile();
    CHECK(f);
    if (!f) return;
    bl_progress *p = bl__progress_create(f);
    bl__progress_begin(p, 6);
    for (int e = 0; e < 2; e++) {
        bl__progress_epoch(p, e, 2, 3);
        for (int s = 1; s <= 3; s++) bl__progress_step(p, s, 1.5 - 0.1 * s, 0.25, 32);
        bl__progress_epoch_end(p, 1.3, "val top-1 0.5000");
    }
    bl__progress_free(p);
    rewind(f);
    char text[2048] = {0};
    size_t n = fread(text, 1, sizeof text - 1, f);
    text[n] = '\0';
    fclose(f);
    CHECK(strstr(text, "epoch 1/2 done") && strstr(text, "epoch 2/2 done") && strstr(text, "mean loss 1.3000") &&
              strstr(text, "lr 0.25") && strstr(text, "img/s") && strstr(text, "val top-1 0.5000") &&
              !strchr(text, '\r') && !strchr(text, '\033'),
          "%s", text);
}

static void remove_tree(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        unlink(path);
        return;
    }
    struct dirent *e;
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char child[1024];
        snprintf(child, sizeof child, "%s/%s", path, e->d_name);
        remove_tree(child);
    }
    closedir(d);
    rmdir(path);
}

static void cleanup(void) {
    if (tmp_root[0]) remove_tree(tmp_root);
}

int main(void) {
    const test_case cases[] = {TEST(test_tiny_run_end_to_end), TEST(test_resume_reproduces_uninterrupted_run),
                               TEST(test_second_stage_mechanisms), TEST(test_errors), TEST(test_progress_plain_lines)};
    int rc = test_run_all(cases, (int)(sizeof cases / sizeof cases[0]));
    cleanup();
    return rc;
}
