/* Thread count: one OpenMP pool serves every kernel; the BLAS is the OpenMP build, so it shares
 * that pool instead of starting its own threads inside ours. */
#include "internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

static int n_threads = 1;

void bl_set_threads(int n) {
    n_threads = n > 0 ? n : 1;
#ifdef _OPENMP
    omp_set_num_threads(n_threads);
#endif
}

int bl_get_threads(void) { return n_threads; }

int bl__thread_index(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

int bl__max_threads(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
