/* ballast training runs: configs, the method interface, and the trainer that ties data, model,
 * optimizer, method and metrics into a run directory.
 *
 * A run is described by a YAML config with the sections of the papers' repositories:
 *   dataset: {name, root, imbalance, profile, split_seed, val_per_class, mean, std, ...}
 *   model:   {name, num_classes, width, depth, drop_rate, ...}
 *   train:   {epochs, batch_size, lr, momentum, weight_decay, schedule, milestones, gamma,
 *             warmup_epochs, sampler, threads, seed, augment: {crop_pad, hflip, cutout}, eval_every,
 *             checkpoint_every, ...}
 *   method:  {name, ...the method's own options}
 *   output:  {dir}
 * dataset.name is any name bl_dataset_load knows, or "synthetic": generated images of noisy class
 * patterns (dataset.synthetic.* keys), for smoke runs and tests that must not need real data.
 * Every key must be declared by an option table (the trainer's, or the chosen method's, whose keys
 * live under "method."), and every value must parse as its declared type; violations are errors
 * naming the key and the file. Absent keys take their table's default, so the resolved config
 * written into the run directory is complete. The validation split is drawn from the training
 * images the long-tailed subset leaves out (classes the subset kept whole give up val_per_class of
 * their own), never from the test set.
 *
 * A run directory holds:
 *   config.yaml               the resolved config
 *   log.jsonl                 one JSON object per line (the format bl_report_write reads):
 *                               {"epoch":E,"step":S,"loss":L,"lr":R,"img_per_s":V}  training
 *                               {"eval":"val"|"test","epoch":E,"step":S, ...bl_metrics_json members}
 *                               {"epoch_end":E,"step":S,"mean_loss":L,"lr":R,"seconds":T}
 *                               {"resume":E,"step":S} when a run continues from a checkpoint
 *                               {"error":"...","epoch":E,"step":S} when training stops on an error
 *                               plus records methods log themselves (bl_run_log)
 *                             epochs are 1-based in the log: "epoch":1 is the first epoch trained
 *   checkpoints/epoch_NNNN/   model.safetensors (parameters and buffers, PyTorch names),
 *                             extra.safetensors (run->extra_params, when it has entries),
 *                             optimizer.safetensors, extra_optimizer.safetensors, state.json;
 *   checkpoints/final/        the same, written after method->after_training
 *   split_train.idx           the rows of the dataset's training set used for training, and
 *   split_val.idx             those held out for validation (bl_indices_save files; resume and
 *                             evaluation read them back instead of drawing the split again)
 *   checkpoint.json           {"latest": "checkpoints/epoch_NNNN", "epoch": E, "final": bool}
 *   results.json              the final evaluation: {"method":..,"dataset":..,"model":..,"imbalance":..,
 *                             "epochs":..,"steps":..,"train_counts":[..],"val":{...}|null,"test":{...}}
 * A checkpoint directory is written under a temporary name and renamed when complete, and
 * checkpoint.json is replaced atomically after it, so a crash never leaves a half checkpoint
 * that resume would pick up. */
#ifndef BALLAST_TRAIN_H
#define BALLAST_TRAIN_H

#include "ballast/data.h"
#include "ballast/metrics.h"
#include "ballast/models.h"
#include "ballast/optim.h"

#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- configs --------------------------------------------------------------------------------- */

typedef enum {
    BL_OPT_INT,    /* 64-bit integer */
    BL_OPT_FLOAT,  /* double */
    BL_OPT_BOOL,   /* true/false (also yes/no, on/off, 1/0) */
    BL_OPT_STRING,
    BL_OPT_LIST    /* a YAML sequence of numbers, e.g. [120, 160]; "" or [] when empty */
} bl_opt_type;

/* One declared key. `default_value` is the value's text as it would be written in YAML (a list as
 * "[120, 160]"); NULL means "no default": the key stays absent unless the file sets it. */
typedef struct {
    const char *key;
    bl_opt_type type;
    const char *default_value;
    const char *help;
} bl_option;

typedef struct bl_config bl_config;

/* Parses a YAML file of nested maps whose leaves are scalars or sequences of scalars. Keys are
 * stored flat, joined with dots ("train.augment.crop_pad"). Syntax errors name the file and line. */
bl_config *bl_config_load(const char *yaml_path);
/* The same from text in memory; `source_name` stands for the file in messages. */
bl_config *bl_config_parse(const char *yaml_text, const char *source_name);
void bl_config_free(bl_config *c);
/* Applies "section.key=value" (value in YAML scalar or flow-sequence syntax); the key is
 * checked against the declared tables like a key from the file. */
int bl_config_set(bl_config *c, const char *assignment);
/* Declares a table of keys: each key of `options` is prefixed with `prefix` (NULL or "" for none;
 * methods use "method."). Values present are checked against the type (error naming the key, its
 * value and the file); absent keys with a default get it. Declaring a key twice is an error. */
int bl_config_declare(bl_config *c, const char *prefix, const bl_option *options, int n_options);
/* After every table is declared: BL_ERR naming the first key (and the file) that no table claims. */
int bl_config_check_unknown(const bl_config *c);
/* True when the key has a value (set in the file, by an override or by a default). */
bool bl_config_has(const bl_config *c, const char *key);
/* Typed getters for declared keys. A key that is absent or of another type sets an error and
 * returns 0 / NAN / false / NULL. */
int64_t bl_config_int(const bl_config *c, const char *key);
double bl_config_float(const bl_config *c, const char *key);
bool bl_config_bool(const bl_config *c, const char *key);
const char *bl_config_string(const bl_config *c, const char *key);
/* A BL_OPT_LIST key: writes at most `max` values to `out`; returns the count, or -1 on error. */
int bl_config_list(const bl_config *c, const char *key, double *out, int max);
/* The value of a key as its text (a list as "[a, b]"), NULL when it has none; declared or not. */
const char *bl_config_text(const bl_config *c, const char *key);
/* The file the config came from (or the source_name given to bl_config_parse). */
const char *bl_config_source(const bl_config *c);
/* Writes the config (all keys with values, in declaration order) as nested YAML; atomic. */
int bl_config_write(const bl_config *c, const char *path);
/* First key whose value differs between two configs (or that only one has), NULL when equal. The
 * returned pointer lives as long as `a` and `b`. */
const char *bl_config_first_difference(const bl_config *a, const bl_config *b);

/* ---- methods ---------------------------------------------------------------------------------- */

typedef struct bl_run bl_run;

/* A training recipe. Hooks run in this order: setup (once, after the model is built and before
 * the optimizer is created; register buffers on run->model->params and trainable parameters in
 * run->extra_params here), then per epoch epoch_begin and per step loss, then after_training,
 * then logits for every evaluation. On resume, setup runs again before the checkpoint is loaded,
 * so state registered as buffers or extra params comes back with it. Checkpoints are only written
 * in the main epochs (and the final one after after_training), so a run interrupted during
 * after_training runs it again from the end of the main epochs. */
typedef struct bl_method {
    const char *name;
    const char *summary;
    const bl_option *options;   /* under "method." in the config */
    int n_options;
    size_t state_size;          /* bytes of zeroed state handed to every hook */
    int (*setup)(bl_run *run, void *state);
    /* The scalar training loss of a batch: x F32 (B, C, H, W) augmented and normalized, y I64 (B).
     * Called in train mode (run->model->training set) with grad mode on, inside the step's scope. */
    bl_tensor *(*loss)(bl_run *run, void *state, bl_tensor *x, bl_tensor *y);
    /* Evaluation logits (B, num_classes); called in eval mode under no-grad. */
    bl_tensor *(*logits)(bl_run *run, void *state, bl_tensor *x);
    int (*epoch_begin)(bl_run *run, void *state, int epoch);   /* optional; epoch is 0-based */
    /* Optional: runs after the main epochs and before the final evaluation, e.g. to choose a
     * test-time parameter on run->val or to run a second stage with bl_run_train_epochs. The
     * final checkpoint is written after it. */
    int (*after_training)(bl_run *run, void *state);
    void (*release)(void *state);                              /* optional */
} bl_method;

/* The method registered under `name`; NULL (and an error listing the known names) otherwise. */
const bl_method *bl_method_find(const char *name);
/* NULL-terminated list of registered method names. */
const char *const *bl_method_names(void);

/* ---- runs ------------------------------------------------------------------------------------- */

struct bl_progress; /* private: the terminal progress display */

struct bl_run {
    bl_config *config;          /* resolved; owned by the run */
    char dir[512];              /* run directory */
    bl_model *model;
    bl_optimizer opt;           /* over model->params */
    bl_schedule schedule;       /* learning rate of epoch e (0-based) is bl_run_lr(run, e) */
    bl_params extra_params;     /* a method's own trainable parameters; finalized by the trainer
                                 * after setup when it has entries */
    bl_optimizer extra_opt;     /* over extra_params (same settings as opt), when it has entries;
                                 * a method may re-initialize it for a second stage */
    bool has_extra_opt;
    bl_dataset train, val, test;/* val: drawn from the training data (empty when val_per_class is 0) */
    int64_t num_classes;
    int64_t *class_counts;      /* training images per class (num_classes entries) */
    bl_sampler *sampler;        /* the current training sampler */
    bl_loader *train_loader;
    bl_augment augment;         /* training transforms (mean/std also used for evaluation) */
    int64_t batch_size;
    int epoch, epochs;          /* epochs completed so far (0-based index of the next), total */
    int64_t step;               /* optimizer steps taken */
    bl_rng rng;                 /* a stream for methods' own random draws (saved in checkpoints) */
    struct {
        bl_mix_args args;       /* train.augment.mixup / cutmix / mix_prob */
        bl_tensor *partner;     /* the current batch's mixed-in labels; NULL when it is not mixed */
        double lam;             /* the weight of the batch's own labels */
        bool applied;           /* set by bl_run_label_loss: the method's loss took the mixing */
    } mix;
    FILE *log;                  /* log.jsonl, line-buffered; NULL for runs opened for evaluation */
    const bl_method *method;
    void *method_state;
    bool lr_at_epoch_start;     /* train.lr_at_epoch_start, see bl_run_lr */
    int schedule_origin;        /* the epoch at which run->schedule starts (0; a second stage that
                                 * sets its own schedule sets it to its first epoch) */
    int stage;                  /* 0 during the main epochs, 1 from method->after_training on */
    bool finished;              /* the final checkpoint exists (training is complete) */
    bool backbone_frozen;
    bool quiet;                 /* no progress display */
    struct bl_progress *progress;
};

typedef struct {
    bool resume;          /* continue from the run directory's latest checkpoint */
    bool quiet;           /* no progress display on stderr */
} bl_run_opts;

/* Builds a run from a config (ownership passes to the run, also on failure): validates it
 * against the trainer's and the method's tables, loads the data (long-tailed subset, validation
 * split), builds the model, calls method->setup, creates optimizers, sampler and loader, and
 * creates the run directory (output.dir) with config.yaml. A directory that already holds a run
 * is refused unless opts->resume, in which case its config must match and the latest checkpoint
 * is loaded. */
bl_run *bl_run_create(bl_config *config, const bl_run_opts *opts);
/* The trainer's own option table (for `--help` listings and documentation). */
const bl_option *bl_trainer_options(int *n_options);
/* Trains the remaining epochs, calls method->after_training, writes the final checkpoint,
 * evaluates on val and test and writes results.json. */
int bl_run_train(bl_run *run);
/* Opens a finished or interrupted run for evaluation: `path` is a run directory (latest
 * checkpoint), a checkpoint directory or a model.safetensors inside one. Loads the data and the
 * weights; no log is written. `overrides` ("section.key=value", n of them, may be NULL) change
 * test-time settings only: method.* keys other than method.name, train.threads and
 * train.eval_batch_size; any other key is an error, since the weights were trained with it. */
bl_run *bl_run_open(const char *path, const char *const *overrides, int n_overrides);
void bl_run_free(bl_run *run);

/* The loss of a training batch from its logits: fn(logits, y, ctx), or for a batch that was mixed
 * (train.augment.mixup / cutmix) lam fn(logits, y, ctx) + (1 - lam) fn(logits, partner, ctx) with
 * run->mix's labels and weight. Every method's loss goes through it, so mixing works for all of
 * them; the trainer refuses a mixed batch whose loss did not. */
typedef bl_tensor *(*bl_label_loss_fn)(bl_tensor *logits, bl_tensor *y, const void *ctx);
bl_tensor *bl_run_label_loss(bl_run *run, bl_tensor *logits, bl_tensor *y, bl_label_loss_fn fn, const void *ctx);
/* bl_run_label_loss with bl_cross_entropy(logits, y, args). */
bl_tensor *bl_run_cross_entropy(bl_run *run, bl_tensor *logits, bl_tensor *y, bl_ce_args args);

/* Appends one record to log.jsonl: `json_object_body` is the inside of an object without braces,
 * e.g. "\"alpha\":1.5,\"val_top1\":0.61"; the record is written as {"method_epoch":E,"step":S,...}
 * (E the number of epochs completed) so readers never mistake it for a training record. */
int bl_run_log(bl_run *run, const char *json_object_body);
/* Evaluates the model on a dataset in batches through method->logits (eval mode, no grad,
 * normalize only). Initializes `out` (free it with bl_metrics_free). */
int bl_run_evaluate(bl_run *run, const bl_dataset *ds, bl_metrics *out);
/* The generic training loop over epochs [first, last) (0-based): schedule, sampler epoch,
 * method->epoch_begin, then per batch method->loss, backward, optimizer steps; periodic
 * evaluation on val and checkpoints. A NaN or infinite loss stops with an error naming epoch and
 * step. Methods' second stages call it again (after bl_run_set_sampler / freezing). */
int bl_run_train_epochs(bl_run *run, int first, int last);
/* Replaces the training sampler ("instance", "class_balanced", "sqrt", "progressive") and the
 * loader built on it. */
int bl_run_set_sampler(bl_run *run, const char *kind);
/* Freezes (or unfreezes) every model parameter except the classifier's: frozen parameters get
 * requires_grad false, so the optimizer skips them, and the training forward runs with
 * model->training false so BatchNorm statistics stay fixed as well. */
int bl_run_freeze_backbone(bl_run *run, bool frozen);
/* The learning-rate schedule a config's train section describes: train.schedule is "constant",
 * "multistep" (train.milestones, train.gamma), "cosine" (to train.eta_min over train.epochs) or
 * "warmup_multistep" (multistep after a linear warmup over train.warmup_epochs from
 * train.warmup_start_factor * lr; the BBN schedule of the long-tailed CIFAR papers). */
int bl_schedule_from_config(const bl_config *c, bl_schedule *out);
/* Learning rate of 0-based epoch `epoch`: the schedule read at t = epoch - run->schedule_origin,
 * plus 1 when run->lr_at_epoch_start (the papers' code steps its scheduler at the start of each
 * epoch, so the first epoch already runs at "epoch 1"). */
double bl_run_lr(const bl_run *run, int epoch);
/* Writes a checkpoint for the epochs completed so far (see the file comment). */
int bl_run_checkpoint(bl_run *run, bool final);

#ifdef __cplusplus
}
#endif
#endif
