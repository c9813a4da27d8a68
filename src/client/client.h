/* The client side: accepting, startup, authentication, then the query loop. */
#ifndef PGSTAY_CLIENT_CLIENT_H
#define PGSTAY_CLIENT_CLIENT_H

#include <stdint.h>

#include "client/track.h"
#include "core/buf.h"
#include "core/conn.h"
#include "core/list.h"
#include "core/worker.h"
#include "proto/frame.h"
#include "proto/scram.h"

struct pool;
struct server;

/* The database name that reaches the admin console rather than a pool. */
#define ADMIN_DBNAME "pgstay"
/* PgBouncer's name for it, so that tools written for PgBouncer connect unchanged. */
#define ADMIN_DBNAME_ALIAS "pgbouncer"

/* Calls from the session layer (client, server, pool) up to failover and the admin console,
 * which sit above it (see tools/layers.py). The program registers them once per loop
 * (w->session); each is called where the named function was, so behaviour is unchanged. */
struct session_hooks {
    /* Is the writer endpoint holding new requests of this database (no writer, a suspect
     * writer, or paused)? */
    int (*holding)(struct worker *w, const char *database);
    /* PAUSE (of every database, or of this one) is in effect: new writer transactions wait for
     * RESUME. */
    int (*paused)(struct worker *w, const char *database);
    /* Failover event counters. */
    void (*note_held)(struct worker *w);
    void (*note_served)(struct worker *w);
    void (*note_failed_in_flight)(struct worker *w, const char *sqlstate);
    void (*note_timed_out)(struct worker *w);
    /* The admin console's client: welcome once logged in, then run its queries. */
    void (*admin_welcome)(struct client *c);
    void (*admin_process)(struct client *c);
    /* DISABLE db (admin console): new clients of that database are refused. */
    int (*db_disabled)(struct worker *w, const char *database);
};

/* Which endpoint the client came in through. */
enum endpoint_role { ROLE_WRITER = 0, ROLE_READER = 1 };

/* A protocol-level named prepared statement, kept as its Parse message to replay it on a new
 * server after a failover. */
struct prepared {
    char *name;
    uint8_t *msg; /* the whole Parse message, header included */
    uint32_t len;
    uint64_t hash; /* of the text and types: the server-side name in transaction mode */
};

/* A Parse on its way (session mode): kept for replay once the server accepts it. */
struct pending_parse {
    char *name;   /* "" for the unnamed statement: answered in order, never kept */
    uint8_t *msg; /* the whole Parse */
    uint32_t len;
    uint64_t batch; /* requests sent before it: unanswered when that one ends, it was skipped */
};

/* A named statement and what it does to the session. */
struct named_op {
    char *name;
    struct track_stmt st;
};

/* A name=value the client asked for (startup parameter or tracked SET). */
struct kv {
    char *name;
    char *value;
};

struct kvlist {
    struct kv *items;
    int n, cap;
};

/* Names compare case-insensitively, as PostgreSQL's setting names do. */
void kv_set(struct kvlist *l, const char *name, const char *value);
const char *kv_get(const struct kvlist *l, const char *name);
void kv_clear(struct kvlist *l);
/* FNV-1a of each name=value, summed: equal sets, in any order, hash alike. */
uint64_t kv_hash(const struct kvlist *l);
void kv_del(struct kvlist *l, const char *name);

/* How long pgstay waits to learn whether a 57P01 was an administrator's or a shutdown's. */
#define TERM_VERDICT_MAX_MS 3000
/* A probe answered counts for "an administrator's" only when sent this long after the 57P01: a
 * shutdown signals every backend at once, but on a busy machine they act on it over tens of ms
 * (35 ms seen in a Patroni switchover on 2 loaded cores), and a probe backend not yet reached
 * would otherwise answer for a node that is going down. */
#define TERM_SHUTDOWN_GRACE_US 100000

/* The server ended this client's session with 57P01 (pg_terminate_backend or a shutdown). */
struct client_term {
    int64_t at;          /* ms */
    int64_t at_us;
    struct node *node;   /* the node that served it */
    char sqlstate[6];
    char message[256];
    char why[160];
};

/* What a client's statements did and may do to its session: made when first needed (most
 * idle clients never need it, and an idle client's memory is mostly struct client). */
struct client_more {
    struct kvlist sets; /* settings that took effect: name -> the statement to replay */
    struct track track; /* what its statements in flight and its open transaction do to them */
    struct track_stmt unnamed_op; /* what the unnamed statement does to the session */
    struct track_stmt portal_op;  /* and the unnamed portal */
    struct named_op *stmt_ops;    /* named statements that do something to the session */
    int n_stmt_ops, cap_stmt_ops;
    struct client_term *term; /* its last server was terminated: verdict pending */
    struct event *term_timer;
    uint8_t *unnamed_msg; /* transaction mode: its last unnamed Parse, to re-create it */
    uint32_t unnamed_len, unnamed_cap;
    uint64_t unnamed_seq;  /* which of its unnamed Parses that is */
    struct pending_parse *pend; /* session mode: Parses sent, not yet answered */
    int n_pend, cap_pend;
    uint64_t batches_sent, batches_done; /* requests (Sync, Query, FunctionCall) and answers */
    struct prepared *prepared; /* named prepared statements to replay on a new server */
    int n_prepared, cap_prepared;
    size_t prepared_bytes;
};

struct client {
    struct list node;      /* on w->clients[state] */
    struct list pool_node; /* on pool->waiting while CL_WAITING */
    enum client_state state;
    uint64_t id;
    struct worker *w;
    struct conn conn; /* its socket and buffers */
    uint8_t addr_ip[16]; /* peer address, shown by client_addr() */
    uint16_t addr_port;
    uint8_t addr_family;
    uint8_t role; /* enum endpoint_role */
    uint8_t is_admin;
    uint8_t over_limit; /* accepted past max_client_conn: refused after its startup packet */
    uint8_t ssl_done, gss_done; /* encryption requests already answered (PostgreSQL's rule) */
    struct pool *pool;
    struct server *server; /* the linked server, or NULL */

    /* Startup */
    char *user;
    char *database;
    struct kvlist params;   /* startup parameters to apply on every server it gets */
    struct kvlist reported; /* ParameterStatus values sent to it that differ from its pool's base */
    uint64_t reported_hash; /* the server parameter set it was last brought in line with */
    uint8_t names_shared;       /* user and database point to its pool's strings */
    uint8_t got_welcome;        /* ParameterStatus/BackendKeyData/ReadyForQuery sent */
    uint8_t tls_direct;         /* TLS began without an SSLRequest (PostgreSQL 17 clients) */

    /* Authentication */
    /* Two nibbles of one byte: an idle client is mostly this struct, and a byte more here
     * costs 8 with the padding before the next pointer. */
    uint8_t auth_step : 4;   /* enum auth_step: which message pgstay expects next */
    uint8_t auth_method : 4; /* the method chosen: enum hba_method, or auth.c's own */
    uint8_t md5_salt[4];
    struct scram_server *scram;   /* only during a SCRAM exchange */

    uint32_t cancel_pid; /* pgstay's own BackendKeyData for this client */
    uint32_t cancel_key;

    /* Query loop */
    uint32_t fwd_left;  /* bytes of the current client message still to forward */
    int pending;        /* requests sent that await ReadyForQuery */
    char txn_status;    /* as last told to the client: 'I', 'T' or 'E' */
    uint8_t in_copy_in;     /* the server is taking COPY data from this client */
    uint8_t pin_reason;     /* why this session's state cannot be rebuilt elsewhere (0: it can) */
    uint32_t connect_s;     /* monotonic s at accept (SHOW CLIENTS): fits in padding */
    int64_t wait_since; /* ms: when it began waiting for a server */
    int64_t last_active;
    uint8_t held;           /* waiting because there is no writer (counted by failover) */
    /* in the padding before unsynced: an idle client is mostly this struct */
    uint8_t in_copy_out;    /* the server is sending COPY data (CopyOut/CopyBoth, until CopyDone) */
    uint8_t fd_short;       /* accepted on the spare descriptor: only the admin console is served */
    int unsynced;       /* extended-protocol messages sent since the last Sync */
    struct client_more *more; /* session state, made at its first use: see client_more() */
    uint8_t resetup;        /* its startup parameters need applying again (after a RESET) */
    uint8_t out_blocked;    /* its input waits until it reads what it was sent */
    uint8_t flight_blocked; /* its input waits until answers to what is in flight come back */

    /* Answered by pgstay itself after the server was lost (failover contract 3) */
    uint32_t skip_left;     /* rest of a message that was half-forwarded: dropped */
    uint8_t txn_lost;           /* the transaction block died with its server: answer until ROLLBACK */
    uint8_t lost_notice_pending;/* the next request learns why */
    uint8_t fail_current;       /* the current request got its error: drop messages up to its end */
    uint8_t discard_copy;       /* drop COPY data of a COPY whose server is gone */
    uint8_t batch_rollback;     /* an extended-protocol ROLLBACK batch answered locally */
    uint8_t batch_error;
    uint8_t local_batch;        /* messages since the last Sync were all answered by pgstay */
    uint8_t pause_held;         /* PAUSE: its next transaction waits for RESUME */
    uint8_t pause_waiting;      /* admin client whose PAUSE awaits in-flight transactions */
};


/* Accept callback for the writer and reader listeners. */
void client_accept(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
                   void *arg);
/* The same for a socket accepted by pgstay itself; FD_SHORT: on the last spare descriptor. */
void client_accept_fd(struct listen_ctx *ctx, int fd, struct sockaddr *sa, int salen, int fd_short);
void client_change_state(struct client *c, enum client_state st);
/* Give c its socket, already connected and logged in elsewhere (client/handover.c). */
void client_attach_fd(struct client *c, int fd);
/* The client's address as text ("ip:port"), in a buffer reused by the next call. */
const char *client_addr(const struct client *c);
/* Close with a reason that is logged; if sqlstate is set the client is sent a FATAL first. */
void client_close(struct client *c, const char *sqlstate, const char *reason);
/* What frame_next said about c's input: 1 to go on with h; 0 to wait, or after closing c with
 * PostgreSQL's message for a bad length or type (expected: what c's state accepts, or
 * "frontend" for any frontend message). */
int frame_ok(struct client *c, enum frame_result r, const struct msg_hdr *h, const char *expected);
/* Send an ErrorResponse (severity ERROR) and, when the client awaits one, ReadyForQuery. */
void client_send_error(struct client *c, const char *sqlstate, const char *msg);
/* The pool gives this client a server (already set up with the client's parameters). */
void client_linked(struct client *c);
/* Its server is gone: decide what the client sees (see failover contract). */
void client_server_lost(struct client *c, const char *why);
/* Its server is about to close after a FATAL 57P01 with this message. */
void client_note_terminated(struct client *c, const char *sqlstate, const char *message);
/* Consume whatever the client has sent (called again when output drains). */
void client_process(struct client *c);
/* Send raw bytes to the client. */
void client_send(struct client *c, const void *p, size_t n);
/* Send a message pgstay built (unless building it failed) and free the buffer. */
void client_send_pbuf(struct client *c, struct pbuf *b);
void client_free(struct client *c);
/* c->more, made on first use (out of memory: pgstay cannot go on, and says so). */
struct client_more *client_more_alloc(struct client *c);
static inline struct client_more *client_more(struct client *c)
{
    return c->more ? c->more : client_more_alloc(c);
}
/* Messages a client may have in flight (unanswered requests and unsynced messages) before
 * pgstay stops reading it: bounds what is kept per message. pgjdbc, the heaviest pipeliner,
 * stops at about 64 kB of expected answers (some 256 requests). */
#define CLIENT_MAX_IN_FLIGHT 16384
/* A request of the client was answered: its input may go on. */
void client_answered(struct client *c);
/* Periodic: wait, hold and idle timeouts. */
void client_check_timeouts(struct worker *w, int64_t now);
struct client *client_find_by_cancel(struct worker *w, uint32_t pid, uint32_t key);
/* The ParameterStatus value the client was last told for name (NULL: never). */
const char *client_reported(struct client *c, const char *name);
void client_note_reported(struct client *c, const char *name, const char *value);
/* The client's named prepared statements (protocol level). */
void client_stmt_add(struct client *c, const char *name, const uint8_t *msg, uint32_t len,
                     uint64_t hash);
const struct prepared *client_stmt_find(struct client *c, const char *name);
void client_stmt_del(struct client *c, const char *name);
/* Session mode: the server answered ParseComplete; a request ended (ReadyForQuery). */
void client_parse_answered(struct client *c);
void client_batch_answered(struct client *c);
/* The client's names for a statement the server refused. */
void client_stmt_del_hash(struct client *c, uint64_t hash);
/* Every protocol-level statement name of the client is gone (DEALLOCATE ALL, DISCARD ALL). */
void client_stmt_clear(struct client *c);
/* The session can no longer move between servers (counted by reason). */
void client_pin(struct client *c, int reason);
/* Authentication succeeded (client/auth.c calls this). */
void client_logged_in(struct client *c);
/* Error the current request (it cannot be served) and drop its messages up to its end. */
void client_fail_request(struct client *c, const char *sqlstate, const char *msg);

#endif
