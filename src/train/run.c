/* Run directories: creating a run (or continuing one with resume), the JSON-lines log,
 * checkpoints written so that a crash never leaves a half one behind, reading them back for
 * resume and for evaluation, and freeing a run. The layout is described in ballast/train.h. */
#include "train_internal.h"

#include "core/internal.h"
#include "io/json.h"

#include "ballast/io.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- files -------------------------------------------------------------------------------------- */

bool bl__is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool bl__is_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int bl__mkdirs(const char *path) {
    char buf[1024];
    BL_CHECK_RC(strlen(path) < sizeof buf && *path, "directory name '%s' is empty or too long", path);
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char keep = *p;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            BL_CHECK_RC(false, "cannot create directory %s: %s", buf, strerror(errno));
        BL_CHECK_RC(bl__is_dir(buf), "cannot create directory %s: a file is in the way", buf);
        *p = keep;
        if (keep == '\0') return BL_OK;
    }
}

int bl__write_file_atomic(const char *path, const char *text) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "w");
    BL_CHECK_RC(f, "cannot write %s: %s", tmp, strerror(errno));
    size_t len = strlen(text);
    bool ok = fwrite(text, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    ok = fclose(f) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        int err = errno;
        unlink(tmp);
        BL_CHECK_RC(false, "cannot write %s: %s", path, strerror(err));
    }
    return BL_OK;
}

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

static char *read_text_file(const char *path) {
    FILE *f = fopen(path, "rb");
    BL_CHECK(f, "cannot open %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            char *t = realloc(text, cap);
            if (!t) break;
            text = t;
        }
        size_t got = fread(text + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    bool ok = text && !ferror(f);
    fclose(f);
    if (!ok) {
        free(text);
        BL_CHECK(false, "cannot read %s", path);
    }
    text[len] = '\0';
    return text;
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

static int write_state(const bl_run *run, const char *path, bool final) {
    char text[1024];
    snprintf(text, sizeof text,
             "{\"epoch\":%d,\"step\":%lld,\"stage\":%d,\"final\":%s,\"sampler\":\"%s\",\"backbone_frozen\":%s,"
             "\"schedule_origin\":%d,\"rng_key\":\"%016" PRIx64 "\",\"rng_counter\":\"%016" PRIx64 "\","
             "\"dropout_key\":\"%016" PRIx64 "\",\"dropout_counter\":\"%016" PRIx64 "\"}\n",
             run->epoch, (long long)run->step, run->stage, final ? "true" : "false",
             run->sampler ? bl_sampler_kind(run->sampler) : "", run->backbone_frozen ? "true" : "false",
             run->schedule_origin, run->rng.key, run->rng.counter, run->model->head_drop.rng.key,
             run->model->head_drop.rng.counter);
    return bl__write_file_atomic(path, text);
}

int bl_run_checkpoint(bl_run *run, bool final) {
    BL_CHECK_RC(run && run->log, "bl_run_checkpoint: the run was opened for evaluation only");
    char name[32], root[600], tmp[700], target[700], path[800];
    if (final) snprintf(name, sizeof name, "final");
    else snprintf(name, sizeof name, "epoch_%04d", run->epoch);
    snprintf(root, sizeof root, "%s/checkpoints", run->dir);
    snprintf(tmp, sizeof tmp, "%s/.tmp-%s-%d", root, name, (int)getpid());
    snprintf(target, sizeof target, "%s/%s", root, name);
    BL_TRY(bl__mkdirs(root));
    BL_TRY(remove_flat_dir(tmp));
    BL_TRY(bl__mkdirs(tmp));

    char epoch_text[32];
    snprintf(epoch_text, sizeof epoch_text, "%d", run->epoch);
    const char *meta[] = {"method", run->method->name, "model", run->model->name, "epoch", epoch_text, NULL};
    snprintf(path, sizeof path, "%s/model.safetensors", tmp);
    int rc = bl_params_save(&run->model->params, path, meta);
    if (rc == BL_OK && run->extra_params.finalized) {
        snprintf(path, sizeof path, "%s/extra.safetensors", tmp);
        rc = bl_params_save(&run->extra_params, path, meta);
    }
    if (rc == BL_OK) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", tmp);
        rc = bl_optimizer_save(&run->opt, path);
    }
    if (rc == BL_OK && run->has_extra_opt) {
        snprintf(path, sizeof path, "%s/extra_optimizer.safetensors", tmp);
        rc = bl_optimizer_save(&run->extra_opt, path);
    }
    if (rc == BL_OK) {
        snprintf(path, sizeof path, "%s/state.json", tmp);
        rc = write_state(run, path, final);
    }
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
    return bl__write_file_atomic(path, pointer);
}

/* The latest checkpoint directory of a run into buf; BL_ERR (error naming the file) when none. */
static int latest_checkpoint(const char *run_dir, char *buf, size_t len) {
    char path[600];
    snprintf(path, sizeof path, "%s/checkpoint.json", run_dir);
    char *text = read_text_file(path);
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

static bool json_u64(const bl__json *obj, const char *key, uint64_t *out) {
    const bl__json *v = bl__json_get(obj, key);
    if (!v || v->type != BL_JSON_STRING) return false;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(v->string, &end, 16);
    if (*v->string == '\0' || *end || errno) return false;
    *out = x;
    return true;
}

static bool json_int(const bl__json *obj, const char *key, int64_t *out) {
    const bl__json *v = bl__json_get(obj, key);
    if (!v || v->type != BL_JSON_NUMBER || !v->is_integer) return false;
    *out = v->integer;
    return true;
}

static bool json_bool(const bl__json *obj, const char *key, bool *out) {
    const bl__json *v = bl__json_get(obj, key);
    if (!v || v->type != BL_JSON_BOOL) return false;
    *out = v->boolean;
    return true;
}

/* Restores the trainer's counters and random streams, and (for training) its sampler. */
static int load_state(bl_run *run, const char *path, bool for_training) {
    char *text = read_text_file(path);
    if (!text) return BL_ERR;
    bl__json_pool pool = {0};
    char err[128];
    const bl__json *root = bl__json_parse(text, strlen(text), &pool, err, sizeof err);
    int64_t epoch = 0, step = 0, stage = 0, origin = 0;
    bool final = false, frozen = false;
    uint64_t key = 0, counter = 0, dkey = 0, dcounter = 0;
    const bl__json *sampler = root ? bl__json_get(root, "sampler") : NULL;
    bool ok = root && json_int(root, "epoch", &epoch) && json_int(root, "step", &step) &&
              json_int(root, "stage", &stage) && json_int(root, "schedule_origin", &origin) &&
              json_bool(root, "final", &final) && json_bool(root, "backbone_frozen", &frozen) &&
              json_u64(root, "rng_key", &key) && json_u64(root, "rng_counter", &counter) &&
              json_u64(root, "dropout_key", &dkey) && json_u64(root, "dropout_counter", &dcounter) && sampler &&
              sampler->type == BL_JSON_STRING && epoch >= 0 && step >= 0;
    char sampler_kind[64] = "";
    if (ok) snprintf(sampler_kind, sizeof sampler_kind, "%s", sampler->string);
    bl__json_pool_free(&pool);
    free(text);
    BL_CHECK_RC(ok, "%s: malformed trainer state%s%s", path, root ? "" : ": ", root ? "" : err);
    run->epoch = (int)epoch;
    run->step = step;
    run->stage = (int)stage;
    run->schedule_origin = (int)origin;
    run->finished = final;
    run->rng.key = key;
    run->rng.counter = counter;
    run->model->head_drop.rng.key = dkey;
    run->model->head_drop.rng.counter = dcounter;
    BL_TRY(bl_run_freeze_backbone(run, frozen));
    if (for_training && *sampler_kind && strcmp(sampler_kind, bl_sampler_kind(run->sampler)) != 0)
        BL_TRY(bl_run_set_sampler(run, sampler_kind));
    return BL_OK;
}

static int load_checkpoint(bl_run *run, const char *dir, bool for_training) {
    char path[800];
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    BL_TRY(bl_params_load(&run->model->params, path, true));
    if (run->extra_params.finalized) {
        snprintf(path, sizeof path, "%s/extra.safetensors", dir);
        BL_TRY(bl_params_load(&run->extra_params, path, true));
    }
    if (for_training) {
        snprintf(path, sizeof path, "%s/optimizer.safetensors", dir);
        BL_TRY(bl_optimizer_load(&run->opt, path));
        if (run->has_extra_opt) {
            snprintf(path, sizeof path, "%s/extra_optimizer.safetensors", dir);
            BL_TRY(bl_optimizer_load(&run->extra_opt, path));
        }
    }
    snprintf(path, sizeof path, "%s/state.json", dir);
    return load_state(run, path, for_training);
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

bl_run *bl_run_create(bl_config *config, const bl_run_opts *opts) {
    BL_CHECK(config, "bl_run_create: NULL config");
    bool resume = opts && opts->resume, quiet = opts && opts->quiet;
    bl_run *run = bl__run_new(config, quiet);
    if (!run) return NULL;
    if (bl_config_has(run->config, "output.dir"))
        snprintf(run->dir, sizeof run->dir, "%s", bl_config_string(run->config, "output.dir"));
    else default_run_dir(run->config, run->dir, sizeof run->dir);
    /* The resolved config records where the run lives, so `ballast train RUN_DIR/config.yaml
     * --resume` finds it again. */
    char path[700], checkpoint[700];
    snprintf(path, sizeof path, "output.dir=\"%s\"", run->dir);
    if (bl_config_set(run->config, path) != BL_OK) {
        bl_run_free(run);
        return NULL;
    }
    snprintf(path, sizeof path, "%s/config.yaml", run->dir);
    bool exists = bl__is_file(path);
    int rc = BL_OK;
    if (exists && !resume) {
        bl_set_error("run directory %s already holds a run (config.yaml): continue it with --resume, or set "
                     "output.dir to another directory",
                     run->dir);
        rc = BL_ERR;
    }
    if (rc == BL_OK && exists) rc = check_same_config(run, path);
    if (rc == BL_OK) rc = bl__mkdirs(run->dir);
    if (rc == BL_OK) rc = bl__run_build(run, true);
    if (rc == BL_OK && !exists) rc = bl_config_write(run->config, path);
    if (rc == BL_OK) {
        snprintf(path, sizeof path, "%s/log.jsonl", run->dir);
        run->log = fopen(path, "a");
        if (!run->log) {
            bl_set_error("cannot open %s: %s", path, strerror(errno));
            rc = BL_ERR;
        } else {
            setvbuf(run->log, NULL, _IOLBF, 0);
        }
    }
    snprintf(path, sizeof path, "%s/checkpoint.json", run->dir);
    if (rc == BL_OK && resume && bl__is_file(path)) {
        rc = latest_checkpoint(run->dir, checkpoint, sizeof checkpoint);
        if (rc == BL_OK) rc = load_checkpoint(run, checkpoint, true);
        if (rc == BL_OK) fprintf(run->log, "{\"resume\":%d,\"step\":%lld}\n", run->epoch, (long long)run->step);
    }
    if (rc == BL_OK && !quiet) run->progress = bl__progress_create(stderr);
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
    if (bl__is_dir(path) && bl__is_file(probe)) {
        snprintf(run_dir, sizeof run_dir, "%s", path);
        if (latest_checkpoint(run_dir, checkpoint, sizeof checkpoint) != BL_OK) {
            bl_clear_error();
            BL_CHECK(false, "run %s has no checkpoint yet (%s/checkpoint.json is missing or malformed)", path, path);
        }
    } else {
        /* a checkpoint directory, or a file inside one: the run is two levels up */
        snprintf(checkpoint, sizeof checkpoint, "%s", path);
        if (!bl__is_dir(path)) {
            char *slash = strrchr(checkpoint, '/');
            BL_CHECK(bl__is_file(path) && n > 12 && strcmp(path + n - 12, ".safetensors") == 0,
                     "%s is neither a run directory (with config.yaml) nor a checkpoint", path);
            if (slash) *slash = '\0';
            else snprintf(checkpoint, sizeof checkpoint, ".");
        }
        snprintf(run_dir, sizeof run_dir, "%.*s/../..", (int)sizeof checkpoint, checkpoint);
        snprintf(probe, sizeof probe, "%s/model.safetensors", checkpoint);
        BL_CHECK(bl__is_file(probe), "%s is not a checkpoint: %s is missing", path, probe);
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
    if (bl__run_build(run, false) != BL_OK || load_checkpoint(run, checkpoint, false) != BL_OK) {
        bl_run_free(run);
        return NULL;
    }
    return run;
}

void bl_run_free(bl_run *run) {
    if (!run) return;
    if (run->method && run->method->release && run->method_state) run->method->release(run->method_state);
    free(run->method_state);
    bl__progress_free(run->progress);
    bl_loader_free(run->train_loader);
    bl_sampler_free(run->sampler);
    if (run->opt.params) bl_optimizer_free(&run->opt);
    if (run->has_extra_opt) bl_optimizer_free(&run->extra_opt);
    bl_params_free(&run->extra_params);
    bl_model_free(run->model);
    bl_dataset_free(&run->train);
    bl_dataset_free(&run->val);
    bl_dataset_free(&run->test);
    free(run->class_counts);
    if (run->log) fclose(run->log);
    bl_config_free(run->config);
    free(run);
}
