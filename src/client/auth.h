/* Client authentication against auth_file: trust, md5, SCRAM-SHA-256, and auth_hba_file's rules. */
#ifndef PGSTAY_CLIENT_AUTH_H
#define PGSTAY_CLIENT_AUTH_H

#include <stddef.h>
#include <stdint.h>

struct client;

enum auth_step {
    AUTH_STEP_STARTUP = 0, /* waiting for the startup packet */
    AUTH_STEP_METHOD,      /* startup read, method being chosen */
    AUTH_STEP_PASSWORD,    /* md5 answer expected */
    AUTH_STEP_CLEARTEXT,   /* cleartext password expected (hba's password method) */
    AUTH_STEP_SASL_INIT,   /* SASLInitialResponse expected */
    AUTH_STEP_SASL_FINAL,  /* SASLResponse expected */
    AUTH_STEP_LOOKUP,      /* auth_query runs for its user: nothing expected from the client */
};

/* Start authenticating a client whose startup packet was accepted. */
void auth_begin(struct client *c);
/* Go on once the method is known and the secret is at hand (auth_query answered). */
void auth_resume(struct client *c);
/* A 'p' message body from the client during authentication. */
void auth_handle(struct client *c, const uint8_t *body, size_t len);

#endif
