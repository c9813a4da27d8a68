/* Client authentication: auth_hba_file picks the method, and pgstay checks the client's password
 * itself against auth_file. */
#include "client/auth.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include "client/authquery.h"
#include "client/client.h"
#include "config/config.h"
#include "config/hba.h"
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

/* The client's IP address alone, as PostgreSQL names the host in its hba messages. */
static const char *client_host(const struct client *c, char *buf, size_t cap)
{
    if (c->addr_family == AF_INET)
        inet_ntop(AF_INET, c->addr_ip, buf, (socklen_t)cap);
    else if (c->addr_family == AF_INET6)
        inet_ntop(AF_INET6, c->addr_ip, buf, (socklen_t)cap);
    else
        snprintf(buf, cap, "[local]");
    return buf;
}

/* No line, or a reject line: PostgreSQL's words, so that tools and people recognise them. */
static void hba_refuse(struct client *c, const char *what)
{
    char host[INET6_ADDRSTRLEN], msg[600];
    snprintf(msg, sizeof(msg), "%s for host \"%s\", user \"%s\", database \"%s\", %s", what,
             client_host(c, host, sizeof(host)), c->user, c->database,
             conn_is_tls(&c->conn) ? "SSL encryption" : "no encryption");
    client_close(c, SQLSTATE_INVALID_AUTH, msg);
}

/* cert and clientcert=: a certificate the handshake verified against client_tls_ca_file, and
 * for verify-full one whose CN is the user name. 0 to go on, -1 closed. */
static int check_client_cert(struct client *c, int level)
{
    char cn[256];
    if (!conn_tls_peer_cn(&c->conn, cn, sizeof(cn))) {
        char msg[300];
        snprintf(msg, sizeof(msg),
                 level == HBA_CERT_VERIFY_CA || c->auth_method != HBA_CERT
                     ? "connection requires a valid client certificate"
                     : "certificate authentication failed for user \"%s\"",
                 c->user);
        client_close(c, SQLSTATE_INVALID_AUTH, msg);
        return -1;
    }
    if (level == HBA_CERT_VERIFY_FULL && strcmp(cn, c->user) != 0) {
        char msg[400];
        snprintf(msg, sizeof(msg),
                 c->auth_method == HBA_CERT
                     ? "certificate authentication failed for user \"%s\": CN mismatch"
                     : "certificate validation (clientcert=verify-full) failed for user \"%s\": CN "
                       "mismatch",
                 c->user);
        client_close(c, SQLSTATE_INVALID_AUTH, msg);
        return -1;
    }
    return 0;
}

static void ask_cleartext(struct client *c)
{
    struct pbuf b;
    pbuf_init(&b);
    proto_build_auth(&b, AUTH_REQ_CLEARTEXT, NULL, 0);
    client_send_pbuf(c, &b);
    c->auth_step = AUTH_STEP_CLEARTEXT;
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

/* The method auth_hba_file's first matching line gives: enum hba_method, or -1 when the client
 * was refused (and closed). */
static int hba_method(struct client *c)
{
    struct hba_login l = {
        .family = c->addr_family,
        .ip = c->addr_ip,
        .tls = conn_is_tls(&c->conn),
        .database = c->database,
        .user = c->user,
    };
    const struct hba_rule *r = hba_match(c->w->hba, &l);
    if (!r) {
        hba_refuse(c, "no pg_hba.conf entry");
        return -1;
    }
    log_debug("C-%llu %s: auth_hba_file line %d: %s", (unsigned long long)c->id, client_addr(c),
              r->line, hba_method_name(r->method));
    if (r->method == HBA_REJECT) {
        hba_refuse(c, "pg_hba.conf rejects connection");
        return -1;
    }
    c->auth_method = (uint8_t)r->method;
    if (r->clientcert != HBA_CERT_NONE && check_client_cert(c, r->clientcert) < 0)
        return -1;
    return r->method;
}

/* auth_type = scram-sha-256 without auth_hba_file: SCRAM, or md5 for a user whose secret is md5
 * (PgBouncer's rule; an hba scram-sha-256 line is PostgreSQL's, SCRAM only). */
#define METHOD_SCRAM_OR_MD5 (HBA_PEER + 1) /* fits c->auth_method's 4 bits */

/* The secret the client is checked against: auth_file's, else what auth_query fetched. */
static const struct user_secret *secret_of(struct client *c)
{
    const struct user_secret *us = userlist_find(c->w->users, c->user);
    if (!us && !c->is_admin)
        us = authq_find(c->w, c->user);
    return us;
}

void auth_begin(struct client *c)
{
    struct worker *w = c->w;
    int m;
    if (w->hba) {
        if ((m = hba_method(c)) < 0)
            return;
    } else {
        m = w->cfg->auth_type == AUTH_TRUST ? HBA_TRUST
            : w->cfg->auth_type == AUTH_MD5 ? HBA_MD5
                                            : METHOD_SCRAM_OR_MD5;
    }
    c->auth_method = (uint8_t)m;
    if (m == HBA_TRUST || m == HBA_CERT) { /* the certificate was checked by hba_method */
        client_logged_in(c);
        return;
    }
    /* A user auth_file does not know: ask the writer (auth_query), the loop going on. */
    if (!c->is_admin && authq_enabled(w) && !userlist_find(w->users, c->user) &&
        authq_lookup(c) == 0) {
        c->auth_step = AUTH_STEP_LOOKUP;
        return;
    }
    auth_resume(c);
}

void auth_resume(struct client *c)
{
    const struct user_secret *us = secret_of(c);
    switch (c->auth_method) {
    case HBA_MD5:
        /* A SCRAM secret cannot answer md5: SCRAM for that user (PostgreSQL and PgBouncer). */
        if (us && us->kind == SECRET_SCRAM)
            ask_scram(c, us);
        else
            ask_md5(c);
        return;
    case HBA_PASSWORD:
        ask_cleartext(c);
        return;
    case HBA_SCRAM:
        /* PostgreSQL's rule: an md5 secret goes through the exchange with a doomed verifier. */
        ask_scram(c, us && us->kind != SECRET_MD5 ? us : NULL);
        return;
    case METHOD_SCRAM_OR_MD5:
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
    const struct user_secret *us = secret_of(c);
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

/* hba's password method: the password in clear (over TLS, one hopes), checked against whatever
 * the secret is. Against a SCRAM secret that takes one PBKDF2 on the loop, as in PostgreSQL;
 * the count is bounded like a server's (server_scram_max_iterations). */
static void check_cleartext(struct client *c, const uint8_t *body, size_t len)
{
    const struct user_secret *us = secret_of(c);
    if (len == 0 || body[len - 1] != 0 || strlen((const char *)body) != len - 1) {
        client_close(c, SQLSTATE_PROTOCOL_VIOLATION, "invalid password packet size");
        return;
    }
    const char *pw = (const char *)body;
    int ok = 0;
    if (us && us->kind == SECRET_PLAIN) {
        size_t n = strlen(us->secret);
        ok = n == len - 1 && CRYPTO_memcmp(us->secret, pw, n) == 0;
    } else if (us && us->kind == SECRET_MD5) {
        char hash[36];
        pg_md5_hash(pw, c->user, hash);
        ok = CRYPTO_memcmp(hash, us->secret, 35) == 0;
    } else if (us && us->kind == SECRET_SCRAM && us->scram &&
               us->scram->iterations <= c->w->cfg->server_scram_max_iterations) {
        struct scram_secret derived;
        char *prepared = scram_saslprep(pw);
        if (prepared && scram_secret_from_password(prepared, us->scram->salt, us->scram->salt_len,
                                                   us->scram->iterations, &derived) == 0)
            ok = CRYPTO_memcmp(derived.stored_key, us->scram->stored_key, SCRAM_KEY_LEN) == 0;
        if (prepared) {
            OPENSSL_cleanse(prepared, strlen(prepared));
            free(prepared);
        }
        OPENSSL_cleanse(&derived, sizeof(derived));
    }
    if (!ok) {
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
    const struct user_secret *us = secret_of(c);
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
    case AUTH_STEP_CLEARTEXT:
        check_cleartext(c, body, len);
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
