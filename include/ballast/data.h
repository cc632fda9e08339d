/* ballast data: datasets, long-tailed splits, samplers, augmentation and the training loader.
 *
 * Readers for the image formats vision benchmarks ship in (CIFAR binaries, IDX, PNG/JPEG) name the
 * file in every error and refuse truncated or malformed files instead of returning partial data.
 * On top of them: a registry of known datasets found under a data root, long-tailed subsets drawn
 * with a seed (and saved as index files so a split can be shared), a validation split drawn from
 * the training data, samplers that re-balance classes, per-image augmentation, and a loader whose
 * background thread prepares the next batch while the caller trains on the current one.
 * Returned datasets and tensors are persistent (free with bl_dataset_free / bl_tensor_free) unless
 * stated otherwise; index arrays are malloc'ed (free with free()). */
#ifndef BALLAST_DATA_H
#define BALLAST_DATA_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    bl_tensor *images;   /* U8 (N, C, H, W) */
    bl_tensor *labels;   /* I64 (N); NULL when the source has none */
    int64_t num_classes; /* 0 when unknown (the single-file readers below leave it 0) */
    char **class_names;  /* num_classes names, or NULL when unknown; owned by the dataset */
} bl_dataset;

/* Frees the tensors and names and zeroes the struct (safe on a zeroed or already freed one). */
void bl_dataset_free(bl_dataset *ds);

/* CIFAR binary batches: records of label byte(s) + 3072 pixel bytes (R plane, G plane, B plane).
 * CIFAR-10 files have one label byte; CIFAR-100 files have two (coarse, fine): pass
 * `label_bytes` 1 or 2 and `label_index` (0 = first byte (coarse), 1 = second (fine)). */
int bl_read_cifar(const char *path, int label_bytes, int label_index, bl_dataset *out);
/* IDX files (MNIST, Fashion-MNIST), plain or gzip-compressed: images (N, 1, H, W) or labels (N). */
int bl_read_idx_images(const char *path, bl_tensor **images);
int bl_read_idx_labels(const char *path, bl_tensor **labels);
/* One PNG or JPEG file (chosen by its signature) as U8 (C, H, W), C = 1 or 3 (alpha dropped).
 * Images of more than 2^27 pixels are refused. */
int bl_read_image(const char *path, bl_tensor **image);
/* A single PNG/JPEG, or a dataset file (CIFAR .bin, IDX images), as a dataset: CIFAR is detected
 * by size (multiples of 3073 or 3074 bytes), IDX by its magic number. */
int bl_read_any_images(const char *path, bl_dataset *out);

/* Converts U8 images (N, C, H, W) to an F32 arena tensor in [0, 1], then (x - mean[c]) / std[c]
 * when mean and std are given (C entries each). */
bl_tensor *bl_images_to_float(const bl_tensor *images, const float *mean, const float *std);

/* ---- known datasets and where they live ------------------------------------------------------ */

/* A dataset the registry knows by name. Its files sit in `subdir` of a data root. */
typedef struct {
    const char *name;             /* "cifar10", "cifar100", "cifar100_coarse", "mnist", "fashion_mnist" */
    const char *description;
    const char *subdir;           /* folder under a data root, e.g. "cifar-10-batches-bin" */
    int64_t num_classes;
    int64_t train_size, test_size;
    const char *const *train_files; /* NULL-terminated, relative to the dataset's folder; IDX files */
    const char *const *test_files;  /* may also be present with a ".gz" suffix */
    const char *const *urls;        /* NULL-terminated official locations, tried in order: an archive,
                                     * or a folder ("/" at the end) holding each file gzip'ed */
} bl_dataset_info;

/* The known datasets: sets *infos and returns their count. */
int bl_dataset_known(const bl_dataset_info **infos);
/* The entry for `name`, or NULL (no error set). */
const bl_dataset_info *bl_dataset_find_info(const char *name);

/* The roots searched when no root is given, in order: $BALLAST_DATA, $XDG_DATA_HOME/ballast
 * (default ~/.local/share/ballast), /usr/local/share/ballast, /usr/share/ballast. Writes at most
 * `max` paths into `roots` and returns how many. After them bl_dataset_locate tries a dataset's
 * system folder (Debian's dataset-fashion-mnist installs /usr/share/datasets/fashion-mnist). */
int bl_data_search_roots(char (*roots)[512], int max);
/* The root that `ballast data import/download` writes to: $BALLAST_DATA when set, else
 * $XDG_DATA_HOME/ballast (default ~/.local/share/ballast). */
int bl_data_default_root(char *buf, size_t len);
/* The folder holding dataset `name`'s files: <root>/<subdir> (or <root> itself holding the files)
 * when `root` is given, else the first search location where it exists. BL_ERR naming every place
 * looked at when it is nowhere. */
int bl_dataset_locate(const char *name, const char *root, char *dir, size_t len);

/* Loads the train or test split of a dataset by name: one of the known names above, or
 * "folder:<path>" for images in <path>/<class>/<file>.png|jpg (class = subfolder, classes sorted by
 * name; with <path>/train and <path>/test (or val) subfolders those are the splits, else the whole
 * folder is the train split). `root` NULL searches the standard locations. Known datasets must
 * have their exact official sizes: a missing, truncated or corrupt file is an error naming it.
 * Sets num_classes and, when known, class_names. */
int bl_dataset_load(const char *name, const char *root, bool train, bl_dataset *out);
/* Images in <dir>/<class>/<file>.png|jpg|jpeg as one dataset. All images must share height and width;
 * grayscale images are replicated to RGB when the folder also holds colour images. */
int bl_read_image_folder(const char *dir, bl_dataset *out);

/* ---- subsets and splits ---------------------------------------------------------------------- */

/* counts[c] = number of labels equal to c, for c < num_classes (counts may be NULL to only check).
 * Returns the number of labels, or -1 (with an error naming the position and value) when a label
 * is outside [0, num_classes). */
int64_t bl_class_counts(const bl_tensor *labels, int64_t num_classes, int64_t *counts);

/* Per-class sizes of a long-tailed profile with imbalance factor r = n_max / n_min >= 1, for
 * classes in label order (the LDAM / BBN protocol):
 *   "exp":  n_i = floor(n_max * (1/r)^(i / (C - 1)))
 *   "step": the first floor(C/2) classes keep n_max, the others floor(n_max / r). */
int bl_longtail_counts(const char *profile, double imbalance, int64_t n_max, int64_t num_classes,
                       int64_t *counts);
/* A long-tailed subset of a dataset: n_max is the largest class count, class i keeps
 * min(count_i, profile's n_i) images, the first ones of a shuffle of the class drawn from
 * (seed, i). So the same seed gives the same subset, and a larger r keeps a prefix of the same
 * shuffle (subsets for r = 10, 50, 100 are nested). Indices are ascending; *indices is malloc'ed. */
int bl_longtail_indices(const bl_tensor *labels, int64_t num_classes, const char *profile, double imbalance,
                        uint64_t seed, int64_t **indices, int64_t *n);
/* Index files: text, one index per line; lines starting with '#' are comments. `comment` (may be
 * NULL, may span lines) is written as '#' lines on top, e.g. how the split was drawn. Writing is
 * atomic; reading names the file and line of anything malformed. */
int bl_indices_save(const char *path, const int64_t *indices, int64_t n, const char *comment);
int bl_indices_load(const char *path, int64_t **indices, int64_t *n);
/* The indices in [0, total) that `indices` does not contain, ascending; e.g. the training images a
 * long-tailed split left out, from which a class-balanced validation split can be drawn. */
int bl_indices_complement(const int64_t *indices, int64_t n, int64_t total, int64_t **out, int64_t *n_out);
/* A new dataset of rows idx[0..n) of src (images, labels, num_classes, class names copied). */
int bl_dataset_subset(const bl_dataset *src, const int64_t *idx, int64_t n, bl_dataset *out);
/* A validation split drawn from labelled rows: from each class c (with count n_c) a seeded random
 * min(per_class, floor(max_share * n_c)) rows go to val. max_share = 0.5 leaves every class at least
 * half of its training images; 1 takes what it needs from a pool nobody trains on. Both index lists
 * are ascending and malloc'ed; they partition [0, N). */
int bl_split_holdout(const bl_tensor *labels, int64_t num_classes, int64_t per_class, double max_share, uint64_t seed,
                     int64_t **train_idx, int64_t *n_train, int64_t **val_idx, int64_t *n_val);

/* The validation split of the long-tailed protocols, drawn for a training subset of the rows of
 * `labels` (e.g. a bl_longtail_indices subset): per class, per_class rows from the rows the subset
 * leaves out, the pool nobody trains on (as ImageNet-LT's validation set), so the subset stays the
 * published one; only a class whose pool is short (one the subset kept whole, the head) gives up
 * the rest from the subset itself, at most half of its rows, which then leave *subset. *val is
 * malloc'ed and ascending; per_class 0 gives no rows. The same (labels, subset, per_class, seed)
 * give the same split. */
int bl_split_validation(const bl_tensor *labels, int64_t num_classes, int64_t per_class, uint64_t seed,
                        int64_t **subset, int64_t *n_subset, int64_t **val, int64_t *n_val);

/* ---- samplers --------------------------------------------------------------------------------- */

/* The order in which an epoch visits the training set. Kinds, with n_c the size of class c, N the
 * total, C the number of non-empty classes, t/T = epoch / total_epochs (epochs from 0):
 *   "instance":       a fresh random permutation per epoch (every image once);
 *   "class_balanced": each draw picks a class uniformly (p_c = 1/C), then an image of it uniformly;
 *   "sqrt":           as above with p_c proportional to sqrt(n_c);
 *   "progressive":    p_c = (1 - t/T) * n_c / N + (t/T) / C (Decoupling, Kang et al. 2020).
 * The draws depend only on (seed, epoch), never on earlier calls. */
typedef struct bl_sampler bl_sampler;
bl_sampler *bl_sampler_create(const char *kind, const bl_tensor *labels, int64_t num_classes, uint64_t seed);
void bl_sampler_free(bl_sampler *s);
/* "instance" sampling of n samples, for a source without labels. */
bl_sampler *bl_sampler_instance(int64_t n, uint64_t seed);
/* n draws with replacement, sample i with probability weights[i] / sum (weights: n non-negative
 * values, F32 or F64, read at every epoch, so a recipe's buffer may change them between epochs;
 * the tensor must outlive the sampler). Kind "weighted". */
bl_sampler *bl_sampler_weighted(const bl_tensor *weights, uint64_t seed);
/* A recipe's own order (per environment, hard examples first, ...): fn fills order[0..n) for an
 * epoch, drawing from `rng`, the epoch's stream of (seed, epoch). `kind` names it in checkpoints
 * and logs. */
typedef int (*bl_sampler_fn)(void *user, int epoch, int total_epochs, bl_rng *rng, int64_t *order, int64_t n);
bl_sampler *bl_sampler_custom(const char *kind, int64_t n, bl_sampler_fn fn, void *user, uint64_t seed);
const char *bl_sampler_kind(const bl_sampler *s);
/* Fills order[0..n) with dataset indices for `epoch` of `total_epochs` (n is usually N). */
int bl_sampler_epoch(bl_sampler *s, int epoch, int total_epochs, int64_t *order, int64_t n);
/* The class probabilities p_c the sampler uses in that epoch ("instance": n_c / N). */
int bl_sampler_class_probs(const bl_sampler *s, int epoch, int total_epochs, double *probs);

/* ---- augmentation ----------------------------------------------------------------------------- */

/* A per-image transform run on the loader's thread after normalization: must not touch the step
 * arena or autograd, and draws randomness only from `rng` (so results stay deterministic).
 * The extension point for colour jitter and the like; returns BL_OK or BL_ERR (with an error).
 * Batch-level mixing (mixup, cutmix) changes the targets too: see bl_mix_batch below. */
typedef int (*bl_augment_hook)(float *image, int64_t channels, int64_t height, int64_t width, bl_rng *rng,
                               void *user);

/* Training transforms, applied in this order (torchvision's CIFAR recipe):
 *  1. random crop: pad by crop_pad pixels of value 0 on every side, cut out the original size at a
 *     random offset (top, left) in [0, 2 * crop_pad] each;
 *  2. horizontal flip with probability 1/2;
 *  3. colour jitter (torchvision's ColorJitter without hue) on the pixels in [0, 1]: brightness
 *     (x f), contrast (blend with the image's mean grey) and saturation (blend with each pixel's
 *     grey, 3-channel images only), each with a factor f uniform in [max(0, 1 - s), 1 + s] for its
 *     strength s > 0, in a random order, clamped to [0, 1] after each;
 *  4. normalize: (pixel / 255 - mean[c]) / std[c] (std[c] == 0 leaves the channel at pixel / 255;
 *     a 1-channel image uses entry 0);
 *  5. cutout: rows and columns [centre - cutout/2, centre + cutout/2) around a uniform pixel,
 *     clipped at the border, set to 0 (DeVries & Taylor's definition);
 *  6. hook, when set.
 * Randomness per image, drawn in this order from the image's stream: top, left (when crop_pad > 0),
 * flip (when hflip), the jitter's order and then its factors in that order (when any strength is
 * > 0), centre row, centre column (when cutout > 0). */
typedef struct {
    int crop_pad;
    bool hflip;
    float jitter[3]; /* brightness, contrast, saturation strengths; 0 = off */
    float mean[3], std[3];
    int cutout;
    bl_augment_hook hook;
    void *hook_user;
} bl_augment;

/* Standard normalization constants for a known dataset name (CIFAR's are the ones the long-tail
 * papers use), with crop_pad 4 and hflip for CIFAR training when `train`; other datasets get no
 * random transforms. Unknown names get mean 0, std 1 (pixels / 255). */
bl_augment bl_augment_defaults(const char *dataset_name, bool train);
/* The random stream of the image at `position` of `epoch`'s order for a loader seeded with `seed`. */
bl_rng bl_augment_stream(uint64_t seed, int epoch, int64_t position);
/* Transforms one U8 image (C, H, W) into dst F32 (C, H, W). `aug` NULL = pixels / 255. */
int bl_augment_image(const bl_augment *aug, const uint8_t *src, int64_t channels, int64_t height, int64_t width,
                     bl_rng *rng, float *dst);

/* ---- batch mixing ----------------------------------------------------------------------------- */

/* Mixing a training batch with a shuffled copy of itself, which changes the targets too.
 * mixup (Zhang et al. 2018): x = lam x + (1 - lam) x[perm], lam ~ Beta(mixup, mixup).
 * cutmix (Yun et al. 2019): a box of area ratio 1 - lam' (lam' ~ Beta(cutmix, cutmix)), centred on
 * a uniform pixel and clipped at the border, is pasted from x[perm]; lam is then the share of the
 * pixels each image kept. A batch is mixed with probability `prob`; with both on, each mixed batch
 * takes one of them with probability 1/2 (timm's switch). The loss of a mixed batch is
 * lam L(y) + (1 - lam) L(y[perm]). */
typedef struct {
    double mixup, cutmix; /* the Beta parameter alpha of each; 0 = off */
    double prob;          /* probability that a batch is mixed */
} bl_mix_args;

/* Mixes x F32 (B, C, H, W, contiguous) in place, drawing from rng. *partner gets NULL and *lam 1
 * when the batch stays as it is, else a new I64 (B) tensor y[perm] (step arena) and the weight of y. */
int bl_mix_batch(const bl_mix_args *a, bl_rng *rng, bl_tensor *x, const bl_tensor *y, bl_tensor **partner,
                 double *lam);

/* ---- batches ---------------------------------------------------------------------------------- */

/* A training or evaluation batch: named fields, each a step-arena tensor whose first dimension is
 * the batch. The image loader fills
 *   "x"      F32 (B, C, H, W) augmented and normalized images,
 *   "y"      I64 (B) labels (-1 for a dataset without labels),
 *   "index"  I64 (B) the row of each sample in the dataset it came from (run->train for training
 *            batches), the key of per-sample state such as confidences or weights.
 * A field of variable size per sample (boxes, point sets) stores all samples' rows concatenated
 * along dimension 0, with `lengths` I64 (B) saying how many rows belong to each sample. */
#define BL_BATCH_MAX_FIELDS 16
#define BL_BATCH_FIELD_NAME_MAX 32
typedef struct {
    char name[BL_BATCH_FIELD_NAME_MAX];
    bl_tensor *value;
    bl_tensor *lengths; /* NULL for a fixed-size field */
} bl_batch_field;

typedef struct {
    int64_t size; /* samples in the batch */
    int n_fields;
    bl_batch_field fields[BL_BATCH_MAX_FIELDS];
    /* Batch mixing (train.augment.mixup / cutmix): when mixed, "x" holds the mixed images,
     * "y_mix" the labels mixed in, and mix_lam the weight of "y" (see bl_batch_label_loss). */
    double mix_lam;
    bool mix_used; /* set by bl_batch_label_loss: the recipe's loss took the mixing */
} bl_batch;

/* The field named `name`, or NULL (no error set) when the batch has none. */
bl_tensor *bl_batch_get(const bl_batch *b, const char *name);
/* Adds or replaces a field; `lengths` NULL for a fixed-size field, whose first dimension must be
 * the batch size. */
int bl_batch_set(bl_batch *b, const char *name, bl_tensor *value, bl_tensor *lengths);

/* ---- data sources ------------------------------------------------------------------------------ */

/* A batch as plain host memory, filled on the loader's thread (no arena, no autograd): named fields
 * whose buffers are reused from batch to batch. A variable-size field keeps every sample's rows
 * concatenated along dimension 0 and `lengths[i]` rows for sample i. */
typedef struct {
    char name[BL_BATCH_FIELD_NAME_MAX];
    bl_dtype dtype;
    int ndim;
    int64_t shape[BL_MAX_DIMS]; /* shape[0]: samples (fixed-size) or all samples' rows (variable) */
    bool variable;
    void *data;
    size_t cap;                 /* bytes */
    int64_t *lengths;           /* variable-size: rows per sample (size entries) */
    size_t lengths_cap;         /* entries */
} bl_host_field;

typedef struct {
    int64_t size; /* samples */
    int n_fields;
    bl_host_field fields[BL_BATCH_MAX_FIELDS];
} bl_host_batch;

/* A fixed-size field of the whole batch at once, of dtype `dt` and shape (shape[0] = samples):
 * created or resized, its contents undefined; returns its data. */
void *bl_host_batch_field(bl_host_batch *b, const char *name, bl_dtype dt, int ndim, const int64_t *shape);
/* Appends one sample's value to field `name`: `sample_shape` is the sample's own shape (ndim
 * entries); `variable` fields may differ in sample_shape[0] from sample to sample and get
 * lengths. Every sample of a batch must give every field with the same dtype and (fixed-size)
 * shape. */
int bl_host_batch_append(bl_host_batch *b, const char *name, bl_dtype dt, int ndim, const int64_t *sample_shape,
                         const void *data, bool variable);
/* Empties the batch for the next one, keeping the buffers. */
void bl_host_batch_reset(bl_host_batch *b);
void bl_host_batch_free(bl_host_batch *b);

/* A dataset as the loader reads it: a number of samples, and a way to produce one (get) or a
 * batch of them (collate). A new benchmark implements this and nothing else to be loaded,
 * shuffled, sampled and batched. Both run on the loader's thread: they must not touch the step
 * arena or autograd, and draw randomness only from the stream they are given (the sample's, keyed
 * by seed, epoch and position), so batches never depend on thread timing. */
typedef struct {
    void *self;
    int64_t (*length)(void *self);
    /* Appends sample `row` to `out` with bl_host_batch_append. */
    int (*get)(void *self, int64_t row, bl_rng *rng, bl_host_batch *out);
    /* Optional, instead of get: samples rows[0..n) at once into `out` (bl_host_batch_field);
     * rngs[i] is sample i's stream. */
    int (*collate)(void *self, const int64_t *rows, int64_t n, bl_rng *rngs, bl_host_batch *out);
    void (*release)(void *self); /* optional: frees self */
} bl_source;

/* The source of a labelled image dataset: fields "x" (F32 (C, H, W) through `aug`, NULL: pixels /
 * 255) and "y" (I64, -1 without labels). `ds` must outlive the source; `aug` is copied. */
int bl_image_source(const bl_dataset *ds, const bl_augment *aug, bl_source *out);
/* Frees what the source holds (release), and zeroes it. */
void bl_source_free(bl_source *s);

/* ---- the loader ------------------------------------------------------------------------------- */

/* Batches of a source in the order a sampler gives (NULL: 0, 1, ..., N-1); every batch also has
 * the field "index", the rows its samples came from. A background thread prepares batch k+1 (into the second of two
 * buffers) while the caller works on batch k. The content of every batch depends only on
 * (dataset, sampler, aug, seed, epoch), never on thread timing. `ds` must outlive the loader; the
 * loader does not own the sampler. */
typedef struct bl_loader bl_loader;
bl_loader *bl_loader_create_source(const bl_source *src, bl_sampler *sampler, int64_t batch, bool drop_last,
                                   uint64_t seed);
/* The loader of an image dataset: bl_image_source(ds, aug) (the loader owns that source). */
bl_loader *bl_loader_create(const bl_dataset *ds, bl_sampler *sampler, int64_t batch, bool drop_last,
                            const bl_augment *aug, uint64_t seed);
/* Starts epoch `epoch` (from 0) of `total_epochs`: draws its order and sets the thread to work. */
int bl_loader_start_epoch(bl_loader *l, int epoch, int total_epochs);
/* The next batch: the source's fields and "index" as new step-arena tensors (the caller's
 * bl_scope_end frees them). False at the end of the
 * epoch, or on error (bl_last_error() set). */
bool bl_loader_next(bl_loader *l, bl_batch *out);
/* Batches per epoch: N / batch, rounded down with drop_last, else up. */
int64_t bl_loader_batches(const bl_loader *l);
/* Samples in batch `b` (from 0) of an epoch, all processes' together: `batch`, or fewer for the
 * last one without drop_last; 0 outside the epoch. */
int64_t bl_loader_batch_rows(const bl_loader *l, int64_t b);
/* Makes the loader one of `size` processes' shares of the same loader (data parallelism): every
 * process draws the same epoch order and the same batches, and this one yields rows
 * [rank R / size, (rank + 1) R / size) of each batch of R samples, each with the random stream of
 * its position in the whole epoch's order, so every sample is transformed as it would be in one
 * process whatever the number of processes. Call before the first epoch; BL_ERR when the epoch's
 * last batch is too small to give every process a sample. */
int bl_loader_shard(bl_loader *l, int rank, int size);
void bl_loader_free(bl_loader *l);

#ifdef __cplusplus
}
#endif
#endif
