/* Small static SVG charts for the HTML report: line charts, scatter plots (optionally with a log
 * x axis) and heatmaps, written as plain SVG elements into a text buffer. No scripts: tooltips are
 * SVG <title> children, which every browser shows on hover. */
#ifndef BALLAST_REPORT_SVG_H
#define BALLAST_REPORT_SVG_H

#include "io/json.h"

#include <stdbool.h>
#include <stdint.h>

/* One line (or set of points). Non-finite values, and x <= 0 on a log axis, are skipped. */
typedef struct {
    const char *name;                /* legend entry; NULL for none */
    const char *color;               /* CSS colour */
    const double *x, *y;
    int64_t n;
    const char *const *point_titles; /* optional tooltip per point (scatter plots) */
} bl__series;

typedef struct {
    const char *title, *x_label, *y_label;
    bool log_x;
    bool points;            /* markers instead of lines */
    double y_lo, y_hi;      /* fixed y range when y_hi > y_lo; otherwise fitted to the data */
    double y_scale;         /* tick labels show y * y_scale (100 for percentages); 0 means 1 */
    const double *x_marks;  /* dashed vertical reference lines */
    int n_x_marks;
} bl__chart;

/* Appends s with &, <, >, " escaped, for text and attribute values in HTML and SVG. */
void bl__text_append_escaped(bl__text *t, const char *s);

/* A line chart or scatter plot of the series, 560 x 320 user units, with axes, ticks, a grid and
 * a legend when more than one series is named. */
void bl__svg_chart(bl__text *out, const bl__chart *chart, const bl__series *series, int n_series);

/* A k x k heatmap of counts, each row scaled by its sum (so a cell shows the fraction of a true
 * class predicted as each class; colour on a square-root scale), with the count and fraction in
 * each cell's tooltip. */
void bl__svg_heatmap(bl__text *out, const char *title, const int64_t *counts, int64_t k, const char *row_label,
                     const char *column_label);

#endif
