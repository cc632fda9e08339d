/* The HTML report on generated run directories: the page must be well formed (every tag closed,
 * every '&' an entity), hold the charts the runs call for (one polyline point per logged step, one
 * scatter point per class, one heatmap cell per non-zero confusion count), show the evaluation's
 * numbers in its tables, escape names, honour resumed logs, compare several runs, and refuse
 * missing or corrupt logs with the file and line in the message. */
#include "test.h"

#include "ballast/metrics.h"

#include <sys/stat.h>
#include <unistd.h>

static char root[] = "/tmp/ballast_test_report_XXXXXX";

/* A file's path under `dir`, in one of a few rotating buffers. */
static const char *path_in(const char *dir, const char *name) {
    static char buf[4][512];
    static int next;
    char *p = buf[next++ & 3];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

/* A new directory under the test's root; the path stays valid for the whole test program. */
static const char *new_dir(const char *name) {
    static char dirs[32][512];
    static int used;
    char *d = dirs[used++ & 31];
    snprintf(d, 512, "%s/%s", root, name);
    CHECK(mkdir(d, 0755) == 0, "%s", d);
    return d;
}

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "%s", path);
    if (!f) return;
    fputs(text, f);
    fclose(f);
}

static char *read_text(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (s && fread(s, 1, (size_t)n, f) != (size_t)n) n = 0;
    if (s) s[n] = '\0';
    fclose(f);
    return s;
}

static int count_of(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = strstr(hay, needle); p; p = strstr(p + 1, needle)) n++;
    return n;
}

/* Points of all polylines in `svg`: the "x,y" pairs of their points attributes. */
static int polyline_points(const char *svg) {
    int n = 0;
    for (const char *p = strstr(svg, "points=\""); p; p = strstr(p, "points=\"")) {
        p += 8;
        for (; *p && *p != '"'; p++) n += *p == ',';
    }
    return n;
}

/* Walks every tag: closing tags must match the innermost open one (only <meta> is void here,
 * "<.../>" closes itself), and every '&' outside tags must start an entity we write. */
static bool well_formed(const char *html, char *why, size_t why_len) {
    char stack[256][16];
    int depth = 0;
    for (const char *p = html; *p; p++) {
        if (*p == '&') {
            static const char *const entities[] = {"&amp;",   "&lt;",     "&gt;",    "&quot;",
                                                   "&ndash;", "&middot;", "&plusmn;"};
            bool known = false;
            for (size_t i = 0; i < sizeof entities / sizeof entities[0]; i++)
                known |= strncmp(p, entities[i], strlen(entities[i])) == 0;
            if (!known) return snprintf(why, why_len, "bare '&' at byte %ld", (long)(p - html)), false;
        }
        if (*p != '<') continue;
        if (p[1] == '!') {
            p = strchr(p, '>');
            if (!p) return snprintf(why, why_len, "unterminated <!"), false;
            continue;
        }
        bool closing = p[1] == '/';
        const char *name = p + 1 + closing;
        size_t len = strcspn(name, " >/\n");
        const char *end = strchr(p, '>');
        if (!end || len == 0 || len >= 16)
            return snprintf(why, why_len, "bad tag at byte %ld", (long)(p - html)), false;
        if (memchr(p + 1, '<', (size_t)(end - p - 1)))
            return snprintf(why, why_len, "'<' inside a tag at byte %ld", (long)(p - html)), false;
        if (closing) {
            if (depth == 0 || strncmp(stack[depth - 1], name, len) != 0 || stack[depth - 1][len] != '\0')
                return snprintf(why, why_len, "</%.*s> closes <%s> at byte %ld", (int)len, name,
                                depth ? stack[depth - 1] : "nothing", (long)(p - html)),
                       false;
            depth--;
        } else if (end[-1] != '/' && !(len == 4 && strncmp(name, "meta", 4) == 0)) {
            if (depth == 256) return snprintf(why, why_len, "nesting too deep"), false;
            snprintf(stack[depth++], 16, "%.*s", (int)len, name);
        }
        p = end;
    }
    if (depth) return snprintf(why, why_len, "<%s> never closed", stack[depth - 1]), false;
    return true;
}

/* The svg element (from "<svg" to "</svg>") whose text contains `title`, copied; NULL if none. */
static char *svg_with_title(const char *html, const char *title) {
    const char *hit = strstr(html, title);
    if (!hit) return NULL;
    const char *start = hit;
    while (start > html && strncmp(start, "<svg", 4) != 0) start--;
    const char *end = strstr(hit, "</svg>");
    if (!end || strncmp(start, "<svg", 4) != 0) return NULL;
    return strndup(start, (size_t)(end - start));
}

/* Six classes: the hand-worked case of test_metrics (top-1 60%, ECE 34.8%, ten images in ten
 * distinct confusion cells), evaluated with training counts in all three groups. */
static char *eval_record(const char *split, int epoch) {
    static const double probs[10][6] = {
        {.70, .10, .05, .05, .05, .05}, {.30, .42, .10, .08, .05, .05}, {.05, .85, .025, .025, .025, .025},
        {.10, .10, .50, .10, .10, .10}, {.10, .30, .02, .20, .18, .20}, {.05, .05, .05, .62, .18, .05},
        {.05, .05, .05, .05, .75, .05}, {.05, .55, .10, .10, .10, .10}, {.05, .05, .05, .45, .35, .05},
        {.04, .04, .04, .04, .02, .82}};
    static const int64_t labels[10] = {0, 0, 1, 2, 2, 3, 4, 4, 4, 5};
    static const int64_t train_counts[6] = {500, 100, 150, 20, 19, 3};
    bl_tensor *logits = bl_empty(BL_F64, BL_SHAPE(10, 6));
    for (int i = 0; i < 60; i++) bl_set_flat(logits, i, log(probs[i / 6][i % 6]));
    bl_metrics m;
    bl_metrics_summary s;
    char extra[64];
    snprintf(extra, sizeof extra, "\"eval\":\"%s\",\"epoch\":%d", split, epoch);
    char *json = NULL;
    if (bl_metrics_init(&m, 6) == BL_OK &&
        bl_metrics_add(&m, logits, bl_from_data(BL_I64, BL_SHAPE(10), labels)) == BL_OK &&
        bl_metrics_summarize(&m, train_counts, &s) == BL_OK)
        json = bl_metrics_json(&s, extra);
    bl_metrics_free(&m);
    CHECK(json != NULL);
    return json;
}

/* A run directory with `steps` training records over two epochs (loss 2 - step / 10), an
 * epoch_end and a val record per epoch, and a final test record. */
static const char *make_run(const char *name, const char *method, int steps) {
    const char *dir = new_dir(name);
    char config[256];
    snprintf(config, sizeof config,
             "dataset:\n  name: fashion_mnist\n  imbalance: 100\nmodel:\n  name: convnet3\nmethod:\n  name: %s\n"
             "train:\n  epochs: 2\n",
             method);
    write_text(path_in(dir, "config.yaml"), config);
    FILE *f = fopen(path_in(dir, "log.jsonl"), "w");
    CHECK(f != NULL);
    if (!f) return dir;
    for (int epoch = 1; epoch <= 2; epoch++) {
        for (int i = 0; i < steps / 2; i++) {
            int step = (epoch - 1) * (steps / 2) + i + 1;
            fprintf(f, "{\"epoch\":%d,\"step\":%d,\"loss\":%g,\"lr\":%g,\"img_per_s\":1000}\n", epoch, step,
                    2 - step / 10.0, 0.1 / epoch);
        }
        fprintf(f, "{\"epoch_end\":%d,\"step\":%d,\"mean_loss\":%g,\"seconds\":1.5}\n", epoch, epoch * (steps / 2),
                2.0 - epoch * 0.5);
        char *val = eval_record("val", epoch);
        fprintf(f, "%s\n", val ? val : "{}");
        free(val);
    }
    fprintf(f, "{\"method_epoch\":2,\"step\":%d,\"alpha\":1.5,\"loss\":0.1}\n", steps);
    char *test = eval_record("test", 2);
    fprintf(f, "%s\n", test ? test : "{}");
    free(test);
    fclose(f);
    return dir;
}

static void test_single_run_page(void) {
    const char *dir = make_run("ce & <r100>", "ce", 20);
    const char *out = path_in(root, "one.html");
    CHECK(bl_report_write(&dir, 1, out) == BL_OK, "%s", bl_last_error());
    char *html = read_text(out);
    CHECK(html != NULL);
    if (!html) return;
    char why[128] = "";
    CHECK(well_formed(html, why, sizeof why), "%s", why);
    CHECK(strncmp(html, "<!DOCTYPE html>", 15) == 0 && strstr(html, "</html>\n"));
    CHECK(!strstr(html, "<script"), "no scripts");
    /* the directory name is escaped wherever it appears */
    CHECK(strstr(html, "ce &amp; &lt;r100&gt;") && !strstr(html, "<r100>"));
    CHECK(strstr(html, "method <b>ce</b>") && strstr(html, "dataset <b>fashion_mnist</b>") &&
          strstr(html, "imbalance <b>100</b>") && strstr(html, "model <b>convnet3</b>"));
    /* metrics table: val and test rows of the hand-worked case; many (c0, c2) = 50.0, medium (c1, c3)
     * = 100.0, few (c4, c5) = 66.7, macro precision 79.2, macro recall 72.2, ECE 34.80 */
    const char *row = "<td>test</td><td>2</td><td>10</td><td>60.0</td><td>90.0</td><td>50.0</td><td>100.0</td>"
                      "<td>66.7</td><td>79.2</td><td>72.2</td><td>34.80</td>";
    CHECK(strstr(html, row), "test row missing");
    CHECK(strstr(html, "<td>val</td><td>2</td>"));
    CHECK(strstr(html, "6 classes: 2 many, 2 medium, 2 few."));
    /* the loss chart: one polyline with a point per training record (the method's record is not one) */
    char *loss = svg_with_title(html, ">Training loss<");
    CHECK(loss && count_of(loss, "<polyline") == 1 && polyline_points(loss) == 20, "%s", loss ? loss : "no loss chart");
    free(loss);
    char *val = svg_with_title(html, ">Validation top-1<");
    CHECK(val && count_of(val, "<polyline") == 1 && polyline_points(val) == 2);
    CHECK(val && strstr(val, ">100</text>"), "the top-1 axis is in percent and ends at 100");
    free(val);
    /* the scatter: one point per class with its tooltip, log-x decade ticks, both thresholds */
    char *scatter = svg_with_title(html, "Per-class accuracy (test)");
    CHECK(scatter && count_of(scatter, "<circle") == 6 && count_of(scatter, "<title>class ") == 6);
    CHECK(scatter && strstr(scatter, "class 4: 19 training images, 33.3% correct"));
    CHECK(scatter && strstr(scatter, ">1</text>") && strstr(scatter, ">10</text>") && strstr(scatter, ">1000</text>"));
    CHECK(scatter && count_of(scatter, "stroke-dasharray") == 2);
    CHECK(scatter && strstr(scatter, "few (&lt; 20)"), "legend names the groups");
    free(scatter);
    /* the confusion heatmap: one cell per non-zero count, tooltips with count and row share */
    char *heat = svg_with_title(html, "Confusion matrix (test)");
    CHECK(heat && count_of(heat, "<title>true ") == 10, "%d cells", heat ? count_of(heat, "<title>true ") : -1);
    CHECK(heat && strstr(heat, "true 4, predicted 3: 1 (33.3%)"));
    free(heat);
    CHECK(!strstr(html, "id=\"comparison\""), "no comparison for one run");
    free(html);
}

static void test_several_runs_compared(void) {
    const char *dirs[2] = {make_run("baseline", "ce", 10), NULL};
    dirs[1] = make_run("tde", "deconfound_tde", 10);
    /* the second run's final test record is better: rewrite its log's last line */
    char *log = read_text(path_in(dirs[1], "log.jsonl"));
    CHECK(log != NULL);
    if (!log) return;
    char *last = strstr(log, "{\"eval\":\"test\"");
    CHECK(last != NULL);
    if (last) {
        *last = '\0';
        write_text(path_in(dirs[1], "log.jsonl"), log);
        FILE *f = fopen(path_in(dirs[1], "log.jsonl"), "a");
        /* a second val record at epoch 2 (after a method's tuning) replaces the first in the curve */
        fprintf(f, "{\"eval\":\"val\",\"epoch\":2,\"top1\":0.9}\n");
        fprintf(f, "{\"eval\":\"test\",\"epoch\":2,\"count\":10,\"top1\":0.75,\"top5\":1,\"many\":0.5,\"medium\":0.875,"
                   "\"few\":null,\"macro_precision\":0.7,\"macro_recall\":0.71,\"ece\":0.05}\n");
        fclose(f);
    }
    free(log);
    const char *out = path_in(root, "two.html");
    CHECK(bl_report_write(dirs, 2, out) == BL_OK, "%s", bl_last_error());
    char *html = read_text(out);
    CHECK(html != NULL);
    if (!html) return;
    char why[128] = "";
    CHECK(well_formed(html, why, sizeof why), "%s", why);
    const char *table = strstr(html, "id=\"comparison\"");
    CHECK(table != NULL);
    if (table) {
        CHECK(strstr(table, "<a href=\"#run0\">baseline</a></td><td>ce</td><td>fashion_mnist</td><td>100</td>"
                            "<td>test</td><td>2</td><td>60.0</td>"));
        /* higher accuracy and lower ECE win; a null group is a dash and never "best" */
        CHECK(strstr(table, "<a href=\"#run1\">tde</a></td><td>deconfound_tde</td><td>fashion_mnist</td><td>100</td>"
                            "<td>test</td><td>2</td><td class=\"best\">75.0</td>"));
        CHECK(strstr(table, "<td class=\"best\">5.00</td>") && strstr(table, "<td>34.80</td>"));
        CHECK(strstr(table, "<td class=\"best\">66.7</td>") && strstr(table, "<td>&ndash;</td>"));
        CHECK(strstr(table, "<td class=\"best\">50.0</td><td class=\"best\">100.0</td>") &&
                  strstr(table, "<td class=\"best\">50.0</td><td>87.5</td>"),
              "ties are both best");
    }
    char *overlay = svg_with_title(html, "Validation top-1, all runs");
    CHECK(overlay && count_of(overlay, "<polyline") == 2 && polyline_points(overlay) == 4 &&
          strstr(overlay, ">baseline</text>") &&
          strstr(overlay, ">tde</text>"));
    free(overlay);
    char *losses = svg_with_title(html, "Mean training loss per epoch, all runs");
    CHECK(losses && count_of(losses, "<polyline") == 2);
    free(losses);
    CHECK(count_of(html, "<section id=\"run") == 2);
    CHECK(!strstr(html, "id=\"recipes\""), "no mean over runs of different recipes");
    free(html);
}

/* Runs of one recipe (here two seeds of ce beside one tde run) get a row of means: top-1 0.6 and
 * 0.8 give 70.0 +- 14.1 (sample standard deviation), the identical groups 50.0 +- 0.0, and a group
 * no run has stays a dash. The single tde run makes no row. */
static void test_recipe_means(void) {
    const char *dirs[3] = {make_run("seed0", "ce", 4), make_run("seed1", "ce", 4), make_run("tde1", "deconfound_tde", 4)};
    char *log = read_text(path_in(dirs[1], "log.jsonl"));
    char *last = log ? strstr(log, "{\"eval\":\"test\"") : NULL;
    CHECK(last != NULL);
    if (!last) {
        free(log);
        return;
    }
    *last = '\0';
    write_text(path_in(dirs[1], "log.jsonl"), log);
    free(log);
    FILE *f = fopen(path_in(dirs[1], "log.jsonl"), "a");
    fprintf(f, "{\"eval\":\"test\",\"epoch\":2,\"count\":10,\"top1\":0.8,\"top5\":1,\"many\":0.5,\"medium\":1,"
               "\"few\":null,\"macro_precision\":0.7,\"macro_recall\":0.71,\"ece\":0.05}\n");
    fclose(f);
    const char *out = path_in(root, "seeds.html");
    CHECK(bl_report_write(dirs, 3, out) == BL_OK, "%s", bl_last_error());
    char *html = read_text(out);
    const char *table = html ? strstr(html, "id=\"recipes\"") : NULL;
    CHECK(table != NULL);
    if (table) {
        CHECK(strstr(table, "<tr><td>ce</td><td>fashion_mnist</td><td>100</td><td>convnet3</td><td>2</td><td>2</td>"
                            "<td>70.0 &plusmn; 14.1</td><td>50.0 &plusmn; 0.0</td><td>100.0 &plusmn; 0.0</td>"
                            "<td>&ndash;</td></tr>"),
              "ce row: %.600s", strstr(table, "<tr><td>ce</td>") ? strstr(table, "<tr><td>ce</td>") : table);
        CHECK(!strstr(table, "<td>deconfound_tde</td>"), "one tde run makes no row");
    }
    char why[128] = "";
    CHECK(html && well_formed(html, why, sizeof why), "%s", why);
    free(html);
}

static void test_resumed_and_stopped_log(void) {
    const char *dir = new_dir("resumed");
    write_text(path_in(dir, "config.yaml"), "method:\n  name: ce\n");
    /* steps 1..8 were logged, the run resumed from the checkpoint after step 4 (epoch 1) and logged
     * steps 5..8 again: the plot must show 8 steps, not 12; then the loss diverged */
    FILE *f = fopen(path_in(dir, "log.jsonl"), "w");
    for (int step = 1; step <= 8; step++)
        fprintf(f, "{\"epoch\":%d,\"step\":%d,\"loss\":1,\"lr\":0.1}\n", (step + 3) / 4, step);
    fprintf(f, "{\"epoch_end\":2,\"step\":8,\"mean_loss\":1,\"seconds\":1}\n");
    fprintf(f, "\n{\"resume\":1,\"step\":4}\r\n");
    for (int step = 5; step <= 8; step++) fprintf(f, "{\"epoch\":2,\"step\":%d,\"loss\":0.5,\"lr\":0.01}\n", step);
    fprintf(f, "{\"error\":\"loss is nan at <step 9>\",\"epoch\":3,\"step\":9}\n");
    fclose(f);
    const char *out = path_in(root, "resumed.html");
    CHECK(bl_report_write(&dir, 1, out) == BL_OK, "%s", bl_last_error());
    char *html = read_text(out);
    char *loss = html ? svg_with_title(html, ">Training loss<") : NULL;
    CHECK(loss && polyline_points(loss) == 8, "%d points", loss ? polyline_points(loss) : -1);
    free(loss);
    CHECK(html && strstr(html, "Training stopped with an error: loss is nan at &lt;step 9&gt;"));
    /* no evaluation yet: the table says so and the scatter and heatmap are left out */
    CHECK(html && strstr(html, "no evaluation in the log yet") && !strstr(html, "Per-class accuracy") &&
          !strstr(html, "Confusion matrix"));
    free(html);
}

/* A long log is averaged down to at most 600 points per curve: 1300 steps in buckets of 3. */
static void test_long_curves_thinned(void) {
    const char *dir = make_run("long", "ce", 1300);
    const char *out = path_in(root, "long.html");
    CHECK(bl_report_write(&dir, 1, out) == BL_OK, "%s", bl_last_error());
    char *html = read_text(out);
    char *loss = html ? svg_with_title(html, ">Training loss<") : NULL;
    CHECK(loss && polyline_points(loss) == 434, "%d points", loss ? polyline_points(loss) : -1);
    free(loss);
    free(html);
}

/* Writes a run whose log is `log` and returns bl_report_write's error ("" when it succeeded). */
/* A regression run: the tables show the evaluator's own metrics (as numbers, not %), the validation
 * curve is its primary metric, and of two runs the lower RMSE is the best one. */
static void test_regression_runs(void) {
    const char *dirs[2];
    const double srcc[2] = {0.9, 0.8}, rmse[2] = {0.3, 0.2};
    for (int r = 0; r < 2; r++) {
        dirs[r] = new_dir(r ? "scores_b" : "scores_a");
        write_text(path_in(dirs[r], "config.yaml"), "dataset:\n  name: scores\nmethod:\n  name: linear\n");
        char log[1024];
        snprintf(log, sizeof log,
                 "{\"epoch\":1,\"step\":1,\"loss\":2.0,\"lr\":0.1}\n"
                 "{\"eval\":\"val\",\"epoch\":1,\"step\":1,\"count\":8,\"srcc\":0.5,\"plcc\":0.6,\"rmse\":0.9}\n"
                 "{\"eval\":\"val\",\"epoch\":2,\"step\":2,\"count\":8,\"srcc\":0.7,\"plcc\":0.6,\"rmse\":0.9}\n"
                 "{\"eval\":\"test\",\"epoch\":2,\"step\":2,\"count\":8,\"srcc\":%g,\"plcc\":0.6,\"rmse\":%g,"
                 "\"logistic\":[1,2,3,4]}\n",
                 srcc[r], rmse[r]);
        write_text(path_in(dirs[r], "log.jsonl"), log);
    }
    const char *out = path_in(root, "scores.html");
    CHECK(bl_report_write(dirs, 2, out) == BL_OK, "%s", bl_last_error());
    char *html = read_text(out);
    CHECK(html && strstr(html, "<th>srcc</th><th>plcc</th><th>rmse</th>"), "the evaluator's metrics head the tables");
    CHECK(html && strstr(html, "<td class=\"best\">0.9000</td>") && strstr(html, "<td class=\"best\">0.2000</td>"),
          "higher srcc and lower rmse are the best");
    CHECK(html && !strstr(html, "<th>top-1</th>"), "no classification columns");
    char *curve = html ? svg_with_title(html, "Validation srcc") : NULL;
    CHECK(curve != NULL, "the primary metric's curve");
    free(curve);
    char why[128] = "";
    CHECK(html && well_formed(html, why, sizeof why), "%s", why);
    free(html);
}

static const char *report_error(const char *name, const char *config, const char *log) {
    const char *dir = new_dir(name);
    if (config) write_text(path_in(dir, "config.yaml"), config);
    if (log) write_text(path_in(dir, "log.jsonl"), log);
    bl_clear_error();
    static char message[512];
    int rc = bl_report_write(&dir, 1, path_in(root, "bad.html"));
    snprintf(message, sizeof message, "%s", rc == BL_OK ? "" : bl_last_error());
    bl_clear_error();
    return message;
}

static void test_bad_runs_refused(void) {
    const char *config = "method:\n  name: ce\n";
    const char *train = "{\"epoch\":1,\"step\":1,\"loss\":2.0,\"lr\":0.1}\n";
    const char *missing = path_in(root, "absent");
    CHECK(bl_report_write(&missing, 1, path_in(root, "bad.html")) == BL_ERR);
    CHECK(strstr(bl_last_error(), "absent: not a run directory"), "%s", bl_last_error());
    bl_clear_error();
    const char *e = report_error("no_log", config, NULL);
    CHECK(strstr(e, "no_log/log.jsonl") && strstr(e, "cannot open"), "%s", e);
    e = report_error("no_config", NULL, train);
    CHECK(strstr(e, "no_config/config.yaml"), "%s", e);
    char log[1024];
    snprintf(log, sizeof log, "%s%s{\"epoch\":1,\"step\":3,\"loss\":2.0,\"lr\"}\n%s", train, train, train);
    e = report_error("corrupt", config, log);
    CHECK(strstr(e, "corrupt/log.jsonl:3:") && strstr(e, "not a JSON record"), "%s", e);
    snprintf(log, sizeof log, "%s{\"epoch\":1,\"step\":2,\"lo", train); /* cut off mid-record */
    e = report_error("truncated", config, log);
    CHECK(strstr(e, "truncated/log.jsonl:2:"), "%s", e);
    e = report_error("not_object", config, "[1, 2]\n");
    CHECK(strstr(e, "not_object/log.jsonl:1:") && strstr(e, "JSON object"), "%s", e);
    snprintf(log, sizeof log, "%s{\"epoch\":1,\"step\":2,\"loss\":\"high\"}\n", train);
    e = report_error("wrong_type", config, log);
    CHECK(strstr(e, "wrong_type/log.jsonl:2:") && strstr(e, "\"loss\" must be a number"), "%s", e);
    e = report_error("no_top1", config, "{\"eval\":\"val\",\"epoch\":1}\n");
    CHECK(strstr(e, "no_top1/log.jsonl:1:") && strstr(e, "\"top1\""), "%s", e);
    e = report_error("bad_confusion", config,
                     "{\"eval\":\"test\",\"epoch\":1,\"top1\":0.5,\"per_class_acc\":[0.5,0.5],"
                     "\"confusion\":[[1,1],[1]]}\n");
    CHECK(strstr(e, "bad_confusion/log.jsonl:1:") && strstr(e, "confusion"), "%s", e);
    e = report_error("bad_counts", config,
                     "{\"eval\":\"test\",\"epoch\":1,\"top1\":0.5,\"per_class_acc\":[0.5,0.5],\"class_counts\":[3]}\n");
    CHECK(strstr(e, "bad_counts/log.jsonl:1:") && strstr(e, "class_counts"), "%s", e);
    e = report_error("bad_yaml", "method: [unclosed\n", train);
    CHECK(strstr(e, "bad_yaml/config.yaml"), "%s", e);
    CHECK(access(path_in(root, "bad.html"), F_OK) != 0, "a failed report writes no page");
}

static void cleanup(void) {
    char command[600];
    snprintf(command, sizeof command, "rm -rf '%s'", root);
    CHECK(system(command) == 0);
}

static void test_setup(void) { CHECK(mkdtemp(root) != NULL); }

TEST_MAIN(TEST(test_setup), TEST(test_single_run_page), TEST(test_several_runs_compared), TEST(test_recipe_means),
          TEST(test_resumed_and_stopped_log), TEST(test_long_curves_thinned), TEST(test_bad_runs_refused), TEST(test_regression_runs),
          TEST(cleanup))
