/* The multi-process layer on MPI: joining the job a launcher started, in-place all-reduces and
 * broadcasts in chunks (MPI counts are ints), the failure agreement, and the time spent inside
 * collectives. Communication runs on a duplicate of MPI_COMM_WORLD, so a program that uses MPI
 * for its own purposes never mixes its messages with ours; solo mode switches to MPI_COMM_SELF's
 * semantics without touching MPI at all. */
#include "ballast/dist.h"
#include "ballast/profile.h"

#include "core/internal.h"
#include "dist/launcher.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK ((size_t)1 << 28) /* elements per MPI call, well inside an int count */
#define MESSAGE_MAX 1024

static struct {
    bool joined;       /* this process called MPI_Init through us */
    bool solo;
    MPI_Comm comm;
    int rank, size;    /* in comm */
    bool failed;       /* a failure has been agreed */
    int failed_rank;
    double seconds;
    int64_t calls;
} dist = {.size = 1, .failed_rank = -1};

bool bl_dist_available(void) { return true; }

int bl_dist_init(int *argc, char ***argv) {
    if (dist.joined || !bl__dist_launched()) return BL_OK;
    int initialized = 0, provided = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
        BL_CHECK_RC(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS,
                    "MPI_Init_thread failed: this process cannot join the MPI job");
        BL_CHECK_RC(provided >= MPI_THREAD_FUNNELED, "MPI provides thread level %d, ballast needs MPI_THREAD_FUNNELED",
                    provided);
    }
    BL_CHECK_RC(MPI_Comm_dup(MPI_COMM_WORLD, &dist.comm) == MPI_SUCCESS, "MPI_Comm_dup failed");
    MPI_Comm_rank(dist.comm, &dist.rank);
    MPI_Comm_size(dist.comm, &dist.size);
    dist.joined = true;
    return BL_OK;
}

void bl_dist_finalize(void) {
    if (!dist.joined) return;
    MPI_Comm_free(&dist.comm);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
    dist.joined = false;
    dist.rank = 0;
    dist.size = 1;
}

/* True when collectives must communicate. */
static bool active(void) { return dist.joined && !dist.solo && dist.size > 1; }

int bl_dist_rank(void) { return active() ? dist.rank : 0; }
int bl_dist_size(void) { return active() ? dist.size : 1; }

bool bl_dist_set_solo(bool solo) {
    bool was = dist.solo;
    dist.solo = solo;
    return was;
}

static MPI_Op mpi_op(bl_dist_op op) { return op == BL_DIST_MAX ? MPI_MAX : op == BL_DIST_MIN ? MPI_MIN : MPI_SUM; }

static int allreduce(void *data, size_t n, size_t elem, MPI_Datatype type, bl_dist_op op) {
    if (!active() || n == 0) return BL_OK;
    BL_CHECK_RC(data, "all-reduce: NULL data");
    double t0 = bl_now();
    for (size_t off = 0; off < n; off += CHUNK) {
        int count = (int)(n - off < CHUNK ? n - off : CHUNK);
        BL_CHECK_RC(MPI_Allreduce(MPI_IN_PLACE, (char *)data + off * elem, count, type, mpi_op(op), dist.comm) ==
                        MPI_SUCCESS,
                    "MPI_Allreduce of %zu values failed", n);
    }
    dist.seconds += bl_now() - t0;
    dist.calls++;
    return BL_OK;
}

int bl_dist_allreduce_f32(float *data, size_t n, bl_dist_op op) { return allreduce(data, n, sizeof *data, MPI_FLOAT, op); }
int bl_dist_allreduce_f64(double *data, size_t n, bl_dist_op op) {
    return allreduce(data, n, sizeof *data, MPI_DOUBLE, op);
}
int bl_dist_allreduce_i64(int64_t *data, size_t n, bl_dist_op op) {
    return allreduce(data, n, sizeof *data, MPI_INT64_T, op);
}

int bl_dist_broadcast(void *data, size_t bytes, int root) {
    if (!active() || bytes == 0) return BL_OK;
    BL_CHECK_RC(data && root >= 0 && root < dist.size, "broadcast: NULL data or root %d outside 0..%d", root,
                dist.size - 1);
    double t0 = bl_now();
    for (size_t off = 0; off < bytes; off += CHUNK) {
        int count = (int)(bytes - off < CHUNK ? bytes - off : CHUNK);
        BL_CHECK_RC(MPI_Bcast((char *)data + off, count, MPI_BYTE, root, dist.comm) == MPI_SUCCESS,
                    "MPI_Bcast of %zu bytes failed", bytes);
    }
    dist.seconds += bl_now() - t0;
    dist.calls++;
    return BL_OK;
}

int bl_dist_barrier(void) {
    if (!active()) return BL_OK;
    double t0 = bl_now();
    BL_CHECK_RC(MPI_Barrier(dist.comm) == MPI_SUCCESS, "MPI_Barrier failed");
    dist.seconds += bl_now() - t0;
    dist.calls++;
    return BL_OK;
}

int bl_dist_agree(int rc) {
    if (!active()) return rc == BL_OK ? BL_OK : BL_ERR;
    if (dist.failed) {
        /* Every rank learnt of the failure in the same agreement: nobody waits for this one. */
        if (!bl_last_error()[0]) bl_set_error("rank %d failed (see its message above)", dist.failed_rank);
        return BL_ERR;
    }
    int mine = rc == BL_OK ? dist.size : dist.rank, first = dist.size;
    double t0 = bl_now();
    BL_CHECK_RC(MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, dist.comm) == MPI_SUCCESS,
                "MPI_Allreduce of the ranks' status failed");
    dist.calls++;
    if (first == dist.size) {
        dist.seconds += bl_now() - t0;
        return BL_OK;
    }
    char message[MESSAGE_MAX] = "";
    if (first == dist.rank) snprintf(message, sizeof message, "%s", bl_last_error()[0] ? bl_last_error() : "failed");
    int ok = MPI_Bcast(message, MESSAGE_MAX, MPI_CHAR, first, dist.comm) == MPI_SUCCESS;
    dist.seconds += bl_now() - t0;
    message[MESSAGE_MAX - 1] = '\0';
    dist.failed = true;
    dist.failed_rank = first;
    bl_clear_error();
    if (ok) bl_set_error("rank %d: %s", first, message);
    else bl_set_error("rank %d failed, and its message could not be received", first);
    return BL_ERR;
}

int bl_dist_failed_rank(void) { return dist.failed ? dist.failed_rank : -1; }

void bl_dist_clear_failure(void) {
    dist.failed = false;
    dist.failed_rank = -1;
}

_Noreturn void bl_dist_abort(const char *message) {
    if (dist.joined) {
        fprintf(stderr, "ballast: rank %d: %s\n", dist.rank, message ? message : "");
        fflush(stderr);
        MPI_Abort(dist.comm, 1);
    } else {
        fprintf(stderr, "ballast: %s\n", message ? message : "");
    }
    exit(1);
}

double bl_dist_seconds(void) { return dist.seconds; }
int64_t bl_dist_calls(void) { return dist.calls; }

void bl_dist_reset_stats(void) {
    dist.seconds = 0;
    dist.calls = 0;
}
