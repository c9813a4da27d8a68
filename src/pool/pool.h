/* Pools: server connections per (database, user, role); lending, waiting, reset, cancel. */
#ifndef PGSTAY_POOL_POOL_H
#define PGSTAY_POOL_POOL_H

#include "client/client.h"
#include "core/list.h"
#include "server/server.h"

struct pool {
    struct list node; /* on w->pools */
    struct worker *w;
    char *database;
    char *user;
    int role;              /* enum endpoint_role */
    struct list idle;      /* servers ready to lend (SV_IDLE) */
    struct list waiting;   /* clients waiting for a server, in arrival order */
    int n_servers;         /* every server of this pool, whatever its state */
    int n_connecting;      /* in SV_CONNECTING or SV_LOGIN */
    int n_waiting;
    int64_t last_login_error_at;
    /* ParameterStatus values of this pool's first server: each client stores only its own
     * differences, so an idle client costs no copy of them. */
    struct kvlist base;
    /* Statements (by hash) some server of this pool prepared without error: a client's Parse
     * of one needs no server to be answered. */
    uint64_t *known;
    int n_known, cap_known;
    /* SCRAM pass-through: the ClientKey learnt from a client's proof, so pgstay can log in
     * with a SCRAM auth_file secret and no plain password. */
    unsigned char client_key[32];
    int have_client_key;
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

struct pool *pool_get(struct worker *w, const char *database, const char *user, int role);
/* The client needs a server: lend one now or queue it. */
void pool_request(struct pool *p, struct client *c);
/* The client no longer waits (closed or timed out). */
void pool_cancel_wait(struct client *c);
/* A client is done with its server: reset it and keep it, or close it. */
void pool_release(struct server *s, int reusable);
/* A server of p finished login or reset: lend it or keep it idle. */
void pool_server_ready(struct server *s);
/* A server login failed with an error the waiting clients must see (bad db/user/password). */
void pool_login_failed(struct pool *p, const uint8_t *err_msg, size_t len, const char *why);
/* Try to serve waiting clients of every pool (after a writer appears, RESUME, a server frees). */
void pool_kick_all(struct worker *w);
void pool_kick(struct pool *p);
/* Close idle servers of every pool on node nd (it lost its role). */
void pool_drop_node(struct worker *w, struct node *nd);
/* Handle a CancelRequest packet with pgstay's key. */
void cancel_forward(struct worker *w, uint32_t pid, uint32_t key);

#endif
