/* The data pipeline on small generated data: dataset registry and formats (CIFAR, IDX, image
 * folders, incl. truncated and corrupt files), long-tail counts against the protocol's published
 * numbers, index files, holdout splits, sampler frequencies against their definitions,
 * augmentation against a naive implementation, and loader determinism. */
#include "test.h"

#include <jpeglib.h>
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

static char dir[] = "/tmp/ballast_test_pipeline_XXXXXX";

static const char *path_in_dir(const char *name) {
    static char buf[8][512];
    static int next;
    char *p = buf[next++ & 7];
    snprintf(p, 512, "%s/%s", dir, name);
    return p;
}

static void make_dir(const char *name) { mkdir(path_in_dir(name), 0755); }

static void write_text(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    fputs(text, f);
    fclose(f);
}

/* Labels 0..C-1 repeated `per_class[c]` times each, interleaved so classes are not contiguous. */
static bl_tensor *make_labels(const int64_t *per_class, int64_t num_classes) {
    int64_t n = 0, left[64];
    for (int64_t c = 0; c < num_classes; c++) n += left[c] = per_class[c];
    bl_tensor *t = bl_tensor_new_persistent(BL_I64, BL_SHAPE(n));
    int64_t *y = t->data, k = 0;
    while (k < n)
        for (int64_t c = 0; c < num_classes; c++)
            if (left[c]) {
                y[k++] = c;
                left[c]--;
            }
    return t;
}

static bool contains(const int64_t *v, int64_t n, int64_t x) {
    for (int64_t i = 0; i < n; i++)
        if (v[i] == x) return true;
    return false;
}

/* ---- long-tailed splits ------------------------------------------------------------------------- */

static void test_longtail_counts_match_protocol(void) {
    /* The CIFAR-10-LT r = 100 counts and the CIFAR-LT sizes published with the protocol. */
    const int64_t c10_r100[10] = {5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50};
    int64_t counts[100];
    CHECK(bl_longtail_counts("exp", 100, 5000, 10, counts) == BL_OK);
    int64_t total = 0;
    for (int i = 0; i < 10; i++) {
        CHECK(counts[i] == c10_r100[i], "class %d: %lld", i, (long long)counts[i]);
        total += counts[i];
    }
    CHECK(total == 12406);
    const struct { int64_t n_max, classes; double r; int64_t total, last; } sizes[] = {
        {5000, 10, 50, 13996, 100}, {5000, 10, 10, 20431, 500}, {500, 100, 100, 10847, 5},
        {500, 100, 50, 12608, 10},  {500, 100, 10, 19573, 50}};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
        CHECK(bl_longtail_counts("exp", sizes[k].r, sizes[k].n_max, sizes[k].classes, counts) == BL_OK);
        total = 0;
        for (int64_t i = 0; i < sizes[k].classes; i++) {
            total += counts[i];
            if (i) CHECK(counts[i] <= counts[i - 1], "counts must not increase");
        }
        CHECK(total == sizes[k].total, "C=%lld r=%g: %lld", (long long)sizes[k].classes, sizes[k].r, (long long)total);
        CHECK(counts[0] == sizes[k].n_max && counts[sizes[k].classes - 1] == sizes[k].last);
    }
    /* step: half the classes keep n_max, the rest n_max / r; odd C puts the middle class in the tail */
    CHECK(bl_longtail_counts("step", 100, 5000, 10, counts) == BL_OK);
    for (int i = 0; i < 10; i++) CHECK(counts[i] == (i < 5 ? 5000 : 50));
    CHECK(bl_longtail_counts("step", 10, 500, 5, counts) == BL_OK);
    CHECK(counts[1] == 500 && counts[2] == 50 && counts[4] == 50);
    CHECK(bl_longtail_counts("linear", 10, 500, 5, counts) == BL_ERR && strstr(bl_last_error(), "linear"));
    bl_clear_error();
    CHECK(bl_longtail_counts("exp", 0.5, 500, 5, counts) == BL_ERR);
}

static void test_longtail_indices(void) {
    const int64_t per_class[6] = {300, 300, 300, 300, 300, 40};
    bl_tensor *labels = make_labels(per_class, 6);
    int64_t *a, *b, *c, *tight, na, nb, nc, nt;
    CHECK(bl_longtail_indices(labels, 6, "exp", 10, 5, &a, &na) == BL_OK);
    int64_t expect[6], got[6] = {0};
    bl_longtail_counts("exp", 10, 300, 6, expect);
    expect[5] = 30; /* 300 * 0.1 = 30 <= 40 available */
    for (int64_t i = 0; i < na; i++) {
        got[((int64_t *)labels->data)[a[i]]]++;
        if (i) CHECK(a[i] > a[i - 1], "indices ascending and unique");
    }
    for (int k = 0; k < 6; k++)
        CHECK(got[k] == expect[k], "class %d: %lld vs %lld", k, (long long)got[k], (long long)expect[k]);
    /* same seed: same split; another seed: another; r = 100 is nested in r = 10 for one seed */
    CHECK(bl_longtail_indices(labels, 6, "exp", 10, 5, &b, &nb) == BL_OK);
    CHECK(nb == na && memcmp(a, b, (size_t)na * sizeof *a) == 0);
    free(b);
    CHECK(bl_longtail_indices(labels, 6, "exp", 10, 6, &b, &nb) == BL_OK);
    CHECK(nb == na && memcmp(a, b, (size_t)na * sizeof *a) != 0);
    CHECK(bl_longtail_indices(labels, 6, "exp", 100, 5, &c, &nc) == BL_OK);
    bool nested = nc < na;
    for (int64_t i = 0; i < nc; i++) nested = nested && contains(a, na, c[i]);
    CHECK(nested, "the r = 100 split keeps a prefix of the same per-class shuffles");
    /* a class with fewer images than its target keeps them all */
    CHECK(bl_longtail_indices(labels, 6, "step", 2, 5, &tight, &nt) == BL_OK);
    CHECK(nt == 300 * 3 + 150 * 2 + 40, "%lld", (long long)nt);
    free(a);
    free(b);
    free(c);
    free(tight);
    ((int64_t *)labels->data)[17] = 6;
    CHECK(bl_longtail_indices(labels, 6, "exp", 10, 5, &a, &na) == BL_ERR && strstr(bl_last_error(), "position 17"));
    bl_tensor_free(labels);
}

static void test_index_file_round_trip(void) {
    int64_t idx[5] = {3, 0, 42, 7, 1000000007}, *back, n;
    const char *p = path_in_dir("split.idx");
    CHECK(bl_indices_save(p, idx, 5, "cifar10 exp r=100\nseed 3") == BL_OK);
    CHECK(bl_indices_load(p, &back, &n) == BL_OK);
    CHECK(n == 5 && memcmp(back, idx, sizeof idx) == 0);
    free(back);
    FILE *f = fopen(p, "r");
    char line[128] = "";
    if (f) {
        fgets(line, sizeof line, f);
        fgets(line, sizeof line, f);
        fclose(f);
    }
    CHECK(strcmp(line, "# cifar10 exp r=100\n") == 0, "comment kept: %s", line);
    write_text(p, "# header\n1\n2\nthree\n");
    CHECK(bl_indices_load(p, &back, &n) == BL_ERR);
    CHECK(strstr(bl_last_error(), "split.idx:4") && strstr(bl_last_error(), "three"), "%s", bl_last_error());
    bl_clear_error();
    write_text(p, "5\n-2\n");
    CHECK(bl_indices_load(p, &back, &n) == BL_ERR && strstr(bl_last_error(), "split.idx:2"));
    bl_clear_error();
    CHECK(bl_indices_load(path_in_dir("nowhere.idx"), &back, &n) == BL_ERR && strstr(bl_last_error(), "nowhere.idx"));
    bl_clear_error();
    /* A comment longer than the reader's line buffer round-trips (its tail was read as an index),
     * and a long line of an index is refused, not split into two indices. */
    char comment[600];
    memset(comment, 'x', sizeof comment - 1);
    comment[sizeof comment - 1] = '\0';
    CHECK(bl_indices_save(p, idx, 5, comment) == BL_OK);
    CHECK(bl_indices_load(p, &back, &n) == BL_OK, "%s", bl_last_error());
    CHECK(n == 5 && back && memcmp(back, idx, sizeof idx) == 0);
    free(back);
    bl_clear_error();
    char two[400];
    memset(two, ' ', sizeof two);
    two[0] = '1';
    memcpy(two + sizeof two - 2, "2\n", 2);
    f = fopen(p, "w");
    if (f) {
        fwrite(two, 1, sizeof two, f);
        fclose(f);
    }
    CHECK(bl_indices_load(p, &back, &n) == BL_ERR && strstr(bl_last_error(), "split.idx:1"), "%s", bl_last_error());
    bl_clear_error();
}

static void test_holdout_complement_subset(void) {
    const int64_t per_class[4] = {50, 30, 9, 1};
    bl_tensor *labels = make_labels(per_class, 4);
    int64_t *train, *val, nt, nv;
    /* from a pool nobody trains on, a class gives all it has up to per_class */
    CHECK(bl_split_holdout(labels, 4, 10, 1.0, 11, &train, &nt, &val, &nv) == BL_OK);
    const int64_t expect_pool[4] = {10, 10, 9, 1};
    int64_t got[4] = {0};
    for (int64_t i = 0; i < nv; i++) got[((int64_t *)labels->data)[val[i]]]++;
    for (int k = 0; k < 4; k++) CHECK(got[k] == expect_pool[k], "class %d: %lld", k, (long long)got[k]);
    free(train);
    free(val);
    CHECK(bl_split_holdout(labels, 4, 10, 1.5, 11, &train, &nt, &val, &nv) == BL_ERR && strstr(bl_last_error(), "1.5"));
    bl_clear_error();

    CHECK(bl_split_holdout(labels, 4, 10, 0.5, 11, &train, &nt, &val, &nv) == BL_OK);
    const int64_t expect_val[4] = {10, 10, 4, 0}; /* min(per_class, floor(n_c / 2)) */
    memset(got, 0, sizeof got);
    for (int64_t i = 0; i < nv; i++) got[((int64_t *)labels->data)[val[i]]]++;
    for (int k = 0; k < 4; k++) CHECK(got[k] == expect_val[k], "class %d: %lld", k, (long long)got[k]);
    CHECK(nt + nv == 90);
    for (int64_t i = 0; i < nv; i++)
        CHECK(!contains(train, nt, val[i]), "train and val overlap at %lld", (long long)val[i]);
    int64_t *rest, nr;
    CHECK(bl_indices_complement(val, nv, 90, &rest, &nr) == BL_OK);
    CHECK(nr == nt && memcmp(rest, train, (size_t)nt * sizeof *rest) == 0, "complement of val is train");
    free(rest);
    CHECK(bl_indices_complement(val, nv, 5, &rest, &nr) == BL_ERR);
    bl_clear_error();

    /* subset copies the chosen rows and labels */
    bl_dataset ds = {0};
    ds.images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(90, 2, 3, 1));
    ds.labels = labels;
    ds.num_classes = 4;
    for (int64_t i = 0; i < 90 * 6; i++) ((uint8_t *)ds.images->data)[i] = (uint8_t)(i / 6);
    bl_dataset sub;
    CHECK(bl_dataset_subset(&ds, val, nv, &sub) == BL_OK);
    CHECK(sub.images->shape[0] == nv && sub.num_classes == 4);
    for (int64_t i = 0; i < nv; i++) {
        CHECK(bl_get_flat(sub.images, i * 6 + 5) == (double)(val[i] & 255));
        CHECK(bl_get_flat(sub.labels, i) == bl_get_flat(labels, val[i]));
    }
    bl_dataset_free(&sub);
    int64_t bad[2] = {1, 90};
    CHECK(bl_dataset_subset(&ds, bad, 2, &sub) == BL_ERR && strstr(bl_last_error(), "index 90"));
    bl_clear_error();
    int64_t counts[4];
    CHECK(bl_class_counts(labels, 4, counts) == 90 && counts[0] == 50 && counts[3] == 1);
    CHECK(bl_class_counts(labels, 3, counts) == -1 && strstr(bl_last_error(), "label 3"));
    free(train);
    free(val);
    bl_dataset_free(&ds);
}

/* ---- samplers ----------------------------------------------------------------------------------- */

/* The weighted sampler draws row i with probability w_i / sum w (never a row of weight 0), reads
 * the weights anew each epoch, and repeats an epoch's draws with its seed. */
static void test_weighted_sampler(void) {
    int64_t n = 4;
    bl_tensor *w = bl_tensor_new_persistent(BL_F32, 1, &n);
    const float start[4] = {1, 2, 0, 5};
    memcpy(w->data, start, sizeof start);
    bl_sampler *s = bl_sampler_weighted(w, 9);
    CHECK(s && strcmp(bl_sampler_kind(s), "weighted") == 0);
    if (!s) return;
    int64_t counts[4] = {0}, order[4], again[4];
    const int epochs = 20000;
    for (int e = 0; e < epochs; e++) {
        CHECK(bl_sampler_epoch(s, e, epochs, order, 4) == BL_OK);
        for (int i = 0; i < 4; i++) counts[order[i]]++;
    }
    const double total = 4.0 * epochs;
    CHECK(counts[2] == 0, "a row of weight 0 was drawn %lld times", (long long)counts[2]);
    /* binomial standard deviations at 80000 draws are below 0.002; 0.01 is five of them */
    CHECK(fabs(counts[0] / total - 1.0 / 8) < 0.01 && fabs(counts[1] / total - 2.0 / 8) < 0.01 &&
              fabs(counts[3] / total - 5.0 / 8) < 0.01,
          "frequencies %g %g %g", counts[0] / total, counts[1] / total, counts[3] / total);
    CHECK(bl_sampler_epoch(s, 3, epochs, order, 4) == BL_OK && bl_sampler_epoch(s, 3, epochs, again, 4) == BL_OK &&
          memcmp(order, again, sizeof order) == 0, "the same epoch, the same draws");
    ((float *)w->data)[3] = 0; /* the weights are read at every epoch */
    ((float *)w->data)[1] = 0;
    CHECK(bl_sampler_epoch(s, 0, epochs, order, 4) == BL_OK);
    for (int i = 0; i < 4; i++) CHECK(order[i] == 0, "only row 0 has weight left, drew %lld", (long long)order[i]);
    ((float *)w->data)[0] = -1;
    CHECK(bl_sampler_epoch(s, 0, epochs, order, 4) == BL_ERR && strstr(bl_last_error(), "weight 0 is -1"), "%s",
          bl_last_error());
    bl_clear_error();
    bl_sampler_free(s);
    bl_tensor_free(w);
}

/* The validation draw: 3 classes of 20 rows; the subset keeps all of class 0 (the head), 10 of
 * class 1 and 2 of class 2. With 4 per class, classes 1 and 2 take theirs from the left-out rows
 * (class 2 has 18 of them), class 0 has none left out and gives up 4 of its 20 subset rows; no
 * validation row is trained on, and the draw repeats with the seed. */
static void test_validation_draw(void) {
    int64_t n = 60, labels_data[60];
    for (int64_t i = 0; i < n; i++) labels_data[i] = i / 20;
    bl_tensor *labels = bl_from_data(BL_I64, 1, &n, labels_data);
    int64_t *subset = malloc(32 * sizeof *subset), n_subset = 0;
    for (int64_t i = 0; i < 20; i++) subset[n_subset++] = i;
    for (int64_t i = 20; i < 30; i++) subset[n_subset++] = i;
    subset[n_subset++] = 40;
    subset[n_subset++] = 41;
    int64_t *val = NULL, n_val = 0;
    CHECK(bl_split_validation(labels, 3, 4, 7, &subset, &n_subset, &val, &n_val) == BL_OK);
    int64_t per_class[3] = {0}, from_subset = 0;
    bool in_subset[60] = {false};
    for (int64_t i = 0; i < n_subset; i++) in_subset[subset[i]] = true;
    for (int64_t i = 0; i < n_val; i++) {
        per_class[val[i] / 20]++;
        CHECK(!in_subset[val[i]], "validation row %lld is also trained on", (long long)val[i]);
        from_subset += val[i] < 20;
        if (i) CHECK(val[i] > val[i - 1], "ascending");
    }
    CHECK(n_val == 12 && per_class[0] == 4 && per_class[1] == 4 && per_class[2] == 4, "%lld: %lld %lld %lld",
          (long long)n_val, (long long)per_class[0], (long long)per_class[1], (long long)per_class[2]);
    CHECK(from_subset == 4 && n_subset == 32 - 4, "the head gave up %lld rows, the subset has %lld", (long long)from_subset,
          (long long)n_subset);
    for (int64_t i = 0; i < n_val; i++)
        if (val[i] >= 20) CHECK(val[i] >= 30 && val[i] != 40 && val[i] != 41, "row %lld is from the pool", (long long)val[i]);
    int64_t *subset2 = malloc(32 * sizeof *subset2), n2 = 0, *val2 = NULL, n_val2 = 0;
    for (int64_t i = 0; i < 30; i++) subset2[n2++] = i;
    subset2[n2++] = 40;
    subset2[n2++] = 41;
    CHECK(bl_split_validation(labels, 3, 4, 7, &subset2, &n2, &val2, &n_val2) == BL_OK);
    CHECK(n_val2 == n_val && memcmp(val, val2, (size_t)n_val * sizeof *val) == 0, "the same seed, the same split");
    free(subset);
    free(subset2);
    free(val);
    free(val2);
}

/* Pearson's chi-square of observed class counts against probabilities (classes with p = 0 must
 * never be drawn). */
static double chi_square(const int64_t *observed, const double *p, int64_t classes, int64_t draws) {
    double chi = 0;
    for (int64_t c = 0; c < classes; c++) {
        if (p[c] == 0) {
            if (observed[c]) return INFINITY;
            continue;
        }
        double e = p[c] * (double)draws;
        chi += (observed[c] - e) * (observed[c] - e) / e;
    }
    return chi;
}

static void test_sampler_frequencies(void) {
    enum { C = 8 };
    const int64_t per_class[C] = {400, 200, 100, 50, 25, 10, 0, 15}; /* class 6 is empty */
    bl_tensor *labels = make_labels(per_class, C);
    const int64_t n = 800, draws = 64000;
    int64_t *order = malloc((size_t)draws * sizeof *order);
    double p[C];
    /* The definitions, computed here independently of the library. */
    const char *kinds[] = {"class_balanced", "sqrt", "progressive", "progressive", "progressive"};
    const int epochs[] = {0, 0, 0, 5, 10};
    for (int k = 0; k < 5; k++) {
        bl_sampler *s = bl_sampler_create(kinds[k], labels, C, 3);
        CHECK(s && bl_sampler_epoch(s, epochs[k], 10, order, draws) == BL_OK);
        double t = epochs[k] / 10.0, sum = 0;
        for (int c = 0; c < C; c++) {
            double instance = per_class[c] / (double)n, balanced = per_class[c] ? 1.0 / 7 : 0;
            p[c] = k == 0 ? balanced : k == 1 ? sqrt((double)per_class[c]) : (1 - t) * instance + t * balanced;
            sum += p[c];
        }
        for (int c = 0; c < C; c++) p[c] /= sum;
        int64_t observed[C] = {0};
        for (int64_t i = 0; i < draws; i++) observed[((int64_t *)labels->data)[order[i]]]++;
        /* df = 6: chi-square above 35 has probability below 1e-5 under a correct sampler */
        double chi = chi_square(observed, p, C, draws);
        CHECK(chi < 35, "%s at epoch %d: chi-square %.1f", kinds[k], epochs[k], chi);
        double lib[C];
        bl_sampler_class_probs(s, epochs[k], 10, lib);
        for (int c = 0; c < C; c++) CHECK_CLOSE(lib[c], p[c], 1e-12);
        if (k == 0) {
            /* within class 0 every one of its 400 images is equally likely */
            int64_t within[400] = {0}, pos = 0, index_of[800];
            for (int64_t i = 0; i < n; i++)
                if (((int64_t *)labels->data)[i] == 0) index_of[i] = pos++;
            for (int64_t i = 0; i < draws; i++)
                if (((int64_t *)labels->data)[order[i]] == 0) within[index_of[order[i]]]++;
            double u[400];
            for (int j = 0; j < 400; j++) u[j] = 1.0 / 400;
            /* df = 399: mean 399, sd ~28; 530 is about 4.6 sd */
            double chi_in = chi_square(within, u, 400, observed[0]);
            CHECK(chi_in < 530, "within-class chi-square %.1f", chi_in);
        }
        /* the order depends only on (seed, epoch) */
        int64_t *again = malloc((size_t)draws * sizeof *again);
        bl_sampler_epoch(s, epochs[k] + 1, 10, again, draws);
        bl_sampler_epoch(s, epochs[k], 10, again, draws);
        CHECK(memcmp(order, again, (size_t)draws * sizeof *order) == 0);
        free(again);
        bl_sampler_free(s);
    }
    /* instance: every image once per epoch, a new permutation each epoch */
    bl_sampler *s = bl_sampler_create("instance", labels, C, 3);
    int64_t second[800];
    CHECK(bl_sampler_epoch(s, 0, 10, order, n) == BL_OK && bl_sampler_epoch(s, 1, 10, second, n) == BL_OK);
    bool *seen = calloc(n, 1);
    bool permutation = true;
    for (int64_t i = 0; i < n; i++) {
        permutation = permutation && !seen[order[i]];
        seen[order[i]] = true;
    }
    CHECK(permutation, "an instance epoch visits every image exactly once");
    CHECK(memcmp(order, second, sizeof second) != 0, "epochs are shuffled differently");
    free(seen);
    bl_sampler_free(s);
    CHECK(!bl_sampler_create("balanced", labels, C, 3) && strstr(bl_last_error(), "balanced"));
    free(order);
    bl_tensor_free(labels);
}

/* ---- augmentation ------------------------------------------------------------------------------- */

/* The transform written the slow, obvious way: materialize the padded image, crop, flip,
 * normalize, cut out; random draws in the documented order. */
static void naive_augment(const bl_augment *a, const uint8_t *src, int C, int H, int W, bl_rng *rng, float *dst,
                          int *top_out, int *left_out, bool *flip_out) {
    int pad = a->crop_pad, PH = H + 2 * pad, PW = W + 2 * pad;
    int top = pad ? (int)bl_rng_below(rng, 2 * pad + 1) : 0, left = pad ? (int)bl_rng_below(rng, 2 * pad + 1) : 0;
    bool flip = a->hflip && bl_rng_uniform(rng) < 0.5;
    float *padded = calloc((size_t)(C * PH * PW), sizeof *padded);
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) padded[(c * PH + y + pad) * PW + x + pad] = src[(c * H + y) * W + x];
    for (int c = 0; c < C; c++)
        for (int y = 0; y < H; y++)
            for (int x = 0; x < W; x++) {
                int sx = flip ? W - 1 - x : x;
                float v = padded[(c * PH + y + top) * PW + sx + left] / 255.0f;
                int k = C == 1 ? 0 : c;
                dst[(c * H + y) * W + x] = a->std[k] != 0 ? (v - a->mean[k]) / a->std[k] : v;
            }
    if (a->cutout) {
        int cy = (int)bl_rng_below(rng, H), cx = (int)bl_rng_below(rng, W);
        for (int c = 0; c < C; c++)
            for (int y = 0; y < H; y++)
                for (int x = 0; x < W; x++)
                    if (y >= cy - a->cutout / 2 && y < cy + a->cutout / 2 && x >= cx - a->cutout / 2 &&
                        x < cx + a->cutout / 2)
                        dst[(c * H + y) * W + x] = 0;
    }
    free(padded);
    if (top_out) *top_out = top;
    if (left_out) *left_out = left;
    if (flip_out) *flip_out = flip;
}

static void test_augment_against_naive(void) {
    enum { C = 3, H = 7, W = 10 };
    uint8_t img[C * H * W];
    bl_rng fill = bl_rng_make(1, 2);
    for (int i = 0; i < C * H * W; i++) img[i] = (uint8_t)bl_rng_below(&fill, 256);
    bl_augment a = {.crop_pad = 3, .hflip = true, .mean = {0.5f, 0.4f, 0.3f}, .std = {0.2f, 0.25f, 0.0f}, .cutout = 4};
    float fast[C * H * W], slow[C * H * W];
    double worst = 0;
    int flips = 0;
    for (int k = 0; k < 300; k++) {
        a.cutout = k % 3 ? 4 : 0;
        bl_rng r1 = bl_augment_stream(9, k % 4, k), r2 = r1;
        bool flip;
        CHECK(bl_augment_image(&a, img, C, H, W, &r1, fast) == BL_OK);
        naive_augment(&a, img, C, H, W, &r2, slow, NULL, NULL, &flip);
        flips += flip;
        for (int i = 0; i < C * H * W; i++) worst = fmax(worst, fabs(fast[i] - slow[i]));
    }
    CHECK(worst < 1e-5, "fused transform differs from the naive one by %g", worst);
    CHECK(flips > 100 && flips < 200, "flips %d of 300", flips);
}

/* Colour jitter, one operation at a time, against its definition on the pixels in [0, 1]: the
 * output is clamp(f x + (1 - f) base) with base 0 (brightness), the image's mean grey (contrast) or
 * each pixel's grey (saturation), for one factor f per image (fitted by least squares) in
 * [1 - s, 1 + s] and spread over it. Saturation leaves a grey image alone. */
static void test_color_jitter(void) {
    enum { C = 3, H = 6, W = 5, N = H * W };
    uint8_t img[C * N];
    bl_rng fill = bl_rng_make(4, 2);
    for (int i = 0; i < C * N; i++) img[i] = (uint8_t)(40 + bl_rng_below(&fill, 170));
    double in[C * N], grey_of[N], mean_grey = 0;
    for (int i = 0; i < C * N; i++) in[i] = img[i] / 255.0;
    for (int i = 0; i < N; i++) {
        grey_of[i] = 0.299 * in[i] + 0.587 * in[N + i] + 0.114 * in[2 * N + i];
        mean_grey += grey_of[i] / N;
    }
    for (int op = 0; op < 3; op++) {
        bl_augment a = {.mean = {0.5f, 0.4f, 0.3f}, .std = {0.2f, 0.25f, 0.3f}};
        a.jitter[op] = 0.5f;
        double lowest = 2, highest = 0, worst = 0;
        for (int k = 0; k < 60; k++) {
            bl_rng r = bl_augment_stream(5, 0, k);
            float out[C * N];
            CHECK(bl_augment_image(&a, img, C, H, W, &r, out) == BL_OK);
            double got[C * N], base[C * N], num = 0, den = 0;
            for (int i = 0; i < C * N; i++) {
                got[i] = out[i] * a.std[i / N] + a.mean[i / N];
                base[i] = op == 0 ? 0 : op == 1 ? mean_grey : grey_of[i % N];
                if (got[i] > 1e-6 && got[i] < 1 - 1e-6) { /* unclamped */
                    num += (got[i] - base[i]) * (in[i] - base[i]);
                    den += (in[i] - base[i]) * (in[i] - base[i]);
                }
            }
            const double f = num / den;
            lowest = fmin(lowest, f);
            highest = fmax(highest, f);
            for (int i = 0; i < C * N; i++)
                worst = fmax(worst, fabs(got[i] - fmin(1, fmax(0, f * in[i] + (1 - f) * base[i]))));
        }
        CHECK(worst < 1e-5, "op %d: off its definition by %g", op, worst);
        CHECK(lowest >= 0.5 - 1e-6 && lowest < 0.65 && highest <= 1.5 + 1e-6 && highest > 1.35, "op %d: f in [%g, %g]",
              op, lowest, highest);
    }
    /* a grey (1-channel) image: saturation is the identity */
    bl_augment grey_aug = {.mean = {0.5f}, .std = {0.2f}}, plain = grey_aug;
    grey_aug.jitter[2] = 0.8f;
    float with[N], without[N];
    bl_rng r1 = bl_augment_stream(1, 0, 0), r2 = r1;
    CHECK(bl_augment_image(&grey_aug, img, 1, H, W, &r1, with) == BL_OK &&
          bl_augment_image(&plain, img, 1, H, W, &r2, without) == BL_OK);
    for (int i = 0; i < N; i++) CHECK(fabsf(with[i] - without[i]) < 1e-5f);
}

/* With every source pixel distinct, an output identifies its crop offset and flip: over many
 * draws each of the (2p+1)^2 * 2 outcomes must appear about equally often. */
static void test_augment_offsets_uniform(void) {
    enum { H = 6, W = 8, P = 2, OUTCOMES = (2 * P + 1) * (2 * P + 1) * 2, DRAWS = 10000 };
    uint8_t img[H * W];
    for (int i = 0; i < H * W; i++) img[i] = (uint8_t)(i + 1);
    bl_augment a = {.crop_pad = P, .hflip = true, .mean = {0}, .std = {0}};
    static float candidates[OUTCOMES][H * W];
    for (int top = 0; top <= 2 * P; top++)
        for (int left = 0; left <= 2 * P; left++)
            for (int f = 0; f < 2; f++) {
                float *c = candidates[(top * (2 * P + 1) + left) * 2 + f];
                for (int y = 0; y < H; y++)
                    for (int x = 0; x < W; x++) {
                        int sy = y + top - P, sx = (f ? W - 1 - x : x) + left - P;
                        c[y * W + x] = sy >= 0 && sy < H && sx >= 0 && sx < W ? img[sy * W + sx] / 255.0f : 0.0f;
                    }
            }
    int64_t hits[OUTCOMES] = {0}, unmatched = 0;
    float out[H * W];
    for (int k = 0; k < DRAWS; k++) {
        bl_rng r = bl_augment_stream(4, 0, k);
        bl_augment_image(&a, img, 1, H, W, &r, out);
        int match = -1;
        for (int o = 0; o < OUTCOMES && match < 0; o++) {
            double diff = 0;
            for (int i = 0; i < H * W; i++) diff = fmax(diff, fabs(out[i] - candidates[o][i]));
            if (diff < 1e-6) match = o;
        }
        if (match < 0) unmatched++;
        else hits[match]++;
    }
    CHECK(unmatched == 0, "%lld outputs are no crop of the padded image", (long long)unmatched);
    double p[OUTCOMES];
    for (int o = 0; o < OUTCOMES; o++) p[o] = 1.0 / OUTCOMES;
    double chi = chi_square(hits, p, OUTCOMES, DRAWS - unmatched); /* df 49: 100 is ~5 sd out */
    CHECK(chi < 100, "crop/flip outcomes not uniform: chi-square %.1f", chi);
}

/* ---- loader ------------------------------------------------------------------------------------- */

static bl_dataset small_dataset(int64_t n) {
    bl_dataset ds = {0};
    ds.images = bl_tensor_new_persistent(BL_U8, BL_SHAPE(n, 3, 6, 5));
    ds.labels = bl_tensor_new_persistent(BL_I64, BL_SHAPE(n));
    ds.num_classes = 4;
    bl_rng r = bl_rng_make(5, 5);
    for (int64_t i = 0; i < bl_numel(ds.images); i++) ((uint8_t *)ds.images->data)[i] = (uint8_t)bl_rng_below(&r, 256);
    for (int64_t i = 0; i < n; i++) ((int64_t *)ds.labels->data)[i] = i % 7 == 0 ? 3 : i % 3;
    return ds;
}

/* The row indices of the last drained epoch, in batch order. */
static int64_t drained_index[64];

/* Concatenates an epoch's batches into caller-owned arrays; returns the number of batches. A
 * consumer delay varies the timing between the caller and the loader thread. */
static int64_t drain_epoch(bl_loader *l, int epoch, float *xs, int64_t *ys, int64_t *rows_seen, int delay_us) {
    bl_loader_start_epoch(l, epoch, 4);
    int64_t batches = 0, rows = 0;
    for (;;) {
        bl_scope s = bl_scope_begin();
        bl_batch b;
        if (!bl_loader_next(l, &b)) {
            bl_scope_end(s);
            break;
        }
        bl_tensor *x = bl_batch_get(&b, "x"), *y = bl_batch_get(&b, "y"), *index = bl_batch_get(&b, "index");
        CHECK(x && y && index && b.size == x->shape[0]);
        CHECK(!x->persistent && x->dtype == BL_F32 && y->dtype == BL_I64 && index->dtype == BL_I64);
        memcpy(xs + rows * 90, x->data, bl_nbytes(x));
        memcpy(ys + rows, y->data, bl_nbytes(y));
        if (rows + b.size <= 64) memcpy(drained_index + rows, index->data, bl_nbytes(index));
        rows += x->shape[0];
        batches++;
        if (delay_us) usleep((useconds_t)(delay_us * (batches % 3)));
        bl_scope_end(s);
    }
    *rows_seen = rows;
    return batches;
}

/* mixup: every image is lam x_b + (1 - lam) x_perm(b), with perm a permutation read off the partner
 * labels (all distinct). cutmix: one rectangle of positions comes from the partner in every image
 * and lam is exactly the share of positions outside it. prob 0 and both off leave the batch alone;
 * a seed gives the same mixing again. */
static void test_mix_batch(void) {
    const int64_t B = 6, C = 2, H = 5, W = 7, image = C * H * W;
    bl_tensor *original = test_randn(BL_F32, BL_SHAPE(B, C, H, W), 3), *y = bl_empty(BL_I64, 1, &B);
    for (int64_t i = 0; i < B; i++) ((int64_t *)y->data)[i] = 10 + i;
    const float *o = original->data;
    for (int mode = 0; mode < 2; mode++) {
        for (uint64_t seed = 0; seed < 8; seed++) {
            bl_tensor *x = test_copy(original), *partner = NULL;
            bl_rng rng = bl_rng_make(seed, 1);
            double lam = -1;
            bl_mix_args args = {mode == 0 ? 0.4 : 0, mode == 1 ? 1.0 : 0, 1.0};
            CHECK(bl_mix_batch(&args, &rng, x, y, &partner, &lam) == BL_OK && partner, "%s", bl_last_error());
            if (!partner) continue;
            CHECK(lam >= 0 && lam <= 1, "lam %g", lam);
            int64_t perm[6], seen = 0;
            for (int64_t b = 0; b < B; b++) {
                perm[b] = ((int64_t *)partner->data)[b] - 10;
                CHECK(perm[b] >= 0 && perm[b] < B);
                seen |= (int64_t)1 << perm[b];
            }
            CHECK(seen == (1 << B) - 1, "the partners are a permutation");
            const float *got = x->data;
            if (mode == 0) {
                double worst = 0;
                for (int64_t b = 0; b < B; b++)
                    for (int64_t j = 0; j < image; j++)
                        worst = fmax(worst, fabs(got[b * image + j] -
                                                 (lam * o[b * image + j] + (1 - lam) * o[perm[b] * image + j])));
                CHECK(worst < 1e-5, "mixup off by %g", worst);
            } else {
                int64_t taken = 0;
                for (int64_t p = 0; p < H * W; p++) {
                    /* a position is the partner's in every image and channel, or in none */
                    int from_partner = -1;
                    for (int64_t b = 0; b < B; b++)
                        for (int64_t c = 0; c < C; c++) {
                            const int64_t at = c * H * W + p;
                            bool own = got[b * image + at] == o[b * image + at];
                            bool other = got[b * image + at] == o[perm[b] * image + at];
                            CHECK(own || other, "pixel from neither image");
                            if (perm[b] == b) continue;
                            int here = other && !own;
                            CHECK(from_partner < 0 || from_partner == here, "the box differs between images");
                            from_partner = here;
                        }
                    taken += from_partner == 1;
                }
                CHECK_CLOSE(lam, 1.0 - (double)taken / (double)(H * W), 1e-12);
            }
            bl_tensor *again = test_copy(original), *partner2 = NULL;
            double lam2 = -1;
            rng = bl_rng_make(seed, 1);
            CHECK(bl_mix_batch(&args, &rng, again, y, &partner2, &lam2) == BL_OK && lam2 == lam);
            CHECK(memcmp(again->data, x->data, (size_t)(B * image) * sizeof(float)) == 0, "the seed decides");
        }
    }
    bl_tensor *x = test_copy(original), *partner = NULL;
    bl_rng rng = bl_rng_make(0, 1);
    double lam = 0;
    const bl_mix_args never = {1.0, 1.0, 0.0}, off = {0, 0, 1.0}, bad = {1.0, 0, 1.5};
    CHECK(bl_mix_batch(&never, &rng, x, y, &partner, &lam) == BL_OK && !partner && lam == 1);
    CHECK(bl_mix_batch(&off, &rng, x, y, &partner, &lam) == BL_OK && !partner && lam == 1);
    CHECK(memcmp(x->data, o, (size_t)(B * image) * sizeof(float)) == 0, "an unmixed batch is untouched");
    CHECK(bl_mix_batch(&bad, &rng, x, y, &partner, &lam) == BL_ERR && strstr(bl_last_error(), "1.5"));
    bl_clear_error();
}

static void test_loader_determinism(void) {
    enum { N = 37, B = 8 };
    bl_dataset ds = small_dataset(N);
    bl_augment a = {.crop_pad = 2, .hflip = true, .mean = {0.4f, 0.5f, 0.6f}, .std = {0.2f, 0.2f, 0.2f}, .cutout = 2};
    bl_sampler *s1 = bl_sampler_create("class_balanced", ds.labels, 4, 21);
    bl_sampler *s2 = bl_sampler_create("class_balanced", ds.labels, 4, 21);
    bl_loader *l1 = bl_loader_create(&ds, s1, B, false, &a, 77), *l2 = bl_loader_create(&ds, s2, B, false, &a, 77);
    CHECK(l1 && bl_loader_batches(l1) == 5);
    static float x1[N * 90], x2[N * 90], ref[N * 90], x3[N * 90];
    int64_t y1[N], y2[N], rows1, rows2;
    for (int epoch = 0; epoch < 2; epoch++) {
        CHECK(drain_epoch(l1, epoch, x1, y1, &rows1, 0) == 5 && rows1 == N);
        CHECK(drain_epoch(l2, epoch, x2, y2, &rows2, 300) == 5 && rows2 == N);
        CHECK(memcmp(x1, x2, sizeof x1) == 0 && memcmp(y1, y2, sizeof y1) == 0, "same seed, same batches");
        /* every sample is the documented transform of the image the sampler put there */
        bl_sampler *s = bl_sampler_create("class_balanced", ds.labels, 4, 21);
        int64_t order[N];
        bl_sampler_epoch(s, epoch, 4, order, N);
        bl_sampler_free(s);
        bool labels_ok = true;
        for (int64_t i = 0; i < N; i++) {
            bl_rng r = bl_augment_stream(77, epoch, i);
            bl_augment_image(&a, (uint8_t *)ds.images->data + order[i] * 90, 3, 6, 5, &r, ref + i * 90);
            labels_ok = labels_ok && y1[i] == ((int64_t *)ds.labels->data)[order[i]];
            labels_ok = labels_ok && (i >= 64 || drained_index[i] == order[i]); /* l2 drained last, same order */
        }
        CHECK(labels_ok && memcmp(x1, ref, sizeof x1) == 0, "epoch %d: batches are not the expected transforms", epoch);
        if (epoch == 0) memcpy(x3, x1, sizeof x1);
    }
    CHECK(memcmp(x3, x1, sizeof x1) != 0, "epochs 0 and 1 differ");
    /* another seed changes the augmentation; an epoch abandoned half way does not disturb the next */
    bl_loader *l3 = bl_loader_create(&ds, s1, B, false, &a, 78);
    drain_epoch(l3, 1, x3, y2, &rows2, 0);
    CHECK(memcmp(x3, x1, sizeof x1) != 0, "another seed, other batches");
    bl_batch b;
    bl_loader_start_epoch(l2, 0, 4);
    CHECK(bl_loader_next(l2, &b));
    CHECK(drain_epoch(l2, 1, x2, y2, &rows2, 0) == 5 && memcmp(x2, x1, sizeof x1) == 0);
    bl_loader_free(l1);
    bl_loader_free(l2);
    bl_loader_free(l3);
    /* sequential order, no augmentation, drop_last */
    bl_loader *plain = bl_loader_create(&ds, NULL, B, true, NULL, 0);
    CHECK(bl_loader_batches(plain) == 4);
    CHECK(!bl_loader_next(plain, &b) && strstr(bl_last_error(), "start_epoch"));
    bl_clear_error();
    CHECK(drain_epoch(plain, 0, x1, y1, &rows1, 0) == 4 && rows1 == 32);
    /* sequential order: the batch's "index" field counts the rows */
    for (int64_t i = 0; i < 32; i++) CHECK(drained_index[i] == i, "row %lld has index %lld", (long long)i, (long long)drained_index[i]);
    CHECK_CLOSE(x1[31 * 90 + 7], ((uint8_t *)ds.images->data)[31 * 90 + 7] / 255.0, 1e-6);
    CHECK(y1[21] == ((int64_t *)ds.labels->data)[21]);
    bl_loader_free(plain);
    bl_sampler_free(s1);
    bl_sampler_free(s2);
    bl_dataset_free(&ds);
}

static int failing_hook(float *image, int64_t c, int64_t h, int64_t w, bl_rng *rng, void *user) {
    int *calls = user;
    if (++*calls > 10) {
        bl_set_error("hook refused image");
        return BL_ERR;
    }
    image[0] = 99.0f;
    return BL_OK;
}

static void test_loader_hook_error(void) {
    bl_dataset ds = small_dataset(37);
    int calls = 0;
    bl_augment a = bl_augment_defaults("none", true);
    a.hook = failing_hook;
    a.hook_user = &calls;
    bl_loader *l = bl_loader_create(&ds, NULL, 8, false, &a, 0);
    bl_loader_start_epoch(l, 0, 1);
    bl_batch b;
    CHECK(bl_loader_next(l, &b) && bl_get_flat(bl_batch_get(&b, "x"), 90) == 99.0);
    CHECK(!bl_loader_next(l, &b) && strstr(bl_last_error(), "hook refused image"), "%s", bl_last_error());
    bl_loader_free(l);
    bl_dataset_free(&ds);
}

/* ---- dataset formats and locations -------------------------------------------------------------- */

/* CIFAR-style records (label bytes + 3072 pixels), gzip'ed: the readers take either. */
static void write_cifar(const char *path, int64_t records, int label_bytes, int classes) {
    gzFile f = gzopen(path, "wb1");
    unsigned char rec[3074] = {0};
    for (int64_t i = 0; i < records; i++) {
        rec[0] = (unsigned char)(i % classes);
        rec[1] = (unsigned char)((i * 3) % 100);
        rec[label_bytes + 5] = (unsigned char)(i & 255);
        gzwrite(f, rec, (unsigned)(label_bytes + 3072));
    }
    gzclose(f);
}

static void write_idx(const char *path, int64_t n, bool images, int64_t claimed) {
    gzFile f = gzopen(path, "wb1");
    unsigned char hdr[16] = {0, 0, 8, images ? 3 : 1};
    for (int k = 0; k < 4; k++) hdr[4 + k] = (unsigned char)(claimed >> (24 - 8 * k));
    if (images) hdr[11] = hdr[15] = 28;
    gzwrite(f, hdr, images ? 16 : 8);
    unsigned char row[784] = {0};
    for (int64_t i = 0; i < n; i++) {
        row[0] = (unsigned char)(i % 10);
        gzwrite(f, row, images ? 784 : 1);
    }
    gzclose(f);
}

static void test_cifar_and_idx_datasets(void) {
    make_dir("root");
    make_dir("root/cifar-10-batches-bin");
    char root[512];
    snprintf(root, sizeof root, "%s", path_in_dir("root"));
    write_cifar(path_in_dir("root/cifar-10-batches-bin/test_batch.bin"), 10000, 1, 10);
    bl_dataset ds;
    CHECK(bl_dataset_load("cifar10", root, false, &ds) == BL_OK);
    CHECK(ds.images && ds.images->shape[0] == 10000 && ds.num_classes == 10 && ds.class_names &&
          strcmp(ds.class_names[9], "truck") == 0);
    if (ds.images) CHECK(bl_get_flat(ds.labels, 123) == 3 && bl_get_flat(ds.images, 123 * 3072 + 5) == 123);
    bl_dataset_free(&ds);
    /* the training batches are missing: the error names the first one */
    CHECK(bl_dataset_load("cifar10", root, true, &ds) == BL_ERR && strstr(bl_last_error(), "data_batch_1.bin"),
          "%s", bl_last_error());
    bl_clear_error();
    /* truncated at a record boundary: caught by the official size */
    write_cifar(path_in_dir("root/cifar-10-batches-bin/test_batch.bin"), 9999, 1, 10);
    CHECK(bl_dataset_load("cifar10", root, false, &ds) == BL_ERR && strstr(bl_last_error(), "test_batch.bin") &&
          strstr(bl_last_error(), "truncated"), "%s", bl_last_error());
    bl_clear_error();

    /* CIFAR-100 fine and coarse labels, names from the shipped names file */
    make_dir("root/cifar-100-binary");
    write_cifar(path_in_dir("root/cifar-100-binary/test.bin"), 10000, 2, 20);
    char names[1200] = "";
    for (int c = 0; c < 20; c++) snprintf(names + strlen(names), sizeof names - strlen(names), "super%d\n", c);
    write_text(path_in_dir("root/cifar-100-binary/coarse_label_names.txt"), names);
    CHECK(bl_dataset_load("cifar100", root, false, &ds) == BL_OK && ds.num_classes == 100 && !ds.class_names);
    CHECK(ds.labels && bl_get_flat(ds.labels, 41) == 23);
    bl_dataset_free(&ds);
    CHECK(bl_dataset_load("cifar100_coarse", root, false, &ds) == BL_OK && ds.num_classes == 20);
    CHECK(ds.labels && bl_get_flat(ds.labels, 41) == 1 && ds.class_names && strcmp(ds.class_names[19], "super19") == 0);
    bl_dataset_free(&ds);

    /* MNIST-style IDX, gzip'ed, found through BALLAST_DATA */
    make_dir("root/mnist");
    write_idx(path_in_dir("root/mnist/t10k-images-idx3-ubyte.gz"), 10000, true, 10000);
    write_idx(path_in_dir("root/mnist/t10k-labels-idx1-ubyte.gz"), 10000, false, 10000);
    setenv("BALLAST_DATA", root, 1);
    char where[1024];
    CHECK(bl_dataset_locate("mnist", NULL, where, sizeof where) == BL_OK && strstr(where, "root/mnist"));
    CHECK(bl_dataset_load("mnist", NULL, false, &ds) == BL_OK && ds.images && ds.images->shape[1] == 1);
    CHECK(ds.labels && bl_get_flat(ds.labels, 37) == 7 && strcmp(ds.class_names[7], "7") == 0);
    bl_dataset_free(&ds);
    /* labels file promising more than it holds */
    write_idx(path_in_dir("root/mnist/t10k-labels-idx1-ubyte.gz"), 9000, false, 10000);
    CHECK(bl_dataset_load("mnist", NULL, false, &ds) == BL_ERR && strstr(bl_last_error(), "t10k-labels"),
          "%s", bl_last_error());
    bl_clear_error();
    /* a gzip stream cut short */
    FILE *f = fopen(path_in_dir("root/mnist/t10k-images-idx3-ubyte.gz"), "r+b");
    if (f) {
        fseek(f, 0, SEEK_END);
        long size = ftell(f);
        fclose(f);
        CHECK(truncate(path_in_dir("root/mnist/t10k-images-idx3-ubyte.gz"), size / 2) == 0);
    }
    CHECK(bl_dataset_load("mnist", NULL, false, &ds) == BL_ERR && strstr(bl_last_error(), "t10k-images"),
          "%s", bl_last_error());
    bl_clear_error();
    /* a folder holding the files directly, given as the root */
    make_dir("flat");
    write_idx(path_in_dir("flat/train-images-idx3-ubyte.gz"), 60000, true, 60000);
    write_idx(path_in_dir("flat/train-labels-idx1-ubyte.gz"), 60000, false, 60000);
    CHECK(bl_dataset_load("fashion_mnist", path_in_dir("flat"), true, &ds) == BL_OK && ds.images->shape[0] == 60000);
    CHECK(ds.class_names && strcmp(ds.class_names[9], "Ankle boot") == 0);
    bl_dataset_free(&ds);
    CHECK(bl_dataset_load("fashion_mnist", root, true, &ds) == BL_ERR && strstr(bl_last_error(), "fashion_mnist") &&
          strstr(bl_last_error(), "root"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_dataset_load("imagenet", root, true, &ds) == BL_ERR && strstr(bl_last_error(), "imagenet"));
    bl_clear_error();
    unsetenv("BALLAST_DATA");
}

static void write_png(const char *path, int w, int h, bool color, int seed) {
    png_image img;
    memset(&img, 0, sizeof img);
    img.version = PNG_IMAGE_VERSION;
    img.width = (png_uint_32)w;
    img.height = (png_uint_32)h;
    img.format = color ? PNG_FORMAT_RGB : PNG_FORMAT_GRAY;
    unsigned char px[3 * 16 * 16];
    for (int i = 0; i < w * h * (color ? 3 : 1); i++) px[i] = (unsigned char)(i * 7 + seed);
    png_image_write_to_file(&img, path, 0, px, 0, NULL);
}

static void test_image_folder(void) {
    const char *dirs[] = {"imgs", "imgs/train", "imgs/train/cat", "imgs/train/dog", "imgs/train/eel",
                          "imgs/test", "imgs/test/dog"};
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) make_dir(dirs[i]);
    write_png(path_in_dir("imgs/train/cat/a.png"), 4, 3, true, 1);
    write_png(path_in_dir("imgs/train/cat/b.PNG"), 4, 3, true, 2);
    write_png(path_in_dir("imgs/train/dog/a.png"), 4, 3, false, 3); /* grey: replicated to RGB */
    write_png(path_in_dir("imgs/train/eel/z.png"), 4, 3, true, 4);
    write_text(path_in_dir("imgs/train/eel/notes.txt"), "not an image");
    write_png(path_in_dir("imgs/test/dog/q.png"), 4, 3, true, 5);
    char name[600];
    snprintf(name, sizeof name, "folder:%s", path_in_dir("imgs"));
    bl_dataset ds;
    CHECK(bl_dataset_load(name, NULL, true, &ds) == BL_OK);
    CHECK(ds.images && ds.images->shape[0] == 4 && ds.images->shape[1] == 3 && ds.num_classes == 3);
    if (ds.images) {
        CHECK(bl_get_flat(ds.labels, 0) == 0 && bl_get_flat(ds.labels, 2) == 1 && bl_get_flat(ds.labels, 3) == 2);
        CHECK(strcmp(ds.class_names[1], "dog") == 0);
        /* grey image 2: every channel holds the grey pixel (y=1, x=2) = byte 6 */
        for (int c = 0; c < 3; c++) CHECK(bl_get_flat(ds.images, 2 * 36 + c * 12 + 6) == ((6 * 7 + 3) & 255));
        /* colour image 0: channel 2 of pixel (1, 2) is interleaved byte (1*4+2)*3+2 = 20 */
        CHECK(bl_get_flat(ds.images, 2 * 12 + 6) == ((20 * 7 + 1) & 255));
    }
    bl_dataset_free(&ds);
    CHECK(bl_dataset_load(name, NULL, false, &ds) == BL_OK && ds.images->shape[0] == 1);
    CHECK(ds.labels && bl_get_flat(ds.labels, 0) == 1, "test labels follow the training classes");
    bl_dataset_free(&ds);
    make_dir("imgs/test/fox");
    write_png(path_in_dir("imgs/test/fox/q.png"), 4, 3, true, 5);
    CHECK(bl_dataset_load(name, NULL, false, &ds) == BL_ERR && strstr(bl_last_error(), "fox"));
    bl_clear_error();
    write_png(path_in_dir("imgs/train/cat/c.png"), 5, 3, true, 2);
    CHECK(bl_dataset_load(name, NULL, true, &ds) == BL_ERR && strstr(bl_last_error(), "cat/c.png"), "%s",
          bl_last_error());
    bl_clear_error();
    write_png(path_in_dir("imgs/train/cat/c.png"), 4, 3, true, 2);
    write_text(path_in_dir("imgs/train/cat/d.jpg"), "\xff\xd8\xff\xe0 broken");
    CHECK(bl_dataset_load(name, NULL, true, &ds) == BL_ERR && strstr(bl_last_error(), "d.jpg"));
    bl_clear_error();
}

static void write_jpeg(const char *path, int w, int h) {
    struct jpeg_compress_struct cinfo;
    struct jpeg_error_mgr err;
    cinfo.err = jpeg_std_error(&err);
    jpeg_create_compress(&cinfo);
    FILE *f = fopen(path, "wb");
    jpeg_stdio_dest(&cinfo, f);
    cinfo.image_width = (JDIMENSION)w;
    cinfo.image_height = (JDIMENSION)h;
    cinfo.input_components = 3;
    cinfo.in_color_space = JCS_RGB;
    jpeg_set_defaults(&cinfo);
    jpeg_set_quality(&cinfo, 90, TRUE);
    jpeg_start_compress(&cinfo, TRUE);
    unsigned char row[3 * 64];
    while (cinfo.next_scanline < cinfo.image_height) {
        for (int i = 0; i < 3 * w; i++) row[i] = (unsigned char)(i * 5 + cinfo.next_scanline * 9);
        JSAMPROW rows[1] = {row};
        jpeg_write_scanlines(&cinfo, rows, 1);
    }
    jpeg_finish_compress(&cinfo);
    jpeg_destroy_compress(&cinfo);
    fclose(f);
}

/* A JPEG cut short decodes "successfully" in libjpeg (grey fill): the reader must refuse it. */
static void test_truncated_jpeg(void) {
    const char *p = path_in_dir("photo.jpg");
    write_jpeg(p, 48, 40);
    bl_tensor *img = NULL;
    CHECK(bl_read_image(p, &img) == BL_OK && img && img->shape[0] == 3 && img->shape[1] == 40 && img->shape[2] == 48);
    bl_tensor_free(img);
    struct stat st;
    stat(p, &st);
    CHECK(truncate(p, st.st_size / 2) == 0);
    CHECK(bl_read_image(p, &img) == BL_ERR && strstr(bl_last_error(), "photo.jpg") &&
              strstr(bl_last_error(), "Premature end"), "%s", bl_last_error());
}

int main(void) {
    if (!mkdtemp(dir)) return 1;
    const test_case cases[] = {TEST(test_longtail_counts_match_protocol), TEST(test_longtail_indices),
                               TEST(test_index_file_round_trip),          TEST(test_holdout_complement_subset), TEST(test_validation_draw), TEST(test_weighted_sampler),
                               TEST(test_sampler_frequencies),            TEST(test_augment_against_naive), TEST(test_color_jitter),
                               TEST(test_augment_offsets_uniform),        TEST(test_mix_batch), TEST(test_loader_determinism),
                               TEST(test_loader_hook_error),              TEST(test_cifar_and_idx_datasets),
                               TEST(test_image_folder),
                               TEST(test_truncated_jpeg)};
    int rc = test_run_all(cases, (int)(sizeof cases / sizeof cases[0]));
    char cmd[300];
    snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    return rc;
}
