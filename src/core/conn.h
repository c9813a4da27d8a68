/* One connection: a non-blocking socket with one event, bytes read and bytes to send in buffers
 * borrowed from its loop while they hold something, and callbacks into the module that owns it.
 *
 * The rules every module relies on:
 * - the input is one contiguous run of bytes (conn_data): a message is looked at where it was
 *   read, never copied out first;
 * - writes are queued (conn_write, conn_forward) and sent once at the end of the current loop
 *   callback, all pieces of a turn in one system call; a write event is armed only when the
 *   socket refused some (EAGAIN), so a connection that keeps up costs no epoll_ctl;
 * - an idle connection holds no buffer;
 * - callbacks are only ever called from the loop, never from inside a conn_* call. */
#ifndef PGSTAY_CORE_CONN_H
#define PGSTAY_CORE_CONN_H

#include <stddef.h>
#include <stdint.h>

#include <event2/event.h>
#include <event2/event_struct.h>

#include "core/defer.h"
#include "core/list.h"

/* Unsent bytes past which a producer stops adding to a connection (and so stops reading its own
 * peer): what bounds memory per connection pair whatever the size of a result or a COPY. */
#define NET_HIGH_WATER (512 * 1024)
/* The owner's on_drain is called once the unsent bytes fall to this after being refused. */
#define NET_LOW_WATER (NET_HIGH_WATER / 4)
/* Size of the I/O buffers a loop lends (a larger message gets a buffer of its own size). */
#define CONN_BLOCK (16 * 1024)
/* Forwarded runs at least this long are sent straight from the source's buffer. */
#define CONN_DIRECT_MIN (8 * 1024)

struct conn;

/* Per-event-loop state of the connection layer. */
struct conn_loop {
    struct event_base *base;
    struct evdns_base *dns;
    struct list dirty;     /* connections with bytes queued this turn */
    struct event flush_ev; /* sends what was queued outside a connection's own callback */
    int flush_armed;
    int in_cb;          /* inside a connection's callback: it flushes at its end */
    /* The loop's deferred work (set by its owner, may be NULL): drained at the end of each
     * connection callback, before that callback's flush, so what it writes goes out at once. */
    struct defer_queue *defer;
    void **free_blocks; /* CONN_BLOCK buffers to lend again (a stack: the bottom is oldest) */
    int n_free, max_free;
    int low_free;         /* fewest free since the last trim: what went unused all along */
    struct event trim_ev; /* gives unused buffers back to the kernel after a burst */
    int trim_armed;
};

enum conn_what {
    CONN_EOF = 1,       /* the peer ended its side */
    CONN_ERROR = 2,     /* the socket failed: c->err, or c->dns_err while resolving */
    CONN_CONNECTED = 4, /* an outgoing connection is established */
    CONN_TLS = 8,       /* the TLS handshake started by conn_start_tls is done */
};

struct conn_cbs {
    void (*on_read)(void *arg);            /* new bytes in the input */
    void (*on_drain)(void *arg);           /* unsent bytes fell to NET_LOW_WATER */
    void (*on_event)(void *arg, int what); /* enum conn_what */
};

/* How bytes move on a socket: plain TCP, or TLS (core/tls.c). read and write behave as recv
 * and send (-1 with errno EAGAIN when the socket must become ready first: a TLS transport says
 * which readiness in c->rd_wants_wr / c->wr_wants_rd). The optional members are NULL for plain,
 * so that its path costs nothing more than a test of c->tls. */
struct transport_ops {
    const char *name;
    long (*read)(struct conn *c, void *p, size_t n);
    long (*write)(struct conn *c, const void *p, size_t n);
    void (*shutdown)(struct conn *c); /* end writing (TLS: close_notify first) */
    void (*close)(struct conn *c);
    /* One step of the handshake: 1 done, 0 wait for c->hs_want, -1 failed. */
    int (*handshake)(struct conn *c);
    /* Bytes already taken off the socket wait inside the transport: read them without waiting
     * for the socket (it will not become readable for them). */
    int (*pending)(const struct conn *c);
    /* Why the transport failed (a TLS alert, a certificate), NULL to use strerror(c->err). */
    const char *(*error)(const struct conn *c);
};
extern const struct transport_ops transport_plain;

/* A byte run with a start offset: [off, len) holds the bytes. */
struct cbuf {
    uint8_t *data;
    uint32_t off, len, cap;
};

struct conn {
    int fd;
    struct conn_loop *loop;
    const struct conn_cbs *cbs;
    void *arg;
    const struct transport_ops *tr;
    struct event ev;
    short armed;         /* EV_READ / EV_WRITE the event waits for now */
    uint8_t reading;     /* the owner wants input */
    uint8_t connecting;  /* connect() in progress */
    uint8_t queued;      /* on loop->dirty */
    uint8_t refused;     /* the socket refused bytes: on_drain is owed */
    uint8_t dead;        /* EOF or error reported: no more reading or writing */
    uint8_t assigned;    /* ev was given to libevent (event_del is safe) */
    uint8_t kicked;      /* conn_kick: on_read is owed */
    /* TLS, in bits so that they fit in the padding before err (an idle client pays only
     * tls_state): */
    uint8_t tls : 1;         /* the transport is TLS: it may hold read bytes (pending) */
    uint8_t handshaking : 1; /* a TLS handshake runs: no reading or writing until it ends */
    uint8_t rd_wants_wr : 1; /* a read must wait for the socket to be writable */
    uint8_t wr_wants_rd : 1; /* a write must wait for the socket to be readable */
    uint8_t hs_want;         /* the readiness (EV_READ/EV_WRITE) the handshake waits for */
    int err;             /* errno of the failure reported as CONN_ERROR */
    int dns_err;         /* getaddrinfo error while resolving (CONN_ERROR) */
    uint32_t in_want;    /* capacity the owner asked for: a whole large message */
    struct cbuf in, out;
    struct list dirty_node;
    struct evdns_getaddrinfo_request *dns_req;
    void *tls_state; /* the transport's own state (TLS: struct tls_conn), NULL for plain */
};

int conn_loop_init(struct conn_loop *l, struct event_base *base, struct evdns_base *dns);
void conn_loop_free(struct conn_loop *l);
/* Give back to the kernel the free buffers above a small reserve that no connection borrowed
 * since the previous call (the loop calls it on a timer while there are such buffers). */
void conn_loop_trim(struct conn_loop *l);
/* Send everything queued this turn (called at the end of every connection callback). */
void conn_loop_flush(struct conn_loop *l);

/* Take an accepted socket, already non-blocking (evconnlistener accepts with accept4 and
 * SOCK_NONBLOCK: no fcntl per client); reading starts at once. */
void conn_accept(struct conn *c, struct conn_loop *l, int fd, const struct conn_cbs *cbs,
                 void *arg);
/* Connect to host:port (resolved through the loop's resolver unless numeric); CONN_CONNECTED
 * or CONN_ERROR follows. -1 if it cannot even start (c->err set). */
int conn_connect(struct conn *c, struct conn_loop *l, const char *host, int port,
                 const struct conn_cbs *cbs, void *arg);
/* Why c failed (CONN_ERROR): a TLS failure's own words, else strerror(c->err). */
const char *conn_strerror(const struct conn *c);
/* Stop everything and free the buffers; the socket is closed. Safe on a zeroed conn. */
void conn_close(struct conn *c);
/* One last non-blocking attempt to send what is queued (a final error before a close). */
void conn_flush_now(struct conn *c);
/* Close after one last attempt to send what is queued, so that the peer reads it: writing is
 * ended first and unread input drained (a close with unread input resets the connection, and
 * the peer's kernel would drop the final message it had not read yet). */
void conn_close_after_send(struct conn *c);
/* The socket has nothing to read and is not closed (one MSG_PEEK, no byte taken): an idle
 * server that speaks (a FATAL) or ends is not to be lent. */
int conn_quiet(struct conn *c);

static inline size_t conn_avail(const struct conn *c)
{
    return c->in.len - c->in.off;
}
/* The input's first conn_avail() bytes, contiguous. */
static inline const uint8_t *conn_data(const struct conn *c)
{
    return c->in.data + c->in.off;
}
static inline size_t conn_unsent(const struct conn *c)
{
    return c->out.len - c->out.off;
}
/* Room for more: the producer's single high-water check. */
static inline int conn_full(const struct conn *c)
{
    return conn_unsent(c) > NET_HIGH_WATER;
}
static inline int conn_fd(const struct conn *c)
{
    return c->fd;
}

void conn_consume(struct conn *c, size_t n);
/* Let the input grow to hold n contiguous bytes (a whole message larger than a block). */
void conn_want(struct conn *c, size_t n);
/* Are n bytes at hand? If not, the input is let grow to hold them and 0 says wait. */
static inline int conn_has(struct conn *c, size_t n)
{
    if (conn_avail(c) >= n)
        return 1;
    conn_want(c, n);
    return 0;
}
void conn_write(struct conn *c, const void *p, size_t n);
/* The first n bytes of from's input go to to's output. */
void conn_forward(struct conn *from, struct conn *to, size_t n);
/* Used by a transport switch (core/tls.c): send what is queued now, 0 if all went; then
 * have the loop wait for what the connection needs (rearm). */
int conn_flush_plain(struct conn *c);
void conn_rearm(struct conn *c);
/* An idle connection (nothing buffered either way, not connecting, no handshake) goes to another
 * loop, another worker's thread (with the world stopped: core/world.h). 0, or -1 when it
 * cannot move now. */
int conn_move(struct conn *c, struct conn_loop *to);

/* Have the owner's on_read called from the loop soon, whether bytes arrive or not (its input
 * can go on now): deferred, so nothing re-enters the caller. */
void conn_kick(struct conn *c);
void conn_read_start(struct conn *c);
void conn_read_stop(struct conn *c);

/* Socket options every connection gets: TCP_NODELAY; server sockets also keepalive and
 * TCP_USER_TIMEOUT so a dead or blackholed host is noticed without a probe. */
void net_tune_client(int fd);
void net_tune_server(int fd, int keepalive, int user_timeout_ms);

#endif
