/* What the fuzz targets that drive a whole worker share: one worker per process (libpg_query
 * cannot start again once a worker released it), clients on socket pairs, the checks a client
 * makes of every byte pgstay sends it, and a bystander client that must be untouched by
 * whatever the fuzzed peer did. */
#ifndef PGSTAY_TESTS_FUZZ_FUZZ_H
#define PGSTAY_TESTS_FUZZ_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "../harness/pgfake.h"

/* The worker's settings. max_packet_size: pgstay reserves a buffer for a whole statement as
 * soon as its header says how long it is (as PostgreSQL does); at the default 1GB every
 * fuzzed length would cost a huge allocation under ASan. */
#define FZ_SETTINGS                                                                                \
    "pool_mode = transaction\npool_size = 2\nserver_login_retry = 0\nmax_packet_size = 1MB\n"

/* The SCRAM nonce pgstay uses in a run (scram_set_test_nonce), as tests/fuzz/seeds.py has it. */
#define FZ_NONCE "fuzzfuzzfuzzfuzzfuzzfuzz"

/* Bytes a target takes from one input: bounded so that one run stays fast. */
#define FZ_MAX_INPUT 65536

/* A test client and what it may expect of pgstay. */
struct fz_client {
    int fd;          /* -1: closed */
    struct dbuf in;  /* received, not checked yet */
    size_t received; /* bytes received in all (the loop is quiescent when it stops growing) */
    int logged_in;   /* its first ReadyForQuery came */
    int requests;    /* Query, Sync, FunctionCall sent after login: each earns one ReadyForQuery */
    int readies;     /* ReadyForQuery received after login */
    int fatal;       /* a FATAL came: nothing may follow it */
    int eof;         /* pgstay closed it */
    int encrypt_ask; /* it sent SSLRequest/GSSENCRequest: one byte 'N' may come */
    int copy_out;    /* CopyOutResponse or CopyBothResponse came: CopyData may follow */
    int copy_in;     /* CopyInResponse came */
    int errors;      /* ErrorResponses received */
    char txn;        /* from its last ReadyForQuery */
    char last_type;
    /* A check over what it got: the first DataRow's first column (bystander's token). */
    char row[64];
    int rows;
};

/* Start the worker (once per process) with these [pgstay] settings; quiet logs. */
void fz_init(const char *settings);
void fz_client_open(struct fz_client *c);
/* Send bytes as the client; the client's own stream is watched to count its requests. */
void fz_client_send(struct fz_client *c, const void *p, size_t n);
/* StartupMessage as user app to database app. */
void fz_client_startup(struct fz_client *c);
/* Read and check what pgstay sent (every message well framed, known, in a valid place). */
void fz_client_read(struct fz_client *c);
void fz_client_close(struct fz_client *c);
/* A well-behaved client logs in, runs one query and must get exactly its answer. */
void fz_bystander(void);
/* Close every server idle in a pool (the next client gets a fresh connection). */
void fz_drop_idle_servers(void);
/* Switch pool mode between runs (idle servers are dropped: they were set up for the other). */
void fz_set_pool_mode(int mode);
/* End of a run: quiesce, the pool invariant, no client left behind. */
void fz_end_run(void);

#endif
