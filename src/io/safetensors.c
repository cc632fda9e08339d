/* The safetensors format, read and written (see include/ballast/io.h). Reading validates the whole
 * header before allocating any tensor, then streams each tensor's bytes straight into its own
 * (aligned) memory: the data section of a file written elsewhere need not be aligned, and nothing
 * is held twice. Writing goes to a temporary file that is renamed over the target only once every
 * byte is known to be on disk. */
#include "ballast/io.h"

#include "core/internal.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The data is raw little-endian, which is also this machine's order: read and write it as is. */
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

/* The reference implementation's bound: a larger header is refused before it is read. */
#define MAX_HEADER_BYTES 100000000ull

static const struct {
    const char *name;
    bl_dtype dtype;
} dtype_table[] = {{"F32", BL_F32}, {"F64", BL_F64}, {"I32", BL_I32}, {"I64", BL_I64},
                   {"U8", BL_U8},   {"BOOL", BL_BOOL}, {"F16", BL_F16}, {"BF16", BL_BF16}};
#define N_DTYPES (int)(sizeof dtype_table / sizeof dtype_table[0])

static const char *format_dtype(bl_dtype dt) {
    for (int i = 0; i < N_DTYPES; i++)
        if (dtype_table[i].dtype == dt) return dtype_table[i].name;
    return NULL;
}

static int parse_dtype(const char *name, bl_dtype *dt) {
    for (int i = 0; i < N_DTYPES; i++)
        if (strcmp(dtype_table[i].name, name) == 0) {
            *dt = dtype_table[i].dtype;
            return BL_OK;
        }
    return BL_ERR;
}

/* Where a name is stored (inside an entry struct), so names can be sorted without moving entries. */
typedef const char *const *name_ref;

static int compare_names(const void *a, const void *b) {
    return strcmp(**(const name_ref *)a, **(const name_ref *)b);
}

/* The first name that occurs twice among `n` names, or NULL. `names` is sorted in place. */
static const char *first_duplicate(name_ref *names, int n) {
    qsort(names, (size_t)n, sizeof names[0], compare_names);
    for (int i = 1; i < n; i++)
        if (strcmp(*names[i], *names[i - 1]) == 0) return *names[i];
    return NULL;
}

/* ---- reading ---- */

typedef struct {
    const char *name;
    bl_dtype dtype;
    int ndim;
    int64_t shape[BL_MAX_DIMS];
    uint64_t begin, end;
} tensor_info;

static int64_t integer_or_neg(const bl__json *v) {
    return v && v->type == BL_JSON_NUMBER && v->is_integer && v->integer >= 0 ? v->integer : -1;
}

/* Fills `ti` from the header entry `v` (named v->key), checking every field. */
static int parse_tensor_info(const char *path, const bl__json *v, tensor_info *ti) {
    const char *name = v->key;
    ti->name = name;
    BL_CHECK_RC(v->type == BL_JSON_OBJECT, "%s: corrupt header: entry '%s' is not an object", path, name);
    const bl__json *dtype = bl__json_get(v, "dtype"), *shape = bl__json_get(v, "shape"),
                   *offsets = bl__json_get(v, "data_offsets");
    BL_CHECK_RC(dtype && dtype->type == BL_JSON_STRING, "%s: corrupt header: tensor '%s' has no dtype string", path,
                name);
    BL_CHECK_RC(parse_dtype(dtype->string, &ti->dtype) == BL_OK,
                "%s: tensor '%s' has dtype '%s', which is not supported (F32 F64 I32 I64 U8 BOOL F16 BF16)", path,
                name, dtype->string);
    BL_CHECK_RC(shape && shape->type == BL_JSON_ARRAY, "%s: corrupt header: tensor '%s' has no shape array", path,
                name);
    BL_CHECK_RC(shape->count <= BL_MAX_DIMS, "%s: tensor '%s' has %d dims, at most %d are supported", path, name,
                shape->count, BL_MAX_DIMS);
    ti->ndim = shape->count;
    int64_t numel = 1;
    int d = 0;
    for (const bl__json *s = shape->child; s; s = s->next, d++) {
        ti->shape[d] = integer_or_neg(s);
        BL_CHECK_RC(ti->shape[d] >= 0, "%s: corrupt header: tensor '%s' has an invalid size in dim %d", path, name, d);
        BL_CHECK_RC(!__builtin_mul_overflow(numel, ti->shape[d], &numel), "%s: tensor '%s' is impossibly large",
                    path, name);
    }
    BL_CHECK_RC(offsets && offsets->type == BL_JSON_ARRAY && offsets->count == 2 &&
                    integer_or_neg(offsets->child) >= 0 && integer_or_neg(offsets->child->next) >= 0,
                "%s: corrupt header: tensor '%s' needs data_offsets [begin, end] of two non-negative integers", path,
                name);
    ti->begin = (uint64_t)offsets->child->integer;
    ti->end = (uint64_t)offsets->child->next->integer;
    BL_CHECK_RC(ti->begin <= ti->end, "%s: corrupt header: tensor '%s' has data_offsets [%llu, %llu] (end before begin)",
                path, name, (unsigned long long)ti->begin, (unsigned long long)ti->end);
    uint64_t bytes;
    BL_CHECK_RC(!__builtin_mul_overflow((uint64_t)numel, (uint64_t)bl_dtype_size(ti->dtype), &bytes),
                "%s: tensor '%s' is impossibly large", path, name);
    BL_CHECK_RC(ti->end - ti->begin == bytes,
                "%s: corrupt header: tensor '%s' (%s, %lld elements) should have %llu bytes, data_offsets [%llu, %llu] "
                "give %llu",
                path, name, dtype->string, (long long)numel, (unsigned long long)bytes, (unsigned long long)ti->begin,
                (unsigned long long)ti->end, (unsigned long long)(ti->end - ti->begin));
    return BL_OK;
}

static int compare_offsets(const void *a, const void *b) {
    const tensor_info *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Sorted by offset, the tensors must tile [0, data_bytes) exactly: the rule of the reference
 * implementation, which also catches overlaps and truncation. */
static int check_tiling(const char *path, tensor_info *ti, int n, uint64_t data_bytes) {
    qsort(ti, (size_t)n, sizeof *ti, compare_offsets);
    uint64_t at = 0;
    for (int i = 0; i < n; i++) {
        BL_CHECK_RC(ti[i].begin >= at, "%s: corrupt header: tensor '%s' (bytes %llu..%llu) overlaps tensor '%s'", path,
                    ti[i].name, (unsigned long long)ti[i].begin, (unsigned long long)ti[i].end, ti[i - 1].name);
        BL_CHECK_RC(ti[i].begin == at, "%s: corrupt header: %llu unused bytes before tensor '%s'", path,
                    (unsigned long long)(ti[i].begin - at), ti[i].name);
        BL_CHECK_RC(ti[i].end <= data_bytes,
                    "%s: tensor '%s' needs bytes %llu..%llu of the data section, which has %llu: the file is truncated "
                    "or the header is corrupt",
                    path, ti[i].name, (unsigned long long)ti[i].begin, (unsigned long long)ti[i].end,
                    (unsigned long long)data_bytes);
        at = ti[i].end;
    }
    BL_CHECK_RC(at == data_bytes, "%s: corrupt file: %llu bytes after the last tensor", path,
                (unsigned long long)(data_bytes - at));
    return BL_OK;
}

static int read_exact(FILE *f, void *buf, size_t n, const char *path, const char *what) {
    if (n == 0 || fread(buf, 1, n, f) == n) return BL_OK;
    BL_CHECK_RC(!ferror(f), "%s: reading %s failed: %s", path, what, strerror(errno));
    BL_CHECK_RC(false, "%s: the file ends inside %s (truncated)", path, what);
}

/* Copies names and metadata into one block and fills out->meta. */
static int collect_strings(const char *path, const bl__json *metadata, tensor_info *ti, int n, bl_safetensors *out) {
    size_t bytes = 0;
    int n_meta = metadata ? metadata->count : 0;
    for (int i = 0; i < n; i++) bytes += strlen(ti[i].name) + 1;
    for (const bl__json *m = metadata ? metadata->child : NULL; m; m = m->next)
        bytes += strlen(m->key) + strlen(m->string) + 2;
    out->strings = malloc(bytes + 1);
    out->meta = calloc((size_t)n_meta + 1, sizeof *out->meta);
    out->entries = calloc((size_t)n + 1, sizeof *out->entries);
    BL_CHECK_RC(out->strings && out->meta && out->entries, "%s: out of memory reading the header", path);
    char *s = out->strings;
    for (int i = 0; i < n; i++) {
        size_t len = strlen(ti[i].name) + 1;
        ti[i].name = memcpy(s, ti[i].name, len);
        s += len;
    }
    for (const bl__json *m = metadata ? metadata->child : NULL; m; m = m->next) {
        size_t kl = strlen(m->key) + 1, vl = strlen(m->string) + 1;
        bl_safetensors_meta *dst = &out->meta[out->n_meta++];
        dst->key = memcpy(s, m->key, kl);
        dst->value = memcpy(s + kl, m->string, vl);
        s += kl + vl;
    }
    return BL_OK;
}

/* Validates the parsed header, then reads every tensor. */
static int read_tensors(FILE *f, const char *path, const bl__json *root, uint64_t data_bytes, bl_safetensors *out) {
    BL_CHECK_RC(root->type == BL_JSON_OBJECT, "%s: corrupt header: not a JSON object", path);
    const bl__json *metadata = NULL;
    int n = 0;
    for (const bl__json *m = root->child; m; m = m->next) {
        if (strcmp(m->key, "__metadata__") != 0) {
            n++;
            continue;
        }
        BL_CHECK_RC(!metadata, "%s: corrupt header: two __metadata__ entries", path);
        BL_CHECK_RC(m->type == BL_JSON_OBJECT || m->type == BL_JSON_NULL,
                    "%s: corrupt header: __metadata__ is not an object", path);
        for (const bl__json *kv = m->child; kv; kv = kv->next)
            BL_CHECK_RC(kv->type == BL_JSON_STRING, "%s: corrupt header: metadata value of '%s' is not a string", path,
                        kv->key);
        metadata = m->type == BL_JSON_OBJECT ? m : NULL;
    }
    tensor_info *ti = calloc((size_t)n + 1, sizeof *ti);
    name_ref *names = calloc((size_t)n + 1, sizeof *names);
    int rc = ti && names ? BL_OK : BL_ERR;
    if (rc != BL_OK) bl_set_error("%s: out of memory reading the header", path);
    int k = 0;
    for (const bl__json *m = root->child; m && rc == BL_OK; m = m->next)
        if (strcmp(m->key, "__metadata__") != 0) rc = parse_tensor_info(path, m, &ti[k++]);
    if (rc == BL_OK) {
        for (int i = 0; i < n; i++) names[i] = &ti[i].name;
        const char *dup = first_duplicate(names, n);
        if (dup) {
            bl_set_error("%s: corrupt header: tensor name '%s' appears twice", path, dup);
            rc = BL_ERR;
        }
    }
    if (rc == BL_OK) rc = check_tiling(path, ti, n, data_bytes);
    if (rc == BL_OK) rc = collect_strings(path, metadata, ti, n, out);
    for (int i = 0; i < n && rc == BL_OK; i++) {
        bl_tensor *t = bl_tensor_new_persistent(ti[i].dtype, ti[i].ndim, ti[i].shape);
        if (!t) {
            rc = BL_ERR;
            break;
        }
        t->name = ti[i].name;
        out->entries[out->count++] = (bl_safetensors_entry){ti[i].name, t};
        char what[BL_PARAM_NAME_MAX + 16];
        snprintf(what, sizeof what, "tensor '%s'", ti[i].name);
        rc = read_exact(f, t->data, ti[i].end - ti[i].begin, path, what);
    }
    free(names);
    free(ti);
    return rc;
}

static int read_file(FILE *f, const char *path, bl_safetensors *out) {
    struct stat sb;
    BL_CHECK_RC(fstat(fileno(f), &sb) == 0, "%s: cannot stat: %s", path, strerror(errno));
    BL_CHECK_RC(S_ISREG(sb.st_mode), "%s: not a regular file", path);
    uint64_t size = (uint64_t)sb.st_size;
    BL_CHECK_RC(size >= 8, "%s: not a safetensors file (%llu bytes, less than the 8-byte header length)", path,
                (unsigned long long)size);
    unsigned char len_bytes[8];
    BL_TRY(read_exact(f, len_bytes, 8, path, "the header length"));
    uint64_t header_len = 0;
    for (int i = 7; i >= 0; i--) header_len = header_len << 8 | len_bytes[i];
    BL_CHECK_RC(header_len <= MAX_HEADER_BYTES, "%s: header length %llu exceeds the limit of %llu bytes", path,
                (unsigned long long)header_len, MAX_HEADER_BYTES);
    BL_CHECK_RC(header_len <= size - 8,
                "%s: header length %llu exceeds the %llu bytes after it: truncated or not a safetensors file", path,
                (unsigned long long)header_len, (unsigned long long)(size - 8));
    BL_CHECK_RC(header_len >= 2, "%s: header length %llu is too small for a JSON object", path,
                (unsigned long long)header_len);
    char *header = malloc(header_len);
    BL_CHECK_RC(header, "%s: out of memory for a %llu-byte header", path, (unsigned long long)header_len);
    int rc = read_exact(f, header, header_len, path, "the header");
    if (rc == BL_OK && header[0] != '{') {
        bl_set_error("%s: corrupt header: does not start with '{'", path);
        rc = BL_ERR;
    }
    if (rc == BL_OK) {
        bl__json_pool pool = {0};
        char err[256];
        bl__json *root = bl__json_parse(header, header_len, &pool, err, sizeof err);
        if (!root) {
            bl_set_error("%s: corrupt header: invalid JSON %s", path, err);
            rc = BL_ERR;
        } else {
            rc = read_tensors(f, path, root, size - 8 - header_len, out);
        }
        bl__json_pool_free(&pool);
    }
    free(header);
    return rc;
}

int bl_safetensors_load(const char *path, bl_safetensors *out) {
    BL_CHECK_RC(path && out, "bl_safetensors_load: NULL argument");
    memset(out, 0, sizeof *out);
    FILE *f = fopen(path, "rb");
    BL_CHECK_RC(f, "%s: cannot open: %s", path, strerror(errno));
    int rc = read_file(f, path, out);
    fclose(f);
    if (rc != BL_OK) bl_safetensors_free(out);
    return rc;
}

void bl_safetensors_free(bl_safetensors *st) {
    if (!st) return;
    for (int i = 0; i < st->count; i++) bl_tensor_free(st->entries[i].tensor);
    free(st->entries);
    free(st->meta);
    free(st->strings);
    memset(st, 0, sizeof *st);
}

bl_tensor *bl_safetensors_get(const bl_safetensors *st, const char *name) {
    for (int i = 0; st && i < st->count; i++)
        if (strcmp(st->entries[i].name, name) == 0) return st->entries[i].tensor;
    return NULL;
}

const char *bl_safetensors_meta_get(const bl_safetensors *st, const char *key) {
    for (int i = 0; st && i < st->n_meta; i++)
        if (strcmp(st->meta[i].key, key) == 0) return st->meta[i].value;
    return NULL;
}

/* ---- writing ---- */

static int check_entries(const char *path, int n, const bl_safetensors_entry *entries, const char *const *metadata) {
    BL_CHECK_RC(n >= 0 && (n == 0 || entries), "%s: invalid tensor list (%d entries)", path, n);
    for (int i = 0; i < n; i++) {
        const bl_safetensors_entry *e = &entries[i];
        BL_CHECK_RC(e->name && e->name[0], "%s: tensor %d has no name", path, i);
        BL_CHECK_RC(strcmp(e->name, "__metadata__") != 0, "%s: '__metadata__' is reserved, not a tensor name", path);
        BL_CHECK_RC(e->tensor, "%s: tensor '%s' is NULL", path, e->name);
        BL_CHECK_RC(format_dtype(e->tensor->dtype), "%s: tensor '%s' has an unknown dtype %d", path, e->name,
                    (int)e->tensor->dtype);
    }
    for (int i = 0; metadata && metadata[i]; i += 2)
        BL_CHECK_RC(metadata[i + 1], "%s: metadata key '%s' has no value", path, metadata[i]);
    name_ref *names = malloc(((size_t)n + 1) * sizeof *names);
    BL_CHECK_RC(names, "%s: out of memory", path);
    for (int i = 0; i < n; i++) names[i] = &entries[i].name;
    const char *dup = first_duplicate(names, n);
    free(names);
    BL_CHECK_RC(!dup, "%s: tensor name '%s' appears twice", path, dup);
    return BL_OK;
}

/* The JSON header, padded with spaces so the data section starts 8-byte aligned, as the reference
 * writer does: readers that map the file can then view F64/I64 data in place. */
static int build_header(const char *path, int n, const bl_safetensors_entry *entries, const char *const *metadata,
                        bl__text *h) {
    bl__text_append(h, "{");
    if (metadata && metadata[0]) {
        bl__text_append(h, "\"__metadata__\":{");
        for (int i = 0; metadata[i]; i += 2) {
            if (i) bl__text_append(h, ",");
            bl__text_append_json_string(h, metadata[i]);
            bl__text_append(h, ":");
            bl__text_append_json_string(h, metadata[i + 1]);
        }
        bl__text_append(h, "}");
        if (n) bl__text_append(h, ",");
    }
    uint64_t offset = 0;
    for (int i = 0; i < n; i++) {
        const bl_tensor *t = entries[i].tensor;
        if (i) bl__text_append(h, ",");
        bl__text_append_json_string(h, entries[i].name);
        bl__text_printf(h, ":{\"dtype\":\"%s\",\"shape\":[", format_dtype(t->dtype));
        for (int d = 0; d < t->ndim; d++) bl__text_printf(h, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        uint64_t end = offset + bl_nbytes(t);
        bl__text_printf(h, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset, (unsigned long long)end);
        offset = end;
    }
    bl__text_append(h, "}");
    while ((8 + h->len) % 8) bl__text_append(h, " ");
    BL_CHECK_RC(!h->failed, "%s: out of memory building the header", path);
    return BL_OK;
}

typedef struct {
    FILE *f;
    const char *path;
    int error; /* errno of the first failure, 0 while all is well */
} writer;

static void write_bytes(writer *w, const void *p, size_t n) {
    if (w->error || n == 0) return;
    errno = 0;
    if (fwrite(p, 1, n, w->f) != n) w->error = errno ? errno : EIO;
}

static void write_tensor(writer *w, const bl_tensor *t) {
    if (w->error) return;
    if (bl_is_contiguous(t)) {
        write_bytes(w, t->data, bl_nbytes(t));
        return;
    }
    bl_tensor *packed = bl_tensor_new_persistent(t->dtype, t->ndim, t->shape);
    if (!packed || bl_copy_(packed, t) != BL_OK)
        w->error = ENOMEM;
    else
        write_bytes(w, packed->data, bl_nbytes(packed));
    bl_tensor_free(packed);
}

/* After the rename, syncing the directory makes the new name itself durable. A filesystem that
 * cannot sync directories still holds a complete file, so failures here are not errors. */
static void sync_parent_dir(const char *path) {
    char dir[4096];
    const char *slash = strrchr(path, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else
        snprintf(dir, sizeof dir, "%.*s", slash == path ? 1 : (int)(slash - path), path);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

int bl_safetensors_save(const char *path, int n, const bl_safetensors_entry *entries, const char *const *metadata) {
    BL_CHECK_RC(path && path[0], "bl_safetensors_save: no path");
    BL_TRY(check_entries(path, n, entries, metadata));
    bl__text header = {0};
    if (build_header(path, n, entries, metadata, &header) != BL_OK) {
        bl__text_free(&header);
        return BL_ERR;
    }
    size_t tmp_len = strlen(path) + 32;
    char *tmp = malloc(tmp_len);
    if (!tmp) {
        bl__text_free(&header);
        BL_CHECK_RC(false, "%s: out of memory", path);
    }
    snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid());
    writer w = {fopen(tmp, "wb"), path, 0};
    if (!w.f) {
        int e = errno;
        bl__text_free(&header);
        bl_set_error("%s: cannot create '%s': %s", path, tmp, strerror(e));
        free(tmp);
        return BL_ERR;
    }
    unsigned char len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (unsigned char)((uint64_t)header.len >> (8 * i));
    write_bytes(&w, len_bytes, 8);
    write_bytes(&w, header.data, header.len);
    for (int i = 0; i < n; i++) write_tensor(&w, entries[i].tensor);
    if (!w.error && fflush(w.f) != 0) w.error = errno;
    if (!w.error && fsync(fileno(w.f)) != 0) w.error = errno;
    if (fclose(w.f) != 0 && !w.error) w.error = errno;
    if (!w.error && rename(tmp, path) != 0) w.error = errno;
    if (w.error) {
        remove(tmp);
        bl_set_error("%s: writing failed: %s (any previous file of this name is unchanged)", path, strerror(w.error));
    } else {
        sync_parent_dir(path);
    }
    free(tmp);
    bl__text_free(&header);
    return w.error ? BL_ERR : BL_OK;
}
