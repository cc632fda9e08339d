/* Building a run's data: the dataset's train and test splits, the training subset (a long-tailed
 * profile, an index file, or everything), the validation split drawn from the training images the
 * subset leaves out, both saved in the run directory so resume and evaluation see exactly the same
 * rows, and the training transforms. */
#include "train_internal.h"

#include "core/internal.h"

#include <stdlib.h>
#include <string.h>

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
    if (bl_is_file(saved_train)) {
        BL_TRY(bl_indices_load(saved_train, train_idx, n_train));
        if (bl_is_file(saved_val)) BL_TRY(bl_indices_load(saved_val, val_idx, n_val));
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
        if (bl_split_validation(full->labels, run->num_classes, per_class, seed, &subset, &n_subset, val_idx, n_val) !=
            BL_OK) {
            free(subset);
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
    run->registry->mix = (bl_mix_args){bl_config_float(c, "train.augment.mixup"), bl_config_float(c, "train.augment.cutmix"),
                                  bl_config_float(c, "train.augment.mix_prob")};
    BL_CHECK_RC(run->registry->mix.mixup >= 0 && run->registry->mix.cutmix >= 0,
                "%s: train.augment.mixup and train.augment.cutmix must be >= 0 (0: off)", src);
    BL_CHECK_RC(run->registry->mix.prob >= 0 && run->registry->mix.prob <= 1, "%s: train.augment.mix_prob %g is not in [0, 1]",
                src, run->registry->mix.prob);
    return BL_OK;
}

static int build_image_data(bl_run *run, bool save) {
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

/* The image splits as sources: training batches through the training transforms, evaluation
 * through the normalization alone. */
static int image_sources(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    bl_augment plain = {0};
    memcpy(plain.mean, run->augment.mean, sizeof plain.mean);
    memcpy(plain.std, run->augment.std, sizeof plain.std);
    BL_TRY(bl_image_source(&run->train, &run->augment, &r->train_source));
    const bl_dataset *splits[3] = {&run->train, &run->val, &run->test};
    for (int i = 0; i < 3; i++)
        if (splits[i]->images) BL_TRY(bl_image_source(splits[i], &plain, &r->eval_sources[i]));
    return BL_OK;
}

/* ---- registered benchmarks ------------------------------------------------------------------ */

#define MAX_BENCHMARKS 64
static const bl_benchmark *benchmarks[MAX_BENCHMARKS];
static int n_benchmarks;

int bl_benchmark_register(const bl_benchmark *b) {
    BL_CHECK_RC(b && b->name && b->open, "bl_benchmark_register: a benchmark needs a name and open");
    for (int i = 0; i < n_benchmarks; i++) {
        if (benchmarks[i] == b) return BL_OK;
        BL_CHECK_RC(strcmp(benchmarks[i]->name, b->name) != 0, "benchmark '%s' is registered twice", b->name);
    }
    BL_CHECK_RC(n_benchmarks < MAX_BENCHMARKS, "benchmark '%s': at most %d", b->name, MAX_BENCHMARKS);
    benchmarks[n_benchmarks++] = b;
    return BL_OK;
}

const bl_benchmark *bl_benchmark_find(const char *name) {
    for (int i = 0; name && i < n_benchmarks; i++)
        if (strcmp(benchmarks[i]->name, name) == 0) return benchmarks[i];
    return NULL;
}

static int benchmark_sources(bl_run *run, const bl_benchmark *b) {
    struct bl_run_registry *r = run->registry;
    const char *names[3] = {"train", "val", "test"};
    if (b->open(run, "train", true, &r->train_source) != BL_OK)
        return bl__add_context("dataset %s: the train split", b->name);
    BL_CHECK_RC(r->train_source.length && (r->train_source.get || r->train_source.collate),
                "dataset %s: the benchmark has no train split", b->name);
    for (int i = 0; i < 3; i++)
        if (b->open(run, names[i], false, &r->eval_sources[i]) != BL_OK)
            return bl__add_context("dataset %s: the %s split", b->name, names[i]);
    return BL_OK;
}

int bl__build_data(bl_run *run, bool save) {
    const bl_benchmark *b = bl_benchmark_find(bl_config_string(run->config, "dataset.name"));
    if (b) return benchmark_sources(run, b);
    BL_TRY(build_image_data(run, save));
    return image_sources(run);
}

const bl_source *bl__split_source(const bl_run *run, const char *split) {
    const char *names[3] = {"train", "val", "test"};
    for (int i = 0; split && i < 3; i++)
        if (strcmp(split, names[i]) == 0) return &run->registry->eval_sources[i];
    BL_CHECK(false, "no split '%s' (train, val, test)", split ? split : "(null)");
}

int64_t bl_run_split_size(const bl_run *run, const char *split) {
    const bl_source *s = run && run->registry ? bl__split_source(run, split) : NULL;
    return s && s->length ? s->length(s->self) : 0;
}

