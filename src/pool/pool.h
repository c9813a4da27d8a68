/* Pools: server connections per (database, user, role); lending, waiting, reset, cancel. */
#ifndef PGSTAY_POOL_POOL_H
#define PGSTAY_POOL_POOL_H

#include "client/client.h"
#include "core/defer.h"
#include "core/list.h"
#include "pool/stats.h"
#include "server/server.h"

/* Startup-parameter sets remembered per pool for welcoming clients at once. */
#define POOL_WELCOMES 16

struct pool {
    struct list node; /* on w->pools */
    struct worker *w;
    char *database;
    char *user;
    int role;              /* enum endpoint_role */
    struct list idle;      /* servers ready to lend (SV_IDLE) */
    struct list waiting;   /* clients waiting for a server, in arrival order */
    struct deferred kick;  /* pool_kick queued: lending runs once the current callbacks return */
    int n_clients;         /* logged-in clients that use it: an unused empty pool is freed */
    int64_t empty_since;   /* when it last became unused and empty (0: in use): pool_gc */
    int n_servers;         /* every server of this pool, whatever its state (this worker's) */
    /* The same pool's servers in every worker (pool_size holds across workers), and those of
     * its database and its user (max_db_connections, max_user_connections): core/world.h. */
    struct world_count *share, *db_share, *user_share;
    int n_connecting;      /* in SV_CONNECTING or SV_LOGIN */
    int n_waiting;
    int n_checking;        /* servers running server_check_query for the waiting clients */
    int64_t last_login_error_at;
    /* ParameterStatus values of this pool's first server at login, before any client's
     * parameters: each client stores only its own differences, so an idle client that asked
     * for nothing costs no copy of them. */
    struct kvlist base;
    /* What a server reported (ParameterStatus) once set up for a client with given startup
     * parameters, by a hash of them: the next client with the same ones is welcomed from
     * this at once, with no server (only its first statement waits for one). */
    struct pool_welcome {
        uint64_t key;
        struct kvlist params;
    } welcomes[POOL_WELCOMES];
    int n_welcomes, next_welcome;
    /* Statements (by hash) some server of this pool prepared without error: a client's Parse
     * of one needs no server to be answered. */
    uint64_t *known;
    int n_known, cap_known;
    /* SCRAM pass-through: the ClientKey learnt from a client's proof, so pgstay can log in
     * with a SCRAM auth_file secret and no plain password. */
    unsigned char client_key[32];
    int have_client_key;
    struct pool_stats stats; /* SHOW STATS and /metrics (pool/stats.c) */
};

/* What differs between pool modes, as a table rather than ifs spread over the code. */
struct pool_mode_ops {
    const char *name;
    int reset_on_release; /* run server_reset_query when a client gives its server back */
    /* May the client's server go back to the pool now (at ReadyForQuery)? */
    int (*releasable)(const struct client *c);
};

extern const struct pool_mode_ops pool_modes[2];
#define POOL_OPS(w) (&pool_modes[(w)->cfg->pool_mode])

/* After a ReadyForQuery reached the client: in transaction mode its server goes back. */
void pool_after_ready(struct client *c);

/* The parameter statuses to welcome a client whose startup parameters hash to key (kv_hash),
 * NULL if unknown. */
const struct kvlist *pool_welcome_find(struct pool *p, uint64_t key);
void pool_welcome_store(struct pool *p, uint64_t key, const struct kvlist *reported);

void pool_free(struct pool *p);
/* A server of p is about to open: 0 when pool_size (with its reserve when due), or
 * max_db_connections / max_user_connections, is reached across every worker. */
int pool_slot_take(struct pool *p);
/* One of p's servers closed: its slot frees, and workers waiting for one are woken. */
void pool_slot_give(struct pool *p);
/* Closes s (1) if its pool has more servers than pool_size and its reserve, counting every
 * worker's: a reload made it smaller. */
int pool_trim(struct server *s);
/* More servers than pool_size and its reserve, counting every worker's? */
int pool_over_size(struct pool *p);
/* Every server of p's pool, whichever worker it is in. */
static inline int pool_servers_all(const struct pool *p)
{
    return world_count_read(p->share);
}
/* Another worker woke this one (core/world.h world_poke): its pools with clients waiting try
 * again. */
void pool_poked(struct worker *w);
/* Free pools nobody uses and that hold no server (every (database, user) ever tried would
 * otherwise keep one forever). */
void pool_gc(struct worker *w, int64_t now);
/* Workers: pools still waiting for a server from another worker remind the others (tick). */
void pool_starve_remind(struct worker *w);

/* Bring the client's own server back in line with its settings, ahead of its next request
 * (a RESET returned a startup parameter to the server's default). */
void pool_resetup(struct server *s, struct client *c);

struct pool *pool_get(struct worker *w, const char *database, const char *user, int role);
/* The client needs a server: lend one now or queue it. */
void pool_request(struct pool *p, struct client *c);
/* The client no longer waits (closed or timed out). */
void pool_cancel_wait(struct client *c);
/* A client is done with its server: reset it and keep it, or close it. */
void pool_release(struct server *s, int reusable);
/* Its client is gone (closed, left, timed out) while linked to s: s goes back to the pool only
 * protocol-idle; otherwise pgstay finishes the exchange (answers read to ReadyForQuery,
 * ROLLBACK, reset query) or closes s. pending: requests synced and unanswered; unsynced:
 * messages after the last Sync; mid_message: a client message or COPY cut in the middle. */
void pool_take_back(struct server *s, int pending, int unsynced, int mid_message);
/* A server of p finished login or reset: lend it or keep it idle. */
void pool_server_ready(struct server *s);
/* server_check_query answered: the server goes to a waiting client (server.c). */
void pool_check_done(struct server *s);
/* A server login failed with an error the waiting clients must see (bad db/user/password). */
void pool_login_failed(struct pool *p, const uint8_t *err_msg, size_t len, const char *why);
/* Try to serve waiting clients of every pool (after a writer appears, RESUME, a server frees). */
/* min_pool_size (PgBouncer's): open servers until each pool has that many (the 1 s tick), so
 * that load coming back after total inactivity finds them logged in. */
void pool_keep_min(struct worker *w);
/* reserve_pool_size (PgBouncer's): kick pools whose oldest waiting client has now waited past
 * reserve_pool_timeout, so they may open a reserve server (the tick). */
void pool_check_reserve(struct worker *w);
/* pool_kick, and with max_db_connections / max_user_connections set, the kick of every other
 * pool of the same database or user that has clients waiting. */
void pool_kick_sharing(struct pool *p);
void pool_kick_all(struct worker *w);
void pool_kick(struct pool *p);
/* Close idle servers of every pool on node nd (it lost its role). */
void pool_drop_node(struct worker *w, struct node *nd, const char *why);
/* A node removed by a reload: its servers not lent to a client (idle, logging in) are closed. */
void pool_drain_node(struct worker *w, struct node *nd, const char *why);
/* At exit: cancel connections still on their way. */
void cancel_free_all(struct worker *w);
/* Handle a CancelRequest packet with pgstay's key. */
void cancel_forward(struct worker *w, uint32_t pid, uint32_t key);

#endif
