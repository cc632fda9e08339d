/* Subsets of a dataset: class counts, the long-tailed profiles of the LDAM / BBN protocol, a
 * validation split held out of the training data, and index files that record a split so it can
 * be reproduced or shared. Every random choice is a per-class shuffle drawn from (seed, class), so
 * a class's choice does not depend on the other classes. */
#include "ballast/data.h"

#include "core/internal.h"

#include "ballast/files.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Random-stream purposes: one per kind of draw, offset by the class. */
#define PURPOSE_LONGTAIL 0x4c6f6e6754000000ull /* "LongT" */
#define PURPOSE_HOLDOUT 0x486f6c644f000000ull  /* "HoldO" */

static int check_labels(const bl_tensor *labels) {
    BL_CHECK_RC(labels, "no labels (the dataset has none)");
    BL_CHECK_RC(labels->dtype == BL_I64 && labels->ndim == 1 && bl_is_contiguous(labels),
                "labels must be a contiguous I64 vector, got %s %s", bl_dtype_name(labels->dtype), bl__shape(labels));
    return BL_OK;
}

int64_t bl_class_counts(const bl_tensor *labels, int64_t num_classes, int64_t *counts) {
    if (check_labels(labels) != BL_OK) return -1;
    BL_CHECK_OR(-1, num_classes > 0, "class counts: num_classes must be positive, got %lld", (long long)num_classes);
    if (counts) memset(counts, 0, (size_t)num_classes * sizeof *counts);
    const int64_t *y = labels->data;
    int64_t n = labels->shape[0];
    for (int64_t i = 0; i < n; i++) {
        BL_CHECK_OR(-1, y[i] >= 0 && y[i] < num_classes, "label %lld at position %lld is outside [0, %lld)",
                    (long long)y[i], (long long)i, (long long)num_classes);
        if (counts) counts[y[i]]++;
    }
    return n;
}

int bl_longtail_counts(const char *profile, double imbalance, int64_t n_max, int64_t num_classes, int64_t *counts) {
    BL_CHECK_RC(profile && (strcmp(profile, "exp") == 0 || strcmp(profile, "step") == 0),
                "long-tail profile must be \"exp\" or \"step\", got \"%s\"", profile ? profile : "(null)");
    BL_CHECK_RC(imbalance >= 1.0 && isfinite(imbalance), "imbalance factor must be >= 1, got %g", imbalance);
    BL_CHECK_RC(num_classes > 0 && n_max >= 0, "long tail of %lld classes with n_max %lld", (long long)num_classes,
                (long long)n_max);
    /* The same floating-point expression as the reference Python, including the truncation, so
     * the counts agree to the image: img_max * (imb_factor ** (i / (C - 1.0))), imb_factor = 1/r. */
    double rho = 1.0 / imbalance;
    for (int64_t i = 0; i < num_classes; i++) {
        if (profile[0] == 'e')
            counts[i] = num_classes == 1 ? n_max : (int64_t)((double)n_max * pow(rho, (double)i / (num_classes - 1.0)));
        else
            counts[i] = i < num_classes / 2 ? n_max : (int64_t)((double)n_max * rho);
    }
    return BL_OK;
}

static int compare_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* The dataset indices of each class, grouped: class c's are members[start[c] .. start[c + 1]). */
typedef struct {
    int64_t *members, *start;
} class_groups;

static int group_by_class(const bl_tensor *labels, int64_t num_classes, class_groups *g) {
    g->members = g->start = NULL;
    int64_t n = labels->shape[0];
    g->start = calloc((size_t)num_classes + 1, sizeof *g->start);
    g->members = malloc((size_t)(n ? n : 1) * sizeof *g->members);
    int64_t *fill = calloc((size_t)num_classes, sizeof *fill);
    if (!g->start || !g->members || !fill) {
        free(g->start);
        free(g->members);
        free(fill);
        bl_set_error("out of memory grouping %lld labels by class", (long long)n);
        return BL_ERR;
    }
    const int64_t *y = labels->data;
    for (int64_t i = 0; i < n; i++) g->start[y[i] + 1]++;
    for (int64_t c = 0; c < num_classes; c++) g->start[c + 1] += g->start[c];
    for (int64_t i = 0; i < n; i++) g->members[g->start[y[i]] + fill[y[i]]++] = i; /* ascending within a class */
    free(fill);
    return BL_OK;
}

static void groups_free(class_groups *g) {
    free(g->members);
    free(g->start);
}

int bl_longtail_indices(const bl_tensor *labels, int64_t num_classes, const char *profile, double imbalance,
                        uint64_t seed, int64_t **indices, int64_t *n) {
    *indices = NULL;
    *n = 0;
    int64_t *counts = calloc((size_t)(num_classes > 0 ? num_classes : 1), sizeof *counts);
    int64_t *target = calloc((size_t)(num_classes > 0 ? num_classes : 1), sizeof *target);
    class_groups g = {NULL, NULL};
    int rc = counts && target ? BL_OK : BL_ERR;
    if (rc != BL_OK) bl_set_error("out of memory");
    if (rc == BL_OK && bl_class_counts(labels, num_classes, counts) < 0) rc = BL_ERR;
    int64_t n_max = 0;
    for (int64_t c = 0; rc == BL_OK && c < num_classes; c++)
        if (counts[c] > n_max) n_max = counts[c];
    if (rc == BL_OK) rc = bl_longtail_counts(profile, imbalance, n_max, num_classes, target);
    if (rc == BL_OK) rc = group_by_class(labels, num_classes, &g);
    int64_t total = 0;
    for (int64_t c = 0; rc == BL_OK && c < num_classes; c++) {
        if (target[c] > counts[c]) target[c] = counts[c];
        total += target[c];
    }
    int64_t *out = rc == BL_OK ? malloc((size_t)(total ? total : 1) * sizeof *out) : NULL;
    if (rc == BL_OK && !out) {
        bl_set_error("out of memory");
        rc = BL_ERR;
    }
    int64_t k = 0;
    for (int64_t c = 0; rc == BL_OK && c < num_classes; c++) {
        int64_t *members = g.members + g.start[c];
        bl_rng r = bl_rng_make(seed, PURPOSE_LONGTAIL + (uint64_t)c);
        bl_rng_shuffle(&r, members, counts[c]);
        memcpy(out + k, members, (size_t)target[c] * sizeof *out);
        k += target[c];
    }
    if (rc == BL_OK) {
        qsort(out, (size_t)total, sizeof *out, compare_i64);
        *indices = out;
        *n = total;
    } else {
        free(out);
    }
    if (g.members) groups_free(&g);
    free(counts);
    free(target);
    return rc;
}

int bl_split_holdout(const bl_tensor *labels, int64_t num_classes, int64_t per_class, double max_share, uint64_t seed,
                     int64_t **train_idx, int64_t *n_train, int64_t **val_idx, int64_t *n_val) {
    *train_idx = *val_idx = NULL;
    *n_train = *n_val = 0;
    BL_CHECK_RC(per_class >= 0, "validation images per class must be >= 0, got %lld", (long long)per_class);
    BL_CHECK_RC(max_share >= 0 && max_share <= 1, "validation share of a class must be in [0, 1], got %g", max_share);
    if (bl_class_counts(labels, num_classes, NULL) < 0) return BL_ERR;
    class_groups g;
    BL_TRY(group_by_class(labels, num_classes, &g));
    int64_t n = labels->shape[0];
    int64_t *train = malloc((size_t)(n ? n : 1) * sizeof *train), *val = malloc((size_t)(n ? n : 1) * sizeof *val);
    if (!train || !val) {
        free(train);
        free(val);
        groups_free(&g);
        bl_set_error("out of memory");
        return BL_ERR;
    }
    int64_t nt = 0, nv = 0;
    for (int64_t c = 0; c < num_classes; c++) {
        int64_t count = g.start[c + 1] - g.start[c], most = (int64_t)floor(max_share * (double)count);
        int64_t take = per_class < most ? per_class : most;
        int64_t *members = g.members + g.start[c];
        bl_rng r = bl_rng_make(seed, PURPOSE_HOLDOUT + (uint64_t)c);
        bl_rng_shuffle(&r, members, count);
        memcpy(val + nv, members, (size_t)take * sizeof *val);
        memcpy(train + nt, members + take, (size_t)(count - take) * sizeof *train);
        nv += take;
        nt += count - take;
    }
    groups_free(&g);
    qsort(train, (size_t)nt, sizeof *train, compare_i64);
    qsort(val, (size_t)nv, sizeof *val, compare_i64);
    *train_idx = train;
    *val_idx = val;
    *n_train = nt;
    *n_val = nv;
    return BL_OK;
}

int bl_indices_complement(const int64_t *indices, int64_t n, int64_t total, int64_t **out, int64_t *n_out) {
    *out = NULL;
    *n_out = 0;
    bool *taken = calloc((size_t)(total > 0 ? total : 1), sizeof *taken);
    BL_CHECK_RC(taken, "out of memory");
    for (int64_t i = 0; i < n; i++) {
        if (indices[i] < 0 || indices[i] >= total) {
            free(taken);
            bl_set_error("index %lld at position %lld is outside [0, %lld)", (long long)indices[i], (long long)i,
                         (long long)total);
            return BL_ERR;
        }
        taken[indices[i]] = true;
    }
    int64_t *rest = malloc((size_t)(total > 0 ? total : 1) * sizeof *rest), k = 0;
    if (!rest) {
        free(taken);
        bl_set_error("out of memory");
        return BL_ERR;
    }
    for (int64_t i = 0; i < total; i++)
        if (!taken[i]) rest[k++] = i;
    free(taken);
    *out = rest;
    *n_out = k;
    return BL_OK;
}

int bl_dataset_subset(const bl_dataset *src, const int64_t *idx, int64_t n, bl_dataset *out) {
    memset(out, 0, sizeof *out);
    BL_CHECK_RC(src && src->images && src->images->ndim == 4 && bl_is_contiguous(src->images) &&
                    src->images->dtype == BL_U8,
                "dataset subset: the source needs contiguous U8 (N, C, H, W) images");
    BL_CHECK_RC(n >= 0, "dataset subset: negative size %lld", (long long)n);
    const int64_t *s = src->images->shape;
    for (int64_t i = 0; i < n; i++)
        BL_CHECK_RC(idx[i] >= 0 && idx[i] < s[0], "dataset subset: index %lld at position %lld is outside [0, %lld)",
                    (long long)idx[i], (long long)i, (long long)s[0]);
    if (src->labels) BL_TRY(check_labels(src->labels));
    size_t row = (size_t)(s[1] * s[2] * s[3]);
    out->images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(n, s[1], s[2], s[3]));
    if (src->labels) out->labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(n));
    if (!out->images || (src->labels && !out->labels)) {
        bl_dataset_free(out);
        return BL_ERR;
    }
    const uint8_t *from = src->images->data;
    uint8_t *to = out->images->data;
    for (int64_t i = 0; i < n; i++) memcpy(to + (size_t)i * row, from + (size_t)idx[i] * row, row);
    if (src->labels) {
        const int64_t *from_labels = src->labels->data;
        for (int64_t i = 0; i < n; i++) ((int64_t *)out->labels->data)[i] = from_labels[idx[i]];
    }
    out->num_classes = src->num_classes;
    if (src->class_names) {
        out->class_names = calloc((size_t)src->num_classes, sizeof *out->class_names);
        for (int64_t c = 0; out->class_names && c < src->num_classes; c++)
            if (!(out->class_names[c] = strdup(src->class_names[c]))) {
                bl_dataset_free(out);
                bl_set_error("out of memory copying class names");
                return BL_ERR;
            }
        if (!out->class_names) {
            bl_dataset_free(out);
            bl_set_error("out of memory copying class names");
            return BL_ERR;
        }
    }
    return BL_OK;
}

/* ---- index files -------------------------------------------------------------------------------- */

int bl_indices_save(const char *path, const int64_t *indices, int64_t n, const char *comment) {
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    BL_CHECK_RC(f, "%s: cannot write: out of memory", path);
    fprintf(f, "# ballast index file: one sample index per line\n");
    for (const char *line = comment; line && *line;) {
        size_t line_len = strcspn(line, "\n");
        fprintf(f, "# %.*s\n", (int)line_len, line);
        line += line_len + (line[line_len] == '\n');
    }
    for (int64_t i = 0; i < n; i++) fprintf(f, "%lld\n", (long long)indices[i]);
    bool ok = !ferror(f);
    ok = fclose(f) == 0 && ok;
    int rc = ok ? bl_file_write_atomic(path, text, len) : BL_ERR;
    if (!ok) bl_set_error("%s: cannot write: out of memory", path);
    free(text);
    return rc;
}

int bl_indices_load(const char *path, int64_t **indices, int64_t *n) {
    *indices = NULL;
    *n = 0;
    FILE *f = fopen(path, "r");
    BL_CHECK_RC(f, "%s: cannot open (%s)", path, strerror(errno));
    int64_t cap = 1024, count = 0, line_no = 0;
    int64_t *out = malloc((size_t)cap * sizeof *out);
    char line[256];
    int rc = out ? BL_OK : BL_ERR;
    if (!out) bl_set_error("%s: out of memory", path);
    while (rc == BL_OK && fgets(line, sizeof line, f)) {
        line_no++;
        char *p = line;
        while (*p == ' ' || *p == '\t') p++;
        if (!strchr(line, '\n') && !feof(f)) {
            /* A line longer than the buffer: a comment's rest is skipped; no index is that long. */
            if (*p == '#') {
                int ch;
                while ((ch = fgetc(f)) != EOF && ch != '\n') {}
                continue;
            }
            bl_set_error("%s:%lld: line longer than %d characters", path, (long long)line_no, (int)sizeof line - 2);
            rc = BL_ERR;
            break;
        }
        if (*p == '#' || *p == '\n' || *p == '\r' || *p == '\0') continue;
        char *end;
        errno = 0;
        long long v = strtoll(p, &end, 10);
        while (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n') end++;
        if (end == p || *end || errno || v < 0) {
            p[strcspn(p, "\r\n")] = '\0';
            bl_set_error("%s:%lld: expected a non-negative sample index, got \"%s\"", path, (long long)line_no, p);
            rc = BL_ERR;
            break;
        }
        if (count == cap) {
            int64_t *grown = realloc(out, (size_t)(cap *= 2) * sizeof *out);
            if (!grown) {
                bl_set_error("%s: out of memory", path);
                rc = BL_ERR;
                break;
            }
            out = grown;
        }
        out[count++] = v;
    }
    if (rc == BL_OK && ferror(f)) {
        bl_set_error("%s: read error", path);
        rc = BL_ERR;
    }
    fclose(f);
    if (rc != BL_OK) {
        free(out);
        return rc;
    }
    *indices = out;
    *n = count;
    return BL_OK;
}

/* ---- the validation draw of the long-tailed protocols ------------------------------------------ */

/* labels[rows[i]] for i < n, as a persistent I64 (n) tensor. */
static bl_tensor *labels_of(const bl_tensor *labels, const int64_t *rows, int64_t n) {
    bl_tensor *out = bl_tensor_new_persistent(BL_I64, 1, &n);
    if (!out) return NULL;
    for (int64_t i = 0; i < n; i++) ((int64_t *)out->data)[i] = ((const int64_t *)labels->data)[rows[i]];
    return out;
}

/* Moves validation rows out of a training subset for the classes that `val` holds fewer than
 * per_class images of: the subset's own holdout draw supplies them, in its order. */
static int top_up_validation(const bl_tensor *all_labels, int64_t k, int64_t per_class, uint64_t seed,
                             int64_t **subset, int64_t *n_subset, int64_t **val, int64_t *n_val) {
    int64_t *need = calloc((size_t)k, sizeof *need);
    BL_CHECK_RC(need, "out of memory");
    const int64_t *labels = all_labels->data;
    for (int64_t c = 0; c < k; c++) need[c] = per_class;
    for (int64_t i = 0; i < *n_val; i++) need[labels[(*val)[i]]]--;
    bool short_somewhere = false;
    for (int64_t c = 0; c < k; c++) short_somewhere |= need[c] > 0;
    if (!short_somewhere) {
        free(need);
        return BL_OK;
    }
    int64_t *keep = NULL, *held = NULL, n_keep = 0, n_held = 0;
    bl_tensor *sub = labels_of(all_labels, *subset, *n_subset);
    int rc = sub ? bl_split_holdout(sub, k, per_class, 0.5, seed, &keep, &n_keep, &held, &n_held) : BL_ERR;
    bl_tensor_free(sub);
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

int bl_split_validation(const bl_tensor *labels, int64_t num_classes, int64_t per_class, uint64_t seed,
                        int64_t **subset, int64_t *n_subset, int64_t **val, int64_t *n_val) {
    BL_CHECK_RC(labels && labels->dtype == BL_I64 && bl_is_contiguous(labels) && subset && n_subset && val && n_val,
                "bl_split_validation: needs contiguous I64 labels and the subset");
    BL_CHECK_RC(per_class >= 0, "validation split: per_class must be >= 0, got %lld", (long long)per_class);
    *val = NULL;
    *n_val = 0;
    if (per_class == 0) return BL_OK;
    int64_t *rest = NULL, n_rest = 0;
    int rc = bl_indices_complement(*subset, *n_subset, bl_numel(labels), &rest, &n_rest);
    if (rc == BL_OK && n_rest > 0) {
        int64_t *keep = NULL, *held = NULL, n_keep = 0, n_held = 0;
        bl_tensor *rest_labels = labels_of(labels, rest, n_rest);
        rc = rest_labels ? bl_split_holdout(rest_labels, num_classes, per_class, 1.0, seed, &keep, &n_keep, &held, &n_held)
                         : BL_ERR;
        bl_tensor_free(rest_labels);
        if (rc == BL_OK) {
            for (int64_t i = 0; i < n_held; i++) held[i] = rest[held[i]];
            *val = held;
            *n_val = n_held;
        } else {
            free(held);
        }
        free(keep);
    }
    free(rest);
    if (rc == BL_OK) rc = top_up_validation(labels, num_classes, per_class, seed, subset, n_subset, val, n_val);
    if (rc == BL_OK) qsort(*val, (size_t)*n_val, sizeof **val, compare_int64);
    if (rc != BL_OK) {
        free(*val);
        *val = NULL;
        *n_val = 0;
    }
    return rc;
}
