/* The trainer: turns a validated config into a run (its data, then the recipe's setup, which
 * registers models, optimizers and phases, then the sampler and loader) and runs the phases the
 * recipe declared: per phase its begin hook, per epoch every optimizer's learning rate and the
 * recipe's epoch hook, per batch the recipe's own step inside one arena scope, periodic evaluation
 * on the validation split and checkpoints, then the phase's end hook; at the end the final
 * checkpoint and evaluation. Run directories and checkpoint files are run.c's and registry.c's
 * business. */
#include "train_internal.h"

#include "core/internal.h"
#include "io/json.h"

#include "ballast/dist.h"
#include "ballast/profile.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Random-stream purposes, so that each use of the seed draws from its own stream. */
#define RUN_RNG_PURPOSE 0x7241
#define MIX_RNG_PURPOSE 0x4d69780000000000ull /* "Mix" */
#define SAMPLER_SEED_SALT 0x5a3b1d

static const bl_option trainer_options[] = {
    {"dataset.name", BL_OPT_STRING, NULL,
     "cifar10, cifar100, cifar100_coarse, mnist, fashion_mnist, folder:<path>, or synthetic"},
    {"dataset.root", BL_OPT_STRING, NULL, "data root (default: $BALLAST_DATA, then the standard locations)"},
    {"dataset.imbalance", BL_OPT_FLOAT, "1",
     "long-tail imbalance factor r = n_max / n_min of the training subset (1: the training set as it is)"},
    {"dataset.profile", BL_OPT_STRING, "exp", "long-tail profile: exp or step"},
    {"dataset.split_seed", BL_OPT_INT, "0", "seed of the long-tailed subset and of the validation split"},
    {"dataset.split_file", BL_OPT_STRING, NULL, "index file of the training subset, instead of drawing one"},
    {"dataset.val_per_class", BL_OPT_INT, "0",
     "validation images per class, drawn from the training images the long-tailed subset leaves out "
     "(from the subset for classes it kept whole); 0: no validation split"},
    {"dataset.mean", BL_OPT_LIST, NULL, "per-channel normalization mean (default: the dataset's standard)"},
    {"dataset.std", BL_OPT_LIST, NULL, "per-channel normalization std (default: the dataset's standard)"},
    {"model.name", BL_OPT_STRING, "resnet32", "model (see bl_model_names)"},
    {"model.num_classes", BL_OPT_INT, NULL, "classifier outputs (default: the dataset's classes)"},
    {"model.width", BL_OPT_INT, "0", "ConvNet channels (0: the model's default)"},
    {"model.depth", BL_OPT_INT, "0", "ConvNet blocks (0: the model's default)"},
    {"model.patch_size", BL_OPT_INT, "0", "ViT patch side (0: the model's default)"},
    {"model.drop_rate", BL_OPT_FLOAT, "0", "dropout before the classifier"},
    {"train.epochs", BL_OPT_INT, "200", "training epochs"},
    {"train.batch_size", BL_OPT_INT, "128", "images per training batch"},
    {"train.eval_batch_size", BL_OPT_INT, "256", "images per evaluation batch"},
    {"train.drop_last", BL_OPT_BOOL, "true", "drop the last partial batch of each epoch"},
    {"train.optimizer", BL_OPT_STRING, "sgd", "sgd, adam or adamw"},
    {"train.lr", BL_OPT_FLOAT, "0.1", "base learning rate"},
    {"train.momentum", BL_OPT_FLOAT, "0.9", "SGD momentum"},
    {"train.nesterov", BL_OPT_BOOL, "false", "Nesterov momentum"},
    {"train.weight_decay", BL_OPT_FLOAT, "5e-4", "weight decay, on every parameter"},
    {"train.schedule", BL_OPT_STRING, "multistep", "constant, multistep, cosine or warmup_multistep"},
    {"train.milestones", BL_OPT_LIST, "[]", "epochs at which multistep schedules multiply the lr by gamma"},
    {"train.gamma", BL_OPT_FLOAT, "0.1", "multistep decay factor"},
    {"train.eta_min", BL_OPT_FLOAT, "0", "final lr of the cosine schedule"},
    {"train.warmup_epochs", BL_OPT_FLOAT, "0", "linear warmup epochs (any schedule; required by warmup_multistep)"},
    {"train.warmup_start_factor", BL_OPT_FLOAT, "0.3333333333333333", "lr factor at the start of the warmup"},
    {"train.lr_at_epoch_start", BL_OPT_BOOL, "true",
     "read the schedule at epoch + 1, as code that steps its scheduler at the start of each epoch"},
    {"train.clip_grad_norm", BL_OPT_FLOAT, "0", "clip the gradients' total 2-norm to this (0: off)"},
    {"train.sampler", BL_OPT_STRING, "instance", "instance, class_balanced, sqrt or progressive"},
    {"train.augment.crop_pad", BL_OPT_INT, NULL, "random-crop padding (default: the dataset's standard)"},
    {"train.augment.hflip", BL_OPT_BOOL, NULL, "random horizontal flips (default: the dataset's standard)"},
    {"train.augment.cutout", BL_OPT_INT, "0", "cutout square side (0: off)"},
    {"train.augment.color_jitter", BL_OPT_LIST, NULL,
     "[brightness, contrast, saturation] strengths of torchvision's ColorJitter (default: off)"},
    {"train.augment.mixup", BL_OPT_FLOAT, "0", "mixup: Beta(alpha, alpha) of the mixing weight (0: off)"},
    {"train.augment.cutmix", BL_OPT_FLOAT, "0", "cutmix: Beta(alpha, alpha) of the kept area (0: off)"},
    {"train.augment.mix_prob", BL_OPT_FLOAT, "1",
     "probability that a batch is mixed when mixup or cutmix is on (both on: one of them, 1/2 each)"},
    {"train.threads", BL_OPT_INT, "0", "compute threads (0: the default, all cores)"},
    {"train.sync_bn", BL_OPT_BOOL, "false",
     "multi-process runs (mpirun): batch norm normalizes with the statistics of the whole batch over every "
     "process; false: each process with its own share (as PyTorch DDP)"},
    {"train.seed", BL_OPT_INT, "0", "seed of initialization, data order and augmentation"},
    {"train.eval_every", BL_OPT_INT, "5", "evaluate on the validation split every this many epochs (0: never)"},
    {"train.checkpoint_every", BL_OPT_INT, "10", "checkpoint every this many epochs (0: only at the end)"},
    {"train.log_every", BL_OPT_INT, "20", "write a training record every this many steps"},
    {"method.name", BL_OPT_STRING, "ce", "training recipe (see bl_recipe_names)"},
    {"output.dir", BL_OPT_STRING, NULL, "run directory (default: runs/<config file name>)"},
};

static const bl_option synthetic_options[] = {
    {"dataset.synthetic.classes", BL_OPT_INT, "4", "classes of the synthetic dataset"},
    {"dataset.synthetic.train_per_class", BL_OPT_INT, "64", "training images per class before the long-tail subset"},
    {"dataset.synthetic.test_per_class", BL_OPT_INT, "16", "test images per class"},
    {"dataset.synthetic.channels", BL_OPT_INT, "3", "1 or 3"},
    {"dataset.synthetic.size", BL_OPT_INT, "8", "image height and width"},
    {"dataset.synthetic.noise", BL_OPT_FLOAT, "1", "pixel noise relative to the class patterns"},
};

#define N_TRAINER_OPTIONS ((int)(sizeof trainer_options / sizeof trainer_options[0]))
#define N_SYNTHETIC_OPTIONS ((int)(sizeof synthetic_options / sizeof synthetic_options[0]))

const bl_option *bl_trainer_options(int *n_options) {
    if (n_options) *n_options = N_TRAINER_OPTIONS;
    return trainer_options;
}

int bl__add_context(const char *fmt, ...) {
    char context[512], cause[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(context, sizeof context, fmt, ap);
    va_end(ap);
    snprintf(cause, sizeof cause, "%s", bl_last_error());
    bl_clear_error();
    bl_set_error("%s: %s", context, cause);
    return BL_ERR;
}

static bool is_synthetic(const bl_config *c) {
    const char *name = bl_config_has(c, "dataset.name") ? bl_config_string(c, "dataset.name") : NULL;
    return name && strcmp(name, "synthetic") == 0;
}

/* Declares every table the config may use and refuses keys none claims. */
int bl__config_validate(bl_config *c) {
    BL_TRY(bl_config_declare(c, NULL, trainer_options, N_TRAINER_OPTIONS));
    if (is_synthetic(c)) BL_TRY(bl_config_declare(c, NULL, synthetic_options, N_SYNTHETIC_OPTIONS));
    const char *dataset = bl_config_has(c, "dataset.name") ? bl_config_string(c, "dataset.name") : NULL;
    const bl_benchmark *benchmark = dataset ? bl_benchmark_find(dataset) : NULL;
    if (benchmark) BL_TRY(bl_config_declare(c, "dataset.", benchmark->options, benchmark->n_options));
    const char *name = bl_config_string(c, "method.name");
    const bl_recipe *m = name ? bl_recipe_find(name) : NULL;
    if (!m) return bl__add_context("%s: method.name", bl_config_source(c));
    BL_TRY(bl_config_declare(c, "method.", m->options, m->n_options));
    return bl_config_check_unknown(c);
}

/* ---- schedules -------------------------------------------------------------------------------- */

int bl_schedule_from_config(const bl_config *c, bl_schedule *out) {
    const char *src = bl_config_source(c), *kind = bl_config_string(c, "train.schedule");
    double lr = bl_config_float(c, "train.lr"), gamma = bl_config_float(c, "train.gamma");
    double warmup = bl_config_float(c, "train.warmup_epochs");
    double milestones[BL_SCHED_MAX_MILESTONES];
    int n = bl_config_list(c, "train.milestones", milestones, BL_SCHED_MAX_MILESTONES);
    if (!kind || n < 0) return bl__add_context("%s: train schedule", src);
    BL_CHECK_RC(lr > 0, "%s: train.lr must be positive, got %g", src, lr);
    BL_CHECK_RC(warmup >= 0, "%s: train.warmup_epochs must be >= 0, got %g", src, warmup);
    bl_schedule s;
    if (strcmp(kind, "constant") == 0) {
        s = bl_schedule_constant(lr);
    } else if (strcmp(kind, "multistep") == 0 || strcmp(kind, "warmup_multistep") == 0) {
        BL_CHECK_RC(strcmp(kind, "warmup_multistep") != 0 || warmup > 0,
                    "%s: train.schedule warmup_multistep needs train.warmup_epochs > 0", src);
        s = bl_schedule_multistep(lr, n, milestones, gamma);
    } else if (strcmp(kind, "cosine") == 0) {
        s = bl_schedule_cosine(lr, (double)bl_config_int(c, "train.epochs"), bl_config_float(c, "train.eta_min"));
    } else {
        BL_CHECK_RC(false, "%s: train.schedule: unknown schedule '%s' (constant, multistep, cosine, warmup_multistep)",
                    src, kind);
    }
    if (warmup > 0) s = bl_schedule_with_warmup(s, warmup, bl_config_float(c, "train.warmup_start_factor"));
    if (!isfinite(bl_schedule_lr(&s, 0))) return bl__add_context("%s: train schedule", src);
    *out = s;
    return BL_OK;
}

double bl_schedule_epoch_lr(const bl_schedule *s, int epoch, int origin, bool at_epoch_start) {
    return bl_schedule_lr(s, (double)(epoch - origin) + (at_epoch_start ? 1 : 0));
}

int bl_optim_config_from_config(const bl_config *c, bl_optim_config *out) {
    const char *src = bl_config_source(c), *kind = bl_config_string(c, "train.optimizer");
    double lr = bl_config_float(c, "train.lr"), wd = bl_config_float(c, "train.weight_decay");
    if (!kind) return bl__add_context("%s: train.optimizer", src);
    if (strcmp(kind, "sgd") == 0) {
        *out = bl_sgd_config(lr, bl_config_float(c, "train.momentum"), wd);
        out->nesterov = bl_config_bool(c, "train.nesterov");
    } else if (strcmp(kind, "adam") == 0) {
        *out = bl_adam_config(lr, wd);
    } else if (strcmp(kind, "adamw") == 0) {
        *out = bl_adamw_config(lr, wd);
    } else {
        BL_CHECK_RC(false, "%s: train.optimizer: unknown optimizer '%s' (sgd, adam, adamw)", src, kind);
    }
    return BL_OK;
}

/* ---- building a run ------------------------------------------------------------------------- */

static uint64_t data_seed(const bl_run *run) {
    return (uint64_t)bl_config_int(run->config, "train.seed") ^ SAMPLER_SEED_SALT;
}

/* The sampler `kind` names: the recipe's registered one, else one made from the training labels
 * (or, for unlabelled data, instance sampling); *owned tells which. */
static bl_sampler *find_or_make_sampler(bl_run *run, const char *kind, bool *owned) {
    struct bl_run_registry *r = run->registry;
    for (int i = 0; i < r->n_samplers; i++)
        if (strcmp(r->sampler_names[i], kind) == 0) {
            *owned = false;
            return r->samplers[i];
        }
    *owned = true;
    if (run->train.labels) return bl_sampler_create(kind, run->train.labels, run->num_classes, data_seed(run));
    BL_CHECK(strcmp(kind, "instance") == 0, "sampler '%s' needs labels, and this dataset has none", kind);
    return bl_sampler_instance(r->train_source.length(r->train_source.self), data_seed(run));
}

int bl_run_set_sampler(bl_run *run, const char *kind) {
    BL_CHECK_RC(run && run->registry && kind, "bl_run_set_sampler: NULL argument");
    struct bl_run_registry *r = run->registry;
    BL_CHECK_RC(strlen(kind) < BL__REG_NAME_MAX, "sampler '%s': the name is too long", kind);
    bool owned;
    bl_sampler *s = find_or_make_sampler(run, kind, &owned);
    if (!s) return bl__add_context("%s: sampler '%s'", bl_config_source(run->config), kind);
    bl_loader *l = bl_loader_create_source(&r->train_source, s, run->batch_size,
                                           bl_config_bool(run->config, "train.drop_last"), data_seed(run));
    /* every process walks the same global order and batches and takes its share of each */
    if (l && bl_dist_size() > 1 && bl_loader_shard(l, bl_dist_rank(), bl_dist_size()) != BL_OK) {
        bl_loader_free(l);
        l = NULL;
        bl__add_context("%s: train.batch_size %lld over %d processes", bl_config_source(run->config),
                        (long long)run->batch_size, bl_dist_size());
    }
    if (!l) {
        if (owned) bl_sampler_free(s);
        return BL_ERR;
    }
    bl_loader_free(r->loader);
    if (r->sampler_owned) bl_sampler_free(r->sampler);
    r->sampler = s;
    r->sampler_owned = owned;
    snprintf(r->sampler_name, sizeof r->sampler_name, "%s", kind);
    r->loader = l;
    return BL_OK;
}

bl_run *bl__run_new(bl_config *config, bool quiet) {
    bl_run *run = calloc(1, sizeof *run);
    if (run) run->registry = calloc(1, sizeof *run->registry);
    if (!run || !run->registry) {
        free(run);
        bl_config_free(config);
        BL_CHECK(false, "out of memory");
    }
    run->config = config;
    run->quiet = quiet;
    const bl_config *c = config;
    int rc = bl__config_validate(config);
    if (rc == BL_OK) {
        run->epochs = (int)bl_config_int(c, "train.epochs");
        run->batch_size = bl_config_int(c, "train.batch_size");
        run->rng = bl_rng_make((uint64_t)bl_config_int(c, "train.seed"), RUN_RNG_PURPOSE);
        if (run->epochs < 0 || run->batch_size < 1 || bl_config_int(c, "train.eval_batch_size") < 1) {
            bl_set_error("%s: train.epochs must be >= 0 and batch sizes >= 1", bl_config_source(c));
            rc = BL_ERR;
        } else if (run->batch_size % bl_dist_size() != 0) {
            bl_set_error("%s: train.batch_size %lld is the batch of all processes together and must be divisible "
                         "by their number, %d",
                         bl_config_source(c), (long long)run->batch_size, bl_dist_size());
            rc = BL_ERR;
        }
    }
    bl_schedule unused;
    if (rc == BL_OK) rc = bl_schedule_from_config(c, &unused); /* a bad schedule fails before any data loads */
    if (rc != BL_OK) {
        bl_run_free(run);
        return NULL;
    }
    return run;
}

int bl__run_build(bl_run *run, bool for_training) {
    const bl_config *c = run->config;
    if (bl_config_int(c, "train.threads") > 0) bl_set_threads((int)bl_config_int(c, "train.threads"));
    /* only the first process writes the split files (the others read them after it) */
    BL_TRY(bl__build_data(run, for_training && bl_dist_rank() == 0));
    run->recipe = bl_recipe_find(bl_config_string(c, "method.name"));
    if (!run->recipe) return BL_ERR;
    run->recipe_state = calloc(1, run->recipe->state_size ? run->recipe->state_size : 1);
    BL_CHECK_RC(run->recipe_state, "out of memory");
    if (run->recipe->setup && run->recipe->setup(run, run->recipe_state) != BL_OK)
        return bl__add_context("method %s: setup", run->recipe->name);
    BL_TRY(bl__registry_close(run));
    if (!for_training) return BL_OK;
    return bl_run_set_sampler(run, bl_config_string(c, "train.sampler"));
}

/* ---- evaluation records --------------------------------------------------------------------- */

/* Evaluates on a split and appends the record to the log; the primary metric goes to *primary
 * (its name to *name), the record's members to *json_out when asked. */
static int evaluate_and_log(bl_run *run, const char *split, double *primary, const char **name, char **json_out) {
    bl_evaluator e;
    BL_TRY(bl_run_evaluate(run, split, &e));
    char *members = bl_evaluator_json(&e);
    const char *metric = bl_evaluator_primary(&e, primary);
    if (name) *name = metric;
    bl_evaluator_free(&e);
    if (!members) return bl__add_context("evaluation on %s", split);
    if (run->log) {
        fprintf(run->log, "{\"eval\":\"%s\",\"epoch\":%d,\"step\":%lld,%s}\n", split, run->epoch, (long long)run->step,
                members);
        fflush(run->log);
    }
    if (json_out) *json_out = members;
    else free(members);
    return BL_OK;
}

/* ---- the training loop ------------------------------------------------------------------------ */

static int write_train_record(bl_run *run, int epoch, double loss, double lr, double img_per_s) {
    if (!run->log) return BL_OK;
    fprintf(run->log, "{\"epoch\":%d,\"step\":%lld,\"loss\":%.9g,\"lr\":%.9g,\"img_per_s\":%.1f}\n", epoch + 1,
            (long long)run->step, loss, lr, img_per_s);
    return BL_OK;
}

static void write_error_record(bl_run *run) {
    if (!run->log) return;
    fprintf(run->log, "{\"error\":");
    bl__text t = {0};
    bl__text_append_json_string(&t, bl_last_error());
    fprintf(run->log, "%s,\"epoch\":%d,\"step\":%lld}\n", t.failed ? "\"\"" : t.data, run->epoch + 1,
            (long long)run->step + 1);
    bl__text_free(&t);
    fflush(run->log);
}

/* Mixes the batch as train.augment asks, from a stream of (train.seed, step) so that a resumed run
 * mixes exactly as an uninterrupted one. */
static int mix_batch(bl_run *run, bl_batch *b) {
    b->mix_lam = 1.0;
    bl_tensor *x = bl_batch_get(b, "x"), *y = bl_batch_get(b, "y"), *partner = NULL;
    if (!x || !y) return BL_OK;
    bl_rng rng = bl_rng_make((uint64_t)bl_config_int(run->config, "train.seed"), MIX_RNG_PURPOSE + (uint64_t)run->step);
    BL_TRY(bl_mix_batch(&run->registry->mix, &rng, x, y, &partner, &b->mix_lam));
    return partner ? bl_batch_set(b, "y_mix", partner, NULL) : BL_OK;
}

/* One training step on one batch; *loss gets the recipe's loss. */
static int train_step(bl_run *run, bl_batch *b, double *loss) {
    BL_TRY(mix_batch(run, b));
    bl_run_set_training(run, true);
    *loss = NAN;
    const bool sync_bn = bl_dist_size() > 1 && bl_config_bool(run->config, "train.sync_bn");
    const bool was_sync = bl_batch_norm_set_sync(sync_bn);
    int rc = run->recipe->step(run, run->recipe_state, b, loss);
    bl_batch_norm_set_sync(was_sync);
    if (rc != BL_OK && bl_dist_failed_rank() >= 0) return BL_ERR; /* agreed: the message names the rank */
    if (rc != BL_OK)
        return bl__add_context("method %s: step at epoch %d, step %lld", run->recipe->name, run->epoch + 1,
                               (long long)run->step + 1);
    BL_CHECK_RC(!bl_batch_get(b, "y_mix") || b->mix_used,
                "method %s does not take mixed batches (train.augment.mixup / cutmix): its loss must go through "
                "bl_batch_label_loss",
                run->recipe->name);
    BL_CHECK_RC(isfinite(*loss), "loss is %g at epoch %d, step %lld: training diverged", *loss, run->epoch + 1,
                (long long)run->step + 1);
    return BL_OK;
}

/* A step of a multi-process run: every process learns whether all have their batch (a bad file
 * on one machine) before the step's collectives start, and whether all finished it before the
 * loss and the buffers are averaged; a failure anywhere stops every process with its message. */
static int parallel_step(bl_run *run, bool more, int64_t batch_index, bl_batch *b, double *loss) {
    struct bl_run_registry *r = run->registry;
    /* a loader that stops early has failed (the caller names it); the end of the epoch is not one */
    int rc = more || batch_index >= bl_loader_batches(r->loader) ? BL_OK : BL_ERR;
    BL_TRY(bl_dist_agree(rc));
    if (!more) return BL_OK;
    r->shard_rows = b->size;
    r->batch_rows = bl_loader_batch_rows(r->loader, batch_index);
    BL_TRY(bl_dist_agree(train_step(run, b, loss)));
    return bl__average_buffers_and_loss(run, loss);
}

/* The lr shown in the progress line and the log: the first optimizer's. */
static double shown_lr(const bl_run *run) {
    return run->registry->n_optimizers ? run->registry->optimizers[0]->opt.cfg.lr : NAN;
}

/* The remaining epochs of the current phase. */
static int train_phase_epochs(bl_run *run, const bl_phase *phase) {
    struct bl_run_registry *r = run->registry;
    const bl_config *c = run->config;
    if (r->phase_epoch >= phase->epochs) return BL_OK;
    BL_CHECK_RC(r->loader, "phase %s: the run has no training loader", phase->name);
    int64_t steps = bl_loader_batches(r->loader);
    BL_CHECK_RC(steps > 0, "%s: %lld training samples make no full batch of %lld (train.batch_size)",
                bl_config_source(c), (long long)bl_run_split_size(run, "train"), (long long)run->batch_size);
    int64_t log_every = bl_config_int(c, "train.log_every");
    int eval_every = (int)bl_config_int(c, "train.eval_every"), ckpt_every = (int)bl_config_int(c, "train.checkpoint_every");
    bool have_val = bl_run_split_size(run, "val") > 0;
    if (run->progress) bl__progress_begin(run->progress, (int64_t)(phase->epochs - r->phase_epoch) * steps);

    while (r->phase_epoch < phase->epochs) {
        const int epoch = run->epoch;
        if (bl__registry_set_lr(run, epoch) != BL_OK) return bl__add_context("epoch %d", epoch + 1);
        if (run->recipe->epoch_begin && run->recipe->epoch_begin(run, run->recipe_state, epoch) != BL_OK)
            return bl__add_context("method %s: start of epoch %d", run->recipe->name, epoch + 1);
        /* the sampler's progress (progressive sampling) counts within the phase */
        BL_TRY(bl_loader_start_epoch(r->loader, r->phase_epoch, phase->epochs));
        const double lr = shown_lr(run);
        if (run->progress) bl__progress_epoch(run->progress, epoch, run->epochs, steps);

        double epoch_start = bl_now(), window_start = epoch_start, loss_sum = 0, window_sum = 0;
        double comm_start = bl_dist_seconds(), allreduce_start = r->allreduce_seconds;
        int64_t done = 0, window_steps = 0, window_images = 0;
        const int processes = bl_dist_size();
        for (;;) {
            bl_scope scope = bl_scope_begin();
            bl_batch batch;
            bool more = bl_loader_next(r->loader, &batch);
            double loss = NAN;
            /* the images of the whole batch, all processes' together */
            int64_t images = more ? (processes > 1 ? bl_loader_batch_rows(r->loader, done) : batch.size) : 0;
            int rc = processes > 1 ? parallel_step(run, more, done, &batch, &loss)
                                   : more ? train_step(run, &batch, &loss) : BL_OK;
            bl_scope_end(scope);
            if (rc != BL_OK) {
                write_error_record(run);
                return BL_ERR;
            }
            if (!more) break;
            run->step++;
            done++;
            loss_sum += loss;
            window_sum += loss;
            window_steps++;
            window_images += images;
            if (run->progress) bl__progress_step(run->progress, done, loss, lr, images);
            if (log_every > 0 && (run->step % log_every == 0 || done == steps)) {
                double now = bl_now();
                write_train_record(run, epoch, window_sum / (double)window_steps, lr,
                                   now > window_start ? (double)window_images / (now - window_start) : 0);
                window_start = now;
                window_sum = 0;
                window_steps = window_images = 0;
            }
        }
        if (done != steps)
            return bl__add_context("epoch %d: the loader stopped after %lld of %lld batches", epoch + 1,
                                   (long long)done, (long long)steps);
        run->epoch = epoch + 1;
        r->phase_epoch++;
        double mean_loss = loss_sum / (double)done, seconds = bl_now() - epoch_start;
        if (run->log) {
            fprintf(run->log,
                    "{\"epoch_end\":%d,\"step\":%lld,\"phase\":\"%s\",\"mean_loss\":%.9g,\"lr\":%.9g,\"seconds\":%.3f",
                    run->epoch, (long long)run->step, phase->name, mean_loss, lr, seconds);
            if (processes > 1)
                fprintf(run->log, ",\"processes\":%d,\"comm_seconds\":%.3f,\"allreduce_seconds\":%.3f", processes,
                        bl_dist_seconds() - comm_start, r->allreduce_seconds - allreduce_start);
            fprintf(run->log, "}\n");
            fflush(run->log);
        }
        char note[96] = "";
        if (have_val && eval_every > 0 && (run->epoch % eval_every == 0 || r->phase_epoch == phase->epochs)) {
            double value;
            const char *metric;
            BL_TRY(evaluate_and_log(run, "val", &value, &metric, NULL));
            snprintf(note, sizeof note, "val %s %.4f", metric, value);
        }
        if (run->progress) bl__progress_epoch_end(run->progress, mean_loss, note);
        if (ckpt_every > 0 && run->epoch % ckpt_every == 0 && r->for_training) BL_TRY(bl_run_checkpoint(run, false));
    }
    /* the end of a phase's epochs is always a resume point, whatever checkpoint_every says */
    if (r->for_training && !(ckpt_every > 0 && run->epoch % ckpt_every == 0)) BL_TRY(bl_run_checkpoint(run, false));
    return BL_OK;
}

/* Runs the phases from where the run stands: each one's begin (unless a checkpoint says it ran),
 * its remaining epochs, its end, and a checkpoint between two phases. */
static int train_phases(bl_run *run) {
    struct bl_run_registry *r = run->registry;
    while (r->phase < r->n_phases) {
        const bl_phase *phase = &r->phases[r->phase];
        if (!r->phase_begun) {
            if (phase->begin && phase->begin(run, run->recipe_state) != BL_OK)
                return bl__add_context("method %s: start of phase %s", run->recipe->name, phase->name);
            r->phase_begun = true;
        }
        BL_TRY(train_phase_epochs(run, phase));
        if (phase->end && phase->end(run, run->recipe_state) != BL_OK)
            return bl__add_context("method %s: end of phase %s", run->recipe->name, phase->name);
        r->phase++;
        r->phase_epoch = 0;
        r->phase_begun = false;
        if (r->phase < r->n_phases && phase->end) BL_TRY(bl_run_checkpoint(run, false));
    }
    return BL_OK;
}

/* results.json: what the run was and its final numbers, for tables across runs. */
static int write_results(bl_run *run, const char *evaluator, const char *val_json, const char *test_json) {
    const bl_config *c = run->config;
    bl__text t = {0};
    bl__text_printf(&t, "{\"method\":\"%s\",\"dataset\":\"%s\",\"model\":\"%s\",\"imbalance\":%g,\"evaluator\":\"%s\",",
                    run->recipe->name, bl_config_string(c, "dataset.name"), bl_config_string(c, "model.name"),
                    bl_config_float(c, "dataset.imbalance"), evaluator);
    bl__text_printf(&t, "\"epochs\":%d,\"steps\":%lld,\"train_counts\":[", run->epoch, (long long)run->step);
    for (int64_t k = 0; run->class_counts && k < run->num_classes; k++)
        bl__text_printf(&t, "%s%lld", k ? "," : "", (long long)run->class_counts[k]);
    bl__text_append(&t, "],\"val\":");
    if (val_json) bl__text_printf(&t, "{%s}", val_json);
    else bl__text_append(&t, "null");
    bl__text_printf(&t, ",\"test\":{%s}}\n", test_json);
    char path[600];
    snprintf(path, sizeof path, "%s/results.json", run->dir);
    int rc = t.failed ? (bl_set_error("out of memory writing %s", path), BL_ERR) : bl_file_write_text(path, t.data);
    bl__text_free(&t);
    return rc;
}

/* Training and the final evaluation; bl_run_train makes the processes agree on the outcome. */
static int train_and_evaluate(bl_run *run) {
    if (!run->finished) {
        BL_TRY(train_phases(run));
        run->finished = true;
        if (bl_run_checkpoint(run, true) != BL_OK) {
            run->finished = false;
            return BL_ERR;
        }
    }
    char *val_json = NULL, *test_json = NULL;
    bool have_val = bl_run_split_size(run, "val") > 0;
    double val_value = NAN, test_value = NAN;
    const char *metric = "";
    int rc = have_val ? evaluate_and_log(run, "val", &val_value, &metric, &val_json) : BL_OK;
    if (rc == BL_OK) rc = evaluate_and_log(run, "test", &test_value, &metric, &test_json);
    const char *evaluator = run->recipe->evaluator ? run->recipe->evaluator : "classification";
    /* every process evaluated the same weights; the first one writes */
    if (rc == BL_OK && bl_dist_rank() == 0) rc = write_results(run, evaluator, val_json, test_json);
    if (rc == BL_OK && !run->quiet && bl_dist_rank() == 0)
        fprintf(stderr, "%s: test %s %.4f%s\n", run->dir, metric, test_value, have_val ? "" : " (no validation split)");
    free(val_json);
    free(test_json);
    return rc;
}

int bl_run_train(bl_run *run) {
    BL_CHECK_RC(run && run->registry && run->registry->for_training, "bl_run_train: the run was not created for training");
    /* A process that failed outside a step tells the others here, wherever they wait. */
    return bl_dist_agree(train_and_evaluate(run));
}
