/* Pieces of the trainer shared between its source files: the terminal progress display, the
 * synthetic dataset, building a run, and the registry of what a recipe registered. Not installed. */
#ifndef BALLAST_TRAIN_INTERNAL_H
#define BALLAST_TRAIN_INTERNAL_H

#include "ballast/files.h"
#include "ballast/train.h"

/* ---- progress display (progress.c) ---------------------------------------------------------- */

/* Draws one self-updating status line on a terminal; on anything else (a log file, a pipe) prints
 * a plain line per epoch, and at most every 30 seconds within long epochs. */
typedef struct bl_progress bl_progress;
bl_progress *bl__progress_create(FILE *out);
void bl__progress_free(bl_progress *p);
/* Starts a stretch of training of `total_steps` steps, for the ETA. */
void bl__progress_begin(bl_progress *p, int64_t total_steps);
void bl__progress_epoch(bl_progress *p, int epoch, int epochs, int64_t steps_in_epoch);
/* After each step: step within the epoch (1-based), its loss, the lr and the images it held. */
void bl__progress_step(bl_progress *p, int64_t step_in_epoch, double loss, double lr, int64_t images);
/* At the end of an epoch: its mean loss and a short free text (e.g. "val top1 0.612"). */
void bl__progress_epoch_end(bl_progress *p, double mean_loss, const char *note);

/* ---- synthetic data (synthetic.c) ----------------------------------------------------------- */

/* Images of `classes` fixed random patterns (one per class, drawn from seed) plus Gaussian pixel
 * noise of relative strength `noise`: per_class images of each class, labels in class order. */
int bl__synthetic_dataset(int64_t classes, int64_t per_class, int64_t channels, int64_t size, double noise,
                          uint64_t seed, uint64_t sample_seed, bl_dataset *out);

/* ---- building a run (trainer.c, run_data.c) -------------------------------------------------- */

/* Puts a context in front of the pending error and returns BL_ERR. (The library keeps the first
 * message of a failure, so a BL_CHECK after a failed call could not say where it happened.) */
int bl__add_context(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* Loads the data, draws or reads the training and validation rows (saving them in run->dir when
 * `save`), counts the classes and fills the training transforms. */
int bl__build_data(bl_run *run, bool save);

/* Declares the trainer's table (plus the synthetic dataset's when it is used) and the method's
 * table, then refuses unknown keys. */
int bl__config_validate(bl_config *c);
/* A run holding the validated config (owned from here on, also on failure), its schedule and
 * scalar settings; nothing loaded yet. run->dir must be set before bl__run_build. */
bl_run *bl__run_new(bl_config *config, bool quiet);
/* Loads the data (reading the split from run->dir when saved there, else drawing it and, when
 * for_training, saving it there), builds the model and the method and, for training, optimizers,
 * sampler and loader. */
int bl__run_build(bl_run *run, bool for_training);

/* ---- the run's registered things (registry.c) ---------------------------------------------- */

#define BL__REG_NAME_MAX 64
#define BL__REG_MAX 16
#define BL__REG_MAX_PHASES 64

typedef struct {
    char name[BL__REG_NAME_MAX];
    bl_model *model;
    bool frozen; /* runs in eval mode during training steps */
} bl__reg_model;

typedef struct {
    char name[BL__REG_NAME_MAX];
    bl_params params;
} bl__reg_params;

typedef struct {
    char name[BL__REG_NAME_MAX];
    bl_optimizer opt;
    bl_schedule schedule;
    int origin; /* the epoch the schedule counts from */
} bl__reg_optimizer;

typedef struct {
    char name[BL__REG_NAME_MAX];
    bl_rng rng;
} bl__reg_rng;

/* Everything a recipe registered, plus where training stands in its phases. Entries are
 * allocated one by one, so pointers handed to the recipe stay valid. */
struct bl_run_registry {
    bl__reg_model *models[BL__REG_MAX];
    bl__reg_params *stores[BL__REG_MAX];
    bl__reg_optimizer *optimizers[BL__REG_MAX];
    bl__reg_rng *rngs[BL__REG_MAX];
    int n_models, n_stores, n_optimizers, n_rngs;
    bl_phase phases[BL__REG_MAX_PHASES];
    int n_phases;
    int phase;          /* the phase in progress (n_phases when all are done) */
    int phase_epoch;    /* epochs of it completed */
    bool phase_begun;   /* its begin hook has run */
    bool setup_done;    /* registration is closed */
    bl_sampler *samplers[BL__REG_MAX]; /* the recipe's own (bl_run_add_sampler) */
    char sampler_names[BL__REG_MAX][BL__REG_NAME_MAX];
    int n_samplers;
    bl_sampler *sampler;   /* the current one: registered, or made from a kind */
    bool sampler_owned;    /* made from a kind, freed when replaced */
    char sampler_name[BL__REG_NAME_MAX]; /* what bl_run_set_sampler was given: a name or a kind */
    bl_loader *loader;
    bl_mix_args mix;       /* train.augment.mixup / cutmix, applied to every training batch */
    /* the splits as sources: training batches (random transforms), and each split for evaluation */
    bl_source train_source, eval_sources[3]; /* eval: train, val, test */
    /* data parallelism over the processes of an MPI job (ballast/dist.h; one process: rank 0 of 1) */
    bool for_training;     /* made by bl_run_create: trains (rank 0 alone writes the run directory) */
    int64_t shard_rows;    /* this process's samples of the current batch, */
    int64_t batch_rows;    /* and the batch's samples over all processes */
    double allreduce_seconds; /* spent in gradient all-reduces (for the log's epoch records) */
};

/* ---- data parallelism (step.c, trainer.c) -------------------------------------------------- */

/* This process's weight in the current batch: its share of the batch's samples (1 in one process). */
double bl__shard_weight(const bl_run *run);
/* Every registered model's F32 buffers (batch-norm statistics, a method's running averages) set to
 * their average over the processes, each process weighted by its share of the batch, so that they
 * stay identical everywhere; *loss becomes the same weighted average. After a batch the processes
 * split unevenly, the random streams (the run's, the recipe's, dropout's) become the first
 * process's. No-op in one process. */
int bl__average_buffers_and_loss(bl_run *run, double *loss);
/* Compares every registered tensor and optimizer state across the processes (a hash each) and
 * fails naming the first that differs: a recipe that changed a store on one process only.
 * Collective; no-op in one process. */
int bl__check_replicas(const bl_run *run);

/* The evaluation source of "train", "val" or "test"; NULL (with an error) for another name. */
const bl_source *bl__split_source(const bl_run *run, const char *split);

void bl__registry_free(bl_run *run);
/* After recipe->setup: finalizes the stores, adds the default phase when the recipe added none,
 * and sums the phases' epochs into run->epochs. */
int bl__registry_close(bl_run *run);
/* Writes / reads every registered thing in a checkpoint directory (models, stores, optimizers and
 * state.json). Evaluation (for_training false) reads models and stores only, plus the counters. */
int bl__registry_save(const bl_run *run, const char *dir, bool final);
int bl__registry_load(bl_run *run, const char *dir, bool for_training);
/* Every optimizer's lr for a 0-based epoch, from its schedule; BL_ERR when one is not finite. */
int bl__registry_set_lr(bl_run *run, int epoch);

#endif
