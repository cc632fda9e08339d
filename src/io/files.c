/* File-system helpers (see ballast/files.h): atomic writes, whole-file reads, mkdir -p. */
#include "ballast/files.h"

#include "core/internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool bl_is_dir(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

bool bl_is_file(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int bl_mkdirs(const char *path) {
    char buf[1024];
    BL_CHECK_RC(path && *path && strlen(path) < sizeof buf, "directory name '%s' is empty or too long",
                path ? path : "");
    snprintf(buf, sizeof buf, "%s", path);
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != '\0') continue;
        char keep = *p;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            BL_CHECK_RC(false, "cannot create directory %s: %s", buf, strerror(errno));
        BL_CHECK_RC(bl_is_dir(buf), "cannot create directory %s: a file is in the way", buf);
        *p = keep;
        if (keep == '\0') return BL_OK;
    }
}

int bl_file_write_atomic(const char *path, const void *data, size_t len) {
    BL_CHECK_RC(path && (data || len == 0), "bl_file_write_atomic: NULL argument");
    char tmp[1100];
    BL_CHECK_RC(strlen(path) + 32 < sizeof tmp, "file name '%s' is too long", path);
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    BL_CHECK_RC(f, "cannot write %s: %s", tmp, strerror(errno));
    bool ok = fwrite(data, 1, len, f) == len && fflush(f) == 0 && fsync(fileno(f)) == 0;
    int err = errno;
    ok = fclose(f) == 0 && ok;
    if (ok && rename(tmp, path) != 0) ok = false;
    if (!ok) {
        err = errno ? errno : err;
        unlink(tmp);
        BL_CHECK_RC(false, "cannot write %s: %s", path, strerror(err));
    }
    return BL_OK;
}

int bl_file_write_text(const char *path, const char *text) {
    BL_CHECK_RC(text, "bl_file_write_text: NULL text for %s", path ? path : "(null)");
    return bl_file_write_atomic(path, text, strlen(text));
}

char *bl_file_read(const char *path, size_t *len) {
    BL_CHECK(path, "bl_file_read: NULL path");
    FILE *f = fopen(path, "rb");
    BL_CHECK(f, "cannot open %s: %s", path, strerror(errno));
    char *text = NULL;
    size_t used = 0, cap = 0;
    bool ok = true;
    for (;;) {
        if (used + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            char *t = realloc(text, cap);
            if (!t) {
                ok = false;
                break;
            }
            text = t;
        }
        size_t got = fread(text + used, 1, 4096, f);
        used += got;
        if (got < 4096) break;
    }
    bool out_of_memory = !ok;
    ok = ok && !ferror(f);
    fclose(f);
    if (!ok) {
        free(text);
        BL_CHECK(false, "cannot read %s%s", path, out_of_memory ? ": out of memory" : "");
    }
    text[used] = '\0';
    if (len) *len = used;
    return text;
}
