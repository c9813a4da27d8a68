/* Per-loop state: lists by state, deferred frees, housekeeping tick, listeners, reload. It sits
 * above every other layer (it creates and frees them all), so nothing below includes it. */
#include "app/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/thread.h>
#include <pthread.h>
#include <signal.h>

#include "admin/admin.h"
#include "admin/metrics.h"
#include "app/notify.h"
#include "app/takeover.h"
#include "client/authquery.h"
#include "client/client.h"
#include "config/config.h"
#include "config/hba.h"
#include "config/userlist.h"
#include "core/log.h"
#include "core/logsys.h"
#include "failover/failover.h"
#include "failover/planned.h"
#include "pool/backoff.h"
#include "pool/pool.h"
#include "pool/stats.h"
#include "proto/proto.h"
#include "proto/sqlclass.h"
#include "server/probe.h"
#include "server/server.h"
#include "topology/topology.h"

/* The admin console reads and drives every worker (SHOW CLIENTS lists them all, PAUSE holds
 * them all): its commands run with the world stopped (core/world.h). */
static void admin_welcome_stopped(struct client *c)
{
    struct worker *w = c->w;
    world_stop(w);
    admin_welcome(c);
    world_start(w);
}

static void admin_process_stopped(struct client *c)
{
    struct worker *w = c->w;
    world_stop(w);
    admin_process(c);
    world_start(w);
}

/* Topology's verdicts act on every worker's pools; topology calls these with the world
 * stopped (its callbacks stop it). */
static void kick_all_workers(struct worker *w)
{
    for (int i = 0; i < w->world->n; i++)
        pool_kick_all(w->world->workers[i]);
}

static void drop_node_all(struct worker *w, struct node *nd, const char *why)
{
    for (int i = 0; i < w->world->n; i++)
        pool_drop_node(w->world->workers[i], nd, why);
}

static void drain_node_all(struct worker *w, struct node *nd, const char *why)
{
    for (int i = 0; i < w->world->n; i++)
        pool_drain_node(w->world->workers[i], nd, why);
}

static void backoff_due_all(struct worker *w)
{
    for (int i = 0; i < w->world->n; i++)
        login_backoff_due(w->world->workers[i]);
}

/* The upward calls of the layers below, wired here because the program is the one place that
 * knows every layer (see tools/layers.py). Static: the same for every loop. */
static const struct session_hooks session_hooks = {
    .holding = failover_holding,
    .paused = failover_paused,
    .note_held = failover_note_held,
    .note_served = failover_note_served,
    .note_failed_in_flight = failover_note_failed_in_flight,
    .note_timed_out = failover_note_timed_out,
    .admin_welcome = admin_welcome_stopped,
    .admin_process = admin_process_stopped,
    .db_disabled = admin_db_disabled,
};

static const struct topology_hooks topology_hooks = {
    .writer_lost = planned_writer_lost,
    .writer_found = planned_writer_found,
    .switchover_scheduled = planned_scheduled,
    .open_ahead = failover_open_ahead,
    .kick_all = kick_all_workers,
    .node_dropped = drop_node_all,
    .node_drain = drain_node_all,
    .backoff_due = backoff_due_all,
    .backoff_free = login_backoff_free,
    .probe_open = probe_open,
    .probe_idle = probe_idle,
    .probe_query = probe_query,
    .probe_close = probe_close,
    .probe_detach = probe_detach,
};

/* Every loop ends: the process exits once the main thread's loop has returned and the other
 * threads are joined (src/main.c). */
static void exit_all(struct worker *w)
{
    event_base_loopexit(w->world->workers[0]->base, NULL);
    worker_stop_all(w->world->workers[0]);
}

/* Clients of every worker, but those closing; the world is stopped. */
static int live_clients(struct worker *w)
{
    int live = 0;
    for (int k = 0; k < w->world->n; k++)
        for (int i = 0; i < CL_CLOSING; i++)
            live += w->world->workers[k]->n_clients[i];
    return live;
}

/* Draining (SIGTERM) or handing over (pgstay -R): the main thread's worker decides for all,
 * with the world stopped, when the process exits; the others only tell it to look again. */
static void drain_check(struct worker *w)
{
    if (w->index != 0) {
        worker_schedule_reap(w->world->workers[0]);
        return;
    }
    world_stop(w);
    if (w->handing_over && !w->shutting_down) {
        /* pgstay -R: idle clients go to the new process as they become idle. */
        if (takeover_sweep(w))
            exit_all(w);
    } else {
        int live = live_clients(w);
        if (live == 0 || now_ms() >= w->shutdown_deadline) {
            log_info("shutdown: %d clients left, exiting", live);
            exit_all(w);
        }
    }
    world_start(w);
}

static void reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_CLOSING])
    {
        client_free(container_of(pos, struct client, node));
    }
    list_for_each_safe(pos, tmp, &w->servers[SV_CLOSING])
    {
        server_free(container_of(pos, struct server, node));
    }
    if (w->handing_over || w->shutting_down)
        drain_check(w);
}

static void park_cb(evutil_socket_t fd, short what, void *arg)
{
    world_park(arg);
}

/* The loop ends (worker_stop_all). An activated event rather than event_base_loopbreak from
 * the main thread: a break asked for before the thread entered its loop would be forgotten
 * (event_base_loop clears it on entry), and that thread would never end. */
static void halt_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    event_base_loopbreak(w->base);
}

static void poke_cb(evutil_socket_t fd, short what, void *arg)
{
    pool_poked(arg);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    int64_t now = now_ms();
    client_check_timeouts(w, now);
    pool_gc(w, now);
    pool_starve_remind(w);
    if (w->index == 0) {
        /* PAUSE is done when no worker's client is inside a transaction any more. */
        world_stop(w);
        admin_check_pause(w);
        world_start(w);
    }
    /* A server finishing what a departed client left running gets this long, then is closed. */
    {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[SV_RESETTING])
        {
            struct server *s = container_of(pos, struct server, node);
            if (now - s->last_used > SERVER_DRAIN_TIMEOUT_MS)
                server_close(s, "its reset did not finish in time");
        }
    }
    /* Idle pooled servers: unused for server_idle_timeout, or older than server_lifetime
     * (PgBouncer's keys: backends do not live forever, a pool shrinks after a burst), or
     * beyond a pool_size (and its reserve) a reload made smaller, as PgBouncer trims them. */
    {
        struct list *pos, *tmp;
        int trim = 0;
        list_for_each_safe(pos, tmp, &w->servers[SV_IDLE])
        {
            struct server *s = container_of(pos, struct server, node);
            if (!s->pool)
                continue;
            struct pool *p = s->pool;
            if (w->cfg->server_idle_timeout > 0 &&
                now - s->last_used > w->cfg->server_idle_timeout &&
                p->n_servers > w->cfg->min_pool_size)
                server_close(s, "server_idle_timeout");
            else if (w->cfg->server_lifetime > 0 && now - s->connected_at > w->cfg->server_lifetime)
                server_close(s, "server_lifetime");
            else if (pool_over_size(p))
                trim = 1;
        }
        if (trim) {
            /* Decided with the other workers parked (two trimming at once would each count
             * the other's server and close one too many), and the stop taken outside the walk:
             * waiting for another worker's stop inside it could let that one close the next
             * server of the list. */
            world_stop(w);
            list_for_each_safe(pos, tmp, &w->servers[SV_IDLE])
            {
                struct server *s = container_of(pos, struct server, node);
                if (s->pool)
                    pool_trim(s); /* its stop nests in this one */
            }
            world_start(w);
        }
    }
    pool_keep_min(w);
    pool_check_reserve(w);
    /* Servers stuck connecting or logging in past server_connect_timeout. */
    for (int st = SV_CONNECTING; st <= SV_LOGIN; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            struct server *s = container_of(pos, struct server, node);
            int limit = s->pool ? w->cfg->server_connect_timeout : w->cfg->health_check_timeout;
            if (now - s->connected_at > limit)
                server_close_by(s, EVIDENCE_FAILURE, "connect timeout");
        }
    }
    if (w->shutting_down || w->handing_over)
        worker_schedule_reap(w);
}

int worker_tls_build(const struct config *cfg, tls_ctx **client, tls_ctx **server, char *err,
                     size_t errlen)
{
    *client = *server = NULL;
    char why[400];
    /* prefer (the default) without a certificate answers 'N', as before TLS existed. */
    if (cfg->client_tls_sslmode != TLS_DISABLE && *cfg->client_tls_cert_file &&
        *cfg->client_tls_key_file) {
        struct tls_settings ts = {
            .mode = cfg->client_tls_sslmode,
            .cert_file = cfg->client_tls_cert_file,
            .key_file = cfg->client_tls_key_file,
            .ca_file = cfg->client_tls_ca_file,
            .protocols = cfg->client_tls_protocols,
            .ciphers = cfg->client_tls_ciphers,
        };
        *client = tls_ctx_new(&ts, 1, why, sizeof(why));
        if (!*client) {
            snprintf(err, errlen, "client TLS: %s", why);
            return -1;
        }
    }
    if (cfg->server_tls_sslmode != TLS_DISABLE) {
        struct tls_settings ts = {
            .mode = cfg->server_tls_sslmode,
            .cert_file = cfg->server_tls_cert_file,
            .key_file = cfg->server_tls_key_file,
            .ca_file = cfg->server_tls_ca_file,
            .protocols = cfg->server_tls_protocols,
            .ciphers = cfg->server_tls_ciphers,
        };
        *server = tls_ctx_new(&ts, 0, why, sizeof(why));
        if (!*server) {
            snprintf(err, errlen, "server TLS: %s", why);
            tls_ctx_free(*client);
            *client = NULL;
            return -1;
        }
    }
    return 0;
}

/* What every loop has of its own: lists, event base, buffers, deferred work, timers. */
static int loop_init(struct worker *w, struct config *cfg)
{
    w->spare_fd = -1;
    w->cfg = cfg;
    w->session = &session_hooks;
    w->reload = worker_reload;
    w->begin_shutdown = worker_begin_shutdown;
    for (int i = 0; i < CL_NSTATES; i++)
        list_init(&w->clients[i]);
    for (int i = 0; i < SV_NSTATES; i++)
        list_init(&w->servers[i]);
    list_init(&w->pools);
    list_init(&w->stats_kept);
    list_init(&w->cancels);
    list_init(&w->authq);
    w->base = event_base_new();
    if (!w->base)
        return -1;
    /* Nameservers from resolv.conf; numeric hosts need none and are resolved at once. */
    w->dns = evdns_base_new(w->base, EVDNS_BASE_INITIALIZE_NAMESERVERS);
    if (!w->dns)
        w->dns = evdns_base_new(w->base, 0);
    if (conn_loop_init(&w->loop, w->base, w->dns) < 0 || defer_init(&w->defer, w->base) < 0)
        return -1;
    w->loop.defer = &w->defer;
    w->reaper = event_new(w->base, -1, 0, reap_cb, w);
    w->tick = event_new(w->base, -1, EV_PERSIST, tick_cb, w);
    w->park = event_new(w->base, -1, 0, park_cb, w);
    w->poke = event_new(w->base, -1, 0, poke_cb, w);
    w->halt = event_new(w->base, -1, 0, halt_cb, w);
    if (!w->reaper || !w->tick || !w->park || !w->poke || !w->halt)
        return -1;
    struct timeval tv = {0, 100 * 1000};
    event_add(w->tick, &tv);
    w->next_cancel_pid = (uint32_t)(now_ms() & 0x3fffffff) | 1;
    return 0;
}

/* A worker of another thread shares what there is one of: the configuration, auth file, hba,
 * TLS contexts (OpenSSL's are safe to share), topology, failover and admin state. Called
 * again after a reload replaced some of them. */
static void share_with(struct worker *w, const struct worker *w0)
{
    w->cfg = w0->cfg;
    w->users = w0->users;
    w->hba = w0->hba;
    w->client_tls = w0->client_tls;
    w->server_tls = w0->server_tls;
    w->topo = w0->topo;
    w->fo = w0->fo;
    w->admin = w0->admin;
}

static void share_all(struct worker *w0)
{
    for (int i = 1; i < w0->world->n; i++)
        share_with(w0->world->workers[i], w0);
}

int worker_init(struct worker *w, struct config *cfg)
{
    memset(w, 0, sizeof(*w));
    int n = config_workers(cfg);
    /* libevent's locks, so that another thread may wake a loop (event_active); not needed,
     * and not paid for, with one worker. */
    if (n > 1 && evthread_use_pthreads() < 0) {
        log_error("workers = %d: libevent has no thread support", n);
        return -1;
    }
    /* The process's workers; index 0 is the caller's (the main thread's). */
    struct world *wd = calloc(1, sizeof(*wd));
    if (!wd || world_init(wd, n) < 0) {
        free(wd);
        return -1;
    }
    wd->workers[0] = w;
    w->world = wd;
    w->index = 0;
    if (loop_init(w, cfg) < 0)
        return -1;
    w->users = calloc(1, sizeof(*w->users));
    if (!w->users)
        return -1;
    char err[512];
    if (worker_tls_build(cfg, &w->client_tls, &w->server_tls, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return -1;
    }
    if (userlist_load(cfg->auth_file, w->users, err, sizeof(err)) < 0) {
        if (cfg->auth_type != AUTH_TRUST) {
            log_error("%s", err);
            return -1;
        }
        log_warn("%s (auth_type is trust: continuing without passwords)", err);
    }
    if (worker_hba_load(cfg, &w->hba, err, sizeof(err)) < 0) {
        log_error("%s", err);
        return -1;
    }
    if (failover_init(w) < 0 || planned_init(w) < 0 || admin_init(w) < 0 ||
        topology_init(w, &topology_hooks) < 0)
        return -1;
    for (int i = 1; i < n; i++) {
        struct worker *p = calloc(1, sizeof(*p));
        if (!p)
            return -1;
        wd->workers[i] = p;
        p->world = wd;
        p->index = i;
        if (loop_init(p, cfg) < 0)
            return -1;
        share_with(p, w);
    }
    return 0;
}

/* A worker's thread: its loop until the process stops. Signals go to the main thread. */
static void *thread_main(void *arg)
{
    struct worker *w = arg;
    event_base_dispatch(w->base);
    world_leave(w);
    sql_classify_drop_cache(); /* this thread's (its parser memory goes with the thread) */
    return NULL;
}

int worker_start_threads(struct worker *w)
{
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    int r = 0;
    for (int i = 1; i < w->world->n; i++) {
        struct worker *p = w->world->workers[i];
        world_enter(p);
        if (pthread_create(&p->thread, NULL, thread_main, p) != 0) {
            log_error("cannot start worker %d: %s", i, strerror(errno));
            world_leave(p);
            r = -1;
            break;
        }
        p->started = 1;
    }
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (w->world->n > 1 && r == 0)
        log_info("%d workers (event loops, one thread each)", w->world->n);
    return r;
}

void worker_stop_all(struct worker *w)
{
    for (int i = 1; i < w->world->n; i++)
        event_active(w->world->workers[i]->halt, EV_READ, 0);
}

void worker_join_threads(struct worker *w)
{
    world_leave(w);
    for (int i = 1; i < w->world->n; i++) {
        struct worker *p = w->world->workers[i];
        if (p->started)
            pthread_join(p->thread, NULL);
    }
}

/* Accepting again after a pause for want of file descriptors; the spare one is taken back
 * first if a descriptor was freed meanwhile. */
static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->spare_fd < 0)
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i])
            evconnlistener_enable(w->listeners[i]);
        if (w->unix_listeners[i])
            evconnlistener_enable(w->unix_listeners[i]);
    }
}

/*
 * accept() failed for another reason than "try again", typically EMFILE/ENFILE. The pending
 * connection keeps the listener readable, so without this libevent would call accept() again
 * at every loop turn: 100 % CPU and a log line each time. Pause accepting for 100 ms instead
 * (the connections wait in the backlog), and give the descriptor kept spare for this to one
 * of them: an operator's admin console gets in, anyone else gets 53300 at once rather than a
 * silent wait (PgBouncer pauses the same way; the spare descriptor is pgstay's addition).
 */
static void accept_error_cb(struct evconnlistener *l, void *arg)
{
    struct listen_ctx *ctx = arg;
    struct worker *w = ctx->w;
    int err = EVUTIL_SOCKET_ERROR();
    if (now_ms() - w->fd_short_logged >= 1000) {
        log_warn("accept failed: %s: accepting paused for 100 ms%s", strerror(err),
                 w->spare_fd >= 0 ? "; the spare descriptor takes one connection (admin only)"
                                  : "");
        w->fd_short_logged = now_ms();
    }
    if (w->spare_fd >= 0 && (err == EMFILE || err == ENFILE)) {
        close(w->spare_fd);
        w->spare_fd = -1;
        struct sockaddr_storage ss;
        socklen_t len = sizeof(ss);
        int fd = accept4(evconnlistener_get_fd(l), (struct sockaddr *)&ss, &len,
                         SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            client_accept_fd(ctx, fd, (struct sockaddr *)&ss, (int)len, 1);
    }
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i])
            evconnlistener_disable(w->listeners[i]);
        if (w->unix_listeners[i])
            evconnlistener_disable(w->unix_listeners[i]);
    }
    struct timeval tv = {0, 100 * 1000};
    evtimer_add(w->accept_resume, &tv);
}

static struct evconnlistener *listen_on(struct worker *w, const char *addr, int port, int role)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    socklen_t len;
    struct sockaddr_in *sin = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        len = sizeof(*sin);
    } else if (inet_pton(AF_INET6, addr, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        len = sizeof(*sin6);
    } else if (strcmp(addr, "*") == 0) {
        sin->sin_family = AF_INET;
        sin->sin_addr.s_addr = htonl(INADDR_ANY);
        sin->sin_port = htons((uint16_t)port);
        len = sizeof(*sin);
    } else {
        log_error("listen_addr \"%s\" is not a numeric address", addr);
        return NULL;
    }
    w->listen_ctx[role].w = w;
    w->listen_ctx[role].role = role;
    struct evconnlistener *l = evconnlistener_new_bind(
        w->base, client_accept, &w->listen_ctx[role],
        LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC |
            (w->cfg->so_reuseport ? LEV_OPT_REUSEABLE_PORT : 0),
        w->cfg->listen_backlog,
        (struct sockaddr *)&ss, (int)len);
    if (!l) {
        log_error("cannot listen on %s:%d: %s", addr, port, strerror(errno));
        return NULL;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    log_info("listening on %s:%d (%s endpoint)", addr, port, role == ROLE_WRITER ? "writer" : "reader");
    return l;
}

/* unix_socket_mode and unix_socket_group on a socket file: who may connect at all (0777 by
 * default, as in PgBouncer: then auth_type decides). 0, or -1 (logged) when the group cannot be
 * set. */
static int unix_perms(struct worker *w, const char *path)
{
    const char *group = w->cfg->unix_socket_group;
    if (group && *group) {
        struct group *gr = getgrnam(group);
        if (!gr || chown(path, (uid_t)-1, gr->gr_gid) < 0) {
            log_error("unix_socket_group \"%s\": %s", group,
                      gr ? strerror(errno) : "no such group");
            return -1;
        }
    }
    if (chmod(path, (mode_t)config_unix_mode(w->cfg)) < 0)
        log_warn("unix_socket_mode: chmod %s: %s", path, strerror(errno));
    return 0;
}

/* Where libpq looks for an endpoint's unix socket: dir/.s.PGSQL.port. 0, or -1 (logged) when
 * the path does not fit a sockaddr_un. */
static int unix_path(const struct config *cfg, int role, struct sockaddr_un *sun)
{
    memset(sun, 0, sizeof(*sun));
    sun->sun_family = AF_UNIX;
    int port = role == ROLE_WRITER ? cfg->listen_port : cfg->readonly_port;
    int n = snprintf(sun->sun_path, sizeof(sun->sun_path), "%s/.s.PGSQL.%d", cfg->unix_socket_dir,
                     port);
    if (n < 0 || (size_t)n >= sizeof(sun->sun_path)) {
        log_error("unix_socket_dir \"%s\": the socket path is too long", cfg->unix_socket_dir);
        return -1;
    }
    return 0;
}

/* An endpoint as the unix socket dir/.s.PGSQL.port, where libpq looks for it (psql -h dir -p
 * port). A socket file left by a process that died is replaced; one that answers is not. */
/* A unix listener, bound here or taken over, starts serving role: the accept error callback (out
 * of descriptors: as the TCP ones), the configured mode and group on its file, and the path
 * kept to remove at exit. On failure l is freed. */
static int unix_listener_use(struct worker *w, int role, struct evconnlistener *l, const char *path,
                             const char *how)
{
    evconnlistener_set_error_cb(l, accept_error_cb);
    if (unix_perms(w, path) < 0) {
        evconnlistener_free(l);
        return -1;
    }
    w->unix_listeners[role] = l;
    w->unix_paths[role] = strdup(path);
    log_info("listening on %s (%s endpoint)%s", path, role == ROLE_WRITER ? "writer" : "reader",
             how);
    return 0;
}

static int listen_on_unix(struct worker *w, int role)
{
    struct sockaddr_un sun;
    if (unix_path(w->cfg, role, &sun) < 0)
        return -1;
    int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe >= 0) {
        int live = connect(probe, (struct sockaddr *)&sun, sizeof(sun)) == 0;
        close(probe);
        if (live) {
            log_error("cannot listen on %s: another process listens there", sun.sun_path);
            return -1;
        }
    }
    unlink(sun.sun_path); /* stale, from a process that did not remove it */
    w->listen_ctx[role].w = w;
    w->listen_ctx[role].role = role;
    struct evconnlistener *l = evconnlistener_new_bind(
        w->base, client_accept, &w->listen_ctx[role], LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC,
        w->cfg->listen_backlog, (struct sockaddr *)&sun, (int)sizeof(sun));
    if (!l) {
        log_error("cannot listen on %s: %s", sun.sun_path, strerror(errno));
        return -1;
    }
    if (unix_listener_use(w, role, l, sun.sun_path, "") < 0) {
        unlink(sun.sun_path);
        return -1;
    }
    return 0;
}

static void stop_unix(struct worker *w)
{
    for (int i = 0; i < 2; i++) {
        if (w->unix_listeners[i]) {
            evconnlistener_free(w->unix_listeners[i]);
            w->unix_listeners[i] = NULL;
        }
        if (w->unix_paths[i]) {
            unlink(w->unix_paths[i]);
            free(w->unix_paths[i]);
            w->unix_paths[i] = NULL;
        }
    }
}

static int listen_unix(struct worker *w)
{
    const char *dir = w->cfg->unix_socket_dir;
    if (!dir || !*dir)
        return 0;
    /* What was taken over from an old process (worker_listen_unix_fd) is not bound again. */
    if (!w->unix_listeners[ROLE_WRITER] && listen_on_unix(w, ROLE_WRITER) < 0)
        return -1;
    if (w->cfg->readonly_port > 0 && !w->unix_listeners[ROLE_READER] &&
        listen_on_unix(w, ROLE_READER) < 0)
        return -1;
    return 0;
}

/* The other workers accept on the same sockets: each loop watches a duplicate of each listening
 * descriptor, and the loop that wakes first accepts. One socket for all rather than one
 * SO_REUSEPORT socket per worker, because pgstay -R hands a listening socket over with its
 * queue of connections: with a socket per worker, what was queued on those not handed over
 * would be reset. */
static struct evconnlistener *listen_dup(struct worker *p, struct evconnlistener *l, int role)
{
    int fd = fcntl((int)evconnlistener_get_fd(l), F_DUPFD_CLOEXEC, 0);
    if (fd < 0)
        return NULL;
    p->listen_ctx[role].w = p;
    p->listen_ctx[role].role = role;
    struct evconnlistener *d =
        evconnlistener_new(p->base, client_accept, &p->listen_ctx[role],
                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    if (!d) {
        close(fd);
        return NULL;
    }
    evconnlistener_set_error_cb(d, accept_error_cb);
    return d;
}

static void peer_unlisten(struct worker *p)
{
    for (int i = 0; i < 2; i++) {
        if (p->listeners[i])
            evconnlistener_free(p->listeners[i]);
        if (p->unix_listeners[i])
            evconnlistener_free(p->unix_listeners[i]);
        p->listeners[i] = p->unix_listeners[i] = NULL;
    }
    if (p->accept_resume)
        event_free(p->accept_resume);
    p->accept_resume = NULL;
    if (p->spare_fd >= 0)
        close(p->spare_fd);
    p->spare_fd = -1;
}

/* The other workers listen on what w (the first) listens on now; before their threads start,
 * or with the world stopped. */
static int peers_listen(struct worker *w)
{
    for (int i = 1; i < w->world->n; i++) {
        struct worker *p = w->world->workers[i];
        peer_unlisten(p);
        p->accept_resume = evtimer_new(p->base, accept_resume_cb, p);
        p->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        for (int role = 0; role < 2; role++) {
            if (w->listeners[role] &&
                !(p->listeners[role] = listen_dup(p, w->listeners[role], role)))
                return -1;
            if (w->unix_listeners[role] &&
                !(p->unix_listeners[role] = listen_dup(p, w->unix_listeners[role], role)))
                return -1;
        }
    }
    return 0;
}

int worker_listen(struct worker *w)
{
    if (!w->accept_resume) {
        w->accept_resume = evtimer_new(w->base, accept_resume_cb, w);
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    /* What was taken over from an old process (worker_listen_fd) is not bound again. */
    if (!w->listeners[0]) {
        w->listeners[0] = listen_on(w, w->cfg->listen_addr, w->cfg->listen_port, ROLE_WRITER);
        if (!w->listeners[0])
            return -1;
    }
    if (w->cfg->readonly_port > 0 && !w->listeners[1]) {
        w->listeners[1] = listen_on(w, w->cfg->listen_addr, w->cfg->readonly_port, ROLE_READER);
        if (!w->listeners[1])
            return -1;
    }
    if (listen_unix(w) < 0 || peers_listen(w) < 0)
        return -1;
    return metrics_fd(w) >= 0 ? 0 : metrics_start(w);
}

int worker_listen_fd(struct worker *w, int fd, int role)
{
    if (role < 0 || role > 1 || w->listeners[role]) {
        close(fd);
        return -1;
    }
    evutil_make_socket_nonblocking(fd);
    w->listen_ctx[role].w = w;
    w->listen_ctx[role].role = role;
    /* Backlog 0: the socket listens already, and its queue of connections comes with it. */
    struct evconnlistener *l = evconnlistener_new(w->base, client_accept, &w->listen_ctx[role],
                                                  LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0,
                                                  fd);
    if (!l) {
        log_error("cannot take over a listening socket: %s", strerror(errno));
        close(fd);
        return -1;
    }
    evconnlistener_set_error_cb(l, accept_error_cb);
    w->listeners[role] = l;
    log_info("listening on the %s endpoint taken over from the old process",
             role == ROLE_WRITER ? "writer" : "reader");
    return 0;
}

int worker_listener_fd(struct worker *w, int role)
{
    return w->listeners[role] ? (int)evconnlistener_get_fd(w->listeners[role]) : -1;
}

int worker_listen_unix_fd(struct worker *w, int fd, int role)
{
    struct sockaddr_un got, want;
    socklen_t len = sizeof(got);
    memset(&got, 0, sizeof(got));
    const char *dir = w->cfg->unix_socket_dir;
    if (role < 0 || role > 1 || w->unix_listeners[role]) {
        close(fd);
        return -1;
    }
    /* The old process's socket serves here only where this configuration puts that endpoint
     * (unix_socket_dir or the port may have changed): otherwise it is let go, its file left
     * to the old process, and worker_listen binds the new path. */
    if (!dir || !*dir || (role == ROLE_READER && w->cfg->readonly_port <= 0) ||
        getsockname(fd, (struct sockaddr *)&got, &len) < 0 || got.sun_family != AF_UNIX ||
        unix_path(w->cfg, role, &want) < 0 || strcmp(got.sun_path, want.sun_path) != 0) {
        log_info("the old process's unix socket %s is not this configuration's: not taken over",
                 got.sun_family == AF_UNIX && got.sun_path[0] ? got.sun_path : "(unknown)");
        close(fd);
        return 1;
    }
    evutil_make_socket_nonblocking(fd);
    w->listen_ctx[role].w = w;
    w->listen_ctx[role].role = role;
    struct evconnlistener *l =
        evconnlistener_new(w->base, client_accept, &w->listen_ctx[role],
                           LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 0, fd);
    if (!l) {
        log_error("cannot take over the unix socket %s: %s", want.sun_path, strerror(errno));
        close(fd);
        return -1;
    }
    /* The file stays where it is (clients connect to it all along); this configuration's mode
     * and group apply to it as to a socket bound here. */
    return unix_listener_use(w, role, l, want.sun_path, ", taken over from the old process");
}

int worker_unix_listener_fd(struct worker *w, int role)
{
    return w->unix_listeners[role] ? (int)evconnlistener_get_fd(w->unix_listeners[role]) : -1;
}

void worker_unix_handed_over(struct worker *w, int role)
{
    /* The new process listens on it and removes it at its own exit: not unlinked here. */
    free(w->unix_paths[role]);
    w->unix_paths[role] = NULL;
}

void worker_stop_listening(struct worker *w)
{
    for (int i = 1; i < w->world->n && w->index == 0; i++)
        if (w->world->workers[i])
            peer_unlisten(w->world->workers[i]);
    takeover_keep_unix_files(w);
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i]) {
            evconnlistener_free(w->listeners[i]);
            w->listeners[i] = NULL;
        }
    }
    stop_unix(w);
    if (w->accept_resume) {
        event_free(w->accept_resume);
        w->accept_resume = NULL;
    }
    if (w->spare_fd >= 0)
        close(w->spare_fd);
    w->spare_fd = -1;
}

/* SIGTERM or SHUTDOWN: every worker stops accepting and drains (the world stopped, from any
 * worker). */
void worker_begin_shutdown(struct worker *caller)
{
    struct worker *w = caller->world->workers[0];
    if (w->shutting_down)
        return;
    world_stop(caller);
    notify_stopping();
    worker_stop_listening(w);
    log_info("shutdown requested: no new connections, waiting up to %d ms for %d clients",
             w->cfg->shutdown_timeout, live_clients(w));
    for (int k = 0; k < w->world->n; k++) {
        struct worker *x = w->world->workers[k];
        x->shutting_down = 1;
        x->shutdown_deadline = now_ms() + x->cfg->shutdown_timeout;
        /* Clients still logging in have nothing to finish. */
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &x->clients[CL_LOGIN])
        {
            client_close(container_of(pos, struct client, node), SQLSTATE_ADMIN_SHUTDOWN,
                         "pgstay is shutting down");
        }
        worker_schedule_reap(x);
    }
    world_start(caller);
}

static int reload(struct worker *w);

/* What the unix sockets are made from, to tell whether a reload changed it. */
static void unix_settings(const struct config *cfg, char *out, size_t cap)
{
    snprintf(out, cap, "%s\n%s\n%s", cfg->unix_socket_dir, cfg->unix_socket_mode,
             cfg->unix_socket_group);
}
int worker_hba_load(const struct config *cfg, struct hba **out, char *err, size_t errlen)
{
    *out = NULL;
    if (!cfg->auth_hba_file || !*cfg->auth_hba_file)
        return 0;
    struct hba *h = calloc(1, sizeof(*h));
    if (!h) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    if (hba_load(cfg->auth_hba_file, h, err, errlen) < 0) {
        free(h);
        return -1;
    }
    *out = h;
    return 0;
}

void worker_hba_free(struct hba *h)
{
    if (h) {
        hba_free(h);
        free(h);
    }
}

/* SIGHUP or RELOAD, from any worker: the new configuration is read and checked first, then
 * applied with the world stopped, so that every worker switches to it between two of its
 * callbacks (a safe point) and none sees it half applied. */
int worker_reload(struct worker *caller)
{
    /* systemd hears of the reload whether it succeeds or not: the running config stays in
     * place on failure, and pgstay is ready again either way. */
    notify_reloading();
    world_stop(caller);
    int r = reload(caller->world->workers[0]);
    world_start(caller);
    notify_ready();
    return r;
}

static int reload(struct worker *w)
{
    char err[512];
    struct config *fresh = calloc(1, sizeof(*fresh));
    if (!fresh)
        return -1;
    if (config_load(w->cfg->path, fresh, err, sizeof(err)) < 0) {
        log_error("reload failed, keeping the running configuration: %s", err);
        free(fresh);
        return -1;
    }
    struct userlist ul;
    memset(&ul, 0, sizeof(ul));
    if (userlist_load(fresh->auth_file, &ul, err, sizeof(err)) < 0 && fresh->auth_type != AUTH_TRUST) {
        log_error("reload failed, keeping the running configuration: %s", err);
        config_free(fresh);
        free(fresh);
        return -1;
    }
    /* The new files are read now: a certificate that cannot be loaded keeps everything as it
     * was (PostgreSQL keeps its old SSL context the same way). */
    tls_ctx *ctls, *stls;
    if (worker_tls_build(fresh, &ctls, &stls, err, sizeof(err)) < 0) {
        log_error("reload failed, keeping the running configuration: %s", err);
        userlist_free(&ul);
        config_free(fresh);
        free(fresh);
        return -1;
    }
    /* An hba file that does not parse keeps the running rules (as PostgreSQL does): a typo
     * must not open or close the door. */
    struct hba *hba;
    if (worker_hba_load(fresh, &hba, err, sizeof(err)) < 0) {
        log_error("reload failed, keeping the running configuration: %s", err);
        tls_ctx_free(ctls);
        tls_ctx_free(stls);
        userlist_free(&ul);
        config_free(fresh);
        free(fresh);
        return -1;
    }
    worker_hba_free(w->hba);
    w->hba = hba;
    char old_unix[1024], new_unix[1024];
    unix_settings(w->cfg, old_unix, sizeof(old_unix));
    /* [nodes]: a removed node drains and a new one is probed (topology_sync_nodes below), but
     * the writer is never removed by a reload: that change is refused, the rest applies. */
    if (topology_nodes_check(w, fresh->nodes, fresh->n_nodes, err, sizeof(err)) < 0) {
        log_error("reload: %s", err);
        memcpy(fresh->nodes, w->cfg->nodes, sizeof(fresh->nodes));
        fresh->n_nodes = w->cfg->n_nodes;
    }
    config_apply_reload(w->cfg, fresh);
    free(fresh);
    topology_sync_nodes(w);
    /* unix_socket_dir, _mode or _group changed: the sockets are made again (connected clients
     * stay where they are). */
    unix_settings(w->cfg, new_unix, sizeof(new_unix));
    if (strcmp(old_unix, new_unix) != 0 && !w->shutting_down) {
        stop_unix(w);
        if (listen_unix(w) < 0)
            log_error("unix_socket_dir \"%s\": not listening on unix sockets until the next "
                      "reload",
                      w->cfg->unix_socket_dir);
        if (peers_listen(w) < 0)
            log_error("reload: the other workers cannot listen on the new sockets");
    }
    userlist_keep_mock(&ul, w->users);
    userlist_free(w->users);
    *w->users = ul;
    tls_ctx_free(w->client_tls);
    tls_ctx_free(w->server_tls);
    w->client_tls = ctls;
    w->server_tls = stls;
    log_verbosity = w->cfg->verbose > 0 ? LOG_DEBUG : LOG_INFO;
    /* logfile: opened again (a rotated file is let go, a new name is taken) */
    char lerr[300];
    if (log_to_file(w->cfg->logfile, lerr, sizeof(lerr)) < 0)
        log_error("%s: keeping the current log", lerr);
    logsys_config(w->cfg->syslog, w->cfg->syslog_ident, w->cfg->syslog_facility);
    share_all(w);
    log_info("configuration reloaded from %s", w->cfg->path);
    kick_all_workers(w);
    return 0;
}

/* What every worker has of its own at exit: clients, servers, pools, kept counters. */
static void free_sessions(struct worker *w)
{
    for (int st = 0; st < CL_NSTATES; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->clients[st])
        {
            client_free(container_of(pos, struct client, node));
        }
    }
    for (int st = 0; st < SV_NSTATES; st++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[st])
        {
            server_free(container_of(pos, struct server, node));
        }
    }
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->pools)
    {
        pool_free(container_of(pos, struct pool, node));
    }
    stats_free_kept(w);
}

/* The loop itself, once its objects are gone (loop_init's counterpart). Bufferevents with
 * deferred callbacks finish freeing themselves in the last turn. */
static void free_loop(struct worker *w)
{
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    conn_loop_free(&w->loop);
    defer_free(&w->defer);
    event_free(w->reaper);
    event_free(w->tick);
    event_free(w->park);
    event_free(w->poke);
    event_free(w->halt);
    if (w->dns)
        evdns_base_free(w->dns, 0);
    event_base_free(w->base);
}

/* A worker of another thread, once joined: its own objects only (the shared ones are w0's). */
static void peer_free(struct worker *w)
{
    peer_unlisten(w);
    free_sessions(w);
    cancel_free_all(w);
    authq_free(w);
    free_loop(w);
    free(w);
}

void worker_free(struct worker *w)
{
    /* The other workers first: their servers and pools point into the shared topology. */
    for (int i = 1; i < w->world->n; i++)
        if (w->world->workers[i]) {
            peer_free(w->world->workers[i]);
            w->world->workers[i] = NULL;
        }
    /* From here this loop is the only one: what walks every worker (a last reap running a
     * takeover's sweep) sees it alone. */
    w->world->n = 1;
    worker_stop_listening(w);
    takeover_free(w);
    topology_free(w);
    free_sessions(w);
    metrics_stop(w);
    admin_free(w);
    planned_free(w);
    failover_free(w);
    cancel_free_all(w);
    sql_classify_cleanup();
    if (w->users) {
        userlist_free(w->users);
        free(w->users);
    }
    worker_hba_free(w->hba);
    w->hba = NULL;
    authq_free(w);
    tls_ctx_free(w->client_tls);
    tls_ctx_free(w->server_tls);
    free_loop(w);
    world_free(w->world);
    free(w->world);
    w->world = NULL;
}
