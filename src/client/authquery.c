/* auth_query: secrets of users not in auth_file, fetched from the current writer as auth_user over
 * a connection of their own (a server without a pool, like a probe), and cached per user. */
#include "client/authquery.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "client/auth.h"
#include "client/client.h"
#include "config/config.h"
#include "config/userlist.h"
#include "core/log.h"
#include "proto/proto.h"
#include "proto/scram.h"
#include "server/server.h"
#include "topology/topology.h"

/* Negative answers (no such user) past their ttl are dropped once the cache holds this many
 * users, so that logins for made-up names cannot grow it without bound. */
#define AUTHQ_SWEEP_AT 1024
/* A lookup that failed without the server refusing it (connection lost) is tried again this
 * many times at once; after that it waits for the next writer (authq_kick). */
#define AUTHQ_RETRIES 2

struct authq_entry {
    struct list node; /* on w->authq */
    char *user;
    char *database;        /* where the lookup in flight (or the last one) logs in */
    struct user_secret us; /* us.secret NULL: the writer said there is no such user */
    int fetched;           /* an answer arrived at least once */
    int64_t fetched_at;    /* ms */
    /* The writer it was fetched from, as (node, generation): after a failover the new writer
     * is asked again whatever the ttl says, since its answer is the one that counts now. */
    const struct node *writer;
    uint64_t generation;
    /* The lookup in flight */
    struct server *s;
    const struct node *asking; /* the node s is connected to, and its generation */
    uint64_t asking_gen;
    int64_t started; /* ms */
    int sent;        /* the query was sent (the next ReadyForQuery is its end) */
    int got_row;
    char *row_secret; /* passwd of the row read, NULL when none or NULL */
    int retries;
};

int authq_enabled(const struct worker *w)
{
    return w->cfg->auth_user && *w->cfg->auth_user;
}

static struct authq_entry *find(struct worker *w, const char *user)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->authq)
    {
        struct authq_entry *e = container_of(pos, struct authq_entry, node);
        if (!strcmp(e->user, user))
            return e;
    }
    return NULL;
}

static void clear_secret(struct user_secret *us)
{
    if (us->secret) {
        OPENSSL_cleanse(us->secret, strlen(us->secret));
        free(us->secret);
        us->secret = NULL;
    }
    if (us->scram) {
        OPENSSL_cleanse(us->scram, sizeof(*us->scram));
        free(us->scram);
        us->scram = NULL;
    }
}

static void entry_free(struct authq_entry *e)
{
    list_del(&e->node);
    clear_secret(&e->us);
    if (e->row_secret) {
        OPENSSL_cleanse(e->row_secret, strlen(e->row_secret));
        free(e->row_secret);
    }
    free(e->user);
    free(e->database);
    free(e);
}

const struct user_secret *authq_find(struct worker *w, const char *user)
{
    if (!authq_enabled(w))
        return NULL;
    struct authq_entry *e = find(w, user);
    return e && e->us.secret ? &e->us : NULL;
}

/* Fresh: fetched from the node that is the writer now, in its current role, within the ttl. */
static int fresh(struct worker *w, const struct authq_entry *e)
{
    const struct node *wr = w->topo->writer;
    return e->fetched && wr && wr == e->writer && wr->generation == e->generation &&
           now_ms() - e->fetched_at < w->cfg->auth_cache_ttl;
}

/* Every client logging in that waits for e's answer: resumed (or closed with msg). */
static void wake(struct worker *w, struct authq_entry *e, const char *msg)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_LOGIN])
    {
        struct client *c = container_of(pos, struct client, node);
        if (c->auth_step != AUTH_STEP_LOOKUP || strcmp(c->user, e->user) != 0)
            continue;
        if (msg)
            client_close(c, SQLSTATE_INVALID_AUTH, msg);
        else
            auth_resume(c);
    }
}

static int waiting(struct worker *w, const struct authq_entry *e)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->clients[CL_LOGIN])
    {
        struct client *c = container_of(pos, struct client, node);
        if (c->auth_step == AUTH_STEP_LOOKUP && !strcmp(c->user, e->user))
            return 1;
    }
    return 0;
}

/* The answer: take the row's secret (md5 or SCRAM, as pg_authid stores it). A plain-text or
 * unreadable value is treated as no secret: PostgreSQL stores none such since version 10. */
static void take_answer(struct worker *w, struct authq_entry *e)
{
    clear_secret(&e->us);
    char *sec = e->got_row ? e->row_secret : NULL;
    e->row_secret = NULL;
    if (sec && !strncmp(sec, "md5", 3) && strlen(sec) == 35) {
        e->us.kind = SECRET_MD5;
        e->us.secret = sec;
    } else if (sec && !strncmp(sec, SCRAM_MECHANISM "$", sizeof(SCRAM_MECHANISM))) {
        e->us.kind = SECRET_SCRAM;
        e->us.scram = calloc(1, sizeof(*e->us.scram));
        if (e->us.scram && scram_parse_secret(sec, e->us.scram) == 0) {
            e->us.secret = sec;
        } else {
            log_warn("auth_query: the secret of user \"%s\" is not a SCRAM secret pgstay can "
                     "read: treated as none",
                     e->user);
            free(e->us.scram);
            e->us.scram = NULL;
            OPENSSL_cleanse(sec, strlen(sec));
            free(sec);
        }
    } else if (sec) {
        log_warn("auth_query: the secret of user \"%s\" is neither md5 nor SCRAM: treated as none",
                 e->user);
        OPENSSL_cleanse(sec, strlen(sec));
        free(sec);
    }
    e->fetched = 1;
    e->fetched_at = now_ms();
    e->writer = e->asking;
    e->generation = e->asking_gen;
    e->retries = 0;
    log_debug("auth_query: user \"%s\": %s (from node %s)", e->user,
              e->us.secret ? (e->us.kind == SECRET_MD5 ? "md5 secret" : "SCRAM secret")
                           : "no such user",
              e->asking ? e->asking->name : "?");
}

static void on_row(struct server *s, int n, const char **vals)
{
    struct authq_entry *e = s->probe_arg;
    if (e->got_row || n < 2)
        return; /* the first row counts, as in PgBouncer */
    e->got_row = 1;
    e->row_secret = vals[1] ? strdup(vals[1]) : NULL;
}

static void on_ready(struct server *s)
{
    struct authq_entry *e = s->probe_arg;
    struct worker *w = s->w;
    if (!e->sent) {
        /* Logged in as auth_user: the query, with the user name as a parameter. */
        const char *vals[1] = {e->user};
        struct pbuf b;
        pbuf_init(&b);
        proto_build_query_params(&b, w->cfg->auth_query, 1, vals);
        server_send_internal(s, b.data, b.len, 1);
        pbuf_free(&b);
        e->sent = 1;
        return;
    }
    /* Answered (an error is logged by the server side and reads as no row). */
    take_answer(w, e);
    e->s = NULL;
    s->on_fail = NULL; /* closed by pgstay, nothing failed */
    server_close(s, "auth_query answered");
    wake(w, e, NULL);
}

static int start(struct worker *w, struct authq_entry *e);

static void on_fail(struct server *s, const char *why)
{
    struct authq_entry *e = s->probe_arg;
    struct worker *w = s->w;
    e->s = NULL;
    if (e->row_secret) {
        OPENSSL_cleanse(e->row_secret, strlen(e->row_secret));
        free(e->row_secret);
        e->row_secret = NULL;
    }
    if (s->login_error) {
        /* auth_user cannot log in there (password, database): the server's words, logged by
         * the server side; the clients learn that the lookup failed. */
        char msg[400];
        snprintf(msg, sizeof(msg), "auth_query failed for user \"%s\": %s", e->user, why);
        log_warn("%s", msg);
        wake(w, e, "auth_query failed: see pgstay's log");
        return;
    }
    log_info("auth_query for user \"%s\" lost its connection: %s", e->user, why);
    if (e->retries++ < AUTHQ_RETRIES && waiting(w, e))
        start(w, e); /* no writer now: authq_kick starts it when there is one */
}

/* Open the lookup connection to the writer; 0 started or waiting for a writer. */
static int start(struct worker *w, struct authq_entry *e)
{
    struct node *wr = w->topo->writer;
    if (!wr)
        return 0;
    struct server *s = server_open(w, NULL, wr, w->cfg->auth_user, e->database);
    if (!s)
        return -1;
    s->on_row = on_row;
    s->on_ready = on_ready;
    s->on_fail = on_fail;
    s->probe_arg = e;
    e->s = s;
    e->asking = wr;
    e->asking_gen = wr->generation;
    e->started = now_ms();
    e->sent = 0;
    e->got_row = 0;
    return 0;
}

/* Forget the answers nobody needs: no such user, past the ttl, nothing in flight. Known
 * secrets stay: a pool's server logins for that user read them. */
static void sweep(struct worker *w)
{
    int n = 0;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->authq) n++;
    if (n < AUTHQ_SWEEP_AT)
        return;
    int64_t now = now_ms();
    list_for_each_safe(pos, tmp, &w->authq)
    {
        struct authq_entry *e = container_of(pos, struct authq_entry, node);
        if (!e->s && !e->us.secret && now - e->fetched_at >= w->cfg->auth_cache_ttl &&
            !waiting(w, e))
            entry_free(e);
    }
}

int authq_lookup(struct client *c)
{
    struct worker *w = c->w;
    struct authq_entry *e = find(w, c->user);
    if (e && fresh(w, e))
        return 1;
    if (!e) {
        sweep(w);
        e = calloc(1, sizeof(*e));
        if (!e || !(e->user = strdup(c->user))) {
            free(e);
            return 1; /* no memory: as if no such user (the login fails) */
        }
        e->us.user = e->user;
        list_append(&w->authq, &e->node);
    }
    if (e->s && now_ms() - e->started > w->cfg->server_connect_timeout + 2000) {
        /* A lookup that hangs (a frozen writer) does not hold every later login. */
        struct server *s = e->s;
        e->s = NULL;
        s->on_fail = NULL;
        server_close(s, "auth_query took too long");
    }
    if (!e->s) {
        free(e->database);
        e->database = strdup(c->database);
        e->retries = 0;
        if (!e->database || start(w, e) < 0)
            return 1;
    }
    return 0;
}

void authq_kick(struct worker *w)
{
    if (!w->topo || !w->topo->writer)
        return;
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->authq)
    {
        struct authq_entry *e = container_of(pos, struct authq_entry, node);
        if (!e->s && e->database && waiting(w, e))
            start(w, e);
    }
}

void authq_free(struct worker *w)
{
    struct list *pos, *tmp;
    list_for_each_safe(pos, tmp, &w->authq)
    {
        entry_free(container_of(pos, struct authq_entry, node));
    }
}
