/* Run configs: YAML parsing into dotted keys, option tables (defaults, types, unknown keys),
 * command-line overrides, error messages that name the key, file and line, the resolved config
 * written back, and the learning-rate schedules a config describes. */
#include "ballast/train.h"

#include "test.h"

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
    bl_run run;
    memset(&run, 0, sizeof run);
    CHECK(bl_schedule_from_config(c, &run.schedule) == BL_OK);
    run.lr_at_epoch_start = bl_config_bool(c, "train.lr_at_epoch_start");
    CHECK(run.lr_at_epoch_start);
    /* 0-based epoch -> the spec's 1-based epochs 1..4, 5, 119, 120, 159, 160, 200 */
    const struct { int epoch; double lr; } want[] = {
        {0, 0.2 * (1.0 / 3 * 0.8 + 0.2)}, {1, 0.12}, {2, 0.2 * (1.0 / 3 * 0.4 + 0.6)}, {3, 0.2 * (1.0 / 3 * 0.2 + 0.8)},
        {4, 0.2}, {118, 0.2}, {119, 0.002}, {158, 0.002}, {159, 2e-5}, {199, 2e-5},
    };
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
        CHECK_CLOSE(bl_run_lr(&run, want[i].epoch), want[i].lr, 1e-9);
    /* the rounded values printed in the spec */
    CHECK(fabs(bl_run_lr(&run, 0) - 0.0933) < 5e-5 && fabs(bl_run_lr(&run, 2) - 0.1467) < 5e-5 &&
          fabs(bl_run_lr(&run, 3) - 0.1733) < 5e-5);
    bl_config_free(c);

    /* ImageNet-LT's cosine stepped at epoch start: lr(e) = 0.2 (1 + cos(pi e / 90)) / 2, e = 1..90 */
    c = bl_config_parse("train:\n  epochs: 90\n  lr: 0.2\n  schedule: cosine\n", "cos.yaml");
    CHECK(c && bl_config_declare(c, NULL, opts, n) == BL_OK && bl_schedule_from_config(c, &run.schedule) == BL_OK);
    for (int e = 0; e < 90; e += 13)
        CHECK_CLOSE(bl_run_lr(&run, e), 0.2 * (1 + cos(M_PI * (e + 1) / 90.0)) / 2, 1e-9);
    CHECK(fabs(bl_run_lr(&run, 89)) < 1e-12);
    bl_config_free(c);

    /* multistep read at the epoch itself (torch's current convention) */
    c = bl_config_parse("train:\n  lr: 0.1\n  schedule: multistep\n  milestones: [2, 4]\n  gamma: 0.1\n"
                        "  lr_at_epoch_start: false\n",
                        "ms.yaml");
    CHECK(c && bl_config_declare(c, NULL, opts, n) == BL_OK && bl_schedule_from_config(c, &run.schedule) == BL_OK);
    run.lr_at_epoch_start = c && bl_config_bool(c, "train.lr_at_epoch_start");
    CHECK(!run.lr_at_epoch_start);
    const double ms_want[] = {0.1, 0.1, 0.01, 0.01, 0.001};
    for (int e = 0; e < 5; e++) CHECK_CLOSE(bl_run_lr(&run, e), ms_want[e], 1e-12);
    bl_config_free(c);

    /* an unknown schedule name is an error naming the key */
    c = bl_config_parse("train:\n  schedule: triangular\n", "bad.yaml");
    CHECK(c && bl_config_declare(c, NULL, opts, n) == BL_OK);
    CHECK(bl_schedule_from_config(c, &run.schedule) == BL_ERR && strstr(bl_last_error(), "train.schedule"));
    bl_clear_error();
    bl_config_free(c);
}

TEST_MAIN(TEST(test_nested_maps_lists_and_defaults), TEST(test_overrides), TEST(test_unknown_key_names_key_file_and_line),
          TEST(test_wrong_types), TEST(test_bad_yaml_names_line), TEST(test_write_and_reload),
          TEST(test_schedules_match_spec))
