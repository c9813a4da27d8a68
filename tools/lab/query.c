/* pgstay-lab: libpq helpers: connecting over the lab socket, probing node roles and LSNs. */
#include "lab.h"

#include <inttypes.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

PGconn *db_connect(const struct lab *lab, int i, char *err, size_t errsz)
{
    char port[16];
    snprintf(port, sizeof port, "%d", node_port(lab, i));
    /* the unix socket is trusted in pg_hba, so the lab never needs a password */
    const char *kw[] = {"host", "port", "dbname", "user", "connect_timeout", "application_name",
                        NULL};
    const char *val[] = {lab->run, port, "postgres", "postgres", "2", "pgstay-lab", NULL};
    PGconn *c = PQconnectdbParams(kw, val, 0);
    if (PQstatus(c) != CONNECTION_OK) {
        if (err) {
            snprintf(err, errsz, "%s", PQerrorMessage(c));
            size_t l = strlen(err);
            while (l && err[l - 1] == '\n')
                err[--l] = 0;
        }
        PQfinish(c);
        return NULL;
    }
    return c;
}

static void trim_err(char *err)
{
    size_t l = strlen(err);
    while (l && (err[l - 1] == '\n' || err[l - 1] == ' '))
        err[--l] = 0;
}

/*
 * Run a statement; timeout_ms > 0 cancels it after that long (returns -2).
 * Async so a commit stuck waiting for a synchronous standby cannot hang us.
 */
int db_exec(PGconn *c, const char *sql, int timeout_ms, char *err, size_t errsz)
{
    if (err && errsz)
        err[0] = 0;
    if (!PQsendQuery(c, sql)) {
        if (err)
            snprintf(err, errsz, "%s", PQerrorMessage(c));
        return -1;
    }
    int64_t deadline = timeout_ms > 0 ? now_ms() + timeout_ms : 0;
    int rc = 0;
    bool cancelled = false;
    for (;;) {
        if (!PQconsumeInput(c)) {
            if (err)
                snprintf(err, errsz, "%s", PQerrorMessage(c));
            return -1;
        }
        if (!PQisBusy(c))
            break;
        int wait = 100;
        if (deadline && !cancelled) {
            int64_t left = deadline - now_ms();
            if (left <= 0) {
                PGcancel *cn = PQgetCancel(c);
                char eb[256];
                if (cn) {
                    PQcancel(cn, eb, sizeof eb);
                    PQfreeCancel(cn);
                }
                cancelled = true;
                continue;
            }
            if (left < wait)
                wait = (int)left;
        }
        struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};
        poll(&pfd, 1, wait);
    }
    PGresult *r;
    while ((r = PQgetResult(c))) {
        ExecStatusType st = PQresultStatus(r);
        if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK && st != PGRES_EMPTY_QUERY) {
            if (err && !err[0])
                snprintf(err, errsz, "%s", PQresultErrorMessage(r));
            rc = -1;
        }
        PQclear(r);
    }
    if (err)
        trim_err(err);
    if (cancelled) {
        if (err)
            snprintf(err, errsz, "timed out after %d ms", timeout_ms);
        return -2;
    }
    return rc;
}

/* First column of the first row; "" for NULL. */
int db_value(PGconn *c, const char *sql, char *out, size_t outsz, char *err, size_t errsz)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
        if (err) {
            snprintf(err, errsz, "%s", PQresultStatus(r) == PGRES_TUPLES_OK ? "no rows"
                                                                             : PQerrorMessage(c));
            trim_err(err);
        }
        PQclear(r);
        return -1;
    }
    snprintf(out, outsz, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
    PQclear(r);
    return 0;
}

bool parse_lsn(const char *s, uint64_t *out)
{
    unsigned hi, lo;
    if (!s || sscanf(s, "%X/%X", &hi, &lo) != 2)
        return false;
    *out = ((uint64_t)hi << 32) | lo;
    return true;
}

void format_lsn(uint64_t lsn, char *buf, size_t sz)
{
    snprintf(buf, sz, "%X/%X", (unsigned)(lsn >> 32), (unsigned)lsn);
}

static int conninfo_port(const char *ci)
{
    const char *p = strstr(ci, "port=");
    return p ? atoi(p + 5) : 0;
}

void probe(const struct lab *lab, int i, struct node_state *st)
{
    memset(st, 0, sizeof *st);
    st->pid = node_pid(lab, i);
    st->running = st->pid > 0;
    st->frozen = st->running && proc_state(st->pid) == 'T';
    st->role = ROLE_DOWN;
    if (!st->running || st->frozen)
        return; /* connecting to a frozen node would just hang until the timeout */
    PGconn *c = db_connect(lab, i, NULL, 0);
    if (!c)
        return;
    /* pg_walfile_name() fails during recovery; CASE keeps it to primaries */
    PGresult *r = PQexec(
        c, "SELECT pg_is_in_recovery(),"
           " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn()"
           "      ELSE pg_current_wal_lsn() END,"
           " CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() END,"
           " CASE WHEN pg_is_in_recovery() THEN coalesce("
           "        (SELECT received_tli FROM pg_stat_wal_receiver),"
           "        (SELECT timeline_id FROM pg_control_checkpoint()))"
           "      ELSE ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))"
           "           ::bit(32)::int END,"
           " current_setting('primary_conninfo')");
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1) {
        bool rec = strcmp(PQgetvalue(r, 0, 0), "t") == 0;
        st->role = rec ? ROLE_STANDBY : ROLE_PRIMARY;
        st->has_lsn = parse_lsn(PQgetvalue(r, 0, 1), &st->lsn);
        if (!parse_lsn(PQgetvalue(r, 0, 2), &st->recv_lsn))
            st->recv_lsn = st->lsn;
        st->tli = (unsigned)strtoul(PQgetvalue(r, 0, 3), NULL, 10);
        if (rec)
            st->upstream_port = conninfo_port(PQgetvalue(r, 0, 4));
    }
    PQclear(r);
    PQfinish(c);
}

void probe_all(const struct lab *lab, struct node_state *st)
{
    for (int i = 1; i <= lab->nodes; i++)
        probe(lab, i, &st[i]);
}

int find_primary(const struct lab *lab, const struct node_state *st, int exclude)
{
    for (int i = 1; i <= lab->nodes; i++)
        if (i != exclude && st[i].role == ROLE_PRIMARY)
            return i;
    return 0;
}

/*
 * Sync mode: commits on the primary wait for ANY 1 of the running standbys;
 * with none left it must be '' or every commit would hang.
 */
int update_sync_names(const struct lab *lab, int primary, const struct node_state *st)
{
    char val[256] = "", list[200] = "";
    size_t n = 0;
    if (lab->sync) {
        for (int j = 1; j <= lab->nodes; j++) {
            if (j == primary || !st[j].running || st[j].role != ROLE_STANDBY)
                continue;
            n += (size_t)snprintf(list + n, sizeof list - n, "%sn%d", n ? "," : "", j);
        }
        if (n)
            snprintf(val, sizeof val, "ANY 1 (%s)", list);
    }
    char err[512], cur[256] = "";
    PGconn *c = db_connect(lab, primary, err, sizeof err);
    if (!c) {
        fprintf(stderr, "n%d: cannot connect: %s\n", primary, err);
        return -1;
    }
    db_value(c, "SELECT current_setting('synchronous_standby_names')", cur, sizeof cur, NULL, 0);
    int rc = 0;
    if (strcmp(cur, val) != 0) {
        if (conf_set(lab, primary, "synchronous_standby_names", val) < 0 ||
            db_exec(c, "SELECT pg_reload_conf()", 0, err, sizeof err) < 0) {
            fprintf(stderr, "n%d: cannot set synchronous_standby_names: %s\n", primary, err);
            rc = -1;
        } else {
            printf("n%d: synchronous_standby_names = '%s'\n", primary, val);
        }
    }
    PQfinish(c);
    return rc;
}

/* Wait until node i shows up as streaming in the primary's pg_stat_replication. */
int wait_streaming(const struct lab *lab, int primary, int i, int timeout_ms)
{
    char err[512], sql[256], v[16];
    PGconn *c = db_connect(lab, primary, err, sizeof err);
    if (!c)
        return -1;
    snprintf(sql, sizeof sql,
             "SELECT count(*) FROM pg_stat_replication"
             " WHERE application_name = 'n%d' AND state = 'streaming'",
             i);
    int64_t t0 = now_ms();
    int rc = -1;
    while (now_ms() - t0 < timeout_ms) {
        if (db_value(c, sql, v, sizeof v, err, sizeof err) == 0 && atoi(v) > 0) {
            rc = 0;
            break;
        }
        sleep_ms(LAB_POLL_MS);
    }
    PQfinish(c);
    return rc;
}
