/* The ballast command-line tool: one binary, one subcommand per job. */
#include "cli.h"

#include "../methods/recipes.h"
#include "ballast/dist.h"
#include "ballast/error.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    cli_command_fn run;
    const char *summary;
} command;

static const command commands[] = {
    {"predict", cmd_predict, "run a model in eval mode on images and write one CSV row of logits per image"},
    {"bench", cmd_bench, "throughput of training/inference, GEMM and conv GFLOP/s, side by side with PyTorch"},
    {"data", cmd_data, "datasets: list where they are found, import local copies, download, long-tail splits"},
    {"train", cmd_train, "train the run a YAML config describes (key=value overrides, --resume)"},
    {"eval", cmd_eval, "evaluate a run or checkpoint: top-1/top-5, many/medium/few-shot, calibration"},
    {"report", cmd_report, "an HTML page of curves, per-class plots and a comparison table for run directories"},
};

static void usage(void) {
    printf("usage: ballast <command> [options]   (ballast <command> --help for its options)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %-10s %s\n", commands[i].name, commands[i].summary);
}

static int run_command(int argc, char **argv) {
    if (bl_recipes_register_builtin() != 0) return cli_fail(NULL);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 2, argv + 2);
    fprintf(stderr, "ballast: unknown command '%s'\n", argv[1]);
    usage();
    return 2;
}

/* Under mpirun every process runs the same command; they agree on its outcome before leaving the
 * job (cli_finish), so a process that failed on its own (a config its machine cannot read) stops
 * the others, which learn its message, instead of leaving them waiting. */
int main(int argc, char **argv) {
    if (bl_dist_init(&argc, &argv) != BL_OK) return cli_fail(NULL);
    int rc = cli_finish(run_command(argc, argv));
    bl_dist_finalize();
    return rc;
}
