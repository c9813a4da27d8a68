/* Test harness shared by the lending model check (tests/unit/test_lending.c) and the fuzz
 * targets (tests/fuzz/): a real pgstay worker in this process, a fake PostgreSQL server on
 * non-blocking localhost sockets answering it, a trace printed on failure, and the pool
 * invariant (no server idle in a pool with anything pending). No test framework: a failed
 * check prints the trace and pgstay's state, then aborts (a crash to libFuzzer, a failed seed
 * to the lending check's parent process). */
#ifndef PGSTAY_TESTS_HARNESS_PGFAKE_H
#define PGSTAY_TESTS_HARNESS_PGFAKE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "app/worker.h"
#include "config/config.h"
#include "core/buf.h"

/* ---- the trace printed on failure ---- */

#define TRACE_N 64
extern uint64_t cur_seed; /* printed with a failure: what replays it */
extern int cur_step;
/* Remember one line of what happened (the last TRACE_N are printed on failure). */
void note(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
void trace_reset(void);
/* Print the trace, pgstay's clients and servers, the fake server's connections and what
 * the test adds (harness_dump_extra), then abort. */
void harness_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
extern void (*harness_dump_extra)(void);
/* Quiet failure output (libFuzzer's own report says enough while minimizing). */
extern int harness_quiet;

#define FAILF(...) harness_fail(__VA_ARGS__)
#define HCHECK(cond)                                                                               \
    do {                                                                                           \
        if (!(cond))                                                                               \
            harness_fail("%s:%d: check failed: %s", __FILE__, __LINE__, #cond);                    \
    } while (0)

/* ---- byte buffers and sockets ---- */

struct dbuf {
    uint8_t *p;
    size_t len, cap;
};

void db_add(struct dbuf *b, const void *p, size_t n);
void db_eat(struct dbuf *b, size_t n);
void db_free(struct dbuf *b);
/* Append what pgstay's builders made, and free it. */
void db_pbuf(struct dbuf *b, struct pbuf *pb);
uint32_t rd32(const uint8_t *p);
/* Read what is there; returns bytes read, -1 at EOF or error. */
ssize_t read_some(int fd, struct dbuf *b);
/* Write up to limit bytes of b; returns bytes written, -1 on error. */
ssize_t write_some(int fd, struct dbuf *b, size_t limit);
void nodelay(int fd);
int unread_bytes(int fd);

/* ---- the fake PostgreSQL server ---- */

struct fstmt {
    char *name;
    char *text;
};

/* A script: what a misbehaving server says, in chunks. A scripted connection sends its next
 * chunk after the startup packet and after each request pgstay sends it (Query, Sync, Flush,
 * FunctionCall, password/SASL message), whatever the request was. */
struct fscript {
    const uint8_t *const *chunk;
    const size_t *len;
    int n;    /* chunks */
    int next; /* the next chunk to send */
};

struct fconn {
    int fd; /* -1: closed */
    int started, probe;
    uint32_t pid;
    struct dbuf in;         /* received, not processed yet (while held) */
    struct dbuf obuf;       /* extended-protocol answers not flushed yet (no Flush/Sync so far) */
    struct dbuf out;        /* to write */
    int hold;               /* steps left before it answers again (0: answers at once) */
    long wlimit;            /* bytes it may still write before stopping (partial answer); -1: any */
    char txn;               /* 'I', 'T', 'E' */
    int skipping;           /* an extended-protocol error: messages ignored up to Sync */
    int unsynced;           /* extended-protocol messages since the last Sync */
    int ignored;            /* Query/FunctionCall ignored after an extended-protocol error */
    int copy_in;            /* COPY FROM STDIN: CopyData/CopyDone/CopyFail expected */
    struct fscript *script; /* set: answers with this script, not as PostgreSQL would */
    struct fstmt *stmts;
    int n_stmts, cap_stmts;
    char *portal; /* the unnamed portal's statement text */
};

#define FS_MAX 256

struct fs {
    int lfd;
    int port;
    struct fconn c[FS_MAX];
    int n;
    uint32_t next_pid;
    /* Fuzzing: pgstay may forward anything a client sent, so a message that PostgreSQL would
     * refuse is answered as PostgreSQL does (ERROR or FATAL 08P01), not a test failure. */
    int lenient;
    /* The next connection that is not a probe takes this script (then it is cleared). */
    struct fscript *script_next;
};
extern struct fs fs;

struct fconn *f_by_pid(uint32_t pid);
/* The fake server's end of a pgstay server socket (a scripted backend's pid is its script's). */
struct fconn *f_by_socket(int server_fd);
void f_close(struct fconn *c);
void f_error(struct dbuf *o, const char *state, const char *msg);
/* Has the backend received something it owes an answer to? */
int f_unanswered(const struct fconn *c);
/* Accept, read, answer, write. Returns the bytes moved. */
long fs_pump(void);
void fs_start(void);
void fs_stop(void);

/* ---- the worker ---- */

extern struct worker hw;
extern struct config hcfg;

/* Read-only walk of one of pgstay's lists. */
#define list_for_each(pos, head) for ((pos) = (head)->next; (pos) != (head); (pos) = (pos)->next)

/* Start a worker whose only node is the fake server (fs_start first), with settings (INI
 * lines of the [pgstay] section, e.g. "pool_mode = transaction\n"), listening on localhost
 * when listen is set; returns once the fake server is its writer. */
void worker_start(const char *settings, int listen);
void worker_stop(void);
/* A client connected through a socket pair (no listener, no TCP): returns the test's end. */
int worker_connect_pair(void);
/* Run the fake server, the test's clients (harness_pump_extra) and pgstay's loop until
 * nothing moves. */
extern long (*harness_pump_extra)(void);
void quiesce(void);
/* The pool invariant: every server idle in a pool has nothing pending, as pgstay sees it and
 * as the fake server (the ground truth) sees it; client and server links agree. */
void check_invariant(void);

#endif
