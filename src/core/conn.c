/* The connection layer: raw non-blocking sockets, one event each, borrowed buffers, one send per
 * connection per loop turn (see conn.h for the rules). */
#include "core/conn.h"

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/dns.h>
#include <event2/util.h>

#include "core/clock.h"

/* Lent buffers kept for reuse: enough for a busy loop, bounded so a burst gives memory back. */
#define MAX_FREE_BLOCKS 256
/* Free buffers kept however long they sit unused, and how often the others are looked at: an
 * idle pgstay holds 256 kB of buffers, not the high-water mark of its last burst. */
#define RESERVE_BLOCKS 16
#define TRIM_PERIOD_MS 250

static long plain_read(struct conn *c, void *p, size_t n)
{
    return (long)recv(c->fd, p, n, 0);
}

static long plain_write(struct conn *c, const void *p, size_t n)
{
    return (long)send(c->fd, p, n, MSG_NOSIGNAL);
}

static void plain_shutdown(struct conn *c)
{
    shutdown(c->fd, SHUT_WR);
}

static void plain_close(struct conn *c)
{
    close(c->fd);
}

const struct transport_ops transport_plain = {
    .name = "plain",
    .read = plain_read,
    .write = plain_write,
    .shutdown = plain_shutdown,
    .close = plain_close,
};

/* ---- buffers ---- */

/*
 * Lent buffers are mapped one by one rather than taken from malloc: a 16 kB chunk freed in the
 * middle of the heap stays resident, a munmap'd one does not, so the memory of a burst (10,000
 * logins at once) goes back instead of counting against every idle client afterwards.
 */
static uint8_t *block_map(void)
{
    void *p = mmap(NULL, CONN_BLOCK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static void arm_trim(struct conn_loop *l)
{
    if (l->trim_armed || !l->base)
        return;
    struct timeval tv = {0, TRIM_PERIOD_MS * 1000};
    evtimer_add(&l->trim_ev, &tv);
    l->trim_armed = 1;
}

static uint8_t *block_get(struct conn_loop *l)
{
    if (l->n_free == 0)
        return block_map();
    uint8_t *b = l->free_blocks[--l->n_free];
    if (l->n_free < l->low_free)
        l->low_free = l->n_free;
    return b;
}

static void cbuf_release(struct conn_loop *l, struct cbuf *b)
{
    if (b->data) {
        if (b->cap != CONN_BLOCK) {
            free(b->data);
        } else if (l->n_free < l->max_free) {
            l->free_blocks[l->n_free++] = b->data;
            if (l->n_free > RESERVE_BLOCKS)
                arm_trim(l);
        } else {
            munmap(b->data, CONN_BLOCK);
        }
    }
    memset(b, 0, sizeof(*b));
}

void conn_loop_trim(struct conn_loop *l)
{
    int unused = l->low_free - RESERVE_BLOCKS;
    if (unused > 0) {
        /* the oldest first: the bottom of the stack */
        for (int i = 0; i < unused; i++)
            munmap(l->free_blocks[i], CONN_BLOCK);
        memmove(l->free_blocks, l->free_blocks + unused,
                (size_t)(l->n_free - unused) * sizeof(void *));
        l->n_free -= unused;
    }
    l->low_free = l->n_free;
}

static void trim_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn_loop *l = arg;
    l->trim_armed = 0;
    conn_loop_trim(l);
    if (l->n_free > RESERVE_BLOCKS)
        arm_trim(l);
}

/* Room for n more bytes after the last one; 0 or -1 (out of memory). */
static int cbuf_reserve(struct conn_loop *l, struct cbuf *b, size_t n)
{
    if (!b->data) {
        size_t cap = n <= CONN_BLOCK ? CONN_BLOCK : n;
        b->data = cap == CONN_BLOCK ? block_get(l) : malloc(cap);
        if (!b->data)
            return -1;
        b->cap = (uint32_t)cap;
        b->off = b->len = 0;
        return 0;
    }
    if ((size_t)(b->cap - b->len) >= n)
        return 0;
    size_t used = b->len - b->off;
    if (b->off > 0 && (size_t)b->cap - used >= n) {
        memmove(b->data, b->data + b->off, used);
        b->len = (uint32_t)used;
        b->off = 0;
        return 0;
    }
    size_t cap = (size_t)b->cap * 2;
    if (cap < used + n)
        cap = used + n;
    if (cap > UINT32_MAX)
        return -1;
    uint8_t *d = malloc(cap);
    if (!d)
        return -1;
    memcpy(d, b->data + b->off, used);
    struct cbuf old = *b;
    cbuf_release(l, &old);
    b->data = d;
    b->cap = (uint32_t)cap;
    b->off = 0;
    b->len = (uint32_t)used;
    return 0;
}

/* ---- the event ---- */

static void conn_cb(evutil_socket_t fd, short what, void *arg);
static int in_full(const struct conn *c);

/* TLS: bytes the transport already took off the socket are read from the loop without waiting
 * for the socket, which will not become readable for them (the classic TLS proxy hang). Called
 * before any owner callback that may end the turn without reading them. */
static void keep_pending(struct conn *c)
{
    if (c->tls && c->reading && !c->dead && !c->handshaking && c->fd >= 0 && !in_full(c) &&
        c->tr->pending(c))
        event_active(&c->ev, EV_READ, 1);
}

/* Wait for what the connection needs now; an epoll_ctl only when that changes. */
static void rearm(struct conn *c)
{
    short want = 0;
    if (c->fd >= 0 && !c->dead) {
        if (c->connecting)
            want = EV_WRITE;
        else if (c->handshaking)
            want = c->hs_want;
        else {
            if (c->reading && !in_full(c))
                want |= EV_READ;
            /* TLS may need the other readiness to go on (a handshake message mid-stream). */
            if (c->refused && conn_unsent(c) > 0)
                want |= c->wr_wants_rd ? EV_READ : EV_WRITE;
            if (c->rd_wants_wr && c->reading)
                want |= EV_WRITE;
        }
    }
    if (want != c->armed) {
        if (c->assigned)
            /* _noblock: with several workers another thread may do this while this conn's
             * own loop is parked inside its callback (core/world.h); event_del would wait for
             * that callback to end, which waits for the other thread: a deadlock. */
            event_del_noblock(&c->ev); /* pending or merely activated */
        c->armed = want;
        c->assigned = 1;
        event_assign(&c->ev, c->loop->base, c->fd, want | EV_PERSIST, conn_cb, c);
        if (want)
            event_add(&c->ev, NULL);
        if (c->kicked)
            event_active(&c->ev, EV_READ, 1); /* event_del dropped the activation */
    }
    keep_pending(c);
}

void conn_rearm(struct conn *c)
{
    rearm(c);
}

/* Report a failure found outside the loop's callback for this connection (a refused connect,
 * a failed send during a flush): from the loop, as every callback is. */
static void report_later(struct conn *c, int err)
{
    if (c->dead)
        return;
    c->err = err;
    c->dead = 1;
    if (c->assigned)
        event_del_noblock(&c->ev); /* pending or merely activated (conn_kick) */
    c->armed = 0;
    c->assigned = 1;
    event_assign(&c->ev, c->loop->base, -1, 0, conn_cb, c);
    event_active(&c->ev, EV_TIMEOUT, 1);
}

static void dequeue(struct conn *c)
{
    if (c->queued) {
        list_del(&c->dirty_node);
        c->queued = 0;
    }
}

/* Send what is queued: 1 if all went, 0 if the socket refused some (a write event is armed). */
static int flush_one(struct conn *c)
{
    dequeue(c);
    if (c->handshaking)
        return 0; /* sent once the handshake is done */
    while (conn_unsent(c) > 0 && !c->dead && c->fd >= 0) {
        long n = c->tr->write(c, c->out.data + c->out.off, conn_unsent(c));
        if (n > 0) {
            c->out.off += (uint32_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            c->refused = 1;
            rearm(c);
            return 0;
        }
        report_later(c, n < 0 ? errno : EPIPE);
        break;
    }
    cbuf_release(c->loop, &c->out);
    rearm(c);
    return 1;
}

int conn_flush_plain(struct conn *c)
{
    if (conn_unsent(c) == 0)
        return 0;
    return flush_one(c) && !c->dead ? 0 : -1;
}

void conn_loop_flush(struct conn_loop *l)
{
    while (!list_empty(&l->dirty)) {
        struct conn *c = container_of(l->dirty.next, struct conn, dirty_node);
        flush_one(c);
    }
}

static void flush_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn_loop *l = arg;
    l->flush_armed = 0;
    clock_enter();
    conn_loop_flush(l);
    clock_leave();
}

static void queue(struct conn *c)
{
    if (c->queued)
        return;
    struct conn_loop *l = c->loop;
    list_append(&l->dirty, &c->dirty_node);
    c->queued = 1;
    /* Inside a connection's callback the queue is flushed at its end; elsewhere (a timer, a
     * signal) one deferred flush runs after the current callbacks. */
    if (!l->in_cb && !l->flush_armed) {
        l->flush_armed = 1;
        event_active(&l->flush_ev, EV_TIMEOUT, 1);
    }
}

/* The input holds as much as it may: nothing more is read until the owner consumes. */
static int in_full(const struct conn *c)
{
    size_t target = c->in_want > CONN_BLOCK ? c->in_want : CONN_BLOCK;
    return conn_avail(c) >= target;
}

static void do_read(struct conn *c)
{
    struct cbuf *b = &c->in;
    /* What is read is bounded by a block, or by the whole message the owner asked for. */
    size_t target = c->in_want > CONN_BLOCK ? c->in_want : CONN_BLOCK;
    size_t used = conn_avail(c);
    if (used >= target) {
        rearm(c);
        return;
    }
    if ((!b->data || (size_t)(b->cap - b->len) < target - used) &&
        cbuf_reserve(c->loop, b, target - used) < 0) {
        report_later(c, ENOMEM);
        return;
    }
    long n = c->tr->read(c, b->data + b->len, b->cap - b->len);
    if (n > 0) {
        b->len += (uint32_t)n;
        keep_pending(c);
        c->cbs->on_read(c->arg);
        return;
    }
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
        if (conn_avail(c) == 0)
            cbuf_release(c->loop, b);
        return;
    }
    c->dead = 1;
    c->err = n < 0 ? errno : 0;
    rearm(c);
    c->cbs->on_event(c->arg, n == 0 ? CONN_EOF : CONN_ERROR);
}

static void finish_connect(struct conn *c)
{
    int err = 0;
    socklen_t len = sizeof(err);
    if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
        err = errno;
    c->connecting = 0;
    if (err) {
        c->err = err;
        c->dead = 1;
        rearm(c);
        c->cbs->on_event(c->arg, CONN_ERROR);
        return;
    }
    c->reading = 1;
    rearm(c);
    c->cbs->on_event(c->arg, CONN_CONNECTED);
}

/* One step of a TLS handshake (conn_start_tls); the owner hears the outcome. */
static void handshake_step(struct conn *c)
{
    int r = c->tr->handshake(c);
    if (r == 0) {
        rearm(c);
        return;
    }
    c->handshaking = 0;
    if (r < 0) {
        if (!c->err)
            c->err = EPROTO;
        c->dead = 1;
        rearm(c);
        c->cbs->on_event(c->arg, CONN_ERROR);
        return;
    }
    if (conn_unsent(c) > 0)
        queue(c); /* what the owner queued while the handshake ran */
    rearm(c);
    c->cbs->on_event(c->arg, CONN_TLS);
}

static void conn_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    struct conn_loop *l = c->loop;
    clock_enter();
    l->in_cb = 1;
    if (l->defer)
        defer_enter(l->defer);
    if (what & EV_TIMEOUT) {
        /* A failure reported later (report_later): the owner hears it now. */
        c->cbs->on_event(c->arg, CONN_ERROR);
    } else if (c->connecting) {
        finish_connect(c);
    } else if (c->handshaking) {
        handshake_step(c);
    } else if (c->kicked) {
        c->kicked = 0;
        keep_pending(c); /* this wake-up may have been the one meant to read them */
        c->cbs->on_read(c->arg);
    } else {
        /* One callback per wake-up: the owner may close the connection in it. */
        if ((what & (c->wr_wants_rd ? EV_READ : EV_WRITE)) && c->refused) {
            flush_one(c);
            if (conn_unsent(c) <= NET_LOW_WATER && !c->dead) {
                c->refused = conn_unsent(c) > 0;
                rearm(c); /* and keep_pending: on_drain may end the turn */
                c->cbs->on_drain(c->arg);
                goto out;
            }
        }
        if ((what & EV_WRITE) && c->rd_wants_wr) {
            c->rd_wants_wr = 0; /* the read that waited for this goes on */
            what |= EV_READ;
        }
        if ((what & EV_READ) && !c->dead && c->fd >= 0)
            do_read(c);
    }
out:
    if (l->defer)
        defer_leave(l->defer); /* writes still queue for the flush below */
    l->in_cb = 0;
    conn_loop_flush(l);
    clock_leave();
}

/* ---- the public face ---- */

int conn_loop_init(struct conn_loop *l, struct event_base *base, struct evdns_base *dns)
{
    memset(l, 0, sizeof(*l));
    l->base = base;
    l->dns = dns;
    list_init(&l->dirty);
    l->max_free = MAX_FREE_BLOCKS;
    l->free_blocks = calloc((size_t)l->max_free, sizeof(void *));
    if (!l->free_blocks)
        return -1;
    event_assign(&l->flush_ev, base, -1, 0, flush_cb, l);
    evtimer_assign(&l->trim_ev, base, trim_cb, l);
    return 0;
}

void conn_loop_free(struct conn_loop *l)
{
    if (l->flush_armed)
        event_del(&l->flush_ev);
    if (l->trim_armed)
        event_del(&l->trim_ev);
    for (int i = 0; i < l->n_free; i++)
        munmap(l->free_blocks[i], CONN_BLOCK);
    free(l->free_blocks);
    l->free_blocks = NULL;
    l->n_free = 0;
}

static void conn_setup(struct conn *c, struct conn_loop *l, int fd, const struct conn_cbs *cbs,
                       void *arg)
{
    memset(c, 0, sizeof(*c));
    c->fd = fd;
    c->loop = l;
    c->cbs = cbs;
    c->arg = arg;
    c->tr = &transport_plain;
    list_init(&c->dirty_node);
}

void conn_accept(struct conn *c, struct conn_loop *l, int fd, const struct conn_cbs *cbs, void *arg)
{
    conn_setup(c, l, fd, cbs, arg);
    c->reading = 1;
    rearm(c);
}

static void start_connect(struct conn *c, const struct sockaddr *sa, socklen_t len)
{
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        report_later(c, errno);
        return;
    }
    c->fd = fd;
    if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
        report_later(c, errno);
        return;
    }
    c->connecting = 1;
    rearm(c);
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg)
{
    if (result == EVUTIL_EAI_CANCEL)
        return; /* the connection was closed while resolving */
    struct conn *c = arg;
    c->dns_req = NULL;
    if (result != 0 || !res) {
        c->dns_err = result ? result : EVUTIL_EAI_FAIL;
        report_later(c, 0);
    } else {
        start_connect(c, res->ai_addr, (socklen_t)res->ai_addrlen);
    }
    if (res)
        evutil_freeaddrinfo(res);
}

int conn_connect(struct conn *c, struct conn_loop *l, const char *host, int port,
                 const struct conn_cbs *cbs, void *arg)
{
    conn_setup(c, l, -1, cbs, arg);
    char portstr[16];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct evutil_addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = EVUTIL_AI_NUMERICHOST | EVUTIL_AI_NUMERICSERV;
    if (evutil_getaddrinfo(host, portstr, &hints, &res) == 0 && res) {
        /* A numeric address: no resolver round trip. */
        start_connect(c, res->ai_addr, (socklen_t)res->ai_addrlen);
        evutil_freeaddrinfo(res);
        return 0;
    }
    hints.ai_flags = EVUTIL_AI_ADDRCONFIG;
    c->connecting = 1;
    /* The callback may run before this returns (hosts file, cache): then req is NULL. */
    struct evdns_getaddrinfo_request *req =
        evdns_getaddrinfo(l->dns, host, portstr, &hints, dns_cb, c);
    if (req)
        c->dns_req = req;
    return 0;
}

const char *conn_strerror(const struct conn *c)
{
    const char *e = c->tr && c->tr->error ? c->tr->error(c) : NULL;
    return e ? e : strerror(c->err);
}

void conn_close(struct conn *c)
{
    if (!c->loop)
        return;
    if (c->dns_req) {
        struct evdns_getaddrinfo_request *req = c->dns_req;
        c->dns_req = NULL;
        evdns_getaddrinfo_cancel(req);
    }
    dequeue(c);
    if (c->assigned)
        event_del_noblock(&c->ev);
    c->armed = 0;
    if (c->fd >= 0)
        c->tr->close(c);
    c->fd = -1;
    c->dead = 1;
    cbuf_release(c->loop, &c->in);
    cbuf_release(c->loop, &c->out);
}

void conn_flush_now(struct conn *c)
{
    if (conn_unsent(c) > 0 && c->fd >= 0 && !c->dead && !c->connecting)
        flush_one(c);
}

void conn_close_after_send(struct conn *c)
{
    if (!c->loop)
        return;
    if (conn_unsent(c) > 0 && c->fd >= 0 && !c->dead && !c->connecting) {
        flush_one(c);
        c->tr->shutdown(c);
        char sink[4096];
        for (int i = 0; i < 256 && recv(c->fd, sink, sizeof(sink), MSG_DONTWAIT) > 0; i++)
            ;
    }
    conn_close(c);
}

int conn_quiet(struct conn *c)
{
    if (conn_avail(c) > 0 || c->fd < 0 || c->dead || (c->tls && c->tr->pending(c)))
        return 0;
    char byte;
    long n = (long)recv(c->fd, &byte, 1, MSG_PEEK | MSG_DONTWAIT);
    return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
}

void conn_consume(struct conn *c, size_t n)
{
    int was_full = in_full(c);
    c->in.off += (uint32_t)n;
    if (c->in.off >= c->in.len) {
        /* Empty: the buffer goes back to the loop (an idle connection holds none). */
        cbuf_release(c->loop, &c->in);
        c->in_want = 0;
    }
    if (was_full)
        rearm(c);
}

void conn_want(struct conn *c, size_t n)
{
    if (n <= c->in_want)
        return;
    c->in_want = (uint32_t)n;
    if (c->in.data && c->in.cap < n && cbuf_reserve(c->loop, &c->in, n - conn_avail(c)) < 0) {
        report_later(c, ENOMEM);
        return;
    }
    rearm(c);
}

void conn_write(struct conn *c, const void *p, size_t n)
{
    if (n == 0 || c->dead || !c->loop)
        return;
    if (cbuf_reserve(c->loop, &c->out, n) < 0) {
        report_later(c, ENOMEM);
        return;
    }
    memcpy(c->out.data + c->out.len, p, n);
    c->out.len += (uint32_t)n;
    queue(c);
}

void conn_forward(struct conn *from, struct conn *to, size_t n)
{
    /* Small messages are copied and go with everything else queued this turn (one send for
     * all); a large run goes straight from the source's buffer while the peer accepts it. */
    if (n >= CONN_DIRECT_MIN && conn_unsent(to) == 0 && !to->dead && !to->connecting &&
        !to->handshaking && to->fd >= 0 && to->loop) {
        long w = to->tr->write(to, conn_data(from), n);
        if (w > 0) {
            conn_consume(from, (size_t)w);
            n -= (size_t)w;
        } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            report_later(to, errno);
            conn_consume(from, n);
            return;
        }
    }
    if (n > 0) {
        conn_write(to, conn_data(from), n);
        conn_consume(from, n);
    }
}

void conn_kick(struct conn *c)
{
    if (c->kicked || c->dead || !c->assigned || c->connecting || c->handshaking)
        return;
    c->kicked = 1;
    event_active(&c->ev, EV_READ, 1);
}

void conn_read_start(struct conn *c)
{
    c->reading = 1;
    rearm(c);
}

void conn_read_stop(struct conn *c)
{
    c->reading = 0;
    rearm(c);
}

void net_tune_client(int fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void net_tune_server(int fd, int keepalive, int user_timeout_ms)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (keepalive) {
        int idle = 5, intvl = 2, cnt = 3;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
    }
    if (user_timeout_ms > 0) {
        unsigned int t = (unsigned int)user_timeout_ms;
        setsockopt(fd, IPPROTO_TCP, TCP_USER_TIMEOUT, &t, sizeof(t));
    }
}
