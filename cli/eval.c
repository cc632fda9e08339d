/* `ballast eval`: evaluates a trained run (its latest checkpoint) or a given checkpoint on a split
 * of its dataset with the run's method, and prints the long-tailed metrics; given several runs, it
 * prints one comparison table (method, top-1, many / medium / few-shot accuracy) instead. */
#include "cli.h"

#include "ballast/ballast.h"
#include "ballast/train.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const cli_option options[] = {
    {"split", "NAME", "test (default), val (the validation split drawn from the training data) or train", false},
    {"json", "FILE", "also write the metrics as one JSON object", false},
    {"per-class", NULL, "print each class's training count and accuracy", false},
};

static const char usage[] =
    "usage: ballast eval RUN_DIR|CHECKPOINT [method.key=value ...] [--split test|val|train] [--json FILE] [--per-class]\n"
    "       ballast eval RUN_DIR RUN_DIR ... [method.key=value ...] [--split test|val|train]   (one row per run)\n"
    "Overrides change test-time settings only (method.* keys, train.threads, train.eval_batch_size),\n"
    "e.g. method.alpha=0 evaluates a De-confound-TDE run without the counterfactual subtraction.";

static void print_group(const char *name, double acc, int64_t classes) {
    if (isnan(acc)) printf("  %-8s      -  (%lld classes)\n", name, (long long)classes);
    else printf("  %-8s %6.2f%% (%lld classes)\n", name, 100 * acc, (long long)classes);
}

static void print_percent(double v) {
    if (isnan(v)) printf(" %7s", "-");
    else printf(" %6.2f%%", 100 * v);
}

/* The run paths and the key=value overrides of the command line, apart. */
typedef struct {
    const char *runs[CLI_MAX_VALUES], *overrides[CLI_MAX_VALUES];
    int n_runs, n_overrides;
} eval_targets;

static eval_targets split_targets(const cli_args *a) {
    eval_targets t = {0};
    for (int i = 0; i < a->n_positional; i++) {
        const char *arg = a->positional[i];
        if (strchr(arg, '=')) t.overrides[t.n_overrides++] = arg;
        else t.runs[t.n_runs++] = arg;
    }
    return t;
}

/* Opens and evaluates one run; on success *run_out and *e_out hold it (free both), and for a
 * classification recipe *s its summary (s->count is 0 for another evaluator). */
static int evaluate_run(const char *path, const eval_targets *t, const char *split, bl_run **run_out,
                        bl_evaluator *e_out, bl_metrics_summary *s) {
    bl_run *run = bl_run_open(path, t->overrides, t->n_overrides);
    if (!run) return BL_ERR;
    if (bl_run_split_size(run, split) == 0) {
        bl_set_error("run %s has no %s split (dataset.val_per_class is 0)", run->dir, split);
        bl_run_free(run);
        return BL_ERR;
    }
    if (bl_run_evaluate(run, split, e_out) != BL_OK) {
        bl_run_free(run);
        return BL_ERR;
    }
    memset(s, 0, sizeof *s);
    bl_metrics *m = bl_evaluator_classification(e_out);
    if (m && bl_metrics_summarize(m, run->class_counts, s) != BL_OK) {
        bl_evaluator_free(e_out);
        bl_run_free(run);
        return BL_ERR;
    }
    *run_out = run;
    return BL_OK;
}

static int compare_runs(const eval_targets *t, const char *split) {
    printf("%-28s %-16s %8s %8s %8s %8s   (%s split; groups by training images: many > 100, few < 20)\n", "run",
           "method", "top-1", "many", "medium", "few", split);
    for (int i = 0; i < t->n_runs; i++) {
        bl_run *run;
        bl_evaluator e;
        bl_metrics_summary s;
        if (evaluate_run(t->runs[i], t, split, &run, &e, &s) != BL_OK) return cli_fail(t->runs[i]);
        const char *name = strrchr(run->dir, '/');
        printf("%-28s %-16s", name && name[1] ? name + 1 : run->dir, run->recipe->name);
        if (bl_evaluator_classification(&e)) {
            print_percent(s.top1);
            print_percent(s.many);
            print_percent(s.medium);
            print_percent(s.few);
        } else {
            double value;
            const char *metric = bl_evaluator_primary(&e, &value);
            printf(" %s %.4f", metric, value);
        }
        printf("\n");
        bl_evaluator_free(&e);
        bl_run_free(run);
    }
    return 0;
}

int cmd_eval(int argc, char **argv) {
    cli_args a;
    int rc = cli_parse(&a, usage, options, (int)(sizeof options / sizeof options[0]), argc, argv);
    if (rc) return rc < 0 ? 2 : 0;
    const eval_targets targets = split_targets(&a);
    if (targets.n_runs < 1) {
        fprintf(stderr, "ballast eval: give a run directory or checkpoint (see --help)\n");
        return 2;
    }
    const char *split = cli_has(&a, "split") ? cli_get(&a, "split") : "test";
    if (strcmp(split, "test") != 0 && strcmp(split, "val") != 0 && strcmp(split, "train") != 0) {
        fprintf(stderr, "ballast eval: --split must be test, val or train, got '%s'\n", split);
        return 2;
    }
    if (targets.n_runs > 1) {
        if (cli_has(&a, "json") || cli_has(&a, "per-class")) {
            fprintf(stderr, "ballast eval: --json and --per-class take a single run\n");
            return 2;
        }
        return compare_runs(&targets, split);
    }
    bl_run *run;
    bl_evaluator e;
    bl_metrics_summary s;
    if (evaluate_run(targets.runs[0], &targets, split, &run, &e, &s) != BL_OK) return cli_fail(NULL);
    char *json = NULL;
    if (cli_has(&a, "json")) {
        char *members = bl_evaluator_json(&e);
        FILE *f = members ? fopen(cli_get(&a, "json"), "w") : NULL;
        if (!f || fprintf(f, "{\"eval\":\"%s\",\"epoch\":%d,%s}\n", split, run->epoch, members) < 0 ||
            fclose(f) != 0) {
            if (members) bl_set_error("cannot write %s", cli_get(&a, "json"));
            rc = BL_ERR;
        }
        json = members;
    }
    if (rc == BL_OK && !bl_evaluator_classification(&e)) {
        printf("%s: method %s, model %s, epoch %d, %s split\n", run->dir, run->recipe->name,
               bl_config_string(run->config, "model.name"), run->epoch, split);
        for (const char *const *metric = e.kind->metrics; *metric; metric++)
            printf("  %-10s %.4f\n", *metric, bl_evaluator_metric(&e, *metric));
    } else if (rc == BL_OK) {
        printf("%s: method %s, model %s, epoch %d, %s split (%lld images)\n", run->dir, run->recipe->name,
               bl_config_string(run->config, "model.name"), run->epoch, split, (long long)s.count);
        printf("  top-1    %6.2f%%\n  top-5    %6.2f%%\n", 100 * s.top1, 100 * s.top5);
        print_group("many", s.many, s.n_many);
        print_group("medium", s.medium, s.n_medium);
        print_group("few", s.few, s.n_few);
        printf("  macro precision %.4f, macro recall %.4f, ECE %.4f\n", s.macro_precision, s.macro_recall, s.ece);
        if (cli_has(&a, "per-class")) {
            printf("  class  train  accuracy\n");
            for (int64_t k = 0; k < s.num_classes; k++)
                printf("  %5lld  %5lld  %6.2f%%\n", (long long)k, (long long)run->class_counts[k],
                       100 * s.per_class_acc[k]);
        }
    }
    free(json);
    bl_evaluator_free(&e);
    bl_run_free(run);
    return rc == BL_OK ? 0 : cli_fail(NULL);
}
