/* pgstay: arguments, signals, configuration, then the event loop. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <event2/event.h>

#include "app/notify.h"
#include "app/takeover.h"
#include "app/worker.h"
#include "config/config.h"
#include "config/userlist.h"
#include "core/log.h"
#include "core/logsys.h"

#ifndef PGSTAY_VERSION
#define PGSTAY_VERSION "0.1.0"
#endif

static void usage(FILE *f)
{
    fprintf(f,
            "usage: pgstay [-v] [-R] CONFIG_FILE\n"
            "       -R: take over from the running pgstay (takeover_socket): its listening\n"
            "           sockets (TCP and unix) and idle clients move here, it finishes the\n"
            "           rest and exits\n"
            "       pgstay --check-config CONFIG_FILE\n"
            "       pgstay --from-pgbouncer PGBOUNCER_INI   (prints an equivalent pgstay.ini)\n"
            "       pgstay --version\n"
            "signals: SIGTERM drains clients (shutdown_timeout) and exits, SIGINT exits at once,\n"
            "         SIGHUP reloads the configuration and auth_file\n");
}

static void on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct worker *w = arg;
    switch (sig) {
    case SIGHUP:
        log_info("SIGHUP: reloading");
        worker_reload(w);
        break;
    case SIGTERM:
        log_info("SIGTERM: draining");
        worker_begin_shutdown(w);
        break;
    case SIGINT:
        log_info("SIGINT: exiting now");
        notify_stopping();
        event_base_loopbreak(w->base);
        break;
    }
}

/*
 * pidfile, as PgBouncer keeps one: refused when it names a live pgstay (two on one pidfile
 * are a mistake), taken over when stale. Written with O_EXCL through a temporary name so that
 * a reader never sees it half written.
 */
static int pidfile_claim(const char *path, int takeover)
{
    if (!path || !*path)
        return 0;
    /* pgstay -R: the live pgstay named there is the one being replaced. */
    FILE *f = takeover ? NULL : fopen(path, "r");
    if (f) {
        long pid = 0;
        int n = fscanf(f, "%ld", &pid);
        fclose(f);
        if (n == 1 && pid > 0 && pid != (long)getpid() && kill((pid_t)pid, 0) == 0) {
            log_error("pidfile %s: pgstay is already running as pid %ld", path, pid);
            return -1;
        }
    }
    char tmp[PATH_MAX];
    snprintf(tmp, sizeof(tmp), "%s.%ld", path, (long)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
        log_error("pidfile %s: %s", tmp, strerror(errno));
        return -1;
    }
    char buf[32];
    int len = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    int ok = write(fd, buf, (size_t)len) == len;
    close(fd);
    if (!ok || rename(tmp, path) < 0) {
        log_error("pidfile %s: %s", path, strerror(errno));
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Removed at exit only while it still names this process: after a takeover it names the new
 * one. */
static void pidfile_release(const char *path)
{
    if (!path || !*path)
        return;
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (f) {
        if (fscanf(f, "%ld", &pid) != 1)
            pid = 0;
        fclose(f);
    }
    if (pid == (long)getpid())
        unlink(path);
}

int main(int argc, char **argv)
{
    const char *path = NULL;
    int check_only = 0, verbose = 0, takeover = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--version")) {
            printf("pgstay %s\n", PGSTAY_VERSION);
            return 0;
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(argv[i], "--from-pgbouncer")) {
            if (i + 1 >= argc) {
                usage(stderr);
                return 2;
            }
            return config_from_pgbouncer(argv[i + 1], stdout, stderr) < 0 ? 1 : 0;
        } else if (!strcmp(argv[i], "--check-config")) {
            check_only = 1;
        } else if (!strcmp(argv[i], "-R")) {
            takeover = 1;
        } else if (!strcmp(argv[i], "-v")) {
            verbose++;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "pgstay: unknown option %s\n", argv[i]);
            usage(stderr);
            return 2;
        } else if (!path) {
            path = argv[i];
        } else {
            usage(stderr);
            return 2;
        }
    }
    if (!path) {
        usage(stderr);
        return 2;
    }
    static struct config cfg;
    char err[512];
    if (config_load(path, &cfg, err, sizeof(err)) < 0) {
        fprintf(stderr, "pgstay: %s\n", err);
        return 1;
    }
    if (check_only) {
        struct userlist ul = {0};
        if (cfg.auth_type != AUTH_TRUST && userlist_load(cfg.auth_file, &ul, err, sizeof(err)) < 0) {
            fprintf(stderr, "pgstay: %s\n", err);
            config_free(&cfg);
            return 1;
        }
        userlist_free(&ul);
        tls_ctx *ctls, *stls;
        if (worker_tls_build(&cfg, &ctls, &stls, err, sizeof(err)) < 0) {
            fprintf(stderr, "pgstay: %s\n", err);
            config_free(&cfg);
            return 1;
        }
        tls_ctx_free(ctls);
        tls_ctx_free(stls);
        struct hba *hba;
        if (worker_hba_load(&cfg, &hba, err, sizeof(err)) < 0) {
            fprintf(stderr, "pgstay: %s\n", err);
            config_free(&cfg);
            return 1;
        }
        worker_hba_free(hba);
        printf("%s: configuration is valid (%d nodes)\n", path, cfg.n_nodes);
        config_free(&cfg);
        return 0;
    }
    if (verbose || cfg.verbose > 0)
        log_verbosity = LOG_DEBUG;
    signal(SIGPIPE, SIG_IGN);
    char lerr[300];
    if (log_to_file(cfg.logfile, lerr, sizeof(lerr)) < 0) {
        fprintf(stderr, "pgstay: %s\n", lerr);
        return 1;
    }
    logsys_config(cfg.syslog, cfg.syslog_ident, cfg.syslog_facility);
    static struct worker w;
    /* -R: the listening sockets come from the running pgstay before anything is bound here;
     * the pidfile is claimed, and the old process told to hand over, once everything started
     * (until then the old one runs on as if nothing happened). */
    if (worker_init(&w, &cfg) < 0 || (takeover && takeover_receive(&w) < 0) ||
        (!takeover && pidfile_claim(cfg.pidfile, 0) < 0) || worker_listen(&w) < 0 ||
        (takeover && (pidfile_claim(cfg.pidfile, 1) < 0 || takeover_ready(&w) < 0))) {
        log_error("cannot start");
        pidfile_release(cfg.pidfile);
        return 1;
    }
    if (worker_start_threads(&w) < 0) {
        log_error("cannot start");
        worker_stop_all(&w);
        worker_join_threads(&w);
        pidfile_release(cfg.pidfile);
        return 1;
    }
    takeover_listen(&w);
    struct event *sigs[3];
    int signums[3] = {SIGHUP, SIGTERM, SIGINT};
    for (int i = 0; i < 3; i++) {
        sigs[i] = evsignal_new(w.base, signums[i], on_signal, &w);
        event_add(sigs[i], NULL);
    }
    log_info("pgstay %s started (%d nodes, pool_mode %s, %d workers)", PGSTAY_VERSION,
             cfg.n_nodes, cfg.pool_mode == POOL_SESSION ? "session" : "transaction",
             w.world->n);
    notify_ready(); /* every listener is open (worker_listen) */
    event_base_dispatch(w.base);
    worker_stop_all(&w);
    worker_join_threads(&w);
    for (int i = 0; i < 3; i++)
        event_free(sigs[i]);
    worker_free(&w);
    pidfile_release(cfg.pidfile);
    config_free(&cfg);
    log_info("pgstay stopped");
    return 0;
}
