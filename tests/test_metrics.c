/* Metrics against cases computed by hand: ten images over six classes whose softmax probabilities
 * are chosen directly (logits = log p), so every accuracy, group mean, precision, recall and the
 * calibration error can be worked out on paper; plus constructed calibration cases, batching and
 * stride invariance, the JSON record, and refused inputs. */
#include "test.h"

#include "ballast/metrics.h"
#include "io/json.h"

/* Probabilities per image (rows sum to 1) and labels of the hand-worked case. */
static const double hand_probs[10][6] = {
    {.70, .10, .05, .05, .05, .05}, /* y0: pred 0, conf .70, right */
    {.30, .42, .10, .08, .05, .05}, /* y0: pred 1, conf .42, wrong; only class 1 ranks above */
    {.05, .85, .025, .025, .025, .025}, /* y1: pred 1, conf .85, right */
    {.10, .10, .50, .10, .10, .10}, /* y2: pred 2, conf .50, right */
    {.10, .30, .02, .20, .18, .20}, /* y2: pred 1, conf .30, wrong; label is the lowest: top-5 miss */
    {.05, .05, .05, .62, .18, .05}, /* y3: pred 3, conf .62, right */
    {.05, .05, .05, .05, .75, .05}, /* y4: pred 4, conf .75, right */
    {.05, .55, .10, .10, .10, .10}, /* y4: pred 1, conf .55, wrong */
    {.05, .05, .05, .45, .35, .05}, /* y4: pred 3, conf .45, wrong */
    {.04, .04, .04, .04, .02, .82}, /* y5: pred 5, conf .82, right */
};
static const int64_t hand_labels[10] = {0, 0, 1, 2, 2, 3, 4, 4, 4, 5};
/* many: > 100 (classes 0, 2); medium: 20..100 (classes 1, 3); few: < 20 (classes 4, 5) */
static const int64_t hand_train_counts[6] = {500, 100, 150, 20, 19, 3};

static bl_tensor *hand_logits(bl_dtype dt, int64_t first, int64_t n) {
    bl_tensor *t = bl_empty(dt, BL_SHAPE(n, 6));
    for (int64_t i = 0; i < n; i++)
        for (int j = 0; j < 6; j++) bl_set_flat(t, i * 6 + j, log(hand_probs[first + i][j]));
    return t;
}

static bl_tensor *hand_label_tensor(int64_t first, int64_t n) {
    return bl_from_data(BL_I64, BL_SHAPE(n), hand_labels + first);
}

static void check_hand_summary(const bl_metrics_summary *s) {
    CHECK(s->count == 10);
    CHECK_CLOSE(s->top1, 6.0 / 10, 1e-12);
    CHECK_CLOSE(s->top5, 9.0 / 10, 1e-12);
    /* per-class accuracy: c0 1/2, c1 1/1, c2 1/2, c3 1/1, c4 1/3, c5 1/1 */
    const double acc[6] = {0.5, 1, 0.5, 1, 1.0 / 3, 1};
    for (int c = 0; c < 6; c++) CHECK_CLOSE(s->per_class_acc[c], acc[c], 1e-12);
    /* groups are means of per-class accuracies: few = (1/3 + 1) / 2, not the pooled 2/4 */
    CHECK_CLOSE(s->many, (0.5 + 0.5) / 2, 1e-12);
    CHECK_CLOSE(s->medium, (1.0 + 1.0) / 2, 1e-12);
    CHECK_CLOSE(s->few, (1.0 / 3 + 1.0) / 2, 1e-12);
    CHECK(s->n_many == 2 && s->n_medium == 2 && s->n_few == 2);
    /* predictions per class: c0 1, c1 4 (images 1, 2, 4, 7), c2 1, c3 2 (images 5, 8), c4 1, c5 1 */
    const double precision[6] = {1, 0.25, 1, 0.5, 1, 1};
    for (int c = 0; c < 6; c++) CHECK_CLOSE(s->per_class_precision[c], precision[c], 1e-12);
    CHECK_CLOSE(s->macro_precision, (1 + 0.25 + 1 + 0.5 + 1 + 1) / 6, 1e-12);
    CHECK_CLOSE(s->macro_recall, (0.5 + 1 + 0.5 + 1 + 1.0 / 3 + 1) / 6, 1e-12);
    /* confusion[true][pred] */
    int64_t expected[36] = {0};
    const int64_t pred[10] = {0, 1, 1, 2, 1, 3, 4, 1, 3, 5};
    for (int i = 0; i < 10; i++) expected[hand_labels[i] * 6 + pred[i]]++;
    for (int i = 0; i < 36; i++) CHECK(s->confusion[i] == expected[i], "confusion cell %d", i);
    /* ECE, bins of width 1/15 (bin = ceil(15 conf) - 1):
     *  bin 12: .85 right, .82 right -> |1 - .835| = .165, weight 2/10
     *  bin  6: .42 wrong, .45 wrong -> |0 - .435| = .435, weight 2/10
     *  one image each (weight 1/10): .70 right .30, .50 right .50, .30 wrong .30, .62 right .38,
     *  .75 right .25, .55 wrong .55 */
    double ece = 0.2 * 0.165 + 0.2 * 0.435 + 0.1 * (0.30 + 0.50 + 0.30 + 0.38 + 0.25 + 0.55);
    CHECK_CLOSE(s->ece, ece, 1e-9);
}

static void test_hand_computed_case(void) {
    bl_metrics m;
    CHECK(bl_metrics_init(&m, 6) == BL_OK);
    CHECK(bl_metrics_add(&m, hand_logits(BL_F64, 0, 10), hand_label_tensor(0, 10)) == BL_OK);
    bl_metrics_summary s;
    CHECK(bl_metrics_summarize(&m, hand_train_counts, &s) == BL_OK);
    check_hand_summary(&s);
    bl_metrics_free(&m);
}

/* Batches of any size and logits of any layout or float type give the same counts. */
static void test_batches_and_strides_agree(void) {
    bl_metrics m;
    CHECK(bl_metrics_init(&m, 6) == BL_OK);
    CHECK(bl_metrics_add(&m, hand_logits(BL_F32, 0, 3), hand_label_tensor(0, 3)) == BL_OK);
    /* images 3..9 as the transpose of a (6, 7) tensor: strides (1, 7) */
    bl_tensor *transposed = bl_empty(BL_F32, BL_SHAPE(6, 7));
    for (int i = 0; i < 7; i++)
        for (int j = 0; j < 6; j++) bl_set_flat(transposed, j * 7 + i, log(hand_probs[3 + i][j]));
    bl_tensor *view = bl_transpose(transposed, 0, 1);
    CHECK(view && !bl_is_contiguous(view));
    int32_t labels32[7];
    for (int i = 0; i < 7; i++) labels32[i] = (int32_t)hand_labels[3 + i];
    CHECK(bl_metrics_add(&m, view, bl_from_data(BL_I32, BL_SHAPE(7), labels32)) == BL_OK);
    bl_metrics_summary s;
    CHECK(bl_metrics_summarize(&m, hand_train_counts, &s) == BL_OK);
    check_hand_summary(&s);
    bl_metrics_free(&m);
}

/* Confidence .7 with 7 of 10 right is perfectly calibrated; confidence 1 with half right is off by
 * one half; and both mixed weigh each bin by its share of images. */
static void test_ece_constructed(void) {
    bl_metrics m;
    CHECK(bl_metrics_init(&m, 2) == BL_OK);
    bl_tensor *logits = bl_empty(BL_F64, BL_SHAPE(10, 2));
    int64_t labels[10];
    for (int i = 0; i < 10; i++) {
        bl_set_flat(logits, 2 * i, log(0.7));
        bl_set_flat(logits, 2 * i + 1, log(0.3));
        labels[i] = i < 7 ? 0 : 1;
    }
    CHECK(bl_metrics_add(&m, logits, bl_from_data(BL_I64, BL_SHAPE(10), labels)) == BL_OK);
    bl_metrics_summary s;
    CHECK(bl_metrics_summarize(&m, NULL, &s) == BL_OK);
    CHECK(fabs(s.ece) < 1e-12, "ece %g", s.ece);
    CHECK(isnan(s.many) && isnan(s.medium) && isnan(s.few) && !s.train_counts);

    /* Ten more images with logits (0, -1000): confidence exactly 1 (top bin, upper edge included),
     * labels alternate so five are right. */
    bl_tensor *sure = bl_empty(BL_F32, BL_SHAPE(10, 2));
    for (int i = 0; i < 10; i++) {
        bl_set_flat(sure, 2 * i, 0);
        bl_set_flat(sure, 2 * i + 1, -1000);
        labels[i] = i % 2;
    }
    CHECK(bl_metrics_add(&m, sure, bl_from_data(BL_I64, BL_SHAPE(10), labels)) == BL_OK);
    CHECK(bl_metrics_summarize(&m, NULL, &s) == BL_OK);
    CHECK(m.bin_count[BL_METRICS_ECE_BINS - 1] == 10 && m.bin_count[10] == 10);
    CHECK_CLOSE(s.ece, 0.5 * 0.0 + 0.5 * 0.5, 1e-9);
    CHECK_CLOSE(s.top1, 12.0 / 20, 1e-12);
    CHECK_CLOSE(s.top5, 1.0, 1e-12); /* fewer than 5 classes: every image is a top-5 hit */
    bl_metrics_free(&m);
}

/* On random logits the summary agrees with its own counts and with a direct recount. */
static void test_random_consistency(void) {
    const int64_t n = 300, k = 9;
    bl_tensor *logits = test_randn(BL_F32, BL_SHAPE(n, k), 5);
    int64_t labels[300], counts[9];
    bl_rng r = bl_rng_make(11, 1);
    for (int64_t i = 0; i < n; i++) labels[i] = bl_rng_below(&r, k);
    for (int64_t c = 0; c < k; c++) counts[c] = c * 15; /* 0, 15 | 30..90 | 105, 120 */
    bl_metrics m;
    CHECK(bl_metrics_init(&m, k) == BL_OK);
    CHECK(bl_metrics_add(&m, logits, bl_from_data(BL_I64, BL_SHAPE(n), labels)) == BL_OK);
    bl_metrics_summary s;
    CHECK(bl_metrics_summarize(&m, counts, &s) == BL_OK);
    int64_t top1 = 0, top5 = 0, diagonal = 0, cells = 0;
    for (int64_t i = 0; i < n; i++) {
        const float *row = (const float *)logits->data + i * k;
        int64_t best = 0, above = 0;
        for (int64_t j = 0; j < k; j++) {
            if (row[j] > row[best]) best = j;
            above += row[j] > row[labels[i]];
        }
        top1 += best == labels[i];
        top5 += above < 5;
    }
    for (int64_t i = 0; i < k * k; i++) cells += s.confusion[i];
    for (int64_t c = 0; c < k; c++) diagonal += s.confusion[c * k + c];
    CHECK_CLOSE(s.top1, (double)top1 / n, 1e-12);
    CHECK_CLOSE(s.top5, (double)top5 / n, 1e-12);
    CHECK(cells == n && diagonal == top1);
    CHECK(s.n_many == 2 && s.n_medium == 5 && s.n_few == 2, "%lld %lld %lld", (long long)s.n_many,
          (long long)s.n_medium, (long long)s.n_few);
    /* many = classes 7 and 8: mean of their accuracies recounted from the labels */
    double many = 0;
    for (int64_t c = 7; c < 9; c++) {
        int64_t seen = 0;
        for (int64_t i = 0; i < n; i++) seen += labels[i] == c;
        many += (double)s.confusion[c * k + c] / (double)seen / 2;
    }
    CHECK_CLOSE(s.many, many, 1e-12);
    CHECK(s.ece >= 0 && s.ece <= 1);
    bl_metrics_free(&m);
}

static void test_json_record(void) {
    bl_metrics m;
    CHECK(bl_metrics_init(&m, 6) == BL_OK);
    CHECK(bl_metrics_add(&m, hand_logits(BL_F64, 0, 10), hand_label_tensor(0, 10)) == BL_OK);
    /* every class has over 100 training images: medium and few are empty groups */
    const int64_t all_many[6] = {200, 300, 400, 500, 600, 700};
    bl_metrics_summary s;
    CHECK(bl_metrics_summarize(&m, all_many, &s) == BL_OK);
    char *json = bl_metrics_json(&s, "\"eval\":\"test\",\"epoch\":7");
    CHECK(json != NULL);
    bl__json_pool pool = {0};
    char err[128];
    bl__json *root = json ? bl__json_parse(json, strlen(json), &pool, err, sizeof err) : NULL;
    CHECK(root && root->type == BL_JSON_OBJECT, "%s", json ? err : "no json");
    if (root) {
        CHECK(root->child && strcmp(root->child->key, "eval") == 0, "extra members come first");
        CHECK(bl__json_get(root, "epoch")->integer == 7);
        CHECK_CLOSE(bl__json_get(root, "top1")->number, 0.6, 1e-8);
        CHECK_CLOSE(bl__json_get(root, "many")->number, (0.5 + 1 + 0.5 + 1 + 1.0 / 3 + 1) / 6, 1e-7);
        CHECK(bl__json_get(root, "medium")->type == BL_JSON_NULL && bl__json_get(root, "few")->type == BL_JSON_NULL);
        const bl__json *per_class = bl__json_get(root, "per_class_acc");
        const bl__json *class4 = per_class ? per_class->child->next->next->next->next : NULL;
        CHECK(per_class && per_class->count == 6 && fabs(class4->number - 1.0 / 3) < 1e-7);
        const bl__json *counts = bl__json_get(root, "class_counts");
        CHECK(counts && counts->count == 6 && counts->child->integer == 200);
        const bl__json *confusion = bl__json_get(root, "confusion");
        CHECK(confusion && confusion->count == 6 && confusion->child->count == 6);
        /* row 4 (true class 4): predicted 1, 3, 4 once each */
        const bl__json *row4 = confusion ? confusion->child->next->next->next->next : NULL;
        int64_t row4_values[6], i = 0;
        for (const bl__json *v = row4 ? row4->child : NULL; v && i < 6; v = v->next) row4_values[i++] = v->integer;
        CHECK(i == 6 && row4_values[0] == 0 && row4_values[1] == 1 && row4_values[3] == 1 && row4_values[4] == 1 &&
              row4_values[5] == 0);
        CHECK_CLOSE(bl__json_get(root, "ece")->number, s.ece, 1e-7);
        bl__json_pool_free(&pool);
    }
    free(json);
    /* a class without test images is null in per_class_acc */
    bl_metrics empty;
    CHECK(bl_metrics_init(&empty, 3) == BL_OK);
    CHECK(bl_metrics_summarize(&empty, NULL, &s) == BL_OK);
    json = bl_metrics_json(&s, NULL);
    CHECK(json && strstr(json, "\"per_class_acc\":[null,null,null]") && !strstr(json, "class_counts") &&
              strstr(json, "\"top1\":null"),
          "%s", json);
    free(json);
    bl_metrics_free(&empty);
    bl_metrics_free(&m);
}

static void test_refused_inputs(void) {
    bl_metrics m;
    CHECK(bl_metrics_init(&m, 6) == BL_OK);
    int64_t bad_labels[3] = {0, 6, 1};
    CHECK(bl_metrics_add(&m, hand_logits(BL_F32, 0, 3), bl_from_data(BL_I64, BL_SHAPE(3), bad_labels)) == BL_ERR);
    CHECK(strstr(bl_last_error(), "label 6 at row 1"), "%s", bl_last_error());
    CHECK(m.count == 0, "a refused batch adds nothing");
    bl_clear_error();
    bl_tensor *logits = hand_logits(BL_F32, 0, 3);
    bl_set_flat(logits, 2 * 6 + 4, NAN);
    CHECK(bl_metrics_add(&m, logits, hand_label_tensor(0, 3)) == BL_ERR);
    CHECK(strstr(bl_last_error(), "row 2") && strstr(bl_last_error(), "column 4"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_metrics_add(&m, bl_zeros(BL_F32, BL_SHAPE(3, 5)), hand_label_tensor(0, 3)) == BL_ERR);
    CHECK(strstr(bl_last_error(), "(N, 6)") && strstr(bl_last_error(), "[3, 5]"), "%s", bl_last_error());
    bl_clear_error();
    CHECK(bl_metrics_add(&m, hand_logits(BL_F32, 0, 3), hand_label_tensor(0, 2)) == BL_ERR);
    bl_clear_error();
    CHECK(m.count == 0);
    bl_metrics_free(&m);
    CHECK(bl_metrics_init(&m, 0) == BL_ERR);
    bl_clear_error();
}

TEST_MAIN(TEST(test_hand_computed_case), TEST(test_batches_and_strides_agree), TEST(test_ece_constructed),
          TEST(test_random_consistency), TEST(test_json_record), TEST(test_refused_inputs))
