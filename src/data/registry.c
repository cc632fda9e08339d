/* The registry of known datasets: where their files are looked for, how each split is read, and
 * the image-folder format (one subfolder per class). Known datasets are checked against their
 * official sizes, so a truncated download is reported with the file's name rather than silently
 * training on part of the data. */
#include "ballast/data.h"

#include "core/internal.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>

static const char *const cifar10_train[] = {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                                            "data_batch_4.bin", "data_batch_5.bin", NULL};
static const char *const cifar10_test[] = {"test_batch.bin", NULL};
static const char *const cifar100_train[] = {"train.bin", NULL};
static const char *const cifar100_test[] = {"test.bin", NULL};
static const char *const idx_train[] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte", NULL};
static const char *const idx_test[] = {"t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", NULL};

static const char *const cifar10_urls[] = {"https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz", NULL};
static const char *const cifar100_urls[] = {"https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz", NULL};
/* The original MNIST site often refuses scripted downloads; the second is the mirror PyTorch uses. */
static const char *const mnist_urls[] = {"https://yann.lecun.com/exdb/mnist/",
                                         "https://ossci-datasets.s3.amazonaws.com/mnist/", NULL};
static const char *const fashion_urls[] = {"http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", NULL};

static const char *const cifar10_names[] = {"airplane", "automobile", "bird",  "cat",  "deer",
                                            "dog",      "frog",       "horse", "ship", "truck"};
static const char *const mnist_names[] = {"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"};
static const char *const fashion_names[] = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                            "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};

typedef enum { FORMAT_CIFAR, FORMAT_IDX } file_format;

/* The public description plus what the registry needs to read a dataset. */
typedef struct {
    bl_dataset_info info;
    file_format format;
    int label_bytes, label_index;   /* CIFAR records */
    const char *names_file;         /* class names shipped with the data, one per line */
    const char *const *fixed_names; /* used when there is no names file */
    const char *alt_subdirs[3];     /* other layouts in common use (e.g. torchvision's) */
    const char *system_dir;         /* a distribution package's folder */
} dataset_entry;

static const dataset_entry entries[] = {
    {{"cifar10", "CIFAR-10, 32x32 colour images in 10 classes", "cifar-10-batches-bin", 10, 50000, 10000,
      cifar10_train, cifar10_test, cifar10_urls},
     FORMAT_CIFAR, 1, 0, "batches.meta.txt", cifar10_names, {NULL}, NULL},
    {{"cifar100", "CIFAR-100, 32x32 colour images in 100 fine classes", "cifar-100-binary", 100, 50000, 10000,
      cifar100_train, cifar100_test, cifar100_urls},
     FORMAT_CIFAR, 2, 1, "fine_label_names.txt", NULL, {NULL}, NULL},
    {{"cifar100_coarse", "CIFAR-100 with its 20 coarse (superclass) labels", "cifar-100-binary", 20, 50000, 10000,
      cifar100_train, cifar100_test, cifar100_urls},
     FORMAT_CIFAR, 2, 0, "coarse_label_names.txt", NULL, {NULL}, NULL},
    {{"mnist", "MNIST handwritten digits, 28x28 grayscale, 10 classes", "mnist", 10, 60000, 10000, idx_train,
      idx_test, mnist_urls},
     FORMAT_IDX, 0, 0, NULL, mnist_names, {"MNIST/raw", NULL}, NULL},
    {{"fashion_mnist", "Fashion-MNIST clothing, 28x28 grayscale, 10 classes", "fashion-mnist", 10, 60000, 10000,
      idx_train, idx_test, fashion_urls},
     FORMAT_IDX, 0, 0, NULL, fashion_names, {"fashion_mnist", "FashionMNIST/raw", NULL},
     "/usr/share/datasets/fashion-mnist"},
};
#define N_ENTRIES ((int)(sizeof entries / sizeof entries[0]))

int bl_dataset_known(const bl_dataset_info **infos) {
    static bl_dataset_info list[N_ENTRIES];
    for (int i = 0; i < N_ENTRIES; i++) list[i] = entries[i].info;
    *infos = list;
    return N_ENTRIES;
}

static const dataset_entry *find_entry(const char *name) {
    for (int i = 0; i < N_ENTRIES; i++)
        if (strcmp(entries[i].info.name, name) == 0) return &entries[i];
    return NULL;
}

const bl_dataset_info *bl_dataset_find_info(const char *name) {
    const dataset_entry *e = name ? find_entry(name) : NULL;
    return e ? &e->info : NULL;
}

/* ---- locations ---------------------------------------------------------------------------------- */

static bool is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int bl_data_default_root(char *buf, size_t len) {
    const char *env = getenv("BALLAST_DATA"), *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    int n;
    if (env && *env)
        n = snprintf(buf, len, "%s", env);
    else if (xdg && *xdg)
        n = snprintf(buf, len, "%s/ballast", xdg);
    else if (home && *home)
        n = snprintf(buf, len, "%s/.local/share/ballast", home);
    else {
        bl_set_error("no data root: set BALLAST_DATA (neither XDG_DATA_HOME nor HOME is set)");
        return BL_ERR;
    }
    BL_CHECK_RC(n >= 0 && (size_t)n < len, "data root path too long");
    return BL_OK;
}

int bl_data_search_roots(char (*roots)[512], int max) {
    int n = 0;
    const char *env = getenv("BALLAST_DATA"), *xdg = getenv("XDG_DATA_HOME"), *home = getenv("HOME");
    if (env && *env && n < max) snprintf(roots[n++], 512, "%s", env);
    if (xdg && *xdg && n < max)
        snprintf(roots[n++], 512, "%s/ballast", xdg);
    else if (home && *home && n < max)
        snprintf(roots[n++], 512, "%s/.local/share/ballast", home);
    static const char *const shared[] = {"/usr/local/share/ballast", "/usr/share/ballast"};
    for (int i = 0; i < 2 && n < max; i++) snprintf(roots[n++], 512, "%s", shared[i]);
    return n;
}

/* A dataset file as present on disk: the plain name, else its ".gz" twin; the plain name when
 * neither exists, so the reader's error names what was expected. */
static void data_file(const char *dir, const char *file, char *out, size_t len) {
    snprintf(out, len, "%s/%s", dir, file);
    if (is_file(out)) return;
    snprintf(out, len, "%s/%s.gz", dir, file);
    if (is_file(out)) return;
    snprintf(out, len, "%s/%s", dir, file);
}

/* True when `dir` holds at least one of the dataset's files (the rest are checked on loading). */
static bool holds_dataset(const dataset_entry *e, const char *dir) {
    const char *const *lists[2] = {e->info.train_files, e->info.test_files};
    for (int l = 0; l < 2; l++)
        for (const char *const *f = lists[l]; *f; f++) {
            char path[1024];
            data_file(dir, *f, path, sizeof path);
            if (is_file(path)) return true;
        }
    return false;
}

/* Checks <root>/<subdir> and the alternative layouts; with `root_itself` also <root>. */
static bool find_in_root(const dataset_entry *e, const char *root, bool root_itself, char *dir, size_t len) {
    const char *subdirs[4] = {e->info.subdir, e->alt_subdirs[0], e->alt_subdirs[1], e->alt_subdirs[2]};
    for (int i = 0; i < 4 && subdirs[i]; i++) {
        snprintf(dir, len, "%s/%s", root, subdirs[i]);
        if (is_dir(dir) && holds_dataset(e, dir)) return true;
    }
    snprintf(dir, len, "%s", root);
    return root_itself && holds_dataset(e, dir);
}

int bl_dataset_locate(const char *name, const char *root, char *dir, size_t len) {
    const dataset_entry *e = find_entry(name);
    BL_CHECK_RC(e, "unknown dataset '%s' (known: cifar10, cifar100, cifar100_coarse, mnist, fashion_mnist, "
                   "folder:<path>)", name);
    if (root && *root) {
        if (find_in_root(e, root, true, dir, len)) return BL_OK;
        bl_set_error("dataset '%s' not found in %s (expected its files in %s/%s)", name, root, root, e->info.subdir);
        return BL_ERR;
    }
    char roots[8][512];
    int n = bl_data_search_roots(roots, 8);
    char looked[8 * 520] = "";
    for (int i = 0; i < n; i++) {
        if (find_in_root(e, roots[i], false, dir, len)) return BL_OK;
        size_t used = strlen(looked);
        snprintf(looked + used, sizeof looked - used, "%s%.511s", i ? ", " : "", roots[i]);
    }
    if (e->system_dir) {
        snprintf(dir, len, "%s", e->system_dir);
        if (holds_dataset(e, dir)) return BL_OK;
        size_t used = strlen(looked);
        snprintf(looked + used, sizeof looked - used, ", %s", e->system_dir);
    }
    bl_set_error("dataset '%s' not found: looked for %s/ in %s; set dataset.root or BALLAST_DATA, or fetch it "
                 "with `ballast data import %s PATH` or `ballast data download %s`",
                 name, e->info.subdir, looked, name, name);
    return BL_ERR;
}

/* ---- class names -------------------------------------------------------------------------------- */

static char **copy_names(const char *const *names, int64_t n) {
    char **out = calloc((size_t)n, sizeof *out);
    for (int64_t i = 0; out && i < n; i++)
        if (!(out[i] = strdup(names[i]))) {
            while (i-- > 0) free(out[i]);
            free(out);
            return NULL;
        }
    return out;
}

/* Names from a file of one name per line (blank lines skipped); NULL unless it has exactly n. */
static char **read_names_file(const char *path, int64_t n) {
    FILE *f = fopen(path, "r");
    if (!f) return NULL;
    char **names = calloc((size_t)n, sizeof *names);
    int64_t count = 0;
    char line[256];
    bool ok = names != NULL;
    while (ok && fgets(line, sizeof line, f)) {
        size_t len = strlen(line);
        while (len && isspace((unsigned char)line[len - 1])) line[--len] = '\0';
        if (len == 0) continue;
        if (count == n) {
            ok = false;
            break;
        }
        ok = (names[count++] = strdup(line)) != NULL;
    }
    fclose(f);
    if (ok && count == n) return names;
    for (int64_t i = 0; names && i < count; i++) free(names[i]);
    free(names);
    return NULL;
}

/* ---- known formats ------------------------------------------------------------------------------ */

/* Stacks the tensors of several datasets (same C, H, W) into `out`. */
static int concat_parts(bl_dataset *parts, int n_parts, bl_dataset *out) {
    int64_t total = 0;
    for (int i = 0; i < n_parts; i++) total += parts[i].images->shape[0];
    const int64_t *s = parts[0].images->shape;
    out->images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(total, s[1], s[2], s[3]));
    out->labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(total));
    if (!out->images || !out->labels) return BL_ERR;
    size_t img_off = 0, lab_off = 0;
    for (int i = 0; i < n_parts; i++) {
        memcpy((char *)out->images->data + img_off, parts[i].images->data, bl_nbytes(parts[i].images));
        memcpy((char *)out->labels->data + lab_off, parts[i].labels->data, bl_nbytes(parts[i].labels));
        img_off += bl_nbytes(parts[i].images);
        lab_off += bl_nbytes(parts[i].labels);
    }
    return BL_OK;
}

static int load_cifar(const dataset_entry *e, const char *dir, bool train, bl_dataset *out) {
    const char *const *files = train ? e->info.train_files : e->info.test_files;
    int n_files = 0;
    while (files[n_files]) n_files++;
    int64_t expect = (train ? e->info.train_size : e->info.test_size) / n_files;
    bl_dataset parts[8];
    memset(parts, 0, sizeof parts);
    int rc = BL_OK;
    for (int i = 0; i < n_files && rc == BL_OK; i++) {
        char path[1024];
        data_file(dir, files[i], path, sizeof path);
        rc = bl_read_cifar(path, e->label_bytes, e->label_index, &parts[i]);
        if (rc == BL_OK && parts[i].images->shape[0] != expect) {
            bl_set_error("%s: %lld records, the official file has %lld (truncated or not the %s file?)", path,
                         (long long)parts[i].images->shape[0], (long long)expect, e->info.name);
            rc = BL_ERR;
        }
    }
    if (rc == BL_OK) rc = concat_parts(parts, n_files, out);
    for (int i = 0; i < n_files; i++) bl_dataset_free(&parts[i]);
    return rc;
}

static int load_idx(const dataset_entry *e, const char *dir, bool train, bl_dataset *out) {
    const char *const *files = train ? e->info.train_files : e->info.test_files;
    int64_t expect = train ? e->info.train_size : e->info.test_size;
    char images_path[1024], labels_path[1024];
    data_file(dir, files[0], images_path, sizeof images_path);
    data_file(dir, files[1], labels_path, sizeof labels_path);
    BL_TRY(bl_read_idx_images(images_path, &out->images));
    BL_TRY(bl_read_idx_labels(labels_path, &out->labels));
    const int64_t *s = out->images->shape;
    BL_CHECK_RC(s[0] == expect && s[2] == 28 && s[3] == 28,
                "%s: %lld images of %lldx%lld, the official file has %lld of 28x28 (truncated or another file?)",
                images_path, (long long)s[0], (long long)s[2], (long long)s[3], (long long)expect);
    BL_CHECK_RC(out->labels->shape[0] == expect, "%s: %lld labels, the official file has %lld", labels_path,
                (long long)out->labels->shape[0], (long long)expect);
    return BL_OK;
}

/* ---- image folders ------------------------------------------------------------------------------ */

typedef struct {
    char **items;
    int64_t n, cap;
} name_list;

static void names_free(name_list *l) {
    for (int64_t i = 0; i < l->n; i++) free(l->items[i]);
    free(l->items);
    memset(l, 0, sizeof *l);
}

static int names_push(name_list *l, const char *name) {
    if (l->n == l->cap) {
        int64_t cap = l->cap ? 2 * l->cap : 64;
        char **grown = realloc(l->items, (size_t)cap * sizeof *grown);
        BL_CHECK_RC(grown, "out of memory listing a folder");
        l->items = grown;
        l->cap = cap;
    }
    BL_CHECK_RC(l->items[l->n] = strdup(name), "out of memory listing a folder");
    l->n++;
    return BL_OK;
}

static int compare_names(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool has_image_extension(const char *name) {
    const char *dot = strrchr(name, '.');
    return dot && (strcasecmp(dot, ".png") == 0 || strcasecmp(dot, ".jpg") == 0 || strcasecmp(dot, ".jpeg") == 0);
}

/* Sorted entries of `dir` (hidden ones skipped): subfolders, or image files. */
static int list_dir(const char *dir, bool want_dirs, name_list *out) {
    DIR *d = opendir(dir);
    BL_CHECK_RC(d, "%s: cannot open folder (%s)", dir, strerror(errno));
    struct dirent *ent;
    int rc = BL_OK;
    while (rc == BL_OK && (ent = readdir(d))) {
        if (ent->d_name[0] == '.') continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        if (want_dirs ? is_dir(path) : (has_image_extension(ent->d_name) && is_file(path)))
            rc = names_push(out, ent->d_name);
    }
    closedir(d);
    if (rc == BL_OK) qsort(out->items, (size_t)out->n, sizeof *out->items, compare_names);
    return rc;
}

/* Reads <dir>/<class>/<file> with labels given by the position of <class> in `classes`; a subfolder
 * that is not a listed class is an error (its label would be meaningless). */
static int read_folder_with_classes(const char *dir, const name_list *classes, bl_dataset *out) {
    name_list subdirs = {0};
    BL_TRY(list_dir(dir, true, &subdirs));
    bl_tensor **images = NULL;
    int64_t *labels = NULL, n = 0, cap = 0;
    int rc = BL_OK;
    for (int64_t s = 0; s < subdirs.n && rc == BL_OK; s++) {
        int64_t label = -1;
        for (int64_t c = 0; c < classes->n; c++)
            if (strcmp(classes->items[c], subdirs.items[s]) == 0) label = c;
        if (label < 0) {
            bl_set_error("%s/%s: a class folder the training split does not have", dir, subdirs.items[s]);
            rc = BL_ERR;
            break;
        }
        char class_dir[1024];
        snprintf(class_dir, sizeof class_dir, "%s/%s", dir, subdirs.items[s]);
        name_list files = {0};
        rc = list_dir(class_dir, false, &files);
        for (int64_t f = 0; f < files.n && rc == BL_OK; f++) {
            if (n == cap) {
                cap = cap ? 2 * cap : 256;
                bl_tensor **gi = realloc(images, (size_t)cap * sizeof *gi);
                if (gi) images = gi;
                int64_t *gl = realloc(labels, (size_t)cap * sizeof *gl);
                if (gl) labels = gl;
                if (!gi || !gl) {
                    bl_set_error("%s: out of memory reading the folder", dir);
                    rc = BL_ERR;
                    break;
                }
            }
            char path[1280];
            snprintf(path, sizeof path, "%s/%s", class_dir, files.items[f]);
            rc = bl_read_image(path, &images[n]);
            if (rc != BL_OK) break;
            labels[n] = label;
            /* Every image must match the first one's size: there is no resizing here. */
            const bl_tensor *first = images[0], *img = images[n];
            if (img->shape[1] != first->shape[1] || img->shape[2] != first->shape[2]) {
                bl_set_error("%s: image of %lldx%lld, but the folder's first image is %lldx%lld (resize them to one "
                             "size)", path, (long long)img->shape[1], (long long)img->shape[2],
                             (long long)first->shape[1], (long long)first->shape[2]);
                rc = BL_ERR;
                n++;
                break;
            }
            n++;
        }
        names_free(&files);
    }
    if (rc == BL_OK && n == 0) {
        bl_set_error("%s: no .png/.jpg images in class subfolders", dir);
        rc = BL_ERR;
    }
    if (rc == BL_OK) {
        int64_t channels = 1, h = images[0]->shape[1], w = images[0]->shape[2];
        for (int64_t i = 0; i < n; i++)
            if (images[i]->shape[0] == 3) channels = 3;
        out->images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(n, channels, h, w));
        out->labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(n));
        if (!out->images || !out->labels) rc = BL_ERR;
        for (int64_t i = 0; rc == BL_OK && i < n; i++) {
            uint8_t *dst = (uint8_t *)out->images->data + i * channels * h * w;
            for (int64_t c = 0; c < channels; c++) /* grey images are replicated into every channel */
                memcpy(dst + c * h * w, (uint8_t *)images[i]->data + (images[i]->shape[0] == 3 ? c : 0) * h * w,
                       (size_t)(h * w));
            ((int64_t *)out->labels->data)[i] = labels[i];
        }
    }
    for (int64_t i = 0; i < n; i++) bl_tensor_free(images[i]);
    free(images);
    free(labels);
    names_free(&subdirs);
    if (rc == BL_OK) {
        out->num_classes = classes->n;
        out->class_names = copy_names((const char *const *)classes->items, classes->n);
        if (!out->class_names) rc = BL_ERR;
    }
    if (rc != BL_OK) bl_dataset_free(out);
    return rc;
}

int bl_read_image_folder(const char *dir, bl_dataset *out) {
    memset(out, 0, sizeof *out);
    name_list classes = {0};
    BL_TRY(list_dir(dir, true, &classes));
    int rc = BL_OK;
    if (classes.n == 0) {
        bl_set_error("%s: no class subfolders (expected %s/<class>/*.png|jpg)", dir, dir);
        rc = BL_ERR;
    }
    if (rc == BL_OK) rc = read_folder_with_classes(dir, &classes, out);
    names_free(&classes);
    return rc;
}

static int load_folder(const char *path, bool train, bl_dataset *out) {
    char train_dir[1024], split_dir[1024];
    snprintf(train_dir, sizeof train_dir, "%s/train", path);
    bool has_splits = is_dir(train_dir);
    if (!has_splits) snprintf(train_dir, sizeof train_dir, "%s", path);
    if (train) return bl_read_image_folder(train_dir, out);
    snprintf(split_dir, sizeof split_dir, "%s/test", path);
    if (!is_dir(split_dir)) snprintf(split_dir, sizeof split_dir, "%s/val", path);
    BL_CHECK_RC(has_splits && is_dir(split_dir),
                "folder:%s: no test split (expected %s/train and %s/test or %s/val holding class subfolders)", path,
                path, path, path);
    /* The test split is labelled with the training split's classes, so labels agree even when a
     * class has no test images. */
    name_list classes = {0};
    BL_TRY(list_dir(train_dir, true, &classes));
    int rc = read_folder_with_classes(split_dir, &classes, out);
    names_free(&classes);
    return rc;
}

int bl_dataset_load(const char *name, const char *root, bool train, bl_dataset *out) {
    memset(out, 0, sizeof *out);
    BL_CHECK_RC(name && *name, "bl_dataset_load: no dataset name");
    if (strncmp(name, "folder:", 7) == 0) return load_folder(name + 7, train, out);
    const dataset_entry *e = find_entry(name);
    char dir[1024];
    BL_TRY(bl_dataset_locate(name, root, dir, sizeof dir));
    int rc = e->format == FORMAT_CIFAR ? load_cifar(e, dir, train, out) : load_idx(e, dir, train, out);
    if (rc == BL_OK) {
        out->num_classes = e->info.num_classes;
        int64_t counts_ok = bl_class_counts(out->labels, out->num_classes, NULL);
        if (counts_ok < 0) rc = BL_ERR;
    }
    if (rc == BL_OK) {
        char names_path[1100];
        snprintf(names_path, sizeof names_path, "%s/%s", dir, e->names_file ? e->names_file : "");
        if (e->names_file) out->class_names = read_names_file(names_path, out->num_classes);
        if (!out->class_names && e->fixed_names) out->class_names = copy_names(e->fixed_names, out->num_classes);
    }
    if (rc != BL_OK) bl_dataset_free(out);
    return rc;
}
