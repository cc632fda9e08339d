/* Run configs: YAML files of nested maps read with libyaml into a flat table of dotted keys
 * ("train.augment.crop_pad"), checked against option tables, overridden from the command line,
 * and written back as the resolved config of a run.
 *
 * Values are kept as the text the user wrote, with the file and line it came from, and are only
 * parsed when a table declares their type: the file can be read before the method (whose table
 * depends on method.name) is known, and every message can point at the line of the offending key.
 *
 * Inheritance (as in mmcv's configs): a top-level key `_base_: path`, or `_base_: [a, b]`, names
 * base files, relative to the directory of the file that names them (absolute paths as they are).
 * The config of a file is its bases' configs merged in order, then its own keys on top; bases may
 * have bases of their own. Merging goes by dotted key, so a file that sets `train.lr` replaces
 * that key only and a map in a child adds to the base's map instead of deleting its other keys; a
 * value replaces whatever was at its place, so a scalar replaces a whole map of the base there and
 * a map replaces a scalar, and a null (`lr:` with no value) resets a key to its table's default.
 * Keys keep the order a reader expects: the base's first, in its order, then the child's new ones.
 * `_base_` itself is not stored, so the resolved config (bl_config_write) is self-contained: every
 * inherited key is written out, and a run directory never depends on the files it came from.
 * bl_config_source() stays the file that was loaded; messages about a key name the file (base or
 * child) and line that set it. A base that is missing is an error naming the including file, its
 * line and the path; a cycle is an error naming the chain of files. bl_config_parse reads text
 * from memory, which has no directory to resolve a base against, so it refuses `_base_` (write
 * the text to a file and use bl_config_load). */
#include "ballast/train.h"

#include "core/internal.h"

#include "ballast/files.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

#define CONFIG_MAX_DEPTH 8
#define CONFIG_MAX_LIST 64

typedef struct {
    char *key;
    char *text;           /* scalar text, or the list written as "[a, b]" */
    bool has_value;       /* false for YAML null */
    bool is_list;
    bool quoted;          /* written as a quoted scalar: a string, never a number */
    int line;             /* 1-based line in `file`; 0 for overrides and defaults */
    const char *file;     /* the file that set it (a base's, or the config's own); NULL: source */
    bool from_override;
    bool declared;
    bl_opt_type type;
    int decl_order;
} config_entry;

struct bl_config {
    char *source;
    config_entry *entries;
    int count, cap;
    int n_declared;
    char **files;         /* names of the files read (the loaded one and its bases); entries point here */
    int n_files;
};

static char *dup_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *d = malloc(n);
    if (d) memcpy(d, s, n);
    return d;
}

static config_entry *find_entry(const bl_config *c, const char *key) {
    for (int i = 0; i < c->count; i++)
        if (strcmp(c->entries[i].key, key) == 0) return &c->entries[i];
    return NULL;
}

static config_entry *add_entry(bl_config *c, const char *key) {
    if (c->count == c->cap) {
        int cap = c->cap ? 2 * c->cap : 32;
        config_entry *e = realloc(c->entries, (size_t)cap * sizeof *e);
        BL_CHECK(e, "config %s: out of memory", c->source);
        c->entries = e;
        c->cap = cap;
    }
    config_entry *e = &c->entries[c->count];
    memset(e, 0, sizeof *e);
    e->key = dup_string(key);
    BL_CHECK(e->key, "config %s: out of memory", c->source);
    c->count++;
    return e;
}

static int set_text(bl_config *c, config_entry *e, const char *text) {
    char *t = dup_string(text);
    BL_CHECK_RC(t, "config %s: out of memory", c->source);
    free(e->text);
    e->text = t;
    return BL_OK;
}

/* Where a key was set, for messages: "file:line" (the base's file for an inherited key) or "the
 * command line". */
static const char *origin(const bl_config *c, const config_entry *e, char *buf, size_t len) {
    const char *file = e->file ? e->file : c->source;
    if (e->from_override) snprintf(buf, len, "%s (override on the command line)", c->source);
    else if (e->line > 0) snprintf(buf, len, "%s:%d", file, e->line);
    else snprintf(buf, len, "%s", file);
    return buf;
}

/* ---- value parsing ------------------------------------------------------------------------- */

static bool parse_int(const char *s, int64_t *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (*s == '\0' || *end || errno) return false;
    *out = v;
    return true;
}

static bool parse_float(const char *s, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (*s == '\0' || *end || errno == ERANGE || !isfinite(v)) return false;
    *out = v;
    return true;
}

static bool parse_bool(const char *s, bool *out) {
    static const char *const yes[] = {"true", "yes", "on", "1"}, *const no[] = {"false", "no", "off", "0"};
    for (int i = 0; i < 4; i++) {
        if (strcasecmp(s, yes[i]) == 0) return *out = true, true;
        if (strcasecmp(s, no[i]) == 0) return *out = false, true;
    }
    return false;
}

/* Parses "[a, b, c]" (the stored form of lists, also accepted in overrides) into numbers. */
static int parse_list(const char *s, double *out, int max) {
    while (*s == ' ') s++;
    if (*s != '[') return -1;
    s++;
    int n = 0;
    for (;;) {
        while (*s == ' ') s++;
        if (*s == ']') return s[1] == '\0' ? n : -1;
        char *end;
        errno = 0;
        double v = strtod(s, &end);
        if (end == s || errno == ERANGE || !isfinite(v) || n == max) return -1;
        out[n++] = v;
        s = end;
        while (*s == ' ') s++;
        if (*s == ',') s++;
        else if (*s != ']') return -1;
    }
}

/* Rewrites a list's text as "[a, b, c]" keeping each item as written, so a list compares and
 * prints the same whether it came from the file, an override or a default. */
static void canonical_list(const char *s, char *out, size_t len) {
    size_t n = (size_t)snprintf(out, len, "[");
    const char *p = strchr(s, '[');
    p = p ? p + 1 : s;
    int items = 0;
    while (*p && *p != ']' && n < len) {
        while (*p == ' ' || *p == ',') p++;
        const char *start = p;
        while (*p && *p != ',' && *p != ']' && *p != ' ') p++;
        if (p > start) n += (size_t)snprintf(out + n, len - n, "%s%.*s", items++ ? ", " : "", (int)(p - start), start);
        while (*p == ' ') p++;
    }
    if (n < len) snprintf(out + n, len - n, "]");
}

static const char *type_name(bl_opt_type t) {
    switch (t) {
    case BL_OPT_INT: return "an integer";
    case BL_OPT_FLOAT: return "a number";
    case BL_OPT_BOOL: return "true or false";
    case BL_OPT_STRING: return "a string";
    case BL_OPT_LIST: return "a list of numbers";
    }
    return "?";
}

static bool value_fits(const config_entry *e, bl_opt_type type) {
    int64_t i;
    double f;
    bool b;
    double list[CONFIG_MAX_LIST];
    if (e->is_list) return type == BL_OPT_LIST && parse_list(e->text, list, CONFIG_MAX_LIST) >= 0;
    switch (type) {
    case BL_OPT_INT: return !e->quoted && parse_int(e->text, &i);
    case BL_OPT_FLOAT: return !e->quoted && parse_float(e->text, &f);
    case BL_OPT_BOOL: return !e->quoted && parse_bool(e->text, &b);
    case BL_OPT_STRING: return true;
    case BL_OPT_LIST: return false;
    }
    return false;
}

static int check_type(const bl_config *c, const config_entry *e) {
    char where[600];
    BL_CHECK_RC(!e->has_value || value_fits(e, e->type), "%s: key '%s' expects %s, got '%s'",
                origin(c, e, where, sizeof where), e->key, type_name(e->type), e->text);
    return BL_OK;
}

/* ---- YAML reading --------------------------------------------------------------------------- */

typedef struct {
    bl_config *c;
    const char *file;                 /* the file read, for messages and entries (lives as long as c) */
    yaml_parser_t parser;
    char path[CONFIG_MAX_DEPTH][128]; /* key components of the enclosing maps */
    int depth;
    bool refuse_base;                 /* text from memory: no directory to resolve _base_ against */
    bool seen_base;
    char **bases;                     /* the _base_ paths, as written, */
    int *base_lines;                  /* and the lines that name them */
    int n_bases, base_line;
} yaml_reader;

static const char *event_name(yaml_event_type_t t) {
    switch (t) {
    case YAML_SEQUENCE_START_EVENT: return "a list";
    case YAML_MAPPING_START_EVENT: return "a map";
    case YAML_ALIAS_EVENT: return "an alias";
    default: return "something else";
    }
}

static int next_event(yaml_reader *r, yaml_event_t *ev) {
    if (!yaml_parser_parse(&r->parser, ev)) {
        const yaml_parser_t *p = &r->parser;
        bl_set_error("%s:%zu: YAML syntax error: %s%s%s", r->file, p->problem_mark.line + 1,
                     p->problem ? p->problem : "unreadable", p->context ? " " : "", p->context ? p->context : "");
        return BL_ERR;
    }
    return BL_OK;
}

static bool is_null_scalar(const yaml_event_t *ev) {
    if (ev->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *v = (const char *)ev->data.scalar.value;
    return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 || strcmp(v, "Null") == 0 ||
           strcmp(v, "NULL") == 0;
}

static void full_key(const yaml_reader *r, const char *last, char *out, size_t len) {
    size_t n = 0;
    out[0] = '\0';
    for (int i = 0; i < r->depth; i++) n += (size_t)snprintf(out + n, n < len ? len - n : 0, "%s.", r->path[i]);
    snprintf(out + (n < len ? n : len - 1), n < len ? len - n : 1, "%s", last);
}

static int store_leaf(yaml_reader *r, const char *key, const char *text, bool has_value, bool is_list, bool quoted,
                      int line) {
    bl_config *c = r->c;
    config_entry *e = find_entry(c, key);
    BL_CHECK_RC(!e, "%s:%d: key '%s' is set twice (first at line %d)", r->file, line, key, e ? e->line : 0);
    e = add_entry(c, key);
    if (!e || set_text(c, e, text) != BL_OK) return BL_ERR;
    e->has_value = has_value;
    e->is_list = is_list;
    e->quoted = quoted;
    e->line = line;
    e->file = r->file;
    return BL_OK;
}

/* Reads a flow or block sequence of scalars into "[a, b]" text. */
static int read_list(yaml_reader *r, const char *key, int line) {
    char text[4096] = "[";
    size_t n = 1;
    int count = 0;
    for (;;) {
        yaml_event_t ev;
        BL_TRY(next_event(r, &ev));
        if (ev.type == YAML_SEQUENCE_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        if (ev.type != YAML_SCALAR_EVENT) {
            bl_set_error("%s:%zu: key '%s': list items must be plain values, found %s", r->file,
                         ev.start_mark.line + 1, key, event_name(ev.type));
            yaml_event_delete(&ev);
            return BL_ERR;
        }
        n += (size_t)snprintf(text + n, n < sizeof text ? sizeof text - n : 0, "%s%s", count ? ", " : "",
                              (const char *)ev.data.scalar.value);
        count++;
        yaml_event_delete(&ev);
        BL_CHECK_RC(n + 2 < sizeof text, "%s:%d: key '%s': list too long", r->file, line, key);
    }
    strcat(text, "]");
    return store_leaf(r, key, text, true, true, false, line);
}

static int add_base(yaml_reader *r, const char *path, int line) {
    BL_CHECK_RC(path[0], "%s:%d: _base_: an empty path", r->file, line);
    char **b = realloc(r->bases, (size_t)(r->n_bases + 1) * sizeof *b);
    BL_CHECK_RC(b, "config %s: out of memory", r->file);
    r->bases = b;
    int *l = realloc(r->base_lines, (size_t)(r->n_bases + 1) * sizeof *l);
    BL_CHECK_RC(l, "config %s: out of memory", r->file);
    r->base_lines = l;
    BL_CHECK_RC((b[r->n_bases] = dup_string(path)), "config %s: out of memory", r->file);
    l[r->n_bases++] = line;
    return BL_OK;
}

/* The value of a top-level `_base_` key (just read, at `line`): a path or a list of paths. */
static int read_base(yaml_reader *r, int line) {
    BL_CHECK_RC(!r->refuse_base,
                "%s:%d: _base_ names files relative to the config's own file, and text parsed from memory "
                "has none: load the config from its file (bl_config_load)",
                r->file, line);
    BL_CHECK_RC(r->depth == 0, "%s:%d: _base_ is only allowed at the top level of a config", r->file, line);
    BL_CHECK_RC(!r->seen_base, "%s:%d: key '_base_' is set twice (first at line %d)", r->file, line, r->base_line);
    r->seen_base = true;
    r->base_line = line;
    yaml_event_t ev;
    BL_TRY(next_event(r, &ev));
    int rc = BL_OK;
    if (ev.type == YAML_SCALAR_EVENT && !is_null_scalar(&ev)) {
        rc = add_base(r, (const char *)ev.data.scalar.value, line);
    } else if (ev.type == YAML_SEQUENCE_START_EVENT) {
        for (;;) {
            yaml_event_t item;
            if ((rc = next_event(r, &item)) != BL_OK) break;
            if (item.type == YAML_SEQUENCE_END_EVENT) {
                yaml_event_delete(&item);
                break;
            }
            if (item.type == YAML_SCALAR_EVENT && !is_null_scalar(&item)) {
                rc = add_base(r, (const char *)item.data.scalar.value, (int)item.start_mark.line + 1);
            } else {
                bl_set_error("%s:%zu: _base_: list items must be file paths, found %s", r->file,
                             item.start_mark.line + 1, item.type == YAML_SCALAR_EVENT ? "null" : event_name(item.type));
                rc = BL_ERR;
            }
            yaml_event_delete(&item);
            if (rc != BL_OK) break;
        }
    } else {
        bl_set_error("%s:%d: _base_ must be a file path or a list of paths, found %s", r->file, line,
                     ev.type == YAML_SCALAR_EVENT ? "null" : event_name(ev.type));
        rc = BL_ERR;
    }
    yaml_event_delete(&ev);
    return rc;
}

/* Reads the members of a map whose start event was just consumed. */
static int read_map(yaml_reader *r) {
    for (;;) {
        yaml_event_t kev;
        BL_TRY(next_event(r, &kev));
        if (kev.type == YAML_MAPPING_END_EVENT) {
            yaml_event_delete(&kev);
            return BL_OK;
        }
        int line = (int)kev.start_mark.line + 1;
        if (kev.type != YAML_SCALAR_EVENT || kev.data.scalar.length == 0 ||
            kev.data.scalar.length >= sizeof r->path[0] || strchr((const char *)kev.data.scalar.value, '.') ||
            strchr((const char *)kev.data.scalar.value, '=')) {
            bl_set_error("%s:%d: keys must be plain names (no '.' or '='), found %s", r->file, line,
                         kev.type == YAML_SCALAR_EVENT ? (const char *)kev.data.scalar.value : event_name(kev.type));
            yaml_event_delete(&kev);
            return BL_ERR;
        }
        char name[128], key[1024];
        snprintf(name, sizeof name, "%s", (const char *)kev.data.scalar.value);
        yaml_event_delete(&kev);
        full_key(r, name, key, sizeof key);
        if (strcmp(name, "_base_") == 0) {
            BL_TRY(read_base(r, line));
            continue;
        }

        yaml_event_t vev;
        BL_TRY(next_event(r, &vev));
        int rc = BL_OK;
        if (vev.type == YAML_SCALAR_EVENT) {
            bool quoted = vev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
            rc = store_leaf(r, key, (const char *)vev.data.scalar.value, !is_null_scalar(&vev), false, quoted, line);
        } else if (vev.type == YAML_SEQUENCE_START_EVENT) {
            rc = read_list(r, key, line);
        } else if (vev.type == YAML_MAPPING_START_EVENT) {
            if (r->depth == CONFIG_MAX_DEPTH) {
                bl_set_error("%s:%d: key '%s': maps nested too deeply", r->file, line, key);
                rc = BL_ERR;
            } else {
                snprintf(r->path[r->depth++], sizeof r->path[0], "%s", name);
                rc = read_map(r);
                r->depth--;
            }
        } else {
            bl_set_error("%s:%d: key '%s': unsupported value (%s)", r->file, line, key, event_name(vev.type));
            rc = BL_ERR;
        }
        yaml_event_delete(&vev);
        if (rc != BL_OK) return rc;
    }
}

static int read_document(yaml_reader *r) {
    bool seen_root = false;
    for (;;) {
        yaml_event_t ev;
        BL_TRY(next_event(r, &ev));
        yaml_event_type_t type = ev.type;
        int line = (int)ev.start_mark.line + 1;
        int rc = BL_OK;
        if (type == YAML_MAPPING_START_EVENT && !seen_root) {
            seen_root = true;
            rc = read_map(r);
        } else if (type == YAML_SCALAR_EVENT && !seen_root && is_null_scalar(&ev)) {
            seen_root = true; /* an empty file */
        } else if (type == YAML_DOCUMENT_START_EVENT && seen_root) {
            bl_set_error("%s:%d: only one YAML document is allowed", r->file, line);
            rc = BL_ERR;
        } else if (type != YAML_STREAM_START_EVENT && type != YAML_DOCUMENT_START_EVENT &&
                   type != YAML_DOCUMENT_END_EVENT && type != YAML_STREAM_END_EVENT) {
            bl_set_error("%s:%d: the top level must be a map of sections, found %s", r->file, line,
                         event_name(type));
            rc = BL_ERR;
        }
        yaml_event_delete(&ev);
        if (rc != BL_OK) return rc;
        if (type == YAML_STREAM_END_EVENT) return BL_OK;
    }
}

static bl_config *new_config(const char *source) {
    bl_config *c = calloc(1, sizeof *c);
    BL_CHECK(c, "config: out of memory");
    c->source = dup_string(source);
    if (!c->source) {
        free(c);
        BL_CHECK(false, "config: out of memory");
    }
    return c;
}

static void free_bases(yaml_reader *r) {
    for (int i = 0; i < r->n_bases; i++) free(r->bases[i]);
    free(r->bases);
    free(r->base_lines);
    r->bases = NULL;
    r->base_lines = NULL;
    r->n_bases = 0;
}

/* Parses one file's text into r->c (a fresh config), collecting its _base_ paths in r->bases. */
static int parse_text(yaml_reader *r, const char *text) {
    if (!yaml_parser_initialize(&r->parser)) {
        bl_set_error("config %s: cannot initialize the YAML parser", r->file);
        return BL_ERR;
    }
    yaml_parser_set_input_string(&r->parser, (const unsigned char *)text, strlen(text));
    int rc = read_document(r);
    yaml_parser_delete(&r->parser);
    return rc;
}

bl_config *bl_config_parse(const char *yaml_text, const char *source_name) {
    BL_CHECK(yaml_text, "bl_config_parse: NULL text");
    bl_config *c = new_config(source_name ? source_name : "<config>");
    if (!c) return NULL;
    yaml_reader r = {.c = c, .file = c->source, .refuse_base = true};
    int rc = parse_text(&r, yaml_text);
    free_bases(&r);
    if (rc != BL_OK) {
        bl_config_free(c);
        return NULL;
    }
    return c;
}

/* The whole of a file as a string; NULL with errno set when it cannot be opened or read, and with
 * *nul set when it holds a NUL byte. */
static char *read_text(const char *path, bool *nul) {
    *nul = false;
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *text = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len + 4096 + 1 > cap) {
            cap = cap ? 2 * cap : 8192;
            char *t = realloc(text, cap);
            if (!t) {
                free(text);
                fclose(f);
                errno = ENOMEM;
                return NULL;
            }
            text = t;
        }
        size_t got = fread(text + len, 1, 4096, f);
        len += got;
        if (got < 4096) break;
    }
    bool failed = ferror(f);
    fclose(f);
    if (failed) {
        free(text);
        errno = EIO;
        return NULL;
    }
    text[len] = '\0';
    if (strlen(text) != len) {
        free(text);
        *nul = true;
        return NULL;
    }
    return text;
}

/* Removes entry i (its strings freed). */
static void remove_entry(bl_config *c, int i) {
    free(c->entries[i].key);
    free(c->entries[i].text);
    memmove(&c->entries[i], &c->entries[i + 1], (size_t)(c->count - i - 1) * sizeof *c->entries);
    c->count--;
}

/* True when `prefix` names a map that holds `key` ("train" holds "train.lr"). */
static bool holds(const char *prefix, const char *key) {
    size_t n = strlen(prefix);
    return strncmp(prefix, key, n) == 0 && key[n] == '.';
}

/* Merges `src` over `dst`, moving its entries: a key both have takes src's value in dst's place; a
 * key of src replaces the keys of dst it conflicts with (a scalar where dst has a map there, or a
 * map where dst has a scalar), in the place of the first of them; other keys of src are appended.
 * src is left empty. */
static int merge_into(bl_config *dst, bl_config *src) {
    for (int i = 0; i < src->count; i++) {
        config_entry *s = &src->entries[i];
        int at = -1; /* the slot of the new value: the key's own, or that of the first conflict */
        for (int j = 0; j < dst->count;) {
            const char *k = dst->entries[j].key;
            if (strcmp(k, s->key) != 0 && !holds(s->key, k) && !holds(k, s->key)) j++;
            else if (at < 0) at = j++;
            else remove_entry(dst, j);
        }
        if (at < 0) {
            if (dst->count == dst->cap) {
                int cap = dst->cap ? 2 * dst->cap : 32;
                config_entry *e = realloc(dst->entries, (size_t)cap * sizeof *e);
                BL_CHECK_RC(e, "config %s: out of memory", dst->source);
                dst->entries = e;
                dst->cap = cap;
            }
            at = dst->count++;
        } else {
            free(dst->entries[at].key);
            free(dst->entries[at].text);
        }
        dst->entries[at] = *s;
        s->key = s->text = NULL;
    }
    src->count = 0;
    return BL_OK;
}

#define CONFIG_MAX_BASE_DEPTH 16

/* State of one bl_config_load: the config it returns (which owns the names of every file read) and
 * the chain of files being read, outermost first, for cycles. */
typedef struct {
    bl_config *out;
    const char *chain[CONFIG_MAX_BASE_DEPTH];
    char *real[CONFIG_MAX_BASE_DEPTH]; /* realpath of each, to see the same file under two names */
    int depth;
} base_loader;

static const char *register_file(bl_config *out, const char *path) {
    char **f = realloc(out->files, (size_t)(out->n_files + 1) * sizeof *f);
    BL_CHECK(f, "config %s: out of memory", out->source);
    out->files = f;
    BL_CHECK((f[out->n_files] = dup_string(path)), "config %s: out of memory", out->source);
    return f[out->n_files++];
}

/* The directory of `from` joined with `path` (a relative _base_), or `path` when absolute. */
static void base_path(const char *from, const char *path, char *out, size_t len) {
    const char *slash = strrchr(from, '/');
    if (path[0] == '/' || !slash) snprintf(out, len, "%s", path);
    else snprintf(out, len, "%.*s/%s", (int)(slash - from), from, path);
}

/* The resolved keys of the file at `path` (its bases merged in order, then its own keys) in a fresh
 * config. `from`/`from_line` name the file and line whose _base_ led here (NULL for the loaded
 * file) and `as_written` the path as that line writes it. */
static bl_config *load_resolved(base_loader *L, const char *path, const char *from, int from_line,
                                const char *as_written) {
    bool nul;
    char *text = read_text(path, &nul);
    if (!text) {
        if (nul && from) bl_set_error("%s:%d: _base_ %s: contains a NUL byte", from, from_line, path);
        else if (nul) bl_set_error("config %s: contains a NUL byte", path);
        else if (from)
            bl_set_error("%s:%d: _base_ '%s': cannot open %s: %s", from, from_line, as_written, path, strerror(errno));
        else bl_set_error("cannot open config %s: %s", path, strerror(errno));
        return NULL;
    }
    char *real = realpath(path, NULL);
    if (!real) real = dup_string(path);
    bool cycle = false;
    for (int i = 0; real && i < L->depth; i++) cycle |= strcmp(L->real[i], real) == 0;
    if (!real || cycle || L->depth == CONFIG_MAX_BASE_DEPTH) {
        char chain[4096];
        size_t n = 0;
        chain[0] = '\0';
        for (int i = 0; i < L->depth; i++)
            n += (size_t)snprintf(chain + n, n < sizeof chain ? sizeof chain - n : 0, "%s -> ", L->chain[i]);
        snprintf(chain + (n < sizeof chain ? n : sizeof chain - 1), n < sizeof chain ? sizeof chain - n : 1, "%s",
                 path);
        if (!real) bl_set_error("config %s: out of memory", path);
        else if (cycle) bl_set_error("%s:%d: _base_ cycle: %s", from, from_line, chain);
        else bl_set_error("%s:%d: _base_ chain deeper than %d files: %s", from, from_line, CONFIG_MAX_BASE_DEPTH, chain);
        free(real);
        free(text);
        return NULL;
    }
    const char *name = register_file(L->out, path);
    bl_config *own = name ? new_config(name) : NULL, *level = own ? new_config(name) : NULL;
    yaml_reader r = {.c = own, .file = name};
    int rc = level ? parse_text(&r, text) : BL_ERR;
    free(text);
    L->chain[L->depth] = name;
    L->real[L->depth++] = real;
    for (int i = 0; rc == BL_OK && i < r.n_bases; i++) {
        char full[4096];
        base_path(name, r.bases[i], full, sizeof full);
        bl_config *base = load_resolved(L, full, name, r.base_lines[i], r.bases[i]);
        rc = base ? merge_into(level, base) : BL_ERR;
        bl_config_free(base);
    }
    free(real);
    L->depth--;
    free_bases(&r);
    if (rc == BL_OK) rc = merge_into(level, own);
    bl_config_free(own);
    if (rc != BL_OK) {
        bl_config_free(level);
        return NULL;
    }
    return level;
}

bl_config *bl_config_load(const char *yaml_path) {
    BL_CHECK(yaml_path, "bl_config_load: NULL path");
    bl_config *out = new_config(yaml_path);
    if (!out) return NULL;
    base_loader L = {.out = out};
    bl_config *resolved = load_resolved(&L, yaml_path, NULL, 0, yaml_path);
    if (!resolved) {
        bl_config_free(out);
        return NULL;
    }
    /* The entries point at file names `out` owns. */
    out->entries = resolved->entries;
    out->count = resolved->count;
    out->cap = resolved->cap;
    resolved->entries = NULL;
    resolved->count = resolved->cap = 0;
    bl_config_free(resolved);
    return out;
}

void bl_config_free(bl_config *c) {
    if (!c) return;
    for (int i = 0; i < c->count; i++) {
        free(c->entries[i].key);
        free(c->entries[i].text);
    }
    free(c->entries);
    for (int i = 0; i < c->n_files; i++) free(c->files[i]);
    free(c->files);
    free(c->source);
    free(c);
}

const char *bl_config_source(const bl_config *c) { return c ? c->source : ""; }

const char *bl_config_text(const bl_config *c, const char *key) {
    const config_entry *e = c && key ? find_entry(c, key) : NULL;
    return e && e->has_value ? e->text : NULL;
}

/* ---- overrides and declarations ------------------------------------------------------------- */

int bl_config_set(bl_config *c, const char *assignment) {
    BL_CHECK_RC(c && assignment, "bl_config_set: NULL argument");
    const char *eq = strchr(assignment, '=');
    BL_CHECK_RC(eq && eq > assignment, "override '%s': expected section.key=value", assignment);
    char key[1024];
    size_t klen = (size_t)(eq - assignment);
    BL_CHECK_RC(klen < sizeof key, "override '%s': key too long", assignment);
    memcpy(key, assignment, klen);
    key[klen] = '\0';
    BL_CHECK_RC(strchr(key, ' ') == NULL && key[0] != '.' && key[klen - 1] != '.' && !strstr(key, ".."),
                "override '%s': malformed key '%s'", assignment, key);
    const char *value = eq + 1;
    bool quoted = false, is_list = false;
    char text[4096];
    size_t vlen = strlen(value);
    BL_CHECK_RC(vlen < sizeof text, "override '%s': value too long", assignment);
    if (vlen >= 2 && ((value[0] == '"' && value[vlen - 1] == '"') || (value[0] == '\'' && value[vlen - 1] == '\''))) {
        quoted = true;
        memcpy(text, value + 1, vlen - 2);
        text[vlen - 2] = '\0';
    } else {
        memcpy(text, value, vlen + 1);
        is_list = value[0] == '[';
    }
    config_entry *e = find_entry(c, key);
    if (!e) {
        e = add_entry(c, key);
        if (!e) return BL_ERR;
    }
    BL_TRY(set_text(c, e, text));
    e->quoted = quoted;
    e->is_list = is_list;
    e->has_value = quoted || !(text[0] == '\0' || strcmp(text, "~") == 0 || strcmp(text, "null") == 0);
    e->from_override = true;
    e->line = 0;
    double list[CONFIG_MAX_LIST];
    BL_CHECK_RC(!is_list || parse_list(text, list, CONFIG_MAX_LIST) >= 0,
                "override '%s': malformed list (expected [a, b, ...] of numbers)", assignment);
    if (is_list) {
        char canonical[4096];
        canonical_list(text, canonical, sizeof canonical);
        BL_TRY(set_text(c, e, canonical));
    }
    return e->declared ? check_type(c, e) : BL_OK;
}

int bl_config_declare(bl_config *c, const char *prefix, const bl_option *options, int n_options) {
    BL_CHECK_RC(c && (options || n_options == 0), "bl_config_declare: NULL argument");
    for (int i = 0; i < n_options; i++) {
        char key[1024];
        snprintf(key, sizeof key, "%s%s", prefix ? prefix : "", options[i].key);
        config_entry *e = find_entry(c, key);
        BL_CHECK_RC(!(e && e->declared), "config: option '%s' is declared twice", key);
        if (!e) {
            e = add_entry(c, key);
            if (!e) return BL_ERR;
        }
        e->declared = true;
        e->type = options[i].type;
        e->decl_order = c->n_declared++;
        if (!e->has_value && options[i].default_value) {
            char canonical[4096];
            if (options[i].type == BL_OPT_LIST) canonical_list(options[i].default_value, canonical, sizeof canonical);
            BL_TRY(set_text(c, e, options[i].type == BL_OPT_LIST ? canonical : options[i].default_value));
            e->has_value = true;
            e->is_list = options[i].type == BL_OPT_LIST;
            e->quoted = options[i].type == BL_OPT_STRING;
            e->line = 0;
            e->from_override = false;
        }
        BL_TRY(check_type(c, e));
    }
    return BL_OK;
}

int bl_config_check_unknown(const bl_config *c) {
    BL_CHECK_RC(c, "bl_config_check_unknown: NULL config");
    for (int i = 0; i < c->count; i++) {
        const config_entry *e = &c->entries[i];
        char where[600];
        BL_CHECK_RC(e->declared, "%s: unknown key '%s'", origin(c, e, where, sizeof where), e->key);
    }
    return BL_OK;
}

/* ---- getters -------------------------------------------------------------------------------- */

static const config_entry *value_of(const bl_config *c, const char *key, bl_opt_type type) {
    BL_CHECK(c && key, "config: NULL argument");
    const config_entry *e = find_entry(c, key);
    BL_CHECK(e && e->declared, "config %s: key '%s' is not declared", c->source, key);
    BL_CHECK(e->has_value, "config %s: key '%s' has no value", c->source, key);
    BL_CHECK(e->type == type, "config %s: key '%s' is %s, not %s", c->source, key, type_name(e->type),
             type_name(type));
    return e;
}

bool bl_config_has(const bl_config *c, const char *key) {
    const config_entry *e = c && key ? find_entry(c, key) : NULL;
    return e && e->has_value;
}

int64_t bl_config_int(const bl_config *c, const char *key) {
    const config_entry *e = value_of(c, key, BL_OPT_INT);
    int64_t v = 0;
    return e && parse_int(e->text, &v) ? v : 0;
}

double bl_config_float(const bl_config *c, const char *key) {
    const config_entry *e = value_of(c, key, BL_OPT_FLOAT);
    double v = NAN;
    return e && parse_float(e->text, &v) ? v : NAN;
}

bool bl_config_bool(const bl_config *c, const char *key) {
    const config_entry *e = value_of(c, key, BL_OPT_BOOL);
    bool v = false;
    return e && parse_bool(e->text, &v) ? v : false;
}

const char *bl_config_string(const bl_config *c, const char *key) {
    const config_entry *e = value_of(c, key, BL_OPT_STRING);
    return e ? e->text : NULL;
}

int bl_config_list(const bl_config *c, const char *key, double *out, int max) {
    const config_entry *e = value_of(c, key, BL_OPT_LIST);
    if (!e) return -1;
    double all[CONFIG_MAX_LIST];
    int n = parse_list(e->text, all, CONFIG_MAX_LIST);
    BL_CHECK_OR(-1, n >= 0 && n <= max, "config %s: key '%s' holds more than %d values", c->source, key, max);
    memcpy(out, all, (size_t)n * sizeof *out);
    return n;
}

const char *bl_config_first_difference(const bl_config *a, const bl_config *b) {
    for (int pass = 0; pass < 2; pass++) {
        const bl_config *x = pass ? b : a, *y = pass ? a : b;
        for (int i = 0; i < x->count; i++) {
            const config_entry *e = &x->entries[i], *f = find_entry(y, e->key);
            if (!e->has_value && !(f && f->has_value)) continue;
            if (!f || e->has_value != f->has_value || strcmp(e->text, f->text) != 0) return e->key;
        }
    }
    return NULL;
}

/* ---- writing -------------------------------------------------------------------------------- */

/* Rank of the key prefix made of the first `depth` components: the earliest declaration among keys
 * sharing it. Sorting by these ranks, level by level, keeps each nested map in one piece. */
static int prefix_rank(const bl_config *c, const char *key, int depth) {
    size_t len = 0;
    for (int d = 0; d < depth; d++) {
        const char *dot = strchr(key + len, '.');
        len = dot ? (size_t)(dot - key) + 1 : strlen(key);
    }
    int best = 1 << 30;
    for (int i = 0; i < c->count; i++) {
        const config_entry *e = &c->entries[i];
        if (e->declared && e->has_value && strncmp(e->key, key, len) == 0 && e->decl_order < best) best = e->decl_order;
    }
    return best;
}

static int count_parts(const char *key) {
    int n = 1;
    for (const char *p = key; *p; p++) n += *p == '.';
    return n;
}

static const bl_config *sort_config;
static int compare_for_writing(const void *pa, const void *pb) {
    const config_entry *a = *(const config_entry *const *)pa, *b = *(const config_entry *const *)pb;
    int depth = count_parts(a->key) > count_parts(b->key) ? count_parts(a->key) : count_parts(b->key);
    for (int d = 1; d <= depth; d++) {
        int ra = prefix_rank(sort_config, a->key, d), rb = prefix_rank(sort_config, b->key, d);
        if (ra != rb) return ra < rb ? -1 : 1;
    }
    return 0;
}

/* Number of enclosing maps two dotted keys have in common ("a.b.c" and "a.b.d" share 2). */
static int shared_maps(const char *a, const char *b) {
    int shared = 0;
    for (;;) {
        const char *da = strchr(a, '.'), *db = strchr(b, '.');
        if (!da || !db || da - a != db - b || strncmp(a, b, (size_t)(da - a)) != 0) return shared;
        shared++;
        a = da + 1;
        b = db + 1;
    }
}

static void write_yaml_string(FILE *f, const char *s) {
    fputc('"', f);
    for (const char *p = s; *p; p++) {
        if (*p == '"' || *p == '\\') fprintf(f, "\\%c", *p);
        else if (*p == '\n') fputs("\\n", f);
        else if ((unsigned char)*p < 0x20) fprintf(f, "\\x%02x", (unsigned char)*p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

int bl_config_write(const bl_config *c, const char *path) {
    BL_CHECK_RC(c && path, "bl_config_write: NULL argument");
    const config_entry **order = malloc((size_t)(c->count ? c->count : 1) * sizeof *order);
    BL_CHECK_RC(order, "config: out of memory");
    int n = 0;
    for (int i = 0; i < c->count; i++)
        if (c->entries[i].declared && c->entries[i].has_value) order[n++] = &c->entries[i];
    sort_config = c;
    qsort(order, (size_t)n, sizeof *order, compare_for_writing);

    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    if (!f) {
        free(order);
        BL_CHECK_RC(false, "cannot write %s: out of memory", path);
    }
    fprintf(f, "# resolved config (every key, defaults filled in), from %s\n", c->source);
    const char *prev = "";
    for (int i = 0; i < n; i++) {
        const config_entry *e = order[i];
        /* Open the maps this key does not share with the previous one. */
        int shared = shared_maps(prev, e->key), depth = 0;
        const char *part = e->key;
        for (const char *dot; (dot = strchr(part, '.')); part = dot + 1, depth++)
            if (depth >= shared) fprintf(f, "%*s%.*s:\n", 2 * depth, "", (int)(dot - part), part);
        fprintf(f, "%*s%s: ", 2 * depth, "", part);
        if (e->type == BL_OPT_STRING) write_yaml_string(f, e->text);
        else fputs(e->text, f);
        fputc('\n', f);
        prev = e->key;
    }
    free(order);
    bool ok = !ferror(f);
    ok = fclose(f) == 0 && ok;
    int rc = ok ? bl_file_write_atomic(path, text, len) : BL_ERR;
    if (!ok) bl_set_error("cannot write %s: out of memory", path);
    free(text);
    return rc;
}
