/* Error state: the first failure's message, kept until cleared. Library code never exits. */
#include "internal.h"

#include <stdarg.h>
#include <string.h>

static _Thread_local char error_message[1024];

const char *bl_last_error(void) { return error_message; }

void bl_clear_error(void) { error_message[0] = '\0'; }

static void set_error_v(const char *prefix, const char *fmt, va_list ap) {
    if (error_message[0]) return; /* the first error explains the rest */
    int n = snprintf(error_message, sizeof error_message, "%s", prefix);
    if (n < 0 || (size_t)n >= sizeof error_message) return;
    vsnprintf(error_message + n, sizeof error_message - (size_t)n, fmt, ap);
}

void bl_set_error(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    set_error_v("", fmt, ap);
    va_end(ap);
}

void bl__error_at(const char *file, int line, const char *fmt, ...) {
    char prefix[256];
    const char *base = strrchr(file, '/');
    snprintf(prefix, sizeof prefix, "%s:%d: ", base ? base + 1 : file, line);
    va_list ap;
    va_start(ap, fmt);
    set_error_v(prefix, fmt, ap);
    va_end(ap);
}
