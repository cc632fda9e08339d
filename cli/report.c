/* `ballast report`: one HTML page with the curves, per-class plots, confusion matrices and final
 * metrics of one or more run directories, plus a comparison table when given several. */
#include "cli.h"

#include "ballast/metrics.h"

#include <stdio.h>

static const cli_option options[] = {
    {"output", "FILE", "HTML file to write (default report.html)", false},
};

static const char usage[] = "usage: ballast report RUN_DIR [RUN_DIR ...] [--output report.html]";

int cmd_report(int argc, char **argv) {
    cli_args a;
    int rc = cli_parse(&a, usage, options, (int)(sizeof options / sizeof options[0]), argc, argv);
    if (rc) return rc < 0 ? 2 : 0;
    if (a.n_positional == 0) {
        fprintf(stderr, "ballast report: give at least one run directory (see --help)\n");
        return 2;
    }
    const char *output = cli_has(&a, "output") ? cli_get(&a, "output") : "report.html";
    if (bl_report_write(a.positional, a.n_positional, output) != 0) return cli_fail("report");
    printf("wrote %s (%d run%s)\n", output, a.n_positional, a.n_positional == 1 ? "" : "s");
    return 0;
}
