/* ballast multi-process: the thin layer over MPI that data-parallel training stands on.
 *
 * A process started by an MPI launcher (`mpirun -np P ballast ...`, or srun) is one rank of a job
 * of P processes; started any other way it is rank 0 of 1 and MPI is never initialized, so a plain
 * `ballast` run behaves as it always did. A build without MPI (BALLAST_WITH_MPI off, or no MPI
 * found) compiles a stub of the same functions that is always rank 0 of 1, so nothing above this
 * layer needs an #ifdef.
 *
 * Collectives must be called by every rank of the job in the same order. Failures follow the rest
 * of the library (BL_ERR and bl_last_error()), except that an MPI error inside a collective ends
 * the whole job through MPI's own error handler (mpirun stops every rank), never a hang.
 *
 * Failure agreement: a step in which any rank may fail alone (a NaN on one rank, a bad file on one
 * machine) ends with bl_dist_agree, an all-reduced status. Every rank then returns the same result
 * and the same message, naming the rank that failed first. Once a failure has been agreed, further
 * agreements return BL_ERR at once without communicating (the other ranks know too), so every
 * rank can unwind through its own error paths, each of which may agree again, and still exit
 * cleanly; bl_dist_clear_failure starts afresh (on every rank, at the same point). A rank that
 * stops without an agreement (an error outside the trainer's steps) calls bl_dist_abort, which
 * prints the message and stops every rank of the job. */
#ifndef BALLAST_DIST_H
#define BALLAST_DIST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { BL_DIST_SUM, BL_DIST_MAX, BL_DIST_MIN } bl_dist_op;

/* True when this build has MPI (the stub answers false). */
bool bl_dist_available(void);
/* Joins the job when the process was started by an MPI launcher (its environment says so:
 * OMPI_COMM_WORLD_SIZE, PMI_SIZE, PMIX_RANK); otherwise does nothing. MPI runs with
 * MPI_THREAD_FUNNELED: only the thread that called bl_dist_init communicates. BL_ERR when MPI
 * cannot start, or when a launcher started this process but the build has no MPI. Idempotent. */
int bl_dist_init(int *argc, char ***argv);
/* Leaves the job (MPI_Finalize, which waits for the other ranks); no-op when not joined. */
void bl_dist_finalize(void);
/* This process's rank and the job's size (0 and 1 outside a job, and in solo mode). */
int bl_dist_rank(void);
int bl_dist_size(void);

/* In-place all-reduce over every rank. */
int bl_dist_allreduce_f32(float *data, size_t n, bl_dist_op op);
int bl_dist_allreduce_f64(double *data, size_t n, bl_dist_op op);
int bl_dist_allreduce_i64(int64_t *data, size_t n, bl_dist_op op);
/* `bytes` bytes of root's `data` to every rank. */
int bl_dist_broadcast(void *data, size_t bytes, int root);
/* Waits until every rank arrives. */
int bl_dist_barrier(void);

/* The failure agreement (see the file comment): every rank passes its own status; returns BL_OK
 * when all passed BL_OK, else BL_ERR on every rank with the error "rank R: <R's message>" for the
 * lowest failing rank R. */
int bl_dist_agree(int rc);
/* The rank whose failure the last failed agreement reported; -1 when none. */
int bl_dist_failed_rank(void);
/* Forgets an agreed failure, so that agreements communicate again. */
void bl_dist_clear_failure(void);
/* Prints "ballast: rank R: message" on stderr and stops every rank of the job (MPI_Abort); outside
 * a job, exits with status 1. */
_Noreturn void bl_dist_abort(const char *message);

/* Solo mode: while on, this process acts as a job of its own (rank 0 of 1; collectives are local
 * and succeed), so one rank can run single-process work (a reference run in a test) inside a job.
 * Returns the previous setting. */
bool bl_dist_set_solo(bool solo);

/* Seconds this process has spent inside collectives (including waiting for slower ranks) and how
 * many it has called, since the start or the last reset: what scaling out costs. */
double bl_dist_seconds(void);
int64_t bl_dist_calls(void);
void bl_dist_reset_stats(void);

#ifdef __cplusplus
}
#endif
#endif
