/* SVG charts for the report (see svg.h). Everything is laid out in fixed user units inside a
 * viewBox, so the browser scales a chart to its column without any script; coordinates are written
 * with one decimal, which is below a pixel at any sensible size and keeps pages small. */
#include "svg.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#define CHART_W 560.0
#define CHART_H 320.0
#define PLOT_LEFT 62.0
#define PLOT_RIGHT (CHART_W - 16.0)
#define PLOT_TOP 36.0
#define PLOT_BOTTOM (CHART_H - 46.0)
#define FONT "font-family=\"Helvetica,Arial,sans-serif\""

void bl__text_append_escaped(bl__text *t, const char *s) {
    char one[2] = {0, 0};
    for (; *s; s++) {
        switch (*s) {
        case '&': bl__text_append(t, "&amp;"); break;
        case '<': bl__text_append(t, "&lt;"); break;
        case '>': bl__text_append(t, "&gt;"); break;
        case '"': bl__text_append(t, "&quot;"); break;
        default: one[0] = *s; bl__text_append(t, one);
        }
    }
}

/* ---- axes ---------------------------------------------------------------------------------- */

/* The step among 1, 2, 5 x 10^e that cuts `span` into at most about `target` intervals. */
static double nice_step(double span, int target) {
    double raw = span / target, magnitude = pow(10, floor(log10(raw))), f = raw / magnitude;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * magnitude;
}

typedef struct {
    double lo, hi; /* in axis units: log10(x) on a log axis */
    bool log;
} axis;

static double axis_value(const axis *a, double v) { return a->log ? log10(v) : v; }

static bool plottable(const axis *a, double v) { return isfinite(v) && (!a->log || v > 0); }

/* Widens [lo, hi] to whole tick steps (linear) or whole decades (log); degenerate ranges get room. */
static void fit_axis(axis *a, double lo, double hi, bool fixed) {
    if (!(lo <= hi)) lo = 0, hi = 1;
    if (a->log) {
        a->lo = floor(lo);
        a->hi = ceil(hi);
        if (a->hi <= a->lo) a->hi = a->lo + 1;
        return;
    }
    if (hi == lo) lo -= fabs(lo) > 0 ? fabs(lo) * 0.5 : 0.5, hi += fabs(hi) > 0 ? fabs(hi) * 0.5 : 0.5;
    if (!fixed) {
        double step = nice_step(hi - lo, 5);
        lo = floor(lo / step + 1e-9) * step;
        hi = ceil(hi / step - 1e-9) * step;
    }
    a->lo = lo;
    a->hi = hi;
}

static double to_px(const axis *a, double v, double p0, double p1) {
    return p0 + (axis_value(a, v) - a->lo) / (a->hi - a->lo) * (p1 - p0);
}

static void tick_label(char *buf, size_t len, double v) {
    if (fabs(v) < 1e-12) v = 0; /* no "-0" or "1e-17" from accumulated steps */
    snprintf(buf, len, "%g", v);
}

static void x_tick(bl__text *out, double px, double value) {
    char label[32];
    tick_label(label, sizeof label, value);
    bl__text_printf(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ececec\"/>", px, PLOT_TOP, px,
                    PLOT_BOTTOM);
    bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", px, PLOT_BOTTOM + 15, label);
}

static void draw_x_ticks(bl__text *out, const axis *x) {
    if (x->log) {
        /* decades, and 2 and 5 between them when the axis spans few decades */
        bool minor = x->hi - x->lo <= 2;
        for (double d = x->lo; d <= x->hi + 1e-9; d++) {
            x_tick(out, to_px(x, pow(10, d), PLOT_LEFT, PLOT_RIGHT), pow(10, d));
            for (int m = 2; minor && d < x->hi && m <= 5; m += 3)
                x_tick(out, to_px(x, m * pow(10, d), PLOT_LEFT, PLOT_RIGHT), m * pow(10, d));
        }
        return;
    }
    double step = nice_step(x->hi - x->lo, 6);
    for (int i = 0;; i++) {
        double v = ceil(x->lo / step - 1e-9) * step + i * step;
        if (v > x->hi + step * 1e-9) break;
        x_tick(out, to_px(x, v, PLOT_LEFT, PLOT_RIGHT), v);
    }
}

static void draw_y_ticks(bl__text *out, const axis *y, double scale) {
    double step = nice_step(y->hi - y->lo, 5);
    for (int i = 0;; i++) {
        double v = ceil(y->lo / step - 1e-9) * step + i * step;
        if (v > y->hi + step * 1e-9) break;
        double py = to_px(y, v, PLOT_BOTTOM, PLOT_TOP);
        char label[32];
        tick_label(label, sizeof label, v * scale);
        bl__text_printf(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ececec\"/>", PLOT_LEFT,
                        py, PLOT_RIGHT, py);
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", PLOT_LEFT - 6, py + 4,
                        label);
    }
}

/* ---- series --------------------------------------------------------------------------------- */

static void draw_line(bl__text *out, const bl__series *s, const axis *x, const axis *y) {
    bool open = false;
    int64_t run_length = 0;
    double last_px = 0, last_py = 0;
    for (int64_t i = 0; i <= s->n; i++) {
        bool ok = i < s->n && plottable(x, s->x[i]) && plottable(y, s->y[i]);
        if (!ok) {
            /* a gap ends the polyline; a lone point would be invisible as a line, so mark it */
            if (open) bl__text_append(out, "\"/>\n");
            if (open && run_length == 1)
                bl__text_printf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2.5\" fill=\"%s\"/>\n", last_px, last_py,
                                s->color);
            open = false;
            continue;
        }
        last_px = to_px(x, s->x[i], PLOT_LEFT, PLOT_RIGHT);
        last_py = to_px(y, s->y[i], PLOT_BOTTOM, PLOT_TOP);
        if (!open) {
            bl__text_printf(out, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.8\" stroke-linejoin=\"round\" "
                                 "points=\"",
                            s->color);
            open = true;
            run_length = 0;
        }
        bl__text_printf(out, "%s%.1f,%.1f", run_length ? " " : "", last_px, last_py);
        run_length++;
    }
}

static void draw_points(bl__text *out, const bl__series *s, const axis *x, const axis *y) {
    for (int64_t i = 0; i < s->n; i++) {
        if (!plottable(x, s->x[i]) || !plottable(y, s->y[i])) continue;
        bl__text_printf(out, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3.6\" fill=\"%s\" fill-opacity=\"0.85\" "
                             "stroke=\"#fff\" stroke-width=\"0.6\">",
                        to_px(x, s->x[i], PLOT_LEFT, PLOT_RIGHT), to_px(y, s->y[i], PLOT_BOTTOM, PLOT_TOP), s->color);
        if (s->point_titles && s->point_titles[i]) {
            bl__text_append(out, "<title>");
            bl__text_append_escaped(out, s->point_titles[i]);
            bl__text_append(out, "</title>");
        }
        bl__text_append(out, "</circle>\n");
    }
}

/* Data points of all series inside a box, to keep the legend off the data. */
static int64_t points_inside(const bl__series *series, int n, const axis *x, const axis *y, double x0, double y0,
                             double w, double h) {
    int64_t inside = 0;
    for (int s = 0; s < n; s++)
        for (int64_t i = 0; i < series[s].n; i++) {
            if (!plottable(x, series[s].x[i]) || !plottable(y, series[s].y[i])) continue;
            double px = to_px(x, series[s].x[i], PLOT_LEFT, PLOT_RIGHT);
            double py = to_px(y, series[s].y[i], PLOT_BOTTOM, PLOT_TOP);
            inside += px >= x0 - 4 && px <= x0 + w + 4 && py >= y0 - 4 && py <= y0 + h + 4;
        }
    return inside;
}

/* The legend goes into whichever corner of the plot covers the fewest data points. */
static void draw_legend(bl__text *out, const bl__series *series, int n, const axis *x, const axis *y) {
    int named = 0;
    size_t longest = 0;
    for (int i = 0; i < n; i++)
        if (series[i].name) named++, longest = strlen(series[i].name) > longest ? strlen(series[i].name) : longest;
    if (named < 2) return;
    double width = 30 + 6.2 * (double)(longest < 48 ? longest : 48), height = 8.0 + 15.0 * named;
    double x0 = PLOT_RIGHT - width - 6, y0 = PLOT_TOP + 6;
    int64_t fewest = -1;
    for (int corner = 0; corner < 4; corner++) { /* top right, bottom right, top left, bottom left */
        double cx = corner < 2 ? PLOT_RIGHT - width - 6 : PLOT_LEFT + 6;
        double cy = corner % 2 == 0 ? PLOT_TOP + 6 : PLOT_BOTTOM - height - 6;
        int64_t covered = points_inside(series, n, x, y, cx, cy, width, height);
        if (fewest < 0 || covered < fewest) fewest = covered, x0 = cx, y0 = cy;
    }
    bl__text_printf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#fff\" "
                         "fill-opacity=\"0.85\" stroke=\"#ddd\"/>\n",
                    x0, y0, width, height);
    int row = 0;
    for (int i = 0; i < n; i++) {
        if (!series[i].name) continue;
        double ty = y0 + 15 + 15.0 * row++;
        bl__text_printf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"12\" height=\"4\" fill=\"%s\"/>", x0 + 7, ty - 6,
                        series[i].color);
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\">", x0 + 24, ty - 1);
        bl__text_append_escaped(out, series[i].name);
        bl__text_append(out, "</text>\n");
    }
}

static void draw_labels(bl__text *out, const bl__chart *chart) {
    bl__text_printf(out, "<text x=\"%.1f\" y=\"20\" font-size=\"14\" font-weight=\"600\">", PLOT_LEFT);
    bl__text_append_escaped(out, chart->title ? chart->title : "");
    bl__text_printf(out, "</text>\n<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", (PLOT_LEFT + PLOT_RIGHT) / 2,
                    CHART_H - 10);
    bl__text_append_escaped(out, chart->x_label ? chart->x_label : "");
    bl__text_printf(out, "</text>\n<text transform=\"translate(16 %.1f) rotate(-90)\" text-anchor=\"middle\">",
                    (PLOT_TOP + PLOT_BOTTOM) / 2);
    bl__text_append_escaped(out, chart->y_label ? chart->y_label : "");
    bl__text_append(out, "</text>\n");
}

void bl__svg_chart(bl__text *out, const bl__chart *chart, const bl__series *series, int n_series) {
    axis x = {.log = chart->log_x}, y = {.log = false};
    double x_lo = INFINITY, x_hi = -INFINITY, y_lo = INFINITY, y_hi = -INFINITY;
    for (int s = 0; s < n_series; s++)
        for (int64_t i = 0; i < series[s].n; i++) {
            if (!plottable(&x, series[s].x[i]) || !plottable(&y, series[s].y[i])) continue;
            double xv = axis_value(&x, series[s].x[i]);
            x_lo = fmin(x_lo, xv), x_hi = fmax(x_hi, xv);
            y_lo = fmin(y_lo, series[s].y[i]), y_hi = fmax(y_hi, series[s].y[i]);
        }
    bool fixed_y = chart->y_hi > chart->y_lo;
    fit_axis(&x, x_lo, x_hi, false);
    fit_axis(&y, fixed_y ? chart->y_lo : y_lo, fixed_y ? chart->y_hi : y_hi, fixed_y);

    bl__text_printf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" class=\"chart\" " FONT
                         " font-size=\"11\" fill=\"#333\">\n",
                    CHART_W, CHART_H);
    draw_labels(out, chart);
    draw_x_ticks(out, &x);
    draw_y_ticks(out, &y, chart->y_scale > 0 ? chart->y_scale : 1);
    for (int i = 0; i < chart->n_x_marks; i++) {
        if (!plottable(&x, chart->x_marks[i])) continue;
        double px = to_px(&x, chart->x_marks[i], PLOT_LEFT, PLOT_RIGHT);
        if (px < PLOT_LEFT || px > PLOT_RIGHT) continue;
        char label[32];
        tick_label(label, sizeof label, chart->x_marks[i]);
        bl__text_printf(out, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" "
                             "stroke-dasharray=\"4 3\"/>",
                        px, PLOT_TOP, px, PLOT_BOTTOM);
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#888\">%s</text>\n", px,
                        PLOT_TOP - 4, label);
    }
    bl__text_printf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#999\"/>\n",
                    PLOT_LEFT, PLOT_TOP, PLOT_RIGHT - PLOT_LEFT, PLOT_BOTTOM - PLOT_TOP);
    if (x_lo > x_hi)
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#999\">no data</text>\n",
                        (PLOT_LEFT + PLOT_RIGHT) / 2, (PLOT_TOP + PLOT_BOTTOM) / 2);
    for (int s = 0; s < n_series; s++) {
        if (chart->points) draw_points(out, &series[s], &x, &y);
        else draw_line(out, &series[s], &x, &y);
    }
    draw_legend(out, series, n_series, &x, &y);
    bl__text_append(out, "</svg>\n");
}

/* ---- heatmap -------------------------------------------------------------------------------- */

/* A sequential white-to-dark-blue scale over [0, 1], interpolated between three stops. The
 * heatmap feeds it the square root of a share, so the few-percent cells where a tail class's
 * errors scatter stay visible next to a diagonal near 100%. */
static void heat_color(double v, char *buf, size_t len) {
    static const double stops[3][3] = {{247, 251, 255}, {107, 174, 214}, {8, 48, 107}};
    v = v < 0 ? 0 : v > 1 ? 1 : v;
    int lo = v < 0.5 ? 0 : 1;
    double f = (v - 0.5 * lo) * 2;
    snprintf(buf, len, "rgb(%d,%d,%d)", (int)lround(stops[lo][0] + f * (stops[lo + 1][0] - stops[lo][0])),
             (int)lround(stops[lo][1] + f * (stops[lo + 1][1] - stops[lo][1])),
             (int)lround(stops[lo][2] + f * (stops[lo + 1][2] - stops[lo][2])));
}

void bl__svg_heatmap(bl__text *out, const char *title, const int64_t *counts, int64_t k, const char *row_label,
                     const char *column_label) {
    double cell = floor(440.0 / (double)k);
    cell = cell < 3 ? 3 : cell > 40 ? 40 : cell;
    double grid = cell * (double)k, left = 62, top = 40, width = left + grid + 84, height = top + grid + 46;
    /* label every class while the labels fit, else every 10th */
    int64_t label_every = cell >= 11 ? 1 : 10;
    bl__text_printf(out, "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %.0f %.0f\" class=\"heatmap\" " FONT
                         " font-size=\"11\" fill=\"#333\">\n",
                    width, height);
    bl__text_printf(out, "<text x=\"%.1f\" y=\"20\" font-size=\"14\" font-weight=\"600\">", left);
    bl__text_append_escaped(out, title);
    bl__text_printf(out, "</text>\n<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                         "fill=\"rgb(247,251,255)\" stroke=\"#999\"/>\n",
                    left, top, grid, grid);
    for (int64_t r = 0; r < k; r++) {
        int64_t row_sum = 0;
        for (int64_t c = 0; c < k; c++) row_sum += counts[r * k + c];
        for (int64_t c = 0; c < k; c++) {
            int64_t n = counts[r * k + c];
            if (n == 0) continue; /* the background already shows zero */
            double share = (double)n / (double)row_sum;
            char color[32];
            heat_color(sqrt(share), color, sizeof color);
            double x = left + cell * (double)c, y = top + cell * (double)r;
            bl__text_printf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"><title>", x, y,
                            cell, cell, color);
            bl__text_printf(out, "true %lld, predicted %lld: %lld (%.1f%%)</title></rect>\n", (long long)r,
                            (long long)c, (long long)n, 100 * share);
            if (cell >= 26)
                bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\" fill=\"%s\" "
                                     "pointer-events=\"none\">%.0f</text>\n",
                                x + cell / 2, y + cell / 2 + 3.5, share > 0.55 ? "#fff" : "#333", 100 * share);
        }
    }
    for (int64_t i = 0; i < k; i += label_every) {
        double mid = cell * ((double)i + 0.5);
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%lld</text>", left - 4, top + mid + 4,
                        (long long)i);
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%lld</text>\n", left + mid,
                        top + grid + 14, (long long)i);
    }
    bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">", left + grid / 2, top + grid + 34);
    bl__text_append_escaped(out, column_label);
    bl__text_printf(out, "</text>\n<text transform=\"translate(16 %.1f) rotate(-90)\" text-anchor=\"middle\">",
                    top + grid / 2);
    bl__text_append_escaped(out, row_label);
    bl__text_append(out, "</text>\n");
    /* colour bar of the row share, 0 at the bottom, on the same square-root scale as the cells */
    double bar_x = left + grid + 18, step = grid / 10;
    for (int i = 0; i < 10; i++) {
        char color[32];
        heat_color((i + 0.5) / 10, color, sizeof color);
        bl__text_printf(out, "<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"%.1f\" fill=\"%s\"/>", bar_x,
                        top + grid - step * (i + 1), step + 0.3, color);
    }
    bl__text_printf(out, "\n<rect x=\"%.1f\" y=\"%.1f\" width=\"14\" height=\"%.1f\" fill=\"none\" stroke=\"#999\"/>",
                    bar_x, top, grid);
    static const int shares[] = {0, 5, 25, 50, 100};
    for (int i = 0; i < 5; i++)
        bl__text_printf(out, "<text x=\"%.1f\" y=\"%.1f\">%d%%</text>", bar_x + 18,
                        top + grid * (1 - sqrt(shares[i] / 100.0)) + 4, shares[i]);
    bl__text_append(out, "\n");
    bl__text_append(out, "</svg>\n");
}
