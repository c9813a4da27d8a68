/* Login backoff: a server login that failed is not retried at loop speed (server_login_retry). */
#ifndef PGSTAY_POOL_BACKOFF_H
#define PGSTAY_POOL_BACKOFF_H

#include <stdint.h>

#include "core/worker.h"

struct pool;
struct node;
struct pg_error;

/* The last failed login of one pool on one node (a list per node). */
struct login_backoff {
    struct login_backoff *next;
    struct pool *pool;
    int64_t until;    /* ms: no new login for this pool on this node before */
    int delay;        /* ms: the wait after the last failure */
    int attempts;     /* failed logins in a row */
    int kicked;       /* the pool was kicked when the wait ended */
    int clients_fail; /* the error is the client's (database, user, password): new clients get it */
    char sqlstate[6];
    char severity[16];
    char message[256];
};

/* A login of p on nd failed with e: wait before the next one. 57P03 and 53300 clear by
 * themselves: a short first wait, doubling up to server_login_retry; anything else waits
 * server_login_retry. */
void login_backoff_failed(struct pool *p, struct node *nd, const struct pg_error *e);
/* A login of p on nd succeeded: no more waiting. */
void login_backoff_ok(struct pool *p, struct node *nd);
/* May p open a server on nd now? If not, returns 1; waiting clients keep waiting (or, for an
 * error that is the client's, get the server's error now). */
int login_backoff_wait(struct pool *p, struct node *nd);
/* The failed login that keeps p's clients waiting, if any: a waiting client that times out is
 * given this error rather than pgstay's own. */
const struct login_backoff *login_backoff_of(struct pool *p);
/* Kick the pools whose wait ended (from the topology timer). */
void login_backoff_due(struct worker *w);
void login_backoff_free(struct node *nd);

#endif
