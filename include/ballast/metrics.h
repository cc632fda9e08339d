/* ballast metrics: classification accuracy as long-tailed recognition reports it, and the HTML
 * report that puts several runs side by side.
 *
 * A bl_metrics accumulates counts over any number of evaluation batches (bl_metrics_add), so a
 * whole test set never has to be held in memory; bl_metrics_summarize then turns the counts into
 *  - top-1 / top-5 accuracy over all images,
 *  - per-class accuracy (= per-class recall) and the many / medium / few-shot group accuracies:
 *    classes are grouped by their TRAINING image count (many > 100, medium 20..100 inclusive,
 *    few < 20) and a group's accuracy is the mean of its classes' per-class accuracies, not a
 *    pooled count over images,
 *  - macro precision and recall, averaged over the classes that occur in the evaluated data as a
 *    label or as a prediction, 0/0 counting as 0 (scikit-learn's convention),
 *  - the confusion matrix (rows: true class, columns: predicted class),
 *  - expected calibration error (Guo et al., 2017): the max softmax probability of each image is
 *    binned into 15 equal-width bins (lo, hi] of [0, 1]; ECE = sum over bins of
 *    (images in bin / all images) * |accuracy in bin - mean confidence in bin|.
 * Values that are undefined (a group with no class, a class with no test image) are NAN in C and
 * null in JSON. */
#ifndef BALLAST_METRICS_H
#define BALLAST_METRICS_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

#define BL_METRICS_ECE_BINS 15
/* Training-count thresholds of the long-tail groups: many > 100, few < 20, medium in between. */
#define BL_METRICS_MANY_ABOVE 100
#define BL_METRICS_FEW_BELOW 20
/* Confusion matrices are written to JSON (and drawn by the report) up to this many classes. */
#define BL_METRICS_JSON_CONFUSION_MAX 100

typedef struct {
    int64_t num_classes;
    int64_t count;        /* images seen */
    int64_t top5_correct; /* images whose label is among the 5 highest logits */
    int64_t *correct;     /* (K) top-1 hits per true class */
    int64_t *total;       /* (K) images per true class */
    int64_t *predicted;   /* (K) top-1 predictions per class */
    int64_t *confusion;   /* (K, K) row-major: confusion[true * K + predicted] */
    /* calibration bins of the max softmax probability */
    int64_t bin_count[BL_METRICS_ECE_BINS];
    int64_t bin_correct[BL_METRICS_ECE_BINS];
    double bin_confidence[BL_METRICS_ECE_BINS]; /* sum of confidences in the bin */
    /* storage behind a summary's arrays */
    double *per_class_acc, *per_class_precision;
    int64_t *train_counts;
} bl_metrics;

typedef struct {
    int64_t num_classes, count;
    double top1, top5;
    double many, medium, few;          /* NAN when the group has no class with test images */
    int64_t n_many, n_medium, n_few;   /* classes in each group (by training count) */
    double macro_precision, macro_recall;
    double ece;
    /* (K) arrays owned by the bl_metrics they came from, valid until its next summary or free */
    const double *per_class_acc;       /* NAN for a class without test images */
    const double *per_class_precision; /* 0 for a class never predicted */
    const int64_t *train_counts;       /* copy of the counts given, NULL when none */
    const int64_t *confusion;          /* (K, K), as in bl_metrics */
} bl_metrics_summary;

/* Zeroed counts for `num_classes` classes (>= 1). */
int bl_metrics_init(bl_metrics *m, int64_t num_classes);
/* Adds a batch: logits (N, K) F32 or F64, any strides; labels (N) integer, each in [0, K).
 * Refuses, naming the row, labels out of range and logits that are not finite. With K < 5, top-5
 * counts every image as a hit. Ties go to the lowest class index for top-1; for top-5 a label
 * counts when fewer than 5 classes have a strictly larger logit. */
int bl_metrics_add(bl_metrics *m, const bl_tensor *logits, const bl_tensor *labels);
/* Computes every metric from the counts so far. `train_counts` (K training images per class)
 * defines the many/medium/few groups; NULL leaves the groups NAN and n_* zero. */
int bl_metrics_summarize(bl_metrics *m, const int64_t *train_counts, bl_metrics_summary *out);
/* Returns a malloc'ed JSON object:
 *   {<extra_members>, "count", "top1", "top5", "many", "medium", "few", "macro_precision",
 *    "macro_recall", "ece", "per_class_acc": [...], "class_counts": [...] (when training counts
 *    were given), "confusion": [[...], ...] (up to BL_METRICS_JSON_CONFUSION_MAX classes)}
 * `extra_members` (may be NULL) is inserted verbatim first, e.g. "\"eval\":\"val\",\"epoch\":3",
 * so one call makes a whole log record. NAN is written as null. */
char *bl_metrics_json(const bl_metrics_summary *s, const char *extra_members);
void bl_metrics_free(bl_metrics *m);

/* ---- reports ---------------------------------------------------------------------------------- */

/* Writes one self-contained HTML page (inline SVG plots, no scripts) for the run directories
 * given. Each directory must hold log.jsonl: one JSON object per line, training records
 *   {"epoch", "step", "loss", "lr", "img_per_s", ...}
 * and evaluation records {"eval": "val"|"test", "epoch", <the members of bl_metrics_json>}; and
 * config.yaml (the resolved config; its dataset, model and method names label the run).
 * Per run: training loss and learning rate over steps, val top-1 over epochs, per-class accuracy
 * against training class count (log x, coloured by group), the confusion matrix (<= 100 classes)
 * and a table of the final metrics. With several runs also a comparison table (method, overall,
 * many, medium, few, ECE of each run's last test evaluation, else its last val one) and overlaid
 * curves. Fails, naming the file and line, on a missing or malformed log. The page is written
 * atomically. */
int bl_report_write(const char *const *run_dirs, int n_runs, const char *html_path);

#ifdef __cplusplus
}
#endif
#endif
