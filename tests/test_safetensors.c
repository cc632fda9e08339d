/* safetensors reading and writing: round trips of every dtype, parameter-store checkpoints with
 * their refusals, hand-made corrupt files (each must give a clear error naming the file, never a
 * crash), every truncation and random corruption of a valid file, failed writes that must leave
 * nothing behind, and interop with PyTorch through tools/torch_safetensors_roundtrip.py. */
#include "test.h"

#include <dirent.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

/* ---- files in a private temporary directory, removed at exit ---- */

static char temp_dir[256];

static void remove_temp_dir(void) {
    DIR *d = opendir(temp_dir);
    if (!d) return;
    struct dirent *e;
    char path[600];
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            snprintf(path, sizeof path, "%s/%s", temp_dir, e->d_name);
            remove(path);
        }
    closedir(d);
    rmdir(temp_dir);
}

/* A path in the temporary directory (static storage, a few in rotation). */
static const char *temp_path(const char *name) {
    static char paths[4][400];
    static int next;
    if (!temp_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(temp_dir, sizeof temp_dir, "%s/ballast_st_XXXXXX", base && base[0] ? base : "/tmp");
        if (!mkdtemp(temp_dir)) return name;
        atexit(remove_temp_dir);
    }
    char *p = paths[next++ & 3];
    snprintf(p, 400, "%s/%s", temp_dir, name);
    return p;
}

static bool file_exists(const char *path) { return access(path, F_OK) == 0; }

/* Writes a file by hand: the 8-byte length (header_len, or strlen(header) when negative), the
 * header text and `data_len` bytes of data. */
static void write_raw(const char *path, const char *header, long long header_len, const void *data, size_t data_len) {
    FILE *f = fopen(path, "wb");
    CHECK(f);
    if (!f) return;
    uint64_t n = header_len < 0 ? strlen(header) : (uint64_t)header_len;
    unsigned char len[8];
    for (int i = 0; i < 8; i++) len[i] = (unsigned char)(n >> (8 * i));
    fwrite(len, 1, 8, f);
    fwrite(header, 1, strlen(header), f);
    if (data_len) fwrite(data, 1, data_len, f);
    fclose(f);
}

static void expect_load_error(const char *path, const char *needle, const char *label) {
    bl_clear_error();
    bl_safetensors st;
    CHECK(bl_safetensors_load(path, &st) == BL_ERR, "%s: loaded", label);
    CHECK(st.count == 0 && st.entries == NULL, "%s: output not cleared", label);
    CHECK(strstr(bl_last_error(), path), "%s: error does not name the file", label);
    CHECK(strstr(bl_last_error(), needle), "%s: error lacks '%s'", label, needle);
    bl_clear_error();
}

/* ---- the tensors of the interop test (tools/torch_safetensors_roundtrip.py computes the same) ---- */

#define N_INTEROP 12
static const char *const interop_meta[] = {
    "format", "pt", "note", "quote\" backslash\\ newline\n tab\t unicode \xc3\xbc\xe4\xb8\xad\xf0\x9f\x98\x80", NULL};

static bl_tensor *filled(bl_dtype dt, int ndim, const int64_t *shape, double (*f)(int64_t)) {
    bl_tensor *t = bl_empty(dt, ndim, shape);
    for (int64_t i = 0; i < bl_numel(t); i++) bl_set_flat(t, i, f(i));
    return t;
}

static double v_f32(int64_t i) { return (double)(i - 7) * 0.25; }
static double v_f64(int64_t i) { return (double)i / 3.0 - 1; }
static double v_i32(int64_t i) { return (double)(-7 * i + 3); }
static double v_u8(int64_t i) { return (double)(i * 40); }
static double v_bool(int64_t i) { return i % 3 == 0; }
static double v_f16(int64_t i) { return (double)i * 0.5 - 1; }
static double v_bf16(int64_t i) { return (double)i * 2 - 1.5; }
static double v_base(int64_t i) { return (double)i * 1.5; }

static void make_interop_tensors(bl_safetensors_entry *e) {
    bl_tensor *i64 = bl_empty(BL_I64, BL_SHAPE(4));
    for (int64_t i = 0; i < 4; i++) ((int64_t *)i64->data)[i] = i * 3000000019LL - 5;
    bl_tensor *tracked = bl_empty(BL_I64, 0, NULL);
    *(int64_t *)tracked->data = 12345678901LL;
    e[0] = (bl_safetensors_entry){"f32", filled(BL_F32, BL_SHAPE(3, 5), v_f32)};
    e[1] = (bl_safetensors_entry){"f64", filled(BL_F64, BL_SHAPE(2, 3, 2), v_f64)};
    e[2] = (bl_safetensors_entry){"i64", i64};
    e[3] = (bl_safetensors_entry){"i32", filled(BL_I32, BL_SHAPE(5), v_i32)};
    e[4] = (bl_safetensors_entry){"u8", filled(BL_U8, BL_SHAPE(6), v_u8)};
    e[5] = (bl_safetensors_entry){"bool", filled(BL_BOOL, BL_SHAPE(7), v_bool)};
    e[6] = (bl_safetensors_entry){"f16", filled(BL_F16, BL_SHAPE(2, 2), v_f16)};
    e[7] = (bl_safetensors_entry){"bf16", filled(BL_BF16, BL_SHAPE(3), v_bf16)};
    e[8] = (bl_safetensors_entry){"scalar", bl_full(BL_F32, 0, NULL, 3.5)};
    e[9] = (bl_safetensors_entry){"empty", bl_zeros(BL_F32, BL_SHAPE(0, 4))};
    e[10] = (bl_safetensors_entry){"transposed", bl_transpose(filled(BL_F32, BL_SHAPE(3, 4), v_base), 0, 1)};
    e[11] = (bl_safetensors_entry){"layer1.0.bn1.num_batches_tracked", tracked};
}

/* Same dtype, shape and values (compared exactly, through the logical order). */
static bool same_tensor(const bl_tensor *a, const bl_tensor *b) {
    if (!a || !b || a->dtype != b->dtype || !bl_same_shape(a, b)) return false;
    for (int64_t i = 0; i < bl_numel(a); i++)
        if (bl_get_flat(a, i) != bl_get_flat(b, i)) return false;
    /* I64 values may exceed double's 53 bits: compare the stored integers */
    if (a->dtype == BL_I64 && bl_is_contiguous(a) && bl_is_contiguous(b))
        return memcmp(a->data, b->data, bl_nbytes(a)) == 0;
    return true;
}

static void test_roundtrip_all_dtypes(void) {
    bl_safetensors_entry e[N_INTEROP];
    make_interop_tensors(e);
    CHECK(!bl_is_contiguous(e[10].tensor));
    const char *path = temp_path("roundtrip.safetensors");
    CHECK(bl_safetensors_save(path, N_INTEROP, e, interop_meta) == BL_OK);
    bl_safetensors st;
    CHECK(bl_safetensors_load(path, &st) == BL_OK);
    CHECK(st.count == N_INTEROP);
    for (int i = 0; i < N_INTEROP && i < st.count; i++) {
        /* written in the given order, so the file order is the same */
        CHECK(strcmp(st.entries[i].name, e[i].name) == 0, "entry %d is '%s'", i, st.entries[i].name);
        CHECK(same_tensor(st.entries[i].tensor, e[i].tensor), "tensor '%s' differs", e[i].name);
        CHECK(bl_is_contiguous(st.entries[i].tensor) && st.entries[i].tensor->persistent);
        CHECK(((uintptr_t)st.entries[i].tensor->data & 15) == 0, "tensor '%s' data not aligned", e[i].name);
    }
    CHECK(st.n_meta == 2);
    CHECK(bl_safetensors_meta_get(&st, "format") && strcmp(bl_safetensors_meta_get(&st, "format"), "pt") == 0);
    CHECK(bl_safetensors_meta_get(&st, "note") && strcmp(bl_safetensors_meta_get(&st, "note"), interop_meta[3]) == 0);
    CHECK(bl_safetensors_get(&st, "missing") == NULL && !bl_last_error()[0]);
    bl_safetensors_free(&st);
    /* the data section starts 8-byte aligned, as the reference writer makes it */
    FILE *f = fopen(path, "rb");
    unsigned char len[8] = {0};
    CHECK(f && fread(len, 1, 8, f) == 8);
    if (f) fclose(f);
    CHECK((8 + len[0]) % 8 == 0);
    /* an empty file set round-trips too */
    CHECK(bl_safetensors_save(path, 0, NULL, NULL) == BL_OK);
    CHECK(bl_safetensors_load(path, &st) == BL_OK && st.count == 0 && st.n_meta == 0);
    bl_safetensors_free(&st);
}

/* ---- parameter-store checkpoints ---- */

/* A store like a small network's: a conv, a BatchNorm with its buffers, and optionally more. */
static void make_store(bl_params *ps, int64_t conv_out, bool with_fc, bool with_var, bl_dtype tracked_dtype) {
    bl_params_init(ps);
    bl_params_add(ps, "conv1.weight", BL_SHAPE(conv_out, 3, 3, 3));
    bl_params_add(ps, "bn1.weight", BL_SHAPE(4));
    bl_params_add(ps, "bn1.bias", BL_SHAPE(4));
    bl_params_add_buffer(ps, "bn1.running_mean", BL_F32, BL_SHAPE(4));
    if (with_var) bl_params_add_buffer(ps, "bn1.running_var", BL_F32, BL_SHAPE(4));
    bl_params_add_buffer(ps, "bn1.num_batches_tracked", tracked_dtype, 0, NULL);
    if (with_fc) bl_params_add(ps, "fc.bias", BL_SHAPE(10));
    CHECK(bl_params_finalize(ps) == BL_OK);
}

static void randomize(bl_params *ps, uint64_t seed) {
    bl_rng r = bl_rng_make(seed, 3);
    for (int i = 0; i < ps->count; i++) {
        bl_tensor *t = ps->entries[i].tensor;
        if (t->dtype == BL_F32) bl_fill_normal_(t, &r, 0, 1);
        else bl_fill_(t, (double)bl_rng_below(&r, 1000));
    }
}

static bool stores_equal(const bl_params *a, const bl_params *b) {
    for (int i = 0; i < a->count; i++) {
        const bl_tensor *t = bl_params_find(b, a->entries[i].name);
        if (!same_tensor(a->entries[i].tensor, t)) return false;
    }
    return true;
}

static void test_params_roundtrip(void) {
    bl_params a, b;
    make_store(&a, 4, false, true, BL_I64);
    make_store(&b, 4, false, true, BL_I64);
    randomize(&a, 1);
    const char *path = temp_path("model.safetensors");
    const char *meta[] = {"epoch", "7", NULL};
    CHECK(bl_params_save(&a, path, meta) == BL_OK);
    CHECK(bl_params_load(&b, path, true) == BL_OK);
    CHECK(stores_equal(&a, &b));
    bl_safetensors st;
    CHECK(bl_safetensors_load(path, &st) == BL_OK);
    CHECK(st.count == a.count);
    CHECK(bl_safetensors_get(&st, "bn1.num_batches_tracked") &&
          bl_safetensors_get(&st, "bn1.num_batches_tracked")->dtype == BL_I64);
    CHECK(bl_safetensors_meta_get(&st, "epoch") && strcmp(bl_safetensors_meta_get(&st, "epoch"), "7") == 0);
    bl_safetensors_free(&st);
    bl_params_free(&a);
    bl_params_free(&b);
}

static void test_params_load_refusals(void) {
    bl_params saved, other;
    make_store(&saved, 4, false, true, BL_I64);
    randomize(&saved, 2);
    const char *path = temp_path("refusals.safetensors");
    CHECK(bl_params_save(&saved, path, NULL) == BL_OK);

    /* the model has a tensor the file lacks */
    make_store(&other, 4, true, true, BL_I64);
    randomize(&other, 3);
    float fc0 = ((float *)bl_params_find(&other, "fc.bias")->data)[0];
    float conv0 = ((float *)bl_params_find(&other, "conv1.weight")->data)[0];
    CHECK(bl_params_load(&other, path, true) == BL_ERR);
    CHECK(strstr(bl_last_error(), path) && strstr(bl_last_error(), "'fc.bias'") && strstr(bl_last_error(), "missing"));
    CHECK(((float *)bl_params_find(&other, "conv1.weight")->data)[0] == conv0, "a refused load changed the model");
    bl_clear_error();
    CHECK(bl_params_load(&other, path, false) == BL_OK);
    CHECK(((float *)bl_params_find(&other, "fc.bias")->data)[0] == fc0);
    CHECK(same_tensor(bl_params_find(&other, "conv1.weight"), bl_params_find(&saved, "conv1.weight")));
    bl_params_free(&other);

    /* the file has a tensor the model lacks */
    make_store(&other, 4, false, false, BL_I64);
    CHECK(bl_params_load(&other, path, true) == BL_ERR);
    CHECK(strstr(bl_last_error(), path) && strstr(bl_last_error(), "'bn1.running_var'") &&
          strstr(bl_last_error(), "does not have"));
    bl_clear_error();
    CHECK(bl_params_load(&other, path, false) == BL_OK);
    CHECK(same_tensor(bl_params_find(&other, "bn1.running_mean"), bl_params_find(&saved, "bn1.running_mean")));
    bl_params_free(&other);

    /* a shape differs: refused even without strict, and nothing is changed */
    make_store(&other, 5, false, true, BL_I64);
    randomize(&other, 4);
    float bn0 = ((float *)bl_params_find(&other, "bn1.weight")->data)[0];
    CHECK(bl_params_load(&other, path, false) == BL_ERR);
    CHECK(strstr(bl_last_error(), path) && strstr(bl_last_error(), "'conv1.weight'") &&
          strstr(bl_last_error(), "[4, 3, 3, 3]") && strstr(bl_last_error(), "[5, 3, 3, 3]"));
    CHECK(((float *)bl_params_find(&other, "bn1.weight")->data)[0] == bn0, "a refused load changed the model");
    bl_clear_error();
    bl_params_free(&other);

    /* a dtype differs */
    make_store(&other, 4, false, true, BL_I32);
    CHECK(bl_params_load(&other, path, true) == BL_ERR);
    CHECK(strstr(bl_last_error(), "'bn1.num_batches_tracked'") && strstr(bl_last_error(), "I64") &&
          strstr(bl_last_error(), "I32"));
    bl_clear_error();
    bl_params_free(&other);

    /* a missing file */
    make_store(&other, 4, false, true, BL_I64);
    CHECK(bl_params_load(&other, temp_path("nope.safetensors"), true) == BL_ERR);
    CHECK(strstr(bl_last_error(), "nope.safetensors") && strstr(bl_last_error(), "cannot open"));
    bl_clear_error();
    bl_params_free(&other);
    bl_params_free(&saved);
}

/* Half-precision checkpoints load into F32 parameters, converted. */
static void test_params_load_half_precision(void) {
    bl_params ps;
    make_store(&ps, 4, false, true, BL_I64);
    bl_safetensors_entry e[6];
    for (int i = 0; i < ps.count; i++) {
        const bl_tensor *t = ps.entries[i].tensor;
        bl_dtype dt = i == 0 ? BL_F16 : i == 1 ? BL_BF16 : t->dtype;
        e[i] = (bl_safetensors_entry){ps.entries[i].name, filled(dt, t->ndim, t->shape, v_f16)};
    }
    const char *path = temp_path("half.safetensors");
    CHECK(bl_safetensors_save(path, ps.count, e, NULL) == BL_OK);
    CHECK(bl_params_load(&ps, path, true) == BL_OK);
    const bl_tensor *w = bl_params_find(&ps, "conv1.weight"), *g = bl_params_find(&ps, "bn1.weight");
    CHECK(w->dtype == BL_F32 && bl_get_flat(w, 5) == v_f16(5) && bl_get_flat(w, 107) == v_f16(107));
    CHECK(bl_get_flat(g, 3) == v_f16(3));
    bl_params_free(&ps);
}

/* ---- refusals of corrupt files ---- */

static void test_corrupt_headers(void) {
    const float data[4] = {1, 2, 3, 4};
    static const struct {
        const char *header;
        size_t data_bytes;
        const char *needle;
    } cases[] = {
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}", 4, "invalid JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},}", 4, "invalid JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}} x", 4, "invalid JSON"},
        {"{\"a\":{\"dtype\":\"F32\" \"shape\":[1],\"data_offsets\":[0,4]}}", 4, "invalid JSON"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, "truncated"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
         12, "overlaps"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}", 8, "should have 12 bytes"},
        {"{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "dtype 'Q4'"},
        {"{\"a\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4, "not supported"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
         8, "appears twice"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
         "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}",
         12, "unused bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8, "after the last tensor"},
        {"[{\"dtype\":\"F32\"}]", 4, "start with '{'"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4, "invalid size"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1.5],\"data_offsets\":[0,4]}}", 4, "invalid size"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4, "at most 6"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "data_offsets"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}", 4, "end before begin"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,99999999999999999999]}}", 4, "data_offsets"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "no dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "no shape"},
        {"{\"a\":[1]}", 4, "not an object"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "not a string"},
        {"{\"__metadata__\":[]}", 0, "__metadata__ is not an object"},
        {"{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "UTF-8"},
        {"{\"a\\ud800\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "surrogate"},
        {"{\"a\\u0000\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "u0000"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4611686018427387904,4],\"data_offsets\":[0,4]}}", 4, "large"},
    };
    const char *path = temp_path("corrupt.safetensors");
    char label[64];
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        write_raw(path, cases[i].header, -1, data, cases[i].data_bytes);
        snprintf(label, sizeof label, "case %zu", i);
        expect_load_error(path, cases[i].needle, label);
    }
    /* deep nesting is refused, not recursed into */
    static char deep[20010];
    strcpy(deep, "{\"a\":");
    memset(deep + 5, '[', 20000);
    deep[20005] = '\0';
    write_raw(path, deep, -1, NULL, 0);
    expect_load_error(path, "nesting", "deep");
    /* header length fields that cannot be right */
    write_raw(path, "{}", 1000, NULL, 0);
    expect_load_error(path, "exceeds", "header longer than the file");
    write_raw(path, "{}", 1LL << 40, NULL, 0);
    expect_load_error(path, "exceeds the limit", "header over the limit");
    write_raw(path, "{}", 1, NULL, 0);
    expect_load_error(path, "too small", "header of one byte");
    FILE *f = fopen(path, "wb");
    if (f) fclose(f);
    expect_load_error(path, "not a safetensors file", "empty file");
    expect_load_error(temp_path("does_not_exist.safetensors"), "cannot open", "missing file");
    expect_load_error(temp_dir, "not a regular file", "directory");
}

/* Every prefix of a valid file, and random corruptions of it, are refused or read, never crash. */
static void test_truncation_and_corruption(void) {
    bl_safetensors_entry e[N_INTEROP];
    make_interop_tensors(e);
    const char *path = temp_path("valid.safetensors"), *cut = temp_path("cut.safetensors");
    CHECK(bl_safetensors_save(path, N_INTEROP, e, interop_meta) == BL_OK);
    FILE *f = fopen(path, "rb");
    static unsigned char bytes[8192];
    size_t size = f ? fread(bytes, 1, sizeof bytes, f) : 0;
    if (f) fclose(f);
    CHECK(size > 100 && size < sizeof bytes);
    bl_safetensors st;
    for (size_t len = 0; len < size; len++) {
        FILE *g = fopen(cut, "wb");
        fwrite(bytes, 1, len, g);
        fclose(g);
        bl_clear_error();
        CHECK(bl_safetensors_load(cut, &st) == BL_ERR, "prefix of %zu bytes loaded", len);
        CHECK(strstr(bl_last_error(), cut), "prefix of %zu bytes: %s", len, bl_last_error());
    }
    bl_clear_error();
    bl_rng r = bl_rng_make(99, 9);
    int refused = 0;
    for (int k = 0; k < 3000; k++) {
        static unsigned char mutated[8192];
        memcpy(mutated, bytes, size);
        /* mostly the header, where the structure is */
        size_t at = (size_t)bl_rng_below(&r, k % 4 ? 8 + (int64_t)bytes[0] : (int64_t)size);
        mutated[at] = (unsigned char)bl_rng_below(&r, 256);
        FILE *g = fopen(cut, "wb");
        fwrite(mutated, 1, size, g);
        fclose(g);
        bl_clear_error();
        if (bl_safetensors_load(cut, &st) == BL_OK) {
            bl_safetensors_free(&st);
        } else {
            refused++;
            CHECK(bl_last_error()[0], "refused without a message");
        }
    }
    CHECK(refused > 1000, "only %d of 3000 corruptions refused", refused);
    bl_clear_error();
}

/* ---- writing ---- */

static void test_save_argument_checks(void) {
    const char *path = temp_path("args.safetensors");
    bl_tensor *t = bl_zeros(BL_F32, BL_SHAPE(2));
    bl_safetensors_entry dup[2] = {{"w", t}, {"w", t}};
    CHECK(bl_safetensors_save(path, 2, dup, NULL) == BL_ERR && strstr(bl_last_error(), "'w' appears twice"));
    bl_clear_error();
    bl_safetensors_entry unnamed[1] = {{"", t}};
    CHECK(bl_safetensors_save(path, 1, unnamed, NULL) == BL_ERR && strstr(bl_last_error(), "no name"));
    bl_clear_error();
    bl_safetensors_entry reserved[1] = {{"__metadata__", t}};
    CHECK(bl_safetensors_save(path, 1, reserved, NULL) == BL_ERR && strstr(bl_last_error(), "reserved"));
    bl_clear_error();
    bl_safetensors_entry null_tensor[1] = {{"w", NULL}};
    CHECK(bl_safetensors_save(path, 1, null_tensor, NULL) == BL_ERR && strstr(bl_last_error(), "NULL"));
    bl_clear_error();
    const char *odd_meta[] = {"key", NULL};
    bl_safetensors_entry ok[1] = {{"w", t}};
    CHECK(bl_safetensors_save(path, 1, ok, odd_meta) == BL_ERR && strstr(bl_last_error(), "'key' has no value"));
    bl_clear_error();
    CHECK(!file_exists(path));
}

/* The temporary file of a save to `path` from this process. */
static bool temp_left_behind(const char *path) {
    char tmp[512];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    return file_exists(tmp);
}

static void test_failed_writes_leave_nothing(void) {
    bl_safetensors_entry small[1] = {{"w", bl_full(BL_F32, BL_SHAPE(3), 2.0)}};
    char missing_dir[512];
    snprintf(missing_dir, sizeof missing_dir, "%s/no_such_dir/model.safetensors", temp_dir);
    CHECK(bl_safetensors_save(missing_dir, 1, small, NULL) == BL_ERR);
    CHECK(strstr(bl_last_error(), missing_dir) && strstr(bl_last_error(), "cannot create"));
    bl_clear_error();

    /* A full disk, simulated by a file-size limit: the write fails part way, the error names the
     * file, the temporary is removed and the previous checkpoint is intact. */
    const char *path = temp_path("full.safetensors");
    CHECK(bl_safetensors_save(path, 1, small, NULL) == BL_OK);
    bl_safetensors_entry big[1] = {{"w", bl_full(BL_F32, BL_SHAPE(1 << 20), 1.0)}};
    struct rlimit old;
    CHECK(getrlimit(RLIMIT_FSIZE, &old) == 0);
    struct rlimit lim = old;
    lim.rlim_cur = 64 * 1024;
    void (*prev)(int) = signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0);
    int rc = bl_safetensors_save(path, 1, big, NULL);
    setrlimit(RLIMIT_FSIZE, &old);
    signal(SIGXFSZ, prev);
    CHECK(rc == BL_ERR);
    CHECK(strstr(bl_last_error(), path) && strstr(bl_last_error(), "writing failed"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(!temp_left_behind(path));
    bl_safetensors st;
    CHECK(bl_safetensors_load(path, &st) == BL_OK);
    CHECK(st.count == 1 && bl_numel(st.entries[0].tensor) == 3 && bl_get_flat(st.entries[0].tensor, 2) == 2.0);
    bl_safetensors_free(&st);
    /* and a successful overwrite replaces it */
    CHECK(bl_safetensors_save(path, 1, big, NULL) == BL_OK && !temp_left_behind(path));
    CHECK(bl_safetensors_load(path, &st) == BL_OK && st.count == 1 && bl_numel(st.entries[0].tensor) == 1 << 20);
    bl_safetensors_free(&st);
}

/* ---- interop with PyTorch ---- */

static double transformed(const bl_tensor *t, int64_t i) {
    double x = bl_get_flat(t, i);
    switch (t->dtype) {
    case BL_BOOL: return x == 0;
    case BL_U8: return 255 - x;
    case BL_I32:
    case BL_I64: return x + 1;
    default: return 2 * x + 1;
    }
}

static void test_torch_interop(void) {
    if (system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") != 0) {
        printf("skip test_torch_interop: /usr/bin/python3 cannot import torch (counted as passed)\n");
        return;
    }
    const char *src = getenv("BALLAST_SOURCE_DIR");
    bl_safetensors_entry e[N_INTEROP];
    make_interop_tensors(e);
    char in[400], out[400], cmd[1400];
    snprintf(in, sizeof in, "%s", temp_path("from_ballast.safetensors"));
    snprintf(out, sizeof out, "%s", temp_path("from_torch.safetensors"));
    CHECK(bl_safetensors_save(in, N_INTEROP, e, interop_meta) == BL_OK);
    snprintf(cmd, sizeof cmd, "/usr/bin/python3 '%s/tools/torch_safetensors_roundtrip.py' '%s' '%s'",
             src && src[0] ? src : ".", in, out);
    CHECK(system(cmd) == 0, "%s failed", cmd);
    bl_safetensors st;
    CHECK(bl_safetensors_load(out, &st) == BL_OK);
    CHECK(st.count == N_INTEROP + 1);
    for (int k = 0; k < N_INTEROP; k++) {
        const bl_tensor *t = bl_safetensors_get(&st, e[k].name), *w = e[k].tensor;
        CHECK(t && t->dtype == w->dtype && bl_same_shape(t, w), "tensor '%s' missing or of another type", e[k].name);
        for (int64_t i = 0; t && i < bl_numel(t) && bl_same_shape(t, w); i++)
            CHECK(bl_get_flat(t, i) == transformed(w, i), "'%s'[%lld] = %g, expected %g", e[k].name, (long long)i,
                  bl_get_flat(t, i), transformed(w, i));
    }
    const bl_tensor *i64 = bl_safetensors_get(&st, "i64");
    CHECK(i64 && ((const int64_t *)i64->data)[3] == 3 * 3000000019LL - 5 + 1);
    const bl_tensor *extra = bl_safetensors_get(&st, "from_torch");
    CHECK(extra && extra->dtype == BL_F32 && bl_numel(extra) == 10 && bl_get_flat(extra, 9) == 2.25);
    const char *by = bl_safetensors_meta_get(&st, "written_by"), *note = bl_safetensors_meta_get(&st, "note");
    CHECK(by && strcmp(by, "torch") == 0);
    CHECK(note && strcmp(note, interop_meta[3]) == 0, "note came back as '%s'", note ? note : "(none)");
    bl_safetensors_free(&st);
}

TEST_MAIN(TEST(test_roundtrip_all_dtypes), TEST(test_params_roundtrip), TEST(test_params_load_refusals),
          TEST(test_params_load_half_precision), TEST(test_corrupt_headers), TEST(test_truncation_and_corruption),
          TEST(test_save_argument_checks), TEST(test_failed_writes_leave_nothing), TEST(test_torch_interop))
