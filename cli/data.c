/* `ballast data`: where the known datasets are found, importing local copies (folders or the
 * official archives) into the data root, downloading them when online, writing long-tailed
 * splits as index files, and measuring the input pipeline's throughput. */
#include "cli.h"

#include "ballast/ballast.h"

#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

static const cli_option options[] = {
    {"root", "DIR", "data root (default: $BALLAST_DATA, else ~/.local/share/ballast)", false},
    {"link", NULL, "import: symlink the files instead of copying them", false},
    {"imbalance", "R", "longtail: imbalance factor n_max / n_min (default 100)", false},
    {"profile", "exp|step", "longtail: profile (default exp)", false},
    {"seed", "N", "longtail: seed of the per-class draws (default 0)", false},
    {"out", "FILE", "longtail: index file to write", false},
    {"batch", "N", "bench: batch size (default 128)", false},
};

static const char usage[] =
    "usage: ballast data list [--root DIR]\n"
    "       ballast data import NAME PATH [--root DIR] [--link]   PATH: a folder or an official archive\n"
    "       ballast data download NAME [--root DIR]\n"
    "       ballast data longtail NAME [--imbalance R] [--profile exp|step] [--seed S] [--out FILE]\n"
    "       ballast data bench [NAME] [--root DIR] [--batch N]";

/* A dataset file under `dir`, plain or gzip'ed. */
static bool file_present(const char *dir, const char *name) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (bl_is_file(path)) return true;
    snprintf(path, sizeof path, "%s/%s.gz", dir, name);
    return bl_is_file(path);
}

/* Runs a program (no shell) and returns its exit status, or -1 when it could not be started. */
static int run_program(char *const argv[]) {
    pid_t pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        execvp(argv[0], argv);
        _exit(127);
    }
    int status;
    if (waitpid(pid, &status, 0) < 0) return -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void remove_tree(const char *path) {
    char *argv[] = {"rm", "-rf", (char *)path, NULL};
    if (run_program(argv) != 0) fprintf(stderr, "ballast data: could not remove %s\n", path);
}

static const char *data_root(const cli_args *a, char *buf, size_t len) {
    if (cli_has(a, "root")) return cli_get(a, "root");
    return bl_data_default_root(buf, len) == BL_OK ? buf : NULL;
}

static const bl_dataset_info *dataset_info(const char *name) {
    const bl_dataset_info *info = bl_dataset_find_info(name);
    if (!info) {
        fprintf(stderr, "ballast data: unknown dataset '%s' (see `ballast data list`)\n", name);
    }
    return info;
}

/* ---- list --------------------------------------------------------------------------------------- */

static int data_list(const cli_args *a) {
    const bl_dataset_info *infos;
    int n = bl_dataset_known(&infos);
    char roots[8][512], import_root[512];
    int n_roots = bl_data_search_roots(roots, 8);
    printf("search order (first match wins):%s", cli_has(a, "root") ? " --root only\n" : "\n");
    if (!cli_has(a, "root"))
        for (int i = 0; i < n_roots; i++) printf("  %s%s\n", roots[i], bl_is_dir(roots[i]) ? "" : "  (absent)");
    const char *root = data_root(a, import_root, sizeof import_root);
    printf("import/download root: %s\n\n", root ? root : "(none: set BALLAST_DATA)");
    bl_clear_error();
    for (int i = 0; i < n; i++) {
        char where[1024];
        printf("%-16s %s (%lld classes, %lld train / %lld test)\n", infos[i].name, infos[i].description,
               (long long)infos[i].num_classes, (long long)infos[i].train_size, (long long)infos[i].test_size);
        if (bl_dataset_locate(infos[i].name, cli_get(a, "root"), where, sizeof where) != BL_OK) {
            bl_clear_error();
            printf("  not found (expected a %s/ folder in a data root; `ballast data import|download %s`)\n",
                   infos[i].subdir, infos[i].name);
            continue;
        }
        int total = 0, present = 0;
        const char *missing = NULL;
        const char *const *lists[2] = {infos[i].train_files, infos[i].test_files};
        for (int l = 0; l < 2; l++)
            for (const char *const *f = lists[l]; *f; f++, total++) {
                if (file_present(where, *f)) present++;
                else if (!missing) missing = *f;
            }
        printf("  found in %s (%d of %d files%s%s)\n", where, present, total, missing ? "; missing " : "",
               missing ? missing : "");
    }
    printf("\nfolder:<path>    images in <path>/<class>/<file>.png|jpg (optionally <path>/train and <path>/test)\n");
    return 0;
}

/* ---- import ------------------------------------------------------------------------------------- */

/* Finds `name` (or `name`.gz) in `dir` or a folder below it, at most `depth` levels down. */
static bool find_below(const char *dir, const char *name, int depth, char *found, size_t len) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (!bl_is_file(path)) snprintf(path, sizeof path, "%s/%s.gz", dir, name);
    if (bl_is_file(path)) {
        snprintf(found, len, "%s", path);
        return true;
    }
    DIR *d = depth > 0 ? opendir(dir) : NULL;
    if (!d) return false;
    struct dirent *ent;
    bool hit = false;
    while (!hit && (ent = readdir(d))) {
        if (ent->d_name[0] == '.') continue;
        snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
        if (bl_is_dir(path)) hit = find_below(path, name, depth - 1, found, len);
    }
    closedir(d);
    return hit;
}

/* Copies src to dst through a temporary name, so an interrupted copy never looks complete. */
static int copy_file(const char *src, const char *dst) {
    char tmp[1100];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", dst, (long)getpid());
    FILE *in = fopen(src, "rb");
    if (!in) {
        bl_set_error("%s: cannot open (%s)", src, strerror(errno));
        return BL_ERR;
    }
    FILE *out = fopen(tmp, "wb");
    if (!out) {
        fclose(in);
        bl_set_error("%s: cannot write (%s)", tmp, strerror(errno));
        return BL_ERR;
    }
    char buf[1 << 16];
    size_t got;
    bool ok = true;
    while (ok && (got = fread(buf, 1, sizeof buf, in)) > 0) ok = fwrite(buf, 1, got, out) == got;
    ok = ok && !ferror(in);
    fclose(in);
    ok = fclose(out) == 0 && ok;
    if (ok && rename(tmp, dst) == 0) return BL_OK;
    bl_set_error("%s: copying from %s failed (%s)", dst, src, strerror(errno));
    remove(tmp);
    return BL_ERR;
}

static bool is_archive(const char *path) {
    size_t n = strlen(path);
    return (n > 7 && strcmp(path + n - 7, ".tar.gz") == 0) || (n > 4 && strcmp(path + n - 4, ".tgz") == 0) ||
           (n > 4 && strcmp(path + n - 4, ".tar") == 0);
}

/* Class-name files shipped next to the data (CIFAR's); copied along when present. */
static const char *const names_files[] = {"batches.meta.txt", "fine_label_names.txt", "coarse_label_names.txt", NULL};

/* Places every file of the dataset found below `src_dir` into <root>/<subdir>: moved when
 * `move` (a staging folder of ours), else linked or copied. Then loads both splits to check. */
static int place_files(const bl_dataset_info *info, const char *src_dir, const char *root, bool move, bool link) {
    const char *const *lists[3] = {info->train_files, info->test_files, names_files};
    char found[16][1200], missing[1024] = "";
    const char *wanted[16];
    int n = 0;
    for (int l = 0; l < 3; l++)
        for (const char *const *f = lists[l]; *f && n < 16; f++) {
            if (find_below(src_dir, *f, 3, found[n], sizeof found[n])) {
                wanted[n++] = *f;
            } else if (l < 2) {
                size_t used = strlen(missing);
                snprintf(missing + used, sizeof missing - used, "%s%s", used ? ", " : "", *f);
            }
        }
    if (*missing) {
        bl_set_error("%s: not found below %s: %s", info->name, src_dir, missing);
        return BL_ERR;
    }
    char dest_dir[1024];
    snprintf(dest_dir, sizeof dest_dir, "%s/%s", root, info->subdir);
    if (bl_mkdirs(dest_dir) != BL_OK) return BL_ERR;
    for (int i = 0; i < n; i++) {
        const char *base = strrchr(found[i], '/') + 1;
        char dest[1300], twin[1310];
        snprintf(dest, sizeof dest, "%s/%s", dest_dir, base);
        /* a plain and a gzip'ed copy side by side would be ambiguous: the new one replaces both */
        snprintf(twin, sizeof twin, "%s/%s%s", dest_dir, wanted[i], strcmp(base, wanted[i]) == 0 ? ".gz" : "");
        remove(twin);
        remove(dest);
        int rc;
        if (move) {
            rc = rename(found[i], dest) == 0 ? BL_OK : copy_file(found[i], dest);
        } else if (link) {
            char absolute[PATH_MAX];
            rc = realpath(found[i], absolute) && symlink(absolute, dest) == 0 ? BL_OK : BL_ERR;
            if (rc != BL_OK) bl_set_error("%s: cannot link to %s (%s)", dest, found[i], strerror(errno));
        } else {
            rc = copy_file(found[i], dest);
        }
        if (rc != BL_OK) return BL_ERR;
        printf("  %s -> %s\n", found[i], dest);
    }
    for (int split = 0; split < 2; split++) {
        bl_dataset ds;
        if (bl_dataset_load(info->name, root, split == 0, &ds) != BL_OK) return BL_ERR;
        printf("  %s %s: %lld images checked\n", info->name, split == 0 ? "train" : "test",
               (long long)ds.images->shape[0]);
        bl_dataset_free(&ds);
    }
    return BL_OK;
}

/* A staging folder inside the data root (same file system, so files can be moved out of it). */
static int make_staging(const char *root, char *staging, size_t len) {
    if (bl_mkdirs(root) != BL_OK) return BL_ERR;
    snprintf(staging, len, "%s/.staging-XXXXXX", root);
    if (!mkdtemp(staging)) {
        bl_set_error("%s: cannot create a staging folder (%s)", root, strerror(errno));
        return BL_ERR;
    }
    return BL_OK;
}

static int extract_archive(const char *archive, const char *into) {
    char *argv[] = {"tar", "-xf", (char *)archive, "-C", (char *)into, NULL};
    int status = run_program(argv);
    if (status == 0) return BL_OK;
    bl_set_error("%s: extracting with tar failed (exit status %d): not a complete archive?", archive, status);
    return BL_ERR;
}

static int import_from(const bl_dataset_info *info, const char *path, const char *root, bool link) {
    if (bl_is_dir(path)) return place_files(info, path, root, false, link);
    if (!bl_is_file(path)) {
        bl_set_error("%s: no such file or folder", path);
        return BL_ERR;
    }
    if (!is_archive(path)) {
        bl_set_error("%s: expected a folder holding the %s files or an archive (.tar.gz, .tgz, .tar)", path,
                     info->name);
        return BL_ERR;
    }
    char staging[1100];
    if (make_staging(root, staging, sizeof staging) != BL_OK) return BL_ERR;
    int rc = extract_archive(path, staging);
    if (rc == BL_OK) rc = place_files(info, staging, root, true, false);
    remove_tree(staging);
    return rc;
}

static int data_import(const cli_args *a) {
    if (a->n_positional != 3) {
        fprintf(stderr, "ballast data import: expected NAME PATH (see --help)\n");
        return 2;
    }
    const bl_dataset_info *info = dataset_info(a->positional[1]);
    char buf[512];
    const char *root = data_root(a, buf, sizeof buf);
    if (!info) return 2;
    if (!root) return cli_fail("data import");
    printf("importing %s into %s/%s\n", info->name, root, info->subdir);
    if (import_from(info, a->positional[2], root, cli_has(a, "link")) != BL_OK) return cli_fail("data import");
    printf("done\n");
    return 0;
}

/* ---- download ----------------------------------------------------------------------------------- */

static int fetch(const char *url, const char *dest) {
    char *argv[] = {"curl", isatty(2) ? "-fL#" : "-fsSL", "--retry", "2", "-o", (char *)dest, (char *)url, NULL};
    printf("  fetching %s\n", url);
    fflush(stdout);
    int status = run_program(argv);
    if (status == 0) return BL_OK;
    if (status == 127)
        bl_set_error("curl is not installed (apt-get install curl), or fetch %s by hand and use `ballast data import`",
                     url);
    else
        bl_set_error("downloading %s failed (curl exit status %d%s); offline? Fetch it elsewhere and use "
                     "`ballast data import`", url, status, status == 6 || status == 7 ? ": no connection" : "");
    return BL_ERR;
}

/* Tries the official locations in order: an archive URL is fetched and extracted; a folder URL
 * ("/" at the end) holds each file gzip'ed. */
static int download_into(const bl_dataset_info *info, const char *staging) {
    for (const char *const *url = info->urls; *url; url++) {
        bl_clear_error();
        size_t n = strlen(*url);
        int rc = BL_OK;
        if ((*url)[n - 1] != '/') {
            char archive[1200];
            snprintf(archive, sizeof archive, "%s/%s", staging, strrchr(*url, '/') + 1);
            rc = fetch(*url, archive);
            if (rc == BL_OK) rc = extract_archive(archive, staging);
            if (rc == BL_OK) remove(archive);
        } else {
            const char *const *lists[2] = {info->train_files, info->test_files};
            for (int l = 0; l < 2 && rc == BL_OK; l++)
                for (const char *const *f = lists[l]; *f && rc == BL_OK; f++) {
                    char file_url[1024], dest[1200];
                    snprintf(file_url, sizeof file_url, "%s%s.gz", *url, *f);
                    snprintf(dest, sizeof dest, "%s/%s.gz", staging, *f);
                    rc = fetch(file_url, dest);
                }
        }
        if (rc == BL_OK) return BL_OK;
        if (url[1]) fprintf(stderr, "ballast data: %s; trying the next location\n", bl_last_error());
    }
    return BL_ERR;
}

static int data_download(const cli_args *a) {
    if (a->n_positional != 2) {
        fprintf(stderr, "ballast data download: expected NAME (see --help)\n");
        return 2;
    }
    const bl_dataset_info *info = dataset_info(a->positional[1]);
    char buf[512], staging[1100];
    const char *root = data_root(a, buf, sizeof buf);
    if (!info) return 2;
    if (!root || make_staging(root, staging, sizeof staging) != BL_OK) return cli_fail("data download");
    printf("downloading %s into %s/%s\n", info->name, root, info->subdir);
    int rc = download_into(info, staging);
    if (rc == BL_OK) rc = place_files(info, staging, root, true, false);
    remove_tree(staging);
    if (rc != BL_OK) return cli_fail("data download");
    printf("done\n");
    return 0;
}

/* ---- longtail ----------------------------------------------------------------------------------- */

static int data_longtail(const cli_args *a) {
    if (a->n_positional != 2) {
        fprintf(stderr, "ballast data longtail: expected NAME (see --help)\n");
        return 2;
    }
    const char *name = a->positional[1], *profile = cli_has(a, "profile") ? cli_get(a, "profile") : "exp";
    double imbalance = cli_has(a, "imbalance") ? atof(cli_get(a, "imbalance")) : 100.0;
    long seed;
    if (!cli_int(a, "seed", 0, &seed)) return 2;
    bl_dataset ds;
    if (bl_dataset_load(name, cli_get(a, "root"), true, &ds) != BL_OK) return cli_fail("data longtail");
    int64_t *idx = NULL, n = 0, *counts = calloc((size_t)ds.num_classes, sizeof *counts);
    int status = 0;
    if (!counts ||
        bl_longtail_indices(ds.labels, ds.num_classes, profile, imbalance, (uint64_t)seed, &idx, &n) != BL_OK)
        status = cli_fail("data longtail");
    if (status == 0) {
        for (int64_t i = 0; i < n; i++) counts[((int64_t *)ds.labels->data)[idx[i]]]++;
        printf("%s, %s profile, imbalance %g, seed %ld: %lld of %lld training images\n", name, profile, imbalance, seed,
               (long long)n, (long long)ds.images->shape[0]);
        int64_t groups[3] = {0};
        for (int64_t c = 0; c < ds.num_classes; c++) {
            printf("  %3lld %-16s %6lld\n", (long long)c, ds.class_names ? ds.class_names[c] : "",
                   (long long)counts[c]);
            groups[counts[c] > 100 ? 0 : counts[c] >= 20 ? 1 : 2]++;
        }
        printf("many-shot (>100) / medium (20-100) / few-shot (<20) classes: %lld / %lld / %lld\n",
               (long long)groups[0], (long long)groups[1], (long long)groups[2]);
    }
    if (status == 0 && cli_has(a, "out")) {
        char comment[512];
        snprintf(comment, sizeof comment,
                 "long-tailed split of %s (train): profile %s, imbalance %g, seed %ld, %lld images", name, profile,
                 imbalance, seed, (long long)n);
        if (bl_indices_save(cli_get(a, "out"), idx, n, comment) != BL_OK) status = cli_fail("data longtail");
        else printf("wrote %s\n", cli_get(a, "out"));
    }
    free(idx);
    free(counts);
    bl_dataset_free(&ds);
    return status;
}

/* ---- bench -------------------------------------------------------------------------------------- */

/* Images per second of the per-image transform on this thread, and of the loader (its thread
 * preparing batches, this one copying them out), over the training split of a dataset; random
 * CIFAR-sized images stand in when the dataset is not found. */
static int data_bench(const cli_args *a) {
    const char *name = a->n_positional > 1 ? a->positional[1] : "cifar10";
    long batch;
    if (!cli_int(a, "batch", 128, &batch) || batch < 1) return 2;
    bl_dataset ds;
    bool real = bl_dataset_load(name, cli_get(a, "root"), true, &ds) == BL_OK;
    if (!real) {
        fprintf(stderr, "ballast data bench: %s; timing random 3x32x32 images instead\n", bl_last_error());
        bl_clear_error();
        memset(&ds, 0, sizeof ds);
        ds.images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(50000, 3, 32, 32));
        ds.labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(50000));
        ds.num_classes = 10;
        bl_rng r = bl_rng_make(0, 0);
        uint8_t *p = ds.images->data;
        for (int64_t i = 0; i < bl_numel(ds.images); i++) p[i] = (uint8_t)bl_rng_u64(&r);
        for (int64_t i = 0; i < 50000; i++) ((int64_t *)ds.labels->data)[i] = i % 10;
    }
    bl_augment aug = bl_augment_defaults(real ? name : "cifar10", true);
    if (aug.crop_pad == 0) aug.crop_pad = 4; /* time the full recipe for every dataset */
    aug.hflip = true;
    int64_t n = ds.images->shape[0], chw = ds.images->shape[1] * ds.images->shape[2] * ds.images->shape[3];
    float *out = malloc((size_t)chw * sizeof *out);
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = bl_now();
        for (int64_t i = 0; i < n; i++) {
            bl_rng r = bl_augment_stream(1, rep, i);
            bl_augment_image(&aug, (uint8_t *)ds.images->data + i * chw, ds.images->shape[1], ds.images->shape[2],
                             ds.images->shape[3], &r, out);
        }
        double ips = (double)n / (bl_now() - t0);
        if (ips > best) best = ips;
    }
    free(out);
    printf("{\"bench\": \"augment\", \"dataset\": \"%s\", \"images\": %lld, \"transform\": \"crop%d+flip+normalize\", "
           "\"threads\": 1, \"img_per_s\": %.0f}\n", real ? name : "random", (long long)n, aug.crop_pad, best);
    bl_sampler *sampler = bl_sampler_create("instance", ds.labels, ds.num_classes, 0);
    bl_loader *loader = sampler ? bl_loader_create(&ds, sampler, batch, true, &aug, 0) : NULL;
    if (!loader) {
        bl_sampler_free(sampler);
        bl_dataset_free(&ds);
        return cli_fail("data bench");
    }
    double t0 = bl_now();
    int64_t images = 0;
    bl_loader_start_epoch(loader, 0, 1);
    for (;;) {
        bl_scope s = bl_scope_begin();
        bl_batch batch;
        bool more = bl_loader_next(loader, &batch);
        if (more) images += batch.size;
        bl_scope_end(s);
        if (!more) break;
    }
    printf("{\"bench\": \"loader\", \"dataset\": \"%s\", \"batch\": %ld, \"images\": %lld, \"img_per_s\": %.0f}\n",
           real ? name : "random", batch, (long long)images, (double)images / (bl_now() - t0));
    bl_loader_free(loader);
    bl_sampler_free(sampler);
    bl_dataset_free(&ds);
    return 0;
}

int cmd_data(int argc, char **argv) {
    cli_args a;
    int rc = cli_parse(&a, usage, options, (int)(sizeof options / sizeof options[0]), argc, argv);
    if (rc) return rc < 0 ? 2 : 0;
    const char *what = a.n_positional ? a.positional[0] : "";
    if (strcmp(what, "list") == 0) return data_list(&a);
    if (strcmp(what, "import") == 0) return data_import(&a);
    if (strcmp(what, "download") == 0) return data_download(&a);
    if (strcmp(what, "longtail") == 0) return data_longtail(&a);
    if (strcmp(what, "bench") == 0) return data_bench(&a);
    fprintf(stderr, "ballast data: %s '%s' (list, import, download, longtail, bench)\n%s\n",
            *what ? "unknown action" : "missing action", what, usage);
    return 2;
}
