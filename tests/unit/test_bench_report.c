/* Unit tests for pgstay-bench's report arithmetic (gaps, windows, losses, medians) on recorded samples. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

/* The unit-test rule links only src/ objects, and report.c needs no libpq, so take it whole. */
#include "../../tools/bench/report.c"

#define MS 1000LL
#define T0 1795644602700000LL /* a recorded run's t0, unix µs */

static struct sample mk(int client, int reconnecting, int seq, double start_ms, double end_ms,
                        enum outcome o, const char *st, const char *msg, int present)
{
    struct sample s;
    memset(&s, 0, sizeof s);
    s.client = client;
    s.reconnecting = reconnecting;
    s.seq = seq;
    s.start_us = T0 + (int64_t)(start_ms * MS + 0.5); /* rounded: 1525.4 is inexact */
    s.end_us = T0 + (int64_t)(end_ms * MS + 0.5);
    s.outcome = o;
    snprintf(s.sqlstate, sizeof s.sqlstate, "%s", st);
    snprintf(s.message, sizeof s.message, "%s", msg);
    s.present = present;
    return s;
}

static const char *LOST_MSG = "the server connection was lost while the statement was running "
                              "(the writer was lost): it may or may not have run";

/* Recorded from `pgstay-bench failover --clients 2 --delay 300 --target pgstay-session`: the
 * crash at 1550 ms, promotion at 1900 ms; two in-flight inserts failed, the rest were held. */
static size_t recorded_pgstay(struct sample *s)
{
    size_t n = 0;
    s[n++] = mk(1, 0, 153, 1520.1, 1521.0, OUTCOME_OK, "", "", 1);
    s[n++] = mk(2, 0, 153, 1524.4, 1525.4, OUTCOME_OK, "", "", 1);
    s[n++] = mk(3, 1, 152, 1518.9, 1522.0, OUTCOME_OK, "", "", 1);
    s[n++] = mk(1, 0, 154, 1530.750, 1531.106, OUTCOME_ERROR, "08006", LOST_MSG, 0);
    s[n++] = mk(3, 1, 153, 1528.926, 1531.038, OUTCOME_ERROR, "08006", LOST_MSG, 0);
    s[n++] = mk(2, 0, 154, 1534.382, 1919.997, OUTCOME_OK, "", "", 1);
    s[n++] = mk(3, 1, 154, 1536.809, 1924.552, OUTCOME_OK, "", "", 1);
    s[n++] = mk(1, 0, 155, 1540.093, 1927.419, OUTCOME_OK, "", "", 1);
    s[n++] = mk(2, 0, 155, 1930.0, 1931.0, OUTCOME_OK, "", "", 1);
    return n;
}

/* Recorded from the direct (libpq multi-host) target of the same run: the pooled client's
 * connection broke, then connects were refused; one insert ran although the client saw an error. */
static size_t recorded_direct(struct sample *s)
{
    size_t n = 0;
    s[n++] = mk(1, 0, 155, 1540.0, 1541.0, OUTCOME_OK, "", "", 1);
    s[n++] = mk(1, 0, 156, 1550.147, 1567.175, OUTCOME_BROKEN, "",
                "server closed the connection unexpectedly", 1);
    s[n++] = mk(1, 0, 157, 1567.265, 1572.839, OUTCOME_CONNECT_FAILED, "",
                "server closed the connection unexpectedly", 0);
    s[n++] = mk(1, 0, 158, 1577.311, 1614.916, OUTCOME_CONNECT_FAILED, "", "Connection refused", 0);
    s[n++] = mk(2, 0, 160, 1555.0, 1556.0, OUTCOME_BROKEN, "", "server closed the connection "
                "unexpectedly", 0);
    s[n++] = mk(3, 1, 150, 1560.0, 1600.0, OUTCOME_BROKEN, "", "server closed the connection "
                "unexpectedly", 0);
    s[n++] = mk(3, 1, 151, 1610.0, 2180.0, OUTCOME_CONNECT_FAILED, "", "Connection refused", 0);
    s[n++] = mk(1, 0, 159, 2200.0, 2209.0, OUTCOME_OK, "", "", 1);
    /* acknowledged, yet missing: must count as lost */
    s[n++] = mk(2, 0, 161, 2205.0, 2210.0, OUTCOME_OK, "", "", 0);
    return n;
}

/* The excerpts cover 1500..2300 ms of the 4 s runs. */
static struct phases phases(void)
{
    struct phases ph = {.t0_us = T0 + 1500 * MS,
                        .end_us = T0 + 2300 * MS,
                        .event_start_us = T0 + 1500 * MS,
                        .event_end_us = T0 + 1951 * MS,
                        .crash_us = T0 + 1550 * MS,
                        .promoted_us = T0 + 1900 * MS,
                        .writable_us = T0 + 1949 * MS};
    return ph;
}

static void test_gap_between_acks(void **state)
{
    struct sample s[5];
    s[0] = mk(1, 0, 1, 0, 10, OUTCOME_OK, "", "", 1);
    s[1] = mk(2, 0, 1, 5, 20, OUTCOME_OK, "", "", 1);
    s[2] = mk(1, 0, 2, 25, 30, OUTCOME_OK, "", "", 1);
    s[3] = mk(2, 0, 2, 21, 500, OUTCOME_OK, "", "", 1); /* held, acknowledged late */
    s[4] = mk(1, 0, 3, 31, 40, OUTCOME_ERROR, "25006", "read-only", 0); /* errors are no ack */
    int64_t from, to;
    int64_t gap = report_write_gap(s, 5, T0, T0 + 510 * MS, &from, &to);
    assert_int_equal(gap, 470 * MS);
    assert_int_equal(from, T0 + 30 * MS);
    assert_int_equal(to, T0 + 500 * MS);
}

static void test_gap_never_recovers(void **state)
{
    struct sample s[2];
    s[0] = mk(1, 0, 1, 0, 10, OUTCOME_OK, "", "", 1);
    s[1] = mk(1, 0, 2, 10, 900, OUTCOME_BROKEN, "", "x", 0);
    /* the end of the run is an edge: an outage until the end still counts */
    assert_int_equal(report_write_gap(s, 2, T0, T0 + 1000 * MS, NULL, NULL), 990 * MS);
    /* no acknowledgement at all: the whole run */
    assert_int_equal(report_write_gap(s + 1, 1, T0, T0 + 1000 * MS, NULL, NULL), 1000 * MS);
    assert_int_equal(report_write_gap(NULL, 0, T0, T0 + 7 * MS, NULL, NULL), 7 * MS);
}

static void test_recorded_pgstay(void **state)
{
    struct sample s[16];
    size_t n = recorded_pgstay(s);
    struct phases ph = phases();
    struct metrics m;
    report_compute(s, n, &ph, &m);
    assert_int_equal(m.attempts, 9);
    assert_int_equal(m.acked, 7);
    assert_int_equal(m.errors, 2);
    assert_int_equal(m.broken_persistent, 0);
    assert_int_equal(m.broken_reconnecting, 0);
    assert_int_equal(m.lost, 0);
    assert_int_equal(m.ran_despite_error, 0);
    /* last ack before the hold 1525.4, first after it 1919.997 */
    assert_true(m.write_gap_ms > 394.5 && m.write_gap_ms < 394.7);
    assert_int_equal(m.gap_from_us, T0 + 1525400);
    /* two errors 0.068 ms apart */
    assert_true(m.error_window_ms > 0.06 && m.error_window_ms < 0.08);
    assert_true(m.promote_to_ack_ms > 19.9 && m.promote_to_ack_ms < 20.1);
    assert_true(m.max_latency_ms > 387.7 && m.max_latency_ms < 387.8); /* client 3, seq 154 */
}

static void test_recorded_direct(void **state)
{
    struct sample s[16];
    size_t n = recorded_direct(s);
    struct phases ph = phases();
    struct metrics m;
    report_compute(s, n, &ph, &m);
    assert_int_equal(m.attempts, 9);
    assert_int_equal(m.acked, 3);
    assert_int_equal(m.errors, 6);
    assert_int_equal(m.broken_persistent, 2);
    assert_int_equal(m.broken_reconnecting, 1);
    assert_int_equal(m.connect_failed, 3);
    assert_int_equal(m.lost, 1);
    assert_int_equal(m.ran_despite_error, 1);
    assert_int_equal(m.err_first_us, T0 + 1556 * MS);
    assert_int_equal(m.err_last_us, T0 + 2180 * MS);
    assert_true(m.error_window_ms > 623.9 && m.error_window_ms < 624.1);
    assert_true(m.write_gap_ms > 667.9 && m.write_gap_ms < 668.1); /* 1541 -> 2209 */
    assert_true(m.promote_to_ack_ms > 308.9 && m.promote_to_ack_ms < 309.1);
}

static void test_no_promotion_no_errors(void **state)
{
    struct sample s[2];
    s[0] = mk(1, 0, 1, 0, 1, OUTCOME_OK, "", "", 1);
    s[1] = mk(1, 0, 2, 10, 11, OUTCOME_OK, "", "", 1);
    struct phases ph = {.t0_us = T0, .end_us = T0 + 20 * MS};
    struct metrics m;
    report_compute(s, 2, &ph, &m);
    assert_true(m.promote_to_ack_ms < 0); /* not applicable */
    assert_true(m.error_window_ms == 0);
    assert_int_equal(m.errors, 0);
}

static void test_mark_present(void **state)
{
    struct sample s[16];
    size_t n = recorded_direct(s);
    /* the table as read back: unsorted, with a row from a client we did not record */
    int rows[] = {2, 161, 1, 159, 9, 9, 1, 156, 1, 155};
    report_mark_present(s, n, rows, 5);
    for (size_t i = 0; i < n; i++) {
        int want = (s[i].client == 1 && (s[i].seq == 155 || s[i].seq == 156 || s[i].seq == 159)) ||
                   (s[i].client == 2 && s[i].seq == 161);
        assert_int_equal(s[i].present, want);
    }
    report_mark_present(s, n, rows, 0);
    for (size_t i = 0; i < n; i++)
        assert_int_equal(s[i].present, 0);
}

static void test_error_groups(void **state)
{
    struct sample s[16];
    size_t n = recorded_direct(s);
    struct error_count e[8];
    size_t used = report_count_errors(s, n, e, 0, 8);
    assert_int_equal(used, 2);
    /* a second run adds to the same groups */
    used = report_count_errors(s, n, e, used, 8);
    report_sort_errors(e, used);
    assert_string_equal(e[0].message, "server closed the connection unexpectedly");
    assert_int_equal(e[0].count, 8);
    assert_string_equal(e[1].message, "Connection refused");
    assert_int_equal(e[1].count, 4);
    /* a full table drops new kinds but still counts known ones */
    used = report_count_errors(s, n, e, 1, 1);
    assert_int_equal(used, 1);
    assert_int_equal(e[0].count, 12);
}

static void test_median(void **state)
{
    double a[] = {5, 1, 3};
    assert_true(report_median(a, 3) == 3);
    double b[] = {4, 1, 3, 2};
    assert_true(report_median(b, 4) == 2.5);
    double c[] = {-1, 7, -1};
    assert_true(report_median(c, 3) == 7); /* runs where it had no meaning are skipped */
    double d[] = {-1, -1};
    assert_true(report_median(d, 2) < 0);
    assert_true(report_median(NULL, 0) < 0);
}

static void test_outcome_names(void **state)
{
    assert_string_equal(report_outcome_name(OUTCOME_OK), "ok");
    assert_string_equal(report_outcome_name(OUTCOME_BROKEN), "connection broken");
    assert_string_equal(report_outcome_name(OUTCOME_CONNECT_FAILED), "connect failed");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_gap_between_acks),   cmocka_unit_test(test_gap_never_recovers),
        cmocka_unit_test(test_recorded_pgstay),    cmocka_unit_test(test_recorded_direct),
        cmocka_unit_test(test_no_promotion_no_errors), cmocka_unit_test(test_mark_present),
        cmocka_unit_test(test_error_groups),       cmocka_unit_test(test_median),
        cmocka_unit_test(test_outcome_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
