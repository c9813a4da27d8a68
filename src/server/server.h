/* The server side: connecting, logging in, forwarding, detecting a dead server at once. */
#ifndef PGSTAY_SERVER_SERVER_H
#define PGSTAY_SERVER_SERVER_H

#include <stdint.h>

#include "client/client.h"
#include "core/conn.h"
#include "core/list.h"
#include "core/worker.h"
#include "pool/prepared.h"
#include "proto/scram.h"
#include "topology/topology.h"

struct pool;
struct node;

/* How long a server may take to finish a departed client's requests and its reset. */
#define SERVER_DRAIN_TIMEOUT_MS 10000

/* A server connection's TLS negotiation (server_tls_sslmode), before its StartupMessage. */
enum server_tls_step {
    SV_TLS_NONE = 0,  /* plaintext, or TLS established */
    SV_TLS_ANSWER,    /* SSLRequest sent, waiting for 'S' or 'N' */
    SV_TLS_HANDSHAKE, /* 'S': the handshake runs */
};

struct server {
    struct list node;      /* on w->servers[state] */
    struct list pool_node; /* on pool->idle while SV_IDLE */
    enum server_state state;
    uint64_t id;
    struct worker *w;
    struct pool *pool;     /* NULL for probes */
    struct client *client; /* linked client */
    struct node *nd;       /* the node it is connected to */
    struct conn conn;      /* its socket and buffers */
    struct event *timer;   /* connect/login timeout */

    char *user;            /* login identity (the pool's, or the probe's): owned copies */
    char *database;
    uint32_t be_pid, be_key;
    struct kvlist params; /* ParameterStatus as the server last reported them */
    uint64_t params_hash; /* of params: equal sets need no comparing at each lending */
    struct scram_client *scram;
    int password_sent;
    uint8_t tls_step; /* enum server_tls_step: where the TLS negotiation is */

    uint32_t fwd_left;    /* bytes of the current server message still to forward */
    uint8_t fwd_type;     /* that message's type */
    int swallow;          /* ReadyForQuery messages to consume before forwarding again */
    struct stmt_cache stmts; /* transaction mode: statements under pgstay's names, response plan */
    int dirty;             /* a pinned client used it: reset before anyone else gets it */
    uint64_t unnamed_owner, unnamed_seq; /* whose unnamed statement it holds (client id, seq) */
    int cancels;           /* CancelRequests on their way to its backend */
    int cancel_hold;       /* released, kept out of the pool until they are delivered */
    int in_process;        /* inside server_process (see server_idle_intact) */
    int reset_pending;     /* draining after its client left: roll back and reset when idle */
    int terminated;        /* its backend sent FATAL 57P01 (pg_terminate_backend or shutdown) */
    int login_error;       /* the login failed with the server's ErrorResponse (or pgstay's words) */
    int setup_rejected;    /* a client's setting failed on it: closed by pgstay, not the node */
    int close_needed;      /* RECONNECT: closed instead of going back to its pool */
    int checking;          /* SV_RESETTING for server_check_query, before being lent */
    int checked;           /* passed that check: lent next without another */
    int move_retried;      /* a move to another worker failed and was retried once (hand_over) */
    struct kvlist applied; /* settings clients left on it: name -> the statement that made it */
    char txn_status;
    int64_t connected_at;
    int64_t last_used;
    int64_t query_start, xact_start; /* µs: requests / a transaction in flight (pool/stats.c) */
    int64_t ready_at;                /* µs: its last request answered (idle_transaction_timeout) */
    /* Probe state (SV_PROBE): a connection without a pool running internal queries (topology's
     * probes through server/probe.c, auth_query's lookups) */
    void (*on_row)(struct server *s, int ncols, const char **vals);
    void (*on_ready)(struct server *s);
    void (*on_fail)(struct server *s, const char *why);
    void *probe_arg;
    const struct probe_callbacks *probe_cb; /* a topology probe's (server/probe.c) */
};

/* Open a server connection for pool p on node nd (pool NULL with probe callbacks for a probe). */
/* An idle server of one worker's pool goes to the same pool (to) in another worker: its
 * connection moves to that worker's loop, its slot in pool_size stays taken. With the world
 * stopped. 0, or -1 when it cannot move now (not idle, bytes buffered). */
int server_move(struct server *s, struct pool *to);
struct server *server_open(struct worker *w, struct pool *p, struct node *nd, const char *user,
                           const char *database);
void server_change_state(struct server *s, enum server_state st);
/* Close with a reason that is logged: pgstay's own decision (EVIDENCE_NONE). */
void server_close(struct server *s, const char *reason);
/* Close a connection the server or the network ended (ev says which way): a writer
 * connection's end is then evidence about the writer (topology_probe_now). */
void server_close_by(struct server *s, enum writer_evidence ev, const char *reason);
void server_send(struct server *s, const void *p, size_t n);
/* Run sql on the server, consuming its results (setup, reset, probes). */
void server_run_internal(struct server *s, const char *sql);
/* Send bytes pgstay built itself whose n_ready ReadyForQuery answers are consumed. */
void server_send_internal(struct server *s, const void *p, size_t n, int n_ready);
/* Forward whatever the server has sent (called again when the client drains). */
void server_process(struct server *s);
void server_free(struct server *s);
const char *server_param(struct server *s, const char *name);
/* An idle server about to be lent has nothing to say: a backend that says something while
 * idle is ending (a FATAL from pg_terminate_backend, EOF) and must not be lent. */
int server_idle_intact(struct server *s);
/* SV_RESETTING after a drain, at a ReadyForQuery with nothing more to swallow: ROLLBACK an open
 * transaction, then run the reset query, then back to the pool. */
/* server_reset_query q runs on s now: what clients left on it (s->applied) is forgotten if q
 * resets every setting (DISCARD ALL, RESET ALL), otherwise undone by the next client's setup. */
void server_reset_settings(struct server *s, const char *q);
void server_finish_drain(struct server *s);

#endif
