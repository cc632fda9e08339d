/* The training progress display: on a terminal, one status line redrawn in place (epoch, a bar
 * over the epoch's steps, loss, learning rate, images per second, time left); elsewhere (a file, a
 * pipe, a CI log) plain lines that stay readable, one per epoch and at most one every 30 seconds
 * inside an epoch. Throughput is measured over the stretch since the last drawn line, so it follows
 * the current speed; the ETA uses the average since the display began, which is steadier. */
#include "train_internal.h"

#include "ballast/profile.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define REDRAW_SECONDS 0.1
#define PLAIN_LINE_SECONDS 30.0
#define BAR_WIDTH 24

struct bl_progress {
    FILE *out;
    bool tty;
    double start, last_draw;
    int64_t total_steps, done_steps;
    int epoch, epochs;
    int64_t steps_in_epoch, step_in_epoch;
    double epoch_start;
    int64_t images_since_draw, images_in_epoch;
    double img_per_s;
    double loss, lr;
    bool line_open; /* a status line is on screen without its newline */
};

bl_progress *bl__progress_create(FILE *out) {
    bl_progress *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->out = out;
    p->tty = isatty(fileno(out));
    return p;
}

void bl__progress_free(bl_progress *p) {
    if (p && p->line_open) fputc('\n', p->out);
    free(p);
}

void bl__progress_begin(bl_progress *p, int64_t total_steps) {
    if (!p) return;
    p->total_steps = total_steps;
    p->done_steps = 0;
    p->start = p->last_draw = bl_now();
    p->images_since_draw = 0;
}

void bl__progress_epoch(bl_progress *p, int epoch, int epochs, int64_t steps_in_epoch) {
    if (!p) return;
    p->epoch = epoch;
    p->epochs = epochs;
    p->steps_in_epoch = steps_in_epoch;
    p->step_in_epoch = 0;
    p->images_in_epoch = 0;
    p->epoch_start = bl_now();
}

static void format_duration(double seconds, char *buf, size_t len) {
    if (!isfinite(seconds) || seconds < 0) {
        snprintf(buf, len, "--:--");
        return;
    }
    long s = (long)(seconds + 0.5);
    if (s >= 3600) snprintf(buf, len, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
    else snprintf(buf, len, "%02ld:%02ld", s / 60, s % 60);
}

static double eta_seconds(const bl_progress *p, double now) {
    if (p->done_steps == 0) return NAN;
    return (now - p->start) / (double)p->done_steps * (double)(p->total_steps - p->done_steps);
}

static void draw(bl_progress *p, double now) {
    char eta[32];
    format_duration(eta_seconds(p, now), eta, sizeof eta);
    if (p->tty) {
        char bar[BAR_WIDTH + 1];
        int filled = p->steps_in_epoch ? (int)(BAR_WIDTH * p->step_in_epoch / p->steps_in_epoch) : 0;
        for (int i = 0; i < BAR_WIDTH; i++) bar[i] = i < filled ? '#' : '.';
        bar[BAR_WIDTH] = '\0';
        /* \r returns to the line start, \033[K clears what a longer previous line left behind */
        fprintf(p->out, "\repoch %d/%d [%s] %lld/%lld loss %.4f lr %.3g %.0f img/s ETA %s\033[K", p->epoch + 1,
                p->epochs, bar, (long long)p->step_in_epoch, (long long)p->steps_in_epoch, p->loss, p->lr,
                p->img_per_s, eta);
        p->line_open = true;
    } else {
        fprintf(p->out, "epoch %d/%d step %lld/%lld loss %.4f lr %.3g %.0f img/s ETA %s\n", p->epoch + 1, p->epochs,
                (long long)p->step_in_epoch, (long long)p->steps_in_epoch, p->loss, p->lr, p->img_per_s, eta);
    }
    fflush(p->out);
}

void bl__progress_step(bl_progress *p, int64_t step_in_epoch, double loss, double lr, int64_t images) {
    if (!p) return;
    double now = bl_now();
    p->step_in_epoch = step_in_epoch;
    p->done_steps++;
    p->loss = loss;
    p->lr = lr;
    p->images_since_draw += images;
    p->images_in_epoch += images;
    double since = now - p->last_draw;
    if (since < (p->tty ? REDRAW_SECONDS : PLAIN_LINE_SECONDS)) return;
    p->img_per_s = (double)p->images_since_draw / since;
    p->images_since_draw = 0;
    p->last_draw = now;
    draw(p, now);
}

void bl__progress_epoch_end(bl_progress *p, double mean_loss, const char *note) {
    if (!p) return;
    double now = bl_now(), seconds = now - p->epoch_start;
    char eta[32], took[32];
    format_duration(eta_seconds(p, now), eta, sizeof eta);
    format_duration(seconds, took, sizeof took);
    if (p->tty) fputc('\r', p->out);
    fprintf(p->out, "epoch %d/%d done in %s: mean loss %.4f lr %.3g %.0f img/s%s%s ETA %s%s\n", p->epoch + 1,
            p->epochs, took, mean_loss, p->lr, seconds > 0 ? (double)p->images_in_epoch / seconds : 0.0,
            note && *note ? ", " : "", note ? note : "", eta, p->tty ? "\033[K" : "");
    p->line_open = false;
    fflush(p->out);
}
