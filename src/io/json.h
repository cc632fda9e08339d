/* A small JSON reader and writer for file headers (safetensors): parses a complete document into a
 * tree held in one pool, and appends escaped strings and numbers to a growable text buffer.
 * Strict RFC 8259: UTF-8 checked, no trailing commas, no comments, nesting depth bounded. */
#ifndef BALLAST_IO_JSON_H
#define BALLAST_IO_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum { BL_JSON_NULL, BL_JSON_BOOL, BL_JSON_NUMBER, BL_JSON_STRING, BL_JSON_ARRAY, BL_JSON_OBJECT } bl__json_type;

typedef struct bl__json bl__json;
struct bl__json {
    bl__json_type type;
    const char *key;    /* member name, for the members of an object */
    bl__json *next;     /* next element or member of the enclosing array/object */
    bl__json *child;    /* first element or member (arrays, objects) */
    int count;          /* number of elements or members */
    bool boolean;
    double number;
    bool is_integer;    /* written without fraction or exponent, and fits in int64 */
    int64_t integer;
    const char *string; /* decoded UTF-8, NUL-terminated (\u0000 is refused) */
};

typedef struct bl__json_block bl__json_block;
typedef struct {
    bl__json_block *blocks;
} bl__json_pool;

/* Parses text[0..len) (which may be followed by anything; only whitespace may follow the value
 * inside len). Returns the root, or NULL with a message ("at byte 17: expected ':'") in err. */
bl__json *bl__json_parse(const char *text, size_t len, bl__json_pool *pool, char *err, size_t err_len);
void bl__json_pool_free(bl__json_pool *pool);
/* The member `key` of an object, or NULL. */
const bl__json *bl__json_get(const bl__json *object, const char *key);

/* A growable NUL-terminated text buffer; after an allocation failure `failed` is set and further
 * appends are ignored. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} bl__text;

void bl__text_append(bl__text *t, const char *s);
void bl__text_printf(bl__text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Appends s as a JSON string literal, quoted and escaped. */
void bl__text_append_json_string(bl__text *t, const char *s);
void bl__text_free(bl__text *t);

#endif
