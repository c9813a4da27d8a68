/* pgstay-bench: the failover report as a markdown table and as JSON (report.md, report.json). */
#include <stdio.h>
#include <string.h>

#include "bench.h"

static void json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            fprintf(f, "\\%c", c);
        else if (c == '\n')
            fputs("\\n", f);
        else if (c < 0x20)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

/* -1 means "not applicable": null in JSON, "–" in tables */
static void json_num(FILE *f, double v)
{
    if (v < 0)
        fputs("null", f);
    else
        fprintf(f, "%.1f", v);
}

static void md_num(FILE *f, double v)
{
    if (v < 0)
        fputs(" – |", f);
    else
        fprintf(f, " %.0f |", v);
}

static const char *event_desc(const struct bench *b, char *buf, size_t cap)
{
    if (!strcmp(b->event, "crash"))
        snprintf(buf, cap, "primary crash, promotion %d ms later", b->delay_ms);
    else if (!strcmp(b->event, "freeze"))
        snprintf(buf, cap, "primary frozen (SIGSTOP), promotion %d ms later", b->delay_ms);
    else if (!strcmp(b->event, "switchover"))
        snprintf(buf, cap, "planned switchover (through pgstay's PAUSE/RESUME for pgstay targets)");
    else
        snprintf(buf, cap, "no event");
    return buf;
}

void write_markdown(const struct bench *b, FILE *f)
{
    char ev[160];
    fprintf(f, "## pgstay-bench failover: %s\n\n", event_desc(b, ev, sizeof ev));
    fprintf(f,
            "%d pooled clients + 1 reconnecting client, one insert every %d ms each, %.1f s per "
            "run, event at %.1f s; %d run(s) per target, medians.\n\n",
            b->clients, b->interval_ms, b->duration_s, b->at_s, b->runs);
    fputs("| target | attempts | acknowledged | errors | pooled conns broken | write gap (ms) | "
          "error window (ms) | promotion → first ack (ms) | slowest ack (ms) | lost | ran "
          "despite error |\n",
          f);
    fputs("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n", f);
    for (int i = 0; i < b->ntargets; i++) {
        const struct target *t = &b->targets[i];
        if (!t->available) {
            fprintf(f, "| %s | not available | | | | | | | | | |\n", t->name);
            continue;
        }
        const struct metrics *m = &t->med;
        fprintf(f, "| %s | %d | %d | %d | %d |", t->name, m->attempts, m->acked, m->errors,
                m->broken_persistent);
        md_num(f, m->write_gap_ms);
        md_num(f, m->error_window_ms);
        md_num(f, m->promote_to_ack_ms);
        md_num(f, m->max_latency_ms);
        fprintf(f, " %d | %d |\n", m->lost, m->ran_despite_error);
    }
    fputc('\n', f);
    for (int i = 0; i < b->ntargets; i++) {
        const struct target *t = &b->targets[i];
        if (!t->available) {
            char why[300];
            snprintf(why, sizeof why, "%s", t->why);
            for (char *p = why; *p; p++)
                if (*p == '\n' || *p == '|')
                    *p = ' ';
            fprintf(f, "- **%s** not available: %s\n", t->name, why);
            continue;
        }
        fprintf(f, "- **%s** errors:", t->name);
        if (!t->nerrs)
            fputs(" none", f);
        for (size_t j = 0; j < t->nerrs && j < 5; j++)
            fprintf(f, "%s %d × `%s` %s", j ? ";" : "", t->errs[j].count,
                    t->errs[j].sqlstate[0] ? t->errs[j].sqlstate : "-", t->errs[j].message);
        if (t->nerrs > 5)
            fprintf(f, "; and %zu more kinds", t->nerrs - 5);
        fputc('\n', f);
        const struct run *r = &t->runs[0];
        if (r->ph.crash_us && r->ph.writable_us)
            fprintf(f, "  - run 1: event→promoted %.0f ms, event→writable %.0f ms, new primary %s\n",
                    (double)(r->ph.promoted_us - r->ph.crash_us) / 1000.0,
                    (double)(r->ph.writable_us - r->ph.crash_us) / 1000.0,
                    r->new_primary[0] ? r->new_primary : "?");
    }
    fputs("\nwrite gap: longest time no client got a commit acknowledged; error window: first to "
          "last error a client saw; lost: acknowledged inserts whose row is missing on the new "
          "primary; ran despite error: the client got an error but the row is there.\n",
          f);
}

static void json_metrics(FILE *f, const struct metrics *m)
{
    fprintf(f,
            "{\"attempts\": %d, \"acknowledged\": %d, \"errors\": %d, \"broken_persistent\": %d, "
            "\"broken_reconnecting\": %d, \"connect_failed\": %d, \"lost\": %d, "
            "\"ran_despite_error\": %d, \"write_gap_ms\": ",
            m->attempts, m->acked, m->errors, m->broken_persistent, m->broken_reconnecting,
            m->connect_failed, m->lost, m->ran_despite_error);
    json_num(f, m->write_gap_ms);
    fputs(", \"error_window_ms\": ", f);
    json_num(f, m->error_window_ms);
    fputs(", \"promotion_to_first_ack_ms\": ", f);
    json_num(f, m->promote_to_ack_ms);
    fputs(", \"max_latency_ms\": ", f);
    json_num(f, m->max_latency_ms);
    fputc('}', f);
}

static void json_phase(FILE *f, const char *name, int64_t t, int64_t t0, int last)
{
    fprintf(f, "\"%s\": ", name);
    json_num(f, t ? (double)(t - t0) / 1000.0 : -1);
    if (!last)
        fputs(", ", f);
}

static void write_json(const struct bench *b, FILE *f)
{
    fprintf(f, "{\n  \"event\": ");
    json_str(f, b->event);
    fprintf(f,
            ", \"delay_ms\": %d, \"clients\": %d, \"interval_ms\": %d, \"duration_s\": %.3f, "
            "\"at_s\": %.3f, \"runs\": %d,\n  \"targets\": [\n",
            b->delay_ms, b->clients, b->interval_ms, b->duration_s, b->at_s, b->runs);
    for (int i = 0; i < b->ntargets; i++) {
        const struct target *t = &b->targets[i];
        fputs("    {\"name\": ", f);
        json_str(f, t->name);
        fprintf(f, ", \"available\": %s, \"why\": ", t->available ? "true" : "false");
        json_str(f, t->why);
        fputs(",\n     \"median\": ", f);
        if (t->available)
            json_metrics(f, &t->med);
        else
            fputs("null", f);
        fputs(",\n     \"errors\": [", f);
        for (size_t j = 0; j < t->nerrs; j++) {
            fputs(j ? ", {\"sqlstate\": " : "{\"sqlstate\": ", f);
            json_str(f, t->errs[j].sqlstate);
            fputs(", \"message\": ", f);
            json_str(f, t->errs[j].message);
            fprintf(f, ", \"count\": %d}", t->errs[j].count);
        }
        fputs("],\n     \"runs\": [", f);
        for (int k = 0; k < t->nruns && t->available; k++) {
            const struct run *r = &t->runs[k];
            fputs(k ? ",\n       {\"metrics\": " : "\n       {\"metrics\": ", f);
            json_metrics(f, &r->m);
            fputs(",\n        \"phases_ms\": {", f);
            json_phase(f, "event_start", r->ph.event_start_us, r->ph.t0_us, 0);
            json_phase(f, "crash", r->ph.crash_us, r->ph.t0_us, 0);
            json_phase(f, "promoted", r->ph.promoted_us, r->ph.t0_us, 0);
            json_phase(f, "writable", r->ph.writable_us, r->ph.t0_us, 0);
            json_phase(f, "event_end", r->ph.event_end_us, r->ph.t0_us, 0);
            json_phase(f, "gap_from", r->m.gap_from_us, r->ph.t0_us, 0);
            json_phase(f, "gap_to", r->m.gap_to_us, r->ph.t0_us, 0);
            json_phase(f, "end", r->ph.end_us, r->ph.t0_us, 1);
            fputs("}, \"new_primary\": ", f);
            json_str(f, r->new_primary);
            fputs(",\n        \"event_log\": ", f);
            json_str(f, r->event_log);
            fprintf(f, ",\n        \"pgstay_failovers\": %s}", r->proxy_log[0] ? r->proxy_log : "[]");
        }
        fprintf(f, "]}%s\n", i + 1 < b->ntargets ? "," : "");
    }
    fputs("  ]\n}\n", f);
}

int write_reports(const struct bench *b)
{
    char path[1200];
    int rc = 0;
    snprintf(path, sizeof path, "%s/report.md", b->out);
    FILE *f = fopen(path, "w");
    if (f) {
        write_markdown(b, f);
        rc |= fclose(f);
    } else {
        rc = -1;
    }
    snprintf(path, sizeof path, "%s/report.json", b->out);
    f = fopen(path, "w");
    if (f) {
        write_json(b, f);
        rc |= fclose(f);
    } else {
        rc = -1;
    }
    snprintf(path, sizeof path, "%s/report.html", b->out);
    f = fopen(path, "w");
    if (f) {
        write_html(b, f);
        rc |= fclose(f);
    } else {
        rc = -1;
    }
    return rc ? -1 : 0;
}
