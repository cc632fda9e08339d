/* Run configs: YAML parsing into dotted keys, option tables (defaults, types, unknown keys),
 * command-line overrides, error messages that name the key, file and line, the resolved config
 * written back, inheritance from base files (_base_), and the learning-rate schedules a config
 * describes. */
#include "ballast/train.h"

#include "test.h"

#include <sys/stat.h>
#include <unistd.h>

static const bl_option table[] = {
    {"dataset.name", BL_OPT_STRING, NULL, "dataset"},
    {"dataset.imbalance", BL_OPT_FLOAT, "1", "imbalance factor"},
    {"train.epochs", BL_OPT_INT, "200", "epochs"},
    {"train.lr", BL_OPT_FLOAT, "0.1", "learning rate"},
    {"train.milestones", BL_OPT_LIST, "[]", "decay epochs"},
    {"train.augment.crop_pad", BL_OPT_INT, "4", "padding"},
    {"train.augment.hflip", BL_OPT_BOOL, "true", "flip"},
    {"train.sampler", BL_OPT_STRING, "instance", "sampler"},
    {"method.name", BL_OPT_STRING, "ce", "method"},
};
static const bl_option method_table[] = {
    {"alpha", BL_OPT_FLOAT, "1.5", "counterfactual weight"},
    {"heads", BL_OPT_INT, "2", "heads"},
};
#define N_TABLE ((int)(sizeof table / sizeof table[0]))

static const char *example =
    "# a comment\n"
    "dataset:\n"
    "  name: cifar10\n"
    "  imbalance: 100\n"
    "train:\n"
    "  epochs: 3\n"
    "  milestones: [120, 160]\n"
    "  augment:\n"
    "    crop_pad: 2\n"
    "    hflip: no\n"
    "method:\n"
    "  name: tde\n"
    "  alpha: 2.25\n";

static bl_config *declared(const char *text) {
    bl_config *c = bl_config_parse(text, "example.yaml");
    if (!c) return NULL;
    if (bl_config_declare(c, NULL, table, N_TABLE) != BL_OK ||
        bl_config_declare(c, "method.", method_table, 2) != BL_OK) {
        bl_config_free(c);
        return NULL;
    }
    return c;
}

static void test_nested_maps_lists_and_defaults(void) {
    bl_config *c = declared(example);
    CHECK(c);
    if (!c) return;
    CHECK(bl_config_check_unknown(c) == BL_OK);
    CHECK(strcmp(bl_config_string(c, "dataset.name"), "cifar10") == 0);
    CHECK_CLOSE(bl_config_float(c, "dataset.imbalance"), 100.0, 0);
    CHECK(bl_config_int(c, "train.epochs") == 3);
    CHECK(bl_config_int(c, "train.augment.crop_pad") == 2);
    CHECK(bl_config_bool(c, "train.augment.hflip") == false);
    CHECK_CLOSE(bl_config_float(c, "method.alpha"), 2.25, 0);
    /* defaults for keys the file leaves out */
    CHECK_CLOSE(bl_config_float(c, "train.lr"), 0.1, 0);
    CHECK(strcmp(bl_config_string(c, "train.sampler"), "instance") == 0);
    CHECK(bl_config_int(c, "method.heads") == 2);
    double ms[4] = {0};
    CHECK(bl_config_list(c, "train.milestones", ms, 4) == 2);
    CHECK(ms[0] == 120 && ms[1] == 160);
    /* a list that does not fit is refused rather than cut */
    CHECK(bl_config_list(c, "train.milestones", ms, 1) == -1);
    bl_clear_error();
    /* a getter of the wrong type fails instead of guessing */
    CHECK(bl_config_int(c, "train.lr") == 0 && strstr(bl_last_error(), "train.lr"));
    bl_clear_error();
    bl_config_free(c);

    /* block-style lists and an empty flow list read the same */
    c = declared("train:\n  milestones:\n    - 5\n    - 7.5\n");
    CHECK(c && bl_config_list(c, "train.milestones", ms, 4) == 2 && ms[0] == 5 && ms[1] == 7.5);
    bl_config_free(c);
    c = declared("dataset:\n  name: x\n");
    CHECK(c && bl_config_list(c, "train.milestones", ms, 4) == 0);
    CHECK(c && !bl_config_has(c, "nothing.here"));
    bl_config_free(c);
}

static void test_overrides(void) {
    bl_config *c = bl_config_parse(example, "example.yaml");
    CHECK(c);
    if (!c) return;
    /* before declaration (as the command line applies them), then checked at declaration */
    CHECK(bl_config_set(c, "train.lr=0.5") == BL_OK);
    CHECK(bl_config_set(c, "train.milestones=[1, 2,3]") == BL_OK);
    CHECK(bl_config_set(c, "dataset.name=\"fashion_mnist\"") == BL_OK);
    CHECK(bl_config_set(c, "method.heads=4") == BL_OK);
    CHECK(bl_config_declare(c, NULL, table, N_TABLE) == BL_OK);
    CHECK(bl_config_declare(c, "method.", method_table, 2) == BL_OK);
    CHECK(bl_config_check_unknown(c) == BL_OK);
    CHECK_CLOSE(bl_config_float(c, "train.lr"), 0.5, 0);
    CHECK(strcmp(bl_config_string(c, "dataset.name"), "fashion_mnist") == 0);
    CHECK(bl_config_int(c, "method.heads") == 4);
    double ms[4];
    CHECK(bl_config_list(c, "train.milestones", ms, 4) == 3 && ms[2] == 3);
    /* after declaration an override is type-checked at once */
    CHECK(bl_config_set(c, "train.epochs=ten") == BL_ERR);
    CHECK(strstr(bl_last_error(), "train.epochs") && strstr(bl_last_error(), "ten"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_config_set(c, "train.epochs") == BL_ERR);
    bl_clear_error();
    CHECK(bl_config_set(c, "train.milestones=[1, x]") == BL_ERR);
    bl_clear_error();
    /* an override naming an unknown key is caught like one in the file */
    CHECK(bl_config_set(c, "train.lrr=0.1") == BL_OK);
    CHECK(bl_config_check_unknown(c) == BL_ERR);
    CHECK(strstr(bl_last_error(), "train.lrr") && strstr(bl_last_error(), "command line"), "%s", bl_last_error());
    bl_clear_error();
    bl_config_free(c);
}

static void test_unknown_key_names_key_file_and_line(void) {
    bl_config *c = declared("dataset:\n  name: cifar10\ntrain:\n  epochs: 3\n  lr_decay: 0.1\n");
    CHECK(c);
    if (!c) return;
    CHECK(bl_config_check_unknown(c) == BL_ERR);
    const char *e = bl_last_error();
    CHECK(strstr(e, "train.lr_decay") && strstr(e, "example.yaml:5"), "%s", e);
    bl_clear_error();
    bl_config_free(c);
    /* an unknown method option, e.g. one that belongs to another method */
    c = declared("method:\n  name: ce\n  beta: 0.99\n");
    CHECK(c && bl_config_check_unknown(c) == BL_ERR && strstr(bl_last_error(), "method.beta"));
    bl_clear_error();
    bl_config_free(c);
}

static void test_wrong_types(void) {
    const char *cases[][2] = {
        {"train:\n  epochs: 2.5\n", "train.epochs"},
        {"train:\n  epochs: \"3\"\n", "train.epochs"}, /* quoted: a string, not a number */
        {"train:\n  lr: fast\n", "train.lr"},
        {"train:\n  augment:\n    hflip: maybe\n", "train.augment.hflip"},
        {"train:\n  milestones: 120\n", "train.milestones"},
        {"train:\n  milestones: [a, b]\n", "train.milestones"},
        {"train:\n  lr: [0.1]\n", "train.lr"},
        {"train:\n  epochs: 99999999999999999999\n", "train.epochs"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bl_config *c = bl_config_parse(cases[i][0], "types.yaml");
        CHECK(c, "case %zu", i);
        if (!c) continue;
        CHECK(bl_config_declare(c, NULL, table, N_TABLE) == BL_ERR, "case %zu", i);
        const char *e = bl_last_error();
        CHECK(strstr(e, cases[i][1]) && strstr(e, "types.yaml:"), "case %zu: %s", i, e);
        bl_clear_error();
        bl_config_free(c);
    }
    /* a map where a value is expected leaves its leaves unknown */
    bl_config *c = bl_config_parse("train:\n  lr:\n    base: 0.1\n", "types.yaml");
    CHECK(c && bl_config_declare(c, NULL, table, N_TABLE) == BL_OK);
    CHECK(c && bl_config_check_unknown(c) == BL_ERR && strstr(bl_last_error(), "train.lr.base"));
    bl_clear_error();
    bl_config_free(c);
}

static void test_bad_yaml_names_line(void) {
    struct { const char *text; const char *where; } cases[] = {
        {"dataset:\n  name: cifar10\n  imbalance: [1, 2\ntrain:\n  epochs: 3\n", "bad.yaml:"},
        {"dataset:\n  name: a\n   bad: indentation\n", "bad.yaml:3"},
        {"dataset:\n  name: a\n  name: b\n", "bad.yaml:3"},          /* duplicate key */
        {"- just\n- a list\n", "bad.yaml:1"},                           /* not a map of sections */
        {"train:\n  milestones: [[1], 2]\n", "bad.yaml:2"},            /* nested list */
        {"a: 1\n---\nb: 2\n", "bad.yaml:2"},                           /* two documents */
        {"train.lr: 0.1\n", "bad.yaml:1"},                              /* dotted key in the file */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        bl_config *c = bl_config_parse(cases[i].text, "bad.yaml");
        CHECK(c == NULL, "case %zu", i);
        CHECK(strstr(bl_last_error(), cases[i].where), "case %zu: '%s' lacks '%s'", i, bl_last_error(), cases[i].where);
        bl_clear_error();
        bl_config_free(c);
    }
    CHECK(bl_config_load("/nonexistent/dir/run.yaml") == NULL && strstr(bl_last_error(), "/nonexistent/dir/run.yaml"));
    bl_clear_error();
    /* an empty file is an empty config */
    bl_config *c = bl_config_parse("# nothing\n", "empty.yaml");
    CHECK(c && bl_config_declare(c, NULL, table, N_TABLE) == BL_OK && bl_config_int(c, "train.epochs") == 200);
    bl_config_free(c);
}

static void test_write_and_reload(void) {
    bl_config *c = declared(example);
    CHECK(c);
    if (!c) return;
    CHECK(bl_config_set(c, "dataset.name=with \"quotes\" and: colon") == BL_OK);
    CHECK(bl_config_set(c, "train.milestones=[7,8.5 ]") == BL_OK);
    char path[] = "/tmp/ballast_config_XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    close(fd);
    CHECK(bl_config_write(c, path) == BL_OK);
    bl_config *back = bl_config_load(path);
    CHECK(back);
    if (back) {
        CHECK(bl_config_declare(back, NULL, table, N_TABLE) == BL_OK);
        CHECK(bl_config_declare(back, "method.", method_table, 2) == BL_OK);
        CHECK(bl_config_check_unknown(back) == BL_OK);
        CHECK(bl_config_first_difference(c, back) == NULL, "%s", bl_config_first_difference(c, back));
        CHECK(strcmp(bl_config_string(back, "dataset.name"), "with \"quotes\" and: colon") == 0);
        CHECK(bl_config_int(back, "train.augment.crop_pad") == 2);
        CHECK_CLOSE(bl_config_float(back, "method.alpha"), 2.25, 0);
        /* and a real difference is found */
        CHECK(bl_config_set(back, "train.epochs=4") == BL_OK);
        const char *d = bl_config_first_difference(c, back);
        CHECK(d && strcmp(d, "train.epochs") == 0);
        bl_config_free(back);
    }
    /* the nesting is written as YAML maps, each opened once */
    FILE *f = fopen(path, "r");
    char text[4096] = {0};
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    CHECK(strstr(text, "train:\n") && strstr(text, "  augment:\n    crop_pad: 2\n"), "%s", text);
    const char *train = strstr(text, "\ntrain:\n");
    CHECK(train && strstr(train + 1, "\ntrain:\n") == NULL && strstr(text, "\n  augment:") &&
              strstr(strstr(text, "\n  augment:") + 1, "\n  augment:") == NULL,
          "%s", text);
    unlink(path);
    bl_config_free(c);
}

/* ---- inheritance (_base_) ------------------------------------------------------------------- */

static char base_root[] = "/tmp/ballast_config_inherit_XXXXXX";

/* Writes `text` to base_root/name (its folder made first) and returns the path in a static slot. */
static const char *write_config(const char *name, const char *text) {
    static char paths[8][600];
    static int next;
    char *path = paths[next++ % 8];
    snprintf(path, sizeof paths[0], "%s/%s", base_root, name);
    char *slash = strrchr(path, '/');
    *slash = '\0';
    mkdir(path, 0700);
    *slash = '/';
    FILE *f = fopen(path, "w");
    CHECK(f, "%s", path);
    if (f) {
        fputs(text, f);
        fclose(f);
    }
    return path;
}

static char *read_whole(const char *path) {
    static char text[8192];
    text[0] = '\0';
    FILE *f = fopen(path, "r");
    if (f) {
        size_t n = fread(text, 1, sizeof text - 1, f);
        text[n] = '\0';
        fclose(f);
    }
    return text;
}

/* A loaded config with both tables declared (NULL when loading or declaring fails). */
static bl_config *load_declared(const char *path) {
    bl_config *c = bl_config_load(path);
    if (!c) return NULL;
    if (bl_config_declare(c, NULL, table, N_TABLE) != BL_OK || bl_config_declare(c, "method.", method_table, 2) != BL_OK) {
        bl_config_free(c);
        return NULL;
    }
    return c;
}

static const char *root_text = "# the shared protocol\n"
                               "dataset:\n"
                               "  name: cifar10\n"
                               "  imbalance: 100\n"
                               "train:\n"
                               "  epochs: 200\n"
                               "  lr: 0.1\n"
                               "  milestones: [120, 160]\n"
                               "  augment:\n"
                               "    crop_pad: 4\n"
                               "    hflip: yes\n"
                               "method:\n"
                               "  name: ce\n";

/* A child two levels below the root: scalars, a list and a nested map overridden key by key, the
 * rest inherited, paths resolved from each including file's own folder. */
static void test_base_two_levels(void) {
    write_config("base/root.yaml", root_text);
    write_config("base/mid.yaml", "_base_: root.yaml\ntrain:\n  lr: 0.2\n  augment:\n    hflip: no\n");
    const char *child = write_config("exp/child.yaml", "_base_: ../base/mid.yaml   # the recipe's protocol\n"
                                                       "dataset:\n  imbalance: 10\n"
                                                       "train:\n  milestones: [5, 7]\n"
                                                       "method:\n  name: tde\n  alpha: 2.5\n");
    bl_config *c = load_declared(child);
    CHECK(c);
    if (!c) return;
    CHECK(bl_config_check_unknown(c) == BL_OK);      /* _base_ is not a key of the config */
    CHECK(bl_config_text(c, "_base_") == NULL);
    CHECK(strcmp(bl_config_source(c), child) == 0, "%s", bl_config_source(c));
    CHECK_CLOSE(bl_config_float(c, "dataset.imbalance"), 10, 0);  /* the child's scalar */
    CHECK_CLOSE(bl_config_float(c, "train.lr"), 0.2, 0);          /* the middle file's */
    CHECK(strcmp(bl_config_string(c, "dataset.name"), "cifar10") == 0);
    CHECK(bl_config_int(c, "train.epochs") == 200);
    double ms[4] = {0};
    CHECK(bl_config_list(c, "train.milestones", ms, 4) == 2 && ms[0] == 5 && ms[1] == 7);  /* a list replaced whole */
    /* the middle file's augment map changed hflip only: crop_pad stays the root's */
    CHECK(bl_config_int(c, "train.augment.crop_pad") == 4);
    CHECK(bl_config_bool(c, "train.augment.hflip") == false);
    CHECK(strcmp(bl_config_string(c, "method.name"), "tde") == 0);
    CHECK_CLOSE(bl_config_float(c, "method.alpha"), 2.5, 0);
    CHECK(bl_config_int(c, "method.heads") == 2);  /* a default */
    bl_config_free(c);

    /* a null resets an inherited key to its table's default; a scalar replaces a map there */
    child = write_config("exp/reset.yaml", "_base_: ../base/root.yaml\ntrain:\n  epochs:\n  augment: 3\n");
    c = bl_config_load(child);
    CHECK(c && bl_config_text(c, "train.augment") && strcmp(bl_config_text(c, "train.augment"), "3") == 0);
    CHECK(c && !bl_config_has(c, "train.augment.crop_pad") && !bl_config_has(c, "train.augment.hflip"));
    CHECK(c && !bl_config_has(c, "train.epochs") && bl_config_has(c, "train.lr"));
    CHECK(c && bl_config_declare(c, NULL, table, N_TABLE) == BL_OK && bl_config_int(c, "train.epochs") == 200);
    bl_config_free(c);
}

/* Bases in a list merge in order, the later over the earlier; a file reached twice (a diamond) is
 * no cycle. */
static void test_base_list(void) {
    write_config("list/root.yaml", root_text);
    write_config("list/fast.yaml", "_base_: root.yaml\ntrain:\n  epochs: 3\n  lr: 0.3\n");
    write_config("list/flip.yaml", "_base_: [root.yaml]\ntrain:\n  lr: 0.4\n  augment:\n    hflip: off\n");
    const char *flow = write_config("list/flow.yaml", "_base_: [fast.yaml, flip.yaml]\n");
    const char *block = write_config("list/block.yaml", "_base_:\n  - flip.yaml\n  - fast.yaml\ntrain:\n  epochs: 4\n");
    bl_config *c = load_declared(flow);
    CHECK(c && bl_config_check_unknown(c) == BL_OK);
    /* each base comes resolved, its own bases included: flip.yaml's root.yaml sets train.epochs
     * (200) again over fast.yaml's 3 */
    CHECK(c && bl_config_int(c, "train.epochs") == 200, "%lld", c ? (long long)bl_config_int(c, "train.epochs") : -1);
    CHECK(c && bl_config_float(c, "train.lr") == 0.4);
    CHECK(c && bl_config_bool(c, "train.augment.hflip") == false && bl_config_int(c, "train.augment.crop_pad") == 4);
    bl_config_free(c);
    c = load_declared(block);
    CHECK(c && bl_config_check_unknown(c) == BL_OK);
    CHECK(c && bl_config_int(c, "train.epochs") == 4 && bl_config_float(c, "train.lr") == 0.3);
    CHECK(c && bl_config_bool(c, "train.augment.hflip") == true);  /* fast.yaml's root.yaml, merged last */
    bl_config_free(c);
}

static void test_base_errors(void) {
    /* a cycle names the chain of files */
    const char *x = write_config("cycle/x.yaml", "_base_: y.yaml\ntrain:\n  lr: 0.1\n");
    write_config("cycle/y.yaml", "train:\n  epochs: 2\n_base_: x.yaml\n");
    CHECK(bl_config_load(x) == NULL);
    const char *e = bl_last_error();
    CHECK(strstr(e, "cycle") && strstr(e, "x.yaml -> ") && strstr(e, "y.yaml -> ") && strstr(e, "y.yaml:3"), "%s", e);
    bl_clear_error();
    const char *self = write_config("cycle/self.yaml", "_base_: ./self.yaml\n");
    CHECK(bl_config_load(self) == NULL && strstr(bl_last_error(), "cycle"), "%s", bl_last_error());
    bl_clear_error();

    /* a missing base names the including file, its line and the missing path */
    const char *missing = write_config("missing/child.yaml", "train:\n  lr: 0.1\n_base_:\n  - ../nowhere/base.yaml\n");
    CHECK(bl_config_load(missing) == NULL);
    e = bl_last_error();
    CHECK(strstr(e, "missing/child.yaml:4") && strstr(e, "../nowhere/base.yaml"), "%s", e);
    bl_clear_error();

    /* errors in a base name the base's file and line: syntax when loading, types and unknown keys
     * when declaring */
    write_config("bad/syntax.yaml", "dataset:\n  name: a\n   bad: indentation\n");
    const char *child = write_config("bad/child.yaml", "_base_: syntax.yaml\n");
    CHECK(bl_config_load(child) == NULL && strstr(bl_last_error(), "bad/syntax.yaml:3"), "%s", bl_last_error());
    bl_clear_error();
    write_config("bad/types.yaml", "dataset:\n  name: a\ntrain:\n  lr: fast\n  lr_decay: 0.1\n");
    child = write_config("bad/child2.yaml", "_base_: types.yaml\ntrain:\n  epochs: 3\n");
    bl_config *c = bl_config_load(child);
    CHECK(c && bl_config_declare(c, NULL, table, N_TABLE) == BL_ERR && strstr(bl_last_error(), "bad/types.yaml:4") &&
              strstr(bl_last_error(), "train.lr"),
          "%s", bl_last_error());
    bl_clear_error();
    CHECK(c && bl_config_set(c, "train.lr=0.1") == BL_OK && bl_config_declare(c, "method.", method_table, 2) == BL_OK);
    CHECK(c && bl_config_check_unknown(c) == BL_ERR && strstr(bl_last_error(), "bad/types.yaml:5") &&
              strstr(bl_last_error(), "train.lr_decay"),
          "%s", bl_last_error());
    bl_clear_error();
    bl_config_free(c);

    /* malformed _base_ values */
    const char *cases[][2] = {
        {"bad/nested.yaml", "train:\n  _base_: x.yaml\n"},
        {"bad/null.yaml", "_base_:\n"},
        {"bad/map.yaml", "_base_:\n  a: b\n"},
        {"bad/twice.yaml", "_base_: a.yaml\n_base_: b.yaml\n"},
        {"bad/item.yaml", "_base_: [a.yaml, [b.yaml]]\n"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *path = write_config(cases[i][0], cases[i][1]);
        CHECK(bl_config_load(path) == NULL && strstr(bl_last_error(), "_base_") && strstr(bl_last_error(), cases[i][0]),
              "%s: %s", cases[i][0], bl_last_error());
        bl_clear_error();
    }
    /* text in memory has no folder to resolve a base against */
    CHECK(bl_config_parse("_base_: root.yaml\n", "memory.yaml") == NULL && strstr(bl_last_error(), "memory.yaml:1") &&
              strstr(bl_last_error(), "bl_config_load"),
          "%s", bl_last_error());
    bl_clear_error();
}

/* The resolved config a run writes holds the inherited keys (and no _base_), so the run directory
 * stands alone: reloaded, it is the same config. */
static void test_base_written_resolved(void) {
    write_config("write/base.yaml", root_text);
    const char *child = write_config("write/exp.yaml", "_base_: base.yaml\ntrain:\n  lr: 0.05\n");
    bl_config *c = load_declared(child);
    CHECK(c);
    if (!c) return;
    char out[700];
    snprintf(out, sizeof out, "%s/run_config.yaml", base_root);
    CHECK(bl_config_write(c, out) == BL_OK);
    const char *text = read_whole(out);
    CHECK(strstr(text, "  name: \"cifar10\"\n") && strstr(text, "  epochs: 200\n") && strstr(text, "  lr: 0.05\n") &&
              strstr(text, "  milestones: [120, 160]\n") && strstr(text, "    crop_pad: 4\n") && !strstr(text, "_base_:"),
          "%s", text);
    CHECK(strstr(text, "exp.yaml"), "%s", text);  /* the header names the file the user gave */
    /* nothing of it still comes from the base: the base may change or go */
    snprintf(out + strlen(base_root), sizeof out - strlen(base_root), "/write/base.yaml");
    CHECK(unlink(out) == 0);
    snprintf(out, sizeof out, "%s/run_config.yaml", base_root);
    bl_config *back = load_declared(out);
    CHECK(back && bl_config_check_unknown(back) == BL_OK);
    CHECK(back && bl_config_first_difference(c, back) == NULL, "%s", back ? bl_config_first_difference(c, back) : "");
    bl_config_free(back);
    bl_config_free(c);
}

static void test_base_setup(void) { CHECK(mkdtemp(base_root) != NULL); }

static void test_base_cleanup(void) {
    char command[700];
    snprintf(command, sizeof command, "rm -rf '%s'", base_root);
    CHECK(system(command) == 0);
}

/* The trainer's table accepts the papers' settings, and the BBN warm-up schedule of the long-tailed
 * CIFAR protocol gives the learning rates listed in the spec's table (scheduler stepped at the start
 * of each epoch, decay 0.01 per milestone). */
static void test_schedules_match_spec(void) {
    bl_config *c = bl_config_parse("dataset:\n  name: cifar10\n"
                                   "train:\n  epochs: 200\n  lr: 0.2\n  schedule: warmup_multistep\n"
                                   "  milestones: [120, 160]\n  gamma: 0.01\n  warmup_epochs: 5\n",
                                   "bbn.yaml");
    int n = 0;
    const bl_option *opts = bl_trainer_options(&n);
    CHECK(c && opts && n > 10);
    if (!c || !opts) return;
    CHECK(bl_config_declare(c, NULL, opts, n) == BL_OK);
    bl_schedule sched;
    CHECK(bl_schedule_from_config(c, &sched) == BL_OK);
    bool at_start = bl_config_bool(c, "train.lr_at_epoch_start");
    CHECK(at_start);
    /* 0-based epoch -> the spec's 1-based epochs 1..4, 5, 119, 120, 159, 160, 200 */
    const struct { int epoch; double lr; } want[] = {
        {0, 0.2 * (1.0 / 3 * 0.8 + 0.2)}, {1, 0.12}, {2, 0.2 * (1.0 / 3 * 0.4 + 0.6)}, {3, 0.2 * (1.0 / 3 * 0.2 + 0.8)},
        {4, 0.2}, {118, 0.2}, {119, 0.002}, {158, 0.002}, {159, 2e-5}, {199, 2e-5},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_CLOSE(bl_schedule_epoch_lr(&sched, want[i].epoch, 0, at_start), want[i].lr, 1e-9);
    /* the rounded values printed in the spec */
    CHECK(fabs(bl_schedule_epoch_lr(&sched, 0, 0, at_start) - 0.0933) < 5e-5 && fabs(bl_schedule_epoch_lr(&sched, 2, 0, at_start) - 0.1467) < 5e-5 &&
          fabs(bl_schedule_epoch_lr(&sched, 3, 0, at_start) - 0.1733) < 5e-5);
    bl_config_free(c);

    /* ImageNet-LT's cosine stepped at epoch start: lr(e) = 0.2 (1 + cos(pi e / 90)) / 2, e = 1..90 */
    c = bl_config_parse("train:\n  epochs: 90\n  lr: 0.2\n  schedule: cosine\n", "cos.yaml");
    CHECK(c && bl_config_declare(c, NULL, opts, n) == BL_OK && bl_schedule_from_config(c, &sched) == BL_OK);
    for (int e = 0; e < 90; e += 13)
        CHECK_CLOSE(bl_schedule_epoch_lr(&sched, e, 0, at_start), 0.2 * (1 + cos(M_PI * (e + 1) / 90.0)) / 2, 1e-9);
    CHECK(fabs(bl_schedule_epoch_lr(&sched, 89, 0, at_start)) < 1e-12);
    bl_config_free(c);

    /* multistep read at the epoch itself (torch's current convention) */
    c = bl_config_parse("train:\n  lr: 0.1\n  schedule: multistep\n  milestones: [2, 4]\n  gamma: 0.1\n"
                        "  lr_at_epoch_start: false\n",
                        "ms.yaml");
    CHECK(c && bl_config_declare(c, NULL, opts, n) == BL_OK && bl_schedule_from_config(c, &sched) == BL_OK);
    at_start = c && bl_config_bool(c, "train.lr_at_epoch_start");
    CHECK(!at_start);
    const double ms_want[] = {0.1, 0.1, 0.01, 0.01, 0.001};
    for (int e = 0; e < 5; e++) CHECK_CLOSE(bl_schedule_epoch_lr(&sched, e, 0, at_start), ms_want[e], 1e-12);
    bl_config_free(c);

    /* an unknown schedule name is an error naming the key */
    c = bl_config_parse("train:\n  schedule: triangular\n", "bad.yaml");
    CHECK(c && bl_config_declare(c, NULL, opts, n) == BL_OK);
    CHECK(bl_schedule_from_config(c, &sched) == BL_ERR && strstr(bl_last_error(), "train.schedule"));
    bl_clear_error();
    bl_config_free(c);
}

TEST_MAIN(TEST(test_nested_maps_lists_and_defaults), TEST(test_overrides), TEST(test_unknown_key_names_key_file_and_line),
          TEST(test_wrong_types), TEST(test_bad_yaml_names_line), TEST(test_write_and_reload),
          TEST(test_schedules_match_spec), TEST(test_base_setup), TEST(test_base_two_levels), TEST(test_base_list),
          TEST(test_base_errors), TEST(test_base_written_resolved), TEST(test_base_cleanup))
