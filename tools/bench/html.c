/* pgstay-bench: report.html, the clients' attempts drawn as an inline SVG timeline per target. */
#include <stdio.h>
#include <string.h>

#include "bench.h"

#define LEFT 130   /* lane labels */
#define PLOT 960   /* plot width in px */
#define LANE 16
#define LANE_GAP 5
#define TOP 46     /* phase labels */
#define AXIS 24
#define HELD_US 50000 /* an acknowledgement slower than this was held: drawn yellow */

static void esc(FILE *f, const char *s)
{
    for (; *s; s++) {
        switch (*s) {
        case '<':
            fputs("&lt;", f);
            break;
        case '>':
            fputs("&gt;", f);
            break;
        case '&':
            fputs("&amp;", f);
            break;
        case '"':
            fputs("&quot;", f);
            break;
        default:
            fputc(*s, f);
        }
    }
}

struct view {
    int64_t a, b;  /* shown time range, unix µs */
    int64_t t0;    /* labels are relative to this */
};

static double xpos(const struct view *v, int64_t t)
{
    if (t < v->a)
        t = v->a;
    if (t > v->b)
        t = v->b;
    return LEFT + (double)(t - v->a) * PLOT / (double)(v->b - v->a);
}

static void rect(FILE *f, double x0, double x1, int y, const char *color, const char *title,
                 int64_t t_rel_us)
{
    double w = x1 - x0;
    if (w < 1.5)
        w = 1.5;
    fprintf(f, "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"%s\">", x0, y, w,
            LANE, color);
    if (title) {
        fprintf(f, "<title>%+.1f ms: ", (double)t_rel_us / 1000.0);
        esc(f, title);
        fputs("</title>", f);
    }
    fputs("</rect>\n", f);
}

static void phase(FILE *f, const struct view *v, int64_t t, const char *label, const char *color,
                  int height, int row)
{
    if (!t || t < v->a || t > v->b)
        return;
    double x = xpos(v, t);
    fprintf(f,
            "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"%s\" stroke-width=\"1.5\" "
            "stroke-dasharray=\"4 2\"/>\n",
            x, TOP - 4, x, TOP + height, color);
    fprintf(f, "<text x=\"%.1f\" y=\"%d\" font-size=\"11\" fill=\"%s\">%s %+.0f ms</text>\n",
            x + 2, 10 + 11 * row, color, label, (double)(t - v->t0) / 1000.0);
}

/* One timeline: the clients' lanes over [v.a, v.b]. */
static void svg(FILE *f, const struct bench *b, const struct run *r, const struct view *v)
{
    int lanes = b->clients + 1;
    int height = lanes * (LANE + LANE_GAP);
    fprintf(f,
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
            "font-family=\"sans-serif\">\n",
            LEFT + PLOT + 10, TOP + height + AXIS);
    /* the write gap, behind everything */
    if (r->m.gap_to_us > r->m.gap_from_us && r->m.gap_to_us > v->a && r->m.gap_from_us < v->b) {
        double x0 = xpos(v, r->m.gap_from_us), x1 = xpos(v, r->m.gap_to_us);
        fprintf(f,
                "<rect x=\"%.1f\" y=\"%d\" width=\"%.1f\" height=\"%d\" fill=\"#d0d8ff\" "
                "opacity=\"0.6\"><title>write gap %.0f ms</title></rect>\n",
                x0, TOP - 2, x1 - x0, height + 2, r->m.write_gap_ms);
    }
    for (int lane = 0; lane < lanes; lane++) {
        int id = lane + 1;
        int y = TOP + lane * (LANE + LANE_GAP);
        fprintf(f, "<text x=\"4\" y=\"%d\" font-size=\"11\">client %d (%s)</text>\n", y + 12, id,
                lane == b->clients ? "reconnects" : "pooled");
        fprintf(f, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#f4f4f4\"/>\n", LEFT,
                y, PLOT, LANE);
        /* plain fast acknowledgements merge into one green bar, so the file stays small */
        double g0 = -1, g1 = -1;
        for (size_t i = 0; i < r->n; i++) {
            const struct sample *s = &r->samples[i];
            if (s->client != id || s->end_us < v->a || s->start_us > v->b)
                continue;
            double x0 = xpos(v, s->start_us), x1 = xpos(v, s->end_us);
            int64_t rel = s->start_us - v->t0;
            int fast_ok = s->outcome == OUTCOME_OK && s->end_us - s->start_us <= HELD_US;
            if (fast_ok && g0 >= 0 && x0 <= g1 + 2) {
                g1 = x1;
                continue;
            }
            if (g0 >= 0)
                rect(f, g0, g1, y, "#2e9e44", NULL, 0);
            g0 = g1 = -1;
            if (fast_ok) {
                g0 = x0;
                g1 = x1;
                continue;
            }
            char title[SAMPLE_MSG_LEN + 80];
            double ms = (double)(s->end_us - s->start_us) / 1000.0;
            if (s->outcome == OUTCOME_OK) {
                snprintf(title, sizeof title, "seq %d acknowledged after %.0f ms (held)", s->seq,
                         ms);
                rect(f, x0, x1, y, "#f2c200", title, rel);
                rect(f, x1 - 1.5, x1, y, "#2e9e44", NULL, 0);
            } else {
                snprintf(title, sizeof title, "seq %d %s after %.0f ms: %s %s%s", s->seq,
                         report_outcome_name(s->outcome), ms, s->sqlstate, s->message,
                         s->present ? " (row present)" : "");
                rect(f, x0, x1, y, s->outcome == OUTCOME_ERROR ? "#d62728" : "#111", title, rel);
            }
        }
        if (g0 >= 0)
            rect(f, g0, g1, y, "#2e9e44", NULL, 0);
    }
    const char *start = !strcmp(b->event, "freeze") ? "freeze" : "crash";
    /* the lab stamps "crashed" after it has killed every process, so its start is drawn too */
    phase(f, v, r->ph.event_start_us, "lab command started", "#777", height, 0);
    if (strcmp(b->event, "switchover")) /* a switchover's "crash" is its start */
        phase(f, v, r->ph.crash_us, start, "#d62728", height, 1);
    phase(f, v, r->ph.promoted_us, "promoted", "#1f5fbf", height, 2);
    phase(f, v, r->ph.writable_us, "writable", "#2e7d32", height, 3);
    /* time axis */
    int64_t span = v->b - v->a;
    int64_t step = span > 8000000 ? 1000000 : span > 3000000 ? 500000 : span > 1500000 ? 200000
                                                                                        : 100000;
    int64_t first = ((v->a - v->t0) / step) * step + v->t0;
    for (int64_t t = first; t <= v->b; t += step) {
        if (t < v->a)
            continue;
        double x = xpos(v, t);
        fprintf(f,
                "<line x1=\"%.1f\" y1=\"%d\" x2=\"%.1f\" y2=\"%d\" stroke=\"#888\"/>"
                "<text x=\"%.1f\" y=\"%d\" font-size=\"10\" fill=\"#555\" "
                "text-anchor=\"middle\">%.1f s</text>\n",
                x, TOP + height, x, TOP + height + 4, x, TOP + height + 16,
                (double)(t - v->t0) / 1e6);
    }
    fputs("</svg>\n", f);
}

static void metrics_row(FILE *f, const char *name, const struct metrics *m)
{
    fprintf(f, "<tr><td>%s</td><td>%d</td><td>%d</td><td>%d</td><td>%d</td>", name, m->attempts,
            m->acked, m->errors, m->broken_persistent);
    const double v[] = {m->write_gap_ms, m->error_window_ms, m->promote_to_ack_ms,
                        m->max_latency_ms};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        if (v[i] < 0)
            fputs("<td>–</td>", f);
        else
            fprintf(f, "<td>%.0f</td>", v[i]);
    }
    fprintf(f, "<td>%d</td><td>%d</td></tr>\n", m->lost, m->ran_despite_error);
}

void write_html(const struct bench *b, FILE *f)
{
    fputs("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>pgstay-bench failover"
          "</title>\n<style>body{font-family:sans-serif;margin:20px;max-width:1150px}"
          "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;"
          "text-align:right}td:first-child{text-align:left}pre{background:#f6f6f6;padding:6px;"
          "font-size:12px;white-space:pre-wrap}.k{display:inline-block;width:12px;height:12px;"
          "margin:0 4px 0 12px;vertical-align:middle}</style></head><body>\n",
          f);
    fprintf(f, "<h1>pgstay-bench failover: event <i>%s</i></h1>\n", b->event);
    fprintf(f,
            "<p>%d pooled clients (persistent connections) + 1 client that reconnects for every "
            "insert, one insert every %d ms each, %.1f s per run, event at %.1f s",
            b->clients, b->interval_ms, b->duration_s, b->at_s);
    if (!strcmp(b->event, "crash") || !strcmp(b->event, "freeze"))
        fprintf(f, ", promotion %d ms after it", b->delay_ms);
    fprintf(f, "; %d run(s) per target, medians below, timelines of run 1.</p>\n", b->runs);
    fputs("<table><tr><th>target</th><th>attempts</th><th>acknowledged</th><th>errors</th>"
          "<th>pooled conns broken</th><th>write gap ms</th><th>error window ms</th>"
          "<th>promotion → first ack ms</th><th>slowest ack ms</th><th>lost</th>"
          "<th>ran despite error</th></tr>\n",
          f);
    for (int i = 0; i < b->ntargets; i++) {
        const struct target *t = &b->targets[i];
        if (t->available)
            metrics_row(f, t->name, &t->med);
        else
            fprintf(f, "<tr><td>%s</td><td colspan=\"10\">not available</td></tr>\n", t->name);
    }
    fputs("</table>\n<p><span class=\"k\" style=\"background:#2e9e44\"></span>acknowledged"
          "<span class=\"k\" style=\"background:#f2c200\"></span>in progress / held &gt; 50 ms"
          "<span class=\"k\" style=\"background:#d62728\"></span>error"
          "<span class=\"k\" style=\"background:#111\"></span>disconnected (connection broken or "
          "connect failed)<span class=\"k\" style=\"background:#d0d8ff\"></span>longest write gap"
          "</p>\n",
          f);
    for (int i = 0; i < b->ntargets; i++) {
        const struct target *t = &b->targets[i];
        fprintf(f, "<h2>%s</h2>\n", t->name);
        if (!t->available) {
            fputs("<p>Not available: </p><pre>", f);
            esc(f, t->why);
            fputs("</pre>\n", f);
            continue;
        }
        const struct run *r = &t->runs[0];
        struct view whole = {r->ph.t0_us, r->ph.end_us, r->ph.t0_us};
        fputs("<p>The whole run (hover a mark for its detail):</p>\n", f);
        svg(f, b, r, &whole);
        if (r->ph.event_start_us) {
            /* zoom on the event: from just before it to after the clients recovered */
            int64_t a = r->ph.event_start_us - 300000, z = r->ph.event_start_us + 1000000;
            const int64_t ends[] = {r->ph.writable_us, r->m.gap_to_us, r->m.err_last_us,
                                    r->ph.event_end_us};
            for (size_t k = 0; k < sizeof ends / sizeof ends[0]; k++)
                if (ends[k] + 300000 > z)
                    z = ends[k] + 300000;
            if (a < r->ph.t0_us)
                a = r->ph.t0_us;
            if (z > r->ph.end_us)
                z = r->ph.end_us;
            if (z > a) {
                struct view zoom = {a, z, r->ph.t0_us};
                fputs("<p>Around the event:</p>\n", f);
                svg(f, b, r, &zoom);
            }
        }
        fputs("<p>Errors (all runs):</p><ul>\n", f);
        if (!t->nerrs)
            fputs("<li>none</li>\n", f);
        for (size_t j = 0; j < t->nerrs && j < 5; j++) {
            fprintf(f, "<li>%d × <code>%s</code> ", t->errs[j].count,
                    t->errs[j].sqlstate[0] ? t->errs[j].sqlstate : "-");
            esc(f, t->errs[j].message);
            fputs("</li>\n", f);
        }
        fputs("</ul>\n<p>The lab's output (times from the start of the run):</p><pre>", f);
        esc(f, r->event_log);
        fputs("</pre>\n", f);
        if (strcmp(r->proxy_log, "[]") && r->proxy_log[0]) {
            fputs("<p>pgstay's SHOW FAILOVERS after the run:</p><pre>", f);
            esc(f, r->proxy_log);
            fputs("</pre>\n", f);
        }
    }
    fputs("</body></html>\n", f);
}
