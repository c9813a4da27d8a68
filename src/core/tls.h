/* TLS for the connection layer: contexts built from settings, and the TLS transport that a
 * connection switches to after the plaintext negotiation (SSLRequest) or at once (direct TLS). */
#ifndef PGSTAY_CORE_TLS_H
#define PGSTAY_CORE_TLS_H

#include <stddef.h>
#include <stdint.h>

#include "core/conn.h"

/* sslmode, libpq's names; the values are the index in the config key's list. On the accepting
 * side (clients) allow and prefer mean the same (TLS if the client asks), and verify-full adds
 * to verify-ca that the certificate's CN is the user name (PostgreSQL's clientcert=verify-full). */
enum tls_mode {
    TLS_DISABLE = 0,
    TLS_ALLOW,
    TLS_PREFER,
    TLS_REQUIRE,
    TLS_VERIFY_CA,
    TLS_VERIFY_FULL,
};
#define TLS_MODE_NAMES "disable|allow|prefer|require|verify-ca|verify-full"

/* What a context is built from: strings owned by the caller, NULL or "" when unset. */
struct tls_settings {
    int mode; /* enum tls_mode */
    const char *cert_file, *key_file, *ca_file;
    const char *protocols; /* "secure" (TLS 1.2 and 1.3), "all", or a list: "tlsv1.2,tlsv1.3" */
    const char *ciphers;   /* OpenSSL cipher list for TLS 1.2; "default" for pgstay's */
};

/* An OpenSSL SSL_CTX: reference-counted by OpenSSL, so a connection keeps the context it was
 * made with when a reload replaces it (established sessions are untouched). */
struct ssl_ctx_st;
typedef struct ssl_ctx_st tls_ctx;

/* accept = 1: pgstay is the TLS server (clients); 0: the TLS client (servers, probes). NULL
 * with a message in err when a file cannot be read or a setting is invalid. */
tls_ctx *tls_ctx_new(const struct tls_settings *s, int accept, char *err, size_t errlen);
void tls_ctx_free(tls_ctx *ctx);
/* Is the protocols setting understood? (config validation without building a context) */
int tls_protocols_valid(const char *protocols);

/* Switch c to TLS. What is queued is sent in plaintext first (the 'S' answer). prefix: bytes
 * already read that belong to the TLS stream (direct TLS's ClientHello); they are taken from
 * c's input. host (connecting side): the name sent as SNI and checked by verify-full. The
 * handshake then runs from the loop; the owner hears CONN_TLS when it is done, or CONN_ERROR
 * (conn_strerror says why). -1 if the switch cannot start (c->err set). */
int conn_start_tls(struct conn *c, tls_ctx *ctx, int accept, int verify_host, const char *host,
                   size_t prefix);

int conn_is_tls(const struct conn *c);
/* "TLSv1.3 TLS_AES_256_GCM_SHA384" for logs and SHOW; "" when not TLS. */
const char *conn_tls_version(const struct conn *c);
const char *conn_tls_cipher(const struct conn *c);
/* The ALPN protocol agreed on ("postgresql"), "" when none. */
void conn_tls_alpn(const struct conn *c, char *buf, size_t cap);
/* Channel binding tls-server-end-point (RFC 5929) of the certificate this side showed: its hash
 * with the certificate's own signature digest (SHA-256 where that is MD5 or SHA-1). The length,
 * or -1 (not TLS, no certificate). */
int conn_tls_server_end_point(const struct conn *c, unsigned char *out, size_t cap);
/* The peer certificate's common name: 1 when there is a verified certificate with one. */
int conn_tls_peer_cn(const struct conn *c, char *buf, size_t cap);

#endif
