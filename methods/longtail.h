/* The building blocks the long-tailed recipes in methods/ share: per-class statistics turned into
 * weights, margins and priors, the losses built on them, and the normalised classifiers (cosine,
 * causal-norm multi-head, TDE counterfactual). Everything that takes or returns a tensor is a
 * composition of ops, so autograd works through it and F32 or F64 inputs both work. Not installed:
 * the recipes and their tests include it. */
#ifndef BALLAST_METHODS_LONGTAIL_H
#define BALLAST_METHODS_LONGTAIL_H

#include "ballast/error.h"
#include "ballast/ops.h"
#include "ballast/train.h"

/* ---- per-class statistics (plain arrays of `classes` entries) ------------------------------ */

/* Class-balanced weights by effective number (Cui et al. 2019, eq. 3):
 *   w_c = (1 - beta) / (1 - beta^n_c), rescaled so the weights sum to the number of classes.
 * beta = 0 gives all ones; beta -> 1 approaches inverse frequency. Classes without images get 0
 * (they never occur as targets) and are left out of the rescaling. */
int bl_lt_effective_number_weights(const int64_t *counts, int64_t classes, double beta, double *weights);

/* LDAM margins (Cao et al. 2019, eq. 12): m_c proportional to n_c^(-1/4), scaled so the largest
 * (the rarest class's) equals max_margin. Every class needs at least one image. */
int bl_lt_ldam_margins(const int64_t *counts, int64_t classes, double max_margin, double *margins);

/* log pi_c = log(n_c / N), the training label prior. Every class needs at least one image. */
int bl_lt_log_prior(const int64_t *counts, int64_t classes, double *log_prior);

/* A 1-D arena tensor of dtype dt holding n doubles (for weights, margins, priors). */
bl_tensor *bl_lt_vector(bl_dtype dt, const double *values, int64_t n);

/* ---- losses ---------------------------------------------------------------------------------- */

/* Softmax focal loss (Lin et al. 2017, in the form the LDAM code uses for multi-class):
 *   loss = mean_i  w_{y_i} (1 - p_i)^gamma (-log p_i),   p_i = softmax(logits_i)[y_i].
 * logits (N, C), target I64 (N), class_weight (C) or NULL. gamma = 0 is cross-entropy. */
bl_tensor *bl_lt_focal_loss(bl_tensor *logits, bl_tensor *target, double gamma, bl_tensor *class_weight);

/* LDAM loss: cross-entropy of scale * (logits - m_y e_y): the target logit is lowered by its
 * class's margin before scaling. logits (N, C) (cosines, for the normalised classifier), margins
 * (C), class_weight (C) or NULL (the mean is then taken over the summed target weights, as
 * torch's weighted cross-entropy). */
bl_tensor *bl_lt_ldam_loss(bl_tensor *logits, bl_tensor *target, bl_tensor *margins, double scale,
                           bl_tensor *class_weight);

/* The two losses as bl_label_loss_fn, for bl_batch_label_loss (which mixes batches). */
typedef struct {
    double gamma;
    bl_tensor *class_weight;
} bl_lt_focal_args;
bl_tensor *bl_lt_focal_label_loss(bl_tensor *logits, bl_tensor *target, const void *focal_args);
typedef struct {
    bl_tensor *margins;
    double scale;
    bl_tensor *class_weight;
} bl_lt_ldam_args;
bl_tensor *bl_lt_ldam_label_loss(bl_tensor *logits, bl_tensor *target, const void *ldam_args);

/* ---- normalised classifiers --------------------------------------------------------------- */

/* Cosine classifier: normalize(x) normalize(w_c)^T for x (N, D), weight (C, D) -> (N, C). */
bl_tensor *bl_lt_cosine_logits(bl_tensor *x, bl_tensor *weight);

/* Causal-norm multi-head classifier (Tang et al. 2020, eq. 4): with x and every w_c split into
 * `heads` contiguous chunks of D / heads,
 *   logit_c = (tau / K) sum_k  w_c^k . x^k / ((||w_c^k|| + gamma) ||x^k||).
 * x (N, D), weight (C, D), no bias -> (N, C). */
bl_tensor *bl_lt_causal_norm_logits(bl_tensor *x, bl_tensor *weight, int heads, double tau, double gamma);

/* De-confound-TDE logits (Tang et al. 2020, eq. 7): the causal-norm logits of the counterfactual-
 * corrected feature, head by head,
 *   TDE_c = (tau / K) sum_k (x^k/||x^k|| - alpha cos_k d^k/||d^k||) . w_c^k / (||w_c^k|| + gamma),
 * cos_k = cos(x^k, d^k), d = the moving-average head direction (D), each chunk normalised on its
 * own. alpha = 0 gives bl_lt_causal_norm_logits. */
bl_tensor *bl_lt_tde_logits(bl_tensor *x, bl_tensor *weight, bl_tensor *head_direction, int heads, double tau,
                            double gamma, double alpha);

/* d <- mu d + mean over the batch of x (no (1 - mu) factor: only d's direction is used). d is a
 * persistent (D) tensor, x (N, D) features; not recorded by autograd. */
int bl_lt_head_direction_update_(bl_tensor *head_direction, bl_tensor *features, double mu);

/* tau-normalised classifier weights (Kang et al. 2020): w_c / ||w_c||^tau for weight (C, D). */
bl_tensor *bl_lt_tau_normalize(bl_tensor *weight, double tau);

/* ---- run-level helpers for recipes ----------------------------------------------------------- */

/* Records an error about a recipe option, "<config file>: <key>: <message>", and returns BL_ERR. */
int bl_lt_option_error(const bl_run *run, const char *key, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Checks that the sampler named by config key `key` is one the data library provides (instance,
 * class_balanced, sqrt, progressive), so a typo fails at setup rather than at the stage that
 * builds it; BL_ERR naming the key otherwise. */
int bl_lt_check_sampler(const bl_run *run, const char *key, const char *kind);

/* The model every long-tailed recipe trains: the config's model, registered as "model", with the
 * run's optimizer ("model") over it. */
bl_model *bl_lt_add_model(bl_run *run);

/* A normalised classifier's start: weight U(-bound, bound), the bias (when the model has one) 0 and
 * removed from training, for classifiers whose logits use only the weights' directions. */
int bl_lt_reset_classifier_without_bias(bl_model *m, bl_rng *rng, double bound);

/* Features of every image of a split (eval mode, no grad, normalisation only) as a persistent F32
 * (N, D) tensor the caller frees: the one forward pass a test-time parameter search needs. */
bl_tensor *bl_lt_dataset_features(bl_run *run, bl_model *model, const char *split);

/* Mean over classes of per-class top-1 accuracy (classes without images left out): the accuracy a
 * class-balanced test set measures, so a parameter chosen with it on a validation split whose
 * tail classes are smaller still targets the balanced test distribution. logits (N, C). */
double bl_lt_balanced_accuracy(const bl_tensor *logits, const bl_tensor *labels, int64_t classes);

/* A test-time parameter chosen on the validation split from the grid 0, step, ..., max, by the
 * class-balanced accuracy `score` gives the validation features at each value (called under
 * no-grad inside an arena scope). Every value is logged as {"type": record, parameter: v,
 * "val_balanced_acc": a}, the choice as record + "_chosen"; ties keep the smaller value. */
typedef struct {
    const char *record, *parameter;
    double max, step;
    const char *needs_validation; /* the error when the run has no validation split */
} bl_lt_grid;
typedef double (*bl_lt_grid_score)(bl_run *run, void *user, const bl_tensor *features, double value);
int bl_lt_grid_search(bl_run *run, bl_model *model, const bl_lt_grid *grid, bl_lt_grid_score score, void *user,
                      double *best);

/* The start of a classifier stage (Decoupling's second stage): batches drawn with `sampler`, and
 * the optimizer `optimizer` restarted with the run's settings at `lr`, decayed by a cosine over the
 * stage's `epochs` that reaches 0 just after its last epoch. Trains whatever is unfrozen; the
 * caller freezes. */
int bl_lt_begin_stage(bl_run *run, const char *optimizer, int epochs, double lr, const char *sampler);

#endif
