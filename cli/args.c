/* The option parser shared by every subcommand (see cli.h). */
#include "cli.h"

#include "ballast/dist.h"
#include "ballast/tensor.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void print_usage(const char *usage, const cli_option *options, int n) {
    printf("%s\n\noptions:\n", usage);
    for (int i = 0; i < n; i++) {
        char flag[64];
        snprintf(flag, sizeof flag, "--%s%s%s", options[i].name, options[i].value_hint ? " " : "",
                 options[i].value_hint ? options[i].value_hint : "");
        printf("  %-28s %s\n", flag, options[i].help);
    }
}

int cli_parse(cli_args *a, const char *usage, const cli_option *options, int n_options, int argc, char **argv) {
    memset(a, 0, sizeof *a);
    a->options = options;
    a->n_options = n_options;
    for (int i = 0; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            print_usage(usage, options, n_options);
            return 1;
        }
        if (strncmp(arg, "--", 2) != 0) {
            if (a->n_positional == CLI_MAX_VALUES) {
                fprintf(stderr, "ballast: too many arguments (at most %d)\n", CLI_MAX_VALUES);
                return -1;
            }
            a->positional[a->n_positional++] = arg;
            continue;
        }
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int k = 0;
        while (k < n_options && !(strlen(options[k].name) == len && strncmp(options[k].name, name, len) == 0)) k++;
        if (k == n_options) {
            fprintf(stderr, "ballast: unknown option '%s' (see --help)\n", arg);
            return -1;
        }
        const char *value = "1";
        if (options[k].value_hint) {
            if (eq) {
                value = eq + 1;
            } else if (i + 1 < argc) {
                value = argv[++i];
            } else {
                fprintf(stderr, "ballast: option --%s needs a value (%s)\n", options[k].name, options[k].value_hint);
                return -1;
            }
        }
        a->values[k] = value;
        if (options[k].repeatable && a->n_multi < CLI_MAX_VALUES) a->multi[a->n_multi++] = value;
    }
    return 0;
}

static int find(const cli_args *a, const char *name) {
    for (int k = 0; k < a->n_options; k++)
        if (strcmp(a->options[k].name, name) == 0) return k;
    return -1;
}

const char *cli_get(const cli_args *a, const char *name) {
    int k = find(a, name);
    return k >= 0 ? a->values[k] : NULL;
}

bool cli_has(const cli_args *a, const char *name) { return cli_get(a, name) != NULL; }

int cli_floats(const char *text, float *out, int max) {
    int n = 0;
    const char *p = text;
    while (*p) {
        char *end;
        errno = 0;
        double v = strtod(p, &end);
        if (end == p || errno || n == max) return -1;
        out[n++] = (float)v;
        p = end;
        if (*p == ',') p++;
        else if (*p) return -1;
    }
    return n;
}

bool cli_int(const cli_args *a, const char *name, long def, long *out) {
    const char *v = cli_get(a, name);
    if (!v) {
        *out = def;
        return true;
    }
    char *end;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (*v == '\0' || *end || errno) {
        fprintf(stderr, "ballast: --%s expects an integer, got '%s'\n", name, v);
        return false;
    }
    *out = x;
    return true;
}

/* A multi-process run's message until the processes agree (cli_finish). */
static char deferred[1400];

int cli_fail(const char *context) {
    if (context) {
        char message[1400];
        snprintf(message, sizeof message, "%s: %s", context, bl_last_error());
        bl_clear_error();
        bl_set_error("%s", message);
    }
    /* In a multi-process run the processes first agree on the outcome (cli_finish), so that the
     * message is printed once, not once per process. */
    if (bl_dist_size() > 1 && bl_dist_failed_rank() < 0) {
        snprintf(deferred, sizeof deferred, "%s", bl_last_error());
        return 1;
    }
    const int failed = bl_dist_failed_rank(), rank = bl_dist_rank();
    if (failed < 0 || rank == 0 || rank == failed) fprintf(stderr, "ballast: %s\n", bl_last_error());
    return 1;
}

int cli_finish(int status) {
    if (bl_dist_size() == 1) return status;
    const bool agreed_before = bl_dist_failed_rank() >= 0;
    if (bl_dist_agree(status == 0 ? BL_OK : BL_ERR) == BL_OK || agreed_before) return status;
    /* The first process prints the first failure (unless it was its own and it printed it already,
     * as a usage error); another process that failed otherwise prints its own message. */
    const int failed = bl_dist_failed_rank(), rank = bl_dist_rank();
    if (rank == 0 && (failed != 0 || *deferred)) fprintf(stderr, "ballast: %s\n", bl_last_error());
    const char *first = strstr(bl_last_error(), ": "); /* the first failure's own message, after "rank R" */
    if (rank != 0 && rank != failed && *deferred && !(first && strcmp(first + 2, deferred) == 0))
        fprintf(stderr, "ballast: rank %d: %s\n", rank, deferred);
    return status ? status : 1;
}
