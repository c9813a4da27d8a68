/* The TLS transport (OpenSSL 3) behind struct transport_ops, and the contexts it is made from.
 *
 * OpenSSL talks to the socket through a small BIO of ours rather than a socket BIO: it sends
 * with MSG_NOSIGNAL, and it can hand OpenSSL bytes the connection had already read (direct
 * TLS, where the ClientHello is the first thing a client sends). Read-ahead is on, so a record
 * costs one recv() and not two; the price is that decrypted or undecrypted bytes can sit inside
 * OpenSSL after the socket was drained, which conn.c reads through the pending member. */
#include "core/tls.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Default for TLS 1.2 and below (TLS 1.3 suites are OpenSSL's): strong ciphers only. */
#define TLS_DEFAULT_CIPHERS "HIGH:!aNULL:!eNULL:!MD5:!RC4:!3DES"
/* ALPN protocol of PostgreSQL 17 (and the only one pgstay speaks), in wire format. */
static const unsigned char alpn_pg[] = {10, 'p', 'o', 's', 't', 'g', 'r', 'e', 's', 'q', 'l'};

/* Per-connection TLS state, made by conn_start_tls and freed with the connection. */
struct tls_conn {
    SSL *ssl;
    uint8_t *prefix; /* bytes read before the switch, given to OpenSSL first */
    size_t prefix_len, prefix_off;
    int fd;
    char err[256]; /* why the handshake or the stream failed */
};

static struct tls_conn *tc_of(const struct conn *c)
{
    return c->tls_state;
}

/* Keep the first reason OpenSSL gives (the queue holds the deepest one first). */
static void note_ssl_error(struct tls_conn *t, const char *what)
{
    unsigned long e = ERR_get_error();
    if (t->err[0])
        return;
    if (e) {
        char buf[200];
        ERR_error_string_n(e, buf, sizeof(buf));
        const char *reason = ERR_reason_error_string(e);
        snprintf(t->err, sizeof(t->err), "%s: %s", what, reason ? reason : buf);
    } else {
        snprintf(t->err, sizeof(t->err), "%s", what);
    }
    long v = SSL_get_verify_result(t->ssl);
    if (v != X509_V_OK) {
        size_t n = strlen(t->err);
        snprintf(t->err + n, sizeof(t->err) - n, " (%s)", X509_verify_cert_error_string(v));
    }
}

/* ---- the BIO: the socket, after any bytes read before the switch ---- */

static BIO_METHOD *bio_method;

static int bio_read(BIO *b, char *buf, int len)
{
    struct tls_conn *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->prefix_off < t->prefix_len) {
        size_t n = t->prefix_len - t->prefix_off;
        if (n > (size_t)len)
            n = (size_t)len;
        memcpy(buf, t->prefix + t->prefix_off, n);
        t->prefix_off += n;
        if (t->prefix_off == t->prefix_len) {
            free(t->prefix);
            t->prefix = NULL;
            t->prefix_len = t->prefix_off = 0;
        }
        return (int)n;
    }
    ssize_t n = recv(t->fd, buf, (size_t)len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_read(b);
    return (int)n;
}

static int bio_write(BIO *b, const char *buf, int len)
{
    struct tls_conn *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    ssize_t n = send(t->fd, buf, (size_t)len, MSG_NOSIGNAL);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
        BIO_set_retry_write(b);
    return (int)n;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    /* Nothing is buffered on our side of OpenSSL: a flush has nothing to do. */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void make_bio_method(void)
{
    bio_method = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "pgstay socket");
    if (!bio_method)
        return;
    BIO_meth_set_read(bio_method, bio_read);
    BIO_meth_set_write(bio_method, bio_write);
    BIO_meth_set_ctrl(bio_method, bio_ctrl);
    BIO_meth_set_create(bio_method, bio_create);
}

/* Made once for the process, whichever worker's thread first needs it. */
static BIO_METHOD *get_bio_method(void)
{
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, make_bio_method);
    return bio_method;
}

/* ---- the transport ---- */

/* errno for a failed call, and which readiness lets it go on. 0: end of stream. */
static long ssl_result(struct conn *c, int r, int is_read)
{
    struct tls_conn *t = tc_of(c);
    int e = SSL_get_error(t->ssl, r);
    switch (e) {
    case SSL_ERROR_WANT_READ:
        if (!is_read)
            c->wr_wants_rd = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        if (is_read)
            c->rd_wants_wr = 1;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN:
        return 0; /* close_notify, or an EOF without one (SSL_OP_IGNORE_UNEXPECTED_EOF) */
    case SSL_ERROR_SYSCALL:
        if (errno == 0)
            return 0;
        return -1;
    default:
        note_ssl_error(t, is_read ? "TLS read failed" : "TLS write failed");
        errno = EPROTO;
        return -1;
    }
}

static long tls_read(struct conn *c, void *p, size_t n)
{
    struct tls_conn *t = tc_of(c);
    c->rd_wants_wr = 0;
    ERR_clear_error();
    errno = 0;
    size_t got = 0;
    int r = SSL_read_ex(t->ssl, p, n, &got);
    if (r > 0)
        return (long)got;
    return ssl_result(c, r, 1);
}

static long tls_write(struct conn *c, const void *p, size_t n)
{
    struct tls_conn *t = tc_of(c);
    c->wr_wants_rd = 0;
    ERR_clear_error();
    errno = 0;
    size_t put = 0;
    int r = SSL_write_ex(t->ssl, p, n, &put);
    if (r > 0)
        return (long)put;
    return ssl_result(c, r, 0);
}

static void tls_shutdown(struct conn *c)
{
    struct tls_conn *t = tc_of(c);
    /* close_notify, best effort: the socket is non-blocking and about to be closed. */
    if (t && SSL_is_init_finished(t->ssl)) {
        ERR_clear_error();
        SSL_shutdown(t->ssl);
    }
    shutdown(c->fd, SHUT_WR);
}

static void tls_close(struct conn *c)
{
    struct tls_conn *t = tc_of(c);
    if (t) {
        SSL_free(t->ssl); /* the BIO with it */
        free(t->prefix);
        free(t);
    }
    c->tls_state = NULL;
    c->tls = 0;
    c->tr = &transport_plain;
    close(c->fd);
}

static int tls_handshake(struct conn *c)
{
    struct tls_conn *t = tc_of(c);
    ERR_clear_error();
    errno = 0;
    int r = SSL_do_handshake(t->ssl);
    if (r == 1)
        return 1;
    int e = SSL_get_error(t->ssl, r);
    if (e == SSL_ERROR_WANT_READ) {
        c->hs_want = EV_READ;
        return 0;
    }
    if (e == SSL_ERROR_WANT_WRITE) {
        c->hs_want = EV_WRITE;
        return 0;
    }
    if (e == SSL_ERROR_SYSCALL && errno != 0) {
        c->err = errno;
        snprintf(t->err, sizeof(t->err), "TLS handshake failed: %s", strerror(errno));
    } else if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) {
        c->err = ECONNRESET;
        snprintf(t->err, sizeof(t->err), "TLS handshake failed: the peer closed the connection");
    } else {
        c->err = EPROTO;
        note_ssl_error(t, "TLS handshake failed");
    }
    return -1;
}

static int tls_pending(const struct conn *c)
{
    struct tls_conn *t = tc_of(c);
    return t && (SSL_has_pending(t->ssl) || t->prefix_off < t->prefix_len);
}

static const char *tls_error(const struct conn *c)
{
    struct tls_conn *t = tc_of(c);
    return t && t->err[0] ? t->err : NULL;
}

static const struct transport_ops transport_tls = {
    .name = "tls",
    .read = tls_read,
    .write = tls_write,
    .shutdown = tls_shutdown,
    .close = tls_close,
    .handshake = tls_handshake,
    .pending = tls_pending,
    .error = tls_error,
};

int conn_start_tls(struct conn *c, tls_ctx *ctx, int accept, int verify_host, const char *host,
                   size_t prefix)
{
    /* The plaintext answer ('S') goes first, on its own: nothing queued may be encrypted by
     * mistake, nor follow the switch in clear. */
    if (conn_flush_plain(c) < 0) {
        if (!c->err)
            c->err = EAGAIN;
        return -1;
    }
    struct tls_conn *t = calloc(1, sizeof(*t));
    BIO_METHOD *m = get_bio_method();
    BIO *bio = m ? BIO_new(m) : NULL;
    if (!t || !bio)
        goto fail;
    t->fd = c->fd;
    t->ssl = SSL_new(ctx);
    if (!t->ssl)
        goto fail;
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio);
    bio = NULL;
    if (prefix > 0) {
        t->prefix = malloc(prefix);
        if (!t->prefix)
            goto fail;
        memcpy(t->prefix, conn_data(c), prefix);
        t->prefix_len = prefix;
        conn_consume(c, prefix);
    }
    if (accept) {
        SSL_set_accept_state(t->ssl);
    } else {
        SSL_set_connect_state(t->ssl);
        struct in6_addr a6;
        int numeric =
            host && (inet_pton(AF_INET, host, &a6) == 1 || inet_pton(AF_INET6, host, &a6) == 1);
        if (host && !numeric)
            SSL_set_tlsext_host_name(t->ssl, host);
        if (verify_host && host) {
            X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
            int ok = numeric ? X509_VERIFY_PARAM_set1_ip_asc(vp, host)
                             : X509_VERIFY_PARAM_set1_host(vp, host, 0);
            if (ok != 1)
                goto fail;
        }
    }
    c->tls_state = t;
    c->tr = &transport_tls;
    c->tls = 1;
    c->handshaking = 1;
    /* The connecting side speaks first (and so does a direct TLS client whose hello is already
     * here): a writable socket starts the handshake at the next loop turn. */
    c->hs_want = accept && prefix == 0 ? EV_READ : EV_WRITE;
    conn_rearm(c);
    return 0;
fail:
    if (bio)
        BIO_free(bio);
    if (t) {
        if (t->ssl)
            SSL_free(t->ssl);
        free(t->prefix);
        free(t);
    }
    c->err = ENOMEM;
    return -1;
}

int conn_is_tls(const struct conn *c)
{
    return c->tls && c->tls_state;
}

const char *conn_tls_version(const struct conn *c)
{
    struct tls_conn *t = c->tls ? tc_of(c) : NULL;
    return t ? SSL_get_version(t->ssl) : "";
}

const char *conn_tls_cipher(const struct conn *c)
{
    struct tls_conn *t = c->tls ? tc_of(c) : NULL;
    const char *s = t ? SSL_get_cipher_name(t->ssl) : NULL;
    return s ? s : "";
}

void conn_tls_alpn(const struct conn *c, char *buf, size_t cap)
{
    struct tls_conn *t = c->tls ? tc_of(c) : NULL;
    const unsigned char *p = NULL;
    unsigned int n = 0;
    if (t)
        SSL_get0_alpn_selected(t->ssl, &p, &n);
    if (n >= cap)
        n = (unsigned int)cap - 1;
    if (n)
        memcpy(buf, p, n);
    buf[n] = 0;
}

int conn_tls_server_end_point(const struct conn *c, unsigned char *out, size_t cap)
{
    struct tls_conn *t = c->tls ? tc_of(c) : NULL;
    X509 *cert = t ? SSL_get_certificate(t->ssl) : NULL;
    int algo = NID_undef;
    if (!cert || !OBJ_find_sigid_algs(X509_get_signature_nid(cert), &algo, NULL))
        return -1;
    if (algo == NID_md5 || algo == NID_sha1)
        algo = NID_sha256;
    const EVP_MD *md = EVP_get_digestbynid(algo);
    unsigned int n = 0;
    if (!md || (size_t)EVP_MD_get_size(md) > cap || X509_digest(cert, md, out, &n) != 1)
        return -1;
    return (int)n;
}

int conn_tls_peer_cn(const struct conn *c, char *buf, size_t cap)
{
    struct tls_conn *t = c->tls ? tc_of(c) : NULL;
    if (!t || SSL_get_verify_result(t->ssl) != X509_V_OK)
        return 0;
    X509 *peer = SSL_get1_peer_certificate(t->ssl);
    if (!peer)
        return 0;
    int n = X509_NAME_get_text_by_NID(X509_get_subject_name(peer), NID_commonName, buf, (int)cap);
    X509_free(peer);
    /* A name with an embedded NUL would compare equal to its prefix: refused. */
    return n > 0 && (size_t)n < cap && strlen(buf) == (size_t)n;
}

/* ---- contexts ---- */

static int version_of(const char *name)
{
    static const struct {
        const char *name;
        int v;
    } names[] = {{"tlsv1.0", TLS1_VERSION},
                 {"tlsv1", TLS1_VERSION},
                 {"tlsv1.1", TLS1_1_VERSION},
                 {"tlsv1.2", TLS1_2_VERSION},
                 {"tlsv1.3", TLS1_3_VERSION}};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcasecmp(name, names[i].name) == 0)
            return names[i].v;
    return 0;
}

/* The lowest and highest version a protocols setting allows: 0 if not understood. */
static int protocol_range(const char *s, int *lo, int *hi)
{
    if (!s || !*s || !strcasecmp(s, "secure") || !strcasecmp(s, "default")) {
        *lo = TLS1_2_VERSION;
        *hi = 0; /* the newest OpenSSL knows */
        return 1;
    }
    if (!strcasecmp(s, "all") || !strcasecmp(s, "legacy")) {
        *lo = TLS1_VERSION;
        *hi = 0;
        return 1;
    }
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", s);
    *lo = *hi = 0;
    char *save = NULL;
    for (char *tok = strtok_r(buf, ", \t", &save); tok; tok = strtok_r(NULL, ", \t", &save)) {
        int v = version_of(tok);
        if (!v)
            return 0;
        if (!*lo || v < *lo)
            *lo = v;
        if (v > *hi)
            *hi = v;
    }
    return *lo != 0;
}

int tls_protocols_valid(const char *protocols)
{
    int lo, hi;
    return protocol_range(protocols, &lo, &hi);
}

/* Offer ALPN "postgresql" only to a client that asks for it; a client that asks for something
 * else is refused (PostgreSQL 17 does the same); one that does not use ALPN is let through
 * (libpq before 17). */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, alpn_pg, sizeof(alpn_pg), in, inlen) ==
        OPENSSL_NPN_NEGOTIATED) {
        *out = sel;
        return SSL_TLSEXT_ERR_OK;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

static int set_error(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    const char *reason = e ? ERR_reason_error_string(e) : NULL;
    snprintf(err, errlen, "%s%s%s%s%s", what, file ? " " : "", file ? file : "", reason ? ": " : "",
             reason ? reason : "");
    ERR_clear_error();
    return -1;
}

tls_ctx *tls_ctx_new(const struct tls_settings *s, int accept, char *err, size_t errlen)
{
    ERR_clear_error();
    SSL_CTX *ctx = SSL_CTX_new(accept ? TLS_server_method() : TLS_client_method());
    if (!ctx) {
        set_error(err, errlen, "cannot create a TLS context", NULL);
        return NULL;
    }
    int lo, hi;
    if (!protocol_range(s->protocols, &lo, &hi)) {
        snprintf(err, errlen, "invalid TLS protocols \"%s\"", s->protocols);
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, lo);
    SSL_CTX_set_max_proto_version(ctx, hi);
    const char *ciphers = s->ciphers && *s->ciphers && strcasecmp(s->ciphers, "default")
                              ? s->ciphers
                              : TLS_DEFAULT_CIPHERS;
    if (SSL_CTX_set_cipher_list(ctx, ciphers) != 1) {
        set_error(err, errlen, "invalid TLS ciphers", ciphers);
        goto fail;
    }
    /* No renegotiation (a TLS 1.2 peer could otherwise make a write wait for a read), no
     * compression (CRIME), session tickets and cache off as PostgreSQL has them, an EOF without
     * close_notify read as an EOF (libpq does not send one). */
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION | SSL_OP_NO_TICKET |
                                 SSL_OP_IGNORE_UNEXPECTED_EOF |
                                 (accept ? SSL_OP_CIPHER_SERVER_PREFERENCE : 0));
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (accept)
        SSL_CTX_set_num_tickets(ctx, 0);
    /* Writes behave as send(): partial, and retried from the connection's output buffer, which
     * may have moved; idle connections give their record buffers back. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                              SSL_MODE_RELEASE_BUFFERS);
    SSL_CTX_set_read_ahead(ctx, 1);
    int have_cert = s->cert_file && *s->cert_file, have_key = s->key_file && *s->key_file;
    if (have_cert != have_key) {
        snprintf(err, errlen, "a TLS certificate needs its key file and a key its certificate");
        goto fail;
    }
    if (have_cert) {
        if (SSL_CTX_use_certificate_chain_file(ctx, s->cert_file) != 1) {
            set_error(err, errlen, "cannot load the TLS certificate", s->cert_file);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, s->key_file, SSL_FILETYPE_PEM) != 1) {
            set_error(err, errlen, "cannot load the TLS key", s->key_file);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            set_error(err, errlen, "the TLS key does not match the certificate", s->key_file);
            goto fail;
        }
    } else if (accept) {
        snprintf(err, errlen, "TLS for clients needs a certificate and a key");
        goto fail;
    }
    int verify = s->mode >= TLS_VERIFY_CA;
    if (s->ca_file && *s->ca_file) {
        if (SSL_CTX_load_verify_locations(ctx, s->ca_file, NULL) != 1) {
            set_error(err, errlen, "cannot load the TLS CA file", s->ca_file);
            goto fail;
        }
        if (accept) {
            STACK_OF(X509_NAME) *names = SSL_load_client_CA_file(s->ca_file);
            if (names)
                SSL_CTX_set_client_CA_list(ctx, names);
        }
    } else if (verify) {
        snprintf(err, errlen, "sslmode verify-ca and verify-full need a CA file");
        goto fail;
    }
    if (verify)
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (accept ? SSL_VERIFY_FAIL_IF_NO_PEER_CERT : 0),
                           NULL);
    else if (accept && s->ca_file && *s->ca_file)
        /* As PostgreSQL with ssl_ca_file set: a client certificate is asked for, verified when
         * one is sent, and not required, so that auth_hba_file's cert method and clientcert=
         * can require it per line. */
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    else
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    if (accept)
        SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    else
        SSL_CTX_set_alpn_protos(ctx, alpn_pg, sizeof(alpn_pg));
    return ctx;
fail:
    SSL_CTX_free(ctx);
    return NULL;
}

void tls_ctx_free(tls_ctx *ctx)
{
    SSL_CTX_free(ctx);
}
