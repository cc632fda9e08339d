/* The multi-process layer of a build without MPI: always rank 0 of 1, collectives are no-ops. A
 * process that an MPI launcher started is refused, so `mpirun -np P` never runs P independent
 * copies of one training into the same run directory. */
#include "ballast/dist.h"

#include "core/internal.h"
#include "dist/launcher.h"

#include <stdio.h>
#include <stdlib.h>

bool bl_dist_available(void) { return false; }

int bl_dist_init(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    BL_CHECK_RC(!bl__dist_launched(),
                "an MPI launcher started this process, but this ballast was built without MPI (install "
                "libopenmpi-dev and rebuild; CMake prints whether it found MPI)");
    return BL_OK;
}

void bl_dist_finalize(void) {}
int bl_dist_rank(void) { return 0; }
int bl_dist_size(void) { return 1; }
int bl_dist_allreduce_f32(float *data, size_t n, bl_dist_op op) { return BL_OK; }
int bl_dist_allreduce_f64(double *data, size_t n, bl_dist_op op) { return BL_OK; }
int bl_dist_allreduce_i64(int64_t *data, size_t n, bl_dist_op op) { return BL_OK; }
int bl_dist_broadcast(void *data, size_t bytes, int root) { return BL_OK; }
int bl_dist_barrier(void) { return BL_OK; }
int bl_dist_agree(int rc) { return rc == BL_OK ? BL_OK : BL_ERR; }
int bl_dist_failed_rank(void) { return -1; }
void bl_dist_clear_failure(void) {}

_Noreturn void bl_dist_abort(const char *message) {
    fprintf(stderr, "ballast: %s\n", message ? message : "");
    exit(1);
}

bool bl_dist_set_solo(bool solo) { return false; }
double bl_dist_seconds(void) { return 0; }
int64_t bl_dist_calls(void) { return 0; }
void bl_dist_reset_stats(void) {}
