/* SCRAM-SHA-256 (RFC 5802, 7677) both ways: authenticating clients, logging into PostgreSQL. */
#ifndef PGSTAY_PROTO_SCRAM_H
#define PGSTAY_PROTO_SCRAM_H

#include <stddef.h>

#define SCRAM_KEY_LEN    32
#define SCRAM_MAX_SALT   64
/* The most PBKDF2 iterations pgstay computes for a server's SCRAM challenge (PBKDF2 runs on
 * the event loop): 24 times PostgreSQL's default, some 50 ms of one core per server login. */
#define SCRAM_ITERATIONS 4096 /* what PostgreSQL uses by default for the secrets it makes */
#define SCRAM_SALT_LEN   16
#define SCRAM_MECHANISM  "SCRAM-SHA-256"
/* With channel binding tls-server-end-point (RFC 5929): offered over TLS, as PostgreSQL does. */
#define SCRAM_MECHANISM_PLUS "SCRAM-SHA-256-PLUS"
#define SCRAM_CBIND_MAX      64 /* a certificate hash: SHA-512 at most */

/* What pg_authid stores: enough to verify a client, not enough to impersonate one. */
struct scram_secret {
    int iterations;
    unsigned char salt[SCRAM_MAX_SALT];
    int salt_len;
    unsigned char stored_key[SCRAM_KEY_LEN]; /* H(ClientKey): checks the client's proof */
    unsigned char server_key[SCRAM_KEY_LEN]; /* signs our final message so the client trusts us */
};

/* "SCRAM-SHA-256$<iter>:<b64salt>$<b64stored>:<b64server>"; 0 ok, -1 malformed. */
int scram_parse_secret(const char *s, struct scram_secret *out);

/* Derive a secret the way PostgreSQL does (PBKDF2-HMAC-SHA-256). 0 ok, -1 bad arguments. */
int scram_secret_from_password(const char *password, const unsigned char *salt, int salt_len,
                               int iterations, struct scram_secret *out);

/* Same, with SCRAM_SALT_LEN random salt bytes and SCRAM_ITERATIONS: for a plain auth_file
 * password (SASLprep'd first, as PostgreSQL does when it stores one). PBKDF2 is slow on
 * purpose: the auth file derives it once per user when it is loaded, never per login. */
int scram_secret_generate(const char *password, struct scram_secret *out);

/* The password PostgreSQL and libpq feed to SCRAM: SASLprep (RFC 4013, through libidn's
 * profile) when it is not pure ASCII; unchanged when it is ASCII, not UTF-8, or the profile
 * refuses it (PostgreSQL's own fallback). A new string to free, or NULL if out of memory. */
char *scram_saslprep(const char *password);

/* ---- pgstay as SCRAM server (authenticating a client) ---- */

enum scram_server_state {
    SCRAM_SRV_INIT = 0,
    SCRAM_SRV_SENT_FIRST,
    SCRAM_SRV_DONE,
    SCRAM_SRV_FAILED
};

struct scram_server {
    int state; /* enum scram_server_state: each message is accepted once, in order */
    struct scram_secret secret;
    char cbind_flag; /* 'n', 'y' or 'p': client-final's c= must repeat the same header */
    char gs2[32];    /* that header as the client sent it ("n,,", "p=tls-server-end-point,,") */
    int cb_offered;  /* SCRAM_MECHANISM_PLUS was offered: 'y' from the client is a downgrade */
    int cb_selected; /* the client chose SCRAM_MECHANISM_PLUS: it must bind to cb_data */
    unsigned char cb_data[SCRAM_CBIND_MAX]; /* tls-server-end-point: hash of our certificate */
    size_t cb_len;
    char client_nonce[128];
    char server_nonce[64];
    char client_first_bare[512];             /* kept for the AuthMessage */
    char server_first[512];                  /* kept for the AuthMessage */
    unsigned char client_key[SCRAM_KEY_LEN]; /* recovered from the proof, see handle_final */
    int have_client_key;
};

int scram_server_init(struct scram_server *s, const struct scram_secret *secret);

/* Over TLS: SCRAM_MECHANISM_PLUS is offered, bound to data (the tls-server-end-point hash of
 * pgstay's certificate). 0 ok, -1 data too long. */
int scram_server_offer_plus(struct scram_server *s, const unsigned char *data, size_t len);

/* client-first -> server-first into out (NUL-terminated, *outlen without the NUL).
 * 0 ok, -1 malformed or unsupported (authzid, "m=" extension), or channel binding that does
 * not match the mechanism: "p=tls-server-end-point" only with SCRAM_MECHANISM_PLUS (cb_selected),
 * "n"/"y" only without it, and "y" not when PLUS was offered (a downgrade, as PostgreSQL). */
int scram_server_handle_first(struct scram_server *s, const char *msg, size_t len, char *out,
                              size_t cap, size_t *outlen);

/* client-final -> server-final "v=...". 0 ok, -1 malformed (bad c=, nonce mismatch, bad base64),
 * -2 wrong proof. On success the client's ClientKey is recovered (ClientProof XOR
 * ClientSignature) and have_client_key set, so pgstay can log into the server as this client
 * without knowing the plain password (see scram_client_init_keys). */
int scram_server_handle_final(struct scram_server *s, const char *msg, size_t len, char *out,
                              size_t cap, size_t *outlen);

/* ---- pgstay as SCRAM client (logging into PostgreSQL) ---- */

enum scram_client_state {
    SCRAM_CLI_INIT = 0,
    SCRAM_CLI_SENT_FIRST,
    SCRAM_CLI_SENT_FINAL,
    SCRAM_CLI_DONE
};

struct scram_client {
    int state;          /* enum scram_client_state */
    char user[128];     /* n= in client-first; empty like libpq, since PostgreSQL ignores it */
    char password[256]; /* used when have_keys is 0 */
    unsigned char client_key[SCRAM_KEY_LEN];
    unsigned char server_key[SCRAM_KEY_LEN];
    int have_keys;       /* keys given up front: no password, no PBKDF2 */
    long max_iterations; /* a server asking for more is refused (PBKDF2 would stall the loop);
                          * 0 = no ceiling */
    long iterations;     /* what the server asked for (for the caller's log) */
    char client_nonce[64];
    char client_first_bare[256];
    char server_first[512];
    unsigned char salted_password[SCRAM_KEY_LEN];
    unsigned char expected_server_sig[SCRAM_KEY_LEN];
};

/* 0 ok, -1 password too long. */
int scram_client_init_password(struct scram_client *c, const char *password);

/* From a SCRAM auth_file secret (server_key) + the key recovered from the client's proof. */
int scram_client_init_keys(struct scram_client *c, const unsigned char client_key[SCRAM_KEY_LEN],
                           const unsigned char server_key[SCRAM_KEY_LEN]);

/* Put a user name in client-first (escaped per RFC 5802). Only test vectors need it. -1 too long.
 */
int scram_client_set_user(struct scram_client *c, const char *user);

/* "n,,n=,r=<nonce>". 0 ok, -1 buffer too small or wrong state. */
int scram_client_first(struct scram_client *c, char *out, size_t cap, size_t *outlen);

/* server-first -> client-final. -1 malformed, nonce mismatch, or an iteration count below 1;
 * -2 an iteration count above max_iterations while a password must be salted (c->iterations
 * says how many). */
int scram_client_final(struct scram_client *c, const char *server_first, size_t len, char *out,
                       size_t cap, size_t *outlen);

/* 0 ok, -1 signature mismatch, malformed, or an "e=" error from the server. */
int scram_client_verify_server(struct scram_client *c, const char *server_final, size_t len);

/* Test hook: the next nonce generated (by either side) is this string instead of random bytes;
 * NULL = random. Used for RFC 7677's vector. */
void scram_set_test_nonce(const char *nonce);

#endif
