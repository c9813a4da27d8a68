/* Session-state tracking: what a client's statements did to its session, followed through
 * PostgreSQL's transaction semantics (statements that ran, savepoints, commits, rollbacks), so
 * that exactly the settings that took effect follow the client to its next server. */
#ifndef PGSTAY_CLIENT_TRACK_H
#define PGSTAY_CLIENT_TRACK_H

#include <stdint.h>

/* What one statement can do to session state. */
enum track_kind {
    TK_OTHER = 0,
    TK_SET,         /* a session setting: name and the statement that re-establishes it */
    TK_RESET,       /* RESET name */
    TK_RESET_ALL,   /* RESET ALL, DISCARD ALL */
    TK_SAVEPOINT,   /* name: the savepoint */
    TK_RELEASE,     /* RELEASE [SAVEPOINT] name */
    TK_ROLLBACK_TO, /* ROLLBACK TO [SAVEPOINT] name */
    TK_COMMIT,      /* COMMIT, END (the server's tag says whether it committed) */
    TK_ROLLBACK,    /* ROLLBACK, ABORT */
};

/* One statement as the tracker sees it (strings owned by whoever holds it). */
struct track_stmt {
    uint8_t kind;
    char *name; /* setting or savepoint name */
    char *stmt; /* TK_SET: the statement to replay on another server */
};

/* A statement expected to complete in a request, at position idx among its statements. */
struct track_op {
    uint16_t idx;
    struct track_stmt st;
};

/* A request (a Query, or an extended-protocol batch up to Sync) with something to follow. */
struct track_rec {
    uint32_t plain_before; /* requests with nothing to follow, sent before this one */
    uint16_t pos;          /* statements of this request completed so far */
    uint8_t dead;          /* an error stopped the request: the rest never runs */
    uint8_t has_commit;    /* a COMMIT is in it (lost in flight: 08007) */
    int n_ops, cap_ops;
    struct track_op *ops;
};

struct track {
    struct track_rec *recs; /* ring of requests in flight with something to follow */
    int head, n, cap;
    uint32_t plain_tail;    /* plain requests sent after the last record */
    struct track_rec batch; /* the extended-protocol batch being sent (before its Sync) */
    uint16_t batch_execs;   /* Executes in it so far */
    struct track_op *txn;   /* effects inside the open transaction, with savepoint markers */
    int n_txn, cap_txn;
    int resp_error; /* an ErrorResponse since the last transaction boundary */
};

struct client;

/* Does this statement need following at all (given what is in flight)? */
int track_wants(const struct track *t, const struct track_stmt *st);
/* A simple Query of n statements was sent (stmts: each statement, in order). */
void track_query(struct client *c, const struct track_stmt *stmts, int n);
/* An Execute was sent; st: what its portal's statement does (NULL: nothing to follow). */
void track_execute(struct client *c, const struct track_stmt *st);
/* A Sync was sent: the batch is one request. */
void track_sync(struct client *c);
/* From the server, in order: a statement completed (tag of CommandComplete, or NULL for
 * EmptyQueryResponse / PortalSuspended), an ErrorResponse, a ReadyForQuery. */
void track_complete(struct client *c, const char *tag);
void track_error(struct client *c);
void track_ready(struct client *c, char status);
/* The server is gone: nothing in flight will be answered; in_block: the open transaction died. */
void track_lost(struct client *c, int in_block);
/* A COMMIT is among the requests in flight. */
int track_commit_in_flight(const struct track *t);
void track_free(struct track *t);

void track_stmt_copy(struct track_stmt *dst, const struct track_stmt *src);
void track_stmt_clear(struct track_stmt *st);

#endif
