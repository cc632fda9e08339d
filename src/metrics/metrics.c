/* Classification metrics (see include/ballast/metrics.h). Evaluation only accumulates integer
 * counts and per-bin confidence sums, so batches can arrive in any order and any size; every rate
 * is derived from the counts in bl_metrics_summarize. Logits are read in double precision straight
 * from the caller's tensor (any strides), so evaluation allocates nothing per batch. */
#include "ballast/metrics.h"

#include "core/internal.h"
#include "io/json.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int bl_metrics_init(bl_metrics *m, int64_t num_classes) {
    memset(m, 0, sizeof *m);
    BL_CHECK_RC(num_classes >= 1, "metrics: num_classes must be at least 1, got %lld", (long long)num_classes);
    size_t k = (size_t)num_classes;
    m->num_classes = num_classes;
    m->correct = calloc(k, sizeof *m->correct);
    m->total = calloc(k, sizeof *m->total);
    m->predicted = calloc(k, sizeof *m->predicted);
    m->confusion = calloc(k * k, sizeof *m->confusion);
    m->per_class_acc = calloc(k, sizeof *m->per_class_acc);
    m->per_class_precision = calloc(k, sizeof *m->per_class_precision);
    m->train_counts = calloc(k, sizeof *m->train_counts);
    if (!m->correct || !m->total || !m->predicted || !m->confusion || !m->per_class_acc ||
        !m->per_class_precision || !m->train_counts) {
        bl_metrics_free(m);
        BL_CHECK_RC(false, "metrics: out of memory for %lld classes", (long long)num_classes);
    }
    return BL_OK;
}

void bl_metrics_free(bl_metrics *m) {
    free(m->correct);
    free(m->total);
    free(m->predicted);
    free(m->confusion);
    free(m->per_class_acc);
    free(m->per_class_precision);
    free(m->train_counts);
    memset(m, 0, sizeof *m);
}

static double logit_at(const bl_tensor *logits, int64_t row, int64_t col) {
    int64_t off = row * logits->stride[0] + col * logits->stride[1];
    return logits->dtype == BL_F32 ? (double)((const float *)logits->data)[off] : ((const double *)logits->data)[off];
}

/* Equal-width bins (lo, hi]: the upper edge belongs to the bin, as in Guo et al.'s code. The max
 * softmax probability is at least 1/K > 0, so bin 0's open lower edge never matters. */
static int confidence_bin(double confidence) {
    int b = (int)ceil(confidence * BL_METRICS_ECE_BINS) - 1;
    return b < 0 ? 0 : b >= BL_METRICS_ECE_BINS ? BL_METRICS_ECE_BINS - 1 : b;
}

int bl_metrics_add(bl_metrics *m, const bl_tensor *logits, const bl_tensor *labels) {
    BL_CHECK_RC(m && m->correct, "metrics: add before bl_metrics_init");
    BL_CHECK_RC(logits && labels, "metrics: NULL logits or labels");
    int64_t k = m->num_classes;
    BL_CHECK_RC(logits->ndim == 2 && logits->shape[1] == k, "metrics: logits must be (N, %lld), got %s",
                (long long)k, bl__shape(logits));
    BL_CHECK_RC(logits->dtype == BL_F32 || logits->dtype == BL_F64, "metrics: logits must be F32 or F64, got %s",
                bl_dtype_name(logits->dtype));
    BL_CHECK_RC(labels->ndim == 1 && labels->shape[0] == logits->shape[0],
                "metrics: labels must be (%lld) to match logits %s, got %s", (long long)logits->shape[0],
                bl__shape(logits), bl__shape(labels));
    BL_CHECK_RC(!bl_dtype_is_float(labels->dtype) && labels->dtype != BL_F16 && labels->dtype != BL_BF16,
                "metrics: labels must be integers, got %s", bl_dtype_name(labels->dtype));
    int64_t n = logits->shape[0];
    /* Validate the whole batch first so a refused batch leaves the counts untouched. */
    for (int64_t i = 0; i < n; i++) {
        double y = bl_get_flat(labels, i);
        BL_CHECK_RC(y >= 0 && y < (double)k, "metrics: label %lld at row %lld is outside [0, %lld)", (long long)y,
                    (long long)i, (long long)k);
        for (int64_t j = 0; j < k; j++)
            BL_CHECK_RC(isfinite(logit_at(logits, i, j)),
                        "metrics: logits row %lld has a non-finite value (%g) in column %lld", (long long)i,
                        logit_at(logits, i, j), (long long)j);
    }
    for (int64_t i = 0; i < n; i++) {
        int64_t y = (int64_t)bl_get_flat(labels, i), best = 0, above_label = 0;
        double best_logit = logit_at(logits, i, 0), label_logit = logit_at(logits, i, y);
        for (int64_t j = 1; j < k; j++) {
            double v = logit_at(logits, i, j);
            if (v > best_logit) best_logit = v, best = j;
        }
        /* Max softmax probability = 1 / sum_j exp(l_j - max), stable for any logit scale. */
        double partition = 0;
        for (int64_t j = 0; j < k; j++) {
            double v = logit_at(logits, i, j);
            partition += exp(v - best_logit);
            above_label += v > label_logit;
        }
        bool hit = best == y;
        m->count++;
        m->total[y]++;
        m->predicted[best]++;
        m->correct[y] += hit;
        m->confusion[y * k + best]++;
        m->top5_correct += above_label < 5;
        int b = confidence_bin(1.0 / partition);
        m->bin_count[b]++;
        m->bin_correct[b] += hit;
        m->bin_confidence[b] += 1.0 / partition;
    }
    return BL_OK;
}

/* Mean of the per-class accuracies of the classes whose training count lies in [lo, hi] and that
 * have test images; NAN when there is none. */
static double group_accuracy(const bl_metrics *m, const int64_t *train_counts, int64_t lo, int64_t hi,
                             int64_t *n_classes) {
    double sum = 0;
    int64_t measured = 0;
    *n_classes = 0;
    for (int64_t c = 0; c < m->num_classes; c++) {
        if (train_counts[c] < lo || train_counts[c] > hi) continue;
        ++*n_classes;
        if (m->total[c] == 0) continue;
        sum += m->per_class_acc[c];
        measured++;
    }
    return measured ? sum / (double)measured : NAN;
}

int bl_metrics_summarize(bl_metrics *m, const int64_t *train_counts, bl_metrics_summary *out) {
    BL_CHECK_RC(m && m->correct && out, "metrics: summary before bl_metrics_init");
    int64_t k = m->num_classes, top1_correct = 0, macro_classes = 0;
    double precision_sum = 0, recall_sum = 0;
    for (int64_t c = 0; c < k; c++) {
        top1_correct += m->correct[c];
        m->per_class_acc[c] = m->total[c] ? (double)m->correct[c] / (double)m->total[c] : NAN;
        m->per_class_precision[c] = m->predicted[c] ? (double)m->correct[c] / (double)m->predicted[c] : 0.0;
        if (m->total[c] || m->predicted[c]) {
            macro_classes++;
            precision_sum += m->per_class_precision[c];
            recall_sum += m->total[c] ? m->per_class_acc[c] : 0.0;
        }
    }
    double ece = 0;
    for (int b = 0; b < BL_METRICS_ECE_BINS; b++) {
        if (!m->bin_count[b]) continue;
        double accuracy = (double)m->bin_correct[b] / (double)m->bin_count[b];
        double confidence = m->bin_confidence[b] / (double)m->bin_count[b];
        ece += (double)m->bin_count[b] / (double)m->count * fabs(accuracy - confidence);
    }
    double n = (double)m->count;
    *out = (bl_metrics_summary){
        .num_classes = k,
        .count = m->count,
        .top1 = m->count ? (double)top1_correct / n : NAN,
        .top5 = m->count ? (double)m->top5_correct / n : NAN,
        .many = NAN,
        .medium = NAN,
        .few = NAN,
        .macro_precision = macro_classes ? precision_sum / (double)macro_classes : NAN,
        .macro_recall = macro_classes ? recall_sum / (double)macro_classes : NAN,
        .ece = m->count ? ece : NAN,
        .per_class_acc = m->per_class_acc,
        .per_class_precision = m->per_class_precision,
        .confusion = m->confusion,
    };
    if (train_counts) {
        memcpy(m->train_counts, train_counts, (size_t)k * sizeof *train_counts);
        out->train_counts = m->train_counts;
        out->many = group_accuracy(m, train_counts, BL_METRICS_MANY_ABOVE + 1, INT64_MAX, &out->n_many);
        out->medium = group_accuracy(m, train_counts, BL_METRICS_FEW_BELOW, BL_METRICS_MANY_ABOVE, &out->n_medium);
        out->few = group_accuracy(m, train_counts, INT64_MIN, BL_METRICS_FEW_BELOW - 1, &out->n_few);
    }
    return BL_OK;
}

/* Rates with 8 significant digits: enough to recompute any count of a realistic test set. */
static void append_number(bl__text *t, double v) {
    if (isfinite(v)) bl__text_printf(t, "%.8g", v);
    else bl__text_append(t, "null");
}

char *bl_metrics_json(const bl_metrics_summary *s, const char *extra_members) {
    BL_CHECK(s && s->per_class_acc, "metrics: JSON of an uncomputed summary");
    bl__text t = {0};
    bl__text_append(&t, "{");
    if (extra_members && extra_members[0]) {
        bl__text_append(&t, extra_members);
        bl__text_append(&t, ",");
    }
    bl__text_printf(&t, "\"count\":%lld", (long long)s->count);
    const struct {
        const char *key;
        double value;
    } rates[] = {{"top1", s->top1}, {"top5", s->top5}, {"many", s->many}, {"medium", s->medium}, {"few", s->few},
                 {"macro_precision", s->macro_precision}, {"macro_recall", s->macro_recall}, {"ece", s->ece}};
    for (size_t i = 0; i < sizeof rates / sizeof rates[0]; i++) {
        bl__text_printf(&t, ",\"%s\":", rates[i].key);
        append_number(&t, rates[i].value);
    }
    int64_t k = s->num_classes;
    bl__text_append(&t, ",\"per_class_acc\":[");
    for (int64_t c = 0; c < k; c++) {
        if (c) bl__text_append(&t, ",");
        append_number(&t, s->per_class_acc[c]);
    }
    bl__text_append(&t, "]");
    if (s->train_counts) {
        bl__text_append(&t, ",\"class_counts\":[");
        for (int64_t c = 0; c < k; c++) bl__text_printf(&t, "%s%lld", c ? "," : "", (long long)s->train_counts[c]);
        bl__text_append(&t, "]");
    }
    if (k <= BL_METRICS_JSON_CONFUSION_MAX) {
        bl__text_append(&t, ",\"confusion\":[");
        for (int64_t r = 0; r < k; r++) {
            bl__text_append(&t, r ? ",[" : "[");
            for (int64_t c = 0; c < k; c++)
                bl__text_printf(&t, "%s%lld", c ? "," : "", (long long)s->confusion[r * k + c]);
            bl__text_append(&t, "]");
        }
        bl__text_append(&t, "]");
    }
    bl__text_append(&t, "}");
    if (t.failed) {
        bl__text_free(&t);
        BL_CHECK(false, "metrics: out of memory writing JSON");
    }
    return t.data;
}
