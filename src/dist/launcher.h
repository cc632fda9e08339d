/* Whether an MPI launcher started this process: shared by the MPI layer and its stub. */
#ifndef BALLAST_DIST_LAUNCHER_H
#define BALLAST_DIST_LAUNCHER_H

#include <stdbool.h>
#include <stdlib.h>

/* mpirun (Open MPI), Hydra (MPICH) and Slurm's PMI, and PMIx (srun, Open MPI 5) each leave one of
 * these in the environment of the processes they start. */
static inline bool bl__dist_launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMI_SIZE") || getenv("PMIX_RANK");
}

#endif
