/* pgstay-bench: write gaps, error windows, losses, error groups and medians over recorded samples. */
#include "report.h"

#include <stdlib.h>
#include <string.h>

const char *report_outcome_name(enum outcome o)
{
    switch (o) {
    case OUTCOME_OK:
        return "ok";
    case OUTCOME_ERROR:
        return "error";
    case OUTCOME_BROKEN:
        return "connection broken";
    case OUTCOME_CONNECT_FAILED:
        return "connect failed";
    }
    return "?";
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int cmp_pair(const void *a, const void *b)
{
    const int *x = a, *y = b;
    if (x[0] != y[0])
        return (x[0] > y[0]) - (x[0] < y[0]);
    return (x[1] > y[1]) - (x[1] < y[1]);
}

int64_t report_write_gap(const struct sample *s, size_t n, int64_t from_us, int64_t to_us,
                         int64_t *gap_from, int64_t *gap_to)
{
    /* The acknowledgement times, as the application saw them, sorted across all clients:
     * a write gap is when no client at all got a commit through. */
    int64_t *t = malloc((n + 2) * sizeof *t);
    size_t k = 0;
    if (!t)
        return -1;
    t[k++] = from_us;
    for (size_t i = 0; i < n; i++)
        if (s[i].outcome == OUTCOME_OK && s[i].end_us > from_us && s[i].end_us < to_us)
            t[k++] = s[i].end_us;
    t[k++] = to_us;
    qsort(t, k, sizeof *t, cmp_i64);
    int64_t best = 0, bf = from_us, bt = from_us;
    for (size_t i = 1; i < k; i++) {
        if (t[i] - t[i - 1] > best) {
            best = t[i] - t[i - 1];
            bf = t[i - 1];
            bt = t[i];
        }
    }
    free(t);
    if (gap_from)
        *gap_from = bf;
    if (gap_to)
        *gap_to = bt;
    return best;
}

void report_mark_present(struct sample *s, size_t n, int *rows, size_t nrows)
{
    qsort(rows, nrows, 2 * sizeof *rows, cmp_pair);
    for (size_t i = 0; i < n; i++) {
        int key[2] = {s[i].client, s[i].seq};
        s[i].present = nrows && bsearch(key, rows, nrows, 2 * sizeof *rows, cmp_pair) != NULL;
    }
}

void report_compute(const struct sample *s, size_t n, const struct phases *ph, struct metrics *m)
{
    memset(m, 0, sizeof *m);
    m->promote_to_ack_ms = -1;
    int64_t first_ack_after_promote = 0;
    int64_t max_ok = 0;
    for (size_t i = 0; i < n; i++) {
        const struct sample *x = &s[i];
        m->attempts++;
        if (x->outcome == OUTCOME_OK) {
            m->acked++;
            if (!x->present)
                m->lost++;
            if (x->end_us - x->start_us > max_ok)
                max_ok = x->end_us - x->start_us;
            if (ph->promoted_us && x->end_us >= ph->promoted_us &&
                (!first_ack_after_promote || x->end_us < first_ack_after_promote))
                first_ack_after_promote = x->end_us;
            continue;
        }
        m->errors++;
        if (x->present)
            m->ran_despite_error++;
        if (x->outcome == OUTCOME_BROKEN) {
            if (x->reconnecting)
                m->broken_reconnecting++;
            else
                m->broken_persistent++;
        } else if (x->outcome == OUTCOME_CONNECT_FAILED) {
            m->connect_failed++;
        }
        /* the window is when clients saw errors, i.e. their end times */
        if (!m->err_first_us || x->end_us < m->err_first_us)
            m->err_first_us = x->end_us;
        if (x->end_us > m->err_last_us)
            m->err_last_us = x->end_us;
    }
    m->error_window_ms = m->errors ? (double)(m->err_last_us - m->err_first_us) / 1000.0 : 0;
    if (first_ack_after_promote)
        m->promote_to_ack_ms = (double)(first_ack_after_promote - ph->promoted_us) / 1000.0;
    m->max_latency_ms = (double)max_ok / 1000.0;
    m->write_gap_ms =
        (double)report_write_gap(s, n, ph->t0_us, ph->end_us, &m->gap_from_us, &m->gap_to_us) /
        1000.0;
}

size_t report_count_errors(const struct sample *s, size_t n, struct error_count *out, size_t used,
                           size_t cap)
{
    for (size_t i = 0; i < n; i++) {
        if (s[i].outcome == OUTCOME_OK)
            continue;
        size_t j;
        for (j = 0; j < used; j++)
            if (!strcmp(out[j].sqlstate, s[i].sqlstate) && !strcmp(out[j].message, s[i].message))
                break;
        if (j == used) {
            if (used == cap)
                continue; /* more distinct errors than we keep: the rarest are dropped */
            memset(&out[j], 0, sizeof out[j]);
            memcpy(out[j].sqlstate, s[i].sqlstate, sizeof out[j].sqlstate);
            memcpy(out[j].message, s[i].message, sizeof out[j].message);
            out[j].sqlstate[sizeof out[j].sqlstate - 1] = '\0';
            out[j].message[sizeof out[j].message - 1] = '\0';
            used++;
        }
        out[j].count++;
    }
    return used;
}

static int cmp_err(const void *a, const void *b)
{
    const struct error_count *x = a, *y = b;
    if (x->count != y->count)
        return y->count - x->count;
    int c = strcmp(x->sqlstate, y->sqlstate);
    return c ? c : strcmp(x->message, y->message);
}

void report_sort_errors(struct error_count *e, size_t n)
{
    qsort(e, n, sizeof *e, cmp_err);
}

double report_median(double *v, size_t n)
{
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (v[i] >= 0)
            v[k++] = v[i];
    if (!k)
        return -1;
    qsort(v, k, sizeof *v, cmp_double);
    return k % 2 ? v[k / 2] : (v[k / 2 - 1] + v[k / 2]) / 2;
}
