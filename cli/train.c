/* `ballast train`: runs the training a YAML config describes (with key=value overrides) into a run
 * directory, or continues an interrupted run with --resume. */
#include "cli.h"

#include "ballast/ballast.h"
#include "ballast/train.h"

#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

static const cli_option options[] = {
    {"resume", NULL, "continue the run in output.dir from its latest checkpoint", false},
    {"quiet", NULL, "no progress display", false},
    {"options", NULL, "list every config key (the trainer's and each method's) with its default and exit", false},
};

static const char usage[] =
    "usage: ballast train CONFIG.yaml [section.key=value ...] [--resume] [--quiet]\n"
    "       ballast train RUN_DIR --resume      (continue a run from its own config.yaml)\n"
    "       ballast train --options             (list the config keys)";

static void print_table(const char *prefix, const bl_option *opts, int n) {
    for (int i = 0; i < n; i++) {
        char key[160];
        snprintf(key, sizeof key, "%s%s", prefix, opts[i].key);
        printf("  %-34s %-8s %s\n", key, opts[i].default_value ? opts[i].default_value : "-", opts[i].help);
    }
}

static void print_options(void) {
    int n = 0;
    const bl_option *opts = bl_trainer_options(&n);
    printf("trainer keys (key, default, meaning):\n");
    print_table("", opts, n);
    for (const char *const *name = bl_recipe_names(); *name; name++) {
        const bl_recipe *m = bl_recipe_find(*name);
        printf("\nmethod.name: %s  %s\n", m->name, m->summary);
        print_table("method.", m->options, m->n_options);
    }
}

int cmd_train(int argc, char **argv) {
    cli_args a;
    int rc = cli_parse(&a, usage, options, (int)(sizeof options / sizeof options[0]), argc, argv);
    if (rc) return rc < 0 ? 2 : 0;
    if (cli_has(&a, "options")) {
        print_options();
        return 0;
    }
    if (a.n_positional < 1) {
        fprintf(stderr, "ballast train: a config file is required (see --help)\n");
        return 2;
    }
    char path[1024];
    struct stat st;
    const char *source = a.positional[0];
    if (stat(source, &st) == 0 && S_ISDIR(st.st_mode)) {
        snprintf(path, sizeof path, "%s/config.yaml", source);
        source = path;
    }
    bl_config *config = bl_config_load(source);
    if (!config) return cli_fail(NULL);
    for (int i = 1; i < a.n_positional; i++) {
        if (!strchr(a.positional[i], '=')) {
            fprintf(stderr, "ballast train: '%s' is not an override (section.key=value)\n", a.positional[i]);
            bl_config_free(config);
            return 2;
        }
        if (bl_config_set(config, a.positional[i]) != BL_OK) {
            bl_config_free(config);
            return cli_fail(NULL);
        }
    }
    bl_run_opts opts = {.resume = cli_has(&a, "resume"), .quiet = cli_has(&a, "quiet")};
    bl_run *run = bl_run_create(config, &opts);
    if (!run) return cli_fail(NULL);
    char processes[64] = "";
    if (bl_dist_size() > 1) snprintf(processes, sizeof processes, ", %d processes", bl_dist_size());
    if (!opts.quiet && bl_dist_rank() == 0)
        fprintf(stderr, "run %s: %s on %s (%lld training images, %lld classes), model %s, %d epoch%s%s\n", run->dir,
                run->recipe->name, bl_config_string(run->config, "dataset.name"), (long long)bl_numel(run->train.labels),
                (long long)run->num_classes, bl_config_string(run->config, "model.name"), run->epochs,
                run->epochs == 1 ? "" : "s", processes);
    rc = bl_run_train(run);
    bl_run_free(run);
    return rc == BL_OK ? 0 : cli_fail(NULL);
}
