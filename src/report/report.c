/* The HTML report of one or more run directories (bl_report_write, see metrics.h). Each run's
 * log.jsonl is read one line at a time, keeping only the curves (a few numbers per record) and the
 * latest val and test evaluation records, so a long log never sits in memory whole. Every record
 * is checked when read, and errors name the file and line; rendering then trusts what it holds.
 * The page is plain HTML with inline SVG (svg.c) and a little CSS, readable offline. */
#include "ballast/metrics.h"
#include "ballast/train.h"

#include "core/internal.h"

#include "ballast/files.h"
#include "io/json.h"
#include "svg.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Charts over steps average consecutive records down to this many points: enough for any screen. */
#define MAX_CURVE_POINTS 600

typedef struct {
    double *x, *y;
    int64_t n, cap;
} curve;

typedef struct {
    bl__json_pool pool;
    const bl__json *root; /* NULL when the log has no such record */
    int64_t num_classes;  /* length of per_class_acc */
} eval_record;

typedef struct {
    const char *dir;
    char label[128];
    char method[64], dataset[64], model[64];
    double imbalance;
    int64_t epochs; /* 0 when the config does not say */
    curve loss, lr;            /* by optimizer step */
    curve val_primary, mean_loss; /* by epoch: the evaluator's primary metric on val, the loss */
    char primary[32];             /* that metric's name ("top1" for classification) */
    eval_record last_val, last_test;
    char stopped[256]; /* the message of an "error" record: training stopped there */
} run_data;

static const char *const palette[] = {"#1f6fb4", "#e07b24", "#2f9e44", "#c92a2a", "#7048e8",
                                      "#8c5a3c", "#d6336c", "#5c677d", "#a5a51f", "#1098ad"};
#define PALETTE_SIZE (int)(sizeof palette / sizeof palette[0])
static const char *const group_color[3] = {"#1f6fb4", "#e07b24", "#c92a2a"}; /* many, medium, few */

/* ---- small containers ------------------------------------------------------------------------- */

static int curve_push(curve *c, double x, double y) {
    if (c->n == c->cap) {
        int64_t cap = c->cap ? 2 * c->cap : 64;
        double *nx = realloc(c->x, (size_t)cap * sizeof *nx);
        if (nx) c->x = nx;
        double *ny = nx ? realloc(c->y, (size_t)cap * sizeof *ny) : NULL;
        if (ny) c->y = ny;
        BL_CHECK_RC(nx && ny, "report: out of memory");
        c->cap = cap;
    }
    c->x[c->n] = x;
    c->y[c->n++] = y;
    return BL_OK;
}

/* After a resume the log repeats the epochs trained again: drop the abandoned tail. */
static void curve_truncate(curve *c, double max_x) {
    while (c->n > 0 && c->x[c->n - 1] > max_x) c->n--;
}

static void curve_free(curve *c) {
    free(c->x);
    free(c->y);
    memset(c, 0, sizeof *c);
}

/* Averages runs of consecutive points so at most `max_points` remain (a smoothed view). */
static curve thin_curve(const curve *c, int64_t max_points) {
    curve out = {0};
    int64_t per = (c->n + max_points - 1) / max_points;
    for (int64_t start = 0; start < c->n; start += per) {
        double sx = 0, sy = 0;
        int64_t used = 0;
        for (int64_t i = start; i < c->n && i < start + per; i++)
            if (isfinite(c->y[i])) sx += c->x[i], sy += c->y[i], used++;
        if (used && curve_push(&out, sx / (double)used, sy / (double)used) != BL_OK) {
            curve_free(&out);
            return out;
        }
    }
    return out;
}

static void eval_free(eval_record *e) {
    bl__json_pool_free(&e->pool);
    memset(e, 0, sizeof *e);
}

static void run_free(run_data *r) {
    curve_free(&r->loss);
    curve_free(&r->lr);
    curve_free(&r->val_primary);
    curve_free(&r->mean_loss);
    eval_free(&r->last_val);
    eval_free(&r->last_test);
}

/* ---- reading a run ------------------------------------------------------------------------- */

typedef struct {
    const char *path;
    long line;
} log_position;

static void copy_string(char *dst, size_t len, const char *src) { snprintf(dst, len, "%s", src ? src : ""); }

/* A numeric member: null and (when optional) absence read as NAN. */
static int number_member(const log_position *at, const bl__json *rec, const char *key, bool required, double *out) {
    const bl__json *v = bl__json_get(rec, key);
    *out = NAN;
    if (!v || v->type == BL_JSON_NULL) {
        if (required && !v) {
            bl_set_error("%s:%ld: the record has no \"%s\"", at->path, at->line, key);
            return BL_ERR;
        }
        return BL_OK;
    }
    if (v->type != BL_JSON_NUMBER) {
        bl_set_error("%s:%ld: \"%s\" must be a number", at->path, at->line, key);
        return BL_ERR;
    }
    *out = v->number;
    return BL_OK;
}

/* An evaluation record's arrays: per_class_acc (numbers or null), class_counts (K integers, when
 * present) and confusion (K rows of K integers, when present). Returns K, or -1 after an error. */
static int64_t check_eval_arrays(const log_position *at, const bl__json *rec) {
    const bl__json *acc = bl__json_get(rec, "per_class_acc");
    if (!acc) return 0;
    const char *problem = NULL;
    if (acc->type != BL_JSON_ARRAY) problem = "\"per_class_acc\" must be an array";
    for (const bl__json *v = acc->child; !problem && v; v = v->next)
        if (v->type != BL_JSON_NUMBER && v->type != BL_JSON_NULL) problem = "\"per_class_acc\" holds a non-number";
    int64_t k = acc->count;
    const bl__json *counts = bl__json_get(rec, "class_counts"), *confusion = bl__json_get(rec, "confusion");
    if (!problem && counts) {
        if (counts->type != BL_JSON_ARRAY || counts->count != k)
            problem = "\"class_counts\" must be an array as long as \"per_class_acc\"";
        for (const bl__json *v = counts->child; !problem && v; v = v->next)
            if (v->type != BL_JSON_NUMBER || !v->is_integer || v->integer < 0)
                problem = "\"class_counts\" holds a value that is not a count";
    }
    if (!problem && confusion) {
        if (confusion->type != BL_JSON_ARRAY || confusion->count != k)
            problem = "\"confusion\" must have one row per class";
        for (const bl__json *row = confusion->child; !problem && row; row = row->next) {
            if (row->type != BL_JSON_ARRAY || row->count != k) problem = "\"confusion\" must have one column per class";
            for (const bl__json *v = row->child; !problem && v; v = v->next)
                if (v->type != BL_JSON_NUMBER || !v->is_integer || v->integer < 0)
                    problem = "\"confusion\" holds a value that is not a count";
        }
    }
    if (problem) {
        bl_set_error("%s:%ld: %s", at->path, at->line, problem);
        return -1;
    }
    return k;
}

/* The metrics of an evaluation record are its numeric members other than the counters; the first
 * is the evaluator's primary one (bl_evaluator_kind lists it first). */
static bool is_metric(const bl__json *m) {
    return m->type == BL_JSON_NUMBER && strcmp(m->key, "epoch") != 0 && strcmp(m->key, "step") != 0 &&
           strcmp(m->key, "count") != 0;
}

static const char *primary_metric(const bl__json *rec) {
    for (const bl__json *m = rec->child; m; m = m->next)
        if (is_metric(m) || (strcmp(m->key, "top1") == 0 && m->type == BL_JSON_NULL)) return m->key;
    return NULL;
}

/* Takes in one parsed record; `pool` moves into the run when the record is kept. */
static int take_record(run_data *run, const log_position *at, const bl__json *rec, bl__json_pool *pool) {
    if (rec->type != BL_JSON_OBJECT) {
        bl_set_error("%s:%ld: a log record must be a JSON object", at->path, at->line);
        return BL_ERR;
    }
    double epoch, step, value, lr;
    const bl__json *eval = bl__json_get(rec, "eval");
    if (eval) {
        if (eval->type != BL_JSON_STRING) {
            bl_set_error("%s:%ld: \"eval\" must be a string", at->path, at->line);
            return BL_ERR;
        }
        BL_TRY(number_member(at, rec, "epoch", true, &epoch));
        const char *primary = primary_metric(rec);
        if (!primary) {
            bl_set_error("%s:%ld: an evaluation record needs a metric (\"top1\", or its evaluator's)", at->path, at->line);
            return BL_ERR;
        }
        snprintf(run->primary, sizeof run->primary, "%s", primary);
        BL_TRY(number_member(at, rec, primary, true, &value));
        int64_t k = check_eval_arrays(at, rec);
        if (k < 0) return BL_ERR;
        eval_record *keep = strcmp(eval->string, "val") == 0    ? &run->last_val
                            : strcmp(eval->string, "test") == 0 ? &run->last_test
                                                                : NULL;
        if (!keep) return BL_OK; /* another split: not part of the report */
        if (keep == &run->last_val) {
            /* a method may evaluate again after training at the same epoch (e.g. with a tuned
             * test-time parameter): the later record stands for that epoch */
            curve *c = &run->val_primary;
            if (c->n > 0 && c->x[c->n - 1] == epoch) c->y[c->n - 1] = value;
            else BL_TRY(curve_push(c, epoch, value));
        }
        eval_free(keep);
        keep->pool = *pool;
        keep->root = rec;
        keep->num_classes = k;
        memset(pool, 0, sizeof *pool);
        return BL_OK;
    }
    if (bl__json_get(rec, "resume")) {
        BL_TRY(number_member(at, rec, "resume", true, &epoch));
        BL_TRY(number_member(at, rec, "step", true, &step));
        curve_truncate(&run->loss, step);
        curve_truncate(&run->lr, step);
        curve_truncate(&run->val_primary, epoch);
        curve_truncate(&run->mean_loss, epoch);
        return BL_OK;
    }
    const bl__json *error = bl__json_get(rec, "error");
    if (error) {
        copy_string(run->stopped, sizeof run->stopped, error->type == BL_JSON_STRING ? error->string : "(no message)");
        return BL_OK;
    }
    if (bl__json_get(rec, "epoch_end")) {
        BL_TRY(number_member(at, rec, "epoch_end", true, &epoch));
        BL_TRY(number_member(at, rec, "mean_loss", true, &value));
        return curve_push(&run->mean_loss, epoch, value);
    }
    if (bl__json_get(rec, "loss") && bl__json_get(rec, "step") && !bl__json_get(rec, "method_epoch")) {
        BL_TRY(number_member(at, rec, "step", true, &step));
        BL_TRY(number_member(at, rec, "loss", true, &value));
        BL_TRY(number_member(at, rec, "lr", false, &lr));
        BL_TRY(curve_push(&run->loss, step, value));
        return curve_push(&run->lr, step, lr);
    }
    return BL_OK; /* records of other kinds (a method's own) are not plotted */
}

static int read_log(run_data *run, const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        bl_set_error("%s: cannot open the run's log (%s)", path, strerror(errno));
        return BL_ERR;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    log_position at = {path, 0};
    int status = BL_OK;
    while (status == BL_OK && (len = getline(&line, &cap, f)) >= 0) {
        at.line++;
        while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r')) len--;
        if (len == 0) continue;
        if (memchr(line, '\0', (size_t)len)) {
            bl_set_error("%s:%ld: contains a NUL byte (corrupt file)", path, at.line);
            status = BL_ERR;
            break;
        }
        bl__json_pool pool = {0};
        char err[160];
        const bl__json *rec = bl__json_parse(line, (size_t)len, &pool, err, sizeof err);
        if (!rec) {
            bl_set_error("%s:%ld: not a JSON record: %s", path, at.line, err);
            status = BL_ERR;
            break;
        }
        status = take_record(run, &at, rec, &pool);
        bl__json_pool_free(&pool);
    }
    if (status == BL_OK && ferror(f)) {
        bl_set_error("%s: read error", path);
        status = BL_ERR;
    }
    free(line);
    fclose(f);
    return status;
}

/* The labels the resolved config gives the run; its other keys are the trainer's business. */
static int read_config(run_data *run, const char *path) {
    static const bl_option labels[] = {
        {"method.name", BL_OPT_STRING, NULL, "method"},
        {"dataset.name", BL_OPT_STRING, NULL, "dataset"},
        {"dataset.imbalance", BL_OPT_FLOAT, NULL, "imbalance factor"},
        {"model.name", BL_OPT_STRING, NULL, "model"},
        {"train.epochs", BL_OPT_INT, NULL, "epochs"},
    };
    bl_config *c = bl_config_load(path);
    if (!c) return BL_ERR;
    int status = bl_config_declare(c, NULL, labels, (int)(sizeof labels / sizeof labels[0]));
    if (status == BL_OK) {
        if (bl_config_has(c, "method.name"))
            copy_string(run->method, sizeof run->method, bl_config_string(c, "method.name"));
        if (bl_config_has(c, "dataset.name"))
            copy_string(run->dataset, sizeof run->dataset, bl_config_string(c, "dataset.name"));
        if (bl_config_has(c, "model.name"))
            copy_string(run->model, sizeof run->model, bl_config_string(c, "model.name"));
        run->imbalance = bl_config_has(c, "dataset.imbalance") ? bl_config_float(c, "dataset.imbalance") : NAN;
        run->epochs = bl_config_has(c, "train.epochs") ? bl_config_int(c, "train.epochs") : 0;
    }
    bl_config_free(c);
    return status;
}

static int read_run(run_data *run, const char *dir) {
    memset(run, 0, sizeof *run);
    struct stat st;
    bool exists = stat(dir, &st) == 0;
    if (!exists || !S_ISDIR(st.st_mode)) {
        bl_set_error("%s: not a run directory (%s)", dir, exists ? "not a directory" : strerror(errno));
        return BL_ERR;
    }
    run->dir = dir;
    run->imbalance = NAN;
    /* the label is the directory's last component */
    size_t end = strlen(dir);
    while (end > 1 && dir[end - 1] == '/') end--;
    size_t start = end;
    while (start > 0 && dir[start - 1] != '/') start--;
    snprintf(run->label, sizeof run->label, "%.*s", (int)(end - start), dir + start);
    char path[1024];
    snprintf(path, sizeof path, "%s/config.yaml", dir);
    BL_TRY(read_config(run, path));
    snprintf(path, sizeof path, "%s/log.jsonl", dir);
    return read_log(run, path);
}

/* ---- HTML pieces ----------------------------------------------------------------------------- */

static double member_number(const bl__json *rec, const char *key) {
    const bl__json *v = bl__json_get(rec, key);
    return v && v->type == BL_JSON_NUMBER ? v->number : NAN;
}

/* A rate as a percentage with `digits` decimals, or a dash when undefined. */
static void append_percent(bl__text *t, double v, int digits) {
    if (isfinite(v)) bl__text_printf(t, "%.*f", digits, 100 * v);
    else bl__text_append(t, "&ndash;");
}

/* The evaluation that stands for a run's result: its last test one, else its last val one. */
static const eval_record *final_eval(const run_data *run, const char **split) {
    *split = run->last_test.root ? "test" : "val";
    return run->last_test.root ? &run->last_test : run->last_val.root ? &run->last_val : NULL;
}

static void append_run_description(bl__text *h, const run_data *run) {
    bl__text_append(h, "<p class=\"meta\">");
    const char *names[] = {"method", "dataset", "model"};
    const char *values[] = {run->method, run->dataset, run->model};
    for (int i = 0; i < 3; i++) {
        if (!values[i][0]) continue;
        bl__text_printf(h, "%s <b>", names[i]);
        bl__text_append_escaped(h, values[i]);
        bl__text_append(h, "</b> &middot; ");
    }
    if (isfinite(run->imbalance)) bl__text_printf(h, "imbalance <b>%g</b> &middot; ", run->imbalance);
    bl__text_append(h, "<span class=\"dir\">");
    bl__text_append_escaped(h, run->dir);
    bl__text_append(h, "</span></p>\n");
}

/* The columns of the metric tables: classification's fixed set (in %), or the metrics the final
 * evaluation of the first run declares (as numbers), for any other evaluator. */
#define MAX_COLUMNS 16
typedef struct {
    char key[32], header[40];
    bool lower_is_better, percent;
} metric_column;

/* The recipe table shows up to four of them: top-1, many, medium, few for classification. */
#define N_SUMMARY_COLUMNS 4

typedef struct {
    metric_column col[MAX_COLUMNS];
    int n;
    int summary[N_SUMMARY_COLUMNS]; /* the recipe table's columns, as indices into col */
    int n_summary;
    bool classification;
} metric_set;

static const metric_column classification_columns[] = {
    {"top1", "top-1", false, true},          {"top5", "top-5", false, true},
    {"many", "many", false, true},           {"medium", "medium", false, true},
    {"few", "few", false, true},             {"macro_precision", "macro P", false, true},
    {"macro_recall", "macro R", false, true}, {"ece", "ECE", true, true}};

static metric_set metrics_of(const run_data *runs, int n) {
    metric_set ms = {.n = 0};
    const char *split;
    const eval_record *e = NULL;
    for (int r = 0; r < n && !e; r++) e = final_eval(&runs[r], &split);
    if (!e || bl__json_get(e->root, "top1")) {
        ms.classification = true;
        ms.n = (int)(sizeof classification_columns / sizeof classification_columns[0]);
        memcpy(ms.col, classification_columns, sizeof classification_columns);
        ms.n_summary = 4;
        memcpy(ms.summary, (int[]){0, 2, 3, 4}, sizeof ms.summary);
        return ms;
    }
    for (const bl__json *m = e->root->child; m && ms.n < MAX_COLUMNS; m = m->next) {
        if (!is_metric(m)) continue;
        metric_column *c = &ms.col[ms.n++];
        snprintf(c->key, sizeof c->key, "%s", m->key);
        snprintf(c->header, sizeof c->header, "%s", m->key);
        c->lower_is_better = strstr(m->key, "rmse") || strstr(m->key, "loss") || strstr(m->key, "error");
    }
    for (int k = 0; k < N_SUMMARY_COLUMNS && k < ms.n; k++) ms.summary[ms.n_summary++] = k;
    return ms;
}

/* A table cell: percent with `digits` decimals, or the number itself to 4 decimals. */
static void append_value(bl__text *t, const metric_column *c, double v, int digits) {
    if (c->percent) append_percent(t, v, digits);
    else if (isfinite(v)) bl__text_printf(t, "%.4f", v);
    else bl__text_append(t, "&ndash;");
}

static void append_metrics_table(bl__text *h, const run_data *run, const metric_set *ms) {
    const eval_record *records[2] = {&run->last_val, &run->last_test};
    const char *splits[2] = {"val", "test"};
    bl__text_append(h, "<table><thead><tr><th>split</th><th>epoch</th><th>images</th>");
    for (int c = 0; c < ms->n; c++) bl__text_printf(h, "<th>%s</th>", ms->col[c].header);
    bl__text_append(h, "</tr></thead><tbody>\n");
    bool any = false;
    for (int r = 0; r < 2; r++) {
        const bl__json *rec = records[r]->root;
        if (!rec) continue;
        any = true;
        bl__text_printf(h, "<tr><td>%s</td><td>%g</td><td>%g</td>", splits[r], member_number(rec, "epoch"),
                        member_number(rec, "count"));
        for (int c = 0; c < ms->n; c++) {
            bl__text_append(h, "<td>");
            append_value(h, &ms->col[c], member_number(rec, ms->col[c].key), c == ms->n - 1 ? 2 : 1);
            bl__text_append(h, "</td>");
        }
        bl__text_append(h, "</tr>\n");
    }
    if (!any)
        bl__text_printf(h, "<tr><td colspan=\"%d\">no evaluation in the log yet</td></tr>\n", ms->n + 3);
    bl__text_append(h, "</tbody></table>\n");
    if (ms->classification)
        bl__text_append(h, "<p class=\"note\">Accuracies, precision, recall and ECE in %. Many / "
                       "medium / few: classes with &gt; 100 / 20&ndash;100 / &lt; 20 training images, each the mean of "
                       "its classes' accuracies.</p>\n");
}

static void append_figure(bl__text *h, const bl__text *svg) {
    bl__text_append(h, "<figure>");
    bl__text_append(h, svg->data ? svg->data : "");
    bl__text_append(h, "</figure>\n");
}

static void append_line_chart(bl__text *h, const char *title, const char *x_label, const char *y_label,
                              const curve *c, const char *color, bool percent) {
    curve thin = c->n > MAX_CURVE_POINTS ? thin_curve(c, MAX_CURVE_POINTS) : *c;
    bl__series s = {NULL, color, thin.x, thin.y, thin.n, NULL};
    bl__chart chart = {.title = title, .x_label = x_label, .y_label = y_label, .y_scale = percent ? 100 : 1,
                       .y_lo = 0, .y_hi = percent ? 1 : 0};
    bl__text svg = {0};
    bl__svg_chart(&svg, &chart, &s, 1);
    append_figure(h, &svg);
    bl__text_free(&svg);
    if (thin.x != c->x) curve_free(&thin);
}

/* Per-class accuracy against training images (log x), one series per long-tail group. */
static void append_class_scatter(bl__text *h, const eval_record *e, const char *split) {
    const bl__json *acc = bl__json_get(e->root, "per_class_acc"), *counts = bl__json_get(e->root, "class_counts");
    int64_t k = e->num_classes;
    double *x = calloc((size_t)k * 3 + 1, sizeof *x), *y = calloc((size_t)k * 3 + 1, sizeof *y);
    char (*titles)[96] = calloc((size_t)k + 1, sizeof *titles);
    const char **title_ptr = calloc((size_t)k * 3 + 1, sizeof *title_ptr);
    if (!x || !y || !titles || !title_ptr) {
        h->failed = true;
    } else {
        /* group g's points occupy [g k, g k + n[g]) of each array */
        int64_t n[3] = {0, 0, 0}, c = 0;
        for (const bl__json *a = acc->child, *t = counts->child; a && t; a = a->next, t = t->next, c++) {
            int g = t->integer > BL_METRICS_MANY_ABOVE ? 0 : t->integer >= BL_METRICS_FEW_BELOW ? 1 : 2;
            int64_t slot = g * k + n[g]++;
            x[slot] = (double)t->integer;
            y[slot] = a->type == BL_JSON_NUMBER ? a->number : NAN;
            if (isfinite(y[slot]))
                snprintf(titles[c], sizeof titles[c], "class %lld: %lld training images, %.1f%% correct", (long long)c,
                         (long long)t->integer, 100 * y[slot]);
            else
                snprintf(titles[c], sizeof titles[c], "class %lld: %lld training images, no test images", (long long)c,
                         (long long)t->integer);
            title_ptr[slot] = titles[c];
        }
        static const char *const group_names[3] = {"many (> 100)", "medium (20-100)", "few (< 20)"};
        bl__series series[3];
        for (int g = 0; g < 3; g++)
            series[g] = (bl__series){group_names[g], group_color[g], x + g * k, y + g * k, n[g], title_ptr + g * k};
        const double marks[2] = {BL_METRICS_FEW_BELOW, BL_METRICS_MANY_ABOVE};
        char title[96];
        snprintf(title, sizeof title, "Per-class accuracy (%s) vs. class frequency", split);
        bl__chart chart = {.title = title, .x_label = "training images of the class (log scale)",
                           .y_label = "accuracy (%)", .log_x = true, .points = true, .y_lo = 0, .y_hi = 1,
                           .y_scale = 100, .x_marks = marks, .n_x_marks = 2};
        bl__text svg = {0};
        bl__svg_chart(&svg, &chart, series, 3);
        append_figure(h, &svg);
        bl__text_free(&svg);
    }
    free(x);
    free(y);
    free(titles);
    free(title_ptr);
}

static void append_confusion(bl__text *h, const eval_record *e, const char *split) {
    int64_t k = e->num_classes;
    int64_t *cells = malloc((size_t)(k * k) * sizeof *cells);
    if (!cells) {
        h->failed = true;
        return;
    }
    int64_t i = 0;
    for (const bl__json *row = bl__json_get(e->root, "confusion")->child; row; row = row->next)
        for (const bl__json *v = row->child; v; v = v->next) cells[i++] = v->integer;
    char title[96];
    snprintf(title, sizeof title, "Confusion matrix (%s), rows sum to 100%%", split);
    bl__text svg = {0};
    bl__svg_heatmap(&svg, title, cells, k, "true class", "predicted class");
    append_figure(h, &svg);
    bl__text_free(&svg);
    free(cells);
}

static void append_run_section(bl__text *h, const run_data *run, int index, const metric_set *ms) {
    bl__text_printf(h, "<section id=\"run%d\"><h2>", index);
    bl__text_append_escaped(h, run->label);
    bl__text_append(h, "</h2>\n");
    append_run_description(h, run);
    if (run->stopped[0]) {
        bl__text_append(h, "<p class=\"error\">Training stopped with an error: ");
        bl__text_append_escaped(h, run->stopped);
        bl__text_append(h, "</p>\n");
    }
    append_metrics_table(h, run, ms);
    const char *split;
    const eval_record *e = final_eval(run, &split);
    if (e && e->num_classes > 0) {
        int64_t many = 0, medium = 0, few = 0;
        const bl__json *counts = bl__json_get(e->root, "class_counts");
        for (const bl__json *t = counts ? counts->child : NULL; t; t = t->next)
            *(t->integer > BL_METRICS_MANY_ABOVE ? &many : t->integer >= BL_METRICS_FEW_BELOW ? &medium : &few) += 1;
        if (counts)
            bl__text_printf(h, "<p class=\"note\">%lld classes: %lld many, %lld medium, %lld few.</p>\n",
                            (long long)e->num_classes, (long long)many, (long long)medium, (long long)few);
    }
    bl__text_append(h, "<div class=\"grid\">\n");
    append_line_chart(h, "Training loss", "step", "loss", &run->loss, palette[0], false);
    append_line_chart(h, "Learning rate", "step", "learning rate", &run->lr, palette[1], false);
    char title[64], axis[64];
    const bool top1 = !run->primary[0] || strcmp(run->primary, "top1") == 0;
    snprintf(title, sizeof title, "Validation %s", top1 ? "top-1" : run->primary);
    snprintf(axis, sizeof axis, "%s", top1 ? "top-1 (%)" : run->primary);
    append_line_chart(h, title, "epoch", axis, &run->val_primary, palette[2], top1);
    if (e && e->num_classes > 0 && bl__json_get(e->root, "class_counts")) append_class_scatter(h, e, split);
    if (e && e->num_classes > 0 && e->num_classes <= BL_METRICS_JSON_CONFUSION_MAX &&
        bl__json_get(e->root, "confusion"))
        append_confusion(h, e, split);
    bl__text_append(h, "</div></section>\n");
}

static void append_comparison(bl__text *h, const run_data *runs, int n, const metric_set *ms) {
    /* the best value of each column, to highlight */
    double best[MAX_COLUMNS];
    for (int c = 0; c < ms->n; c++) {
        best[c] = NAN;
        for (int r = 0; r < n; r++) {
            const char *split;
            const eval_record *e = final_eval(&runs[r], &split);
            double v = e ? member_number(e->root, ms->col[c].key) : NAN;
            if (isfinite(v) && (!isfinite(best[c]) || (ms->col[c].lower_is_better ? v < best[c] : v > best[c])))
                best[c] = v;
        }
    }
    bl__text_append(h, "<section id=\"comparison\"><h2>Comparison</h2>\n<table><thead><tr><th>run</th><th>method</th>"
                       "<th>dataset</th><th>imbalance</th><th>split</th><th>epoch</th>");
    for (int c = 0; c < ms->n; c++) bl__text_printf(h, "<th>%s</th>", ms->col[c].header);
    bl__text_append(h, "</tr></thead><tbody>\n");
    for (int r = 0; r < n; r++) {
        const char *split;
        const eval_record *e = final_eval(&runs[r], &split);
        bl__text_printf(h, "<tr><td><a href=\"#run%d\">", r);
        bl__text_append_escaped(h, runs[r].label);
        bl__text_append(h, "</a></td><td>");
        bl__text_append_escaped(h, runs[r].method);
        bl__text_append(h, "</td><td>");
        bl__text_append_escaped(h, runs[r].dataset);
        bl__text_append(h, "</td><td>");
        if (isfinite(runs[r].imbalance)) bl__text_printf(h, "%g", runs[r].imbalance);
        bl__text_printf(h, "</td><td>%s</td><td>", e ? split : "&ndash;");
        if (e) bl__text_printf(h, "%g", member_number(e->root, "epoch"));
        bl__text_append(h, "</td>");
        for (int c = 0; c < ms->n; c++) {
            double v = e ? member_number(e->root, ms->col[c].key) : NAN;
            bool top = n > 1 && isfinite(v) && v == best[c];
            bl__text_append(h, top ? "<td class=\"best\">" : "<td>");
            append_value(h, &ms->col[c], v, c == ms->n - 1 ? 2 : 1);
            bl__text_append(h, "</td>");
        }
        bl__text_append(h, "</tr>\n");
    }
    bl__text_append(h, "</tbody></table>\n<p class=\"note\">Each run's last test evaluation (its last validation one "
                       "when it has none); best value per column in bold.</p>\n<div class=\"grid\">\n");
    bl__series *series = calloc((size_t)n, sizeof *series);
    if (!series) {
        h->failed = true;
        return;
    }
    for (int chart = 0; chart < 2; chart++) {
        for (int r = 0; r < n; r++) {
            const curve *c = chart == 0 ? &runs[r].val_primary : &runs[r].mean_loss;
            series[r] = (bl__series){runs[r].label, palette[r % PALETTE_SIZE], c->x, c->y, c->n, NULL};
        }
        bl__chart spec = chart == 0 ? (ms->classification
                                           ? (bl__chart){.title = "Validation top-1, all runs", .x_label = "epoch",
                                                         .y_label = "top-1 (%)", .y_lo = 0, .y_hi = 1, .y_scale = 100}
                                           : (bl__chart){.title = "Validation primary metric, all runs",
                                                         .x_label = "epoch", .y_label = ms->col[0].header})
                                    : (bl__chart){.title = "Mean training loss per epoch, all runs", .x_label = "epoch",
                                                  .y_label = "loss"};
        bl__text svg = {0};
        bl__svg_chart(&svg, &spec, series, n);
        append_figure(h, &svg);
        bl__text_free(&svg);
    }
    free(series);
    bl__text_append(h, "</div></section>\n");
}

/* Runs of one recipe: the same method, dataset, imbalance, model and epochs (seeds may differ). */
static bool same_recipe(const run_data *a, const run_data *b) {
    bool same_imbalance = a->imbalance == b->imbalance || (isnan(a->imbalance) && isnan(b->imbalance));
    return same_imbalance && a->epochs == b->epochs && strcmp(a->method, b->method) == 0 &&
           strcmp(a->dataset, b->dataset) == 0 && strcmp(a->model, b->model) == 0;
}


/* One row of the recipe table: the mean and sample standard deviation of each summary metric over
 * the group's final test evaluations (a dash where a run lacks the value). */
static void append_recipe_row(bl__text *h, const run_data *runs, const int *members, int count,
                              const metric_set *ms) {
    const run_data *first = &runs[members[0]];
    bl__text_append(h, "<tr><td>");
    bl__text_append_escaped(h, first->method);
    bl__text_append(h, "</td><td>");
    bl__text_append_escaped(h, first->dataset);
    bl__text_append(h, "</td><td>");
    if (isfinite(first->imbalance)) bl__text_printf(h, "%g", first->imbalance);
    bl__text_append(h, "</td><td>");
    bl__text_append_escaped(h, first->model);
    bl__text_printf(h, "</td><td>%lld</td><td>%d</td>", (long long)first->epochs, count);
    for (int j = 0; j < ms->n_summary; j++) {
        const metric_column *col = &ms->col[ms->summary[j]];
        double sum = 0, sumsq = 0;
        for (int i = 0; i < count; i++) {
            double v = member_number(runs[members[i]].last_test.root, col->key);
            sum += v;
            sumsq += v * v;
        }
        const double mean = sum / count, var = fmax((sumsq - count * mean * mean) / (count - 1), 0.0);
        bl__text_append(h, "<td>");
        append_value(h, col, mean, 1);
        if (isfinite(mean))
            bl__text_printf(h, col->percent ? " &plusmn; %.1f" : " &plusmn; %.4f", (col->percent ? 100 : 1) * sqrt(var));
        bl__text_append(h, "</td>");
    }
    bl__text_append(h, "</tr>\n");
}

/* Groups of two or more runs of one recipe with a test evaluation, averaged: the multi-seed view
 * the long-tailed literature asks for, since one subset of CIFAR-LT moves results by a point. */
static void append_recipe_means(bl__text *h, const run_data *runs, int n, const metric_set *ms) {
    int *members = malloc((size_t)n * sizeof *members);
    bool *taken = calloc((size_t)n, sizeof *taken);
    if (!members || !taken) {
        h->failed = true;
        free(members);
        free(taken);
        return;
    }
    bool any = false;
    for (int r = 0; r < n; r++) {
        if (taken[r] || !runs[r].last_test.root) continue;
        int count = 0;
        for (int q = r; q < n; q++)
            if (!taken[q] && runs[q].last_test.root && same_recipe(&runs[r], &runs[q])) {
                members[count++] = q;
                taken[q] = true;
            }
        if (count < 2) continue;
        if (!any) {
            bl__text_append(h, "<section id=\"recipes\"><h2>Mean over runs of one recipe</h2>\n<table><thead><tr>"
                               "<th>method</th><th>dataset</th><th>imbalance</th><th>model</th><th>epochs</th>"
                               "<th>runs</th>");
            for (int j = 0; j < ms->n_summary; j++) bl__text_printf(h, "<th>%s</th>", ms->col[ms->summary[j]].header);
            bl__text_append(h, "</tr></thead><tbody>\n");
        }
        any = true;
        append_recipe_row(h, runs, members, count, ms);
    }
    if (any)
        bl__text_append(h, "</tbody></table>\n<p class=\"note\">Runs with the same method, dataset, imbalance, model "
                           "and epochs (their seeds may differ): mean &plusmn; sample standard deviation of the final "
                           "test evaluations.</p>\n</section>\n");
    free(members);
    free(taken);
}

static const char page_style[] =
    "body{font-family:Helvetica,Arial,sans-serif;color:#222;margin:24px auto;max-width:1180px;padding:0 16px}"
    "h1{font-size:24px;margin-bottom:4px}h2{font-size:19px;margin:32px 0 4px;border-bottom:1px solid #ddd;"
    "padding-bottom:4px}p.meta{margin:4px 0 10px;color:#444}p.note{color:#666;font-size:12px;margin:4px 0 12px}"
    ".dir{color:#888;font-family:monospace}p.error{color:#b00020;font-weight:600}"
    "table{border-collapse:collapse;font-size:13px;margin:8px 0}"
    "th,td{padding:4px 10px;border-bottom:1px solid #e3e3e3;text-align:right}th{background:#f4f6f8}"
    "td:first-child,th:first-child{text-align:left}td.best{font-weight:700}"
    "#comparison td:nth-child(-n+3),#comparison th:nth-child(-n+3){text-align:left}"
    "#recipes td:nth-child(-n+2),#recipes th:nth-child(-n+2),#recipes td:nth-child(4),"
    "#recipes th:nth-child(4){text-align:left}"
    ".grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:12px}"
    "figure{margin:0;border:1px solid #eee;border-radius:4px;padding:6px;background:#fff}"
    "figure svg{width:100%;height:auto;display:block}";

static void render_page(bl__text *h, const run_data *runs, int n) {
    bl__text_append(h, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>ballast report");
    if (n == 1) {
        bl__text_append(h, ": ");
        bl__text_append_escaped(h, runs[0].label);
    }
    bl__text_append(h, "</title>\n<style>");
    bl__text_append(h, page_style);
    bl__text_printf(h, "</style>\n</head>\n<body>\n<h1>ballast report</h1>\n<p class=\"meta\">%d run%s</p>\n", n,
                    n == 1 ? "" : "s");
    const metric_set ms = metrics_of(runs, n);
    if (n > 1) append_comparison(h, runs, n, &ms);
    if (n > 1) append_recipe_means(h, runs, n, &ms);
    for (int r = 0; r < n; r++) append_run_section(h, &runs[r], r, &ms);
    bl__text_append(h, "</body>\n</html>\n");
}

int bl_report_write(const char *const *run_dirs, int n_runs, const char *html_path) {
    BL_CHECK_RC(run_dirs && n_runs > 0 && html_path, "report: needs at least one run directory and an output path");
    run_data *runs = calloc((size_t)n_runs, sizeof *runs);
    BL_CHECK_RC(runs, "report: out of memory");
    int status = BL_OK, n_read = 0;
    while (status == BL_OK && n_read < n_runs) status = read_run(&runs[n_read], run_dirs[n_read]), n_read++;
    if (status == BL_OK) {
        bl__text page = {0};
        render_page(&page, runs, n_runs);
        if (page.failed) {
            bl_set_error("report: out of memory building the page");
            status = BL_ERR;
        } else {
            status = bl_file_write_atomic(html_path, page.data, page.len);
        }
        bl__text_free(&page);
    }
    for (int r = 0; r < n_read; r++) run_free(&runs[r]);
    free(runs);
    return status;
}
