/* Login backoff per (pool, node): PgBouncer's server_login_retry, with a short first retry for
 * the errors that clear by themselves (starting up, too many connections). */
#include "pool/backoff.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/log.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "topology/topology.h"

/* The first wait after a 57P03 or 53300. */
#define LOGIN_RETRY_FIRST_MS 50

static struct login_backoff *find(struct pool *p, struct node *nd, int create)
{
    for (struct login_backoff *b = nd->backoffs[p->w->index]; b; b = b->next)
        if (b->pool == p)
            return b;
    if (!create)
        return NULL;
    struct login_backoff *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->pool = p;
    b->next = nd->backoffs[p->w->index];
    nd->backoffs[p->w->index] = b;
    return b;
}

static int clears_by_itself(const char *sqlstate)
{
    return !strcmp(sqlstate, "57P03") || !strcmp(sqlstate, "53300");
}

/* Errors that are the client's (bad database, user, password, parameter). */
static int clients_error(const char *sqlstate)
{
    return !strncmp(sqlstate, "28", 2) || !strncmp(sqlstate, "3D", 2) || !strncmp(sqlstate, "42", 2) ||
           !strncmp(sqlstate, "22", 2);
}

void login_backoff_failed(struct pool *p, struct node *nd, const struct pg_error *e)
{
    struct worker *w = p->w;
    const char *st = e->sqlstate ? e->sqlstate : "";
    /* The node going away is a signal about the writer, as a reset connection is. */
    if (!strcmp(st, "57P01") || !strcmp(st, "57P02") || !strcmp(st, "57P03"))
        topology_node_signal(w, nd, "a server login was refused: the node is shutting down or starting up");
    struct login_backoff *b = find(p, nd, 1);
    if (!b)
        return;
    int retry = w->cfg->server_login_retry;
    if (clears_by_itself(st)) {
        b->delay = b->attempts == 0 || !clears_by_itself(b->sqlstate) ? LOGIN_RETRY_FIRST_MS : b->delay * 2;
        if (b->delay > retry)
            b->delay = retry;
    } else {
        b->delay = retry;
    }
    b->attempts++;
    b->until = now_ms() + b->delay;
    b->kicked = 0;
    b->clients_fail = clients_error(st);
    snprintf(b->sqlstate, sizeof(b->sqlstate), "%s", st);
    snprintf(b->severity, sizeof(b->severity), "%s", e->severity ? e->severity : "FATAL");
    snprintf(b->message, sizeof(b->message), "%s", e->message ? e->message : "server login failed");
    log_info("pool %s/%s on %s: login failed (%s %s), attempt %d: next login in %d ms "
             "(server_login_retry)",
             p->user, p->database, nd->name, b->sqlstate, b->message, b->attempts, b->delay);
}

void login_backoff_ok(struct pool *p, struct node *nd)
{
    if (!p || !nd)
        return;
    struct login_backoff **pp = &nd->backoffs[p->w->index];
    while (*pp) {
        struct login_backoff *b = *pp;
        if (b->pool == p) {
            if (b->attempts > 0)
                log_info("pool %s/%s on %s: login succeeded after %d failed attempts", p->user,
                         p->database, nd->name, b->attempts);
            *pp = b->next;
            free(b);
            return;
        }
        pp = &b->next;
    }
}

int login_backoff_wait(struct pool *p, struct node *nd)
{
    struct login_backoff *b = find(p, nd, 0);
    if (!b || now_ms() >= b->until)
        return 0;
    if (b->clients_fail && p->n_waiting > 0) {
        /* It will not clear by itself: no need to wait to be told. */
        struct pbuf e;
        pbuf_init(&e);
        proto_build_error(&e, b->severity, b->sqlstate, b->message, NULL);
        if (!e.failed)
            pool_login_failed(p, e.data, e.len, b->message);
        pbuf_free(&e);
    }
    return 1;
}

const struct login_backoff *login_backoff_of(struct pool *p)
{
    if (!p)
        return NULL;
    struct topology *t = p->w->topo;
    for (int i = 0; i < t->n_nodes; i++) {
        struct login_backoff *b = find(p, &t->nodes[i], 0);
        if (b && b->attempts > 0)
            return b;
    }
    return NULL;
}

void login_backoff_due(struct worker *w)
{
    struct topology *t = w->topo;
    int64_t now = now_ms();
    for (int i = 0; i < t->n_nodes; i++) {
        for (struct login_backoff *b = t->nodes[i].backoffs[w->index]; b; b = b->next) {
            if (!b->kicked && now >= b->until) {
                b->kicked = 1;
                pool_kick(b->pool);
            }
        }
    }
}

void login_backoff_free(struct node *nd)
{
    for (int i = 0; i < WORLD_MAX; i++) {
        while (nd->backoffs[i]) {
            struct login_backoff *b = nd->backoffs[i];
            nd->backoffs[i] = b->next;
            free(b);
        }
    }
}
