/* Model check of client/track.c: random sequences of requests (simple Queries of several
 * statements, extended batches up to Sync, answered early after a Flush or not, several in
 * flight at once) are run through a reference model of PostgreSQL's transaction semantics
 * (session values, block state I/T/E, implicit transactions, savepoint stack). The model also
 * plays the server: which statements complete with which tag, where an error stops the
 * request, which ReadyForQuery status ends it. After every ReadyForQuery the settings the
 * tracker kept (c->more->sets) must be exactly the values the model committed.
 *
 * A failing random sequence is shrunk to a minimal one and printed as a readable script.
 * Environment: TRACK_SEED (first seed), TRACK_RUNS (sequences per random test). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/client.h"
#include "client/track.h"

/* ---- statements ---- */

enum gk {
    G_SELECT = 0, /* a plain statement (tag SELECT 1) */
    G_SET,        /* SET <setting> TO '<val>' */
    G_RESET,      /* RESET <setting> */
    G_RESET_ALL,
    G_SAVEPOINT,  /* SAVEPOINT <sp> */
    G_RELEASE,
    G_ROLLBACK_TO,
    G_BEGIN,
    G_COMMIT,
    G_ROLLBACK,
};

#define NV 2  /* settings x, y */
#define NSP 2 /* savepoints a, b */
static const char *const VNAME[NV] = {"x", "y"};
static const char *const SPNAME[NSP] = {"a", "b"};

struct gst {
    int kind;
    int name; /* setting or savepoint index */
    int val;  /* G_SET: 1.. */
    int fail; /* the server refuses it (bad value, 1/0, deferred constraint at COMMIT) */
    int null_st; /* extended: Execute sent with no statement info (NULL) */
};

#define MAXST 8
#define MAXREQ 16

struct greq {
    int ext;     /* extended batch (Execute... Sync) rather than one simple Query */
    int flush;   /* extended: Flush after each Execute, answered before the Sync */
    int ahead;   /* sent without waiting for the answers to the previous requests */
    int partial; /* answers delivered just before sending it (when ahead) */
    int n;
    struct gst st[MAXST];
};

struct scenario {
    int n;
    struct greq r[MAXREQ];
};

static void stmt_text(const struct gst *s, char *out, size_t len)
{
    switch (s->kind) {
    case G_SELECT: snprintf(out, len, "%s", s->fail ? "SELECT 1/0" : "SELECT 1"); break;
    case G_SET:
        snprintf(out, len, "SET %s TO '%d'%s", VNAME[s->name], s->val, s->fail ? " (fails)" : "");
        break;
    case G_RESET: snprintf(out, len, "RESET %s", VNAME[s->name]); break;
    case G_RESET_ALL: snprintf(out, len, "RESET ALL"); break;
    case G_SAVEPOINT: snprintf(out, len, "SAVEPOINT %s", SPNAME[s->name]); break;
    case G_RELEASE: snprintf(out, len, "RELEASE %s", SPNAME[s->name]); break;
    case G_ROLLBACK_TO: snprintf(out, len, "ROLLBACK TO %s", SPNAME[s->name]); break;
    case G_BEGIN: snprintf(out, len, "BEGIN"); break;
    case G_COMMIT: snprintf(out, len, "COMMIT%s", s->fail ? " (fails: deferred)" : ""); break;
    case G_ROLLBACK: snprintf(out, len, "ROLLBACK"); break;
    }
}

static void print_scenario(const struct scenario *sc)
{
    for (int i = 0; i < sc->n; i++) {
        const struct greq *r = &sc->r[i];
        char line[1024];
        size_t o = 0;
        o += (size_t)snprintf(line + o, sizeof(line) - o, "  #%d %s%s%s: ", i,
                              r->ext ? (r->flush ? "extended+Flush" : "extended") : "Query",
                              r->ahead ? " pipelined" : "",
                              r->ahead && r->partial ? " (after some answers)" : "");
        if (!r->ext && r->n == 0)
            o += (size_t)snprintf(line + o, sizeof(line) - o, "\"\" (empty)");
        for (int k = 0; k < r->n; k++) {
            char t[128];
            stmt_text(&r->st[k], t, sizeof(t));
            if (r->ext)
                o += (size_t)snprintf(line + o, sizeof(line) - o, "Execute(%s%s)%s ", t,
                                      r->st[k].null_st ? ", no info" : "",
                                      r->flush ? " Flush" : "");
            else
                o += (size_t)snprintf(line + o, sizeof(line) - o, "%s%s", k ? "; " : "", t);
            if (o >= sizeof(line))
                break;
        }
        if (r->ext && o < sizeof(line))
            snprintf(line + o, sizeof(line) - o, "Sync");
        fprintf(stderr, "%s\n", line);
    }
}

/* ---- the reference model (PostgreSQL) ---- */

enum { X_NONE = 0, X_IMPLICIT, X_BLOCK, X_FAILED };

struct model {
    int committed[NV]; /* 0: default, else the value SET */
    int cur[NV];
    int xact;
    struct { int name; int vals[NV]; } sp[64];
    int nsp;
};

static void m_abort(struct model *m)
{
    memcpy(m->cur, m->committed, sizeof(m->cur));
    m->nsp = 0;
    m->xact = X_NONE;
}

static void m_commit(struct model *m)
{
    memcpy(m->committed, m->cur, sizeof(m->cur));
    m->nsp = 0;
    m->xact = X_NONE;
}

static int m_find_sp(const struct model *m, int name)
{
    for (int i = m->nsp - 1; i >= 0; i--)
        if (m->sp[i].name == name)
            return i;
    return -1;
}

/* An error: a block fails, anything else (implicit transaction) rolls back. */
static int m_error(struct model *m)
{
    if (m->xact == X_BLOCK || m->xact == X_FAILED)
        m->xact = X_FAILED;
    else
        m_abort(m);
    return 0;
}

/* Run one statement; 1 and its tag, or 0 for an ErrorResponse. */
static int m_exec(struct model *m, const struct gst *s, char *tag, size_t taglen)
{
    int i;
    if (m->xact == X_FAILED) {
        switch (s->kind) {
        case G_COMMIT:
        case G_ROLLBACK:
            m_abort(m);
            snprintf(tag, taglen, "ROLLBACK");
            return 1;
        case G_ROLLBACK_TO:
            if ((i = m_find_sp(m, s->name)) < 0)
                return 0; /* stays failed */
            memcpy(m->cur, m->sp[i].vals, sizeof(m->cur));
            m->nsp = i + 1;
            m->xact = X_BLOCK;
            snprintf(tag, taglen, "ROLLBACK");
            return 1;
        default:
            return 0; /* 25P02 */
        }
    }
    if (s->fail && (s->kind == G_SELECT || s->kind == G_SET)) {
        return m_error(m);
    }
    if (s->fail && s->kind == G_COMMIT && m->xact != X_NONE) {
        m_abort(m); /* a COMMIT that fails ends the transaction, rolled back */
        return 0;
    }
    if (m->xact == X_NONE)
        m->xact = X_IMPLICIT;
    switch (s->kind) {
    case G_SELECT: snprintf(tag, taglen, "SELECT 1"); return 1;
    case G_SET:
        m->cur[s->name] = s->val;
        snprintf(tag, taglen, "SET");
        return 1;
    case G_RESET:
        m->cur[s->name] = 0;
        snprintf(tag, taglen, "RESET");
        return 1;
    case G_RESET_ALL:
        memset(m->cur, 0, sizeof(m->cur));
        snprintf(tag, taglen, "RESET");
        return 1;
    case G_BEGIN:
        m->xact = X_BLOCK; /* an implicit transaction's work so far joins the block */
        snprintf(tag, taglen, "BEGIN");
        return 1;
    case G_COMMIT:
        m_commit(m); /* outside a block: WARNING, the implicit transaction commits */
        snprintf(tag, taglen, "COMMIT");
        return 1;
    case G_ROLLBACK:
        m_abort(m); /* outside a block: WARNING, the implicit transaction rolls back */
        snprintf(tag, taglen, "ROLLBACK");
        return 1;
    case G_SAVEPOINT:
        if (m->xact != X_BLOCK)
            return m_error(m); /* 25P01: only in transaction blocks */
        m->sp[m->nsp].name = s->name;
        memcpy(m->sp[m->nsp].vals, m->cur, sizeof(m->cur));
        if (m->nsp < 63)
            m->nsp++;
        snprintf(tag, taglen, "SAVEPOINT");
        return 1;
    case G_RELEASE:
        if (m->xact != X_BLOCK || (i = m_find_sp(m, s->name)) < 0)
            return m_error(m);
        m->nsp = i;
        snprintf(tag, taglen, "RELEASE");
        return 1;
    case G_ROLLBACK_TO:
        if (m->xact != X_BLOCK || (i = m_find_sp(m, s->name)) < 0)
            return m_error(m);
        memcpy(m->cur, m->sp[i].vals, sizeof(m->cur));
        m->nsp = i + 1;
        snprintf(tag, taglen, "ROLLBACK");
        return 1;
    }
    return 1;
}

/* The end of a request (end of the Query, or Sync): an implicit transaction commits. */
static char m_end(struct model *m)
{
    if (m->xact == X_IMPLICIT)
        m_commit(m);
    return m->xact == X_BLOCK ? 'T' : m->xact == X_FAILED ? 'E' : 'I';
}

/* ---- the server's answers, queued ---- */

enum { EV_COMPLETE, EV_ERROR, EV_READY };

struct answer {
    int type;
    char tag[32];
    int null_tag;
    char status;
    int committed[NV];
    int req;
};

struct run {
    struct client *c;
    struct model m;
    struct answer ev[MAXREQ * (MAXST + 2)];
    int n_ev, n_avail, n_done;
    int inflight;   /* requests sent, ReadyForQuery not delivered */
    int failed;
    int verbose;
    char why[512];
};

static void tk_stmt(const struct gst *s, struct track_stmt *t, char *stmtbuf, size_t len)
{
    memset(t, 0, sizeof(*t));
    switch (s->kind) {
    case G_SET:
        t->kind = TK_SET;
        t->name = (char *)VNAME[s->name];
        snprintf(stmtbuf, len, "SET %s TO '%d'", VNAME[s->name], s->val);
        t->stmt = stmtbuf;
        break;
    case G_RESET: t->kind = TK_RESET; t->name = (char *)VNAME[s->name]; break;
    case G_RESET_ALL: t->kind = TK_RESET_ALL; break;
    case G_SAVEPOINT: t->kind = TK_SAVEPOINT; t->name = (char *)SPNAME[s->name]; break;
    case G_RELEASE: t->kind = TK_RELEASE; t->name = (char *)SPNAME[s->name]; break;
    case G_ROLLBACK_TO: t->kind = TK_ROLLBACK_TO; t->name = (char *)SPNAME[s->name]; break;
    case G_COMMIT: t->kind = TK_COMMIT; break;
    case G_ROLLBACK: t->kind = TK_ROLLBACK; break;
    default: t->kind = TK_OTHER; break;
    }
}

static void push_ev(struct run *R, int type, const char *tag, int req)
{
    struct answer *e = &R->ev[R->n_ev++];
    memset(e, 0, sizeof(*e));
    e->type = type;
    e->req = req;
    if (tag)
        snprintf(e->tag, sizeof(e->tag), "%s", tag);
    else
        e->null_tag = 1;
}

static void check_sets(struct run *R, const int *want, int req)
{
    if (R->failed)
        return;
    int n_want = 0;
    for (int v = 0; v < NV; v++) {
        char exp[64];
        const char *got = kv_get(&client_more(R->c)->sets, VNAME[v]);
        if (want[v]) {
            n_want++;
            snprintf(exp, sizeof(exp), "SET %s TO '%d'", VNAME[v], want[v]);
        }
        if ((want[v] == 0) != (got == NULL) || (got && strcmp(got, exp) != 0)) {
            snprintf(R->why, sizeof(R->why),
                     "after the ReadyForQuery of request #%d: %s is %s in the kept settings, PostgreSQL "
                     "has %s",
                     req, VNAME[v], got ? got : "(unset)", want[v] ? exp : "(default)");
            R->failed = 1;
            return;
        }
    }
    if (client_more(R->c)->sets.n != n_want) {
        snprintf(R->why, sizeof(R->why), "after request #%d: the kept settings have %d entries, want %d", req,
                 client_more(R->c)->sets.n, n_want);
        R->failed = 1;
    }
}

static void deliver_one(struct run *R)
{
    struct answer *e = &R->ev[R->n_done++];
    switch (e->type) {
    case EV_COMPLETE: track_complete(R->c, e->null_tag ? NULL : e->tag); break;
    case EV_ERROR: track_error(R->c); break;
    case EV_READY:
        track_ready(R->c, e->status);
        R->inflight--;
        check_sets(R, e->committed, e->req);
        break;
    }
}

static void deliver(struct run *R, int n)
{
    while (n-- > 0 && R->n_done < R->n_avail)
        deliver_one(R);
}

static void deliver_all(struct run *R)
{
    deliver(R, 1 << 30);
}

static void end_request(struct run *R, int req)
{
    char st = m_end(&R->m);
    push_ev(R, EV_READY, "", req);
    struct answer *e = &R->ev[R->n_ev - 1];
    e->status = st;
    memcpy(e->committed, R->m.committed, sizeof(e->committed));
    R->n_avail = R->n_ev;
}

/* Run a scenario against track.c; 0 if every ReadyForQuery left the right settings. */
static int run_scenario(const struct scenario *sc, char *why, size_t whylen)
{
    struct run *R = calloc(1, sizeof(*R));
    assert_non_null(R);
    R->c = calloc(1, sizeof(struct client));
    assert_non_null(R->c);
    for (int i = 0; i < sc->n && !R->failed; i++) {
        const struct greq *q = &sc->r[i];
        if (!q->ahead)
            deliver_all(R);
        else
            deliver(R, q->partial);
        while (R->inflight >= 4) /* a bounded pipeline */
            deliver(R, 1);
        R->inflight++;
        int dead = 0;
        if (!q->ext) {
            struct track_stmt ts[MAXST];
            char bufs[MAXST][64];
            for (int k = 0; k < q->n; k++)
                tk_stmt(&q->st[k], &ts[k], bufs[k], sizeof(bufs[k]));
            track_query(R->c, ts, q->n);
            if (q->n == 0)
                push_ev(R, EV_COMPLETE, NULL, i); /* EmptyQueryResponse */
            for (int k = 0; k < q->n && !dead; k++) {
                char tag[32];
                if (m_exec(&R->m, &q->st[k], tag, sizeof(tag))) {
                    push_ev(R, EV_COMPLETE, tag, i);
                } else {
                    push_ev(R, EV_ERROR, NULL, i);
                    dead = 1;
                }
            }
            end_request(R, i);
        } else {
            for (int k = 0; k < q->n && !R->failed; k++) {
                struct track_stmt ts;
                char buf[64];
                tk_stmt(&q->st[k], &ts, buf, sizeof(buf));
                track_execute(R->c, q->st[k].null_st ? NULL : &ts);
                if (!dead) {
                    char tag[32];
                    if (m_exec(&R->m, &q->st[k], tag, sizeof(tag))) {
                        push_ev(R, EV_COMPLETE, tag, i);
                    } else {
                        push_ev(R, EV_ERROR, NULL, i);
                        dead = 1;
                    }
                }
                if (q->flush) { /* the server answers what it ran so far */
                    R->n_avail = R->n_ev;
                    deliver_all(R);
                }
            }
            track_sync(R->c);
            end_request(R, i);
        }
    }
    deliver_all(R);
    if (!R->failed && (client_more(R->c)->track.n != 0 || client_more(R->c)->track.plain_tail != 0)) {
        snprintf(R->why, sizeof(R->why), "all answered, yet the tracker has %d records and %u "
                 "plain requests in flight", client_more(R->c)->track.n, client_more(R->c)->track.plain_tail);
        R->failed = 1;
    }
    int failed = R->failed;
    if (why)
        snprintf(why, whylen, "%s", R->why);
    track_free(&client_more(R->c)->track);
    kv_clear(&client_more(R->c)->sets);
    free(R->c->more);
    free(R->c);
    free(R);
    return failed;
}

/* ---- random sequences ---- */

static uint64_t rng_state;

static uint32_t rnd(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static int pct(int p)
{
    return (int)(rnd() % 100) < p;
}

struct gen_opts {
    int max_per_query; /* statements per simple Query */
    int flush;         /* may answer extended batches before their Sync */
    int n_sp;          /* savepoint names in use (1 or 2) */
};

static void gen_stmt(struct gst *s, const struct gen_opts *o)
{
    static const struct { int kind, w; } W[] = {
        {G_SELECT, 14}, {G_SET, 20}, {G_RESET, 5}, {G_RESET_ALL, 3}, {G_SAVEPOINT, 13},
        {G_RELEASE, 7}, {G_ROLLBACK_TO, 9}, {G_BEGIN, 13}, {G_COMMIT, 10}, {G_ROLLBACK, 6},
    };
    int total = 0;
    for (size_t i = 0; i < sizeof(W) / sizeof(W[0]); i++)
        total += W[i].w;
    int x = (int)(rnd() % (uint32_t)total);
    memset(s, 0, sizeof(*s));
    for (size_t i = 0; i < sizeof(W) / sizeof(W[0]); i++) {
        if (x < W[i].w) {
            s->kind = W[i].kind;
            break;
        }
        x -= W[i].w;
    }
    s->name = (int)(rnd() % 2);
    if (s->kind == G_SAVEPOINT || s->kind == G_RELEASE || s->kind == G_ROLLBACK_TO)
        s->name = (int)(rnd() % (uint32_t)o->n_sp);
    s->val = 1 + (int)(rnd() % 9);
    if (s->kind == G_SELECT || s->kind == G_SET || s->kind == G_COMMIT)
        s->fail = pct(s->kind == G_COMMIT ? 5 : 12);
    s->null_st = s->kind == G_SELECT && pct(30);
}

static void gen_scenario(struct scenario *sc, const struct gen_opts *o)
{
    memset(sc, 0, sizeof(*sc));
    sc->n = 1 + (int)(rnd() % MAXREQ);
    for (int i = 0; i < sc->n; i++) {
        struct greq *q = &sc->r[i];
        q->ext = pct(45);
        q->flush = o->flush && q->ext && pct(30);
        q->ahead = pct(50);
        q->partial = q->ahead ? (int)(rnd() % 4) : 0;
        int max = q->ext ? 5 : o->max_per_query;
        q->n = (int)(rnd() % (uint32_t)(max + 1));
        if (!q->ext && q->n == 0 && pct(70))
            q->n = 1; /* empty Queries: rare */
        for (int k = 0; k < q->n; k++)
            gen_stmt(&q->st[k], o);
    }
}

/* Greedy shrinking: drop requests, statements and flags while it still fails. */
static void shrink(struct scenario *sc)
{
    int changed = 1;
    while (changed) {
        changed = 0;
        for (int i = 0; i < sc->n; i++) {
            struct scenario t = *sc;
            memmove(&t.r[i], &t.r[i + 1], (size_t)(t.n - i - 1) * sizeof(t.r[0]));
            t.n--;
            if (run_scenario(&t, NULL, 0)) {
                *sc = t;
                changed = 1;
                i--;
            }
        }
        for (int i = 0; i < sc->n; i++) {
            for (int k = 0; k < sc->r[i].n; k++) {
                struct scenario t = *sc;
                struct greq *q = &t.r[i];
                memmove(&q->st[k], &q->st[k + 1], (size_t)(q->n - k - 1) * sizeof(q->st[0]));
                q->n--;
                if (run_scenario(&t, NULL, 0)) {
                    *sc = t;
                    changed = 1;
                    k--;
                }
            }
            for (int f = 0; f < 4; f++) {
                struct scenario t = *sc;
                struct greq *q = &t.r[i];
                int *flag = f == 0 ? &q->flush : f == 1 ? &q->ahead : f == 2 ? &q->partial : &q->ext;
                if (!*flag || (f == 3 && q->n > 1))
                    continue; /* (a batch of several is not made a Query: another failure) */
                *flag = 0;
                if (f == 3)
                    q->flush = 0;
                if (run_scenario(&t, NULL, 0)) {
                    *sc = t;
                    changed = 1;
                }
            }
            for (int k = 0; k < sc->r[i].n; k++) {
                struct gst *s = &sc->r[i].st[k];
                if (s->null_st) {
                    s->null_st = 0;
                    if (run_scenario(sc, NULL, 0))
                        changed = 1;
                    else
                        s->null_st = 1;
                }
                /* a simpler statement in its place */
                if (s->kind != G_SELECT) {
                    struct gst old = *s;
                    memset(s, 0, sizeof(*s));
                    if (run_scenario(sc, NULL, 0))
                        changed = 1;
                    else
                        *s = old;
                }
            }
        }
    }
}

static uint64_t env_u64(const char *name, uint64_t dflt)
{
    const char *v = getenv(name);
    return v && *v ? strtoull(v, NULL, 0) : dflt;
}

static void random_check(const struct gen_opts *o, uint64_t seed0, int runs)
{
    seed0 = env_u64("TRACK_SEED", seed0);
    runs = (int)env_u64("TRACK_RUNS", (uint64_t)runs);
    for (int run = 0; run < runs; run++) {
        uint64_t seed = seed0 + (uint64_t)run;
        rng_state = seed * 0x9E3779B97F4A7C15ull + 1;
        struct scenario sc;
        gen_scenario(&sc, o);
        char why[512];
        if (run_scenario(&sc, why, sizeof(why))) {
            shrink(&sc);
            run_scenario(&sc, why, sizeof(why));
            fprintf(stderr, "track.c disagrees with PostgreSQL (seed %llu, run %d), shrunk to:\n",
                    (unsigned long long)seed, run);
            print_scenario(&sc);
            fprintf(stderr, "  -> %s\n", why);
            fail_msg("random sequence %d of %d failed (see above)", run + 1, runs);
        }
    }
}

/* Everything: several statements per Query, early answers after Flush, pipelining. */
static void test_random_full(void **state)
{
    struct gen_opts o = {.max_per_query = 5, .flush = 1, .n_sp = 2};
    random_check(&o, 1000, 300000);
}

/* One statement per Query, every answer after its Sync (extended batches still have several):
 * a narrower space, so the failures of the full test there do not hide others. */
static void test_random_one_statement_queries(void **state)
{
    struct gen_opts o = {.max_per_query = 1, .flush = 0, .n_sp = 2};
    random_check(&o, 900000, 300000);
}

/* The same with a single savepoint name (test_found_release_unfollowed_savepoint needs two). */
static void test_random_narrow(void **state)
{
    struct gen_opts o = {.max_per_query = 1, .flush = 0, .n_sp = 1};
    random_check(&o, 5000000, 300000);
}

/* ---- hand-written cases ---- */

#define S_(k, nm, v) {.kind = (k), .name = (nm), .val = (v)}
#define SEL {.kind = G_SELECT}
#define FAIL {.kind = G_SELECT, .fail = 1}
#define SET_X(v) S_(G_SET, 0, v)
#define SP(n) S_(G_SAVEPOINT, n, 0)
#define REL(n) S_(G_RELEASE, n, 0)
#define RBTO(n) S_(G_ROLLBACK_TO, n, 0)
#define BEGIN_ S_(G_BEGIN, 0, 0)
#define COMMIT_ S_(G_COMMIT, 0, 0)
#define ROLLBACK_ S_(G_ROLLBACK, 0, 0)
#define SPA 0
#define SPB 1

/* Each element one request: Q(...) a simple Query, X(...) an extended batch up to Sync. */
#define Q(...) {.ext = 0, .n = sizeof((struct gst[]){__VA_ARGS__}) / sizeof(struct gst), .st = {__VA_ARGS__}}
#define QP(...) {.ext = 0, .ahead = 1, .n = sizeof((struct gst[]){__VA_ARGS__}) / sizeof(struct gst), .st = {__VA_ARGS__}}
#define X(...) {.ext = 1, .n = sizeof((struct gst[]){__VA_ARGS__}) / sizeof(struct gst), .st = {__VA_ARGS__}}
#define XP(...) {.ext = 1, .ahead = 1, .n = sizeof((struct gst[]){__VA_ARGS__}) / sizeof(struct gst), .st = {__VA_ARGS__}}
#define XF(...) {.ext = 1, .flush = 1, .n = sizeof((struct gst[]){__VA_ARGS__}) / sizeof(struct gst), .st = {__VA_ARGS__}}

static void expect_ok(const struct scenario *sc)
{
    char why[512];
    if (run_scenario(sc, why, sizeof(why))) {
        fprintf(stderr, "track.c disagrees with PostgreSQL on:\n");
        print_scenario(sc);
        fprintf(stderr, "  -> %s\n", why);
        fail_msg("%s", why);
    }
}

#define CASE(name, ...)                                                                        \
    static void name(void **state)                                                             \
    {                                                                                          \
        static const struct greq reqs[] = {__VA_ARGS__};                                       \
        struct scenario sc;                                                                    \
        memset(&sc, 0, sizeof(sc));                                                            \
        sc.n = (int)(sizeof(reqs) / sizeof(reqs[0]));                                          \
        memcpy(sc.r, reqs, sizeof(reqs));                                                      \
        expect_ok(&sc);                                                                        \
    }

/* set in a savepoint rolled back: x stays 1 */
CASE(test_set_in_savepoint_rolled_back, Q(SET_X(1)), Q(BEGIN_), Q(SP(SPA)), Q(SET_X(2)),
     Q(RBTO(SPA)), Q(COMMIT_))
/* and with an effect before the savepoint (so the savepoint is followed) */
CASE(test_set_in_followed_savepoint_rolled_back, Q(BEGIN_), Q(SET_X(1)), Q(SP(SPA)), Q(SET_X(2)),
     Q(RBTO(SPA)), Q(COMMIT_))
/* RELEASE keeps what the savepoint did */
CASE(test_release_keeps, Q(BEGIN_), Q(SP(SPA)), Q(SET_X(2)), Q(REL(SPA)), Q(COMMIT_))
/* SET then an error in the same implicit transaction: nothing kept */
CASE(test_set_then_error_same_query, Q(SET_X(1), FAIL))
CASE(test_set_then_error_same_batch, X(SET_X(1), FAIL))
/* pipelined [SELECT 1/0; Sync][SET x; Sync]: the error ends its own request only */
CASE(test_pipelined_error_then_set_kept, X(FAIL), XP(SET_X(3)))
CASE(test_pipelined_error_then_set_query_kept, Q(FAIL), QP(SET_X(3)))
/* a failed block: COMMIT answers ROLLBACK */
CASE(test_commit_of_failed_block, Q(BEGIN_), Q(SET_X(1)), Q(FAIL), Q(COMMIT_))
/* a failed block rescued by ROLLBACK TO, then committed */
CASE(test_rollback_to_rescues_block, Q(BEGIN_), Q(SET_X(1)), Q(SP(SPA)), Q(SET_X(2)), Q(FAIL),
     Q(RBTO(SPA)), Q(COMMIT_))
/* an implicit transaction committed by COMMIT inside a Query; the error after it loses only
 * what followed */
CASE(test_commit_inside_query_then_error, Q(SET_X(1), COMMIT_, S_(G_SET, 1, 2), FAIL))
/* pipelined BEGIN / SET / COMMIT, all in flight before any answer */
CASE(test_pipelined_block, Q(BEGIN_), QP(SET_X(4)), QP(COMMIT_))
CASE(test_pipelined_block_rolled_back, Q(BEGIN_), QP(SET_X(4)), QP(ROLLBACK_))

/* ---- failures found by the model (track.c as of this writing) ---- */

/* ROLLBACK in the same simple Query as the SET: PostgreSQL rolls the implicit transaction back
 * (WARNING: there is no transaction in progress); track_query asks track_wants() about each
 * statement against what is already in flight, not against the statements of the same Query
 * before it, so the ROLLBACK (and SAVEPOINT, ROLLBACK TO, RELEASE) is not followed. */
CASE(test_found_set_then_rollback_one_query, Q(SET_X(1), ROLLBACK_))
CASE(test_found_block_rolled_back_one_query, Q(BEGIN_, SET_X(1), ROLLBACK_))
CASE(test_found_savepoint_rolled_back_one_query, Q(BEGIN_, SET_X(1), SP(SPA), SET_X(2), RBTO(SPA),
                                                   COMMIT_))

/* Extended protocol with Flush: the server answers an Execute before the Sync is sent; the
 * batch is not yet a record (pushed at track_sync), so head_rec() finds nothing and the
 * CommandComplete is lost: a SET that took effect is not followed. */
CASE(test_found_set_answered_before_sync, XF(SET_X(1)))

/* A savepoint taken before any effect is not followed (track_wants); RELEASE of it does not
 * find it, so the savepoints after it stay on the tracker's list although PostgreSQL released
 * them; ROLLBACK TO a same-named savepoint taken before then goes back to the stale one. */
CASE(test_found_release_unfollowed_savepoint, Q(BEGIN_), Q(SP(SPB)), Q(SP(SPA)), Q(SET_X(1)),
     Q(SP(SPB)), Q(REL(SPA)), Q(RBTO(SPB)), Q(COMMIT_))

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_set_in_savepoint_rolled_back),
        cmocka_unit_test(test_set_in_followed_savepoint_rolled_back),
        cmocka_unit_test(test_release_keeps),
        cmocka_unit_test(test_set_then_error_same_query),
        cmocka_unit_test(test_set_then_error_same_batch),
        cmocka_unit_test(test_pipelined_error_then_set_kept),
        cmocka_unit_test(test_pipelined_error_then_set_query_kept),
        cmocka_unit_test(test_commit_of_failed_block),
        cmocka_unit_test(test_rollback_to_rescues_block),
        cmocka_unit_test(test_commit_inside_query_then_error),
        cmocka_unit_test(test_pipelined_block),
        cmocka_unit_test(test_pipelined_block_rolled_back),
        cmocka_unit_test(test_found_set_then_rollback_one_query),
        cmocka_unit_test(test_found_block_rolled_back_one_query),
        cmocka_unit_test(test_found_savepoint_rolled_back_one_query),
        cmocka_unit_test(test_found_set_answered_before_sync),
        cmocka_unit_test(test_found_release_unfollowed_savepoint),
        cmocka_unit_test(test_random_narrow),
        cmocka_unit_test(test_random_one_statement_queries),
        cmocka_unit_test(test_random_full),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
