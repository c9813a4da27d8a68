/* pgstay-bench: samples of the failover experiment and the pure arithmetic over them (no libpq). */
#ifndef PGSTAY_BENCH_REPORT_H
#define PGSTAY_BENCH_REPORT_H

#include <stddef.h>
#include <stdint.h>

/* What one insert attempt ended with. */
enum outcome {
    OUTCOME_OK,             /* INSERT acknowledged (CommandComplete) */
    OUTCOME_ERROR,          /* an error, the connection still usable */
    OUTCOME_BROKEN,         /* the connection was lost (or timed out) during the attempt */
    OUTCOME_CONNECT_FAILED, /* no connection could be made for this attempt */
};

#define SAMPLE_MSG_LEN 160

/* One insert attempt by one client; times are unix µs so they line up with the lab's. */
struct sample {
    int client;
    int seq;
    int reconnecting; /* 1: the client that connects for every insert (the article's psql loop) */
    int64_t start_us;
    int64_t end_us;
    enum outcome outcome;
    char sqlstate[6];
    char message[SAMPLE_MSG_LEN];
    int present; /* after the run: its row is in the table (1), absent (0) */
};

/* When things happened during one run, unix µs; 0 = did not happen / unknown. */
struct phases {
    int64_t t0_us;          /* clients start */
    int64_t end_us;         /* clients stop */
    int64_t event_start_us; /* the lab command started */
    int64_t event_end_us;   /* the lab command returned */
    int64_t crash_us;       /* primary crashed / frozen / switchover started */
    int64_t promoted_us;    /* the new primary left recovery */
    int64_t writable_us;    /* a commit succeeded on the new primary */
};

/* The per-run figures of the report. Durations in ms; -1 = not applicable. */
struct metrics {
    int attempts;
    int acked;
    int errors;              /* every attempt that was not acknowledged */
    int broken_persistent;   /* connections lost by the pooled (persistent) clients */
    int broken_reconnecting; /* connections lost mid-insert by the reconnecting client */
    int connect_failed;
    int lost;              /* acknowledged but the row is absent */
    int ran_despite_error; /* not acknowledged but the row is present */
    double write_gap_ms;   /* longest stretch without an acknowledgement */
    double error_window_ms;   /* first to last error seen (end times); 0 with one error */
    double promote_to_ack_ms; /* promotion to the first acknowledgement after it */
    double max_latency_ms;    /* slowest acknowledged insert (held by the proxy) */
    int64_t gap_from_us;
    int64_t gap_to_us;
    int64_t err_first_us;
    int64_t err_last_us;
};

struct error_count {
    char sqlstate[6];
    char message[SAMPLE_MSG_LEN];
    int count;
};

/* The longest interval in [from_us, to_us] with no acknowledgement (by end time); both bounds
 * count as edges so an outage that never ends is still seen. gap_from and gap_to may be NULL. */
int64_t report_write_gap(const struct sample *s, size_t n, int64_t from_us, int64_t to_us,
                         int64_t *gap_from, int64_t *gap_to);

/* Set every sample's present flag from the (client, seq) pairs read back from the table;
 * rows is 2*nrows ints and is sorted in place. */
void report_mark_present(struct sample *s, size_t n, int *rows, size_t nrows);

/* All figures of one run. Needs present set (report_mark_present). */
void report_compute(const struct sample *s, size_t n, const struct phases *ph, struct metrics *m);

/* Errors grouped by SQLSTATE + message, most frequent first; returns how many groups were
 * written (at most cap). Adds to counts already in out[0..*used) so runs can be merged. */
size_t report_count_errors(const struct sample *s, size_t n, struct error_count *out, size_t used,
                           size_t cap);
void report_sort_errors(struct error_count *e, size_t n);

/* The median of v[0..n) (sorts v). Negative values mean "not applicable" and are skipped, so a
 * median over runs ignores runs where a figure had no meaning; -1 when nothing is left. */
double report_median(double *v, size_t n);

const char *report_outcome_name(enum outcome o);

#endif
