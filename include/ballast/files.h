/* ballast files: the few file-system operations every writer of run directories, configs, index
 * files and reports needs, done once and done safely.
 *
 * Writes are atomic: the text goes to "<path>.tmp.<pid>", is flushed and synced, then renamed over
 * the path, so a crash or a full disk leaves the old file or the new one, never half of one; every
 * failure is an error naming the file and the system's reason. */
#ifndef BALLAST_FILES_H
#define BALLAST_FILES_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Writes `len` bytes to `path` atomically (see above). */
int bl_file_write_atomic(const char *path, const void *data, size_t len);
/* bl_file_write_atomic of a NUL-terminated text. */
int bl_file_write_text(const char *path, const char *text);
/* The whole file as a malloc'ed, NUL-terminated buffer (free with free()); *len (may be NULL)
 * gets its size. NULL, with an error naming the file, when it cannot be read. */
char *bl_file_read(const char *path, size_t *len);
/* Creates `path` and its missing parents (mkdir -p). */
int bl_mkdirs(const char *path);
bool bl_is_dir(const char *path);
bool bl_is_file(const char *path);

#ifdef __cplusplus
}
#endif
#endif
