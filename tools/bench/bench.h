/* pgstay-bench: types shared by the orchestration, the client threads and the report writers. */
#ifndef PGSTAY_BENCH_H
#define PGSTAY_BENCH_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "report.h"

#define BENCH_MAX_CLIENTS 64
#define BENCH_MAX_RUNS 20
#define BENCH_MAX_TARGETS 3
#define BENCH_MAX_ERRGROUPS 64

/* One client thread's instructions and what it recorded. */
struct client {
    int id;
    int reconnecting;     /* connect for every insert, like the article's psql loop */
    char conninfo[1024];
    int interval_ms;
    int timeout_ms;       /* longest wait for one INSERT's answer */
    int64_t t0_us;        /* first insert */
    int64_t end_us;       /* no insert starts after this */
    struct sample *samples;
    size_t cap;
    size_t n;
};

void *client_main(void *arg);

/* Unix time in µs (the lab prints unix ms, so the clocks must agree). */
int64_t bench_now_us(void);
void bench_sleep_until(int64_t t_us);

/* One run of one target: samples of all clients, the event's phases and the figures. */
struct run {
    struct sample *samples;
    size_t n;
    struct phases ph;
    struct metrics m;
    char new_primary[16];
    char event_log[4096];  /* the lab's output, each line stamped relative to t0 */
    char proxy_log[4096];  /* pgstay's SHOW FAILOVERS after the run, as JSON rows */
};

struct target {
    char name[32];
    int available;
    char why[512];        /* when not available */
    int nruns;
    struct run runs[BENCH_MAX_RUNS];
    struct metrics med;   /* medians over runs (counts rounded) */
    struct error_count errs[BENCH_MAX_ERRGROUPS];
    size_t nerrs;
};

struct bench {
    int clients;
    int interval_ms;
    double duration_s;
    double at_s;
    int delay_ms;
    int timeout_ms;
    char event[16];
    int runs;
    char out[1024];
    char lab_dir[1024];
    int port;
    char lab_bin[1024];
    char pgstay_bin[1024];
    int pool_size;
    int keep_lab;
    int async; /* --async: the lab without a synchronous standby */
    int ntargets;
    struct target targets[BENCH_MAX_TARGETS];
};

/* output.c */
void write_markdown(const struct bench *b, FILE *f);
int write_reports(const struct bench *b);

/* html.c */
void write_html(const struct bench *b, FILE *f);

#endif
