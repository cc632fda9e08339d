/* Tests of the recipe interface: every long-tailed recipe gives, weight for weight, what it gave
 * before recipes owned their step (fingerprints recorded then); resume is bit-exact across a phase
 * boundary and in the middle of a phase; and two recipes that exist only here, because the old
 * interface could not express them: a teacher trained in one phase and distilled into a student in
 * the next (two models, two optimizers, a frozen one), and a recipe whose trainable thing is a
 * tensor of images (no model optimizer at all). And a benchmark registered from outside the trainer
 * (float scores, a variable-size field, no labels) trained by a regression recipe through a
 * weighted sampler of its own. */
#include "test.h"

#include "../methods/recipes.h"
#include "ballast/train.h"
#include "train/train_internal.h"

#include <unistd.h>

static char temp_root[] = "/tmp/ballast_recipes_XXXXXX";

static void test_setup(void) {
    CHECK(mkdtemp(temp_root) != NULL);
    CHECK(bl_recipes_register_builtin() == BL_OK);
}

static void test_cleanup(void) {
    if (getenv("KEEPTMP")) return;
    char command[128];
    snprintf(command, sizeof command, "rm -rf '%s'", temp_root);
    CHECK(system(command) == 0);
}

static uint64_t fnv1a(const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* Every tensor the run holds, "<tag> tensor <name> <fnv>" per line, models then stores. */
static void fingerprint(const bl_run *run, const char *tag, char *out, size_t len) {
    size_t used = 0;
    const struct bl_run_registry *r = run->registry;
    for (int k = 0; k < r->n_models + r->n_stores; k++) {
        const bl_params *ps = k < r->n_models ? &r->models[k]->model->params : &r->stores[k - r->n_models]->params;
        for (int i = 0; i < ps->count && used < len; i++)
            used += (size_t)snprintf(out + used, len - used, "%s tensor %s %016llx\n", tag, ps->entries[i].name,
                                     (unsigned long long)fnv1a(ps->entries[i].tensor->data,
                                                               bl_nbytes(ps->entries[i].tensor)));
    }
}

/* `train_extra` adds train keys (", key: value"); checkpoints every `checkpoint_every` epochs. */
static bl_run *small_run(const char *tag, const char *method, const char *method_options, const char *train_extra,
                         int epochs, int checkpoint_every, bool resume) {
    char yaml[2048];
    snprintf(yaml, sizeof yaml,
             "dataset: {name: synthetic, imbalance: 4, split_seed: 1, val_per_class: 4,\n"
             "          synthetic: {classes: 4, train_per_class: 64, test_per_class: 16, size: 8, noise: 2}}\n"
             "model: {name: convnet3, width: 8, depth: 2}\n"
             "train: {epochs: %d, batch_size: 16, lr: 0.05, schedule: constant, eval_every: 0,\n"
             "        checkpoint_every: %d, log_every: 1000, threads: 1, seed: 3%s}\n"
             "method: {name: %s%s%s}\n"
             "output: {dir: %s/%s}\n",
             epochs, checkpoint_every, train_extra, method, *method_options ? ", " : "", method_options, temp_root, tag);
    bl_config *config = bl_config_parse(yaml, tag);
    return config ? bl_run_create(config, &(bl_run_opts){.quiet = true, .resume = resume}) : NULL;
}

/* ---- the port: same weights and predictions as before ------------------------------------------ */

static const struct {
    const char *tag, *method, *options, *train;
} port_cases[] = {
    {"ce", "ce", "", ""},
    {"ce_mix", "ce", "", ", augment: {mixup: 0.4, cutmix: 1.0, mix_prob: 0.8}"},
    {"cb_reweight", "cb_reweight", "", ""},
    {"cb_resample", "cb_resample", "", ""},
    {"focal", "focal", "", ""},
    {"ldam_drw", "ldam_drw", "drw_start: 0.5", ""},
    {"logit_adjust_loss", "logit_adjust_loss", "", ""},
    {"logit_adjust_posthoc", "logit_adjust_posthoc", "", ""},
    {"crt", "crt", "stage2_epochs: 2", ""},
    {"tau_norm", "tau_norm", "", ""},
    {"lws", "lws", "stage2_epochs: 2", ""},
    {"deconfound_tde", "deconfound_tde", "", ""},
};

/* The lines of the recorded fixture that start with "<tag> ". */
static void expected_lines(const char *text, const char *tag, char *out, size_t len) {
    size_t used = 0, n = strlen(tag);
    out[0] = '\0';
    for (const char *line = text; *line;) {
        const char *end = strchr(line, '\n');
        size_t line_len = end ? (size_t)(end - line + 1) : strlen(line);
        if (strncmp(line, tag, n) == 0 && line[n] == ' ' && used + line_len < len) {
            memcpy(out + used, line, line_len);
            used += line_len;
            out[used] = '\0';
        }
        line += line_len;
    }
}

#ifdef __SANITIZE_ADDRESS__
/* Keeps only the "<tag> steps N" line of a fingerprint, in place. */
static void keep_step_lines(char *text) {
    char *out = text;
    for (char *line = text; *line;) {
        char *end = strchr(line, '\n');
        size_t len = end ? (size_t)(end - line + 1) : strlen(line);
        const char *steps = strstr(line, " steps ");
        if (steps && steps < line + len) {
            memmove(out, line, len);
            out += len;
        }
        line += len;
    }
    *out = '\0';
}
#endif

static void test_port_fixtures(void) {
    char path[1024];
    snprintf(path, sizeof path, "%s/tests/fixtures/recipes_before_port.txt",
             getenv("BALLAST_SOURCE_DIR") ? getenv("BALLAST_SOURCE_DIR") : ".");
    char *fixture = bl_file_read(path, NULL);
    CHECK(fixture != NULL, "%s", path);
    if (!fixture) return;
    static char want[1 << 14], got[1 << 14];
    for (size_t k = 0; k < sizeof port_cases / sizeof port_cases[0]; k++) {
        bl_run *run = small_run(port_cases[k].tag, port_cases[k].method, port_cases[k].options, port_cases[k].train, 4,
                                0, false);
        CHECK(run && bl_run_train(run) == BL_OK, "%s", port_cases[k].tag);
        if (!run) continue;
        fingerprint(run, port_cases[k].tag, got, sizeof got);
        bl_evaluator e;
        CHECK(bl_run_evaluate(run, "test", &e) == BL_OK);
        const bl_metrics *m = bl_evaluator_classification(&e);
        size_t used = strlen(got);
        used += (size_t)snprintf(got + used, sizeof got - used, "%s confusion", port_cases[k].tag);
        for (int64_t i = 0; m && i < 16; i++)
            used += (size_t)snprintf(got + used, sizeof got - used, " %lld", (long long)m->confusion[i]);
        snprintf(got + used, sizeof got - used, "\n%s steps %lld\n", port_cases[k].tag, (long long)run->step);
        bl_evaluator_free(&e);
        expected_lines(fixture, port_cases[k].tag, want, sizeof want);
#ifdef __SANITIZE_ADDRESS__
        /* The fingerprints are of the optimized build (-O2 with the machine's vector ISA), which
         * the suite runs first; the sanitizer build rounds differently (no contraction into FMAs at
         * -O0), which can flip a test prediction, so there only the step counts are compared. */
        keep_step_lines(want);
        keep_step_lines(got);
#endif
        CHECK(strlen(want) > 0 && strcmp(got, want) == 0, "%s differs from the recorded fixture:\n%s--- recorded:\n%s",
              port_cases[k].tag, got, want);
        bl_run_free(run);
        bl_clear_error();
    }
    free(fixture);
}

/* ---- resume ------------------------------------------------------------------------------------ */

/* The directory a run killed after `cut` epochs leaves (its config, split, the epoch's checkpoint
 * and the pointer to it), made from run `from`'s directory under the name `to`. */
static void crashed_copy(const char *from, const char *to, int cut) {
    char src[600], dst[600], command[8192];
    snprintf(src, sizeof src, "%s/%s", temp_root, from);
    snprintf(dst, sizeof dst, "%s/%s", temp_root, to);
    snprintf(command, sizeof command,
             "mkdir -p '%s/checkpoints' && cp '%s'/split_*.idx '%s/' 2>/dev/null; "
             "cp -r '%s/checkpoints/epoch_%04d' '%s/checkpoints/' && "
             "printf '{\"latest\":\"checkpoints/epoch_%04d\"}' > '%s/checkpoint.json' && "
             "sed 's|%s|%s|' '%s/config.yaml' > '%s/config.yaml'",
             dst, src, dst, src, cut, dst, cut, dst, src, dst, src, dst);
    CHECK(system(command) == 0, "%s", command);
}

static void test_resume_across_phases(void) {
    /* cRT: 3 main epochs, then 2 classifier epochs with a re-initialised classifier, a frozen
     * backbone, another sampler and a restarted optimizer with its own schedule. A run interrupted
     * (killed) after epochs 2, 3 (the phase boundary) and 4 (inside the second phase), then resumed,
     * ends bit-identical to one trained straight through. */
    static char straight[1 << 14], resumed[1 << 14];
    bl_run *run = small_run("crt_straight", "crt", "stage2_epochs: 2", "", 3, 1, false);
    CHECK(run && bl_run_train(run) == BL_OK);
    if (!run) return;
    fingerprint(run, "crt", straight, sizeof straight);
    bl_run_free(run);
    for (int cut = 2; cut <= 4; cut++) {
        char tag[64];
        snprintf(tag, sizeof tag, "crt_cut%d", cut);
        crashed_copy("crt_straight", tag, cut);
        bl_run *again = small_run(tag, "crt", "stage2_epochs: 2", "", 3, 1, true);
        CHECK(again && again->epoch == cut, "cut %d: resumed at epoch %d", cut, again ? again->epoch : -1);
        CHECK(again && bl_run_train(again) == BL_OK, "cut %d", cut);
        if (!again) continue;
        fingerprint(again, "crt", resumed, sizeof resumed);
        CHECK(strcmp(straight, resumed) == 0, "cut %d: the resumed run ends with other weights", cut);
        bl_run_free(again);
    }
}

/* ---- a two-model recipe: a teacher, then a student distilled from it ---------------------------- */

/* Phase "teacher": the teacher learns the labels. Phase "distill": the teacher is frozen and the
 * student (a narrower model) learns to match the teacher's softened predictions (KL at T = 2, no
 * labels); evaluation uses the student. */
typedef struct {
    bl_model *teacher, *student;
    bool distilling;
} distill;

static int distill_begin(bl_run *run, void *state) {
    BL_TRY(bl_run_freeze(run, "teacher", true, false));
    bl_model *student = bl_run_model(run, "student");
    for (int i = 0; i < student->params.count; i++)
        if (student->params.entries[i].trainable) student->params.entries[i].tensor->requires_grad = true;
    return BL_OK;
}

static int distill_setup(bl_run *run, void *state) {
    distill *s = state;
    const bl_config *c = run->config;
    s->teacher = bl_run_add_model(run, "teacher", NULL);
    bl_model_opts opts = {.num_classes = run->num_classes, .image_size = 8, .in_channels = 3, .width = 4, .depth = 2};
    s->student = bl_run_add_model(run, "student", bl_model_create("convnet3", &opts, 11));
    if (!s->teacher || !s->student) return BL_ERR;
    if (!bl_run_add_optimizer(run, "teacher", &s->teacher->params, NULL, NULL) ||
        !bl_run_add_optimizer(run, "student", &s->student->params, NULL, NULL))
        return BL_ERR;
    /* the student waits for its phase */
    for (int i = 0; i < s->student->params.count; i++) s->student->params.entries[i].tensor->requires_grad = false;
    const int epochs = (int)bl_config_int(c, "train.epochs");
    BL_TRY(bl_run_add_phase(run, &(bl_phase){"teacher", epochs, NULL, NULL}));
    return bl_run_add_phase(run, &(bl_phase){"distill", epochs, distill_begin, NULL});
}

static int distill_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    const distill *s = state;
    bl_tensor *x = bl_batch_get(b, "x");
    if (s->teacher->params.entries[0].tensor->requires_grad)
        return bl_run_backward_step(run, bl_batch_cross_entropy(b, bl_model_forward(s->teacher, x), bl_ce_args_default()),
                                    loss);
    bl_tensor *target;
    BL_NO_GRAD { target = bl_softmax(bl_mul_scalar(bl_model_forward(s->teacher, x), 0.5), 1); }
    bl_tensor *log_p = bl_log_softmax(bl_mul_scalar(bl_model_forward(s->student, x), 0.5), 1);
    /* KL(target || p) up to the target's entropy, which has no gradient */
    bl_tensor *kl = bl_mul_scalar(bl_sum(bl_mul(target, log_p)), -1.0 / (double)x->shape[0]);
    return bl_run_backward_step(run, kl, loss);
}

static bl_tensor *distill_predict(bl_run *run, void *state, bl_batch *b) {
    return bl_model_forward(((const distill *)state)->student, bl_batch_get(b, "x"));
}

static const bl_recipe distill_recipe = {
    .name = "test_distill",
    .summary = "a teacher, then a student matching its softened predictions (test only)",
    .state_size = sizeof(distill),
    .setup = distill_setup,
    .step = distill_step,
    .predict = distill_predict,
};

/* ---- a recipe that optimises images --------------------------------------------------------------- */

/* The trainable thing is a (K, C, H, W) tensor of images, one per class, in a store "images" with
 * its own Adam optimizer: each step pulls every class image towards the mean of the batch's images
 * of that class (a distribution-matching loss in pixel space, so the optimum is known: the class
 * means). Evaluation classifies a batch by the nearest class image. */
typedef struct {
    bl_tensor *images;
    bl_rng *jitter; /* the recipe's own stream: resume must restore it */
} image_opt;

static int image_setup(bl_run *run, void *state) {
    image_opt *s = state;
    const bl_tensor *im = run->train.images;
    bl_params *store = bl_run_add_params(run, "images");
    s->images = store ? bl_params_add(store, "images", 4,
                                      (int64_t[]){run->num_classes, im->shape[1], im->shape[2], im->shape[3]})
                      : NULL;
    if (!s->images) return BL_ERR;
    bl_optim_config adam = bl_adam_config(0.01, 0.0);
    bl_schedule constant = bl_schedule_constant(0.01);
    if (!bl_run_add_optimizer(run, "images", store, &adam, &constant)) return BL_ERR;
    bl_rng *init = bl_run_add_rng(run, "image_init");
    s->jitter = bl_run_add_rng(run, "jitter");
    return init && s->jitter ? bl_fill_uniform_(s->images, init, -0.1, 0.1) : BL_ERR;
}

static int image_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    const image_opt *s = state;
    bl_tensor *x = bl_batch_get(b, "x"), *y = bl_batch_get(b, "y");
    /* the samples jittered a little from the recipe's stream */
    bl_tensor *noise = bl_empty(BL_F32, x->ndim, x->shape);
    BL_TRY(bl_fill_normal_(noise, s->jitter, 0.0, 1e-3));
    /* the class image of each sample, minus the sample: the squared distance is minimised at the
     * class mean */
    bl_tensor *mine = bl_index_select(s->images, 0, y);
    bl_tensor *d = bl_sub(mine, bl_add(x, noise));
    return bl_run_backward_step(run, bl_mean(bl_mul(d, d)), loss);
}

static bl_tensor *image_predict(bl_run *run, void *state, bl_batch *b) {
    const image_opt *s = state;
    bl_tensor *x = bl_batch_get(b, "x");
    const int64_t n = x->shape[0], k = s->images->shape[0];
    bl_tensor *flat_x = bl_reshape(x, BL_SHAPE(n, -1)), *flat_c = bl_reshape(s->images, BL_SHAPE(k, -1));
    /* logits = -||x - c||^2 = 2 x.c - ||c||^2 - ||x||^2; the last term is the same for every class */
    bl_tensor *cc = bl_sum_dim(bl_mul(flat_c, flat_c), 1, false);
    return bl_sub(bl_mul_scalar(bl_matmul(flat_x, bl_transpose(flat_c, 0, 1)), 2.0), cc);
}

static const bl_recipe image_recipe = {
    .name = "test_image_opt",
    .summary = "class images optimised towards the class means (test only)",
    .state_size = sizeof(image_opt),
    .setup = image_setup,
    .step = image_step,
    .predict = image_predict,
};

/* Straight through, and interrupted after `cut` epochs and resumed: same tensors. */
static void check_mid_phase_resume(const char *method, int epochs, int cut) {
    static char straight[1 << 15], resumed[1 << 15];
    char tag[64];
    snprintf(tag, sizeof tag, "%s_straight", method);
    bl_run *run = small_run(tag, method, "", "", epochs, 1, false);
    CHECK(run && bl_run_train(run) == BL_OK, "%s", method);
    if (!run) return;
    fingerprint(run, method, straight, sizeof straight);
    bl_run_free(run);
    char cut_tag[64];
    snprintf(cut_tag, sizeof cut_tag, "%s_cut", method);
    crashed_copy(tag, cut_tag, cut);
    bl_run *again = small_run(cut_tag, method, "", "", epochs, 1, true);
    CHECK(again && again->epoch == cut && bl_run_train(again) == BL_OK, "%s", method);
    if (!again) return;
    fingerprint(again, method, resumed, sizeof resumed);
    CHECK(strcmp(straight, resumed) == 0, "%s: the resumed run ends with other tensors", method);
    bl_run_free(again);
}

static void test_two_model_recipe(void) {
    CHECK(bl_recipe_register(&distill_recipe) == BL_OK);
    bl_run *run = small_run("distill", "test_distill", "", "", 8, 0, false);
    CHECK(run && bl_run_train(run) == BL_OK);
    if (!run) return;
    /* The teacher's weights did not move in the distillation phase: its checkpoint at the end of
     * phase one equals the final one. */
    bl_model *teacher = bl_run_model(run, "teacher");
    char path[700];
    snprintf(path, sizeof path, "%s/checkpoints/epoch_0008/teacher.safetensors", run->dir);
    bl_safetensors st;
    CHECK(bl_safetensors_load(path, &st) == BL_OK, "%s", path);
    bool same = true;
    for (int i = 0; i < teacher->params.count; i++) {
        const bl_tensor *saved = bl_safetensors_get(&st, teacher->params.entries[i].name);
        same &= saved && test_max_rel_diff(saved, teacher->params.entries[i].tensor) == 0;
    }
    CHECK(same, "the frozen teacher changed while the student trained");
    bl_safetensors_free(&st);
    /* The student learned from the teacher alone: it beats chance on the test set. */
    bl_evaluator e;
    CHECK(bl_run_evaluate(run, "test", &e) == BL_OK);
    CHECK(bl_evaluator_metric(&e, "top1") > 0.4, "student top-1 %g", bl_evaluator_metric(&e, "top1"));
    bl_evaluator_free(&e);
    bl_run_free(run);
    check_mid_phase_resume("test_distill", 4, 6);
}

static void test_image_recipe(void) {
    CHECK(bl_recipe_register(&image_recipe) == BL_OK);
    bl_run *run = small_run("images", "test_image_opt", "", "", 30, 0, false);
    CHECK(run && bl_run_train(run) == BL_OK);
    if (!run) return;
    /* The optimum is each class's mean normalised training image: the learned images approach it. */
    bl_tensor *images = bl_params_find(bl_run_params(run, "images"), "images");
    const bl_tensor *train = run->train.images, *labels = run->train.labels;
    const int64_t pixels = train->shape[1] * train->shape[2] * train->shape[3];
    double worst = 0;
    for (int64_t k = 0; k < run->num_classes; k++) {
        for (int64_t p = 0; p < pixels; p++) {
            double sum = 0;
            int64_t count = 0;
            for (int64_t i = 0; i < labels->shape[0]; i++) {
                if (((const int64_t *)labels->data)[i] != k) continue;
                const int64_t channel = p / (train->shape[2] * train->shape[3]);
                double v = ((const uint8_t *)train->data)[i * pixels + p] / 255.0;
                sum += (v - run->augment.mean[channel]) / run->augment.std[channel];
                count++;
            }
            double d = fabs(((const float *)images->data)[k * pixels + p] - sum / (double)count);
            if (d > worst) worst = d;
        }
    }
    /* synthetic images come unaugmented (no crop or flip for "synthetic"), so the mean is exact */
    CHECK(worst < 0.05, "largest distance of a learned pixel to its class mean: %g", worst);
    bl_evaluator e;
    CHECK(bl_run_evaluate(run, "test", &e) == BL_OK);
    CHECK(bl_evaluator_metric(&e, "top1") > 0.6, "nearest class image top-1 %g", bl_evaluator_metric(&e, "top1"));
    bl_evaluator_free(&e);
    bl_run_free(run);
    check_mid_phase_resume("test_image_opt", 6, 3);
}

/* ---- a benchmark of its own: scores, a variable-size field, no labels ---------------------------- */

/* Sample `row` of split `split`: x F32 (4) uniform from the row's stream, score = w.x + 0.5 plus a
 * little noise, and "points", a variable-size field of row % 3 + 1 rows of 2 values (each row's
 * first value is the sample's row, so a batch can check where its rows came from). */
typedef struct {
    uint64_t split_seed;
    int64_t n;
} score_source;

static int64_t scores_length(void *self) { return ((score_source *)self)->n; }

static int scores_get(void *self, int64_t row, bl_rng *rng, bl_host_batch *out) {
    const score_source *s = self;
    bl_rng r = bl_rng_make(s->split_seed, (uint64_t)row);
    const float w[4] = {1.0f, -2.0f, 0.5f, 3.0f};
    float x[4], score = 0.5f;
    for (int i = 0; i < 4; i++) {
        x[i] = (float)bl_rng_uniform(&r);
        score += w[i] * x[i];
    }
    score += (float)(0.01 * bl_rng_normal(rng)); /* the sample's stream: differs by epoch */
    float points[3][2];
    const int64_t n_points = row % 3 + 1;
    for (int64_t p = 0; p < n_points; p++) points[p][0] = (float)row, points[p][1] = (float)p;
    BL_TRY(bl_host_batch_append(out, "x", BL_F32, 1, (int64_t[]){4}, x, false));
    BL_TRY(bl_host_batch_append(out, "score", BL_F32, 0, NULL, &score, false));
    return bl_host_batch_append(out, "points", BL_F32, 2, (int64_t[]){n_points, 2}, points, true);
}

static const bl_option score_options[] = {
    {"scores.train_size", BL_OPT_INT, "192", "training samples"},
    {"scores.test_size", BL_OPT_INT, "64", "test samples"},
};

static int scores_open(bl_run *run, const char *split, bool training, bl_source *out) {
    memset(out, 0, sizeof *out);
    if (strcmp(split, "val") == 0) return BL_OK; /* no validation split */
    score_source *s = calloc(1, sizeof *s);
    BL_CHECK_RC(s, "out of memory");
    const bool train = strcmp(split, "train") == 0;
    s->split_seed = train ? 1 : 2;
    s->n = bl_config_int(run->config, train ? "dataset.scores.train_size" : "dataset.scores.test_size");
    *out = (bl_source){.self = s, .length = scores_length, .get = scores_get, .release = free};
    if (train) run->num_classes = 0;
    return BL_OK;
}

static const bl_benchmark score_benchmark = {
    .name = "test_scores",
    .summary = "linear scores of 4 uniform features (test only)",
    .options = score_options,
    .n_options = 2,
    .open = scores_open,
};

/* Linear regression of the score, trained on batches drawn by a weighted sampler that gives the
 * second half of the training rows weight 0; the step counts rows it saw from that half, and
 * checks each batch's variable-size field against the rows it came from. */
typedef struct {
    bl_tensor *w, *b, *weights;
    int64_t forbidden_rows, bad_points;
} score_recipe;

static int scores_begin(bl_run *run, void *state) { return bl_run_set_sampler(run, "first_half"); }

static int scores_setup(bl_run *run, void *state) {
    score_recipe *s = state;
    bl_params *p = bl_run_add_params(run, "linear");
    const int64_t n = bl_run_split_size(run, "train");
    s->w = p ? bl_params_add(p, "weight", 1, (int64_t[]){4}) : NULL;
    s->b = p ? bl_params_add(p, "bias", 1, (int64_t[]){1}) : NULL;
    s->weights = p ? bl_params_add_buffer(p, "sample_weights", BL_F32, 1, &n) : NULL;
    if (!s->w || !s->b || !s->weights || !bl_run_add_optimizer(run, "linear", p, NULL, NULL)) return BL_ERR;
    for (int64_t i = 0; i < n; i++) ((float *)s->weights->data)[i] = i < n / 2 ? 1.0f : 0.0f;
    BL_TRY(bl_run_add_sampler(run, "first_half", bl_sampler_weighted(s->weights, 5)));
    return bl_run_add_phase(run, &(bl_phase){"main", (int)bl_config_int(run->config, "train.epochs"), scores_begin});
}

static bl_tensor *scores_forward(const score_recipe *s, bl_batch *b) {
    return bl_add(bl_matmul(bl_batch_get(b, "x"), bl_reshape(s->w, BL_SHAPE(4, 1))), s->b);
}

static int scores_step(bl_run *run, void *state, bl_batch *b, double *loss) {
    score_recipe *s = state;
    const int64_t *index = bl_batch_get(b, "index")->data, half = bl_run_split_size(run, "train") / 2;
    const int64_t *lengths = NULL;
    for (int f = 0; f < b->n_fields; f++)
        if (strcmp(b->fields[f].name, "points") == 0 && b->fields[f].lengths) lengths = b->fields[f].lengths->data;
    const float *points = bl_batch_get(b, "points")->data;
    int64_t at = 0;
    for (int64_t i = 0; i < b->size; i++) {
        s->forbidden_rows += index[i] >= half;
        s->bad_points += !lengths || lengths[i] != index[i] % 3 + 1;
        for (int64_t p = 0; lengths && p < lengths[i]; p++, at++) s->bad_points += points[2 * at] != (float)index[i];
    }
    bl_tensor *d = bl_sub(bl_reshape(scores_forward(s, b), BL_SHAPE(b->size)), bl_batch_get(b, "score"));
    return bl_run_backward_step(run, bl_mean(bl_mul(d, d)), loss);
}

static bl_tensor *scores_predict(bl_run *run, void *state, bl_batch *b) {
    return bl_reshape(scores_forward(state, b), BL_SHAPE(b->size));
}

static const bl_recipe scores_recipe = {
    .name = "test_scores_linear",
    .summary = "linear regression of the test benchmark's scores (test only)",
    .state_size = sizeof(score_recipe),
    .evaluator = "regression",
    .setup = scores_setup,
    .step = scores_step,
    .predict = scores_predict,
};

static bl_run *scores_run(const char *tag, bool resume) {
    char yaml[1024];
    snprintf(yaml, sizeof yaml,
             "dataset: {name: test_scores, scores: {train_size: 192}}\n"
             "train: {epochs: 12, batch_size: 16, optimizer: adam, lr: 0.05, weight_decay: 0, schedule: constant,\n"
             "        checkpoint_every: 1, log_every: 1000, threads: 1, seed: 3}\n"
             "method: {name: test_scores_linear}\n"
             "output: {dir: %s/%s}\n",
             temp_root, tag);
    bl_config *config = bl_config_parse(yaml, tag);
    return config ? bl_run_create(config, &(bl_run_opts){.quiet = true, .resume = resume}) : NULL;
}

static void test_benchmark_of_its_own(void) {
    CHECK(bl_benchmark_register(&score_benchmark) == BL_OK && bl_recipe_register(&scores_recipe) == BL_OK);
    bl_run *run = scores_run("scores", false);
    CHECK(run && bl_run_train(run) == BL_OK);
    if (!run) return;
    const score_recipe *s = run->recipe_state;
    CHECK(s->forbidden_rows == 0, "%lld training rows of weight 0 were drawn", (long long)s->forbidden_rows);
    CHECK(s->bad_points == 0, "%lld variable-size entries did not match their rows", (long long)s->bad_points);
    CHECK(run->step == 12 * (192 / 16));
    /* the regression evaluator on the test split: near-perfect ranking of a learnable score */
    bl_evaluator e;
    CHECK(bl_run_evaluate(run, "test", &e) == BL_OK);
    double srcc;
    const char *primary = bl_evaluator_primary(&e, &srcc);
    CHECK(primary && strcmp(primary, "srcc") == 0 && srcc > 0.95, "%s %g", primary ? primary : "?", srcc);
    CHECK(bl_evaluator_metric(&e, "plcc") > 0.95 && bl_evaluator_metric(&e, "rmse") < 0.2, "plcc %g rmse %g",
          bl_evaluator_metric(&e, "plcc"), bl_evaluator_metric(&e, "rmse"));
    bl_evaluator_free(&e);
    char path[700];
    snprintf(path, sizeof path, "%s/results.json", run->dir);
    char *results = bl_file_read(path, NULL);
    CHECK(results && strstr(results, "\"evaluator\":\"regression\"") && strstr(results, "\"srcc\":"), "%s",
          results ? results : path);
    free(results);
    static char straight[1 << 12], resumed[1 << 12];
    fingerprint(run, "scores", straight, sizeof straight);
    bl_run_free(run);
    /* resumed after epoch 5: the weighted sampler (a registered one) and its buffer come back */
    crashed_copy("scores", "scores_cut", 5);
    bl_run *again = scores_run("scores_cut", true);
    CHECK(again && again->epoch == 5 && bl_run_train(again) == BL_OK);
    if (!again) return;
    fingerprint(again, "scores", resumed, sizeof resumed);
    CHECK(strcmp(straight, resumed) == 0, "the resumed run ends with other weights");
    CHECK(((const score_recipe *)again->recipe_state)->forbidden_rows == 0);
    bl_run_free(again);
}

TEST_MAIN(TEST(test_setup), TEST(test_port_fixtures), TEST(test_resume_across_phases), TEST(test_two_model_recipe),
          TEST(test_image_recipe), TEST(test_benchmark_of_its_own), TEST(test_cleanup))
