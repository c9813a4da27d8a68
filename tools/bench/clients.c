/* pgstay-bench: one thread per client inserting a row on a schedule and recording every attempt. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "bench.h"

int64_t bench_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

void bench_sleep_until(int64_t t_us)
{
    struct timespec ts = {.tv_sec = t_us / 1000000, .tv_nsec = (t_us % 1000000) * 1000};
    while (clock_nanosleep(CLOCK_REALTIME, TIMER_ABSTIME, &ts, NULL) == EINTR)
        ;
}

/* The first line only, without libpq's "connection to server at "H", port N failed: " and
 * the severity prefix, so one failure on different nodes groups as one error. */
static void set_message(struct sample *s, const char *msg)
{
    if (!msg)
        msg = "";
    if (!strncmp(msg, "connection to server", 20)) {
        const char *p = strstr(msg, " failed: ");
        if (p)
            msg = p + 9;
    }
    static const char *const prefixes[] = {"FATAL:  ", "ERROR:  ", "PANIC:  "};
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++)
        if (!strncmp(msg, prefixes[i], strlen(prefixes[i])))
            msg += strlen(prefixes[i]);
    size_t len = strcspn(msg, "\n");
    if (len >= sizeof s->message)
        len = sizeof s->message - 1;
    memcpy(s->message, msg, len);
    s->message[len] = '\0';
}

static void set_sqlstate(struct sample *s, const char *st)
{
    snprintf(s->sqlstate, sizeof s->sqlstate, "%s", st ? st : "");
}

/* Send the INSERT and wait for its end, at most timeout_ms. On a lost connection the
 * connection is closed and *connp set to NULL so the next attempt reconnects. */
static void do_insert(struct client *c, PGconn **connp, struct sample *s)
{
    PGconn *conn = *connp;
    char sql[256];
    /* a simple-protocol statement like the article's psql -c */
    snprintf(sql, sizeof sql,
             "INSERT INTO bench_events(client, seq, ts) VALUES (%d, %d, to_timestamp(%lld / "
             "1000000.0))",
             s->client, s->seq, (long long)s->start_us);
    int ok = 0, failed = 0;
    if (!PQsendQuery(conn, sql)) {
        s->outcome = OUTCOME_BROKEN;
        set_message(s, PQerrorMessage(conn));
        goto lost;
    }
    int64_t deadline = s->start_us + (int64_t)c->timeout_ms * 1000;
    for (;;) {
        while (!PQisBusy(conn)) {
            PGresult *r = PQgetResult(conn);
            if (!r)
                goto done;
            ExecStatusType st = PQresultStatus(r);
            if (st == PGRES_COMMAND_OK) {
                ok = 1;
            } else if (!failed) {
                failed = 1;
                set_sqlstate(s, PQresultErrorField(r, PG_DIAG_SQLSTATE));
                const char *prim = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
                set_message(s, prim ? prim : PQresultErrorMessage(r));
            }
            PQclear(r);
        }
        int64_t left = deadline - bench_now_us();
        if (left <= 0) {
            s->outcome = OUTCOME_BROKEN;
            set_sqlstate(s, "");
            snprintf(s->message, sizeof s->message,
                     "no answer within %d ms (the client gave up and closed its connection)",
                     c->timeout_ms);
            goto lost;
        }
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        if (pfd.fd < 0)
            break;
        int pr = poll(&pfd, 1, (int)(left / 1000) + 1);
        if (pr < 0 && errno != EINTR)
            break;
        if (pr > 0 && !PQconsumeInput(conn)) {
            if (!failed)
                set_message(s, PQerrorMessage(conn));
            failed = 1;
            break;
        }
    }
done:
    if (PQstatus(conn) == CONNECTION_BAD) {
        s->outcome = OUTCOME_BROKEN;
        if (!failed)
            set_message(s, PQerrorMessage(conn));
        goto lost;
    }
    s->outcome = (ok && !failed) ? OUTCOME_OK : OUTCOME_ERROR;
    if (s->outcome == OUTCOME_ERROR && !failed)
        snprintf(s->message, sizeof s->message, "no CommandComplete");
    return;
lost:
    PQfinish(conn);
    *connp = NULL;
}

static PGconn *connect_for(struct client *c, struct sample *s)
{
    PGconn *conn = PQconnectdb(c->conninfo);
    if (PQstatus(conn) != CONNECTION_OK) {
        if (s) {
            s->outcome = OUTCOME_CONNECT_FAILED;
            set_message(s, PQerrorMessage(conn));
        }
        PQfinish(conn);
        return NULL;
    }
    return conn;
}

void *client_main(void *arg)
{
    struct client *c = arg;
    PGconn *conn = NULL;
    /* the pooled application is connected before the experiment starts */
    if (!c->reconnecting)
        conn = connect_for(c, NULL);
    int64_t next = c->t0_us;
    for (int seq = 1; c->n < c->cap; seq++) {
        bench_sleep_until(next);
        int64_t now = bench_now_us();
        if (now >= c->end_us)
            break;
        struct sample *s = &c->samples[c->n++];
        memset(s, 0, sizeof *s);
        s->client = c->id;
        s->seq = seq;
        s->reconnecting = c->reconnecting;
        s->start_us = now;
        if (!conn)
            conn = connect_for(c, s);
        if (conn)
            do_insert(c, &conn, s);
        if (c->reconnecting && conn) {
            PQfinish(conn);
            conn = NULL;
        }
        s->end_us = bench_now_us();
        /* the next insert is due one interval later, or right away after a slow one (no
         * catch-up burst: an application waits for its previous statement) */
        next += (int64_t)c->interval_ms * 1000;
        if (next < s->end_us)
            next = s->end_us;
    }
    if (conn)
        PQfinish(conn);
    return NULL;
}
