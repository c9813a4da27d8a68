/* pgstay-bench failover: clients insert through a target while pgstay-lab fails the primary over. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "bench.h"

#define NODES 3
#define MAX_LINES 64

/* The pgstay we started, so a signal can stop it before we die. */
static volatile pid_t g_pgstay_pid;

static void on_signal(int sig)
{
    if (g_pgstay_pid > 0)
        kill(g_pgstay_pid, SIGINT);
    signal(sig, SIG_DFL);
    raise(sig);
}

static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pgstay-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    if (g_pgstay_pid > 0)
        kill(g_pgstay_pid, SIGINT);
    exit(1);
}

static void progress(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("pgstay-bench: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

/* ---- running the lab ---------------------------------------------------------------- */

struct stamped {
    int64_t t_us;
    char text[240];
};

struct cmd_out {
    struct stamped lines[MAX_LINES];
    int n;
    int status;
};

/* Run argv with stdout+stderr on a pipe, stamping each line when it arrives: the lab's
 * "promoted"/"writable" lines then tell when those phases happened. The lab runs under
 * stdbuf -oL so its lines are not held in a stdio buffer until it exits. */
static int run_cmd(char *const argv[], struct cmd_out *o)
{
    int fds[2];
    memset(o, 0, sizeof *o);
    if (pipe(fds) < 0)
        return -1;
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        dup2(fds[1], 1);
        dup2(fds[1], 2);
        close(fds[0]);
        close(fds[1]);
        execv(argv[0], argv);
        fprintf(stderr, "cannot run %s: %s\n", argv[0], strerror(errno));
        _exit(127);
    }
    close(fds[1]);
    FILE *f = fdopen(fds[0], "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f)) {
        line[strcspn(line, "\n")] = '\0';
        if (o->n < MAX_LINES) {
            o->lines[o->n].t_us = bench_now_us();
            snprintf(o->lines[o->n].text, sizeof o->lines[o->n].text, "%s", line);
            o->n++;
        }
    }
    if (f)
        fclose(f);
    int st;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR)
        ;
    o->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    return o->status;
}

static int lab(const struct bench *b, struct cmd_out *o, ...)
{
    char *argv[24];
    int k = 0;
    if (access("/usr/bin/stdbuf", X_OK) == 0) {
        argv[k++] = "/usr/bin/stdbuf";
        argv[k++] = "-oL";
    }
    argv[k++] = (char *)b->lab_bin;
    argv[k++] = "--dir";
    argv[k++] = (char *)b->lab_dir;
    va_list ap;
    va_start(ap, o);
    char *a;
    while ((a = va_arg(ap, char *)) && k < 23)
        argv[k++] = a;
    va_end(ap);
    argv[k] = NULL;
    return run_cmd(argv, o);
}

static void print_cmd_out(const struct cmd_out *o)
{
    for (int i = 0; i < o->n; i++)
        fprintf(stderr, "    %s\n", o->lines[i].text);
}

static int node_port(const struct bench *b, int i)
{
    return b->port + i;
}

static void lab_reinit(struct bench *b)
{
    struct cmd_out o;
    char conf[1100];
    snprintf(conf, sizeof conf, "%s/lab.conf", b->lab_dir);
    if (access(conf, F_OK) == 0 && lab(b, &o, "destroy", NULL) != 0) {
        print_cmd_out(&o);
        die("pgstay-lab destroy failed");
    }
    char port[16];
    snprintf(port, sizeof port, "%d", b->port);
    /* --async: no synchronous standby, so a commit on the new primary waits for nobody and
     * promotion -> first acknowledged insert shows the proxy's own share alone. */
    if (lab(b, &o, "init", "--nodes", "3", "--port", port, b->async ? "--fast" : "--sync",
            "--fast", NULL) != 0) {
        print_cmd_out(&o);
        die("pgstay-lab init failed");
    }
}

/* ---- libpq helpers -------------------------------------------------------------------- */

static void direct_conninfo(const struct bench *b, const char *user, const char *db, char *buf,
                            size_t cap)
{
    snprintf(buf, cap,
             "host=127.0.0.1,127.0.0.1,127.0.0.1 port=%d,%d,%d dbname=%s user=%s "
             "password=%s target_session_attrs=read-write connect_timeout=2",
             node_port(b, 1), node_port(b, 2), node_port(b, 3), db, user, user);
}

static PGconn *connect_node(const struct bench *b, int i)
{
    char ci[256];
    snprintf(ci, sizeof ci,
             "host=127.0.0.1 port=%d dbname=postgres user=postgres password=postgres "
             "connect_timeout=2",
             node_port(b, i));
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Which node is the primary (1..NODES), 0 if none answers as one. */
static int find_primary(const struct bench *b)
{
    for (int i = 1; i <= NODES; i++) {
        PGconn *c = connect_node(b, i);
        if (!c)
            continue;
        PGresult *r = PQexec(c, "SELECT pg_is_in_recovery()");
        int prim = PQresultStatus(r) == PGRES_TUPLES_OK && !strcmp(PQgetvalue(r, 0, 0), "f");
        PQclear(r);
        PQfinish(c);
        if (prim)
            return i;
    }
    return 0;
}

/* The standby that flushed the most WAL (what pgstay-lab failover would pick). */
static int most_advanced_standby(const struct bench *b, int skip)
{
    int best = 0;
    double best_lsn = -1;
    for (int i = 1; i <= NODES; i++) {
        if (i == skip)
            continue;
        PGconn *c = connect_node(b, i);
        if (!c)
            continue;
        PGresult *r = PQexec(c, "SELECT pg_is_in_recovery(), pg_wal_lsn_diff(greatest("
                                "pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()), '0/0')");
        if (PQresultStatus(r) == PGRES_TUPLES_OK && !strcmp(PQgetvalue(r, 0, 0), "t")) {
            double lsn = atof(PQgetvalue(r, 0, 1));
            if (lsn > best_lsn) {
                best_lsn = lsn;
                best = i;
            }
        }
        PQclear(r);
        PQfinish(c);
    }
    return best;
}

static void exec_or_die(PGconn *c, const char *sql)
{
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK)
        die("%s: %s", sql, PQerrorMessage(c));
    PQclear(r);
}

static void prepare_table(const struct bench *b)
{
    char ci[512];
    direct_conninfo(b, "app", "app", ci, sizeof ci);
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK)
        die("cannot connect to the primary: %s", PQerrorMessage(c));
    exec_or_die(c, "SET client_min_messages = warning"); /* no NOTICE on a fresh cluster */
    exec_or_die(c, "DROP TABLE IF EXISTS bench_events");
    exec_or_die(c, "CREATE TABLE bench_events(client int, seq int, ts timestamptz, "
                   "primary key(client, seq))");
    PQfinish(c);
}

/* ---- pgstay --------------------------------------------------------------------------- */

static void admin_conninfo(const struct bench *b, char *buf, size_t cap)
{
    snprintf(buf, cap,
             "host=127.0.0.1 port=%d dbname=pgstay user=postgres password=postgres "
             "connect_timeout=2",
             b->port);
}

static void log_tail(const char *path, char *out, size_t cap)
{
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f)
        return;
    char buf[8192];
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    buf[n] = '\0';
    fclose(f);
    const char *p = buf;
    if (n + 1 > cap)
        p = buf + n - (cap - 1);
    snprintf(out, cap, "%s", p);
}

/* Write the config, start pgstay and wait until it has found the writer; 0 on success,
 * else -1 with the reason (its log) in why. */
static int start_pgstay(struct bench *b, const char *mode_arg, const char *work, char *why, size_t cap)
{
    /* A copy: mode_arg and why may both live in the same target struct. */
    char mode[32];
    snprintf(mode, sizeof mode, "%s", mode_arg);
    char path[1200], users[1200], logp[1200];
    snprintf(path, sizeof path, "%s/pgstay.ini", work);
    snprintf(users, sizeof users, "%s/userlist.txt", work);
    snprintf(logp, sizeof logp, "%s/pgstay.log", work);
    FILE *f = fopen(users, "w");
    if (!f)
        die("cannot write %s: %s", users, strerror(errno));
    fputs("\"postgres\" \"postgres\"\n\"app\" \"app\"\n", f);
    fclose(f);
    f = fopen(path, "w");
    if (!f)
        die("cannot write %s: %s", path, strerror(errno));
    fprintf(f,
            "; written by pgstay-bench for one run\n[pgstay]\nlisten_addr = 127.0.0.1\n"
            "listen_port = %d\nreadonly_port = %d\npool_mode = %s\npool_size = %d\n"
            "auth_type = trust\nauth_file = userlist.txt\nadmin_users = postgres\n"
            "health_check_user = postgres\nhealth_check_dbname = postgres\n"
            "shutdown_timeout = 5s\n[nodes]\n",
            b->port, b->port + 10, mode, b->pool_size);
    /* More [pgstay] settings for an investigation, e.g. PGSTAY_BENCH_SETTINGS="verbose = 2"
     * (newline-separated): the run's pgstay.log then has each step, to the microsecond. */
    const char *extra = getenv("PGSTAY_BENCH_SETTINGS");
    if (extra && *extra)
        fprintf(f, "[pgstay]\n%s\n[nodes]\n", extra);
    for (int i = 1; i <= NODES; i++)
        fprintf(f, "n%d = host=127.0.0.1 port=%d\n", i, node_port(b, i));
    fclose(f);

    pid_t pid = fork();
    if (pid < 0)
        die("fork: %s", strerror(errno));
    if (pid == 0) {
        int fd = open(logp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
            close(fd);
        }
        execl(b->pgstay_bin, b->pgstay_bin, path, (char *)NULL);
        fprintf(stderr, "cannot run %s: %s\n", b->pgstay_bin, strerror(errno));
        _exit(127);
    }
    g_pgstay_pid = pid;
    /* so a wrapper (tools/demo.py) can stop it even if we are killed with SIGKILL */
    char pidp[1200];
    snprintf(pidp, sizeof pidp, "%s/pgstay.pid", work);
    f = fopen(pidp, "w");
    if (f) {
        fprintf(f, "%d\n", (int)pid);
        fclose(f);
    }
    char ci[256];
    admin_conninfo(b, ci, sizeof ci);
    int64_t deadline = bench_now_us() + 15 * 1000000LL;
    while (bench_now_us() < deadline) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            g_pgstay_pid = 0;
            char tail[400];
            log_tail(logp, tail, sizeof tail);
            snprintf(why, cap, "pgstay (pool_mode = %s) exited at start: %s", mode, tail);
            return -1;
        }
        PGconn *c = PQconnectdb(ci);
        if (PQstatus(c) == CONNECTION_OK) {
            PGresult *r = PQexec(c, "SHOW NODES");
            int col = PQfnumber(r, "writer");
            int ready = 0;
            if (PQresultStatus(r) == PGRES_TUPLES_OK && col >= 0)
                for (int i = 0; i < PQntuples(r); i++)
                    ready |= !strcmp(PQgetvalue(r, i, col), "yes");
            PQclear(r);
            if (ready) {
                PQfinish(c);
                return 0;
            }
        }
        PQfinish(c);
        usleep(50 * 1000);
    }
    snprintf(why, cap, "pgstay (pool_mode = %s) found no writer within 15 s", mode);
    return -1;
}

static void stop_pgstay(void)
{
    pid_t pid = g_pgstay_pid;
    if (pid <= 0)
        return;
    kill(pid, SIGINT);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, NULL, WNOHANG) == pid) {
            g_pgstay_pid = 0;
            return;
        }
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    g_pgstay_pid = 0;
}

/* Append s to a JSON string literal in buf (which holds at most cap bytes). */
static void json_cat(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    for (; *s && n + 8 < cap; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            buf[n++] = '\\';
            buf[n++] = (char)ch;
        } else if (ch < 0x20) {
            n += (size_t)snprintf(buf + n, cap - n, "\\u%04x", ch);
        } else {
            buf[n++] = (char)ch;
        }
    }
    buf[n] = '\0';
}

static void cat(char *buf, size_t cap, const char *s)
{
    size_t n = strlen(buf);
    snprintf(buf + n, cap - n, "%s", s);
}

/* pgstay's own account of the failover (SHOW FAILOVERS) as a JSON array of objects. */
static void show_failovers(const struct bench *b, char *out, size_t cap)
{
    char ci[256];
    admin_conninfo(b, ci, sizeof ci);
    snprintf(out, cap, "[]");
    PGconn *c = PQconnectdb(ci);
    if (PQstatus(c) != CONNECTION_OK) {
        PQfinish(c);
        return;
    }
    PGresult *r = PQexec(c, "SHOW FAILOVERS");
    if (PQresultStatus(r) == PGRES_TUPLES_OK) {
        out[0] = '\0';
        cat(out, cap, "[");
        for (int i = 0; i < PQntuples(r); i++) {
            cat(out, cap, i ? ",{" : "{");
            for (int j = 0; j < PQnfields(r); j++) {
                cat(out, cap, j ? ",\"" : "\"");
                json_cat(out, cap, PQfname(r, j));
                cat(out, cap, "\":\"");
                json_cat(out, cap, PQgetvalue(r, i, j));
                cat(out, cap, "\"");
            }
            cat(out, cap, "}");
        }
        cat(out, cap, "]");
        if (strlen(out) + 2 >= cap) /* truncated: better nothing than broken JSON */
            snprintf(out, cap, "[]");
    }
    PQclear(r);
    PQfinish(c);
}

/* ---- the event ------------------------------------------------------------------------ */

struct event_ctx {
    struct bench *b;
    struct run *r;
    int64_t at_us;
    int proxy; /* the target is pgstay: switchover pauses it */
    int rc;
};

static void log_lines(struct run *r, const struct cmd_out *o)
{
    for (int i = 0; i < o->n; i++) {
        char line[320];
        snprintf(line, sizeof line, "[%+.1f ms] %s\n",
                 (double)(o->lines[i].t_us - r->ph.t0_us) / 1000.0, o->lines[i].text);
        cat(r->event_log, sizeof r->event_log, line);
    }
}

/* Phases from the lab's stamped lines; its own timings line (failover, switchover, promote)
 * wins when present: it was printed later than the instants it gives. */
static void parse_phases(struct run *r, const struct cmd_out *o)
{
    for (int i = 0; i < o->n; i++) {
        const char *t = o->lines[i].text;
        long long cr, pr, wr;
        int np;
        if (sscanf(t, "failover: crashed=%lld promoted=%lld writable=%lld new_primary=n%d", &cr,
                   &pr, &wr, &np) == 4) {
            r->ph.crash_us = cr * 1000;
            r->ph.promoted_us = pr * 1000;
            r->ph.writable_us = wr * 1000;
            snprintf(r->new_primary, sizeof r->new_primary, "n%d", np);
            continue;
        }
        long long st;
        if (sscanf(t, "switchover: started=%lld promoted=%lld writable=%lld new_primary=n%d", &st,
                   &pr, &wr, &np) == 4 ||
            sscanf(t, "promote: promoted=%lld writable=%lld new_primary=n%d", &pr, &wr, &np) == 3) {
            r->ph.promoted_us = pr * 1000;
            r->ph.writable_us = wr * 1000;
            snprintf(r->new_primary, sizeof r->new_primary, "n%d", np);
            continue;
        }
        int a, z;
        if (sscanf(t, "switchover: n%d -> n%d", &a, &z) == 2)
            snprintf(r->new_primary, sizeof r->new_primary, "n%d", z);
        if (strstr(t, ": promoted (") && !r->ph.promoted_us)
            r->ph.promoted_us = o->lines[i].t_us;
        if (strstr(t, ": writable ") && !r->ph.writable_us)
            r->ph.writable_us = o->lines[i].t_us;
    }
}

static void *event_main(void *arg)
{
    struct event_ctx *e = arg;
    struct bench *b = e->b;
    struct run *r = e->r;
    struct cmd_out o;
    char delay[16];
    snprintf(delay, sizeof delay, "%d", b->delay_ms);
    bench_sleep_until(e->at_us);
    r->ph.event_start_us = bench_now_us();
    if (!strcmp(b->event, "crash")) {
        e->rc = lab(b, &o, "failover", "--delay", delay, NULL);
        log_lines(r, &o);
        parse_phases(r, &o);
    } else if (!strcmp(b->event, "switchover")) {
        char proxy[256];
        admin_conninfo(b, proxy, sizeof proxy);
        r->ph.crash_us = r->ph.event_start_us;
        if (e->proxy)
            e->rc = lab(b, &o, "switchover", "--proxy", proxy, NULL);
        else
            e->rc = lab(b, &o, "switchover", NULL);
        log_lines(r, &o);
        parse_phases(r, &o);
    } else if (!strcmp(b->event, "freeze")) {
        int p = find_primary(b);
        char pn[8];
        snprintf(pn, sizeof pn, "n%d", p ? p : 1);
        e->rc = lab(b, &o, "freeze", pn, NULL);
        r->ph.crash_us = bench_now_us();
        log_lines(r, &o);
        if (e->rc == 0) {
            bench_sleep_until(r->ph.crash_us + (int64_t)b->delay_ms * 1000);
            int s = most_advanced_standby(b, p ? p : 1);
            snprintf(pn, sizeof pn, "n%d", s);
            if (!s) {
                e->rc = 1;
                cat(r->event_log, sizeof r->event_log, "no standby to promote\n");
            } else {
                e->rc = lab(b, &o, "promote", pn, NULL);
                log_lines(r, &o);
                parse_phases(r, &o);
                snprintf(r->new_primary, sizeof r->new_primary, "%s", pn);
            }
        }
    }
    r->ph.event_end_us = bench_now_us();
    return NULL;
}

/* ---- one run -------------------------------------------------------------------------- */

/* Read back which rows landed, from the new primary itself. */
static void read_rows(struct bench *b, struct run *r)
{
    char ci[512];
    int np = 0;
    if (sscanf(r->new_primary, "n%d", &np) == 1 && np >= 1 && np <= NODES)
        snprintf(ci, sizeof ci,
                 "host=127.0.0.1 port=%d dbname=app user=app password=app connect_timeout=2 "
                 "target_session_attrs=read-write",
                 node_port(b, np));
    else
        direct_conninfo(b, "app", "app", ci, sizeof ci);
    PGconn *c = NULL;
    /* the new primary may still be finishing its promotion */
    for (int i = 0; i < 50; i++) {
        c = PQconnectdb(ci);
        if (PQstatus(c) == CONNECTION_OK)
            break;
        PQfinish(c);
        c = NULL;
        usleep(100 * 1000);
    }
    if (!c)
        die("cannot connect to the new primary to read the rows back");
    PGresult *res = PQexec(c, "SELECT client, seq FROM bench_events");
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        die("reading bench_events: %s", PQerrorMessage(c));
    size_t nrows = (size_t)PQntuples(res);
    int *rows = malloc((nrows ? nrows : 1) * 2 * sizeof *rows);
    if (!rows)
        die("out of memory");
    for (size_t i = 0; i < nrows; i++) {
        rows[2 * i] = atoi(PQgetvalue(res, (int)i, 0));
        rows[2 * i + 1] = atoi(PQgetvalue(res, (int)i, 1));
    }
    PQclear(res);
    PQfinish(c);
    report_mark_present(r->samples, r->n, rows, nrows);
    free(rows);
}

static void write_samples_csv(const struct bench *b, const struct target *t, int k,
                              const struct run *r)
{
    char path[1200];
    snprintf(path, sizeof path, "%s/samples-%s-run%d.csv", b->out, t->name, k + 1);
    FILE *f = fopen(path, "w");
    if (!f)
        return;
    fprintf(f, "client,reconnecting,seq,start_ms,end_ms,outcome,sqlstate,present,message\n");
    for (size_t i = 0; i < r->n; i++) {
        const struct sample *s = &r->samples[i];
        char msg[SAMPLE_MSG_LEN];
        snprintf(msg, sizeof msg, "%s", s->message);
        for (char *p = msg; *p; p++)
            if (*p == '"')
                *p = '\'';
        fprintf(f, "%d,%d,%d,%.3f,%.3f,%s,%s,%d,\"%s\"\n", s->client, s->reconnecting, s->seq,
                (double)(s->start_us - r->ph.t0_us) / 1000.0,
                (double)(s->end_us - r->ph.t0_us) / 1000.0, report_outcome_name(s->outcome),
                s->sqlstate, s->present, msg);
    }
    fclose(f);
}

static void one_run(struct bench *b, struct target *t, int k)
{
    struct run *r = &t->runs[k];
    memset(r, 0, sizeof *r);
    int is_pgstay = !strncmp(t->name, "pgstay-", 7);
    progress("%s run %d/%d: fresh cluster", t->name, k + 1, b->runs);
    lab_reinit(b);
    prepare_table(b);

    char work[1200];
    snprintf(work, sizeof work, "%s/work/%s-run%d", b->out, t->name, k + 1);
    char mk[1300];
    snprintf(mk, sizeof mk, "%s/work", b->out);
    mkdir(mk, 0755);
    mkdir(work, 0755);

    char app_ci[1024];
    if (is_pgstay) {
        if (start_pgstay(b, t->name + 7, work, t->why, sizeof t->why) < 0) {
            t->available = 0;
            progress("%s: not available: %s", t->name, t->why);
            return;
        }
        snprintf(app_ci, sizeof app_ci,
                 "host=127.0.0.1 port=%d dbname=app user=app password=app connect_timeout=2",
                 b->port);
    } else {
        direct_conninfo(b, "app", "app", app_ci, sizeof app_ci);
    }

    int nc = b->clients + 1;
    struct client cl[BENCH_MAX_CLIENTS + 1];
    pthread_t th[BENCH_MAX_CLIENTS + 1];
    size_t cap = (size_t)(b->duration_s * 1000.0 / b->interval_ms) + 16;
    /* clients connect before t0; the event comes at t0 + at */
    r->ph.t0_us = bench_now_us() + 500 * 1000;
    r->ph.end_us = r->ph.t0_us + (int64_t)(b->duration_s * 1e6);
    for (int i = 0; i < nc; i++) {
        struct client *c = &cl[i];
        memset(c, 0, sizeof *c);
        c->id = i + 1;
        c->reconnecting = i == b->clients;
        snprintf(c->conninfo, sizeof c->conninfo, "%s", app_ci);
        c->interval_ms = b->interval_ms;
        c->timeout_ms = b->timeout_ms;
        /* spread the clients over one interval so inserts do not come in bursts */
        c->t0_us = r->ph.t0_us + (int64_t)b->interval_ms * 1000 * i / nc;
        c->end_us = r->ph.end_us;
        c->cap = cap;
        c->samples = calloc(cap, sizeof *c->samples);
        if (!c->samples)
            die("out of memory");
        if (pthread_create(&th[i], NULL, client_main, c))
            die("pthread_create failed");
    }
    struct event_ctx ev = {.b = b, .r = r, .proxy = is_pgstay,
                           .at_us = r->ph.t0_us + (int64_t)(b->at_s * 1e6)};
    pthread_t eth;
    int has_event = strcmp(b->event, "none") != 0;
    progress("%s run %d/%d: %d+1 clients for %.1f s, %s at %.1f s", t->name, k + 1, b->runs,
             b->clients, b->duration_s, b->event, b->at_s);
    if (has_event && pthread_create(&eth, NULL, event_main, &ev))
        die("pthread_create failed");
    size_t total = 0;
    for (int i = 0; i < nc; i++) {
        pthread_join(th[i], NULL);
        total += cl[i].n;
    }
    if (has_event) {
        pthread_join(eth, NULL);
        if (ev.rc != 0) {
            fprintf(stderr, "%s", r->event_log);
            die("the %s event failed (pgstay-lab exit %d)", b->event, ev.rc);
        }
    }
    r->samples = calloc(total ? total : 1, sizeof *r->samples);
    if (!r->samples)
        die("out of memory");
    for (int i = 0; i < nc; i++) {
        memcpy(r->samples + r->n, cl[i].samples, cl[i].n * sizeof *r->samples);
        r->n += cl[i].n;
        free(cl[i].samples);
    }
    if (is_pgstay) {
        show_failovers(b, r->proxy_log, sizeof r->proxy_log);
        stop_pgstay();
    } else {
        snprintf(r->proxy_log, sizeof r->proxy_log, "[]");
    }
    read_rows(b, r);
    report_compute(r->samples, r->n, &r->ph, &r->m);
    write_samples_csv(b, t, k, r);
    t->nerrs = report_count_errors(r->samples, r->n, t->errs, t->nerrs, BENCH_MAX_ERRGROUPS);
    t->nruns = k + 1;
    progress("%s run %d/%d: %d attempts, %d acknowledged, %d errors, write gap %.0f ms, lost %d",
             t->name, k + 1, b->runs, r->m.attempts, r->m.acked, r->m.errors, r->m.write_gap_ms,
             r->m.lost);
}

/* Medians over the runs of every figure. */
static void medians(struct target *t)
{
    double v[BENCH_MAX_RUNS];
    struct metrics *m = &t->med;
    memset(m, 0, sizeof *m);
#define MEDV(field)                                                                                \
    ({                                                                                             \
        for (int i = 0; i < t->nruns; i++)                                                         \
            v[i] = (double)t->runs[i].m.field;                                                     \
        report_median(v, (size_t)t->nruns);                                                        \
    })
    /* counts are rounded half up; "not applicable" (-1) stays -1 */
#define MEDI(field)                                                                                \
    do {                                                                                           \
        double x_ = MEDV(field);                                                                   \
        m->field = x_ < 0 ? -1 : (int)(x_ + 0.5);                                                  \
    } while (0)
#define MEDD(field) m->field = MEDV(field)
    MEDI(attempts);
    MEDI(acked);
    MEDI(errors);
    MEDI(broken_persistent);
    MEDI(broken_reconnecting);
    MEDI(connect_failed);
    MEDI(lost);
    MEDI(ran_despite_error);
    MEDD(write_gap_ms);
    MEDD(error_window_ms);
    MEDD(promote_to_ack_ms);
    MEDD(max_latency_ms);
#undef MEDI
#undef MEDD
#undef MEDV
    report_sort_errors(t->errs, t->nerrs);
}

/* ---- arguments -------------------------------------------------------------------------- */

static void usage(FILE *f)
{
    fputs("usage: pgstay-bench failover --lab DIR [--port BASE] [options]\n"
          "  --clients N        persistent (pooled) clients, plus one reconnecting (default 4)\n"
          "  --interval MS      between a client's inserts (default 10)\n"
          "  --duration S       of each run (default 10)\n"
          "  --at S             when the event happens (default 3)\n"
          "  --event E          crash | switchover | freeze | none (default crash)\n"
          "  --delay MS         crash/freeze to promotion (default 1000)\n"
          "  --target LIST      direct,pgstay-session,pgstay-transaction (default all)\n"
          "  --runs K           repeat and report medians (default 1)\n"
          "  --out DIR          report.md, report.json, report.html (default ./bench-report)\n"
          "  --lab DIR          the pgstay-lab directory (re-initialised for every run)\n"
          "  --port BASE        lab base port (default: from DIR/lab.conf, else 6100)\n"
          "  --timeout MS       longest wait for one insert (default 5000)\n"
          "  --pool-size N      pgstay pool_size (default 20)\n"
          "  --pgstay PATH, --pgstay-lab PATH   binaries (default: next to pgstay-bench)\n"
          "  --keep-lab         leave the last cluster running\n"
          "  --async            a cluster without a synchronous standby (default: one)\n",
          f);
}

static double num_arg(const char *name, const char *v, double lo, double hi)
{
    char *end;
    if (!v)
        die("%s needs a value", name);
    double x = strtod(v, &end);
    if (*end || end == v || x < lo || x > hi)
        die("invalid %s \"%s\" (expected %g..%g)", name, v, lo, hi);
    return x;
}

static void exe_dir(char *buf, size_t cap)
{
    ssize_t n = readlink("/proc/self/exe", buf, cap - 1);
    if (n <= 0) {
        snprintf(buf, cap, ".");
        return;
    }
    buf[n] = '\0';
    char *slash = strrchr(buf, '/');
    if (slash)
        *slash = '\0';
}

static void add_target(struct bench *b, const char *name)
{
    if (strcmp(name, "direct") && strcmp(name, "pgstay-session") &&
        strcmp(name, "pgstay-transaction"))
        die("unknown target \"%s\" (direct, pgstay-session, pgstay-transaction)", name);
    if (b->ntargets == BENCH_MAX_TARGETS)
        die("too many targets");
    struct target *t = &b->targets[b->ntargets++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->available = 1;
}

static void read_lab_port(struct bench *b)
{
    char conf[1100];
    snprintf(conf, sizeof conf, "%s/lab.conf", b->lab_dir);
    FILE *f = fopen(conf, "r");
    if (!f)
        return;
    char line[256];
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "port=%d", &b->port) == 1)
            break;
    fclose(f);
}

int main(int argc, char **argv)
{
    static struct bench bench;
    struct bench *b = &bench;
    b->clients = 4;
    b->interval_ms = 10;
    b->duration_s = 10;
    b->at_s = 3;
    b->delay_ms = 1000;
    b->timeout_ms = 5000;
    b->runs = 1;
    b->pool_size = 20;
    snprintf(b->event, sizeof b->event, "crash");
    snprintf(b->out, sizeof b->out, "bench-report");
    char dir[900];
    exe_dir(dir, sizeof dir);
    snprintf(b->lab_bin, sizeof b->lab_bin, "%s/pgstay-lab", dir);
    snprintf(b->pgstay_bin, sizeof b->pgstay_bin, "%s/pgstay", dir);
    const char *targets = "direct,pgstay-session,pgstay-transaction";

    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "failover")) {
        fprintf(stderr, "pgstay-bench: unknown command \"%s\"\n", argv[1]);
        usage(stderr);
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--clients"))
            b->clients = (int)num_arg(a, v, 0, BENCH_MAX_CLIENTS), i++;
        else if (!strcmp(a, "--interval"))
            b->interval_ms = (int)num_arg(a, v, 1, 60000), i++;
        else if (!strcmp(a, "--duration"))
            b->duration_s = num_arg(a, v, 0.5, 3600), i++;
        else if (!strcmp(a, "--at"))
            b->at_s = num_arg(a, v, 0, 3600), i++;
        else if (!strcmp(a, "--delay"))
            b->delay_ms = (int)num_arg(a, v, 0, 600000), i++;
        else if (!strcmp(a, "--timeout"))
            b->timeout_ms = (int)num_arg(a, v, 100, 600000), i++;
        else if (!strcmp(a, "--runs"))
            b->runs = (int)num_arg(a, v, 1, BENCH_MAX_RUNS), i++;
        else if (!strcmp(a, "--port"))
            b->port = (int)num_arg(a, v, 1, 65500), i++;
        else if (!strcmp(a, "--pool-size"))
            b->pool_size = (int)num_arg(a, v, 1, 100000), i++;
        else if (!strcmp(a, "--keep-lab"))
            b->keep_lab = 1;
        else if (!strcmp(a, "--async"))
            b->async = 1;
        else if (!v)
            die("%s needs a value (see --help)", a);
        else if (!strcmp(a, "--event"))
            snprintf(b->event, sizeof b->event, "%s", v), i++;
        else if (!strcmp(a, "--target"))
            targets = v, i++;
        else if (!strcmp(a, "--out"))
            snprintf(b->out, sizeof b->out, "%s", v), i++;
        else if (!strcmp(a, "--lab"))
            snprintf(b->lab_dir, sizeof b->lab_dir, "%s", v), i++;
        else if (!strcmp(a, "--pgstay"))
            snprintf(b->pgstay_bin, sizeof b->pgstay_bin, "%s", v), i++;
        else if (!strcmp(a, "--pgstay-lab"))
            snprintf(b->lab_bin, sizeof b->lab_bin, "%s", v), i++;
        else
            die("unknown option %s (see --help)", a);
    }
    if (strcmp(b->event, "crash") && strcmp(b->event, "switchover") &&
        strcmp(b->event, "freeze") && strcmp(b->event, "none"))
        die("unknown event \"%s\" (crash, switchover, freeze, none)", b->event);
    if (!b->lab_dir[0])
        die("--lab DIR is required");
    if (b->at_s >= b->duration_s && strcmp(b->event, "none"))
        die("--at must be before the end of --duration");
    char tl[256];
    snprintf(tl, sizeof tl, "%s", targets);
    for (char *save = NULL, *tok = strtok_r(tl, ",", &save); tok;
         tok = strtok_r(NULL, ",", &save))
        add_target(b, tok);
    if (!b->port)
        read_lab_port(b);
    if (!b->port)
        b->port = 6100;
    if (mkdir(b->out, 0755) < 0 && errno != EEXIST)
        die("cannot create %s: %s", b->out, strerror(errno));

    signal(SIGINT, on_signal);
    signal(SIGTERM, on_signal);
    signal(SIGHUP, on_signal);
    signal(SIGPIPE, SIG_IGN);

    for (int ti = 0; ti < b->ntargets; ti++) {
        struct target *t = &b->targets[ti];
        for (int k = 0; k < b->runs && t->available; k++)
            one_run(b, t, k);
        if (t->available)
            medians(t);
    }
    if (!b->keep_lab) {
        struct cmd_out o;
        lab(b, &o, "destroy", NULL);
    }
    write_markdown(b, stdout);
    if (write_reports(b) < 0)
        die("cannot write the report in %s", b->out);
    progress("report: %s/report.md, %s/report.json, %s/report.html", b->out, b->out, b->out);
    return 0;
}
