/* Session-state tracking: settings kept only once the server ran them and their transaction
 * (or savepoint) committed, as PostgreSQL does; requests with nothing to follow cost a counter. */
#include "client/track.h"

#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "server/server.h"

void track_stmt_clear(struct track_stmt *st)
{
    free(st->name);
    free(st->stmt);
    memset(st, 0, sizeof(*st));
}

void track_stmt_copy(struct track_stmt *dst, const struct track_stmt *src)
{
    memset(dst, 0, sizeof(*dst));
    dst->kind = src->kind;
    if (src->name)
        dst->name = strdup(src->name);
    if (src->stmt)
        dst->stmt = strdup(src->stmt);
    if ((src->name && !dst->name) || (src->stmt && !dst->stmt)) {
        track_stmt_clear(dst);
        dst->kind = TK_OTHER; /* out of memory: followed as nothing */
    }
}

static void rec_clear(struct track_rec *r)
{
    for (int i = 0; i < r->n_ops; i++)
        track_stmt_clear(&r->ops[i].st);
    free(r->ops);
    memset(r, 0, sizeof(*r));
}

static void rec_add(struct track_rec *r, uint16_t idx, const struct track_stmt *st)
{
    if (r->n_ops == r->cap_ops) {
        int cap = r->cap_ops ? r->cap_ops * 2 : 4;
        struct track_op *ops = realloc(r->ops, (size_t)cap * sizeof(*ops));
        if (!ops)
            return;
        r->ops = ops;
        r->cap_ops = cap;
    }
    struct track_op *op = &r->ops[r->n_ops++];
    op->idx = idx;
    track_stmt_copy(&op->st, st);
    if (st->kind == TK_COMMIT)
        r->has_commit = 1;
}

/* building: the request being put together (its earlier statements count as in flight). */
static int wants(const struct track *t, const struct track_rec *building,
                 const struct track_stmt *st)
{
    switch (st->kind) {
    case TK_SET:
    case TK_RESET:
    case TK_RESET_ALL:
    case TK_COMMIT:
        return 1;
    case TK_SAVEPOINT:
    case TK_RELEASE:
    case TK_ROLLBACK_TO:
    case TK_ROLLBACK:
        /* Only matter when there are effects to keep or drop; a savepoint taken before any of
         * them is as good as the start of the transaction (see apply_rollback_to). */
        return t->n_txn > 0 || t->n > 0 || t->batch.n_ops > 0 || (building && building->n_ops > 0);
    default:
        return 0;
    }
}

int track_wants(const struct track *t, const struct track_stmt *st)
{
    return wants(t, NULL, st);
}

/* A request went out: a record if it has something to follow, a count otherwise. */
static void push_request(struct track *t, struct track_rec *r)
{
    if (r->n_ops == 0) {
        rec_clear(r);
        t->plain_tail++;
        return;
    }
    if (t->n == t->cap) {
        int cap = t->cap ? t->cap * 2 : 4;
        struct track_rec *recs = malloc((size_t)cap * sizeof(*recs));
        if (!recs) {
            rec_clear(r);
            t->plain_tail++;
            return;
        }
        for (int i = 0; i < t->n; i++)
            recs[i] = t->recs[(t->head + i) % t->cap];
        free(t->recs);
        t->recs = recs;
        t->cap = cap;
        t->head = 0;
    }
    r->plain_before = t->plain_tail;
    t->plain_tail = 0;
    t->recs[(t->head + t->n) % t->cap] = *r;
    t->n++;
    memset(r, 0, sizeof(*r));
}

void track_query(struct client *c, const struct track_stmt *stmts, int n)
{
    struct track *t = &client_more(c)->track;
    struct track_rec r;
    memset(&r, 0, sizeof(r));
    for (int i = 0; i < n && i < 65535; i++)
        if (wants(t, &r, &stmts[i]))
            rec_add(&r, (uint16_t)i, &stmts[i]);
    push_request(t, &r);
}

void track_execute(struct client *c, const struct track_stmt *st)
{
    struct track *t = &client_more(c)->track;
    if (st && track_wants(t, st))
        rec_add(&t->batch, t->batch_execs, st);
    if (t->batch_execs < 65535)
        t->batch_execs++;
}

void track_sync(struct client *c)
{
    struct track *t = &client_more(c)->track;
    push_request(t, &t->batch);
    t->batch_execs = 0;
}

static struct track_rec *head_rec(struct track *t)
{
    if (t->n == 0)
        /* Every request sent is answered: what comes is for the batch being sent (Execute
         * then Flush: answers before its Sync). */
        return t->plain_tail == 0 ? &t->batch : NULL;
    struct track_rec *r = &t->recs[t->head];
    return r->plain_before > 0 ? NULL : r;
}

/* ---- the open transaction's effects ---- */

static void txn_truncate(struct track *t, int n)
{
    for (int i = n; i < t->n_txn; i++)
        track_stmt_clear(&t->txn[i].st);
    t->n_txn = n;
}

static void txn_add(struct track *t, const struct track_stmt *st)
{
    if (t->n_txn == t->cap_txn) {
        int cap = t->cap_txn ? t->cap_txn * 2 : 8;
        struct track_op *ops = realloc(t->txn, (size_t)cap * sizeof(*ops));
        if (!ops)
            return;
        t->txn = ops;
        t->cap_txn = cap;
    }
    track_stmt_copy(&t->txn[t->n_txn++].st, st);
}

static int find_savepoint(const struct track *t, const char *name)
{
    for (int i = t->n_txn - 1; i >= 0; i--)
        if (t->txn[i].st.kind == TK_SAVEPOINT && t->txn[i].st.name && name &&
            strcmp(t->txn[i].st.name, name) == 0)
            return i;
    return -1;
}

/* The transaction committed: its effects become the session's, on the client and on the
 * server that ran them. */
static void txn_commit(struct client *c)
{
    struct track *t = &client_more(c)->track;
    struct kvlist *applied = c->server ? &c->server->applied : NULL;
    for (int i = 0; i < t->n_txn; i++) {
        const struct track_stmt *st = &t->txn[i].st;
        switch (st->kind) {
        case TK_SET:
            kv_set(&client_more(c)->sets, st->name, st->stmt);
            if (applied)
                kv_set(applied, st->name, st->stmt);
            break;
        case TK_RESET:
            kv_del(&client_more(c)->sets, st->name);
            if (applied)
                kv_del(applied, st->name);
            if (kv_get(&c->params, st->name))
                c->resetup = 1; /* the server's default now, the startup value next */
            break;
        case TK_RESET_ALL:
            kv_clear(&client_more(c)->sets);
            if (applied)
                kv_clear(applied);
            if (c->params.n > 0)
                c->resetup = 1;
            break;
        default:
            break;
        }
    }
    txn_truncate(t, 0);
}

static void apply(struct client *c, const struct track_stmt *st, const char *tag)
{
    struct track *t = &client_more(c)->track;
    int i;
    switch (st->kind) {
    case TK_SET:
    case TK_RESET:
    case TK_RESET_ALL:
    case TK_SAVEPOINT:
        txn_add(t, st);
        break;
    case TK_RELEASE:
        /* The savepoint and those after it go; their effects now belong to the level above.
         * One not recorded was taken before every recorded entry: all markers go. */
        i = find_savepoint(t, st->name);
        if (i < 0)
            i = 0;
        {
            int n = i;
            for (int j = i; j < t->n_txn; j++) {
                if (t->txn[j].st.kind == TK_SAVEPOINT)
                    track_stmt_clear(&t->txn[j].st);
                else
                    t->txn[n++] = t->txn[j];
            }
            t->n_txn = n;
        }
        break;
    case TK_ROLLBACK_TO:
        /* Back to the savepoint, which stays; one taken before any effect was not recorded,
         * and rolling back to it undoes them all. */
        i = find_savepoint(t, st->name);
        txn_truncate(t, i >= 0 ? i + 1 : 0);
        t->resp_error = 0;
        break;
    case TK_COMMIT:
        if (tag && strcmp(tag, "ROLLBACK") == 0)
            txn_truncate(t, 0); /* COMMIT of a failed transaction */
        else
            txn_commit(c);
        t->resp_error = 0;
        break;
    case TK_ROLLBACK:
        txn_truncate(t, 0);
        t->resp_error = 0;
        break;
    default:
        break;
    }
}

void track_complete(struct client *c, const char *tag)
{
    struct track_rec *r = head_rec(&client_more(c)->track);
    if (!r || r->dead)
        return;
    uint16_t pos = r->pos++;
    for (int i = 0; i < r->n_ops; i++)
        if (r->ops[i].idx == pos)
            apply(c, &r->ops[i].st, tag);
}

void track_error(struct client *c)
{
    struct track *t = &client_more(c)->track;
    t->resp_error = 1;
    struct track_rec *r = head_rec(t);
    if (r)
        r->dead = 1;
}

void track_ready(struct client *c, char status)
{
    struct track *t = &client_more(c)->track;
    if (t->n > 0) {
        struct track_rec *r = &t->recs[t->head];
        if (r->plain_before > 0) {
            r->plain_before--;
        } else {
            rec_clear(r);
            t->head = (t->head + 1) % t->cap;
            t->n--;
        }
    } else if (t->plain_tail > 0) {
        t->plain_tail--;
    }
    if (status == 'I' && t->n_txn > 0) {
        /* The implicit transaction (or a block that ended) is over: it committed unless an
         * error rolled it back. */
        if (t->resp_error)
            txn_truncate(t, 0);
        else
            txn_commit(c);
    }
    t->resp_error = 0;
}

void track_lost(struct client *c, int in_block)
{
    struct track *t = &client_more(c)->track;
    while (t->n > 0) {
        rec_clear(&t->recs[t->head]);
        t->head = (t->head + 1) % t->cap;
        t->n--;
    }
    t->head = 0;
    t->plain_tail = 0;
    rec_clear(&t->batch);
    t->batch_execs = 0;
    /* The open transaction died with its server (or never reached one): none of its effects
     * happened. */
    if (in_block || t->n_txn > 0)
        txn_truncate(t, 0);
    t->resp_error = 0;
}

int track_commit_in_flight(const struct track *t)
{
    if (t->batch.has_commit)
        return 1;
    for (int i = 0; i < t->n; i++)
        if (t->recs[(t->head + i) % t->cap].has_commit)
            return 1;
    return 0;
}

void track_free(struct track *t)
{
    while (t->n > 0) {
        rec_clear(&t->recs[t->head]);
        t->head = (t->head + 1) % t->cap;
        t->n--;
    }
    free(t->recs);
    rec_clear(&t->batch);
    txn_truncate(t, 0);
    free(t->txn);
    memset(t, 0, sizeof(*t));
}
