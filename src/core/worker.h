/* Per-event-loop state: everything a worker owns, so one loop per thread needs no rewrite.
 * Core knows nothing above it: the layers' own state hangs here by pointer only, and the
 * program (src/app/worker.c) creates, wires and frees it. */
#ifndef PGSTAY_CORE_WORKER_H
#define PGSTAY_CORE_WORKER_H

#include <stdint.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "core/clock.h"
#include "core/conn.h"
#include "core/defer.h"
#include "core/list.h"
#include "core/tls.h"
#include "core/world.h"

struct config;
struct userlist;
struct hba;
struct topology;
struct failover;
struct admin;
struct session_hooks;
struct takeover;

/* Client states: the list a client is on. */
enum client_state {
    CL_LOGIN,   /* startup packet and authentication */
    CL_WAITING, /* logged in, wants a server: pool full, or held while there is no writer */
    CL_ACTIVE,  /* linked to a server */
    CL_IDLE,    /* logged in, no server needed right now (session lost while idle, admin) */
    CL_CLOSING, /* freed at the end of this loop iteration */
    CL_NSTATES
};

/* Server states. */
enum server_state {
    SV_CONNECTING, /* TCP connect */
    SV_LOGIN,      /* startup and authentication */
    SV_IDLE,       /* in its pool, ready to lend */
    SV_SETUP,      /* lent; pgstay applies the client's session settings first */
    SV_ACTIVE,     /* lent to a client, traffic forwarded */
    SV_RESETTING,  /* server_reset_query running before going back to idle */
    SV_PROBE,      /* a topology probe connection, outside every pool */
    SV_CLOSING,
    SV_NSTATES
};

struct worker_stats {
    uint64_t clients_accepted;
    uint64_t clients_rejected;
    uint64_t servers_opened;
    uint64_t bytes_client_to_server;
    uint64_t bytes_server_to_client;
    uint64_t queries; /* requests (Query, Sync, FunctionCall) forwarded */
    uint64_t pins[16]; /* sessions pinned to their server, by enum pin_reason */
};

struct worker;

/* A listener's callback argument: whose loop, which endpoint. */
struct listen_ctx {
    struct worker *w;
    int role; /* enum endpoint_role */
};

struct worker {
    /* Its place among the process's workers (core/world.h): index 0 runs on the main thread
     * and owns what there is one of (topology probes, failover timers, the takeover socket,
     * /metrics, signals); the others run a loop each on their own thread. */
    int index;
    struct world *world;
    struct event *park; /* activated by a worker stopping the world (core/world.c) */
    struct event *poke; /* activated by another worker: a server it shares a limit with freed */
    struct event *halt; /* activated by the main thread at exit: this loop ends */
    pthread_t thread;
    int started; /* its thread runs (index > 0) */
    struct event_base *base;
    struct evdns_base *dns;
    struct conn_loop loop; /* the connection layer's buffers, flush queue and clock */
    struct config *cfg;
    struct userlist *users; /* auth_file; replaced whole on reload */
    struct hba *hba;        /* auth_hba_file's rules; NULL when none is set; replaced on reload */
    /* TLS contexts (NULL: TLS off on that side); a reload replaces them, and connections keep
     * the one they were made with (OpenSSL counts references). */
    tls_ctx *client_tls;
    tls_ctx *server_tls;
    struct list clients[CL_NSTATES];
    int n_clients[CL_NSTATES];
    struct list servers[SV_NSTATES];
    int n_servers[SV_NSTATES];
    struct list pools;
    struct list stats_kept; /* counters of freed pools (pool/stats.c) */
    struct list cancels; /* CancelRequests on their way to a server (pool.c) */
    struct list authq;   /* auth_query's secrets, per user (client/authquery.c) */
    struct evconnlistener *listeners[2]; /* writer, reader endpoint */
    /* The same endpoints as unix sockets in unix_socket_dir (NULL: none), and their files,
     * removed when they close. */
    struct evconnlistener *unix_listeners[2];
    char *unix_paths[2];
    struct listen_ctx listen_ctx[2];
    /* Out of file descriptors: accepting pauses (accept_resume re-arms it) and the descriptor
     * kept spare takes one connection, so the admin console stays reachable (app/worker.c). */
    int spare_fd;
    struct event *accept_resume;
    int64_t fd_short_logged; /* ms: the last "out of file descriptors" line (one a second) */
    struct event *reaper;                /* frees closing objects outside their callbacks */
    struct event *tick;                  /* 1 s housekeeping: timeouts */
    struct defer_queue defer;            /* work run once the current callbacks return */
    struct topology *topo;
    struct failover *fo;
    struct admin *admin; /* the console's own state: DISABLE, averages, /metrics (admin/) */
    /* What the session layer (client, server, pool) asks of the layers above it, set by the
     * program (src/app/worker.c) before anything runs: see struct session_hooks. */
    const struct session_hooks *session;
    uint64_t next_id;
    uint32_t next_cancel_pid;
    /* Cancel keys come from a batch of CSPRNG bytes: one RAND_bytes (and the getpid OpenSSL
     * makes to detect a fork) per 64 logins, not per login. */
    uint32_t cancel_keys[64];
    int n_cancel_keys;
    int shutting_down;      /* SIGTERM: accept nothing new, exit when clients are gone */
    /* pgstay -R took the listeners: each client that becomes idle goes to the new process,
     * the others finish here; exit when none is left (app/takeover.c). */
    int handing_over;
    struct takeover *tko; /* the takeover control socket, either side (app/takeover.c) */
    /* A cancel request for a key no client here holds: during a takeover the new process
     * passes it to the old one, which may still run that client's query. NULL: dropped. */
    void (*cancel_elsewhere)(struct worker *w, uint32_t pid, uint32_t key);
    int64_t shutdown_deadline;
    struct worker_stats stats;
    /* The program's control verbs, set by worker_init (src/app) so that the admin console (RELOAD,
     * SHUTDOWN), which sits below the program, can reach them. */
    int (*reload)(struct worker *w);
    void (*begin_shutdown)(struct worker *w);
};

/* A new client or server id, unique in the process: worker i of n numbers i, n + i, 2n + i... */
static inline uint64_t worker_new_id(struct worker *w)
{
    uint64_t n = ++w->next_id;
    return w->world && w->world->n > 1 ? n * (uint64_t)w->world->n + (uint64_t)w->index : n;
}

/* The worker whose client holds cancel key pid (see worker_cancel_pid). */
static inline struct worker *worker_of_cancel_pid(struct worker *w, uint32_t pid)
{
    if (!w->world || w->world->n == 1)
        return w;
    uint32_t i = pid % WORLD_MAX;
    return i < (uint32_t)w->world->n ? w->world->workers[i] : w;
}

/* A client's BackendKeyData pid: with several workers its low 6 bits name the worker, so that
 * a CancelRequest accepted by any worker reaches the right one. Positive, as a pid is. */
static inline uint32_t worker_cancel_pid(struct worker *w)
{
    uint32_t n = w->next_cancel_pid++;
    if (!w->world || w->world->n == 1)
        return n;
    return ((n & 0x00ffffffu) * WORLD_MAX + (uint32_t)w->index) & 0x7fffffffu;
}

/* Arrange for closing objects to be freed once the current callbacks return. The reaper event
 * and what it frees belong to the program (src/app/worker.c); core only activates it. */
static inline void worker_schedule_reap(struct worker *w)
{
    event_active(w->reaper, EV_TIMEOUT, 0);
}

#endif
