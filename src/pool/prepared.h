/* Transaction pooling of protocol-level prepared statements: pgstay's own names on the lent
 * server, prepared lazily, and the plan of the responses the client expects. */
#ifndef PGSTAY_POOL_PREPARED_H
#define PGSTAY_POOL_PREPARED_H

#include <stddef.h>
#include <stdint.h>


#include "core/conn.h"
#include "proto/proto.h"

struct client;
struct server;

/* What pgstay expects of the server's next responses, in order. */
enum plan_kind {
    PLAN_FORWARD, /* the client's own request: forward its responses until `ends` */
    PLAN_SWALLOW, /* a Parse pgstay sent itself: its ParseComplete is dropped */
    PLAN_INJECT,  /* an answer pgstay gives itself (cached Parse, Close): sent when at the head */
    PLAN_SWALLOW_ERROR, /* an error pgstay provoked so the server skips to Sync as the client
                         * expects (its own error was injected instead): dropped */
};

/* Which response ends a PLAN_FORWARD entry. */
enum plan_end {
    END_PARSE,      /* '1' */
    END_BIND,       /* '2' */
    END_CLOSE,      /* '3' */
    END_DESCRIBE_S, /* 't' then 'T' or 'n' */
    END_DESCRIBE_P, /* 'T' or 'n' */
    END_EXECUTE,    /* 'C', 'I' or 's' */
    END_READY,      /* 'Z' (Sync, Query, FunctionCall) */
};

struct plan_entry {
    uint8_t kind;
    uint8_t ends;
    uint8_t inj_len;
    uint8_t inj[27];  /* PLAN_INJECT: the messages to send */
    uint64_t hash;    /* a statement pgstay prepared with this entry: forgotten if it fails */
    uint8_t *big;     /* PLAN_INJECT larger than inj (an ErrorResponse): owned */
    uint32_t big_len;
};

/* Per-server state for transaction-mode statements. */
struct stmt_cache {
    uint64_t *hashes; /* statements prepared on this server under pgstay's names */
    int64_t *used;    /* last use, for LRU eviction */
    int n, cap;
    struct plan_entry *plan; /* FIFO of expected responses */
    int head, tail, plan_cap;
    int skipping;     /* the server reported an error: it ignores messages until Sync */
    int fake_unnamed; /* the unnamed statement is a DEALLOCATE pgstay answers itself */
    int fake_all;
};

/* Bound of statements kept prepared per server connection. */
#define STMT_CACHE_MAX 256

/* A client message in transaction mode (m: the first `have` bytes of the whole message).
 * Writes what goes to the server into out and returns how many bytes of the original message
 * it dealt with: 0 = forward the message unchanged. */
size_t plan_client_msg(struct client *c, struct server *s, const struct msg_hdr *h,
                       const uint8_t *m, size_t have, struct conn *out);

/* No server is lent: answer a Parse of a statement the pool knows (and the Sync closing such a
 * batch) here. Returns 1 if answered. */
int plan_answer_locally(struct client *c, const struct msg_hdr *h, const uint8_t *m);
/* The pool knows statement h (hash) to prepare without error (this worker's pool only). */
struct pool;
void pool_learn_known(struct pool *p, uint64_t h);

/* A server message header: returns 1 if the message is to be dropped (pgstay's own). */
int plan_server_msg(struct server *s, uint8_t type);
/* The whole message went to the client (or was dropped): pop what it completed, send any
 * answers pgstay owes next. */
void plan_server_msg_done(struct server *s, uint8_t type);
/* Nothing is outstanding on this server. */
int plan_empty(const struct server *s);
/* Lent to a new client: evict past the bound (Close + Sync, swallowed) into wire. Returns the
 * number of ReadyForQuery answers to swallow. */
int plan_evict(struct server *s, struct pbuf *wire);
/* The server forgot every statement (DISCARD ALL, DEALLOCATE ALL). */
void plan_forget_all(struct server *s);
/* Drop the plan of expected responses (the server's answers are drained, not forwarded). */
void plan_reset(struct server *s);
void plan_free(struct server *s);
/* FNV-1a of a Parse body after its name: equal statements share one server-side name. */
uint64_t stmt_hash(const uint8_t *p, size_t n);

#endif
