/* SCRAM-SHA-256 message exchange and key derivation on top of OpenSSL (SASLprep: libidn); no
 * sockets, no heap but SASLprep's short-lived copy. */
#include "proto/scram.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stringprep.h>

/* Passwords go through SASLprep as in PostgreSQL (scram_saslprep): libpq prepares what the
 * user typed, PostgreSQL prepares what it stores, so pgstay does both where it stands in. */

#define NONCE_RAW_LEN 18 /* PostgreSQL's SCRAM_RAW_NONCE_LEN: 24 base64 characters */

/* Mutable global by design: a test-only hook (see scram_set_test_nonce). */
static char test_nonce[128];
static int have_test_nonce;

void scram_set_test_nonce(const char *nonce)
{
    if (nonce == NULL || strlen(nonce) >= sizeof(test_nonce)) {
        have_test_nonce = 0;
        return;
    }
    memcpy(test_nonce, nonce, strlen(nonce) + 1);
    have_test_nonce = 1;
}

/* ---- base64 ---- */

/* Encoded length of n bytes plus the NUL; a macro so it can size arrays. */
#define B64_LEN(n) (4 * (((size_t)(n) + 2) / 3) + 1)

static int b64_encode(const unsigned char *in, size_t n, char *out, size_t cap)
{
    if (B64_LEN(n) > cap || n > INT_MAX / 2)
        return -1;
    EVP_EncodeBlock((unsigned char *)out, in, (int)n);
    return 0;
}

static int b64_char(unsigned char ch)
{
    return (ch >= 'A' && ch <= 'Z') || (ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9') ||
           ch == '+' || ch == '/';
}

/* Strict decode: EVP_DecodeBlock tolerates whitespace and reports padding as data, so the
 * alphabet and padding are checked here first. Returns the decoded length or -1. */
static int b64_decode(const char *in, size_t n, unsigned char *out, size_t cap)
{
    if (n == 0 || n % 4 != 0 || n > INT_MAX / 2)
        return -1;
    size_t pad = 0;
    if (in[n - 1] == '=')
        pad++;
    if (in[n - 2] == '=')
        pad++;
    if (pad == 1 && in[n - 2] == '=')
        return -1;
    for (size_t i = 0; i < n - pad; i++)
        if (!b64_char((unsigned char)in[i]))
            return -1;
    size_t outlen = n / 4 * 3 - pad;
    /* DecodeBlock writes whole 3-byte groups, padding included. */
    if (n / 4 * 3 > cap) {
        unsigned char tmp[768];
        if (n / 4 * 3 > sizeof(tmp) || outlen > cap)
            return -1;
        if (EVP_DecodeBlock(tmp, (const unsigned char *)in, (int)n) < 0)
            return -1;
        memcpy(out, tmp, outlen);
        OPENSSL_cleanse(tmp, sizeof(tmp));
        return (int)outlen;
    }
    if (EVP_DecodeBlock(out, (const unsigned char *)in, (int)n) < 0)
        return -1;
    return (int)outlen;
}

/* ---- primitives ---- */

static int hmac(const unsigned char *key, size_t klen, const void *data, size_t dlen,
                unsigned char out[SCRAM_KEY_LEN])
{
    unsigned int olen = 0;
    if (HMAC(EVP_sha256(), key, (int)klen, data, dlen, out, &olen) == NULL || olen != SCRAM_KEY_LEN)
        return -1;
    return 0;
}

static int sha256(const unsigned char *in, size_t n, unsigned char out[SCRAM_KEY_LEN])
{
    return SHA256(in, n, out) == NULL ? -1 : 0;
}

static int make_nonce(char *out, size_t cap)
{
    if (have_test_nonce) {
        have_test_nonce = 0;
        size_t n = strlen(test_nonce);
        if (n + 1 > cap)
            return -1;
        memcpy(out, test_nonce, n + 1);
        return 0;
    }
    unsigned char raw[NONCE_RAW_LEN];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        return -1;
    return b64_encode(raw, sizeof(raw), out, cap);
}

/* ClientKey and ServerKey from the salted password. */
static int keys_from_salted(const unsigned char salted[SCRAM_KEY_LEN],
                            unsigned char client_key[SCRAM_KEY_LEN],
                            unsigned char server_key[SCRAM_KEY_LEN])
{
    if (hmac(salted, SCRAM_KEY_LEN, "Client Key", 10, client_key) < 0 ||
        hmac(salted, SCRAM_KEY_LEN, "Server Key", 10, server_key) < 0)
        return -1;
    return 0;
}

static int salt_password(const char *password, const unsigned char *salt, int salt_len,
                         int iterations, unsigned char out[SCRAM_KEY_LEN])
{
    if (PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, salt_len, iterations, EVP_sha256(),
                          SCRAM_KEY_LEN, out) != 1)
        return -1;
    return 0;
}

/* ---- secrets ---- */

int scram_secret_from_password(const char *password, const unsigned char *salt, int salt_len,
                               int iterations, struct scram_secret *out)
{
    unsigned char salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];
    int rc = -1;

    if (salt_len <= 0 || salt_len > SCRAM_MAX_SALT || iterations < 1)
        return -1;
    memset(out, 0, sizeof(*out));
    if (salt_password(password, salt, salt_len, iterations, salted) < 0 ||
        keys_from_salted(salted, client_key, out->server_key) < 0 ||
        sha256(client_key, SCRAM_KEY_LEN, out->stored_key) < 0)
        goto out;
    out->iterations = iterations;
    memcpy(out->salt, salt, (size_t)salt_len);
    out->salt_len = salt_len;
    rc = 0;
out:
    OPENSSL_cleanse(salted, sizeof(salted));
    OPENSSL_cleanse(client_key, sizeof(client_key));
    return rc;
}

char *scram_saslprep(const char *password)
{
    int ascii = 1;
    for (const unsigned char *p = (const unsigned char *)password; *p; p++)
        if (*p >= 0x80)
            ascii = 0;
    char *out = NULL;
    /* Unassigned code points refused, as PostgreSQL's pg_saslprep refuses them; a refusal
     * (or bytes that are not UTF-8) means the password is used as it is. */
    if (!ascii &&
        stringprep_profile(password, &out, "SASLprep", STRINGPREP_NO_UNASSIGNED) == STRINGPREP_OK &&
        out && *out)
        return out;
    free(out);
    return strdup(password);
}

int scram_secret_generate(const char *password, struct scram_secret *out)
{
    unsigned char salt[SCRAM_SALT_LEN];
    if (RAND_bytes(salt, sizeof(salt)) != 1)
        return -1;
    char *prepared = scram_saslprep(password);
    if (!prepared)
        return -1;
    int rc = scram_secret_from_password(prepared, salt, sizeof(salt), SCRAM_ITERATIONS, out);
    OPENSSL_cleanse(prepared, strlen(prepared));
    free(prepared);
    return rc;
}

int scram_parse_secret(const char *s, struct scram_secret *out)
{
    static const char prefix[] = SCRAM_MECHANISM "$";
    memset(out, 0, sizeof(*out));
    if (strncmp(s, prefix, sizeof(prefix) - 1) != 0)
        return -1;
    const char *p = s + sizeof(prefix) - 1;

    char *end;
    if (*p < '0' || *p > '9')
        return -1;
    long iter = strtol(p, &end, 10);
    if (*end != ':' || iter < 1 || iter > INT_MAX)
        return -1;
    p = end + 1;

    const char *dollar = strchr(p, '$');
    if (dollar == NULL)
        return -1;
    int n = b64_decode(p, (size_t)(dollar - p), out->salt, sizeof(out->salt));
    if (n <= 0)
        return -1;
    out->salt_len = n;
    p = dollar + 1;

    const char *colon = strchr(p, ':');
    if (colon == NULL)
        return -1;
    if (b64_decode(p, (size_t)(colon - p), out->stored_key, SCRAM_KEY_LEN) != SCRAM_KEY_LEN)
        return -1;
    p = colon + 1;
    if (b64_decode(p, strlen(p), out->server_key, SCRAM_KEY_LEN) != SCRAM_KEY_LEN)
        return -1;
    out->iterations = (int)iter;
    return 0;
}

/* ---- message parsing ---- */

/* A cursor over one SCRAM message: "a=value,b=value,...". */
struct cursor {
    const char *p;
    const char *end;
};

/* Read "<attr>=<value>" and the following comma if any. 0 ok, -1 not that attribute. */
static int read_attr(struct cursor *cur, char attr, const char **val, size_t *vlen)
{
    if (cur->end - cur->p < 2 || cur->p[0] != attr || cur->p[1] != '=')
        return -1;
    const char *v = cur->p + 2;
    const char *comma = memchr(v, ',', (size_t)(cur->end - v));
    const char *vend = comma ? comma : cur->end;
    *val = v;
    *vlen = (size_t)(vend - v);
    cur->p = comma ? comma + 1 : cur->end;
    return 0;
}

/* RFC 5802: printable ASCII except ','. */
static int valid_nonce(const char *v, size_t n)
{
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] < 0x21 || (unsigned char)v[i] > 0x7e || v[i] == ',')
            return 0;
    return 1;
}

/* SCRAM messages are text: a NUL inside would cut the AuthMessage short. */
static int has_nul(const char *msg, size_t len)
{
    return memchr(msg, '\0', len) != NULL;
}

/* ClientSignature / ServerSignature: HMAC(key, client-first-bare "," server-first "," final). */
static int auth_sig(const unsigned char key[SCRAM_KEY_LEN], const char *first_bare,
                    const char *server_first, const char *final_wo_proof, size_t final_len,
                    unsigned char out[SCRAM_KEY_LEN])
{
    char msg[1536];
    size_t a = strlen(first_bare), b = strlen(server_first);
    if (a + b + final_len + 2 > sizeof(msg))
        return -1;
    memcpy(msg, first_bare, a);
    msg[a] = ',';
    memcpy(msg + a + 1, server_first, b);
    msg[a + 1 + b] = ',';
    memcpy(msg + a + b + 2, final_wo_proof, final_len);
    return hmac(key, SCRAM_KEY_LEN, msg, a + b + 2 + final_len, out);
}

/* ---- server ---- */

int scram_server_init(struct scram_server *s, const struct scram_secret *secret)
{
    memset(s, 0, sizeof(*s));
    s->secret = *secret;
    s->state = SCRAM_SRV_INIT;
    return 0;
}

int scram_server_offer_plus(struct scram_server *s, const unsigned char *data, size_t len)
{
    if (len == 0 || len > sizeof(s->cb_data))
        return -1;
    memcpy(s->cb_data, data, len);
    s->cb_len = len;
    s->cb_offered = 1;
    return 0;
}

int scram_server_handle_first(struct scram_server *s, const char *msg, size_t len, char *out,
                              size_t cap, size_t *outlen)
{
    struct cursor cur = {msg, msg + len};
    const char *v;
    size_t vlen;

    if (s->state != SCRAM_SRV_INIT || has_nul(msg, len))
        goto fail;
    /* gs2 header: "n," (no channel binding), "y," (the client could, but thinks we cannot), or
     * "p=tls-server-end-point," (the only binding PostgreSQL defines, with -PLUS only). */
    static const char tsep[] = "p=tls-server-end-point,";
    if (len >= sizeof(tsep) - 1 && memcmp(msg, tsep, sizeof(tsep) - 1) == 0) {
        if (!s->cb_selected)
            goto fail;
        cur.p = msg + sizeof(tsep) - 1;
    } else if (len >= 3 && (msg[0] == 'n' || msg[0] == 'y') && msg[1] == ',') {
        /* Without -PLUS; and "y" while -PLUS was offered means someone took it off the list. */
        if (s->cb_selected || (msg[0] == 'y' && s->cb_offered))
            goto fail;
        cur.p = msg + 2;
    } else {
        goto fail;
    }
    s->cbind_flag = msg[0];
    /* Authorization identity: PostgreSQL refuses it, and so do we. */
    if (cur.p >= cur.end || *cur.p != ',')
        goto fail;
    cur.p++;
    memcpy(s->gs2, msg, (size_t)(cur.p - msg)); /* shorter than gs2: checked above */
    s->gs2[cur.p - msg] = '\0';

    const char *bare = cur.p;
    size_t bare_len = (size_t)(cur.end - bare);
    if (bare_len >= sizeof(s->client_first_bare))
        goto fail;
    /* The user name: PostgreSQL takes it from the startup packet and ignores this one. */
    if (read_attr(&cur, 'n', &v, &vlen) < 0)
        goto fail;
    if (read_attr(&cur, 'r', &v, &vlen) < 0 || !valid_nonce(v, vlen) ||
        vlen >= sizeof(s->client_nonce))
        goto fail;
    /* Anything after r= is an extension; none is defined for SCRAM-SHA-256 we must honour. */
    memcpy(s->client_nonce, v, vlen);
    s->client_nonce[vlen] = '\0';
    memcpy(s->client_first_bare, bare, bare_len);
    s->client_first_bare[bare_len] = '\0';

    if (make_nonce(s->server_nonce, sizeof(s->server_nonce)) < 0)
        goto fail;
    char salt64[B64_LEN(SCRAM_MAX_SALT)];
    if (b64_encode(s->secret.salt, (size_t)s->secret.salt_len, salt64, sizeof(salt64)) < 0)
        goto fail;
    int n = snprintf(s->server_first, sizeof(s->server_first), "r=%s%s,s=%s,i=%d", s->client_nonce,
                     s->server_nonce, salt64, s->secret.iterations);
    if (n < 0 || (size_t)n >= sizeof(s->server_first) || (size_t)n + 1 > cap)
        goto fail;
    memcpy(out, s->server_first, (size_t)n + 1);
    *outlen = (size_t)n;
    s->state = SCRAM_SRV_SENT_FIRST;
    return 0;
fail:
    s->state = SCRAM_SRV_FAILED;
    return -1;
}

int scram_server_handle_final(struct scram_server *s, const char *msg, size_t len, char *out,
                              size_t cap, size_t *outlen)
{
    struct cursor cur = {msg, msg + len};
    const char *v;
    size_t vlen;
    unsigned char buf[128], proof[SCRAM_KEY_LEN], sig[SCRAM_KEY_LEN], key[SCRAM_KEY_LEN];
    int rc = -1;

    if (s->state != SCRAM_SRV_SENT_FIRST || has_nul(msg, len))
        goto out;

    /* c= must be the base64 of the gs2 header the client sent first, followed with -PLUS by
     * the binding data: the hash of the certificate this TLS session showed it. */
    if (read_attr(&cur, 'c', &v, &vlen) < 0)
        goto out;
    int n = b64_decode(v, vlen, buf, sizeof(buf));
    size_t gl = strlen(s->gs2), want = gl + (s->cbind_flag == 'p' ? s->cb_len : 0);
    if (n < 0 || (size_t)n != want || memcmp(buf, s->gs2, gl) != 0 ||
        (s->cbind_flag == 'p' && CRYPTO_memcmp(buf + gl, s->cb_data, s->cb_len) != 0))
        goto out;

    if (read_attr(&cur, 'r', &v, &vlen) < 0)
        goto out;
    size_t cn = strlen(s->client_nonce), sn = strlen(s->server_nonce);
    if (vlen != cn + sn || memcmp(v, s->client_nonce, cn) != 0 ||
        memcmp(v + cn, s->server_nonce, sn) != 0)
        goto out;

    /* Skip extensions up to the proof, which is always last. */
    while (cur.p < cur.end && !(cur.p[0] == 'p' && cur.end - cur.p >= 2 && cur.p[1] == '=')) {
        const char *comma = memchr(cur.p, ',', (size_t)(cur.end - cur.p));
        if (comma == NULL)
            goto out;
        cur.p = comma + 1;
    }
    const char *proof_at = cur.p;
    if (read_attr(&cur, 'p', &v, &vlen) < 0 || cur.p != cur.end || v + vlen != cur.end)
        goto out;
    if (b64_decode(v, vlen, proof, sizeof(proof)) != SCRAM_KEY_LEN)
        goto out;
    /* The signed text stops before ",p=". */
    size_t wo_proof = (size_t)(proof_at - 1 - msg);

    if (auth_sig(s->secret.stored_key, s->client_first_bare, s->server_first, msg, wo_proof, sig) <
        0)
        goto out;
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        key[i] = proof[i] ^ sig[i];
    unsigned char stored[SCRAM_KEY_LEN];
    if (sha256(key, SCRAM_KEY_LEN, stored) < 0)
        goto out;
    if (CRYPTO_memcmp(stored, s->secret.stored_key, SCRAM_KEY_LEN) != 0) {
        rc = -2;
        goto out;
    }

    if (auth_sig(s->secret.server_key, s->client_first_bare, s->server_first, msg, wo_proof, sig) <
        0)
        goto out;
    char sig64[B64_LEN(SCRAM_KEY_LEN)];
    if (b64_encode(sig, SCRAM_KEY_LEN, sig64, sizeof(sig64)) < 0)
        goto out;
    int w = snprintf(out, cap, "v=%s", sig64);
    if (w < 0 || (size_t)w >= cap)
        goto out;
    *outlen = (size_t)w;
    memcpy(s->client_key, key, SCRAM_KEY_LEN);
    s->have_client_key = 1;
    s->state = SCRAM_SRV_DONE;
    rc = 0;
out:
    if (rc != 0)
        s->state = SCRAM_SRV_FAILED;
    OPENSSL_cleanse(key, sizeof(key));
    OPENSSL_cleanse(proof, sizeof(proof));
    return rc;
}

/* ---- client ---- */

int scram_client_init_password(struct scram_client *c, const char *password)
{
    memset(c, 0, sizeof(*c));
    /* PostgreSQL stored the secret of the SASLprep'd password: prove that one, as libpq does. */
    char *prepared = scram_saslprep(password);
    if (!prepared)
        return -1;
    size_t n = strlen(prepared);
    int rc = -1;
    if (n < sizeof(c->password)) {
        memcpy(c->password, prepared, n + 1);
        rc = 0;
    }
    OPENSSL_cleanse(prepared, n);
    free(prepared);
    return rc;
}

int scram_client_init_keys(struct scram_client *c, const unsigned char client_key[SCRAM_KEY_LEN],
                           const unsigned char server_key[SCRAM_KEY_LEN])
{
    memset(c, 0, sizeof(*c));
    memcpy(c->client_key, client_key, SCRAM_KEY_LEN);
    memcpy(c->server_key, server_key, SCRAM_KEY_LEN);
    c->have_keys = 1;
    return 0;
}

int scram_client_set_user(struct scram_client *c, const char *user)
{
    /* saslname: ',' and '=' are escaped as =2C and =3D. */
    size_t o = 0;
    for (const char *p = user; *p; p++) {
        const char *rep = *p == ',' ? "=2C" : *p == '=' ? "=3D" : NULL;
        size_t rl = rep ? 3 : 1;
        if (o + rl >= sizeof(c->user))
            return -1;
        if (rep)
            memcpy(c->user + o, rep, 3);
        else
            c->user[o] = *p;
        o += rl;
    }
    c->user[o] = '\0';
    return 0;
}

int scram_client_first(struct scram_client *c, char *out, size_t cap, size_t *outlen)
{
    if (c->state != SCRAM_CLI_INIT)
        return -1;
    if (make_nonce(c->client_nonce, sizeof(c->client_nonce)) < 0)
        return -1;
    int n = snprintf(c->client_first_bare, sizeof(c->client_first_bare), "n=%s,r=%s", c->user,
                     c->client_nonce);
    if (n < 0 || (size_t)n >= sizeof(c->client_first_bare))
        return -1;
    int w = snprintf(out, cap, "n,,%s", c->client_first_bare);
    if (w < 0 || (size_t)w >= cap)
        return -1;
    *outlen = (size_t)w;
    c->state = SCRAM_CLI_SENT_FIRST;
    return 0;
}

int scram_client_final(struct scram_client *c, const char *server_first, size_t len, char *out,
                       size_t cap, size_t *outlen)
{
    struct cursor cur = {server_first, server_first + len};
    const char *nonce, *salt64, *iter;
    size_t nonce_len, salt64_len, iter_len;
    unsigned char salt[SCRAM_MAX_SALT], sig[SCRAM_KEY_LEN], stored[SCRAM_KEY_LEN];
    int rc = -1;

    if (c->state != SCRAM_CLI_SENT_FIRST || has_nul(server_first, len) ||
        len >= sizeof(c->server_first))
        goto out;
    if (read_attr(&cur, 'r', &nonce, &nonce_len) < 0 ||
        read_attr(&cur, 's', &salt64, &salt64_len) < 0 ||
        read_attr(&cur, 'i', &iter, &iter_len) < 0)
        goto out;
    /* The server's nonce must extend ours, or this is a replay or a confused server. */
    size_t cn = strlen(c->client_nonce);
    if (nonce_len <= cn || memcmp(nonce, c->client_nonce, cn) != 0 ||
        !valid_nonce(nonce, nonce_len))
        goto out;
    int salt_len = b64_decode(salt64, salt64_len, salt, sizeof(salt));
    if (salt_len <= 0)
        goto out;
    long iterations = 0;
    if (iter_len == 0 || iter_len > 10)
        goto out;
    for (size_t i = 0; i < iter_len; i++) {
        if (iter[i] < '0' || iter[i] > '9')
            goto out;
        iterations = iterations * 10 + (iter[i] - '0');
    }
    /* PBKDF2 runs on the event loop: a server asking for 10^9 iterations would stall every
     * client of the loop for minutes (found by tests/fuzz/fuzz_backend); the bound is
     * server_scram_max_iterations (c->max_iterations), checked below where PBKDF2 would run. */
    if (iterations < 1 || iterations > INT_MAX)
        goto out;
    c->iterations = iterations;

    if (!c->have_keys) {
        /* A hostile or misconfigured server could ask for 10^9 rounds of PBKDF2: refused before
         * they are spent (keys given up front cost nothing whatever the count). */
        if (c->max_iterations > 0 && iterations > c->max_iterations) {
            rc = -2;
            goto out;
        }
        if (salt_password(c->password, salt, salt_len, (int)iterations, c->salted_password) < 0 ||
            keys_from_salted(c->salted_password, c->client_key, c->server_key) < 0)
            goto out;
    }
    memcpy(c->server_first, server_first, len);
    c->server_first[len] = '\0';

    char final_wo_proof[256];
    int n =
        snprintf(final_wo_proof, sizeof(final_wo_proof), "c=biws,r=%.*s", (int)nonce_len, nonce);
    if (n < 0 || (size_t)n >= sizeof(final_wo_proof))
        goto out;
    if (sha256(c->client_key, SCRAM_KEY_LEN, stored) < 0 ||
        auth_sig(stored, c->client_first_bare, c->server_first, final_wo_proof, (size_t)n, sig) < 0)
        goto out;
    unsigned char proof[SCRAM_KEY_LEN];
    for (int i = 0; i < SCRAM_KEY_LEN; i++)
        proof[i] = c->client_key[i] ^ sig[i];
    if (auth_sig(c->server_key, c->client_first_bare, c->server_first, final_wo_proof, (size_t)n,
                 c->expected_server_sig) < 0)
        goto out;
    char proof64[B64_LEN(SCRAM_KEY_LEN)];
    if (b64_encode(proof, SCRAM_KEY_LEN, proof64, sizeof(proof64)) < 0)
        goto out;
    int w = snprintf(out, cap, "%s,p=%s", final_wo_proof, proof64);
    if (w < 0 || (size_t)w >= cap)
        goto out;
    *outlen = (size_t)w;
    c->state = SCRAM_CLI_SENT_FINAL;
    rc = 0;
out:
    OPENSSL_cleanse(stored, sizeof(stored));
    return rc;
}

int scram_client_verify_server(struct scram_client *c, const char *server_final, size_t len)
{
    struct cursor cur = {server_final, server_final + len};
    const char *v;
    size_t vlen;
    unsigned char sig[SCRAM_KEY_LEN];

    if (c->state != SCRAM_CLI_SENT_FINAL || has_nul(server_final, len))
        return -1;
    /* "e=..." is a server-side error: read_attr('v') fails on it. */
    if (read_attr(&cur, 'v', &v, &vlen) < 0)
        return -1;
    if (b64_decode(v, vlen, sig, sizeof(sig)) != SCRAM_KEY_LEN)
        return -1;
    if (CRYPTO_memcmp(sig, c->expected_server_sig, SCRAM_KEY_LEN) != 0)
        return -1;
    c->state = SCRAM_CLI_DONE;
    return 0;
}
