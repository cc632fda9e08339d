/* Shared pieces of the command-line tool: the subcommand signature and a table-driven option parser
 * that rejects unknown flags and prints each subcommand's help from the same table. */
#ifndef BALLAST_CLI_H
#define BALLAST_CLI_H

#include <stdbool.h>

typedef struct {
    const char *name;       /* long flag without dashes, e.g. "model" */
    const char *value_hint; /* NULL for a boolean switch, else e.g. "NAME" */
    const char *help;
    bool repeatable;        /* may appear several times (values collected in order) */
} cli_option;

#define CLI_MAX_VALUES 4096

typedef struct {
    const cli_option *options;
    int n_options;
    const char *values[64];  /* last value of each option (or "1" for a given switch), NULL if absent */
    const char *multi[CLI_MAX_VALUES]; /* all values of the repeatable option, in order */
    int n_multi;
    const char *positional[CLI_MAX_VALUES];
    int n_positional;
} cli_args;

/* Parses argv (after the subcommand) against the table. Returns 0, or prints a clear message naming
 * the offending flag and returns -1. "--help" prints the usage and returns 1. */
int cli_parse(cli_args *a, const char *usage, const cli_option *options, int n_options, int argc, char **argv);
const char *cli_get(const cli_args *a, const char *name);
bool cli_has(const cli_args *a, const char *name);
/* Parses a comma-separated list of floats ("0.49,0.48,0.45"); returns the count or -1. */
int cli_floats(const char *text, float *out, int max);
/* Integer option with a default; returns false (after printing why) when malformed. */
bool cli_int(const cli_args *a, const char *name, long def, long *out);
/* Prints "ballast: <message>" for the library's pending error and returns exit status 1. In a
 * multi-process run (mpirun) the message waits for cli_finish, where the processes agree on the
 * outcome and one of them prints it. */
int cli_fail(const char *context);
/* The exit status of a command in a multi-process run: the processes agree whether every one
 * succeeded (a process that failed on its own stops the others instead of leaving them waiting)
 * and the failure is printed once. Returns `status` as it is in one process. */
int cli_finish(int status);

typedef int (*cli_command_fn)(int argc, char **argv);

int cmd_predict(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_data(int argc, char **argv);
int cmd_train(int argc, char **argv);
int cmd_eval(int argc, char **argv);
int cmd_report(int argc, char **argv);

#endif
