/* Prepared statements under transaction pooling: rewrite names, prepare lazily, answer in order. */
#include "pool/prepared.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client.h"
#include "pool/pool.h"
#include "proto/sqlclass.h"
#include "core/log.h"
#include "server/server.h"

#define SERVER_NAME_LEN 23 /* "pgstay_" and the statement's hash in 16 hex digits */

/* A statement's name on the servers, from its hash. By hand: snprintf cost ~1,000 instructions
 * per Bind, more than the rest of the rewrite (callgrind, pgbench -S -M prepared). */
static void server_name(char out[SERVER_NAME_LEN + 1], uint64_t hash)
{
    static const char hex[] = "0123456789abcdef";
    memcpy(out, "pgstay_", 7);
    for (int i = 0; i < 16; i++)
        out[7 + i] = hex[(hash >> (60 - 4 * i)) & 0xf];
    out[SERVER_NAME_LEN] = 0;
}

uint64_t stmt_hash(const uint8_t *p, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* ---- the server's statement cache ---- */

static int cache_find(struct stmt_cache *sc, uint64_t h)
{
    for (int i = 0; i < sc->n; i++)
        if (sc->hashes[i] == h)
            return i;
    return -1;
}

static void cache_add(struct stmt_cache *sc, uint64_t h)
{
    if (cache_find(sc, h) >= 0)
        return;
    if (sc->n == sc->cap) {
        int cap = sc->cap ? sc->cap * 2 : 16;
        uint64_t *hs = realloc(sc->hashes, (size_t)cap * sizeof(*hs));
        if (!hs)
            return;
        sc->hashes = hs;
        int64_t *us = realloc(sc->used, (size_t)cap * sizeof(*us));
        if (!us)
            return;
        sc->used = us;
        sc->cap = cap;
    }
    sc->hashes[sc->n] = h;
    sc->used[sc->n] = now_us();
    sc->n++;
}

static void cache_del(struct stmt_cache *sc, uint64_t h)
{
    int i = cache_find(sc, h);
    if (i < 0)
        return;
    sc->n--;
    sc->hashes[i] = sc->hashes[sc->n];
    sc->used[i] = sc->used[sc->n];
}

void plan_forget_all(struct server *s)
{
    s->stmts.n = 0;
}

static void free_bigs(struct server *s)
{
    for (int i = s->stmts.head; i < s->stmts.tail; i++) {
        free(s->stmts.plan[i].big);
        s->stmts.plan[i].big = NULL;
    }
}

void plan_reset(struct server *s)
{
    free_bigs(s);
    s->stmts.head = s->stmts.tail = 0;
    s->stmts.skipping = 0;
    s->stmts.fake_unnamed = 0;
}

void plan_free(struct server *s)
{
    free_bigs(s);
    free(s->stmts.hashes);
    free(s->stmts.used);
    free(s->stmts.plan);
    memset(&s->stmts, 0, sizeof(s->stmts));
}

int plan_evict(struct server *s, struct pbuf *wire)
{
    struct stmt_cache *sc = &s->stmts;
    if (sc->n <= STMT_CACHE_MAX)
        return 0;
    while (sc->n > STMT_CACHE_MAX * 3 / 4) {
        int oldest = 0;
        for (int i = 1; i < sc->n; i++)
            if (sc->used[i] < sc->used[oldest])
                oldest = i;
        char name[32];
        server_name(name, sc->hashes[oldest]);
        size_t off = proto_begin_msg(wire, FE_CLOSE);
        pbuf_put_u8(wire, 'S');
        pbuf_put_str(wire, name);
        proto_end_msg(wire, off);
        cache_del(sc, sc->hashes[oldest]);
    }
    size_t off = proto_begin_msg(wire, FE_SYNC);
    proto_end_msg(wire, off);
    return 1;
}

/* ---- statements the pool knows to be good ---- */

#define POOL_KNOWN_MAX 4096

static int pool_knows(const struct pool *p, uint64_t h)
{
    for (int i = 0; i < p->n_known; i++)
        if (p->known[i] == h)
            return 1;
    return 0;
}

void pool_learn_known(struct pool *p, uint64_t h)
{
    if (pool_knows(p, h) || p->n_known >= POOL_KNOWN_MAX)
        return;
    if (p->n_known == p->cap_known) {
        int cap = p->cap_known ? p->cap_known * 2 : 32;
        uint64_t *k = realloc(p->known, (size_t)cap * sizeof(*k));
        if (!k)
            return;
        p->known = k;
        p->cap_known = cap;
    }
    p->known[p->n_known++] = h;
}

/* A statement one server prepared without error is known to the same pool in every worker:
 * a client whose thread blocks on a Parse (pgbench -M prepared) is answered at once by any
 * worker, with no server (which its other sessions may all hold). Once per statement. */
static void pool_learn(struct pool *p, uint64_t h)
{
    if (!p || !h || pool_knows(p, h))
        return;
    pool_learn_known(p, h);
    struct worker *w = p->w;
    if (w->world->n == 1)
        return;
    world_stop(w);
    for (int i = 0; i < w->world->n; i++) {
        struct list *pos, *tmp;
        list_for_each_safe(pos, tmp, &w->world->workers[i]->pools)
        {
            struct pool *q = container_of(pos, struct pool, node);
            if (q != p && q->role == p->role && !strcmp(q->database, p->database) &&
                !strcmp(q->user, p->user))
                pool_learn_known(q, h);
        }
    }
    world_start(w);
}

int plan_answer_locally(struct client *c, const struct msg_hdr *h, const uint8_t *m)
{
    size_t whole = 1 + (size_t)h->len;
    if (h->type == FE_SYNC) {
        uint8_t z[6] = {BE_READY, 0, 0, 0, 5, 'I'};
        client_send(c, z, sizeof(z));
        c->local_batch = 0;
        return 1;
    }
    struct msg_reader r;
    mr_init(&r, m + PROTO_HDR_LEN, whole - PROTO_HDR_LEN);
    const char *name = mr_str(&r);
    if (r.bad || !*name || client_stmt_find(c, name))
        return 0; /* unnamed, or a name in use: the server decides */
    size_t rest_off = PROTO_HDR_LEN + r.pos;
    uint64_t hash = stmt_hash(m + rest_off, whole - rest_off);
    if (!c->pool || !pool_knows(c->pool, hash))
        return 0;
    client_stmt_add(c, name, m, (uint32_t)whole, hash);
    uint8_t done[5] = {BE_PARSE_COMPLETE, 0, 0, 0, 4};
    client_send(c, done, sizeof(done));
    c->local_batch = 1;
    return 1;
}

/* ---- the plan of expected responses ---- */

int plan_empty(const struct server *s)
{
    return s->stmts.head == s->stmts.tail;
}

static struct plan_entry *plan_head(struct server *s)
{
    return plan_empty(s) ? NULL : &s->stmts.plan[s->stmts.head];
}

static void plan_pop(struct server *s)
{
    struct stmt_cache *sc = &s->stmts;
    free(sc->plan[sc->head].big);
    sc->plan[sc->head].big = NULL;
    if (++sc->head == sc->tail)
        sc->head = sc->tail = 0;
}

static struct plan_entry *plan_push(struct server *s)
{
    struct stmt_cache *sc = &s->stmts;
    if (sc->tail == sc->plan_cap) {
        if (sc->head > 0) {
            memmove(sc->plan, sc->plan + sc->head, (size_t)(sc->tail - sc->head) * sizeof(*sc->plan));
            sc->tail -= sc->head;
            sc->head = 0;
        } else {
            int cap = sc->plan_cap ? sc->plan_cap * 2 : 16;
            struct plan_entry *p = realloc(sc->plan, (size_t)cap * sizeof(*p));
            if (!p)
                return NULL;
            sc->plan = p;
            sc->plan_cap = cap;
        }
    }
    struct plan_entry *e = &sc->plan[sc->tail++];
    memset(e, 0, sizeof(*e));
    return e;
}

/* Send the answers pgstay owes that are now first in line. */
static void flush_injects(struct server *s)
{
    struct plan_entry *e;
    while ((e = plan_head(s)) && e->kind == PLAN_INJECT) {
        if (s->client) {
            if (e->big)
                client_send(s->client, e->big, e->big_len);
            else
                client_send(s->client, e->inj, e->inj_len);
        }
        plan_pop(s);
    }
}

static void push_forward(struct server *s, int ends, uint64_t hash)
{
    if (s->stmts.skipping && ends != END_READY)
        return; /* the server ignores it: no response comes */
    if (ends == END_READY)
        s->stmts.skipping = 0;
    struct plan_entry *e = plan_push(s);
    if (e) {
        e->kind = PLAN_FORWARD;
        e->ends = (uint8_t)ends;
        e->hash = hash;
    }
}

/* An answer pgstay gives itself, sent now or queued behind what the server still owes. */
static void push_inject_bytes(struct server *s, const uint8_t *msg, size_t len)
{
    if (s->stmts.skipping)
        return;
    if (plan_empty(s)) {
        client_send(s->client, msg, len);
        return;
    }
    struct plan_entry *e = plan_push(s);
    if (!e)
        return;
    e->kind = PLAN_INJECT;
    if (len <= sizeof(e->inj)) {
        memcpy(e->inj, msg, len);
        e->inj_len = (uint8_t)len;
    } else if ((e->big = malloc(len)) != NULL) {
        memcpy(e->big, msg, len);
        e->big_len = (uint32_t)len;
    }
}

static void push_inject(struct server *s, uint8_t type)
{
    uint8_t msg[5] = {type, 0, 0, 0, 4};
    push_inject_bytes(s, msg, sizeof(msg));
}

/* The unnamed-statement batch of a DEALLOCATE (psycopg sends one through the extended protocol
 * when its statement cache overflows): each message is answered as the server would. */
static size_t fake_deallocate(struct server *s, const struct msg_hdr *h, struct msg_reader *r,
                              size_t whole)
{
    switch (h->type) {
    case FE_BIND:
        push_inject(s, BE_BIND_COMPLETE);
        return whole;
    case FE_DESCRIBE: {
        if (mr_u8(r) == 'S') {
            uint8_t t[7] = {BE_PARAM_DESC, 0, 0, 0, 6, 0, 0};
            push_inject_bytes(s, t, sizeof(t));
        }
        push_inject(s, BE_NO_DATA);
        return whole;
    }
    case FE_EXECUTE: {
        struct pbuf b;
        pbuf_init(&b);
        proto_build_command_complete(&b, s->stmts.fake_all ? "DEALLOCATE ALL" : "DEALLOCATE");
        if (!b.failed)
            push_inject_bytes(s, b.data, b.len);
        pbuf_free(&b);
        return whole;
    }
    case FE_CLOSE:
        push_inject(s, BE_CLOSE_COMPLETE);
        return whole;
    default:
        return 0;
    }
}

static int completes(int ends, uint8_t type)
{
    switch (ends) {
    case END_PARSE:
        return type == BE_PARSE_COMPLETE;
    case END_BIND:
        return type == BE_BIND_COMPLETE;
    case END_CLOSE:
        return type == BE_CLOSE_COMPLETE;
    case END_DESCRIBE_S:
    case END_DESCRIBE_P:
        return type == BE_ROW_DESC || type == BE_NO_DATA;
    case END_EXECUTE:
        return type == BE_COMMAND_COMPLETE || type == BE_EMPTY_QUERY || type == BE_PORTAL_SUSPENDED;
    case END_READY:
        return type == BE_READY;
    }
    return 0;
}

int plan_server_msg(struct server *s, uint8_t type)
{
    struct plan_entry *e = plan_head(s);
    return e && ((e->kind == PLAN_SWALLOW && type == BE_PARSE_COMPLETE) ||
                 (e->kind == PLAN_SWALLOW_ERROR && type == BE_ERROR));
}

void plan_server_msg_done(struct server *s, uint8_t type)
{
    struct plan_entry *e = plan_head(s);
    if (!e)
        return;
    if (type == BE_ERROR) {
        if (e->kind == PLAN_FORWARD && e->ends == END_READY)
            return; /* a Query's error: its ReadyForQuery follows */
        /* A Parse the server refused leaves the client no statement of that name. */
        if (e->kind == PLAN_FORWARD && e->ends == END_PARSE && e->hash && s->client)
            client_stmt_del_hash(s->client, e->hash);
        /* The server now skips everything up to the next Sync: so does the plan. */
        while ((e = plan_head(s)) && !(e->kind == PLAN_FORWARD && e->ends == END_READY)) {
            if (e->hash)
                cache_del(&s->stmts, e->hash);
            plan_pop(s);
        }
        if (!e)
            s->stmts.skipping = 1;
        return;
    }
    if (e->kind == PLAN_SWALLOW) {
        if (type == BE_PARSE_COMPLETE) {
            pool_learn(s->pool, e->hash);
            plan_pop(s);
            flush_injects(s);
        }
        return;
    }
    if (e->kind == PLAN_FORWARD && completes(e->ends, type)) {
        if (e->ends == END_PARSE)
            pool_learn(s->pool, e->hash);
        plan_pop(s);
        flush_injects(s);
    }
}

/* ---- client messages ---- */

/* Make sure statement p exists on server s under pgstay's name, preparing it first if not. */
static void ensure_prepared(struct server *s, const struct prepared *p, struct conn *out)
{
    struct stmt_cache *sc = &s->stmts;
    int i = cache_find(sc, p->hash);
    if (i >= 0) {
        sc->used[i] = now_us();
        return;
    }
    if (sc->skipping || !p->msg)
        return; /* no text kept (pinned past the replay limit): its server has it */
    struct msg_reader r;
    mr_init(&r, p->msg + PROTO_HDR_LEN, p->len - PROTO_HDR_LEN);
    mr_str(&r);
    size_t rest_off = PROTO_HDR_LEN + r.pos;
    char name[32];
    server_name(name, p->hash);
    struct pbuf b;
    pbuf_init(&b);
    size_t off = proto_begin_msg(&b, FE_PARSE);
    pbuf_put_str(&b, name);
    pbuf_put(&b, p->msg + rest_off, p->len - rest_off);
    proto_end_msg(&b, off);
    if (!b.failed)
        conn_write(out, b.data, b.len);
    pbuf_free(&b);
    cache_add(sc, p->hash);
    struct plan_entry *e = plan_push(s);
    if (e) {
        e->kind = PLAN_SWALLOW;
        e->hash = p->hash;
    }
}

/* Largest unnamed Parse kept to re-create the statement on another server. */
#define UNNAMED_KEEP_MAX (64 * 1024)

/* The client's unnamed statement went to server s (m: the whole Parse, or NULL if too big to
 * keep). PostgreSQL keeps it across Syncs until the next unnamed Parse or simple Query. */
static void unnamed_parsed(struct client *c, struct server *s, const uint8_t *m, size_t whole)
{
    client_more(c)->unnamed_len = 0;
    if (m && whole <= UNNAMED_KEEP_MAX) {
        if (client_more(c)->unnamed_cap < whole) {
            uint8_t *b = realloc(client_more(c)->unnamed_msg, whole);
            if (b) {
                client_more(c)->unnamed_msg = b;
                client_more(c)->unnamed_cap = (uint32_t)whole;
            }
        }
        if (client_more(c)->unnamed_cap >= whole) {
            memcpy(client_more(c)->unnamed_msg, m, whole);
            client_more(c)->unnamed_len = (uint32_t)whole;
        }
    }
    s->unnamed_owner = c->id;
    s->unnamed_seq = ++client_more(c)->unnamed_seq;
}

/* A Bind or Describe of the unnamed statement: transaction mode may have lent the client
 * another server since its Parse (psql's \gdesc: Parse + Sync, then Describe + Sync), so the
 * statement is parsed again here first, its ParseComplete dropped. */
static void ensure_unnamed(struct client *c, struct server *s, struct conn *out)
{
    if (s->unnamed_owner == c->id && s->unnamed_seq == client_more(c)->unnamed_seq)
        return;
    if (client_more(c)->unnamed_len == 0 || s->stmts.skipping)
        return; /* none, or too large to have kept: the server answers as it would */
    conn_write(out, client_more(c)->unnamed_msg, client_more(c)->unnamed_len);
    struct plan_entry *e = plan_push(s);
    if (e)
        e->kind = PLAN_SWALLOW;
    s->unnamed_owner = c->id;
    s->unnamed_seq = client_more(c)->unnamed_seq;
}

static void refuse_parse(struct server *s, const char *name, struct conn *out)
{
    char msg[160];
    snprintf(msg, sizeof(msg), "prepared statement \"%.63s\" already exists", name);
    struct pbuf b;
    pbuf_init(&b);
    proto_build_error(&b, "ERROR", "42P05", msg, NULL);
    if (!b.failed)
        push_inject_bytes(s, b.data, b.len);
    pbuf_free(&b);
    pbuf_init(&b);
    size_t off = proto_begin_msg(&b, FE_BIND);
    pbuf_put_str(&b, "");
    pbuf_put_str(&b, "pgstay_no_such_statement");
    pbuf_put_u16(&b, 0);
    pbuf_put_u16(&b, 0);
    pbuf_put_u16(&b, 0);
    proto_end_msg(&b, off);
    if (!b.failed)
        conn_write(out, b.data, b.len);
    pbuf_free(&b);
    struct plan_entry *e = plan_push(s);
    if (e)
        e->kind = PLAN_SWALLOW_ERROR;
}

size_t plan_client_msg(struct client *c, struct server *s, const struct msg_hdr *h,
                       const uint8_t *m, size_t have, struct conn *out)
{
    size_t whole = 1 + (size_t)h->len;
    struct msg_reader r;
    mr_init(&r, m + PROTO_HDR_LEN, have - PROTO_HDR_LEN);
    if (s->stmts.fake_unnamed && h->type != FE_PARSE && h->type != FE_SYNC) {
        size_t done = have >= whole ? fake_deallocate(s, h, &r, whole) : 0;
        if (done)
            return done;
    }
    if (h->type == FE_PARSE || h->type == FE_SYNC)
        s->stmts.fake_unnamed = 0;
    switch (h->type) {
    case FE_PARSE: {
        const char *name = mr_str(&r);
        if (!r.bad && !*name && have >= whole && !c->pin_reason) {
            const char *q = mr_str(&r);
            struct sql_info si;
            sql_classify(q, strlen(q), &si);
            int dealloc = !r.bad && si.n == 1 && si.stmts[0].kind == SQL_DEALLOCATE;
            int all = dealloc && si.stmts[0].name == NULL;
            sql_info_free(&si);
            if (dealloc) {
                /* Its statement lives on the servers under pgstay's name: answered here. */
                s->stmts.fake_unnamed = 1;
                s->stmts.fake_all = all;
                push_inject(s, BE_PARSE_COMPLETE);
                return whole;
            }
        }
        if (r.bad || !*name || have < whole) {
            if (!r.bad && !*name)
                unnamed_parsed(c, s, have >= whole ? m : NULL, whole);
            push_forward(s, END_PARSE, 0);
            return 0;
        }
        if (client_stmt_find(c, name)) {
            /* As PostgreSQL answers a name in use: 42P05, and the rest of the batch skipped.
             * pgstay's name would be free on this server, so the error is pgstay's, and a
             * Bind of a statement that cannot exist makes the server skip to Sync too. */
            if (!s->stmts.skipping)
                refuse_parse(s, name, out);
            return whole;
        }
        size_t rest_off = PROTO_HDR_LEN + r.pos;
        uint64_t hash = stmt_hash(m + rest_off, whole - rest_off);
        client_stmt_add(c, name, m, (uint32_t)whole, hash);
        if (s->stmts.skipping)
            return whole;
        int i = cache_find(&s->stmts, hash);
        if (i >= 0) {
            s->stmts.used[i] = now_us();
            push_inject(s, BE_PARSE_COMPLETE);
            return whole;
        }
        char sname[32];
        server_name(sname, hash);
        struct pbuf b;
        pbuf_init(&b);
        size_t off = proto_begin_msg(&b, FE_PARSE);
        pbuf_put_str(&b, sname);
        pbuf_put(&b, m + rest_off, whole - rest_off);
        proto_end_msg(&b, off);
        if (!b.failed)
            conn_write(out, b.data, b.len);
        pbuf_free(&b);
        cache_add(&s->stmts, hash);
        push_forward(s, END_PARSE, hash);
        return whole;
    }
    case FE_BIND: {
        const char *portal = mr_str(&r);
        const char *stmt = mr_str(&r);
        const struct prepared *p = r.bad || !*stmt ? NULL : client_stmt_find(c, stmt);
        if (!p) {
            if (!r.bad && !*stmt)
                ensure_unnamed(c, s, out);
            push_forward(s, END_BIND, 0);
            return 0;
        }
        ensure_prepared(s, p, out);
        char sname[32];
        server_name(sname, p->hash);
        size_t consumed = PROTO_HDR_LEN + r.pos;
        /* New header and names; the parameters that follow are streamed unchanged. */
        uint32_t len = h->len - (uint32_t)strlen(stmt) + (uint32_t)strlen(sname);
        struct pbuf b;
        pbuf_init(&b);
        pbuf_put_u8(&b, FE_BIND);
        pbuf_put_u32(&b, len);
        pbuf_put_str(&b, portal);
        pbuf_put_str(&b, sname);
        if (!b.failed)
            conn_write(out, b.data, b.len);
        pbuf_free(&b);
        push_forward(s, END_BIND, 0);
        return consumed;
    }
    case FE_DESCRIBE:
    case FE_CLOSE: {
        uint8_t kind = mr_u8(&r);
        const char *name = mr_str(&r);
        int is_describe = h->type == FE_DESCRIBE;
        const struct prepared *p =
            (r.bad || kind != 'S' || !*name || have < whole) ? NULL : client_stmt_find(c, name);
        if (!p) {
            if (is_describe && kind == 'S' && !r.bad && !*name)
                ensure_unnamed(c, s, out);
            push_forward(s, is_describe ? (kind == 'S' ? END_DESCRIBE_S : END_DESCRIBE_P) : END_CLOSE, 0);
            return 0;
        }
        if (!is_describe) {
            /* The client's name goes; the server keeps the statement for the next one. */
            client_stmt_del(c, name);
            push_inject(s, BE_CLOSE_COMPLETE);
            return whole;
        }
        ensure_prepared(s, p, out);
        char sname[32];
        server_name(sname, p->hash);
        struct pbuf b;
        pbuf_init(&b);
        size_t off = proto_begin_msg(&b, FE_DESCRIBE);
        pbuf_put_u8(&b, 'S');
        pbuf_put_str(&b, sname);
        proto_end_msg(&b, off);
        if (!b.failed)
            conn_write(out, b.data, b.len);
        pbuf_free(&b);
        push_forward(s, END_DESCRIBE_S, 0);
        return whole;
    }
    case FE_EXECUTE:
        push_forward(s, END_EXECUTE, 0);
        return 0;
    case FE_QUERY:
        /* A simple Query destroys the unnamed statement, on the server and for the client. */
        s->unnamed_owner = 0;
        client_more(c)->unnamed_len = 0;
        client_more(c)->unnamed_seq++;
        push_forward(s, END_READY, 0);
        return 0;
    case FE_SYNC:
    case FE_FUNCTION_CALL:
        push_forward(s, END_READY, 0);
        return 0;
    default:
        return 0;
    }
}
