/* Run directories: creating a run (or continuing one with resume), the JSON-lines log,
 * checkpoints written so that a crash never leaves a half one behind, reading them back for
 * resume and for evaluation, and freeing a run. The layout is described in ballast/train.h. */
#include "train_internal.h"

#include "core/internal.h"
#include "io/json.h"

#include "ballast/dist.h"
#include "ballast/io.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- files -------------------------------------------------------------------------------------- */

/* Removes a directory of plain files (a checkpoint); nothing deeper is expected there. */
static int remove_flat_dir(const char *path) {
    DIR *d = opendir(path);
    if (!d) return errno == ENOENT ? BL_OK : BL_ERR;
    struct dirent *e;
    char file[1400];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        snprintf(file, sizeof file, "%s/%s", path, e->d_name);
        unlink(file);
    }
    closedir(d);
    BL_CHECK_RC(rmdir(path) == 0, "cannot remove %s: %s", path, strerror(errno));
    return BL_OK;
}

/* ---- the log ----------------------------------------------------------------------------------- */

int bl_run_log(bl_run *run, const char *json_object_body) {
    BL_CHECK_RC(run && json_object_body, "bl_run_log: NULL argument");
    if (!run->log) return BL_OK; /* opened for evaluation: nothing is recorded */
    fprintf(run->log, "{\"method_epoch\":%d,\"step\":%lld%s%s}\n", run->epoch, (long long)run->step,
            *json_object_body ? "," : "", json_object_body);
    BL_CHECK_RC(fflush(run->log) == 0 && !ferror(run->log), "cannot write %s/log.jsonl", run->dir);
    return BL_OK;
}

/* ---- checkpoints -------------------------------------------------------------------------------- */

/* Writes the checkpoint directory and points checkpoint.json at it (the first process's job). */
static int write_checkpoint(bl_run *run, bool final) {
    char name[32], root[600], tmp[700], target[700], path[800];
    if (final) snprintf(name, sizeof name, "final");
    else snprintf(name, sizeof name, "epoch_%04d", run->epoch);
    snprintf(root, sizeof root, "%s/checkpoints", run->dir);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s-%d", root, name, (int)getpid());
    snprintf(target, sizeof target, "%s/%s", root, name);
    BL_TRY(bl_mkdirs(root));
    BL_TRY(remove_flat_dir(tmp));
    BL_TRY(bl_mkdirs(tmp));

    int rc = bl__registry_save(run, tmp, final);
    /* A directory of the same name can only be a leftover of a run that crashed after writing it
     * but before pointing checkpoint.json at it. */
    if (rc == BL_OK) rc = remove_flat_dir(target);
    if (rc == BL_OK && rename(tmp, target) != 0) {
        bl_set_error("cannot rename %s to %s: %s", tmp, target, strerror(errno));
        rc = BL_ERR;
    }
    if (rc != BL_OK) {
        remove_flat_dir(tmp);
        return BL_ERR;
    }
    char pointer[256];
    snprintf(pointer, sizeof pointer, "{\"latest\":\"checkpoints/%s\",\"epoch\":%d,\"step\":%lld,\"final\":%s}\n", name,
             run->epoch, (long long)run->step, final ? "true" : "false");
    snprintf(path, sizeof path, "%s/checkpoint.json", run->dir);
    return bl_file_write_text(path, pointer);
}

int bl_run_checkpoint(bl_run *run, bool final) {
    BL_CHECK_RC(run && run->registry && run->registry->for_training,
                "bl_run_checkpoint: the run was opened for evaluation only");
    if (bl_dist_size() > 1) {
        /* Every process holds the same state, checked here, and the first one writes it. */
        BL_TRY(bl_dist_agree(BL_OK));
        BL_TRY(bl_dist_agree(bl__check_replicas(run)));
    }
    return bl_dist_rank() == 0 ? write_checkpoint(run, final) : BL_OK;
}

/* The latest checkpoint directory of a run into buf; BL_ERR (error naming the file) when none. */
static int latest_checkpoint(const char *run_dir, char *buf, size_t len) {
    char path[600];
    snprintf(path, sizeof path, "%s/checkpoint.json", run_dir);
    char *text = bl_file_read(path, NULL);
    if (!text) return BL_ERR;
    bl__json_pool pool = {0};
    char err[128];
    const bl__json *root = bl__json_parse(text, strlen(text), &pool, err, sizeof err);
    const bl__json *latest = root ? bl__json_get(root, "latest") : NULL;
    int rc = BL_OK;
    if (!latest || latest->type != BL_JSON_STRING || strstr(latest->string, "..") || latest->string[0] == '/') {
        bl_set_error("%s: malformed (%s)", path, root ? "no valid \"latest\"" : err);
        rc = BL_ERR;
    } else {
        snprintf(buf, len, "%s/%s", run_dir, latest->string);
    }
    bl__json_pool_free(&pool);
    free(text);
    return rc;
}

/* ---- creating, opening, freeing ----------------------------------------------------------------- */

/* runs/<config file name without its extension> */
static void default_run_dir(const bl_config *c, char *buf, size_t len) {
    const char *src = bl_config_source(c), *base = strrchr(src, '/');
    base = base ? base + 1 : src;
    size_t n = strlen(base);
    if (n > 5 && strcmp(base + n - 5, ".yaml") == 0) n -= 5;
    else if (n > 4 && strcmp(base + n - 4, ".yml") == 0) n -= 4;
    snprintf(buf, len, "runs/%.*s", (int)n, base);
}

/* On resume the given config must be the run's: a changed setting would silently make the
 * continued run a different experiment. */
static int check_same_config(const bl_run *run, const char *saved_path) {
    bl_config *saved = bl_config_load(saved_path);
    if (!saved) return BL_ERR;
    int rc = bl__config_validate(saved);
    const char *diff = rc == BL_OK ? bl_config_first_difference(run->config, saved) : NULL;
    if (rc == BL_OK && diff) {
        const char *now = bl_config_text(run->config, diff), *then = bl_config_text(saved, diff);
        bl_set_error("--resume: %s is %s now but %s in %s; a continued run keeps the settings it started with",
                     diff, now ? now : "unset", then ? then : "unset", saved_path);
        rc = BL_ERR;
    }
    bl_config_free(saved);
    return rc;
}

/* The part of bl_run_create that writes: the run directory, its split files (while building the
 * data) and config.yaml, then the log. */
static int create_directory(bl_run *run, bool exists) {
    char path[700];
    BL_TRY(bl_mkdirs(run->dir));
    BL_TRY(bl__run_build(run, true));
    snprintf(path, sizeof path, "%s/config.yaml", run->dir);
    if (!exists) BL_TRY(bl_config_write(run->config, path));
    snprintf(path, sizeof path, "%s/log.jsonl", run->dir);
    run->log = fopen(path, "a");
    BL_CHECK_RC(run->log, "cannot open %s: %s", path, strerror(errno));
    setvbuf(run->log, NULL, _IOLBF, 0);
    return BL_OK;
}

/* Processes on several machines must share the run directory: the first one writes it, and every
 * one reads the split and the checkpoint from it. */
static int same_directory_everywhere(const bl_run *run, bool config_there, bool checkpoint_there) {
    int64_t low[2] = {config_there, checkpoint_there}, high[2] = {config_there, checkpoint_there};
    BL_TRY(bl_dist_allreduce_i64(low, 2, BL_DIST_MIN));
    BL_TRY(bl_dist_allreduce_i64(high, 2, BL_DIST_MAX));
    BL_CHECK_RC(low[0] == high[0] && low[1] == high[1],
                "run directory %s: the processes do not see the same config.yaml and checkpoint.json there; "
                "processes on several machines need the run directory on a shared file system",
                run->dir);
    return BL_OK;
}

bl_run *bl_run_create(bl_config *config, const bl_run_opts *opts) {
    BL_CHECK(config, "bl_run_create: NULL config");
    bool resume = opts && opts->resume, quiet = opts && opts->quiet;
    const int rank = bl_dist_rank();
    const bool parallel = bl_dist_size() > 1;
    bl_run *run = bl__run_new(config, quiet);
    /* In a multi-process run every step below ends with the processes' agreement, so that a
     * failure on one of them (a bad file, a config its machine cannot use) stops all of them. */
    if (!run) {
        if (parallel) bl_dist_agree(BL_ERR);
        return NULL;
    }
    run->registry->for_training = true;
    if (bl_config_has(run->config, "output.dir"))
        snprintf(run->dir, sizeof run->dir, "%s", bl_config_string(run->config, "output.dir"));
    else default_run_dir(run->config, run->dir, sizeof run->dir);
    /* The resolved config records where the run lives, so `ballast train RUN_DIR/config.yaml
     * --resume` finds it again. */
    char path[700], checkpoint[700];
    snprintf(path, sizeof path, "output.dir=\"%s\"", run->dir);
    int rc = bl_config_set(run->config, path);
    snprintf(path, sizeof path, "%s/config.yaml", run->dir);
    bool exists = bl_is_file(path);
    if (rc == BL_OK && exists && !resume) {
        bl_set_error("run directory %s already holds a run (config.yaml): continue it with --resume, or set "
                     "output.dir to another directory",
                     run->dir);
        rc = BL_ERR;
    }
    if (rc == BL_OK && exists) rc = check_same_config(run, path);
    /* Every process has looked at the directory, and seen the same, before the first one writes. */
    if (parallel) rc = bl_dist_agree(rc);
    snprintf(path, sizeof path, "%s/checkpoint.json", run->dir);
    if (parallel && rc == BL_OK) rc = same_directory_everywhere(run, exists, resume && bl_is_file(path));
    /* The first process makes the directory, draws and saves the split and writes the config; the
     * others then build from what it saved, and never write into the run directory. */
    if (rc == BL_OK && rank == 0) rc = create_directory(run, exists);
    if (parallel) rc = bl_dist_agree(rc);
    if (rc == BL_OK && rank != 0) rc = bl__run_build(run, true);
    if (parallel) rc = bl_dist_agree(rc);
    snprintf(path, sizeof path, "%s/checkpoint.json", run->dir);
    if (rc == BL_OK && resume && bl_is_file(path)) {
        rc = latest_checkpoint(run->dir, checkpoint, sizeof checkpoint);
        if (rc == BL_OK) rc = bl__registry_load(run, checkpoint, true);
        if (rc == BL_OK && run->log) fprintf(run->log, "{\"resume\":%d,\"step\":%lld}\n", run->epoch, (long long)run->step);
    }
    if (parallel) rc = bl_dist_agree(rc);
    if (rc == BL_OK && !quiet && rank == 0) run->progress = bl__progress_create(stderr);
    if (rc != BL_OK) {
        bl_run_free(run);
        return NULL;
    }
    return run;
}

/* True for a key evaluation may change: test-time method settings and the threads or batch of
 * evaluation, nothing the weights depend on. */
static bool is_eval_setting(const char *assignment) {
    size_t key_length = strcspn(assignment, "=");
    if (key_length > 7 && strncmp(assignment, "method.", 7) == 0)
        return !(key_length == 11 && strncmp(assignment, "method.name", 11) == 0);
    const char *allowed[] = {"train.threads", "train.eval_batch_size"};
    for (size_t i = 0; i < sizeof allowed / sizeof allowed[0]; i++)
        if (key_length == strlen(allowed[i]) && strncmp(assignment, allowed[i], key_length) == 0) return true;
    return false;
}

static int apply_eval_overrides(bl_config *config, const char *const *overrides, int n) {
    for (int i = 0; i < n; i++) {
        BL_CHECK_RC(strchr(overrides[i], '='), "'%s' is not an override (section.key=value)", overrides[i]);
        BL_CHECK_RC(is_eval_setting(overrides[i]),
                    "'%s': evaluation can change method.* settings (not method.name), train.threads and "
                    "train.eval_batch_size; the weights were trained with everything else",
                    overrides[i]);
        BL_TRY(bl_config_set(config, overrides[i]));
    }
    return BL_OK;
}

bl_run *bl_run_open(const char *path, const char *const *overrides, int n_overrides) {
    BL_CHECK(path, "bl_run_open: NULL path");
    char run_dir[500], checkpoint[480], probe[520];
    size_t n = strlen(path);
    BL_CHECK(n > 0 && n < 500, "bl_run_open: path '%s' is empty or too long", path);
    snprintf(probe, sizeof probe, "%s/config.yaml", path);
    if (bl_is_dir(path) && bl_is_file(probe)) {
        snprintf(run_dir, sizeof run_dir, "%s", path);
        if (latest_checkpoint(run_dir, checkpoint, sizeof checkpoint) != BL_OK) {
            bl_clear_error();
            BL_CHECK(false, "run %s has no checkpoint yet (%s/checkpoint.json is missing or malformed)", path, path);
        }
    } else {
        /* a checkpoint directory, or a file inside one: the run is two levels up */
        snprintf(checkpoint, sizeof checkpoint, "%s", path);
        if (!bl_is_dir(path)) {
            char *slash = strrchr(checkpoint, '/');
            BL_CHECK(bl_is_file(path) && n > 12 && strcmp(path + n - 12, ".safetensors") == 0,
                     "%s is neither a run directory (with config.yaml) nor a checkpoint", path);
            if (slash) *slash = '\0';
            else snprintf(checkpoint, sizeof checkpoint, ".");
        }
        snprintf(run_dir, sizeof run_dir, "%.*s/../..", (int)sizeof checkpoint, checkpoint);
        snprintf(probe, sizeof probe, "%s/state.json", checkpoint);
        BL_CHECK(bl_is_file(probe), "%s is not a checkpoint: %s is missing", path, probe);
    }
    snprintf(probe, sizeof probe, "%s/config.yaml", run_dir);
    bl_config *config = bl_config_load(probe);
    if (!config || apply_eval_overrides(config, overrides, n_overrides) != BL_OK) {
        bl_config_free(config);
        return NULL;
    }
    bl_run *run = bl__run_new(config, true);
    if (!run) return NULL;
    snprintf(run->dir, sizeof run->dir, "%s", run_dir);
    if (bl__run_build(run, false) != BL_OK || bl__registry_load(run, checkpoint, false) != BL_OK) {
        bl_run_free(run);
        return NULL;
    }
    return run;
}

void bl_run_free(bl_run *run) {
    if (!run) return;
    if (run->recipe && run->recipe->release && run->recipe_state) run->recipe->release(run->recipe_state);
    free(run->recipe_state);
    bl__progress_free(run->progress);
    bl__registry_free(run);
    bl_dataset_free(&run->train);
    bl_dataset_free(&run->val);
    bl_dataset_free(&run->test);
    free(run->class_counts);
    if (run->log) fclose(run->log);
    bl_config_free(run->config);
    free(run);
}
