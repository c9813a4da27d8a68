/* Per-loop state: lists by state, deferred frees, housekeeping tick, listeners, reload. It sits
 * above every other layer (it creates and frees them all), so nothing below includes it. */
#include "app/worker.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/dns.h>

#include "admin/admin.h"
#include "admin/metrics.h"
#include "client/authquery.h"
#include "client/client.h"
#include "config/config.h"
#include "config/hba.h"
#include "config/userlist.h"
#include "core/log.h"
#include "failover/failover.h"
#include "pool/backoff.h"
#include "pool/pool.h"
#include "pool/stats.h"
#include "proto/proto.h"
#include "proto/sqlclass.h"
#include "server/server.h"
#include "topology/topology.h"

/* The upward calls of the layers below, wired here because the program is the one place that
 * knows every layer (see tools/layers.py). Static: the same for every loop. */
static const struct session_hooks session_hooks = {
    .holding = failover_holding,
    .paused = failover_paused,
    .note_held = failover_note_held,
    .note_served = failover_note_served,
    .note_failed_in_flight = failover_note_failed_in_flight,
    .note_timed_out = failover_note_timed_out,
    .admin_welcome = admin_welcome,
    .admin_process = admin_process,
    .db_disabled = admin_db_disabled,
};

static const struct topology_hooks topology_hooks = {
    .writer_lost = failover_writer_lost,
    .writer_found = failover_writer_found,
    .open_ahead = failover_open_ahead,
    .kick_all = pool_kick_all,
    .node_dropped = pool_drop_node,
    .backoff_due = login_backoff_due,
    .backoff_free = login_backoff_free,
};

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
    if (w->shutting_down) {
        int live = 0;
        for (int i = 0; i < CL_CLOSING; i++)
            live += w->n_clients[i];
        if (live == 0 || now_ms() >= w->shutdown_deadline) {
            log_info("shutdown: %d clients left, exiting", live);
            event_base_loopexit(w->base, NULL);
        }
    }
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    int64_t now = now_ms();
    client_check_timeouts(w, now);
    pool_gc(w);
    admin_check_pause(w);
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
     * (PgBouncer's keys: backends do not live forever, a pool shrinks after a burst). */
    if (w->cfg->server_idle_timeout > 0 || w->cfg->server_lifetime > 0) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->servers[SV_IDLE])
        {
            struct server *s = container_of(pos, struct server, node);
            if (!s->pool)
                continue;
            if (w->cfg->server_idle_timeout > 0 && now - s->last_used > w->cfg->server_idle_timeout &&
                s->pool->n_servers > w->cfg->min_pool_size)
                server_close(s, "server_idle_timeout");
            else if (w->cfg->server_lifetime > 0 && now - s->connected_at > w->cfg->server_lifetime)
                server_close(s, "server_lifetime");
        }
    }
    pool_keep_min(w);
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
    if (w->shutting_down)
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

int worker_init(struct worker *w, struct config *cfg)
{
    memset(w, 0, sizeof(*w));
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
    w->reaper = event_new(w->base, -1, 0, reap_cb, w);
    w->tick = event_new(w->base, -1, EV_PERSIST, tick_cb, w);
    struct timeval tv = {0, 100 * 1000};
    event_add(w->tick, &tv);
    w->next_cancel_pid = (uint32_t)(now_ms() & 0x3fffffff) | 1;
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
    if (failover_init(w) < 0 || admin_init(w) < 0 || topology_init(w, &topology_hooks) < 0)
        return -1;
    return 0;
}

/* Accepting again after a pause for want of file descriptors; the spare one is taken back
 * first if a descriptor was freed meanwhile. */
static void accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    if (w->spare_fd < 0)
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (int i = 0; i < 2; i++)
        if (w->listeners[i])
            evconnlistener_enable(w->listeners[i]);
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
    for (int i = 0; i < 2; i++)
        if (w->listeners[i])
            evconnlistener_disable(w->listeners[i]);
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

int worker_listen(struct worker *w)
{
    if (!w->accept_resume) {
        w->accept_resume = evtimer_new(w->base, accept_resume_cb, w);
        w->spare_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
    }
    w->listeners[0] = listen_on(w, w->cfg->listen_addr, w->cfg->listen_port, ROLE_WRITER);
    if (!w->listeners[0])
        return -1;
    if (w->cfg->readonly_port > 0) {
        w->listeners[1] = listen_on(w, w->cfg->listen_addr, w->cfg->readonly_port, ROLE_READER);
        if (!w->listeners[1])
            return -1;
    }
    return metrics_start(w);
}

void worker_stop_listening(struct worker *w)
{
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i]) {
            evconnlistener_free(w->listeners[i]);
            w->listeners[i] = NULL;
        }
    }
    if (w->accept_resume) {
        event_free(w->accept_resume);
        w->accept_resume = NULL;
    }
    if (w->spare_fd >= 0)
        close(w->spare_fd);
    w->spare_fd = -1;
}

void worker_begin_shutdown(struct worker *w)
{
    if (w->shutting_down)
        return;
    w->shutting_down = 1;
    w->shutdown_deadline = now_ms() + w->cfg->shutdown_timeout;
    worker_stop_listening(w);
    int live = 0;
    for (int i = 0; i < CL_CLOSING; i++)
        live += w->n_clients[i];
    log_info("shutdown requested: no new connections, waiting up to %d ms for %d clients",
             w->cfg->shutdown_timeout, live);
    /* Clients still logging in have nothing to finish. */
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_LOGIN])
    {
        client_close(container_of(pos, struct client, node), SQLSTATE_ADMIN_SHUTDOWN,
                     "pgstay is shutting down");
    }
    worker_schedule_reap(w);
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

int worker_reload(struct worker *w)
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
    config_apply_reload(w->cfg, fresh);
    free(fresh);
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
    log_info("configuration reloaded from %s", w->cfg->path);
    pool_kick_all(w);
    return 0;
}

void worker_free(struct worker *w)
{
    worker_stop_listening(w);
    topology_free(w);
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
    metrics_stop(w);
    admin_free(w);
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
    /* Bufferevents with deferred callbacks finish freeing themselves in the loop. */
    event_base_loop(w->base, EVLOOP_NONBLOCK);
    conn_loop_free(&w->loop);
    defer_free(&w->defer);
    event_free(w->reaper);
    event_free(w->tick);
    if (w->dns)
        evdns_base_free(w->dns, 0);
    event_base_free(w->base);
}
