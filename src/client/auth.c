/* Client authentication: pgstay checks the client's password itself against auth_file. */
#include "client/auth.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "client/client.h"
#include "config/userlist.h"
#include "core/log.h"
#include "core/tls.h"
#include "pool/pool.h"
#include "proto/md5.h"
#include "proto/proto.h"
#include "proto/scram.h"

static void auth_fail(struct client *c)
{
    char msg[256];
    snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"", c->user);
    client_close(c, SQLSTATE_INVALID_PASSWORD, msg);
}

static void ask_md5(struct client *c)
{
    struct pbuf b;
    pbuf_init(&b);
    if (RAND_bytes(c->md5_salt, 4) != 1) {
        client_close(c, SQLSTATE_INVALID_AUTH, "could not generate a random salt");
        return;
    }
    proto_build_auth(&b, AUTH_REQ_MD5, c->md5_salt, 4);
    client_send_pbuf(c, &b);
    c->auth_step = AUTH_STEP_PASSWORD;
}

static void ask_scram(struct client *c, const struct user_secret *us)
{
    struct scram_secret secret;
    if (us && us->scram) {
        secret = *us->scram; /* derived when the auth file was loaded: no PBKDF2 here */
    } else {
        /* Unknown user: go through the exchange with a verifier nobody's password matches,
         * then fail, as PostgreSQL does; its salt is the same at each attempt and costs no
         * PBKDF2, so neither the answer nor its timing tells which users exist. */
        userlist_mock_secret(c->w->users, c->user, &secret);
    }
    c->scram = calloc(1, sizeof(*c->scram));
    if (!c->scram || scram_server_init(c->scram, &secret) < 0) {
        client_close(c, SQLSTATE_INVALID_AUTH, "out of memory");
        return;
    }
    /* Over TLS, -PLUS too, bound to the certificate this client was shown: a man in the middle
     * holding another certificate cannot relay the exchange (channel_binding=require). */
    unsigned char cb[SCRAM_CBIND_MAX];
    int cbl = conn_tls_server_end_point(&c->conn, cb, sizeof(cb));
    int plus = cbl > 0 && scram_server_offer_plus(c->scram, cb, (size_t)cbl) == 0;
    struct pbuf b;
    pbuf_init(&b);
    proto_build_auth_sasl(&b, plus);
    client_send_pbuf(c, &b);
    c->auth_step = AUTH_STEP_SASL_INIT;
}

void auth_begin(struct client *c)
{
    struct worker *w = c->w;
    const struct user_secret *us = userlist_find(w->users, c->user);
    switch (w->cfg->auth_type) {
    case AUTH_TRUST:
        client_logged_in(c);
        return;
    case AUTH_MD5:
        /* A SCRAM secret cannot answer md5: use SCRAM for that user, as PgBouncer does. */
        if (us && us->kind == SECRET_SCRAM)
            ask_scram(c, us);
        else
            ask_md5(c);
        return;
    case AUTH_SCRAM:
    default:
        /* An md5 secret cannot drive SCRAM: fall back to md5 for that user. */
        if (us && us->kind == SECRET_MD5)
            ask_md5(c);
        else
            ask_scram(c, us);
        return;
    }
}

static void check_md5(struct client *c, const uint8_t *body, size_t len)
{
    const struct user_secret *us = userlist_find(c->w->users, c->user);
    if (len == 0 || body[len - 1] != 0 || !us || us->kind == SECRET_SCRAM) {
        auth_fail(c);
        return;
    }
    char hash[36], expected[36];
    if (us->kind == SECRET_MD5)
        snprintf(hash, sizeof(hash), "%s", us->secret);
    else
        pg_md5_hash(us->secret, c->user, hash);
    pg_md5_salted(hash, c->md5_salt, expected);
    if (strlen((const char *)body) != 35 || CRYPTO_memcmp(expected, body, 35) != 0) {
        auth_fail(c);
        return;
    }
    client_logged_in(c);
}

static void sasl_init(struct client *c, const uint8_t *body, size_t len)
{
    struct msg_reader r;
    mr_init(&r, body, len);
    const char *mech = mr_str(&r);
    uint32_t dlen = mr_u32(&r);
    const uint8_t *data = dlen == 0xffffffff ? NULL : mr_bytes(&r, dlen);
    if (r.bad || !data) {
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "malformed SASLInitialResponse message");
        return;
    }
    if (strcmp(mech, SCRAM_MECHANISM_PLUS) == 0 && c->scram->cb_offered)
        c->scram->cb_selected = 1;
    else if (strcmp(mech, SCRAM_MECHANISM) != 0) {
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION,
                     "client selected an invalid SASL authentication mechanism");
        return;
    }
    char out[512];
    size_t outlen = 0;
    if (scram_server_handle_first(c->scram, (const char *)data, dlen, out, sizeof(out), &outlen) < 0) {
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "malformed SCRAM message");
        return;
    }
    struct pbuf b;
    pbuf_init(&b);
    proto_build_auth(&b, AUTH_REQ_SASL_CONTINUE, out, outlen);
    client_send_pbuf(c, &b);
    c->auth_step = AUTH_STEP_SASL_FINAL;
}

static void sasl_final(struct client *c, const uint8_t *body, size_t len)
{
    char out[512];
    size_t outlen = 0;
    int r = scram_server_handle_final(c->scram, (const char *)body, len, out, sizeof(out), &outlen);
    if (r == -1) {
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "malformed SCRAM message");
        return;
    }
    const struct user_secret *us = userlist_find(c->w->users, c->user);
    if (r < 0 || !us) {
        auth_fail(c);
        return;
    }
    struct pbuf b;
    pbuf_init(&b);
    proto_build_auth(&b, AUTH_REQ_SASL_FINAL, out, outlen);
    client_send_pbuf(c, &b);
    if (c->scram->have_client_key && us->kind == SECRET_SCRAM && !c->is_admin) {
        /* Keep the ClientKey so pgstay can log into the server as this user. */
        struct pool *p = pool_get(c->w, c->database, c->user, c->role);
        if (p) {
            memcpy(p->client_key, c->scram->client_key, sizeof(p->client_key));
            p->have_client_key = 1;
        }
    }
    free(c->scram);
    c->scram = NULL;
    client_logged_in(c);
}

void auth_handle(struct client *c, const uint8_t *body, size_t len)
{
    switch (c->auth_step) {
    case AUTH_STEP_PASSWORD:
        check_md5(c, body, len);
        break;
    case AUTH_STEP_SASL_INIT:
        sasl_init(c, body, len);
        break;
    case AUTH_STEP_SASL_FINAL:
        sasl_final(c, body, len);
        break;
    default:
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "unexpected password message");
        break;
    }
}
