/* ballast errors: how a function reports failure, and the check macros the library and the recipes
 * built on it use to do so.
 *
 * Functions never exit: they return NULL or BL_ERR and leave a message naming what went wrong (the
 * op, the shapes, the file) for bl_last_error() (ballast/tensor.h). The macros below record that
 * message with the source line and return from the calling function. */
#ifndef BALLAST_ERROR_H
#define BALLAST_ERROR_H

#include "ballast/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Records "file:line: message" as the pending error (use the macros rather than calling it). */
void bl__error_at(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* On failure of `cond`, set an error naming this source line and return `ret`. */
#define BL_CHECK_OR(ret, cond, ...)                                                            \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            bl__error_at(__FILE__, __LINE__, __VA_ARGS__);                                     \
            return ret;                                                                        \
        }                                                                                      \
    } while (0)
/* For functions returning a pointer. */
#define BL_CHECK(cond, ...) BL_CHECK_OR(NULL, cond, __VA_ARGS__)
/* For functions returning BL_OK/BL_ERR. */
#define BL_CHECK_RC(cond, ...) BL_CHECK_OR(BL_ERR, cond, __VA_ARGS__)
/* Propagates a NULL input: an earlier op already recorded why. */
#define BL_NONNULL(...)                                                                        \
    do {                                                                                       \
        const void *bl__in[] = {__VA_ARGS__};                                                  \
        for (size_t bl__i = 0; bl__i < sizeof bl__in / sizeof bl__in[0]; bl__i++)             \
            if (!bl__in[bl__i]) return NULL;                                                   \
    } while (0)
/* Evaluates an int-returning call and returns BL_ERR from the caller when it fails. */
#define BL_TRY(call)                                                                           \
    do {                                                                                       \
        if ((call) != BL_OK) return BL_ERR;                                                    \
    } while (0)

/* A tensor's shape as text, "(2, 3)", in a rotating per-thread buffer valid for a few calls: for
 * messages. */
const char *bl_shape_text(const bl_tensor *t);

#ifdef __cplusplus
}
#endif
#endif
