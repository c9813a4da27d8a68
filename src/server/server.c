/* The server state machine: connect, log in, run pgstay's own queries, forward to the client. */
#include "server/server.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include <event2/dns.h>

#include "client/authquery.h"
#include "client/track.h"
#include "config/userlist.h"
#include "core/conn.h"
#include "core/log.h"
#include "core/tls.h"
#include "pool/backoff.h"
#include "pool/pool.h"
#include "proto/md5.h"
#include "proto/frame.h"
#include "proto/proto.h"
#include "topology/topology.h"

/* Messages pgstay reads whole from a server (login, errors, its own queries' rows). */
/* Below the read high-water mark, so that a whole message always fits in what is read. */
#define WHOLE_MAX (256 * 1024)

#define SLOG(lvl, s, fmt, ...)                                                                     \
    log_##lvl("S-%llu %s/%s@%s: " fmt, (unsigned long long)(s)->id, (s)->user, (s)->database,     \
              (s)->nd ? (s)->nd->name : "?", ##__VA_ARGS__)

void server_change_state(struct server *s, enum server_state st)
{
    struct worker *w = s->w;
    list_del(&s->node);
    w->n_servers[s->state]--;
    s->state = st;
    list_append(&w->servers[st], &s->node);
    w->n_servers[st]++;
}

int server_move(struct server *s, struct pool *to)
{
    struct worker *from = s->w, *w = to->w;
    if (s->state != SV_IDLE || s->client || s->cancels > 0 || conn_move(&s->conn, &w->loop) < 0) {
        SLOG(debug, s, "cannot move to worker %d yet (state %d, unread %d, unsent %d)", w->index,
             s->state, s->conn.in.data != NULL, s->conn.out.data != NULL);
        return -1;
    }
    list_del(&s->pool_node);
    list_del(&s->node);
    from->n_servers[SV_IDLE]--;
    s->pool->n_servers--;
    s->w = w;
    s->pool = to;
    list_append(&w->servers[SV_IDLE], &s->node);
    w->n_servers[SV_IDLE]++;
    to->n_servers++;
    list_append(&to->idle, &s->pool_node);
    SLOG(debug, s, "moved from worker %d to worker %d", from->index, w->index);
    return 0;
}

void server_send(struct server *s, const void *p, size_t n)
{
    if (s->state != SV_CLOSING)
        conn_write(&s->conn, p, n);
}

static void send_pbuf(struct server *s, struct pbuf *b)
{
    if (!b->failed)
        server_send(s, b->data, b->len);
    pbuf_free(b);
}

const char *server_param(struct server *s, const char *name)
{
    return kv_get(&s->params, name);
}

void server_close(struct server *s, const char *reason)
{
    server_close_by(s, EVIDENCE_NONE, reason);
}

void server_close_by(struct server *s, enum writer_evidence ev, const char *reason)
{
    if (s->state == SV_CLOSING)
        return;
    enum server_state was = s->state;
    /* Probes come and go every period: their lines would drown the rest (debug only). */
    if (s->w->cfg->log_disconnections && s->pool)
        SLOG(info, s, "closing because: %s (age=%llds)", reason,
             (long long)((now_ms() - s->connected_at) / 1000));
    else
        SLOG(debug, s, "closing because: %s", reason);
    conn_read_stop(&s->conn);
    if (was != SV_CONNECTING && was != SV_CLOSING) {
        struct pbuf b;
        pbuf_init(&b);
        proto_build_terminate(&b);
        if (!b.failed)
            conn_write(&s->conn, b.data, b.len);
        pbuf_free(&b);
    }
    if (s->state == SV_IDLE)
        list_del(&s->pool_node);
    server_change_state(s, SV_CLOSING);
    if (s->nd && s->pool)
        s->nd->n_servers--;
    struct client *c = s->client;
    s->client = NULL;
    struct pool *p = s->pool;
    if (p) {
        p->n_servers--;
        pool_slot_give(p);
        if (was == SV_CONNECTING || was == SV_LOGIN)
            p->n_connecting--;
        if (s->checking)
            p->n_checking--;
        /* A writer connection that dies may mean the writer died: look now, not at the next
         * probe; and before its client is told, so that the failure counts in the failover it
         * starts (or the suspicion before it). */
        if (p->role == ROLE_WRITER && s->nd && s->nd == s->w->topo->writer &&
            was != SV_RESETTING && !s->w->shutting_down && ev != EVIDENCE_NONE)
            topology_probe_now(s->w, ev, reason);
    }
    if (c)
        client_server_lost(c, reason);
    if (p) {
        s->pool = NULL;
        pool_kick_sharing(p);
    } else if (was != SV_CLOSING && s->on_fail) {
        s->on_fail(s, reason);
    }
    worker_schedule_reap(s->w);
}

void server_free(struct server *s)
{
    conn_flush_now(&s->conn);
    conn_close(&s->conn);
    list_del(&s->node);
    s->w->n_servers[s->state]--;
    kv_clear(&s->params);
    kv_clear(&s->applied);
    plan_free(s);
    free(s->scram);
    free(s->user);
    free(s->database);
    free(s);
}

void server_send_internal(struct server *s, const void *p, size_t n, int n_ready)
{
    server_send(s, p, n);
    s->swallow += n_ready;
}

void server_run_internal(struct server *s, const char *sql)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_query(&b, sql);
    send_pbuf(s, &b);
    s->swallow++;
}

/* ---- login ---- */

static const struct user_secret *secret_for(struct server *s)
{
    const struct user_secret *us = userlist_find(s->w->users, s->user);
    /* A user auth_query found: log in with the secret the writer gave (md5 answered as is,
     * SCRAM with the ClientKey its client's proof revealed). */
    return us ? us : authq_find(s->w, s->user);
}

/* The waiting clients of s's pool get this FATAL (a probe has none). */
static void fail_pool_login(struct server *s, const char *sqlstate, const char *msg)
{
    if (!s->pool)
        return;
    struct pbuf e;
    pbuf_init(&e);
    proto_build_error(&e, "FATAL", sqlstate, msg, NULL);
    pool_login_failed(s->pool, e.data, e.len, msg);
    pbuf_free(&e);
}

static int answer_auth(struct server *s, const uint8_t *body, size_t len)
{
    struct msg_reader r;
    mr_init(&r, body, len);
    uint32_t code = mr_u32(&r);
    if (r.bad)
        return -1; /* shorter than its code: not an AuthenticationOk (test_bad_peers) */
    const struct user_secret *us = secret_for(s);
    if ((code == AUTH_REQ_CLEARTEXT || code == AUTH_REQ_MD5) && !conn_is_tls(&s->conn) &&
        !s->w->cfg->server_allow_plaintext_password) {
        /* A password in clear (or an md5 hash, as good as one to whoever reads it) is sent
         * only where nobody on the path can read it. */
        const char *what = code == AUTH_REQ_MD5 ? "md5" : "password";
        SLOG(error, s,
             "the server asks for %s authentication over a connection without TLS: no password "
             "sent (server_tls_sslmode, or server_allow_plaintext_password = on)",
             what);
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "pgstay does not send a password to the server without TLS (the server asks "
                 "for %s authentication)",
                 what);
        fail_pool_login(s, SQLSTATE_INVALID_AUTH, msg);
        return -1;
    }
    struct pbuf b;
    pbuf_init(&b);
    switch (code) {
    case AUTH_REQ_OK:
        if (s->scram && s->scram->state != SCRAM_CLI_DONE) {
            /* Only a server that proved it knows the secret (its SCRAM signature) may say the
             * login is done: anyone else on the path could say so too. */
            SLOG(error, s,
                 "the server sent AuthenticationOk before its SCRAM signature was "
                 "verified: refused");
            return -1;
        }
        return 0;
    case AUTH_REQ_CLEARTEXT:
        if (!us || us->kind != SECRET_PLAIN)
            goto no_password;
        proto_build_password(&b, us->secret);
        send_pbuf(s, &b);
        return 0;
    case AUTH_REQ_MD5: {
        const uint8_t *salt = mr_bytes(&r, 4);
        if (!salt)
            goto bad;
        if (!us || us->kind == SECRET_SCRAM)
            goto no_password;
        char hash[36], answer[36];
        if (us->kind == SECRET_MD5)
            snprintf(hash, sizeof(hash), "%s", us->secret);
        else
            pg_md5_hash(us->secret, s->user, hash);
        pg_md5_salted(hash, salt, answer);
        proto_build_password(&b, answer);
        send_pbuf(s, &b);
        return 0;
    }
    case AUTH_REQ_SASL: {
        int offered = 0;
        /* !r.bad: a mechanism without its NUL is not consumed, and the loop would spin
         * forever, freezing every client of the loop (found by tests/fuzz/fuzz_backend). */
        while (mr_left(&r) > 1 && !r.bad) {
            const char *mech = mr_str(&r);
            if (strcmp(mech, SCRAM_MECHANISM) == 0)
                offered = 1;
        }
        if (!offered || !us)
            goto no_password;
        /* A second SASL request within one login: the exchange cannot start over (the first
         * one's state leaked; found by tests/fuzz/fuzz_backend). */
        if (s->scram)
            goto bad;
        s->scram = calloc(1, sizeof(*s->scram));
        if (!s->scram)
            goto bad;
        if (us->kind == SECRET_PLAIN) {
            scram_client_init_password(s->scram, us->secret);
        } else if (us->kind == SECRET_SCRAM && s->pool && s->pool->have_client_key) {
            struct scram_secret sec;
            if (scram_parse_secret(us->secret, &sec) < 0)
                goto no_password;
            scram_client_init_keys(s->scram, s->pool->client_key, sec.server_key);
        } else {
            goto no_password;
        }
        char out[512];
        size_t outlen = 0;
        if (scram_client_first(s->scram, out, sizeof(out), &outlen) < 0)
            goto bad;
        proto_build_sasl_initial(&b, SCRAM_MECHANISM, out, outlen);
        send_pbuf(s, &b);
        return 0;
    }
    case AUTH_REQ_SASL_CONTINUE: {
        char out[512];
        size_t outlen = 0;
        if (!s->scram)
            goto bad;
        s->scram->max_iterations = s->w->cfg->server_scram_max_iterations;
        int rc = scram_client_final(s->scram, (const char *)body + 4, len - 4, out, sizeof(out),
                                    &outlen);
        if (rc == -2)
            SLOG(error, s,
                 "the server asks for %ld SCRAM iterations, above server_scram_max_iterations "
                 "(%ld): refused",
                 s->scram->iterations, s->scram->max_iterations);
        if (rc < 0)
            goto bad;
        proto_build_sasl_response(&b, out, outlen);
        send_pbuf(s, &b);
        return 0;
    }
    case AUTH_REQ_SASL_FINAL:
        if (!s->scram || scram_client_verify_server(s->scram, (const char *)body + 4, len - 4) < 0) {
            SLOG(error, s, "the server's SCRAM signature does not match: not the server we expect");
            return -1;
        }
        return 0;
    default:
        SLOG(error, s, "the server asks for authentication method %u, which pgstay does not support", code);
        return -1;
    }
no_password:
    SLOG(error, s, "the server asks for a password and auth_file has none usable for \"%s\"", s->user);
    s->login_error = 1; /* the clients are told below */
    {
        char msg[256];
        snprintf(msg, sizeof(msg), "pgstay has no usable password for user \"%s\" to log into the server", s->user);
        fail_pool_login(s, SQLSTATE_INVALID_PASSWORD, msg);
    }
    pbuf_free(&b);
    return -1;
bad:
    pbuf_free(&b);
    return -1;
}

/* The login is complete (ReadyForQuery): a pool server becomes ready, a probe starts probing. */
static void login_done(struct server *s)
{
    free(s->scram);
    s->scram = NULL;
    s->txn_status = 'I';
    s->last_used = now_ms();
    if (!s->pool) {
        server_change_state(s, SV_PROBE);
        if (s->on_ready)
            s->on_ready(s);
        return;
    }
    s->pool->n_connecting--;
    login_backoff_ok(s->pool, s->nd);
    /* The pool's base is what a server reports before any client's parameters are applied
     * (not what the first client set): a client that asks for nothing stores nothing. */
    if (s->pool->base.n == 0)
        for (int i = 0; i < s->params.n; i++)
            kv_set(&s->pool->base, s->params.items[i].name, s->params.items[i].value);
    if (s->w->cfg->log_connections && s->pool)
        SLOG(info, s, "new server connection (backend pid %u)", s->be_pid);
    else
        SLOG(debug, s, "logged in (backend pid %u)", s->be_pid);
    pool_server_ready(s);
}

/* ---- incoming traffic ---- */

/* A ReadyForQuery is exactly one status byte, I, T or E: anything else is not relayed nor
 * believed (test_bad_peers: "ReadyForQuery with an unknown status"). */
static int ready_ok(const uint8_t *body, size_t len)
{
    return len == 1 && (body[0] == 'I' || body[0] == 'T' || body[0] == 'E');
}

/* A server that breaks the protocol while pgstay logs in: that login failed (the login
 * backoff waits server_login_retry, and clients waiting get the reason by query_wait_timeout),
 * which says nothing of the writer's health. Before, it was closed as evidence against the
 * writer and logged in again at once: a broken server made pgstay reconnect in a loop and
 * hold every new request (test_bad_peers: bad SCRAM messages). */
static void login_violation(struct server *s, const char *why)
{
    if (s->pool && s->nd) {
        struct pg_error e = {"FATAL", SQLSTATE_PROTOCOL_VIOLATION, why};
        login_backoff_failed(s->pool, s->nd, &e);
    }
    server_close(s, why);
}

static void handle_param_status(struct server *s, const uint8_t *body, size_t len)
{
    struct msg_reader r;
    mr_init(&r, body, len);
    const char *name = mr_str(&r);
    const char *value = mr_str(&r);
    if (!r.bad) {
        kv_set(&s->params, name, value);
        s->params_hash = (kv_hash(&s->params) | 1) /* never 0, which a client starts with */;
    }
}

/* A whole message while pgstay itself talks to the server (login, setup, reset, probe). */
static int handle_internal(struct server *s, const struct msg_hdr *h, const uint8_t *body)
{
    size_t len = h->len - 4;
    /* Logging in, a server says only these (rows or completions there are not PostgreSQL's
     * protocol: the login fails rather than going on as if nothing was said; test_bad_peers). */
    if (s->state == SV_LOGIN && h->type != BE_AUTH && h->type != BE_KEY_DATA &&
        h->type != BE_PARAM_STATUS && h->type != BE_ERROR && h->type != BE_NOTICE &&
        h->type != BE_READY && h->type != BE_NEGOTIATE_VERSION)
        return -1;
    switch (h->type) {
    case BE_AUTH:
        if (s->state != SV_LOGIN)
            return -1;
        return answer_auth(s, body, len);
    case BE_KEY_DATA: {
        struct msg_reader r;
        mr_init(&r, body, len);
        s->be_pid = mr_u32(&r);
        s->be_key = mr_u32(&r);
        return 0;
    }
    case BE_PARAM_STATUS:
        handle_param_status(s, body, len);
        if (s->client && s->client->got_welcome && s->state == SV_ACTIVE) {
            /* A replayed SET changed a reported value: the client hears of it as usual. */
            struct msg_reader r;
            mr_init(&r, body, len);
            const char *name = mr_str(&r), *value = mr_str(&r);
            const char *seen = client_reported(s->client, name);
            if (!r.bad && (!seen || strcmp(seen, value) != 0)) {
                client_note_reported(s->client, name, value);
                s->client->reported_hash = s->params_hash;
                client_send(s->client, body - PROTO_HDR_LEN, h->len + 1);
            }
        }
        return 0;
    case BE_ERROR: {
        struct pg_error e;
        /* A malformed one is never relayed as it is: the client would get bytes it cannot
         * parse (found by tests/fuzz/fuzz_backend). Its fields read so far still name it. */
        int well_formed = proto_parse_error(body, len, &e) == PROTO_OK;
        if (s->state == SV_LOGIN) {
            SLOG(info, s, "login failed: %s %s: %s", e.severity, e.sqlstate, e.message);
            s->login_error = 1; /* the backoff has the server's own words */
            if (s->pool && s->nd)
                login_backoff_failed(s->pool, s->nd, &e);
            /* Bad database, user or password: the waiting clients get the server's words.
             * Anything else (starting up, shutting down, too many connections) is the
             * node's state, not the client's fault: they stay waiting. */
            if (s->pool && well_formed &&
                (strncmp(e.sqlstate, "28", 2) == 0 || strncmp(e.sqlstate, "3D", 2) == 0 ||
                 strncmp(e.sqlstate, "42", 2) == 0 || strncmp(e.sqlstate, "22", 2) == 0))
                pool_login_failed(s->pool, body - PROTO_HDR_LEN, h->len + 1, e.message);
            return -1;
        }
        if (s->checking) {
            /* The client it was checked for never hears of it: another server serves it. */
            SLOG(info, s, "server_check_query failed: %s %s: %s", e.severity, e.sqlstate,
                 e.message);
            return -1;
        }
        if (strcmp(e.severity, "FATAL") == 0 || strcmp(e.severity, "PANIC") == 0) {
            SLOG(info, s, "server error: %s %s: %s", e.severity, e.sqlstate, e.message);
            if (strcmp(e.sqlstate, SQLSTATE_ADMIN_SHUTDOWN) == 0)
                s->terminated = 1;
            return -1;
        }
        if ((s->state == SV_SETUP || (s->state == SV_ACTIVE && s->swallow > 0)) && s->client) {
            /* A startup parameter or a replayed setting the server rejects. The setup ran as
             * one implicit transaction, now rolled back: what the server has is not known any
             * more, so it is closed (return -1) rather than lent again. */
            struct client *c = s->client;
            c->server = NULL;
            s->client = NULL;
            if (!c->got_welcome) {
                /* Logging in: the client hears PostgreSQL's own error, as it would directly. */
                client_send(c, body - PROTO_HDR_LEN, h->len + 1);
                client_close(c, NULL, "session setup failed");
            } else {
                char msg[512];
                snprintf(msg, sizeof(msg),
                         "this session's settings could not be rebuilt on a new server "
                         "connection: %s",
                         e.message);
                client_close(c, e.sqlstate[0] ? e.sqlstate : SQLSTATE_CONNECTION_FAILURE, msg);
            }
            s->setup_rejected = 1;
            return -1;
        } else if (s->state == SV_PROBE && s->on_fail) {
            SLOG(info, s, "probe query failed: %s", e.message);
        }
        return 0;
    }
    case BE_DATA_ROW:
        if (s->state == SV_PROBE && s->on_row) {
            struct msg_reader r;
            mr_init(&r, body, len);
            int n = mr_u16(&r);
            /* 256: a SCRAM secret (auth_query's passwd column) is some 135 bytes. */
            const char *vals[16];
            char bufs[16][256];
            if (n > 16)
                n = 16;
            for (int i = 0; i < n; i++) {
                uint32_t l = mr_u32(&r);
                if (l == 0xffffffff) {
                    vals[i] = NULL;
                    continue;
                }
                const uint8_t *p = mr_bytes(&r, l);
                if (!p)
                    return -1;
                size_t cl = l < sizeof(bufs[i]) - 1 ? l : sizeof(bufs[i]) - 1;
                memcpy(bufs[i], p, cl);
                bufs[i][cl] = 0;
                vals[i] = bufs[i];
            }
            s->on_row(s, n, vals);
        }
        return 0;
    case BE_READY: {
        if (!ready_ok(body, len))
            return -1;
        s->txn_status = (char)body[0];
        if (s->state == SV_LOGIN) {
            login_done(s);
            return 0;
        }
        if (s->swallow > 0)
            s->swallow--;
        if (s->swallow > 0)
            return 0;
        if (s->txn_status != 'I' &&
            (s->state == SV_SETUP || (s->state == SV_RESETTING && !s->reset_pending))) {
            /* pgstay's own setup or reset ended inside a transaction block: the server would
             * go to a client (or back to the pool) in the middle of one (found by
             * tests/fuzz/fuzz_backend with a recorded pgjdbc session's answers). */
            server_close(s, "its setup or reset ended inside a transaction block");
            return 0;
        }
        if (s->state == SV_SETUP) {
            server_change_state(s, SV_ACTIVE);
            if (s->client)
                client_linked(s->client);
            else
                pool_release(s, 1);
        } else if (s->state == SV_RESETTING) {
            if (s->checking)
                pool_check_done(s);
            else if (s->reset_pending)
                server_finish_drain(s);
            else
                pool_server_ready(s);
        } else if (s->state == SV_PROBE && s->on_ready) {
            s->on_ready(s);
        }
        return 0;
    }
    case BE_BIND_COMPLETE:
    case BE_NO_DATA:
    case BE_PARAM_DESC:
    case BE_PORTAL_SUSPENDED:
    case BE_COPY_OUT:
    case BE_COPY_DATA:
    case BE_COPY_DONE:
        /* Answers to a client's requests that pgstay drains after the client left, or to
         * an internal query with parameters (auth_query). */
        if (s->state != SV_RESETTING && s->state != SV_PROBE)
            goto unexpected;
        return 0;
    case BE_NEGOTIATE_VERSION:
    case BE_PARSE_COMPLETE:
    case BE_CLOSE_COMPLETE:
    case BE_NOTICE:
    case BE_COMMAND_COMPLETE:
    case BE_ROW_DESC:
    case BE_EMPTY_QUERY:
    case BE_NOTIFY:
        return 0;
    default:
    unexpected:
        SLOG(info, s, "unexpected message '%c' from the server", h->type);
        return -1;
    }
}

int server_idle_intact(struct server *s)
{
    if (s->in_process)
        return 1;
    if (conn_avail(&s->conn) > 0)
        return 0; /* read, not looked at yet */
    if (now_ms() - s->last_used < 1)
        return 1; /* just used: the common case costs no system call */
    return conn_quiet(&s->conn);
}

void server_reset_settings(struct server *s, const char *q)
{
    if (strcasestr(q, "discard all") || strcasestr(q, "reset all")) {
        kv_clear(&s->applied);
        return;
    }
    /* Another query (DEALLOCATE ALL, SELECT 1, a function of the operator's): the settings
     * may be left or undone. Each is kept with a statement no client's matches, so the next
     * client's setup resets those it does not have and applies its own again. */
    for (int i = 0; i < s->applied.n; i++)
        s->applied.items[i].value[0] = 0;
}

void server_finish_drain(struct server *s)
{
    if (s->txn_status != 'I') {
        server_run_internal(s, "ROLLBACK");
        return;
    }
    const char *q = s->w->cfg->server_reset_query;
    s->reset_pending = 0;
    server_reset_settings(s, q);
    plan_forget_all(s);
    s->dirty = 0;
    server_run_internal(s, q);
}

/* What pgstay learns from a message on its way to the client. Returns -1 if the server
 * must be dropped instead (a FATAL: the client keeps its connection). */
static int observe_forwarded(struct server *s, struct client *c, const struct msg_hdr *h,
                             const uint8_t *body)
{
    size_t len = h->len - 4;
    switch (h->type) {
    case BE_READY: {
        s->txn_status = len >= 1 ? (char)body[0] : 'I';
        c->txn_status = s->txn_status;
        track_ready(c, c->txn_status);
        client_batch_answered(c);
        if (c->pending > 0)
            c->pending--;
        client_answered(c);
        c->in_copy_in = 0;
        s->last_used = now_ms();
        return 0;
    }
    case BE_PARAM_STATUS: {
        struct msg_reader r;
        mr_init(&r, body, len);
        const char *name = mr_str(&r);
        const char *value = mr_str(&r);
        if (!r.bad) {
            kv_set(&s->params, name, value);
            s->params_hash = (kv_hash(&s->params) | 1) /* never 0, which a client starts with */;
            client_note_reported(c, name, value);
            c->reported_hash = s->params_hash;
        }
        return 0;
    }
    case BE_COPY_IN:
    case BE_COPY_BOTH:
        c->in_copy_in = 1;
        return 0;
    case BE_COMMAND_COMPLETE: {
        struct msg_reader r;
        mr_init(&r, body, len);
        const char *tag = mr_str(&r);
        if (r.bad)
            return 0;
        track_complete(c, tag);
        /* The server forgot every prepared statement, pgstay's names included: whatever the
         * protocol the client used to ask. */
        if (strcmp(tag, "DISCARD ALL") == 0 || strcmp(tag, "DEALLOCATE ALL") == 0) {
            client_stmt_clear(c);
            plan_forget_all(s);
        }
        return 0;
    }
    case BE_EMPTY_QUERY:
    case BE_PORTAL_SUSPENDED:
        track_complete(c, NULL);
        return 0;
    case BE_PARSE_COMPLETE:
        if (s->w->cfg->pool_mode == POOL_SESSION)
            client_parse_answered(c);
        return 0;
    case BE_ERROR: {
        struct pg_error e;
        if (proto_parse_error(body, len, &e) != PROTO_OK)
            return 0;
        if (strcmp(e.severity, "FATAL") == 0 || strcmp(e.severity, "PANIC") == 0) {
            SLOG(info, s, "server ended the session: %s %s: %s", e.severity, e.sqlstate, e.message);
            if (strcmp(e.sqlstate, SQLSTATE_ADMIN_SHUTDOWN) == 0) {
                s->terminated = 1;
                client_note_terminated(c, e.sqlstate, e.message);
            }
            return -1;
        }
        track_error(c);
        if (strcmp(e.sqlstate, "25006") == 0 && s->nd == s->w->topo->writer)
            topology_probe_now(s->w, EVIDENCE_FAILURE,
                               "the writer answered 25006 (read-only transaction)");
        return 0;
    }
    default:
        return 0;
    }
}

/* A message the client cannot take: an ErrorResponse it cannot parse, a ReadyForQuery with a
 * status PostgreSQL never sends or (session mode, where nothing in pgstay's plan answers for
 * it) for no request of the client's. The server is then not speaking to this session any
 * more (found by tests/fuzz/fuzz_backend). */
static const char *forward_violation(struct server *s, struct client *c, const struct msg_hdr *h,
                                     const uint8_t *body)
{
    struct pg_error e;
    if (h->type == BE_ERROR && proto_parse_error(body, h->len - 4, &e) != PROTO_OK)
        return "the server sent a malformed ErrorResponse";
    if (h->type != BE_READY)
        return NULL;
    if (h->len != 5 || (body[0] != 'I' && body[0] != 'T' && body[0] != 'E'))
        return "the server sent a malformed ReadyForQuery";
    if (s->w->cfg->pool_mode == POOL_SESSION && c->pending == 0)
        return "the server sent a ReadyForQuery for no request";
    return NULL;
}

static int needs_whole(uint8_t type)
{
    return type == BE_READY || type == BE_PARAM_STATUS || type == BE_ERROR || type == BE_COPY_IN ||
           type == BE_COPY_BOTH || type == BE_COMMAND_COMPLETE || type == BE_EMPTY_QUERY ||
           type == BE_PORTAL_SUSPENDED || type == BE_PARSE_COMPLETE;
}

/* Responses that can end a request in the transaction-mode plan: read whole. */
static int ends_request(uint8_t type)
{
    switch (type) {
    case BE_PARSE_COMPLETE:
    case BE_BIND_COMPLETE:
    case BE_CLOSE_COMPLETE:
    case BE_ROW_DESC:
    case BE_NO_DATA:
    case BE_COMMAND_COMPLETE:
    case BE_EMPTY_QUERY:
    case BE_PORTAL_SUSPENDED:
        return 1;
    default:
        return 0;
    }
}

/* A message streamed to the client without being read whole (past WHOLE_MAX) is complete:
 * what pgstay would have learnt from it, it learns from its type. */
static void streamed_done(struct server *s, struct client *c, uint8_t type)
{
    if (type == BE_ERROR)
        track_error(c);
    if (s->w->cfg->pool_mode == POOL_TRANSACTION && (ends_request(type) || type == BE_ERROR))
        plan_server_msg_done(s, type);
}

/* Messages that may be larger than what pgstay reads whole: libpq's list (VALID_LONG_MESSAGE_TYPE)
 * and ParameterDescription. Any other type that long is not PostgreSQL's. */
static int long_type(uint8_t t)
{
    return t == BE_ROW_DESC || t == BE_DATA_ROW || t == BE_COPY_DATA || t == BE_FUNCTION_RESULT ||
           t == BE_ERROR || t == BE_NOTICE || t == BE_NOTIFY || t == BE_PARAM_DESC;
}

/* What a server must not send to a client, said from the header before a byte of it is
 * relayed (NULL: fine). Found by test_bad_peers: these were relayed to the client as they came
 * (a short message type past WHOLE_MAX was streamed). */
static const char *stream_violation(struct client *c, const struct msg_hdr *h, size_t whole)
{
    if (whole > WHOLE_MAX && !long_type(h->type))
        return "the server sent an oversized message";
    /* COPY data comes only between CopyOutResponse (or CopyBothResponse) and CopyDone: a
     * client not in a COPY would take it for a protocol error (found by fuzz_backend). The
     * header is looked at again when a whole message is awaited: both updates are idempotent. */
    switch (h->type) {
    case BE_COPY_DATA:
        if (!c->in_copy_out)
            return "the server sent COPY data outside a COPY";
        break;
    case BE_COPY_DONE:
        if (!c->in_copy_out)
            return "the server sent CopyDone outside a COPY";
        c->in_copy_out = 0;
        break;
    case BE_COPY_OUT:
    case BE_COPY_BOTH:
        c->in_copy_out = 1;
        break;
    case BE_COMMAND_COMPLETE:
    case BE_ERROR:
    case BE_READY:
        c->in_copy_out = 0;
        break;
    default:
        break;
    }
    /* Nothing asked and nothing running: only what PostgreSQL sends on its own may come. */
    if (c->pending == 0 && c->unsynced == 0 && !c->in_copy_in && h->type != BE_NOTICE &&
        h->type != BE_PARAM_STATUS && h->type != BE_NOTIFY && h->type != BE_ERROR)
        return "the server sent data nobody asked for";
    return NULL;
}

static void server_process_loop(struct server *s);

void server_process(struct server *s)
{
    /* Lending can happen inside (a login's ReadyForQuery makes the server ready): what is
     * still in the buffer then is this loop's to read, not a sign of a dying backend. */
    int outer = !s->in_process;
    s->in_process = 1;
    server_process_loop(s);
    if (outer)
        s->in_process = 0;
}

static void send_startup(struct server *s);

/* The server's one-byte answer to pgstay's SSLRequest: 0 to go on reading, -1 to stop (TLS
 * handshake started, or the server closed). */
static int tls_answer(struct server *s)
{
    struct conn *in = &s->conn;
    int mode = s->w->cfg->server_tls_sslmode;
    uint8_t a = conn_data(in)[0];
    if (a == 'S') {
        /* Bytes after the 'S' came before the handshake: not from the server we will verify
         * (CVE-2021-23222), never read as its answers. */
        if (conn_avail(in) > 1) {
            server_close_by(s, EVIDENCE_FAILURE, "received unencrypted data after SSL response");
            return -1;
        }
        conn_consume(in, 1);
        s->tls_step = SV_TLS_HANDSHAKE;
        if (conn_start_tls(in, s->w->server_tls, 0, mode == TLS_VERIFY_FULL,
                           s->nd ? s->nd->host : NULL, 0) < 0) {
            server_close_by(s, EVIDENCE_FAILURE, "cannot start TLS");
            return -1;
        }
        return -1;
    }
    if (a == 'N') {
        conn_consume(in, 1);
        if (mode >= TLS_REQUIRE) {
            server_close_by(
                s, EVIDENCE_FAILURE,
                "server does not support SSL, but SSL was required (server_tls_sslmode)");
            return -1;
        }
        s->tls_step = SV_TLS_NONE;
        send_startup(s);
        return 0;
    }
    char why[96];
    snprintf(why, sizeof(why), "received invalid response to SSL negotiation: %c",
             a >= 32 && a < 127 ? a : '?');
    server_close_by(s, EVIDENCE_FAILURE, why);
    return -1;
}

static void server_process_loop(struct server *s)
{
    struct conn *in = &s->conn;
    struct worker *w = s->w;
    for (;;) {
        if (s->state == SV_CLOSING)
            return;
        size_t avail = conn_avail(in);
        if (s->tls_step) {
            if (s->tls_step != SV_TLS_ANSWER || avail == 0 || tls_answer(s) < 0)
                return;
            continue;
        }
        struct client *c = s->client;
        int forwarding = s->state == SV_ACTIVE && c && s->swallow == 0;
        if (s->fwd_left > 0) {
            if (!forwarding) {
                /* The client went away mid-message: drop the rest. */
                size_t n = avail < s->fwd_left ? avail : s->fwd_left;
                if (n == 0)
                    return;
                conn_consume(in, n);
                s->fwd_left -= (uint32_t)n;
                continue;
            }
            if (conn_full(&c->conn))
                return; /* resumed when the client drains (client_drained) */
            size_t n = avail < s->fwd_left ? avail : s->fwd_left;
            if (n == 0)
                return;
            conn_forward(in, &c->conn, n);
            s->fwd_left -= (uint32_t)n;
            w->stats.bytes_server_to_client += n;
            s->pool->stats.bytes_sent += n;
            if (s->fwd_left == 0)
                streamed_done(s, c, s->fwd_type);
            continue;
        }
        struct msg_hdr h;
        /* PostgreSQL never sends a message past 1 GB (MaxAllocSize), nor does libpq take one:
         * a longer one would reach the client as a stream it cannot frame (found by
         * tests/fuzz/fuzz_backend). */
        static const struct frame_rules rules = {PROTO_MSG_MAX, proto_be_type_known};
        enum frame_result fr = frame_next(in, &rules, &h);
        if (fr == FRAME_MORE)
            return;
        if (fr != FRAME_OK) {
            if (s->state == SV_LOGIN)
                login_violation(s, "the server sent bytes that are not the PostgreSQL protocol");
            else
                server_close_by(s, EVIDENCE_FAILURE,
                                "the server sent bytes that are not the PostgreSQL protocol");
            return;
        }
        size_t whole = 1 + (size_t)h.len;
        if (!forwarding) {
            if (s->state == SV_IDLE && h.type != BE_ERROR && h.type != BE_PARAM_STATUS &&
                h.type != BE_NOTICE) {
                server_close_by(s, EVIDENCE_FAILURE, "the server sent data while idle");
                return;
            }
            if (whole > WHOLE_MAX) {
                if (s->state == SV_RESETTING && h.type != BE_READY && h.type != BE_ERROR) {
                    /* A large answer being drained: dropped as it comes. */
                    s->fwd_left = (uint32_t)whole;
                    continue;
                }
                if (s->state == SV_LOGIN)
                    login_violation(s, "the server sent an oversized message pgstay reads itself");
                else
                    server_close_by(s, EVIDENCE_FAILURE,
                                    "the server sent an oversized message pgstay reads itself");
                return;
            }
            if (!conn_has(in, whole))
                return;
            int r = handle_internal(s, &h, conn_data(in) + PROTO_HDR_LEN);
            if (s->state == SV_CLOSING)
                return;
            conn_consume(in, whole);
            if (r < 0) {
                /* A failed login is the login backoff's business; a FATAL on an established
                 * connection is the node's, unless it is a 57P01 for this backend alone. */
                if (s->state == SV_LOGIN && !s->login_error)
                    login_violation(s, "server login failed: the server's authentication "
                                       "messages were not acceptable");
                else if (s->state == SV_LOGIN)
                    server_close(s, "login failed");
                else if (s->setup_rejected)
                    server_close(s, "a client's setting was rejected");
                else if (s->checking)
                    server_close(s, "server_check_query failed");
                else
                    server_close_by(s, s->terminated ? EVIDENCE_TERMINATED : EVIDENCE_FAILURE,
                                    "server error");
                return;
            }
            continue;
        }
        struct conn *out = &c->conn;
        if (conn_full(out))
            return;
        if (h.type == BE_AUTH || h.type == BE_KEY_DATA || h.type == BE_NEGOTIATE_VERSION) {
            /* Login messages after the login: forwarded, they would make the client believe
             * it is logging in again (found by tests/fuzz/fuzz_backend). */
            server_close_by(s, EVIDENCE_FAILURE, "the server sent a login message after login");
            return;
        }
        const char *unfit = stream_violation(c, &h, whole);
        if (unfit) {
            server_close_by(s, EVIDENCE_FAILURE, unfit);
            return;
        }
        int txn = w->cfg->pool_mode == POOL_TRANSACTION;
        if ((needs_whole(h.type) || (txn && ends_request(h.type))) && whole <= WHOLE_MAX) {
            if (!conn_has(in, whole))
                return;
            const uint8_t *m = conn_data(in);
            const char *bad = forward_violation(s, c, &h, m + PROTO_HDR_LEN);
            if (bad) {
                server_close_by(s, EVIDENCE_FAILURE, bad);
                return;
            }
            if (txn && plan_server_msg(s, h.type)) {
                /* The answer to a Parse pgstay sent itself, or an error it provoked (the
                 * client got pgstay's own, and its request failed). */
                if (h.type == BE_ERROR)
                    track_error(c);
                conn_consume(in, whole);
                plan_server_msg_done(s, h.type);
                continue;
            }
            if (observe_forwarded(s, c, &h, m + PROTO_HDR_LEN) < 0) {
                conn_consume(in, whole);
                server_close_by(s, s->terminated ? EVIDENCE_TERMINATED : EVIDENCE_FAILURE,
                                "the server ended the session");
                return;
            }
            conn_forward(in, out, whole);
            w->stats.bytes_server_to_client += whole;
            s->pool->stats.bytes_sent += whole;
            if (txn)
                plan_server_msg_done(s, h.type);
            if (h.type == BE_READY)
                pool_after_ready(c);
            continue;
        }
        size_t n = avail < whole ? avail : whole;
        conn_forward(in, out, n);
        w->stats.bytes_server_to_client += n;
        s->pool->stats.bytes_sent += n;
        s->fwd_left = (uint32_t)(whole - n);
        s->fwd_type = h.type;
        if (s->fwd_left == 0 && whole > WHOLE_MAX)
            streamed_done(s, c, h.type);
    }
}

/* ---- connecting ---- */

static void server_read_cb(void *arg)
{
    server_process(arg);
}

static void server_write_cb(void *arg)
{
    /* The server drained what the client sent: let the client's traffic flow again. */
    struct server *s = arg;
    if (s->client && s->state == SV_ACTIVE)
        client_process(s->client);
}

static void server_event_cb(void *arg, int what);
static const struct conn_cbs server_cbs = {
    .on_read = server_read_cb,
    .on_drain = server_write_cb,
    .on_event = server_event_cb,
};

static void send_startup(struct server *s)
{
    const char *names[STARTUP_MAX_PARAMS + 2], *values[STARTUP_MAX_PARAMS + 2];
    int n = 0;
    names[n] = "user";
    values[n++] = s->user;
    names[n] = "database";
    values[n++] = s->database;
    if (!s->pool) {
        names[n] = "application_name";
        values[n++] = "pgstay-probe";
    }
    /* No client's parameters: a server is shared, and each client's are applied (and undone)
     * per lending (pool.c build_setup). */
    struct pbuf b;
    pbuf_init(&b);
    proto_build_startup(&b, n, names, values);
    send_pbuf(s, &b);
}

static void server_event_cb(void *arg, int what)
{
    struct server *s = arg;
    if (what & CONN_CONNECTED) {
        net_tune_server(conn_fd(&s->conn), s->w->cfg->tcp_keepalive, s->w->cfg->tcp_user_timeout);
        server_change_state(s, SV_LOGIN);
        if (s->w->server_tls && s->w->cfg->server_tls_sslmode != TLS_DISABLE) {
            /* SSLRequest: length 8, code 1234.5679; the answer is one byte (tls_answer). */
            static const uint8_t ssl_request[8] = {0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f};
            s->tls_step = SV_TLS_ANSWER;
            server_send(s, ssl_request, sizeof(ssl_request));
            return;
        }
        send_startup(s);
        return;
    }
    if (what & CONN_TLS) {
        s->tls_step = SV_TLS_NONE;
        SLOG(debug, s, "TLS established (%s, %s)", conn_tls_version(&s->conn),
             conn_tls_cipher(&s->conn));
        send_startup(s);
        return;
    }
    if (what & CONN_EOF) {
        server_close_by(s, EVIDENCE_FAILURE,
                        s->state == SV_CONNECTING ? "connection refused" : "server closed the connection");
    } else if (what & CONN_ERROR) {
        int dns = s->conn.dns_err;
        char why[160];
        if (dns)
            snprintf(why, sizeof(why), "cannot resolve %s: %s", s->nd ? s->nd->host : "?",
                     evutil_gai_strerror(dns));
        else
            snprintf(why, sizeof(why), "%s", conn_strerror(&s->conn));
        /* Out of descriptors or memory here says nothing about the node: never a failover. */
        int local = s->conn.err == EMFILE || s->conn.err == ENFILE || s->conn.err == ENOBUFS ||
                    s->conn.err == ENOMEM;
        server_close_by(s, local ? EVIDENCE_NONE : EVIDENCE_FAILURE, why);
    }
}

struct server *server_open(struct worker *w, struct pool *p, struct node *nd, const char *user,
                           const char *database)
{
    if (p && !pool_slot_take(p))
        return NULL; /* pool_size or a shared limit reached, counting every worker's servers */
    struct server *s = calloc(1, sizeof(*s));
    if (!s) {
        if (p)
            pool_slot_give(p);
        return NULL;
    }
    s->w = w;
    s->pool = p;
    s->nd = nd;
    s->id = worker_new_id(w);
    /* Copies: a reload frees the configuration strings a probe's identity comes from. */
    s->user = strdup(user);
    s->database = strdup(database);
    s->connected_at = now_ms();
    s->txn_status = 'I';
    list_init(&s->node);
    list_init(&s->pool_node);
    s->state = SV_CONNECTING;
    list_append(&w->servers[SV_CONNECTING], &s->node);
    w->n_servers[SV_CONNECTING]++;
    if (p) {
        p->n_servers++;
        p->n_connecting++;
        nd->n_servers++;
    }
    w->stats.servers_opened++;
    conn_connect(&s->conn, &w->loop, nd->host, nd->port, &server_cbs, s);
    SLOG(debug, s, "connecting to %s:%d", nd->host, nd->port);
    return s;
}
