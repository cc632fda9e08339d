/* The trainer: turns a validated config into a run (data with its long-tailed subset and
 * validation split, model, method, optimizers, schedule, sampler, loader) and runs the generic
 * loop every method shares: per epoch the learning rate, the method's epoch hook, then per batch
 * the method's loss, backward and the optimizer steps, each step inside one arena scope; periodic
 * evaluation on the validation split and checkpoints; at the end the method's after-training hook
 * and the final evaluation. Run directories, logs and checkpoints are run.c's business. */
#include "train_internal.h"

#include "core/internal.h"

#include "ballast/profile.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Random-stream purposes, so that each use of the seed draws from its own stream. */
#define RUN_RNG_PURPOSE 0x7241
#define MIX_RNG_PURPOSE 0x4d69780000000000ull /* "Mix" */
#define SAMPLER_SEED_SALT 0x5a3b1d
#define EVAL_LOADER_SEED 0

static const bl_option trainer_options[] = {
    {"dataset.name", BL_OPT_STRING, NULL,
     "cifar10, cifar100, cifar100_coarse, mnist, fashion_mnist, folder:<path>, or synthetic"},
    {"dataset.root", BL_OPT_STRING, NULL, "data root (default: $BALLAST_DATA, then the standard locations)"},
    {"dataset.imbalance", BL_OPT_FLOAT, "1",
     "long-tail imbalance factor r = n_max / n_min of the training subset (1: the training set as it is)"},
    {"dataset.profile", BL_OPT_STRING, "exp", "long-tail profile: exp or step"},
    {"dataset.split_seed", BL_OPT_INT, "0", "seed of the long-tailed subset and of the validation split"},
    {"dataset.split_file", BL_OPT_STRING, NULL, "index file of the training subset, instead of drawing one"},
    {"dataset.val_per_class", BL_OPT_INT, "0",
     "validation images per class, drawn from the training images the long-tailed subset leaves out "
     "(from the subset for classes it kept whole); 0: no validation split"},
    {"dataset.mean", BL_OPT_LIST, NULL, "per-channel normalization mean (default: the dataset's standard)"},
    {"dataset.std", BL_OPT_LIST, NULL, "per-channel normalization std (default: the dataset's standard)"},
    {"model.name", BL_OPT_STRING, "resnet32", "model (see bl_model_names)"},
    {"model.num_classes", BL_OPT_INT, NULL, "classifier outputs (default: the dataset's classes)"},
    {"model.width", BL_OPT_INT, "0", "ConvNet channels (0: the model's default)"},
    {"model.depth", BL_OPT_INT, "0", "ConvNet blocks (0: the model's default)"},
    {"model.patch_size", BL_OPT_INT, "0", "ViT patch side (0: the model's default)"},
    {"model.drop_rate", BL_OPT_FLOAT, "0", "dropout before the classifier"},
    {"train.epochs", BL_OPT_INT, "200", "training epochs"},
    {"train.batch_size", BL_OPT_INT, "128", "images per training batch"},
    {"train.eval_batch_size", BL_OPT_INT, "256", "images per evaluation batch"},
    {"train.drop_last", BL_OPT_BOOL, "true", "drop the last partial batch of each epoch"},
    {"train.optimizer", BL_OPT_STRING, "sgd", "sgd, adam or adamw"},
    {"train.lr", BL_OPT_FLOAT, "0.1", "base learning rate"},
    {"train.momentum", BL_OPT_FLOAT, "0.9", "SGD momentum"},
    {"train.nesterov", BL_OPT_BOOL, "false", "Nesterov momentum"},
    {"train.weight_decay", BL_OPT_FLOAT, "5e-4", "weight decay, on every parameter"},
    {"train.schedule", BL_OPT_STRING, "multistep", "constant, multistep, cosine or warmup_multistep"},
    {"train.milestones", BL_OPT_LIST, "[]", "epochs at which multistep schedules multiply the lr by gamma"},
    {"train.gamma", BL_OPT_FLOAT, "0.1", "multistep decay factor"},
    {"train.eta_min", BL_OPT_FLOAT, "0", "final lr of the cosine schedule"},
    {"train.warmup_epochs", BL_OPT_FLOAT, "0", "linear warmup epochs (any schedule; required by warmup_multistep)"},
    {"train.warmup_start_factor", BL_OPT_FLOAT, "0.3333333333333333", "lr factor at the start of the warmup"},
    {"train.lr_at_epoch_start", BL_OPT_BOOL, "true",
     "read the schedule at epoch + 1, as code that steps its scheduler at the start of each epoch"},
    {"train.clip_grad_norm", BL_OPT_FLOAT, "0", "clip the gradients' total 2-norm to this (0: off)"},
    {"train.sampler", BL_OPT_STRING, "instance", "instance, class_balanced, sqrt or progressive"},
    {"train.augment.crop_pad", BL_OPT_INT, NULL, "random-crop padding (default: the dataset's standard)"},
    {"train.augment.hflip", BL_OPT_BOOL, NULL, "random horizontal flips (default: the dataset's standard)"},
    {"train.augment.cutout", BL_OPT_INT, "0", "cutout square side (0: off)"},
    {"train.augment.color_jitter", BL_OPT_LIST, NULL,
     "[brightness, contrast, saturation] strengths of torchvision's ColorJitter (default: off)"},
    {"train.augment.mixup", BL_OPT_FLOAT, "0", "mixup: Beta(alpha, alpha) of the mixing weight (0: off)"},
    {"train.augment.cutmix", BL_OPT_FLOAT, "0", "cutmix: Beta(alpha, alpha) of the kept area (0: off)"},
    {"train.augment.mix_prob", BL_OPT_FLOAT, "1",
     "probability that a batch is mixed when mixup or cutmix is on (both on: one of them, 1/2 each)"},
    {"train.threads", BL_OPT_INT, "0", "compute threads (0: the default, all cores)"},
    {"train.seed", BL_OPT_INT, "0", "seed of initialization, data order and augmentation"},
    {"train.eval_every", BL_OPT_INT, "5", "evaluate on the validation split every this many epochs (0: never)"},
    {"train.checkpoint_every", BL_OPT_INT, "10", "checkpoint every this many epochs (0: only at the end)"},
    {"train.log_every", BL_OPT_INT, "20", "write a training record every this many steps"},
    {"method.name", BL_OPT_STRING, "ce", "training method (see bl_method_names)"},
    {"output.dir", BL_OPT_STRING, NULL, "run directory (default: runs/<config file name>)"},
};

static const bl_option synthetic_options[] = {
    {"dataset.synthetic.classes", BL_OPT_INT, "4", "classes of the synthetic dataset"},
    {"dataset.synthetic.train_per_class", BL_OPT_INT, "64", "training images per class before the long-tail subset"},
    {"dataset.synthetic.test_per_class", BL_OPT_INT, "16", "test images per class"},
    {"dataset.synthetic.channels", BL_OPT_INT, "3", "1 or 3"},
    {"dataset.synthetic.size", BL_OPT_INT, "8", "image height and width"},
    {"dataset.synthetic.noise", BL_OPT_FLOAT, "1", "pixel noise relative to the class patterns"},
};

#define N_TRAINER_OPTIONS ((int)(sizeof trainer_options / sizeof trainer_options[0]))
#define N_SYNTHETIC_OPTIONS ((int)(sizeof synthetic_options / sizeof synthetic_options[0]))

const bl_option *bl_trainer_options(int *n_options) {
    if (n_options) *n_options = N_TRAINER_OPTIONS;
    return trainer_options;
}

/* Puts a context in front of the pending error and returns BL_ERR. (The library keeps the first
 * message of a failure, so a BL_CHECK after a failed call could not say where it happened.) */
static int add_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int add_context(const char *fmt, ...) {
    char context[512], cause[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    snprintf(cause, sizeof cause, "%s", bl_last_error());
    bl_clear_error();
    bl_set_error("%s: %s", context, cause);
    return BL_ERR;
}

static bool is_synthetic(const bl_config *c) {
    const char *name = bl_config_has(c, "dataset.name") ? bl_config_string(c, "dataset.name") : NULL;
    return name && strcmp(name, "synthetic") == 0;
}

/* Declares every table the config may use and refuses keys none claims. */
int bl__config_validate(bl_config *c) {
    BL_TRY(bl_config_declare(c, NULL, trainer_options, N_TRAINER_OPTIONS));
    if (is_synthetic(c)) BL_TRY(bl_config_declare(c, NULL, synthetic_options, N_SYNTHETIC_OPTIONS));
    const char *name = bl_config_string(c, "method.name");
    const bl_method *m = name ? bl_method_find(name) : NULL;
    if (!m) return add_context("%s: method.name", bl_config_source(c));
    BL_TRY(bl_config_declare(c, "method.", m->options, m->n_options));
    return bl_config_check_unknown(c);
}

/* ---- schedules -------------------------------------------------------------------------------- */

int bl_schedule_from_config(const bl_config *c, bl_schedule *out) {
    const char *src = bl_config_source(c), *kind = bl_config_string(c, "train.schedule");
    double lr = bl_config_float(c, "train.lr"), gamma = bl_config_float(c, "train.gamma");
    double warmup = bl_config_float(c, "train.warmup_epochs");
    double milestones[BL_SCHED_MAX_MILESTONES];
    int n = bl_config_list(c, "train.milestones", milestones, BL_SCHED_MAX_MILESTONES);
    if (!kind || n < 0) return add_context("%s: train schedule", src);
    BL_CHECK_RC(lr > 0, "%s: train.lr must be positive, got %g", src, lr);
    BL_CHECK_RC(warmup >= 0, "%s: train.warmup_epochs must be >= 0, got %g", src, warmup);
    bl_schedule s;
    if (strcmp(kind, "constant") == 0) {
        s = bl_schedule_constant(lr);
    } else if (strcmp(kind, "multistep") == 0 || strcmp(kind, "warmup_multistep") == 0) {
        BL_CHECK_RC(strcmp(kind, "warmup_multistep") != 0 || warmup > 0,
                    "%s: train.schedule warmup_multistep needs train.warmup_epochs > 0", src);
        s = bl_schedule_multistep(lr, n, milestones, gamma);
    } else if (strcmp(kind, "cosine") == 0) {
        s = bl_schedule_cosine(lr, (double)bl_config_int(c, "train.epochs"), bl_config_float(c, "train.eta_min"));
    } else {
        BL_CHECK_RC(false, "%s: train.schedule: unknown schedule '%s' (constant, multistep, cosine, warmup_multistep)",
                    src, kind);
    }
    if (warmup > 0) s = bl_schedule_with_warmup(s, warmup, bl_config_float(c, "train.warmup_start_factor"));
    if (!isfinite(bl_schedule_lr(&s, 0))) return add_context("%s: train schedule", src);
    *out = s;
    return BL_OK;
}

double bl_run_lr(const bl_run *run, int epoch) {
    return bl_schedule_lr(&run->schedule, (double)(epoch - run->schedule_origin) + (run->lr_at_epoch_start ? 1 : 0));
}

static int optimizer_config(const bl_config *c, bl_optim_config *out) {
    const char *src = bl_config_source(c), *kind = bl_config_string(c, "train.optimizer");
    double lr = bl_config_float(c, "train.lr"), wd = bl_config_float(c, "train.weight_decay");
    if (!kind) return add_context("%s: train.optimizer", src);
    if (strcmp(kind, "sgd") == 0) {
        *out = bl_sgd_config(lr, bl_config_float(c, "train.momentum"), wd);
        out->nesterov = bl_config_bool(c, "train.nesterov");
    } else if (strcmp(kind, "adam") == 0) {
        *out = bl_adam_config(lr, wd);
    } else if (strcmp(kind, "adamw") == 0) {
        *out = bl_adamw_config(lr, wd);
    } else {
        BL_CHECK_RC(false, "%s: train.optimizer: unknown optimizer '%s' (sgd, adam, adamw)", src, kind);
    }
    return BL_OK;
}

/* ---- data ------------------------------------------------------------------------------------- */

static int load_source(const bl_config *c, bl_dataset *train, bl_dataset *test) {
    const char *name = bl_config_string(c, "dataset.name");
    BL_CHECK_RC(name && *name, "%s: dataset.name is required", bl_config_source(c));
    if (strcmp(name, "synthetic") == 0) {
        int64_t classes = bl_config_int(c, "dataset.synthetic.classes");
        int64_t channels = bl_config_int(c, "dataset.synthetic.channels"), size = bl_config_int(c, "dataset.synthetic.size");
        double noise = bl_config_float(c, "dataset.synthetic.noise");
        uint64_t seed = (uint64_t)bl_config_int(c, "dataset.split_seed");
        BL_TRY(bl__synthetic_dataset(classes, bl_config_int(c, "dataset.synthetic.train_per_class"), channels, size,
                                     noise, seed, 2 * seed + 1, train));
        return bl__synthetic_dataset(classes, bl_config_int(c, "dataset.synthetic.test_per_class"), channels, size,
                                     noise, seed, 2 * seed + 2, test);
    }
    const char *root = bl_config_has(c, "dataset.root") ? bl_config_string(c, "dataset.root") : NULL;
    BL_TRY(bl_dataset_load(name, root, true, train));
    return bl_dataset_load(name, root, false, test);
}

static int64_t max_label_plus_one(const bl_dataset *ds) {
    int64_t k = 0, n = ds->labels ? bl_numel(ds->labels) : 0;
    const int64_t *y = ds->labels ? ds->labels->data : NULL;
    for (int64_t i = 0; i < n; i++)
        if (y[i] + 1 > k) k = y[i] + 1;
    return k;
}

/* Moves validation rows out of a training subset for the classes that `val` holds fewer than
 * per_class images of: the subset's own holdout draw supplies them, in its order. */
static int top_up_validation(const bl_run *run, const bl_dataset *full, int64_t per_class, uint64_t seed,
                             int64_t **subset, int64_t *n_subset, int64_t **val, int64_t *n_val) {
    int64_t k = run->num_classes, *need = calloc((size_t)k, sizeof *need);
    BL_CHECK_RC(need, "out of memory");
    const int64_t *labels = full->labels->data;
    for (int64_t c = 0; c < k; c++) need[c] = per_class;
    for (int64_t i = 0; i < *n_val; i++) need[labels[(*val)[i]]]--;
    bool short_somewhere = false;
    for (int64_t c = 0; c < k; c++) short_somewhere |= need[c] > 0;
    if (!short_somewhere) {
        free(need);
        return BL_OK;
    }
    bl_dataset sub = {0};
    int64_t *keep = NULL, *held = NULL, n_keep = 0, n_held = 0;
    int rc = bl_dataset_subset(full, *subset, *n_subset, &sub);
    if (rc == BL_OK) rc = bl_split_holdout(sub.labels, k, per_class, 0.5, seed, &keep, &n_keep, &held, &n_held);
    bl_dataset_free(&sub);
    int64_t *grown = rc == BL_OK ? realloc(*val, (size_t)(*n_val + n_held + 1) * sizeof *grown) : NULL;
    bool *moved = rc == BL_OK ? calloc((size_t)(*n_subset + 1), sizeof *moved) : NULL;
    if (rc == BL_OK && (!grown || !moved)) {
        bl_set_error("out of memory");
        rc = BL_ERR;
    }
    if (grown) *val = grown;
    if (rc == BL_OK) {
        for (int64_t i = 0; i < n_held; i++) {
            int64_t row = (*subset)[held[i]], c = labels[row];
            if (need[c] <= 0) continue;
            need[c]--;
            moved[held[i]] = true;
            (*val)[(*n_val)++] = row;
        }
        int64_t n = 0;
        for (int64_t i = 0; i < *n_subset; i++)
            if (!moved[i]) (*subset)[n++] = (*subset)[i];
        *n_subset = n;
    }
    free(moved);
    free(keep);
    free(held);
    free(need);
    return rc;
}

static int compare_int64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Chooses the training and validation rows of the full training set. The subset is read from the
 * run directory's split_train.idx when present (so resuming and evaluating see exactly the images
 * training saw), else from dataset.split_file, else drawn. Validation rows come from the images
 * the long-tailed subset leaves out, as ImageNet-LT's validation set does, so the training subset
 * stays the published protocol's; only classes the subset kept whole (the head) give up
 * val_per_class of their training images. Without a subset, validation rows come out of the
 * training set itself. */
static int choose_rows(bl_run *run, const bl_dataset *full, int64_t **train_idx, int64_t *n_train, int64_t **val_idx,
                       int64_t *n_val, bool *drawn) {
    const bl_config *c = run->config;
    const char *src = bl_config_source(c);
    int64_t n_full = bl_numel(full->labels), per_class = bl_config_int(c, "dataset.val_per_class");
    uint64_t seed = (uint64_t)bl_config_int(c, "dataset.split_seed");
    double imbalance = bl_config_float(c, "dataset.imbalance");
    BL_CHECK_RC(imbalance >= 1, "%s: dataset.imbalance must be >= 1, got %g", src, imbalance);
    BL_CHECK_RC(per_class >= 0, "%s: dataset.val_per_class must be >= 0", src);
    char saved_train[600], saved_val[600];
    snprintf(saved_train, sizeof saved_train, "%s/split_train.idx", run->dir);
    snprintf(saved_val, sizeof saved_val, "%s/split_val.idx", run->dir);
    *drawn = false;
    *val_idx = NULL;
    *n_val = 0;
    if (bl__is_file(saved_train)) {
        BL_TRY(bl_indices_load(saved_train, train_idx, n_train));
        if (bl__is_file(saved_val)) BL_TRY(bl_indices_load(saved_val, val_idx, n_val));
    } else {
        int64_t *subset = NULL, n_subset = 0;
        if (bl_config_has(c, "dataset.split_file")) {
            BL_TRY(bl_indices_load(bl_config_string(c, "dataset.split_file"), &subset, &n_subset));
        } else if (imbalance > 1) {
            BL_TRY(bl_longtail_indices(full->labels, run->num_classes, bl_config_string(c, "dataset.profile"), imbalance,
                                       seed, &subset, &n_subset));
        } else {
            subset = malloc((size_t)(n_full ? n_full : 1) * sizeof *subset);
            BL_CHECK_RC(subset, "out of memory");
            for (int64_t i = 0; i < n_full; i++) subset[i] = i;
            n_subset = n_full;
        }
        int rc = BL_OK;
        if (per_class > 0) {
            int64_t *rest = NULL, n_rest = 0;
            rc = bl_indices_complement(subset, n_subset, n_full, &rest, &n_rest);
            if (rc == BL_OK && n_rest > 0) {
                bl_dataset rest_ds = {0};
                int64_t *keep = NULL, *held = NULL, n_keep = 0, n_held = 0;
                rc = bl_dataset_subset(full, rest, n_rest, &rest_ds);
                if (rc == BL_OK)
                    rc = bl_split_holdout(rest_ds.labels, run->num_classes, per_class, 1.0, seed, &keep, &n_keep, &held,
                                          &n_held);
                bl_dataset_free(&rest_ds);
                if (rc == BL_OK) {
                    for (int64_t i = 0; i < n_held; i++) held[i] = rest[held[i]];
                    *val_idx = held;
                    *n_val = n_held;
                } else {
                    free(held);
                }
                free(keep);
            }
            free(rest);
            if (rc == BL_OK) rc = top_up_validation(run, full, per_class, seed, &subset, &n_subset, val_idx, n_val);
            if (rc == BL_OK) qsort(*val_idx, (size_t)*n_val, sizeof **val_idx, compare_int64);
        }
        if (rc != BL_OK) {
            free(subset);
            free(*val_idx);
            *val_idx = NULL;
            return BL_ERR;
        }
        *train_idx = subset;
        *n_train = n_subset;
        *drawn = true;
    }
    for (int64_t i = 0; i < *n_train; i++)
        BL_CHECK_RC((*train_idx)[i] >= 0 && (*train_idx)[i] < n_full, "training split: index %lld outside [0, %lld)",
                    (long long)(*train_idx)[i], (long long)n_full);
    for (int64_t i = 0; i < *n_val; i++)
        BL_CHECK_RC((*val_idx)[i] >= 0 && (*val_idx)[i] < n_full, "validation split: index %lld outside [0, %lld)",
                    (long long)(*val_idx)[i], (long long)n_full);
    return BL_OK;
}

static int save_split(const bl_run *run, const int64_t *train_idx, int64_t n_train, const int64_t *val_idx,
                      int64_t n_val) {
    const bl_config *c = run->config;
    char path[600], comment[512];
    snprintf(comment, sizeof comment,
             "training rows of dataset %s (train split): imbalance %g, profile %s, split_seed %lld, val_per_class %lld",
             bl_config_string(c, "dataset.name"), bl_config_float(c, "dataset.imbalance"),
             bl_config_string(c, "dataset.profile"), (long long)bl_config_int(c, "dataset.split_seed"),
             (long long)bl_config_int(c, "dataset.val_per_class"));
    snprintf(path, sizeof path, "%s/split_train.idx", run->dir);
    BL_TRY(bl_indices_save(path, train_idx, n_train, comment));
    if (n_val == 0) return BL_OK;
    snprintf(comment, sizeof comment, "validation rows of dataset %s (train split), drawn from the training data",
             bl_config_string(c, "dataset.name"));
    snprintf(path, sizeof path, "%s/split_val.idx", run->dir);
    return bl_indices_save(path, val_idx, n_val, comment);
}

static int fill_augment(bl_run *run) {
    const bl_config *c = run->config;
    const char *src = bl_config_source(c), *name = bl_config_string(c, "dataset.name");
    run->augment = bl_augment_defaults(name, true);
    int64_t channels = run->train.images->shape[1];
    BL_CHECK_RC(channels == 1 || channels == 3, "dataset %s: images have %lld channels (1 or 3 supported)", name,
                (long long)channels);
    double v[3];
    const char *keys[2] = {"dataset.mean", "dataset.std"};
    for (int k = 0; k < 2; k++) {
        if (!bl_config_has(c, keys[k])) continue;
        int n = bl_config_list(c, keys[k], v, 3);
        BL_CHECK_RC(n == channels, "%s: %s needs %lld values (one per channel), got %d", src, keys[k],
                    (long long)channels, n);
        for (int i = 0; i < n; i++) (k ? run->augment.std : run->augment.mean)[i] = (float)v[i];
    }
    if (bl_config_has(c, "train.augment.crop_pad")) run->augment.crop_pad = (int)bl_config_int(c, "train.augment.crop_pad");
    if (bl_config_has(c, "train.augment.hflip")) run->augment.hflip = bl_config_bool(c, "train.augment.hflip");
    run->augment.cutout = (int)bl_config_int(c, "train.augment.cutout");
    if (bl_config_has(c, "train.augment.color_jitter")) {
        int n = bl_config_list(c, "train.augment.color_jitter", v, 3);
        BL_CHECK_RC(n == 3 && v[0] >= 0 && v[1] >= 0 && v[2] >= 0,
                    "%s: train.augment.color_jitter needs three strengths >= 0 (brightness, contrast, saturation)",
                    src);
        for (int i = 0; i < 3; i++) run->augment.jitter[i] = (float)v[i];
    }
    BL_CHECK_RC(run->augment.crop_pad >= 0 && run->augment.cutout >= 0,
                "%s: train.augment.crop_pad and train.augment.cutout must be >= 0", src);
    run->mix.args = (bl_mix_args){bl_config_float(c, "train.augment.mixup"), bl_config_float(c, "train.augment.cutmix"),
                                  bl_config_float(c, "train.augment.mix_prob")};
    BL_CHECK_RC(run->mix.args.mixup >= 0 && run->mix.args.cutmix >= 0,
                "%s: train.augment.mixup and train.augment.cutmix must be >= 0 (0: off)", src);
    BL_CHECK_RC(run->mix.args.prob >= 0 && run->mix.args.prob <= 1, "%s: train.augment.mix_prob %g is not in [0, 1]",
                src, run->mix.args.prob);
    return BL_OK;
}

static int build_data(bl_run *run, bool save) {
    bl_dataset full = {0};
    int rc = load_source(run->config, &full, &run->test);
    if (rc == BL_OK && !(full.labels && run->test.labels)) {
        bl_set_error("dataset %s has no labels", bl_config_string(run->config, "dataset.name"));
        rc = BL_ERR;
    }
    if (rc != BL_OK) {
        bl_dataset_free(&full);
        return BL_ERR;
    }
    const bl_config *c = run->config;
    int64_t k = full.num_classes;
    if (k <= 0) {
        int64_t in_train = max_label_plus_one(&full), in_test = max_label_plus_one(&run->test);
        k = in_train > in_test ? in_train : in_test;
    }
    if (bl_config_has(c, "model.num_classes")) k = bl_config_int(c, "model.num_classes");
    run->num_classes = k;
    int64_t *train_idx = NULL, *val_idx = NULL, n_train = 0, n_val = 0;
    bool drawn = false;
    rc = k >= 2 ? BL_OK : BL_ERR;
    if (rc != BL_OK) bl_set_error("%s: need at least 2 classes, have %lld", bl_config_source(c), (long long)k);
    run->class_counts = rc == BL_OK ? calloc((size_t)k, sizeof *run->class_counts) : NULL;
    if (rc == BL_OK && !run->class_counts) {
        bl_set_error("out of memory");
        rc = BL_ERR;
    }
    /* every label of both splits must name a class the model has */
    if (rc == BL_OK && bl_class_counts(full.labels, k, run->class_counts) < 0) rc = BL_ERR;
    if (rc == BL_OK && bl_class_counts(run->test.labels, k, run->class_counts) < 0) rc = BL_ERR;
    if (rc == BL_OK) rc = choose_rows(run, &full, &train_idx, &n_train, &val_idx, &n_val, &drawn);
    if (rc == BL_OK && n_train == 0) {
        bl_set_error("%s: the training split is empty", bl_config_source(c));
        rc = BL_ERR;
    }
    if (rc == BL_OK) rc = bl_dataset_subset(&full, train_idx, n_train, &run->train);
    if (rc == BL_OK && n_val) rc = bl_dataset_subset(&full, val_idx, n_val, &run->val);
    if (rc == BL_OK && drawn && save) rc = save_split(run, train_idx, n_train, val_idx, n_val);
    free(train_idx);
    free(val_idx);
    bl_dataset_free(&full);
    if (rc != BL_OK) return BL_ERR;
    if (bl_class_counts(run->train.labels, k, run->class_counts) < 0) return BL_ERR;
    return fill_augment(run);
}

/* ---- model, method, optimizers --------------------------------------------------------------- */

static int build_model(bl_run *run) {
    const bl_config *c = run->config;
    const bl_tensor *im = run->train.images;
    bl_model_opts opts = {0};
    opts.num_classes = run->num_classes;
    opts.image_size = im->shape[2];
    opts.in_channels = im->shape[1];
    opts.width = bl_config_int(c, "model.width");
    opts.depth = bl_config_int(c, "model.depth");
    opts.patch_size = bl_config_int(c, "model.patch_size");
    opts.drop_rate = bl_config_float(c, "model.drop_rate");
    BL_CHECK_RC(im->shape[2] == im->shape[3], "dataset %s: images are %lldx%lld; models need square images",
                bl_config_string(c, "dataset.name"), (long long)im->shape[2], (long long)im->shape[3]);
    const char *name = bl_config_string(c, "model.name");
    run->model = bl_model_create(name, &opts, (uint64_t)bl_config_int(c, "train.seed"));
    if (!run->model) return add_context("%s: model.name '%s'", bl_config_source(c), name);
    return BL_OK;
}

static int build_method(bl_run *run) {
    run->method = bl_method_find(bl_config_string(run->config, "method.name"));
    if (!run->method) return BL_ERR;
    run->method_state = calloc(1, run->method->state_size ? run->method->state_size : 1);
    BL_CHECK_RC(run->method_state, "out of memory");
    bl_params_init(&run->extra_params);
    if (run->method->setup) {
        if (run->method->setup(run, run->method_state) != BL_OK)
            return add_context("method %s: setup", run->method->name);
    }
    if (run->extra_params.count > 0 && !run->extra_params.finalized) BL_TRY(bl_params_finalize(&run->extra_params));
    return BL_OK;
}

static int build_optimizers(bl_run *run) {
    bl_optim_config cfg;
    BL_TRY(optimizer_config(run->config, &cfg));
    BL_TRY(bl_optimizer_init(&run->opt, &run->model->params, cfg));
    if (run->extra_params.count > 0 && bl_params_numel(&run->extra_params) > 0) {
        BL_TRY(bl_optimizer_init(&run->extra_opt, &run->extra_params, cfg));
        run->has_extra_opt = true;
    }
    return BL_OK;
}

static uint64_t data_seed(const bl_run *run) {
    return (uint64_t)bl_config_int(run->config, "train.seed") ^ SAMPLER_SEED_SALT;
}

int bl_run_set_sampler(bl_run *run, const char *kind) {
    BL_CHECK_RC(run && kind, "bl_run_set_sampler: NULL argument");
    bl_sampler *s = bl_sampler_create(kind, run->train.labels, run->num_classes, data_seed(run));
    if (!s) return add_context("%s: sampler '%s'", bl_config_source(run->config), kind);
    bl_loader *l = bl_loader_create(&run->train, s, run->batch_size, bl_config_bool(run->config, "train.drop_last"),
                                    &run->augment, data_seed(run));
    if (!l) {
        bl_sampler_free(s);
        return BL_ERR;
    }
    bl_loader_free(run->train_loader);
    bl_sampler_free(run->sampler);
    run->sampler = s;
    run->train_loader = l;
    return BL_OK;
}

int bl_run_freeze_backbone(bl_run *run, bool frozen) {
    BL_CHECK_RC(run && run->model, "bl_run_freeze_backbone: no model");
    const bl_linear_layer *fc = &run->model->classifier;
    bl_params *ps = &run->model->params;
    for (int i = 0; i < ps->count; i++) {
        bl_tensor *t = ps->entries[i].tensor;
        if (!ps->entries[i].trainable || t == fc->weight || t == fc->bias) continue;
        t->requires_grad = !frozen;
    }
    run->backbone_frozen = frozen;
    return BL_OK;
}

bl_run *bl__run_new(bl_config *config, bool quiet) {
    bl_run *run = calloc(1, sizeof *run);
    if (!run) {
        bl_config_free(config);
        BL_CHECK(false, "out of memory");
    }
    run->config = config;
    run->quiet = quiet;
    const bl_config *c = config;
    int rc = bl__config_validate(config);
    if (rc == BL_OK) {
        run->epochs = (int)bl_config_int(c, "train.epochs");
        run->batch_size = bl_config_int(c, "train.batch_size");
        run->lr_at_epoch_start = bl_config_bool(c, "train.lr_at_epoch_start");
        run->rng = bl_rng_make((uint64_t)bl_config_int(c, "train.seed"), RUN_RNG_PURPOSE);
        if (run->epochs < 0 || run->batch_size < 1 || bl_config_int(c, "train.eval_batch_size") < 1) {
            bl_set_error("%s: train.epochs must be >= 0 and batch sizes >= 1", bl_config_source(c));
            rc = BL_ERR;
        }
    }
    if (rc == BL_OK) rc = bl_schedule_from_config(c, &run->schedule);
    if (rc != BL_OK) {
        bl_run_free(run);
        return NULL;
    }
    return run;
}

int bl__run_build(bl_run *run, bool for_training) {
    const bl_config *c = run->config;
    if (bl_config_int(c, "train.threads") > 0) bl_set_threads((int)bl_config_int(c, "train.threads"));
    BL_TRY(build_data(run, for_training));
    BL_TRY(build_model(run));
    BL_TRY(build_method(run));
    if (!for_training) return BL_OK;
    BL_TRY(build_optimizers(run));
    return bl_run_set_sampler(run, bl_config_string(c, "train.sampler"));
}

/* ---- evaluation ------------------------------------------------------------------------------- */

int bl_run_evaluate(bl_run *run, const bl_dataset *ds, bl_metrics *out) {
    BL_CHECK_RC(run && ds && out, "bl_run_evaluate: NULL argument");
    BL_TRY(bl_metrics_init(out, run->num_classes));
    if (!ds->images || bl_numel(ds->labels) == 0) return BL_OK;
    bl_augment plain = {0}; /* evaluation: the training normalization, no random transform */
    memcpy(plain.mean, run->augment.mean, sizeof plain.mean);
    memcpy(plain.std, run->augment.std, sizeof plain.std);
    bl_loader *l = bl_loader_create(ds, NULL, bl_config_int(run->config, "train.eval_batch_size"), false, &plain,
                                    EVAL_LOADER_SEED);
    if (!l || bl_loader_start_epoch(l, 0, 1) != BL_OK) {
        bl_loader_free(l);
        return BL_ERR;
    }
    bool was_training = run->model->training, grad = bl_set_grad_enabled(false);
    run->model->training = false;
    int rc = BL_OK;
    int64_t batches = 0;
    for (;;) {
        bl_scope scope = bl_scope_begin();
        bl_tensor *x, *y;
        bool more = bl_loader_next(l, &x, &y);
        if (more) {
            bl_tensor *logits = run->method->logits(run, run->method_state, x);
            if (!logits || bl_metrics_add(out, logits, y) != BL_OK) rc = BL_ERR;
            batches++;
        }
        bl_scope_end(scope);
        if (!more || rc != BL_OK) break;
    }
    if (rc == BL_OK && batches != bl_loader_batches(l)) rc = BL_ERR; /* the loader stopped early: its error */
    run->model->training = was_training;
    bl_set_grad_enabled(grad);
    bl_loader_free(l);
    if (rc != BL_OK) {
        bl_set_error("method %s: evaluation failed", run->method->name);
        bl_metrics_free(out);
        memset(out, 0, sizeof *out);
    }
    return rc;
}

/* Evaluates on a split and appends the record to the log; the summary's top-1 goes to *top1. */
static int evaluate_and_log(bl_run *run, const bl_dataset *ds, const char *split, double *top1, char **json_out) {
    bl_metrics m;
    BL_TRY(bl_run_evaluate(run, ds, &m));
    bl_metrics_summary s;
    int rc = bl_metrics_summarize(&m, run->class_counts, &s);
    char head[96];
    snprintf(head, sizeof head, "\"eval\":\"%s\",\"epoch\":%d,\"step\":%lld", split, run->epoch, (long long)run->step);
    char *json = rc == BL_OK ? bl_metrics_json(&s, head) : NULL;
    if (top1) *top1 = rc == BL_OK ? s.top1 : NAN;
    bl_metrics_free(&m);
    if (!json) return add_context("evaluation on %s", split);
    if (run->log) {
        fprintf(run->log, "%s\n", json);
        fflush(run->log);
    }
    if (json_out) *json_out = json;
    else free(json);
    return BL_OK;
}

/* ---- the training loop ------------------------------------------------------------------------ */

static int write_train_record(bl_run *run, int epoch, double loss, double lr, double img_per_s) {
    if (!run->log) return BL_OK;
    fprintf(run->log, "{\"epoch\":%d,\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"img_per_s\":%.1f}\n", epoch + 1,
            (long long)run->step, loss, lr, img_per_s);
    return BL_OK;
}

/* Mixes the batch as train.augment asks, from a stream of (train.seed, step) so that a resumed run
 * mixes exactly as an uninterrupted one. */
static int mix_batch(bl_run *run, bl_tensor *x, bl_tensor *y) {
    run->mix.partner = NULL;
    run->mix.lam = 1.0;
    run->mix.applied = false;
    bl_rng rng = bl_rng_make((uint64_t)bl_config_int(run->config, "train.seed"), MIX_RNG_PURPOSE + (uint64_t)run->step);
    return bl_mix_batch(&run->mix.args, &rng, x, y, &run->mix.partner, &run->mix.lam);
}

/* One optimizer step on one batch; *loss_value gets the batch's loss. */
static int train_step(bl_run *run, bl_tensor *x, bl_tensor *y, double clip, double *loss_value) {
    BL_TRY(mix_batch(run, x, y));
    bl_tensor *loss = run->method->loss(run, run->method_state, x, y);
    if (!loss)
        return add_context("method %s: loss at epoch %d, step %lld", run->method->name, run->epoch + 1,
                           (long long)run->step + 1);
    BL_CHECK_RC(!run->mix.partner || run->mix.applied,
                "method %s does not take mixed batches (train.augment.mixup / cutmix): its loss must go through "
                "bl_run_label_loss",
                run->method->name);
    run->mix.partner = NULL;
    BL_CHECK_RC(bl_numel(loss) == 1, "method %s: the loss must be a scalar, got %s", run->method->name, bl__shape(loss));
    double v = bl_item(loss);
    *loss_value = v;
    BL_CHECK_RC(isfinite(v), "loss is %g at epoch %d, step %lld (lr %g): training diverged", v, run->epoch + 1,
                (long long)run->step + 1, run->opt.cfg.lr);
    bl_params_zero_grad(&run->model->params);
    if (run->extra_params.finalized) bl_params_zero_grad(&run->extra_params);
    BL_TRY(bl_backward(loss));
    if (clip > 0) {
        double norm = bl_clip_grad_norm(&run->model->params, clip, 2.0);
        BL_CHECK_RC(isfinite(norm), "gradient norm is %g at epoch %d, step %lld", norm, run->epoch + 1,
                    (long long)run->step + 1);
    }
    BL_TRY(bl_optimizer_step(&run->opt));
    if (run->has_extra_opt) BL_TRY(bl_optimizer_step(&run->extra_opt));
    return BL_OK;
}

int bl_run_train_epochs(bl_run *run, int first, int last) {
    BL_CHECK_RC(run && run->train_loader, "bl_run_train_epochs: the run has no training loader");
    BL_CHECK_RC(first >= 0 && first <= last, "bl_run_train_epochs: bad epoch range [%d, %d)", first, last);
    const bl_config *c = run->config;
    int64_t steps = bl_loader_batches(run->train_loader);
    BL_CHECK_RC(steps > 0, "%s: %lld training images make no full batch of %lld (train.batch_size)",
                bl_config_source(c), (long long)bl_numel(run->train.labels), (long long)run->batch_size);
    int64_t log_every = bl_config_int(c, "train.log_every");
    int eval_every = (int)bl_config_int(c, "train.eval_every"), ckpt_every = (int)bl_config_int(c, "train.checkpoint_every");
    double clip = bl_config_float(c, "train.clip_grad_norm");
    bool have_val = run->val.labels && bl_numel(run->val.labels) > 0;
    if (run->progress) bl__progress_begin(run->progress, (int64_t)(last - first) * steps);

    for (int epoch = first; epoch < last; epoch++) {
        run->epoch = epoch;
        double lr = bl_run_lr(run, epoch);
        if (!isfinite(lr)) return add_context("learning rate at epoch %d", epoch + 1);
        run->opt.cfg.lr = lr;
        if (run->has_extra_opt) run->extra_opt.cfg.lr = lr;
        if (run->method->epoch_begin && run->method->epoch_begin(run, run->method_state, epoch) != BL_OK)
            return add_context("method %s: start of epoch %d", run->method->name, epoch + 1);
        /* the sampler's progress (progressive sampling) counts within the current stage */
        BL_TRY(bl_loader_start_epoch(run->train_loader, epoch - run->schedule_origin, last - run->schedule_origin));
        if (run->progress) bl__progress_epoch(run->progress, epoch, last, steps);

        double epoch_start = bl_now(), window_start = epoch_start, loss_sum = 0, window_sum = 0;
        int64_t done = 0, window_steps = 0, window_images = 0;
        for (;;) {
            bl_scope scope = bl_scope_begin();
            bl_tensor *x, *y;
            bool more = bl_loader_next(run->train_loader, &x, &y);
            double loss = NAN;
            int64_t images = more ? x->shape[0] : 0;
            int rc = BL_OK;
            if (more) {
                run->model->training = !run->backbone_frozen;
                rc = train_step(run, x, y, clip, &loss);
            }
            bl_scope_end(scope);
            if (!more) break;
            if (rc != BL_OK) {
                if (run->log) {
                    fprintf(run->log, "{\"error\":");
                    /* the message is plain text from our own formats; keep the record valid JSON */
                    fputc('"', run->log);
                    for (const char *p = bl_last_error(); *p; p++)
                        if (*p == '"' || *p == '\\') fprintf(run->log, "\\%c", *p);
                        else if ((unsigned char)*p >= 0x20) fputc(*p, run->log);
                    fprintf(run->log, "\",\"epoch\":%d,\"step\":%lld}\n", epoch + 1, (long long)run->step + 1);
                    fflush(run->log);
                }
                return BL_ERR;
            }
            run->step++;
            done++;
            loss_sum += loss;
            window_sum += loss;
            window_steps++;
            window_images += images;
            if (run->progress) bl__progress_step(run->progress, done, loss, lr, images);
            if (log_every > 0 && (run->step % log_every == 0 || done == steps)) {
                double now = bl_now();
                write_train_record(run, epoch, window_sum / (double)window_steps, lr,
                                   now > window_start ? (double)window_images / (now - window_start) : 0);
                window_start = now;
                window_sum = 0;
                window_steps = window_images = 0;
            }
        }
        if (done != steps)
            return add_context("epoch %d: the loader stopped after %lld of %lld batches", epoch + 1, (long long)done,
                               (long long)steps);
        run->epoch = epoch + 1;
        double mean_loss = loss_sum / (double)done, seconds = bl_now() - epoch_start;
        if (run->log) {
            fprintf(run->log, "{\"epoch_end\":%d,\"step\":%lld,\"mean_loss\":%.9g,\"lr\":%.9g,\"seconds\":%.3f}\n",
                    run->epoch, (long long)run->step, mean_loss, lr, seconds);
            fflush(run->log);
        }
        char note[64] = "";
        if (have_val && eval_every > 0 && (run->epoch % eval_every == 0 || run->epoch == last)) {
            double top1;
            BL_TRY(evaluate_and_log(run, &run->val, "val", &top1, NULL));
            snprintf(note, sizeof note, "val top-1 %.4f", top1);
        }
        if (run->progress) bl__progress_epoch_end(run->progress, mean_loss, note);
        if (run->stage == 0 && ckpt_every > 0 && run->epoch % ckpt_every == 0 && run->log)
            BL_TRY(bl_run_checkpoint(run, false));
    }
    return BL_OK;
}

/* results.json: what the run was and its final numbers, for tables across runs. */
static int write_results(bl_run *run, const char *val_json, const char *test_json) {
    const bl_config *c = run->config;
    size_t cap = 1024 + strlen(test_json) + (val_json ? strlen(val_json) : 0) + (size_t)run->num_classes * 24;
    char *text = malloc(cap);
    BL_CHECK_RC(text, "out of memory");
    size_t n = (size_t)snprintf(text, cap,
                                "{\"method\":\"%s\",\"dataset\":\"%s\",\"model\":\"%s\",\"imbalance\":%g,"
                                "\"epochs\":%d,\"steps\":%lld,\"train_counts\":[",
                                run->method->name, bl_config_string(c, "dataset.name"), bl_config_string(c, "model.name"),
                                bl_config_float(c, "dataset.imbalance"), run->epoch, (long long)run->step);
    for (int64_t k = 0; k < run->num_classes; k++)
        n += (size_t)snprintf(text + n, cap - n, "%s%lld", k ? "," : "", (long long)run->class_counts[k]);
    n += (size_t)snprintf(text + n, cap - n, "],\"val\":%s,\"test\":%s}\n", val_json ? val_json : "null", test_json);
    char path[600];
    snprintf(path, sizeof path, "%s/results.json", run->dir);
    int rc = bl__write_file_atomic(path, text);
    free(text);
    return rc;
}

int bl_run_train(bl_run *run) {
    BL_CHECK_RC(run && run->train_loader && run->log, "bl_run_train: the run was not created for training");
    if (!run->finished) {
        if (run->epoch < run->epochs) {
            BL_TRY(bl_run_train_epochs(run, run->epoch, run->epochs));
            /* the main stage's end is always a resume point, whatever checkpoint_every says */
            int every = (int)bl_config_int(run->config, "train.checkpoint_every");
            if (every <= 0 || run->epoch % every != 0) BL_TRY(bl_run_checkpoint(run, false));
        }
        run->stage = 1;
        if (run->method->after_training && run->method->after_training(run, run->method_state) != BL_OK)
            return add_context("method %s: after training", run->method->name);
        BL_TRY(bl_run_checkpoint(run, true));
        run->finished = true;
    }
    char *val_json = NULL, *test_json = NULL;
    bool have_val = run->val.labels && bl_numel(run->val.labels) > 0;
    double val_top1 = NAN, test_top1 = NAN;
    int rc = have_val ? evaluate_and_log(run, &run->val, "val", &val_top1, &val_json) : BL_OK;
    if (rc == BL_OK) rc = evaluate_and_log(run, &run->test, "test", &test_top1, &test_json);
    if (rc == BL_OK) rc = write_results(run, val_json, test_json);
    if (rc == BL_OK && !run->quiet)
        fprintf(stderr, "%s: test top-1 %.4f%s\n", run->dir, test_top1, have_val ? "" : " (no validation split)");
    free(val_json);
    free(test_json);
    return rc;
}
