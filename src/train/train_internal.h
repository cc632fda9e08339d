/* Pieces of the trainer shared between its source files: the terminal progress display, the
 * synthetic dataset, and the checkpoint reader/writer. Not installed. */
#ifndef BALLAST_TRAIN_INTERNAL_H
#define BALLAST_TRAIN_INTERNAL_H

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

/* ---- building a run (trainer.c) ------------------------------------------------------------- */

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

/* ---- checkpoints and the run directory (run.c) ---------------------------------------------- */

/* Creates `path` and its missing parents. */
int bl__mkdirs(const char *path);
bool bl__is_dir(const char *path);
bool bl__is_file(const char *path);
/* Writes a whole text file atomically. */
int bl__write_file_atomic(const char *path, const char *text);

#endif
