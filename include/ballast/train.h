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
 *                               {"eval":"val"|"test","epoch":E,"step":S, ...the evaluator's members}
 *                               {"epoch_end":E,"step":S,"phase":P,"mean_loss":L,"lr":R,"seconds":T}
 *                               (with "processes":P,"comm_seconds":C,"allreduce_seconds":A in a
 *                               multi-process run: the first process's seconds inside collectives,
 *                               waiting for the others included, and inside the gradients'
 *                               all-reduce alone)
 *                               {"resume":E,"step":S} when a run continues from a checkpoint
 *                               {"error":"...","epoch":E,"step":S} when training stops on an error
 *                               plus records recipes log themselves (bl_run_log)
 *                             epochs are 1-based in the log: "epoch":1 is the first epoch trained
 *   checkpoints/epoch_NNNN/   everything the recipe registered: <model>.safetensors per model
 *                             (parameters and buffers, PyTorch names: the usual one is
 *                             model.safetensors), <store>.params.safetensors per store,
 *                             <optimizer>.optimizer.safetensors per optimizer, and state.json
 *                             (counters, phase, random streams, optimizer settings and schedules,
 *                             frozen parameters, the sampler)
 *   checkpoints/final/        the same, after the last phase
 *   split_train.idx           the rows of the dataset's training set used for training, and
 *   split_val.idx             those held out for validation (bl_indices_save files; resume and
 *                             evaluation read them back instead of drawing the split again)
 *   checkpoint.json           {"latest": "checkpoints/epoch_NNNN", "epoch": E, "final": bool}
 *   results.json              the final evaluation: {"method":..,"dataset":..,"model":..,"imbalance":..,
 *                             "evaluator":..,"epochs":..,"steps":..,"train_counts":[..],"val":{...}|null,
 *                             "test":{...}} with the evaluator's members in val and test
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
 * stored flat, joined with dots ("train.augment.crop_pad"). Syntax errors name the file and line.
 * A top-level `_base_: path` (or a list of paths, merged in order) names base files relative to
 * this file's directory, resolved recursively; this file's keys override theirs key by key (dotted
 * keys, so a map adds to the base's map), and `_base_` itself is not stored. Errors name the file
 * that holds the fault (a base's own file and line); a missing base names the including file and
 * the path, and a cycle names the chain of files. */
bl_config *bl_config_load(const char *yaml_path);
/* The same from text in memory; `source_name` stands for the file in messages. `_base_` is
 * refused: text in memory has no directory to resolve it against. */
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

/* ---- batch losses ----------------------------------------------------------------------------- */

/* The loss of a batch from its logits: fn(logits, y, ctx), or for a mixed batch
 * lam fn(logits, y, ctx) + (1 - lam) fn(logits, y_mix, ctx). Every classification loss goes
 * through it, so mixing works for every recipe; the trainer refuses a mixed batch whose loss did
 * not. */
typedef bl_tensor *(*bl_label_loss_fn)(bl_tensor *logits, bl_tensor *y, const void *ctx);
bl_tensor *bl_batch_label_loss(bl_batch *b, bl_tensor *logits, bl_label_loss_fn fn, const void *ctx);
/* bl_batch_label_loss with bl_cross_entropy(logits, y, args). */
bl_tensor *bl_batch_cross_entropy(bl_batch *b, bl_tensor *logits, bl_ce_args args);

/* ---- recipes ---------------------------------------------------------------------------------- */

typedef struct bl_run bl_run;

/* A stretch of training with its own purpose (the main epochs, a classifier stage, a distillation
 * after a pre-training, a round of a noise-cleaning loop). Recipes add them in setup, in order;
 * a recipe that adds none trains one phase "main" of train.epochs epochs. `begin` runs once when
 * the phase starts (re-initialise a classifier, freeze, reset an optimizer, change the sampler),
 * `end` once after its last epoch (choose a test-time parameter on the validation split). What
 * they change must live in the run's registered state (below), since a resumed run restores that
 * state instead of calling `begin` again; the checkpoint written after `end` is the resume point
 * between two phases. */
typedef struct {
    const char *name;
    int epochs;                                  /* >= 0; 0: only the hooks run */
    int (*begin)(bl_run *run, void *state);      /* optional */
    int (*end)(bl_run *run, void *state);        /* optional */
} bl_phase;

/* A training recipe: a method as its paper's algorithm box, on the trainer's mechanisms.
 *  - setup (once, after the data is loaded, also on resume and on evaluation; before anything is
 *    restored): read the options, register models, optimizers, parameter stores, buffers, random
 *    streams and phases with the run (bl_run_add_*), in the same order every time.
 *  - step: one training batch, doing whatever the method does (forwards, backwards, optimizer
 *    steps, updates of buffers or of data); *loss gets the number the progress line and the log
 *    show. Called with grad mode on, every registered model in train mode (unless frozen), inside
 *    the step's arena scope. bl_run_backward_step is the common case.
 *  - predict: the evaluation forward of a batch, what the recipe's evaluator reads: logits
 *    (B, num_classes) for the "classification" evaluator, scores (B) for "regression". Called in
 *    eval mode under no-grad.
 *  - epoch_begin (optional): per epoch, `epoch` 0-based across all phases.
 *  - release (optional): frees what setup allocated outside the run's registry. */
typedef struct bl_recipe {
    const char *name;
    const char *summary;
    const bl_option *options;   /* under "method." in the config */
    int n_options;
    size_t state_size;          /* bytes of zeroed state handed to every hook */
    const char *evaluator;      /* NULL: "classification" */
    int (*setup)(bl_run *run, void *state);
    int (*step)(bl_run *run, void *state, bl_batch *batch, double *loss);
    bl_tensor *(*predict)(bl_run *run, void *state, bl_batch *batch);
    int (*epoch_begin)(bl_run *run, void *state, int epoch);
    void (*release)(void *state);
} bl_recipe;

/* Makes a recipe known to bl_recipe_find (and so to configs' method.name). Registering a name twice
 * is an error. The recipes shipped with ballast register with bl_recipes_register_builtin
 * (methods/recipes.h). */
int bl_recipe_register(const bl_recipe *recipe);
/* The recipe registered under `name`; NULL (and an error listing the known names) otherwise. */
const bl_recipe *bl_recipe_find(const char *name);
/* NULL-terminated list of registered recipe names, in registration order. */
const char *const *bl_recipe_names(void);

/* ---- benchmarks ------------------------------------------------------------------------------- */

/* A dataset the trainer loads by dataset.name that is not a folder of labelled images: a benchmark
 * built by its own code (attributes, scores, boxes, frames), registered from outside the trainer.
 * `open` makes the source of a split ("train", "val", "test"; `training`: with the random
 * transforms of training batches), or leaves out->length NULL when the benchmark has no such split;
 * opening "train" sets run->num_classes (0 when it has no classes) and may fill run->class_counts.
 * Its options live under "dataset.". */
typedef struct bl_benchmark {
    const char *name;
    const char *summary;
    const bl_option *options;
    int n_options;
    int (*open)(bl_run *run, const char *split, bool training, bl_source *out);
} bl_benchmark;

int bl_benchmark_register(const bl_benchmark *benchmark);
/* The benchmark registered as `name`, or NULL (no error set). */
const bl_benchmark *bl_benchmark_find(const char *name);

/* ---- runs ------------------------------------------------------------------------------------- */

struct bl_progress;     /* private: the terminal progress display */
struct bl_run_registry; /* private: what the recipe registered */

struct bl_run {
    bl_config *config;          /* resolved; owned by the run */
    char dir[512];              /* run directory */
    bl_dataset train, val, test;/* an image dataset's splits (val: drawn from the training data, empty
                                 * when val_per_class is 0); empty for a registered benchmark, which
                                 * the run reads through sources only */
    int64_t num_classes;
    int64_t *class_counts;      /* training images per class (num_classes entries; NULL when the
                                 * data has no classes) */
    bl_augment augment;         /* training transforms (mean/std also used for evaluation) */
    int64_t batch_size;
    int epoch, epochs;          /* epochs completed so far across all phases, and their total */
    int64_t step;               /* training steps taken */
    bl_rng rng;                 /* the run's stream for recipes' random draws (in checkpoints) */
    FILE *log;                  /* log.jsonl, line-buffered; NULL for runs opened for evaluation */
    const bl_recipe *recipe;
    void *recipe_state;
    bool finished;              /* the final checkpoint exists (training is complete) */
    bool quiet;                 /* no progress display */
    struct bl_run_registry *registry;
    struct bl_progress *progress;
};

/* -- what a recipe registers in setup (names unique within their kind; the run owns them) -- */

/* A model: `model` NULL builds the config's model section (model.name, num_classes from the data,
 * the image size and channels of the training images, train.seed). Saved as
 * models/<name>.safetensors in checkpoints, with PyTorch parameter names. */
bl_model *bl_run_add_model(bl_run *run, const char *name, bl_model *model);
/* A store for a recipe's own tensors (parameters with bl_params_add, buffers with
 * bl_params_add_buffer: per-sample confidences, class centers, a tensor of images to optimise);
 * the trainer finalizes it after setup. Saved as params/<name>.safetensors. */
bl_params *bl_run_add_params(bl_run *run, const char *name);
/* An optimizer over a finalized store (a model's params, or a store of bl_run_add_params, which
 * is finalized here), with its own learning-rate schedule. `cfg` NULL: the config's train.optimizer
 * settings; `schedule` NULL: the config's train.schedule. The trainer sets its lr at the start of
 * every epoch; saved with its settings and schedule as optimizers/<name>.*. */
bl_optimizer *bl_run_add_optimizer(bl_run *run, const char *name, bl_params *params, const bl_optim_config *cfg,
                                   const bl_schedule *schedule);
/* Restarts an optimizer: fresh state, new settings, and a schedule counted from the current epoch
 * (a second stage's own decay). */
int bl_run_reset_optimizer(bl_run *run, const char *name, bl_optim_config cfg, bl_schedule schedule);
/* A random stream of its own, seeded from train.seed and `name`; saved in checkpoints. */
bl_rng *bl_run_add_rng(bl_run *run, const char *name);
/* A phase (see bl_phase), in order. */
int bl_run_add_phase(bl_run *run, const bl_phase *phase);

/* Lookups by name: NULL (with an error naming what is registered) when absent. */
bl_model *bl_run_model(const bl_run *run, const char *name);
bl_params *bl_run_params(const bl_run *run, const char *name);
bl_optimizer *bl_run_optimizer(const bl_run *run, const char *name);

/* Freezes (or unfreezes) a registered model: every parameter except its classifier's gets
 * requires_grad false, so the optimizers skip them, and the model runs in eval mode during
 * training steps, so BatchNorm statistics stay fixed as well. `keep_classifier` false freezes the
 * classifier too (a frozen teacher). Saved in checkpoints. */
int bl_run_freeze(bl_run *run, const char *model, bool frozen, bool keep_classifier);
/* A sampler of the recipe's own (bl_sampler_weighted over a per-sample buffer, bl_sampler_custom),
 * owned by the run from here on, which bl_run_set_sampler can then select by `name`. */
int bl_run_add_sampler(bl_run *run, const char *name, bl_sampler *sampler);
/* Replaces the training sampler: a registered one by name, else a kind the data library makes from
 * the training labels ("instance", "class_balanced", "sqrt", "progressive"); saved in
 * checkpoints. */
int bl_run_set_sampler(bl_run *run, const char *kind);

/* -- inside a step -- */

/* The common training step: zero every registered gradient, backward from the scalar `loss`,
 * clip each optimizer's gradients to train.clip_grad_norm (when > 0), step every registered
 * optimizer (frozen entries are skipped). *loss_value gets the loss. A NaN or infinite loss or
 * gradient norm is an error naming the epoch and step. In a multi-process run (see "multi-process
 * training" below) the processes first agree that every one has a finite loss, each one's
 * gradients are weighted by its share of the batch and summed over the processes (one
 * all-reduce per registered model or store that has trained parameters), so every optimizer
 * steps with the gradient of the whole batch's mean loss. */
int bl_run_backward_step(bl_run *run, bl_tensor *loss, double *loss_value);
/* For a recipe that runs its own backward and steps optimizers itself: weights this process's
 * gradients by its share of the batch and sums them over the processes (after an agreement that
 * every process got here), as bl_run_backward_step does. No-op in one process. */
int bl_run_allreduce_grads(bl_run *run);
/* Sets every registered model's training flag (true: train mode, except frozen models). */
void bl_run_set_training(bl_run *run, bool training);

/* -- multi-process training --
 * Under `mpirun -np P` (ballast/dist.h) a run trains data-parallel: every process builds the same
 * run (same config, same initial weights), reads the same epoch order and batches of
 * train.batch_size samples (the batch of all processes together, which P must divide) and takes
 * its share of each, with each sample transformed as in one process; gradients are summed over
 * the processes in bl_run_backward_step, each process's weighted by its share of the batch (so a
 * loss that is a mean over the samples gives exactly the whole batch's gradient; a class-weighted
 * cross-entropy, which divides by the batch's summed weights as PyTorch's does (LDAM-DRW's second
 * stage), is normalized per process instead, as under PyTorch DDP), the registered models' F32
 * buffers (batch-norm statistics, a method's running averages) and the shown loss are averaged
 * after every step, so
 * every model, store, optimizer and random stream stays the same on every process (compared at
 * every checkpoint: a recipe that changes a store from its own share of the batch only fails
 * there, naming it). Batch norm normalizes with each process's share unless train.sync_bn.
 * Mixup and cutmix mix within each process's share (with the same mixing weight everywhere), and
 * dropout draws the same masks on every process: both differ from one process. Evaluation runs
 * on every process over the whole split. Only the first process writes the run directory (the
 * others never open it for writing): config, split files, log, checkpoints, results; a resume
 * reads the checkpoint on every process, whatever P trained it. A failure on any process (a NaN
 * loss, a bad file) stops every process with its message, naming the process: bl_run_create and
 * bl_run_train return the same result everywhere. */

typedef struct {
    bool resume;          /* continue from the run directory's latest checkpoint */
    bool quiet;           /* no progress display on stderr */
} bl_run_opts;

/* Builds a run from a config (ownership passes to the run, also on failure): validates it
 * against the trainer's and the recipe's tables, loads the data (long-tailed subset, validation
 * split), calls recipe->setup, finalizes what it registered, and creates the run directory
 * (output.dir) with config.yaml. A directory that already holds a run is refused unless
 * opts->resume, in which case its config must match and the latest checkpoint is restored. */
bl_run *bl_run_create(bl_config *config, const bl_run_opts *opts);
/* The trainer's own option table (for `--help` listings and documentation). */
const bl_option *bl_trainer_options(int *n_options);
/* Trains the remaining phases (each: begin, its epochs, end, a checkpoint), writes the final
 * checkpoint, evaluates on val and test and writes results.json. */
int bl_run_train(bl_run *run);
/* Opens a finished or interrupted run for evaluation: `path` is a run directory (latest
 * checkpoint) or a checkpoint directory. Loads the data and the registered state; no log is
 * written. `overrides` ("section.key=value", n of them, may be NULL) change test-time settings
 * only: method.* keys other than method.name, train.threads and train.eval_batch_size; any other
 * key is an error, since the weights were trained with it. */
bl_run *bl_run_open(const char *path, const char *const *overrides, int n_overrides);
void bl_run_free(bl_run *run);

/* Appends one record to log.jsonl: `json_object_body` is the inside of an object without braces,
 * e.g. "\"alpha\":1.5,\"val_top1\":0.61"; the record is written as {"method_epoch":E,"step":S,...}
 * (E the number of epochs completed) so readers never mistake it for a training record. */
int bl_run_log(bl_run *run, const char *json_object_body);
/* Writes a checkpoint of everything registered (see the file comment). */
int bl_run_checkpoint(bl_run *run, bool final);

/* ---- evaluation ------------------------------------------------------------------------------- */

/* An evaluator turns a recipe's predictions over a dataset into metrics. A kind declares its
 * metrics' names, the primary one first (what the progress line shows and tables lead with), and
 * writes its result as JSON members for the log and results.json. Kinds shipped: "classification"
 * (top-1/5, balanced accuracy, many/medium/few-shot, calibration: bl_metrics) and "regression"
 * (SRCC, PLCC after the 4-parameter logistic fit, KRCC, RMSE, of scores (B) against a batch's
 * "score" field). A new benchmark registers its own. */
typedef struct {
    const char *name;
    const char *const *metrics; /* NULL-terminated; metrics[0] is the primary metric */
    void *(*create)(const bl_run *run);
    int (*add)(void *self, const bl_tensor *prediction, const bl_batch *batch);
    double (*metric)(void *self, const char *metric); /* NAN when unknown or undefined */
    char *(*json)(void *self);                        /* members without braces; malloc'ed */
    void (*free)(void *self);
} bl_evaluator_kind;

/* Makes an evaluator kind known by its name (a recipe's `evaluator`). */
int bl_evaluator_register(const bl_evaluator_kind *kind);
const bl_evaluator_kind *bl_evaluator_find(const char *name);

/* One evaluation in progress: a kind and its accumulated state. */
typedef struct bl_evaluator {
    const bl_evaluator_kind *kind;
    void *self;
} bl_evaluator;

/* The value of one of the kind's metrics (NAN when unknown). */
double bl_evaluator_metric(const bl_evaluator *e, const char *metric);
/* The primary metric's name and value. */
const char *bl_evaluator_primary(const bl_evaluator *e, double *value);
/* The result as JSON members without braces; malloc'ed. */
char *bl_evaluator_json(const bl_evaluator *e);
void bl_evaluator_free(bl_evaluator *e);
/* The classification evaluator's full result (confusion matrix, per-class counts); NULL for
 * another kind. */
bl_metrics *bl_evaluator_classification(const bl_evaluator *e);

/* The samples of a split, "train", "val" or "test", as evaluation reads them (no random
 * transform); 0 for a split the run does not have (no validation split). */
int64_t bl_run_split_size(const bl_run *run, const char *split);
/* Calls fn on every batch of a split, in order, with the evaluation transforms (normalization
 * only), every registered model in eval mode and grad mode off; each call inside its own arena
 * scope. The pass evaluation and recipes' feature extraction share. */
typedef int (*bl_batch_fn)(bl_run *run, bl_batch *batch, void *user);
int bl_run_for_each_batch(bl_run *run, const char *split, bl_batch_fn fn, void *user);
/* Evaluates the run's recipe on a split in batches through recipe->predict (eval mode, no grad)
 * with the recipe's evaluator; *out is freed with bl_evaluator_free. */
int bl_run_evaluate(bl_run *run, const char *split, bl_evaluator *out);

/* ---- learning-rate schedules from a config ------------------------------------------------------ */

/* The learning-rate schedule a config's train section describes: train.schedule is "constant",
 * "multistep" (train.milestones, train.gamma), "cosine" (to train.eta_min over train.epochs) or
 * "warmup_multistep" (multistep after a linear warmup over train.warmup_epochs from
 * train.warmup_start_factor * lr; the BBN schedule of the long-tailed CIFAR papers). */
int bl_schedule_from_config(const bl_config *c, bl_schedule *out);
/* The optimizer settings of the config's train section (train.optimizer, lr, momentum, ...). */
int bl_optim_config_from_config(const bl_config *c, bl_optim_config *out);
/* Learning rate of 0-based epoch `epoch` for a schedule that starts at epoch `origin`: the
 * schedule read at t = epoch - origin, plus 1 when `at_epoch_start` (train.lr_at_epoch_start: the
 * papers' code steps its scheduler at the start of each epoch, so the first epoch already runs at
 * "epoch 1"). */
double bl_schedule_epoch_lr(const bl_schedule *s, int epoch, int origin, bool at_epoch_start);


#ifdef __cplusplus
}
#endif
#endif
