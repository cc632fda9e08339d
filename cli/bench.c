/* `ballast bench`: training and inference throughput of a model, GEMM and convolution GFLOP/s,
 * and the machine's FMA peak (with the widest FMA the CPU has), each as one JSON line; with --torch
 * the same workload runs in PyTorch (bench/torch_bench.py) and the line carries the ratio
 * ballast / PyTorch. On a shared machine, --repeat alternates the two several times and reports
 * medians, and cpu_share tells how much of the cores the run actually got. */
#include "cli.h"

#include "ballast/ballast.h"

#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#ifndef BALLAST_SOURCE_DIR
#define BALLAST_SOURCE_DIR "."
#endif

static const cli_option options[] = {
    {"model", "NAME", "model to run (train/infer), default resnet32", false},
    {"batch", "N", "batch size, default 128", false},
    {"threads", "N", "worker threads, default 2", false},
    {"steps", "N", "timed steps (median reported), default 10", false},
    {"warmup", "N", "untimed steps first, default 3", false},
    {"classes", "N", "classes, default 10", false},
    {"repeat", "N", "runs (each followed by PyTorch's with --torch); medians reported, default 1", false},
    {"torch", NULL, "also run the identical PyTorch workload and print the ratio", false},
    {"profile", NULL, "print time, share and GFLOP/s per op", false},
};

static const char usage[] =
    "usage: ballast bench train|infer [--model NAME --batch B --threads T --steps N --repeat R --torch --profile]\n"
    "       ballast bench gemm|conv|peak [--threads T]";

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static int compare_doubles(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* Runs the PyTorch twin and returns its img/s (best of NCHW and channels_last when `both_formats`),
 * or a negative value when PyTorch is unavailable. */
static double torch_img_per_s(const char *model, const char *mode, long batch, long threads, long steps,
                              long warmup, long classes, bool both_formats, double *rss_mb) {
    double best = -1;
    for (int cl = 0; cl < (both_formats ? 2 : 1); cl++) {
        char cmd[1024];
        snprintf(cmd, sizeof cmd,
                 "/usr/bin/python3 %s/bench/torch_bench.py --model %s --mode %s --batch %ld --threads %ld "
                 "--steps %ld --warmup %ld --classes %ld %s 2>/dev/null",
                 BALLAST_SOURCE_DIR, model, mode, batch, threads, steps, warmup, classes, cl ? "--channels-last" : "");
        FILE *p = popen(cmd, "r");
        if (!p) return -1;
        char line[1024] = "";
        if (!fgets(line, sizeof line, p)) line[0] = '\0';
        pclose(p);
        const char *ips = strstr(line, "\"img_per_s\": "), *rss = strstr(line, "\"peak_rss_mb\": ");
        if (!ips) continue;
        double v = atof(ips + 13);
        if (v > best) {
            best = v;
            if (rss) *rss_mb = atof(rss + 15);
        }
    }
    return best;
}

static void print_profile(double seconds_total) {
    const bl_profile_entry *e;
    int n = bl_profile_entries(&e);
    double covered = 0;
    for (int i = 0; i < n; i++) covered += e[i].seconds;
    fprintf(stderr, "%-24s %8s %10s %7s %9s\n", "op", "calls", "ms", "share", "GFLOP/s");
    for (int i = 0; i < n; i++) {
        double gf = e[i].seconds > 0 ? e[i].flops / e[i].seconds * 1e-9 : 0;
        fprintf(stderr, "%-24s %8lld %10.2f %6.1f%% %9.1f\n", e[i].name, (long long)e[i].calls, e[i].seconds * 1e3,
                100 * e[i].seconds / seconds_total, gf);
        printf("{\"profile_op\": \"%s\", \"calls\": %lld, \"ms\": %.3f, \"share\": %.4f, \"gflops\": %.2f}\n", e[i].name,
               (long long)e[i].calls, e[i].seconds * 1e3, e[i].seconds / seconds_total, gf);
    }
    fprintf(stderr, "%-24s %8s %10.2f %6.1f%%   (time outside profiled ops: %.1f%%)\n", "total", "",
            seconds_total * 1e3, 100.0, 100 * (1 - covered / seconds_total));
}

/* CPU seconds (user + system) this process has used so far, all threads together. */
static double cpu_seconds(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

typedef struct {
    bl_model *m;
    bl_optimizer *opt;
    bool train;
    bl_tensor *x, *y;
    long warmup, steps;
} workload;

/* One run: warmup steps, then timed steps (their times in times[], profiled). Returns the median
 * step time, or a negative value after reporting an error; *cpu_share is the CPU time the process
 * got during the timed steps over wall time times threads: well below 1 when other processes took
 * the cores (then the run measures the machine's load more than the code). */
static double timed_run(const workload *w, int threads, double *times, double *cpu_share) {
    double cpu0 = 0, wall = 0;
    for (long s = 0; s < w->warmup + w->steps; s++) {
        if (s == w->warmup) {
            bl_profile_enable(true);
            cpu0 = cpu_seconds();
        }
        double t0 = bl_now();
        bl_scope scope = bl_scope_begin();
        bool ok = true;
        if (w->train) {
            bl_params_zero_grad(&w->m->params);
            bl_tensor *loss = bl_cross_entropy(bl_model_forward(w->m, w->x), w->y, bl_ce_args_default());
            ok = bl_backward(loss) == BL_OK && bl_optimizer_step(w->opt) == BL_OK;
        } else {
            BL_NO_GRAD { ok = bl_model_forward(w->m, w->x) != NULL; }
        }
        bl_scope_end(scope);
        if (!ok) {
            bl_profile_enable(false);
            cli_fail("bench");
            return -1;
        }
        if (s >= w->warmup) wall += times[s - w->warmup] = bl_now() - t0;
    }
    bl_profile_enable(false);
    *cpu_share = (cpu_seconds() - cpu0) / (wall * threads);
    return median(times, (int)w->steps);
}

/* Runs the workload `repeat` times, each followed by the PyTorch twin when asked (so that both
 * sides see the same time windows of a shared machine), and prints one JSON line with the medians
 * over the repeats and the median, lowest and highest of the per-pair ratios. */
static int bench_model(const cli_args *a, bool train) {
    const char *name = cli_has(a, "model") ? cli_get(a, "model") : "resnet32";
    long batch, threads, steps, warmup, classes, repeat;
    if (!cli_int(a, "batch", 128, &batch) || !cli_int(a, "threads", 2, &threads) || !cli_int(a, "steps", 10, &steps) ||
        !cli_int(a, "warmup", 3, &warmup) || !cli_int(a, "classes", 10, &classes) || !cli_int(a, "repeat", 1, &repeat))
        return 2;
    if (steps < 1) steps = 1;
    if (repeat < 1) repeat = 1;
    bool torch = cli_has(a, "torch");
    bl_set_threads((int)threads);
    bl_model_opts opts = {.num_classes = classes, .image_size = 32, .patch_size = 4};
    bl_model *m = bl_model_create(name, &opts, 0);
    if (!m) return cli_fail("bench");
    m->training = train;
    bl_optimizer opt;
    if (bl_optimizer_init(&opt, &m->params, bl_sgd_config(0.1, 0.9, 5e-4)) != BL_OK) {
        bl_model_free(m);
        return cli_fail("bench");
    }
    bl_scope outer = bl_scope_begin();
    bl_rng rng = bl_rng_make(0, 1);
    bl_tensor *x = bl_empty(BL_F32, BL_SHAPE(batch, 3, 32, 32));
    bl_tensor *y = bl_empty(BL_I64, BL_SHAPE(batch));
    bl_fill_normal_(x, &rng, 0, 1);
    for (long i = 0; i < batch; i++) ((int64_t *)y->data)[i] = bl_rng_below(&rng, classes);
    workload w = {m, &opt, train, x, y, warmup, steps};
    double *times = calloc((size_t)steps, sizeof *times), *runs = calloc(5 * (size_t)repeat, sizeof *runs);
    double *step_s = runs, *shares = runs + repeat, *torch_ips = runs + 2 * repeat, *ratios = runs + 3 * repeat;
    double *torch_rss = runs + 4 * repeat, profiled = 0;
    int status = times && runs ? 0 : cli_fail("bench");
    bl_profile_reset();
    for (long r = 0; r < repeat && status == 0; r++) {
        step_s[r] = timed_run(&w, (int)threads, times, &shares[r]);
        if (step_s[r] < 0) {
            status = 1;
            break;
        }
        for (long i = 0; i < steps; i++) profiled += times[i];
        if (torch)
            torch_ips[r] = torch_img_per_s(name, train ? "train" : "infer", batch, threads, steps, warmup, classes,
                                           true, &torch_rss[r]);
        ratios[r] = torch_ips[r] > 0 ? (double)batch / step_s[r] / torch_ips[r] : 0;
    }
    if (status == 0) {
        double flops_per_step = bl_profile_total_flops() / (double)(steps * repeat);
        double med = median(step_s, (int)repeat), ips = (double)batch / med;
        printf("{\"model\": \"%s\", \"mode\": \"%s\", \"batch\": %ld, \"threads\": %ld, \"img_per_s\": %.2f, "
               "\"step_ms\": %.2f, \"gflops\": %.1f, \"peak_rss_mb\": %.1f, \"arena_peak_mb\": %.1f, "
               "\"cpu_share\": %.2f",
               name, train ? "train" : "infer", batch, threads, ips, med * 1e3, flops_per_step / med * 1e-9,
               peak_rss_mb(), (double)bl_arena_peak() / (1 << 20), median(shares, (int)repeat));
        if (repeat > 1) printf(", \"repeats\": %ld", repeat);
        if (torch && torch_ips[0] > 0) {
            double t = median(torch_ips, (int)repeat), rss = median(torch_rss, (int)repeat);
            double ratio = median(ratios, (int)repeat); /* sorts: lowest and highest at the ends */
            printf(", \"torch_img_per_s\": %.2f, \"torch_peak_rss_mb\": %.1f, \"ratio\": %.3f", t, rss, ratio);
            if (repeat > 1) printf(", \"ratio_min\": %.3f, \"ratio_max\": %.3f", ratios[0], ratios[repeat - 1]);
        } else if (torch) {
            printf(", \"torch\": \"unavailable (needs /usr/bin/python3 with torch)\"");
        }
        printf("}\n");
        fflush(stdout);
        if (cli_has(a, "profile")) print_profile(profiled);
    }
    free(times);
    free(runs);
    bl_scope_end(outer);
    bl_optimizer_free(&opt);
    bl_model_free(m);
    return status;
}

/* FMA throughput: per thread, independent chains of vector FMAs, enough of them to hide the FMA
 * latency (4 cycles) on two pipes while they all stay in registers (12 of the 16 ymm registers,
 * 16 of the 32 zmm registers; the loops are unrolled so that the chains live in registers, not in
 * memory). Each iteration is `chains` FMAs of 2 FLOPs per lane. */
#define AVX2_CHAINS 12
#define AVX512_CHAINS 16
/* Iterations per run: about 0.1 s on a 4-5 GHz core with two FMA pipes. */
#define FMA_ITERS 40000000L

__attribute__((target("avx2,fma"))) static float fma_chains_avx2(long iters) {
    __m256 acc[AVX2_CHAINS], mul = _mm256_set1_ps(0.999999f), add = _mm256_set1_ps(1e-7f);
    for (int k = 0; k < AVX2_CHAINS; k++) acc[k] = _mm256_set1_ps((float)k);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 12
        for (int k = 0; k < AVX2_CHAINS; k++) acc[k] = _mm256_fmadd_ps(acc[k], mul, add);
    float sink = 0;
    for (int k = 0; k < AVX2_CHAINS; k++) sink += acc[k][0];
    return sink;
}

__attribute__((target("avx512f"))) static float fma_chains_avx512(long iters) {
    __m512 acc[AVX512_CHAINS], mul = _mm512_set1_ps(0.999999f), add = _mm512_set1_ps(1e-7f);
    for (int k = 0; k < AVX512_CHAINS; k++) acc[k] = _mm512_set1_ps((float)k);
    for (long i = 0; i < iters; i++)
#pragma GCC unroll 16
        for (int k = 0; k < AVX512_CHAINS; k++) acc[k] = _mm512_fmadd_ps(acc[k], mul, add);
    float sink = 0;
    for (int k = 0; k < AVX512_CHAINS; k++) sink += _mm512_reduce_add_ps(acc[k]);
    return sink;
}

/* The widest FMA the CPU runs: 512 bits with AVX-512, else 256 (AVX2). */
static int fma_vector_bits(void) { return __builtin_cpu_supports("avx512f") ? 512 : 256; }

/* Best of 3 runs of the FMA loop on `threads` threads, in GFLOP/s. */
static double fma_peak_gflops(int threads) {
    const bool wide = fma_vector_bits() == 512;
    const double flops_per_iter = wide ? AVX512_CHAINS * 16 * 2 : AVX2_CHAINS * 8 * 2;
    double best = 0;
    for (int rep = 0; rep < 3; rep++) {
        double t0 = bl_now();
        float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : sink)
        sink += wide ? fma_chains_avx512(FMA_ITERS) : fma_chains_avx2(FMA_ITERS);
        double dt = bl_now() - t0, gf = (double)threads * (double)FMA_ITERS * flops_per_iter / dt * 1e-9;
        if (gf > best) best = gf;
        if (sink == 12345.0f) printf(" ");
    }
    return best;
}

static int bench_peak(const cli_args *a) {
    long threads;
    if (!cli_int(a, "threads", 2, &threads)) return 2;
    printf("{\"bench\": \"fma_peak\", \"threads\": %ld, \"vector_bits\": %d, \"gflops\": %.1f}\n", threads,
           fma_vector_bits(), fma_peak_gflops((int)threads));
    return 0;
}

/* Times `run` (a matmul or a conv) and returns GFLOP/s at the median of several repetitions. */
static double time_op(bl_tensor *(*run)(bl_tensor **), bl_tensor **args, double flops) {
    double t[7];
    for (int r = -2; r < 7; r++) {
        bl_scope s = bl_scope_begin();
        double t0 = bl_now();
        BL_NO_GRAD { run(args); }
        if (r >= 0) t[r] = bl_now() - t0;
        bl_scope_end(s);
    }
    return flops / median(t, 7) * 1e-9;
}

static bl_tensor *run_matmul(bl_tensor **a) { return bl_matmul(a[0], a[1]); }
static bl_tensor *run_conv(bl_tensor **a) { return bl_conv2d(a[0], a[1], NULL, bl_conv_args_make((int)a[2]->shape[0], 1)); }

static int bench_kernels(const cli_args *a, bool conv) {
    long threads;
    if (!cli_int(a, "threads", 2, &threads)) return 2;
    bl_set_threads((int)threads);
    double peak = fma_peak_gflops((int)threads);
    bl_rng rng = bl_rng_make(0, 2);
    if (!conv) {
        static const int64_t shapes[][3] = {{2048, 2048, 2048}, {1024, 1024, 1024}, {512, 512, 512},
                                            {8320, 576, 192},   {8320, 768, 192},   {8320, 192, 768}};
        for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
            bl_scope s = bl_scope_begin();
            int64_t M = shapes[i][0], N = shapes[i][1], K = shapes[i][2];
            bl_tensor *args[2] = {bl_empty(BL_F32, BL_SHAPE(M, K)), bl_empty(BL_F32, BL_SHAPE(K, N))};
            bl_fill_normal_(args[0], &rng, 0, 1);
            bl_fill_normal_(args[1], &rng, 0, 1);
            double gf = time_op(run_matmul, args, 2.0 * M * N * K);
            printf("{\"bench\": \"gemm\", \"M\": %lld, \"N\": %lld, \"K\": %lld, \"threads\": %ld, \"gflops\": %.1f, "
                   "\"fma_peak_gflops\": %.1f, \"share_of_peak\": %.3f}\n",
                   (long long)M, (long long)N, (long long)K, threads, gf, peak, gf / peak);
            bl_scope_end(s);
        }
        return 0;
    }
    /* The three stages of a CIFAR ResNet at batch 128: (channels, size, stride). */
    /* Each shape with NCHW activations (reordered to oneDNN's blocked layout and back per call) and
     * channels last (used as they are; what the CNN models run). */
    static const int64_t shapes[][4] = {{16, 16, 32, 1}, {16, 32, 32, 2}, {32, 32, 16, 1}, {32, 64, 16, 2}, {64, 64, 8, 1}};
    for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
        for (int channels_last = 0; channels_last < 2; channels_last++) {
            bl_scope s = bl_scope_begin();
            int64_t C = shapes[i][0], O = shapes[i][1], H = shapes[i][2], stride = shapes[i][3], OH = H / stride;
            bl_tensor *x = bl_empty(BL_F32, BL_SHAPE(128, C, H, H));
            bl_fill_normal_(x, &rng, 0, 1);
            bl_tensor *args[3] = {channels_last ? bl_channels_last(x) : x, bl_empty(BL_F32, BL_SHAPE(O, C, 3, 3)),
                                  bl_empty(BL_F32, BL_SHAPE(stride))};
            bl_fill_normal_(args[1], &rng, 0, 1);
            double gf = time_op(run_conv, args, 2.0 * 128 * O * OH * OH * C * 9);
            printf("{\"bench\": \"conv3x3_fwd\", \"batch\": 128, \"C\": %lld, \"O\": %lld, \"H\": %lld, "
                   "\"stride\": %lld, \"layout\": \"%s\", \"threads\": %ld, \"gflops\": %.1f, "
                   "\"fma_peak_gflops\": %.1f, \"share_of_peak\": %.3f}\n",
                   (long long)C, (long long)O, (long long)H, (long long)stride, channels_last ? "nhwc" : "nchw",
                   threads, gf, peak, gf / peak);
            bl_scope_end(s);
        }
    return 0;
}

int cmd_bench(int argc, char **argv) {
    if (argc < 1 || argv[0][0] == '-') {
        printf("%s\n", usage);
        return argc < 1 ? 2 : 0;
    }
    const char *what = argv[0];
    cli_args a;
    int rc = cli_parse(&a, usage, options, (int)(sizeof options / sizeof options[0]), argc - 1, argv + 1);
    if (rc) return rc < 0 ? 2 : 0;
    if (strcmp(what, "train") == 0 || strcmp(what, "infer") == 0) return bench_model(&a, what[0] == 't');
    if (strcmp(what, "peak") == 0) return bench_peak(&a);
    if (strcmp(what, "gemm") == 0 || strcmp(what, "conv") == 0) return bench_kernels(&a, what[0] == 'c');
    fprintf(stderr, "ballast bench: unknown benchmark '%s' (train, infer, gemm, conv, peak)\n", what);
    return 2;
}
