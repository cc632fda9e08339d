/* JSON reader and writer (see json.h). A recursive-descent parser over a byte range: every node
 * and decoded string comes from a block pool, so a document is freed in one call and a malformed
 * one leaves nothing behind. Headers come from untrusted files, hence the depth bound and the
 * byte position in every message. */
#include "json.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_DEPTH 64
#define BLOCK_BYTES 65536

struct bl__json_block {
    bl__json_block *next;
    size_t used, cap;
    _Alignas(16) unsigned char bytes[];
};

static void *pool_alloc(bl__json_pool *pool, size_t n) {
    n = (n + 15) / 16 * 16;
    bl__json_block *b = pool->blocks;
    if (!b || b->cap - b->used < n) {
        size_t cap = n > BLOCK_BYTES ? n : BLOCK_BYTES;
        b = malloc(sizeof *b + cap);
        if (!b) return NULL;
        b->used = 0;
        b->cap = cap;
        b->next = pool->blocks;
        pool->blocks = b;
    }
    void *p = b->bytes + b->used;
    b->used += n;
    return p;
}

void bl__json_pool_free(bl__json_pool *pool) {
    while (pool->blocks) {
        bl__json_block *next = pool->blocks->next;
        free(pool->blocks);
        pool->blocks = next;
    }
}

typedef struct {
    const unsigned char *s;
    size_t len, pos;
    bl__json_pool *pool;
    char *err;
    size_t err_len;
    int depth;
} parser;

/* Records the first error with its position; always returns NULL for the caller to pass up. */
static void *fail(parser *p, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void *fail(parser *p, const char *fmt, ...) {
    if (p->err[0]) return NULL;
    int n = snprintf(p->err, p->err_len, "at byte %zu: ", p->pos);
    if (n < 0 || (size_t)n >= p->err_len) return NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->err_len - (size_t)n, fmt, ap);
    va_end(ap);
    return NULL;
}

static void skip_space(parser *p) {
    while (p->pos < p->len &&
           (p->s[p->pos] == ' ' || p->s[p->pos] == '\t' || p->s[p->pos] == '\n' || p->s[p->pos] == '\r'))
        p->pos++;
}

static int peek(parser *p) { return p->pos < p->len ? p->s[p->pos] : -1; }

static bl__json *new_node(parser *p, bl__json_type type) {
    bl__json *v = pool_alloc(p->pool, sizeof *v);
    if (!v) return fail(p, "out of memory");
    memset(v, 0, sizeof *v);
    v->type = type;
    return v;
}

static bool match_word(parser *p, const char *word) {
    size_t n = strlen(word);
    if (p->len - p->pos < n || memcmp(p->s + p->pos, word, n) != 0) return false;
    p->pos += n;
    return true;
}

static int hex_value(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static long read_hex4(parser *p) {
    if (p->len - p->pos < 4) return -1;
    long v = 0;
    for (int i = 0; i < 4; i++) {
        int h = hex_value(p->s[p->pos + (size_t)i]);
        if (h < 0) return -1;
        v = v * 16 + h;
    }
    p->pos += 4;
    return v;
}

static char *put_utf8(char *out, unsigned long cp) {
    if (cp < 0x80) {
        *out++ = (char)cp;
    } else if (cp < 0x800) {
        *out++ = (char)(0xc0 | (cp >> 6));
        *out++ = (char)(0x80 | (cp & 0x3f));
    } else if (cp < 0x10000) {
        *out++ = (char)(0xe0 | (cp >> 12));
        *out++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *out++ = (char)(0x80 | (cp & 0x3f));
    } else {
        *out++ = (char)(0xf0 | (cp >> 18));
        *out++ = (char)(0x80 | ((cp >> 12) & 0x3f));
        *out++ = (char)(0x80 | ((cp >> 6) & 0x3f));
        *out++ = (char)(0x80 | (cp & 0x3f));
    }
    return out;
}

/* Length of the well-formed UTF-8 sequence at s (at most `avail` bytes), or 0 when malformed
 * (overlong forms, surrogates and code points above U+10FFFF included). */
static size_t utf8_sequence(const unsigned char *s, size_t avail) {
    unsigned c = s[0];
    size_t n;
    unsigned long cp, min;
    if (c < 0x80) return 1;
    if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f, min = 0x80;
    else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f, min = 0x800;
    else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07, min = 0x10000;
    else return 0;
    if (avail < n) return 0;
    for (size_t i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return n;
}

/* Parses a string literal at p->pos (the opening quote) into pool memory. */
static const char *parse_string(parser *p) {
    if (peek(p) != '"') return fail(p, "expected a string");
    size_t start = ++p->pos;
    /* Decoding never lengthens a literal, so its raw length bounds the output. */
    size_t end = start;
    while (end < p->len && p->s[end] != '"') end += p->s[end] == '\\' ? 2 : 1;
    if (end >= p->len) return fail(p, "unterminated string");
    char *out = pool_alloc(p->pool, end - start + 1), *o = out;
    if (!out) return fail(p, "out of memory");
    while (p->s[p->pos] != '"') {
        unsigned c = p->s[p->pos];
        if (c < 0x20) return fail(p, "control character 0x%02x in a string", c);
        if (c != '\\') {
            size_t n = utf8_sequence(p->s + p->pos, p->len - p->pos);
            if (!n) return fail(p, "invalid UTF-8 in a string");
            memcpy(o, p->s + p->pos, n);
            o += n;
            p->pos += n;
            continue;
        }
        p->pos++;
        int e = peek(p);
        p->pos++;
        switch (e) {
        case '"': *o++ = '"'; break;
        case '\\': *o++ = '\\'; break;
        case '/': *o++ = '/'; break;
        case 'b': *o++ = '\b'; break;
        case 'f': *o++ = '\f'; break;
        case 'n': *o++ = '\n'; break;
        case 'r': *o++ = '\r'; break;
        case 't': *o++ = '\t'; break;
        case 'u': {
            long cp = read_hex4(p);
            if (cp < 0) return fail(p, "invalid \\u escape");
            if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair encodes one code point */
                if (!match_word(p, "\\u")) return fail(p, "unpaired surrogate in \\u escape");
                long lo = read_hex4(p);
                if (lo < 0xdc00 || lo > 0xdfff) return fail(p, "unpaired surrogate in \\u escape");
                cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
            } else if (cp >= 0xdc00 && cp <= 0xdfff) {
                return fail(p, "unpaired surrogate in \\u escape");
            }
            if (cp == 0) return fail(p, "\\u0000 in a string is not supported");
            o = put_utf8(o, (unsigned long)cp);
            break;
        }
        default: p->pos--; return fail(p, "invalid escape in a string");
        }
    }
    p->pos++;
    *o = '\0';
    return out;
}

static bl__json *parse_number(parser *p) {
    size_t start = p->pos;
    bool integral = true;
    if (peek(p) == '-') p->pos++;
    if (peek(p) == '0') {
        p->pos++;
    } else if (peek(p) >= '1' && peek(p) <= '9') {
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    } else {
        return fail(p, "invalid number");
    }
    if (peek(p) == '.') {
        integral = false;
        p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9')) return fail(p, "invalid number: digits must follow '.'");
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    }
    if (peek(p) == 'e' || peek(p) == 'E') {
        integral = false;
        p->pos++;
        if (peek(p) == '+' || peek(p) == '-') p->pos++;
        if (!(peek(p) >= '0' && peek(p) <= '9')) return fail(p, "invalid number: digits must follow the exponent");
        while (peek(p) >= '0' && peek(p) <= '9') p->pos++;
    }
    size_t n = p->pos - start;
    bl__json *v = new_node(p, BL_JSON_NUMBER);
    char *copy = v ? pool_alloc(p->pool, n + 1) : NULL; /* strtod needs a terminated string */
    if (!copy) return v ? fail(p, "out of memory") : NULL;
    memcpy(copy, p->s + start, n);
    copy[n] = '\0';
    v->number = strtod(copy, NULL);
    if (integral) {
        /* exact int64, so byte offsets past 2^53 survive */
        bool negative = p->s[start] == '-';
        uint64_t mag = 0, limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
        bool fits = true;
        for (size_t i = start + negative; i < p->pos && fits; i++) {
            unsigned d = p->s[i] - '0';
            if (mag > (limit - d) / 10) fits = false;
            else mag = mag * 10 + d;
        }
        v->is_integer = fits;
        if (fits) v->integer = negative ? (int64_t)(0 - mag) : (int64_t)mag;
    }
    return v;
}

static bl__json *parse_value(parser *p);

static bl__json *parse_container(parser *p, bool object) {
    if (++p->depth > MAX_DEPTH) return fail(p, "nesting deeper than %d levels", MAX_DEPTH);
    bl__json *v = new_node(p, object ? BL_JSON_OBJECT : BL_JSON_ARRAY);
    if (!v) return NULL;
    int close = object ? '}' : ']';
    p->pos++;
    skip_space(p);
    bl__json **tail = &v->child;
    if (peek(p) == close) {
        p->pos++;
        p->depth--;
        return v;
    }
    for (;;) {
        skip_space(p);
        const char *key = NULL;
        if (object) {
            if (!(key = parse_string(p))) return NULL;
            skip_space(p);
            if (peek(p) != ':') return fail(p, "expected ':' after an object key");
            p->pos++;
        }
        bl__json *item = parse_value(p);
        if (!item) return NULL;
        item->key = key;
        *tail = item;
        tail = &item->next;
        v->count++;
        skip_space(p);
        int c = peek(p);
        p->pos++;
        if (c == close) break;
        if (c != ',') {
            p->pos--;
            return fail(p, object ? "expected ',' or '}' in an object" : "expected ',' or ']' in an array");
        }
    }
    p->depth--;
    return v;
}

static bl__json *parse_value(parser *p) {
    skip_space(p);
    int c = peek(p);
    if (c == '{' || c == '[') return parse_container(p, c == '{');
    if (c == '"') {
        const char *s = parse_string(p);
        bl__json *v = s ? new_node(p, BL_JSON_STRING) : NULL;
        if (v) v->string = s;
        return v;
    }
    if (c == '-' || (c >= '0' && c <= '9')) return parse_number(p);
    bool truth = match_word(p, "true");
    if (truth || match_word(p, "false")) {
        bl__json *v = new_node(p, BL_JSON_BOOL);
        if (v) v->boolean = truth;
        return v;
    }
    if (match_word(p, "null")) return new_node(p, BL_JSON_NULL);
    return c < 0 ? fail(p, "unexpected end of text") : fail(p, "unexpected character '%c'", c);
}

bl__json *bl__json_parse(const char *text, size_t len, bl__json_pool *pool, char *err, size_t err_len) {
    parser p = {(const unsigned char *)text, len, 0, pool, err, err_len, 0};
    err[0] = '\0';
    bl__json *root = parse_value(&p);
    if (root) {
        skip_space(&p);
        if (p.pos != len) root = fail(&p, "unexpected text after the end of the document");
    }
    if (!root) bl__json_pool_free(pool);
    return root;
}

const bl__json *bl__json_get(const bl__json *object, const char *key) {
    if (!object || object->type != BL_JSON_OBJECT) return NULL;
    for (const bl__json *m = object->child; m; m = m->next)
        if (strcmp(m->key, key) == 0) return m;
    return NULL;
}

/* ---- writing ---- */

static bool text_reserve(bl__text *t, size_t extra) {
    if (t->failed) return false;
    if (t->len + extra + 1 <= t->cap) return true;
    size_t cap = t->cap ? t->cap : 256;
    while (cap < t->len + extra + 1) cap *= 2;
    char *d = realloc(t->data, cap);
    if (!d) {
        t->failed = true;
        return false;
    }
    t->data = d;
    t->cap = cap;
    return true;
}

static void text_append_bytes(bl__text *t, const char *s, size_t n) {
    if (!text_reserve(t, n)) return;
    memcpy(t->data + t->len, s, n);
    t->len += n;
    t->data[t->len] = '\0';
}

void bl__text_append(bl__text *t, const char *s) { text_append_bytes(t, s, strlen(s)); }

void bl__text_printf(bl__text *t, const char *fmt, ...) {
    char buf[256];
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n >= 0 && (size_t)n < sizeof buf) {
        text_append_bytes(t, buf, (size_t)n);
    } else {
        /* longer than the stack buffer: format once more into the heap */
        char *big = n >= 0 ? malloc((size_t)n + 1) : NULL;
        if (big && vsnprintf(big, (size_t)n + 1, fmt, again) == n) text_append_bytes(t, big, (size_t)n);
        else t->failed = true;
        free(big);
    }
    va_end(again);
}

void bl__text_append_json_string(bl__text *t, const char *s) {
    bl__text_append(t, "\"");
    for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
        if (*c == '"' || *c == '\\') {
            char esc[2] = {'\\', (char)*c};
            text_append_bytes(t, esc, 2);
        } else if (*c < 0x20) {
            bl__text_printf(t, "\\u%04x", *c);
        } else {
            text_append_bytes(t, (const char *)c, 1);
        }
    }
    bl__text_append(t, "\"");
}

void bl__text_free(bl__text *t) {
    free(t->data);
    memset(t, 0, sizeof *t);
}
