/* pgstay-lab: promote, failover, switchover and rejoin (pg_rewind) of lab nodes. */
#include "lab.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PROMOTE_TIMEOUT_MS 60000
#define WRITE_TIMEOUT_MS 30000
/* pg_is_in_recovery() is polled this often while a promotion runs: the "promoted" instant every
 * promotion → first-acknowledged-write figure starts from is then within a millisecond of the
 * real one (it was 20 ms, LAB_POLL_MS, more than the figure it measures). */
#define PROMOTE_POLL_MS 1

/*
 * The first commit on the new primary, sent the moment it is seen out of recovery, on a
 * session opened while it was a standby, as a connected client would: "writable" is when
 * that commit is acknowledged (it waits for the synchronous standby to follow the new
 * timeline), measured while the lab goes on repointing the other standbys. That is the floor of
 * promotion → first acknowledged write for any client, direct or through a proxy.
 */
struct first_commit {
    PGconn *c;
    int rc;
    int64_t done_ms;
    char err[512];
};

static void *first_commit_main(void *arg)
{
    struct first_commit *fc = arg;
    /* A commit waits for the synchronous standby only if its transaction wrote WAL before the
     * commit record (xact.c: wrote_xlog): an xid alone (pg_current_xact_id(), what this was)
     * commits at once, standby or not. A transactional logical message is WAL with an xid, and
     * needs no table. */
    fc->rc = db_exec(fc->c, "SELECT pg_logical_emit_message(true, 'pgstay-lab', 'writable')",
                     WRITE_TIMEOUT_MS, fc->err, sizeof fc->err);
    fc->done_ms = now_ms();
    return NULL;
}

/* Point every standby other than t at t: running ones reload, stopped ones on next start. */
static void repoint_standbys(struct lab *lab, int t, const struct node_state *st)
{
    for (int j = 1; j <= lab->nodes; j++) {
        if (j == t)
            continue;
        char data[PATH_MAX], sig[PATH_MAX + 32];
        node_data(lab, j, data, sizeof data);
        snprintf(sig, sizeof sig, "%s/standby.signal", data);
        /* frozen or starting nodes cannot answer, so trust their signal file */
        bool standby = st[j].role != ROLE_DOWN ? st[j].role == ROLE_STANDBY
                                               : access(sig, F_OK) == 0;
        if (!standby || (st[j].running && st[j].upstream_port == node_port(lab, t)))
            continue;
        if (write_standby_conf(lab, j, t) < 0)
            continue;
        if (!st[j].running) {
            printf("n%d: will follow n%d when started\n", j, t);
            continue;
        }
        if (st[j].role == ROLE_DOWN) {
            /* the reload request stays pending until the node is thawed */
            kill(st[j].pid, SIGHUP);
            printf("n%d: will follow n%d when it responds again\n", j, t);
            continue;
        }
        char err[512];
        PGconn *c = db_connect(lab, j, err, sizeof err);
        /* PG >= 13 restarts the WAL receiver when primary_conninfo changes on reload */
        if (!c || db_exec(c, "SELECT pg_reload_conf()", 0, err, sizeof err) < 0)
            fprintf(stderr, "n%d: cannot reload: %s\n", j, err);
        else
            printf("n%d: now follows n%d\n", j, t);
        PQfinish(c);
    }
}

/*
 * Promote standby t, repoint the others, fix synchronous_standby_names and
 * wait until a commit succeeds there. Times are unix ms. on_promoted, when set, runs the
 * moment the node has left recovery (before the standbys are repointed).
 */
int do_promote(struct lab *lab, int t, int64_t *promoted_ms, int64_t *writable_ms,
               void (*on_promoted)(void *), void *arg)
{
    char err[512], v[64];
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    if (st[t].role != ROLE_STANDBY) {
        fprintf(stderr, "n%d is not a standby%s\n", t,
                st[t].role == ROLE_PRIMARY ? " (it is the primary)"
                : st[t].frozen             ? " (it is frozen)"
                                           : " (it is not running)");
        return -1;
    }
    /*
     * Point the other standbys at t, and give t its synchronous_standby_names, while it is
     * still a standby (cascading replication). At promotion they follow its new timeline on
     * the connection they already have, so its first commit is acknowledged at once instead
     * of after a standby reconnects: tens of milliseconds every writer waited, directly or
     * through a proxy, that a control plane need not add (Aurora's shared storage has none).
     */
    repoint_standbys(lab, t, st);
    update_sync_names(lab, t, st);
    PGconn *c = db_connect(lab, t, err, sizeof err);
    if (!c) {
        fprintf(stderr, "n%d: cannot connect: %s\n", t, err);
        return -1;
    }
    struct first_commit fc = {.c = db_connect(lab, t, err, sizeof err), .rc = -1};
    if (!fc.c) {
        fprintf(stderr, "n%d: cannot connect: %s\n", t, err);
        PQfinish(c);
        return -1;
    }
    int64_t t0 = now_ms();
    /* no wait inside the server: we poll every 1 ms, pg_ctl promote -w only every 100 ms */
    if (db_exec(c, "SELECT pg_promote(false)", 0, err, sizeof err) < 0) {
        fprintf(stderr, "n%d: pg_promote failed: %s\n", t, err);
        PQfinish(fc.c);
        PQfinish(c);
        return -1;
    }
    for (;;) {
        if (db_value(c, "SELECT pg_is_in_recovery()", v, sizeof v, err, sizeof err) == 0 &&
            strcmp(v, "f") == 0)
            break;
        if (now_ms() - t0 > PROMOTE_TIMEOUT_MS) {
            fprintf(stderr, "n%d: still in recovery %d s after pg_promote\n", t,
                    PROMOTE_TIMEOUT_MS / 1000);
            PQfinish(fc.c);
            PQfinish(c);
            return -1;
        }
        sleep_ms(PROMOTE_POLL_MS);
    }
    int64_t promoted = now_ms();
    pthread_t fct;
    int fc_started = pthread_create(&fct, NULL, first_commit_main, &fc) == 0;
    if (promoted_ms)
        *promoted_ms = promoted;
    /* Stamped now (pgstay-bench reads the instant off this line), before anything slower. */
    printf("n%d: promoted (out of recovery) in %lld ms\n", t, (long long)(promoted - t0));
    fflush(stdout);
    if (!fc_started) /* no thread: the commit runs here, after the promotion's other steps */
        fprintf(stderr, "n%d: cannot start a thread for the first commit\n", t);
    if (on_promoted)
        on_promoted(arg);
    probe(lab, t, &st[t]);
    printf("n%d: on timeline %u\n", t, st[t].tli);
    for (int j = 1; j <= lab->nodes; j++)
        if (j != t && st[j].role == ROLE_PRIMARY)
            fprintf(stderr, "warning: n%d is still a running primary (split brain); run rejoin n%d\n",
                    j, j);
    repoint_standbys(lab, t, st);
    probe_all(lab, st);
    update_sync_names(lab, t, st);
    PQfinish(c);
    if (fc_started)
        pthread_join(fct, NULL);
    else
        first_commit_main(&fc);
    PQfinish(fc.c);
    if (fc.rc < 0) {
        fprintf(stderr, "n%d: promoted but a commit did not succeed: %s%s\n", t, fc.err,
                fc.rc == -2 ? " (no synchronous standby acknowledged it)" : "");
        return -1;
    }
    int64_t writable = fc.done_ms;
    if (writable_ms)
        *writable_ms = writable;
    printf("n%d: writable %lld ms after promotion started, %lld ms after promoted (a commit sent "
           "at the promotion acknowledged)\n",
           t, (long long)(writable - t0), (long long)(writable - promoted));
    return 0;
}

int cmd_promote(struct lab *lab, int t)
{
    int64_t promoted = 0, writable = 0;
    if (do_promote(lab, t, &promoted, &writable, NULL, NULL) < 0)
        return LAB_EXIT_FAIL;
    printf("promote: promoted=%lld writable=%lld new_primary=n%d\n", (long long)promoted,
           (long long)writable, t);
    return 0;
}

/* Most advanced running standby by flushed-received (>= replayed) WAL, excluding `exclude`. */
static int most_advanced(const struct lab *lab, const struct node_state *st, int exclude)
{
    int best = 0;
    for (int j = 1; j <= lab->nodes; j++) {
        if (j == exclude || st[j].role != ROLE_STANDBY)
            continue;
        uint64_t a = st[j].recv_lsn > st[j].lsn ? st[j].recv_lsn : st[j].lsn;
        uint64_t b = best ? (st[best].recv_lsn > st[best].lsn ? st[best].recv_lsn : st[best].lsn)
                          : 0;
        if (!best || a > b)
            best = j;
    }
    return best;
}

int cmd_failover(struct lab *lab, int to, int delay_ms, bool rejoin)
{
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    int p = find_primary(lab, st, 0);
    for (int j = 1; j <= lab->nodes && !p; j++) {
        /* a frozen (hung) primary cannot answer; its lack of standby.signal gives it away */
        char data[PATH_MAX], sig[PATH_MAX + 32];
        node_data(lab, j, data, sizeof data);
        snprintf(sig, sizeof sig, "%s/standby.signal", data);
        if (st[j].running && st[j].role == ROLE_DOWN && access(sig, F_OK) != 0)
            p = j;
    }
    if (!p) {
        fprintf(stderr, "no running primary to fail over from\n");
        return LAB_EXIT_FAIL;
    }
    if (to && st[to].role != ROLE_STANDBY) {
        fprintf(stderr, "n%d is not a standby\n", to);
        return LAB_EXIT_FAIL;
    }
    if (!to && !most_advanced(lab, st, p)) {
        fprintf(stderr, "no running standby to fail over to\n");
        return LAB_EXIT_FAIL;
    }
    pid_t pm = node_pid(lab, p);
    /* The crash is the instant the tree is stopped (node_signal_tree SIGSTOPs it first), not
     * when the lab has seen every process gone (polled every LAB_POLL_MS): a late stamp would
     * shorten crash → writable, the scale every write gap is compared with. */
    int64_t crashed = now_ms();
    int n = node_signal_tree(pm, SIGKILL);
    printf("n%d: crashed (SIGKILL to postmaster %d and %d children)\n", p, (int)pm, n - 1);
    if (delay_ms > 0)
        sleep_ms(delay_ms);
    if (!to) {
        /* re-read after the crash: standbys may have received more in the meantime */
        probe_all(lab, st);
        to = most_advanced(lab, st, p);
        if (!to) {
            fprintf(stderr, "no running standby to fail over to\n");
            return LAB_EXIT_FAIL;
        }
        char l[32];
        format_lsn(st[to].recv_lsn > st[to].lsn ? st[to].recv_lsn : st[to].lsn, l, sizeof l);
        printf("failover: n%d is the most advanced standby (%s)\n", to, l);
    }
    int64_t promoted = 0, writable = 0;
    if (do_promote(lab, to, &promoted, &writable, NULL, NULL) < 0)
        return LAB_EXIT_FAIL;
    printf("failover: crash->promoted %lld ms, crash->writable %lld ms\n",
           (long long)(promoted - crashed), (long long)(writable - crashed));
    printf("failover: crashed=%lld promoted=%lld writable=%lld new_primary=n%d\n",
           (long long)crashed, (long long)promoted, (long long)writable, to);
    fflush(stdout);
    if (rejoin && do_rejoin(lab, p) < 0)
        return LAB_EXIT_FAIL;
    return 0;
}

/* pg_rewind refuses a data directory that was not shut down cleanly. */
static int ensure_clean_shutdown(struct lab *lab, int i)
{
    char state[128], data[PATH_MAX], out[16384], path[PATH_MAX + 32];
    if (controldata(lab, i, "Database cluster state", state, sizeof state) < 0) {
        fprintf(stderr, "n%d: cannot read pg_control\n", i);
        return -1;
    }
    if (strcmp(state, "shut down") == 0 || strcmp(state, "shut down in recovery") == 0)
        return 0;
    node_data(lab, i, data, sizeof data);
    clear_stale_locks(lab, i);
    /* single-user mode refuses standby mode; plain crash recovery is what we want */
    snprintf(path, sizeof path, "%s/standby.signal", data);
    unlink(path);
    snprintf(path, sizeof path, "%s/recovery.signal", data);
    unlink(path);
    int64_t t0 = now_ms();
    const char *argv[] = {"postgres", "--single", "-D", data, "postgres", NULL};
    int rc = run_cmd(lab, argv, out, sizeof out);
    if (rc != 0) {
        fprintf(stderr, "n%d: single-user crash recovery failed:\n%s\n", i, out);
        return -1;
    }
    printf("n%d: crash recovery in single-user mode (was '%s') in %lld ms\n", i, state,
           (long long)(now_ms() - t0));
    return 0;
}

int do_rejoin(struct lab *lab, int i)
{
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    int p = find_primary(lab, st, i);
    if (!p) {
        fprintf(stderr, "no running primary (other than n%d) to rejoin n%d to\n", i, i);
        return -1;
    }
    int64_t t0 = now_ms();
    if (st[i].role == ROLE_STANDBY && st[i].upstream_port == node_port(lab, p)) {
        printf("n%d: already a standby of n%d\n", i, p);
        return update_sync_names(lab, p, st);
    }
    if (st[i].running && node_stop(lab, i) < 0)
        return -1;
    if (ensure_clean_shutdown(lab, i) < 0)
        return -1;
    char data[PATH_MAX], src[PATH_MAX + 128], out[16384], err[512];
    node_data(lab, i, data, sizeof data);
    /*
     * pg_rewind reads the source's timeline from pg_control, which a freshly
     * promoted primary only updates at its first checkpoint.
     */
    PGconn *pcn = db_connect(lab, p, err, sizeof err);
    if (!pcn || db_exec(pcn, "CHECKPOINT", 0, err, sizeof err) < 0) {
        fprintf(stderr, "n%d: CHECKPOINT before pg_rewind failed: %s\n", p, err);
        PQfinish(pcn);
        return -1;
    }
    PQfinish(pcn);
    snprintf(src, sizeof src, "host='%s' port=%d user=postgres dbname=postgres", lab->run,
             node_port(lab, p));
    const char *argv[] = {"pg_rewind", "--target-pgdata", data, "--source-server", src,
                          lab->fast ? "--no-sync" : NULL, NULL};
    int64_t r0 = now_ms();
    if (run_cmd(lab, argv, out, sizeof out) != 0) {
        fprintf(stderr, "n%d: pg_rewind failed:\n%s\n", i, out);
        return -1;
    }
    printf("n%d: %s from n%d in %lld ms\n", i,
           strstr(out, "no rewind required") ? "no rewind required" : "rewound (pg_rewind)", p,
           (long long)(now_ms() - r0));
    /* pg_rewind copied the source's config files, including its identity */
    if (write_node_conf(lab, i) < 0 || write_standby_conf(lab, i, p) < 0)
        return -1;
    if (node_start(lab, i) < 0)
        return -1;
    probe_all(lab, st);
    if (update_sync_names(lab, p, st) < 0)
        return -1;
    if (wait_streaming(lab, p, i, 30000) < 0) {
        fprintf(stderr, "n%d: started but not streaming from n%d\n", i, p);
        return -1;
    }
    printf("n%d: rejoined as a standby of n%d, streaming, in %lld ms\n", i, p,
           (long long)(now_ms() - t0));
    return 0;
}

static PGconn *proxy_connect(const char *proxy)
{
    PGconn *pc = PQconnectdb(proxy);
    if (PQstatus(pc) != CONNECTION_OK) {
        fprintf(stderr, "proxy: cannot connect to '%s': %s", proxy, PQerrorMessage(pc));
        PQfinish(pc);
        return NULL;
    }
    return pc;
}

static int proxy_cmd(PGconn *pc, const char *cmd)
{
    char err[512];
    if (db_exec(pc, cmd, 10000, err, sizeof err) < 0) {
        fprintf(stderr, "proxy: %s failed: %s\n", cmd, err);
        return -1;
    }
    printf("proxy: %s\n", cmd);
    return 0;
}

struct resume_ctx {
    PGconn *pc;
    int resumed, failed;
};

static void resume_proxy(void *arg)
{
    struct resume_ctx *r = arg;
    r->resumed = 1;
    if (proxy_cmd(r->pc, "RESUME") < 0)
        r->failed = 1;
}

int cmd_switchover(struct lab *lab, int to, const char *proxy)
{
    struct node_state st[LAB_MAX_NODES + 1];
    probe_all(lab, st);
    int p = find_primary(lab, st, 0);
    if (!p) {
        fprintf(stderr, "no running primary to switch over from\n");
        return LAB_EXIT_FAIL;
    }
    if (to && st[to].role != ROLE_STANDBY) {
        fprintf(stderr, "n%d is not a standby\n", to);
        return LAB_EXIT_FAIL;
    }
    if (!to)
        to = most_advanced(lab, st, p);
    if (!to) {
        fprintf(stderr, "no running standby to switch over to\n");
        return LAB_EXIT_FAIL;
    }
    int64_t t0 = now_ms();
    PGconn *pc = NULL;
    int rc = LAB_EXIT_FAIL, resumed = 0;
    if (proxy) {
        pc = proxy_connect(proxy);
        if (!pc)
            return LAB_EXIT_FAIL;
        if (proxy_cmd(pc, "PAUSE") < 0)
            goto out;
    }
    if (node_stop(lab, p) < 0)
        goto out;
    /* the shutdown checkpoint is the last record; the target must have replayed it */
    char ck[64];
    uint64_t ck_lsn = 0;
    if (controldata(lab, p, "Latest checkpoint location", ck, sizeof ck) < 0 ||
        !parse_lsn(ck, &ck_lsn)) {
        fprintf(stderr, "n%d: cannot read the shutdown checkpoint location\n", p);
        node_start(lab, p);
        goto out;
    }
    int64_t w0 = now_ms();
    for (;;) {
        struct node_state s;
        probe(lab, to, &s);
        if (s.role == ROLE_STANDBY && s.lsn > ck_lsn)
            break;
        if (now_ms() - w0 > 10000) {
            fprintf(stderr, "n%d did not replay n%d's shutdown checkpoint %s; restarting n%d\n",
                    to, p, ck, p);
            node_start(lab, p);
            goto out;
        }
        sleep_ms(LAB_POLL_MS);
    }
    printf("n%d: replayed n%d's shutdown checkpoint %s\n", to, p, ck);
    /* The new primary takes commits as soon as it has left recovery (they wait in it for the
     * synchronous standby, as a direct client's would): the proxy resumes then, not after the
     * lab's own test commit, nor after the old primary is rewound and restarted as a standby. */
    struct resume_ctx rc_ctx = {pc, 0, 0};
    int64_t promoted = 0, writable = 0;
    int prc = do_promote(lab, to, &promoted, &writable, pc ? resume_proxy : NULL, &rc_ctx);
    resumed = rc_ctx.resumed;
    if (prc < 0 || rc_ctx.failed)
        goto out;
    /* the instants themselves, as failover prints them (a line is read later than it is due) */
    printf("switchover: started=%lld promoted=%lld writable=%lld new_primary=n%d\n", (long long)t0,
           (long long)promoted, (long long)writable, to);
    fflush(stdout);
    if (do_rejoin(lab, p) < 0)
        goto out;
    rc = 0;
out:
    if (pc) {
        /* RESUME on every path: a paused proxy is an outage */
        if (!resumed && proxy_cmd(pc, "RESUME") < 0)
            rc = LAB_EXIT_FAIL;
        PQfinish(pc);
    }
    if (rc == 0)
        printf("switchover: n%d -> n%d in %lld ms\n", p, to, (long long)(now_ms() - t0));
    return rc;
}
