/* Restart without dropping clients (pgstay -R), PgBouncer's online restart done over a unix
 * SOCK_SEQPACKET socket: one datagram per record, a descriptor travelling with its record.
 *
 *   new -> old  'H' version                    hello; the old process answers with
 *   old -> new  'L' n, role[n] + n fds         its listening sockets, TCP and unix (it goes
 *                                              on accepting)
 *   new -> old  'R' kept                       the new process is up: the old one stops
 *                                              accepting and hands over; kept: a bit per unix
 *                                              endpoint whose socket file the new process
 *                                              now owns (the old one must not remove it)
 *   old -> new  'C' client record + its fd     each client as soon as it is idle (client_movable)
 *   new -> old  'X' pid key                    a cancel request for a client still on the old one
 *
 * The old process exits once it has no client left (or at shutdown_timeout); its closing the
 * socket tells the new one the takeover is over. Datagrams keep a descriptor bound to its
 * record, which a stream socket does not promise. */
#include "app/takeover.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "admin/metrics.h"
#include "app/worker.h"
#include "client/client.h"
#include "client/handover.h"
#include "config/config.h"
#include "core/log.h"
#include "pool/pool.h"
#include "proto/proto.h"
#include "topology/topology.h"

/* The largest record read (a client record is bounded by handover.c below this). */
#define REC_MAX 65536
/* Listening sockets: writer, reader, metrics, and the writer's and reader's unix sockets
 * (ROLE_UNIX + endpoint role). A new process that does not know a role refuses the takeover. */
#define MAX_LISTEN_FDS 5
#define ROLE_METRICS   2
#define ROLE_UNIX      3

struct takeover {
    char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
    int listen_fd; /* waiting for a pgstay -R (-1: none) */
    struct event *listen_ev;
    int peer_fd; /* the other process during a takeover (-1: none) */
    struct event *peer_ev;
    int new_side;           /* this process is the one taking over */
    int moved;              /* clients handed over (old side) or taken (new side) */
    int done;               /* old side: the exit was decided (said once) */
    struct event *ready_ev; /* new side: asks for the clients once the writer is known */
    int64_t ready_at;       /* ms: ask anyway from then on */
    uint8_t unix_kept;      /* new side: bit per endpoint whose unix socket it took over */
    int listeners_sent;     /* old side: the new process has them, and has not said 'R' yet */
    uint8_t *buf;           /* REC_MAX bytes, for reading records */
};

static struct takeover *tko_get(struct worker *w)
{
    if (!w->tko) {
        w->tko = calloc(1, sizeof(*w->tko));
        if (!w->tko)
            return NULL;
        w->tko->listen_fd = w->tko->peer_fd = -1;
    }
    return w->tko;
}

/* takeover_socket, or its default next to the port it serves; 0 if "off". */
static int socket_path(const struct config *cfg, char *out, size_t len)
{
    const char *p = cfg->takeover_socket;
    if (p && !strcmp(p, "off"))
        return 0;
    int n = p && *p ? snprintf(out, len, "%s", p)
                    : snprintf(out, len, "/tmp/pgstay.%d.takeover", cfg->listen_port);
    if (n < 0 || (size_t)n >= len) {
        log_error("takeover_socket \"%s\": the path is too long for a unix socket", p);
        return 0;
    }
    return 1;
}

static int send_rec(int fd, const void *p, size_t n, const int *fds, int nfds)
{
    struct iovec iov = {(void *)p, n};
    struct msghdr mh = {0};
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_LISTEN_FDS)];
        struct cmsghdr align;
    } u;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    if (nfds > 0) {
        memset(&u, 0, sizeof(u));
        mh.msg_control = u.buf;
        mh.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
        struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
        memcpy(CMSG_DATA(cm), fds, sizeof(int) * (size_t)nfds);
    }
    ssize_t r = sendmsg(fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL);
    return r == (ssize_t)n ? 0 : -1;
}

/* One record: its length (0: the peer closed; -1: errno), with the descriptors it carried.
 * A record cut short is refused, its descriptors closed. */
static long recv_rec(int fd, uint8_t *buf, size_t cap, int *fds, int *nfds)
{
    struct iovec iov = {buf, cap};
    struct msghdr mh = {0};
    union {
        char buf[CMSG_SPACE(sizeof(int) * MAX_LISTEN_FDS)];
        struct cmsghdr align;
    } u;
    mh.msg_iov = &iov;
    mh.msg_iovlen = 1;
    mh.msg_control = u.buf;
    mh.msg_controllen = sizeof(u.buf);
    *nfds = 0;
    ssize_t r = recvmsg(fd, &mh, MSG_CMSG_CLOEXEC);
    if (r < 0)
        return -1;
    for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm; cm = CMSG_NXTHDR(&mh, cm)) {
        if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
            continue;
        int n = (int)((cm->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < n; i++) {
            int f;
            memcpy(&f, CMSG_DATA(cm) + (size_t)i * sizeof(int), sizeof(int));
            if (*nfds < MAX_LISTEN_FDS)
                fds[(*nfds)++] = f;
            else
                close(f);
        }
    }
    if (mh.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) {
        for (int i = 0; i < *nfds; i++)
            close(fds[i]);
        *nfds = 0;
        errno = EMSGSIZE;
        return -1;
    }
    return (long)r;
}

static void close_peer(struct takeover *t)
{
    if (t->peer_ev) {
        event_free(t->peer_ev);
        t->peer_ev = NULL;
    }
    if (t->peer_fd >= 0)
        close(t->peer_fd);
    t->peer_fd = -1;
}

static void close_listen(struct takeover *t, int unlink_path)
{
    if (t->listen_ev) {
        event_free(t->listen_ev);
        t->listen_ev = NULL;
    }
    if (t->listen_fd >= 0) {
        close(t->listen_fd);
        if (unlink_path)
            unlink(t->path);
    }
    t->listen_fd = -1;
}

/* ---- the old process ---- */

/* The new process is there: give it the listening sockets and stop accepting. */
static void hand_listeners(struct worker *w, struct takeover *t)
{
    int fds[MAX_LISTEN_FDS];
    uint8_t roles[MAX_LISTEN_FDS];
    int n = 0;
    for (int role = 0; role < 2; role++) {
        int fd = worker_listener_fd(w, role);
        if (fd >= 0) {
            fds[n] = fd;
            roles[n++] = (uint8_t)role;
        }
    }
    if (metrics_fd(w) >= 0) {
        fds[n] = metrics_fd(w);
        roles[n++] = ROLE_METRICS;
    }
    /* The unix sockets too, as PgBouncer's -R hands them over: their files stay in place, so
     * a client connecting by path never finds nobody listening. */
    for (int role = 0; role < 2; role++) {
        int fd = worker_unix_listener_fd(w, role);
        if (fd >= 0) {
            fds[n] = fd;
            roles[n++] = (uint8_t)(ROLE_UNIX + role);
        }
    }
    struct pbuf b;
    pbuf_init(&b);
    pbuf_put_u8(&b, 'L');
    pbuf_put_u32(&b, (uint32_t)n);
    pbuf_put(&b, roles, (size_t)n);
    /* The path is let go first: the new process binds it for the next restart. */
    close_listen(t, 1);
    if (b.failed || send_rec(t->peer_fd, b.data, b.len, fds, n) < 0) {
        log_error("takeover: cannot hand over the listening sockets (%s): running on",
                  strerror(errno));
        pbuf_free(&b);
        close_peer(t);
        takeover_listen(w);
        return;
    }
    pbuf_free(&b);
    t->listeners_sent = 1;
    /* Until the new process says it is up, this one keeps accepting too: if the new one fails
     * to start, nothing was lost. */
    log_info("takeover: listening sockets sent to the new process; waiting for it to start");
}

/* The new process is up: stop accepting, hand over the clients. kept: the unix endpoints whose
 * socket the new process listens on. */
static void begin_handing_over(struct worker *w, uint8_t kept)
{
    /* Their files are the new process's now: closing our descriptors must not remove them. */
    for (int role = 0; role < 2; role++)
        if (kept & (1u << role))
            worker_unix_handed_over(w, role);
    /* From here the files it did not keep are this process's to remove. */
    w->tko->listeners_sent = 0;
    /* The sockets live on in the new process: closing ours stops accepting here only. A unix
     * socket it did not take (another unix_socket_dir) is removed, as at any exit. */
    worker_stop_listening(w);
    metrics_stop(w);
    /* Every worker hands over (its clients as they become idle); the world is stopped so that
     * none sees the change half made. */
    world_stop(w);
    int live = 0;
    for (int k = 0; k < w->world->n; k++) {
        struct worker *x = w->world->workers[k];
        x->handing_over = 1;
        x->shutdown_deadline = now_ms() + x->cfg->shutdown_timeout;
        for (int i = 0; i < CL_CLOSING; i++)
            live += x->n_clients[i];
        worker_schedule_reap(x);
    }
    world_start(w);
    log_info("takeover: the new process is up and accepting; handing over idle clients, "
             "finishing the others (%d clients, up to %d ms)",
             live, w->cfg->shutdown_timeout);
}

static void old_peer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct takeover *t = w->tko;
    for (;;) {
        int fds[MAX_LISTEN_FDS], nfds;
        long n = recv_rec(t->peer_fd, t->buf, REC_MAX, fds, &nfds);
        for (int i = 0; i < nfds; i++)
            close(fds[i]); /* the new process sends none */
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            if (w->handing_over) {
                /* The new process is gone: what is left here finishes as in a shutdown. */
                log_error("takeover: the new process closed the control socket; the clients left "
                          "here finish and this process exits");
                w->shutting_down = 1;
                worker_schedule_reap(w);
            } else {
                t->listeners_sent = 0; /* its sockets are this process's alone again */
                log_info("takeover: the new process left before it started: running on");
                takeover_listen(w);
            }
            close_peer(t);
            return;
        }
        struct msg_reader r;
        mr_init(&r, t->buf, (size_t)n);
        uint8_t type = mr_u8(&r);
        if (type == 'H' && !w->handing_over && !w->shutting_down) {
            uint32_t version = mr_u32(&r);
            if (r.bad || version != HANDOVER_VERSION) {
                log_error("takeover: refused: the new pgstay speaks version %u, this one %u",
                          version, HANDOVER_VERSION);
                close_peer(t);
                takeover_listen(w);
                return;
            }
            hand_listeners(w, t);
            if (t->peer_fd < 0)
                return;
        } else if (type == 'R' && !w->handing_over && !w->shutting_down) {
            /* A pgstay that hands over no unix socket sends a bare 'R'. */
            begin_handing_over(w, n > 1 ? t->buf[1] : 0);
        } else if (type == 'X') {
            uint32_t pid = mr_u32(&r), key = mr_u32(&r);
            if (!r.bad)
                cancel_forward(w, pid, key);
        }
    }
}

static void listen_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct takeover *t = w->tko;
    int c = accept4(t->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (c < 0)
        return;
    /* Whoever connects takes every client: only this user (or root) may. The socket's mode
     * says so too; this holds where the folder's permissions do not. */
    struct ucred cred;
    socklen_t len = sizeof(cred);
    if (getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0 ||
        (cred.uid != geteuid() && cred.uid != 0)) {
        log_warn("takeover: refused a connection from uid %ld", (long)cred.uid);
        close(c);
        return;
    }
    if (t->peer_fd >= 0 || w->handing_over || w->shutting_down) {
        log_warn("takeover: refused: a takeover or a shutdown is already under way");
        close(c);
        return;
    }
    t->peer_fd = c;
    t->peer_ev = event_new(w->base, c, EV_READ | EV_PERSIST, old_peer_cb, w);
    if (!t->peer_ev) {
        close_peer(t);
        return;
    }
    event_add(t->peer_ev, NULL);
    log_info("takeover: a new pgstay (pid %ld) connected", (long)cred.pid);
}

int takeover_listen(struct worker *w)
{
    struct takeover *t = tko_get(w);
    if (!t || t->listen_fd >= 0)
        return 0;
    if (!t->buf && !(t->buf = malloc(REC_MAX)))
        return 0;
    if (!socket_path(w->cfg, t->path, sizeof(t->path)))
        return 0;
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, t->path, strlen(t->path) + 1);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        goto fail;
    /* Created 0600: connecting to it takes every client. */
    mode_t old = umask(0077);
    int r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    if (r < 0 && errno == EADDRINUSE) {
        /* A live pgstay answers there: it is not ours to take. A dead one's file is stale. */
        int probe = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        int live = probe >= 0 && connect(probe, (struct sockaddr *)&sa, sizeof(sa)) == 0;
        if (probe >= 0)
            close(probe);
        if (live) {
            umask(old);
            log_warn("takeover_socket %s: another pgstay listens there: no takeover socket for "
                     "this process",
                     t->path);
            close(fd);
            return 0;
        }
        unlink(t->path);
        r = bind(fd, (struct sockaddr *)&sa, sizeof(sa));
    }
    umask(old);
    if (r < 0 || listen(fd, 4) < 0) {
        close(fd);
        goto fail;
    }
    t->listen_fd = fd;
    t->listen_ev = event_new(w->base, fd, EV_READ | EV_PERSIST, listen_cb, w);
    if (!t->listen_ev) {
        close_listen(t, 1);
        return 0;
    }
    event_add(t->listen_ev, NULL);
    log_info("takeover socket %s (pgstay -R restarts without dropping clients)", t->path);
    return 0;
fail:
    log_warn("takeover_socket %s: %s: no takeover for this process", t->path, strerror(errno));
    return 0;
}

void takeover_keep_unix_files(struct worker *w)
{
    struct takeover *t = w->tko;
    if (!t || t->new_side || !t->listeners_sent || t->peer_fd < 0)
        return;
    /* Stopping (SIGTERM, SIGINT, SHUTDOWN) after the new process was sent the unix sockets and
     * before it said which it keeps: it may listen on them, so their files stay. If it does
     * not, a file left is stale, and the next pgstay to listen there replaces it. */
    for (int role = 0; role < 2; role++)
        worker_unix_handed_over(w, role);
}

static int sweep_worker(struct worker *w, struct takeover *t, int *live, int *admins);

/* Worker 0, the world stopped: every worker's idle clients go. */
int takeover_sweep(struct worker *w)
{
    struct takeover *t = w->tko;
    int live = 0, admins = 0;
    for (int k = 0; k < w->world->n; k++)
        if (sweep_worker(w->world->workers[k], t, &live, &admins))
            return 1;
    /* Admin console sessions do not move (their state is this process's): they end with it. */
    if (live - admins == 0) {
        log_info("takeover: %d clients handed over, none left here: exiting", t ? t->moved : 0);
        if (t)
            t->done = 1;
        return 1;
    }
    if (now_ms() >= w->shutdown_deadline) {
        log_info("takeover: shutdown_timeout: %d clients handed over, %d still here are closed",
                 t ? t->moved : 0, live);
        if (t)
            t->done = 1;
        return 1;
    }
    return 0;
}

/* One worker's share of the sweep: 1 when the takeover is over; counts what is left. */
static int sweep_worker(struct worker *w, struct takeover *t, int *live, int *admins)
{
    struct list *pos, *tmp;
    if (t && t->peer_fd >= 0 && !t->new_side) {
        /* Session mode: clients between transactions let their servers go, then move. */
        list_for_each_safe(pos, tmp, &w->clients[CL_ACTIVE])
        {
            client_release_for_handover(container_of(pos, struct client, node));
        }
        list_for_each_safe(pos, tmp, &w->clients[CL_IDLE])
        {
            struct client *c = container_of(pos, struct client, node);
            if (!client_movable(c))
                continue;
            struct pbuf b;
            pbuf_init(&b);
            pbuf_put_u8(&b, 'C');
            client_export(c, &b);
            if (b.failed) {
                pbuf_free(&b);
                continue; /* too much state for one record: it finishes here */
            }
            int fd = conn_fd(&c->conn);
            int r = send_rec(t->peer_fd, b.data, b.len, &fd, 1);
            int err = errno;
            pbuf_free(&b);
            if (r < 0 && (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS))
                break; /* the new process is busy: the next tick goes on */
            if (r < 0) {
                log_error("takeover: cannot hand over C-%llu (%s): the clients left here finish "
                          "and this process exits",
                          (unsigned long long)c->id, strerror(err));
                close_peer(t);
                for (int k = 0; k < w->world->n; k++)
                    w->world->workers[k]->shutting_down = 1;
                break;
            }
            t->moved++;
            /* The socket is the new process's now: ours is closed without a shutdown, and
             * nothing more is read from it here. */
            client_close(c, NULL, "handed over to the new process");
            conn_close(&c->conn);
        }
    }
    if (t && t->done)
        return 1;
    for (int i = 0; i < CL_CLOSING; i++)
        *live += w->n_clients[i];
    list_for_each_safe(pos, tmp, &w->clients[CL_IDLE])
    {
        if (container_of(pos, struct client, node)->is_admin)
            (*admins)++;
    }
    return 0;
}

/* ---- the new process ---- */

static void send_cancel(struct worker *w, uint32_t pid, uint32_t key)
{
    struct takeover *t = w->tko;
    if (!t || t->peer_fd < 0)
        return;
    struct pbuf b;
    pbuf_init(&b);
    pbuf_put_u8(&b, 'X');
    pbuf_put_u32(&b, pid);
    pbuf_put_u32(&b, key);
    if (!b.failed && send_rec(t->peer_fd, b.data, b.len, NULL, 0) == 0)
        log_debug("cancel request passed to the old process");
    pbuf_free(&b);
}

static void new_peer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct takeover *t = w->tko;
    for (;;) {
        int fds[MAX_LISTEN_FDS], nfds;
        long n = recv_rec(t->peer_fd, t->buf, REC_MAX, fds, &nfds);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            log_info("takeover: the old process is done: %d clients taken over", t->moved);
            w->cancel_elsewhere = NULL;
            close_peer(t);
            return;
        }
        if (t->buf[0] == 'C' && nfds == 1) {
            if (client_import(w, fds[0], t->buf + 1, (size_t)n - 1)) {
                t->moved++;
                continue;
            }
        }
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
    }
}

int takeover_receive(struct worker *w)
{
    struct takeover *t = tko_get(w);
    if (!t || (!t->buf && !(t->buf = malloc(REC_MAX)))) {
        log_error("takeover: out of memory");
        return -1;
    }
    if (!socket_path(w->cfg, t->path, sizeof(t->path))) {
        log_error("takeover: takeover_socket is off: nothing to take over");
        return -1;
    }
    struct sockaddr_un sa = {0};
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, t->path, strlen(t->path) + 1);
    int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
        log_error("takeover: cannot reach a running pgstay at %s: %s", t->path, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* The hello and its answer are waited for here, before the loop runs: this process has
     * nothing to serve until it has the listening sockets. */
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    struct pbuf b;
    pbuf_init(&b);
    pbuf_put_u8(&b, 'H');
    pbuf_put_u32(&b, HANDOVER_VERSION);
    int sent = !b.failed && send(fd, b.data, b.len, MSG_NOSIGNAL) == (ssize_t)b.len;
    pbuf_free(&b);
    int fds[MAX_LISTEN_FDS], nfds = 0;
    long n = sent ? recv_rec(fd, t->buf, REC_MAX, fds, &nfds) : -1;
    if (n <= 0 || t->buf[0] != 'L') {
        log_error("takeover: the running pgstay did not hand over its listening sockets (%s)",
                  n < 0 ? strerror(errno) : "it refused");
        for (int i = 0; i < nfds; i++)
            close(fds[i]);
        close(fd);
        return -1;
    }
    struct msg_reader r;
    mr_init(&r, t->buf + 1, (size_t)n - 1);
    uint32_t count = mr_u32(&r);
    const uint8_t *roles = mr_bytes(&r, count);
    int ok = !r.bad && roles && count == (uint32_t)nfds;
    for (int i = 0; i < nfds; i++) {
        if (!ok) {
            close(fds[i]);
        } else if (roles[i] == ROLE_METRICS) {
            ok = metrics_start_fd(w, fds[i]) == 0;
        } else if (roles[i] >= ROLE_UNIX) {
            int role = roles[i] - ROLE_UNIX, got = worker_listen_unix_fd(w, fds[i], role);
            ok = got >= 0;
            if (got == 0) {
                t->unix_kept |= (uint8_t)(1u << role);
                /* As for TCP below: the old process accepts until this one is ready. */
                evconnlistener_disable(w->unix_listeners[role]);
            }
        } else if ((ok = worker_listen_fd(w, fds[i], roles[i]) == 0))
            /* The old process, which knows the writer, goes on accepting until this one is
             * ready (takeover_ready): a new client is not held meanwhile. */
            evconnlistener_disable(w->listeners[roles[i]]);
    }
    if (!ok) {
        log_error("takeover: the listening sockets received are not usable");
        close(fd);
        return -1;
    }
    evutil_make_socket_nonblocking(fd);
    t->peer_fd = fd;
    t->new_side = 1;
    t->peer_ev = event_new(w->base, fd, EV_READ | EV_PERSIST, new_peer_cb, w);
    if (!t->peer_ev) {
        close_peer(t);
        return -1;
    }
    event_add(t->peer_ev, NULL);
    w->cancel_elsewhere = send_cancel;
    log_info("takeover: %d listening sockets taken from the old process", nfds);
    return 0;
}

/* How long the new process waits for its own probes to find the writer before it asks for
 * the clients anyway (they are then held until a writer is found, as at any start). */
#define READY_WAIT_MS 3000

static void ready_cb(evutil_socket_t fd, short what, void *arg)
{
    struct worker *w = arg;
    struct takeover *t = w->tko;
    /* Clients handed over before this process knows the writer would have their next request
     * held meanwhile: the old process, which knows it, keeps serving them until then. */
    if (t->peer_fd >= 0 && !w->topo->writer && now_ms() < t->ready_at) {
        struct timeval tv = {0, 20 * 1000};
        evtimer_add(t->ready_ev, &tv);
        return;
    }
    /* Accepting here from now on (the old process stops as it reads this). */
    for (int i = 0; i < 2; i++) {
        if (w->listeners[i])
            evconnlistener_enable(w->listeners[i]);
        if (w->unix_listeners[i])
            evconnlistener_enable(w->unix_listeners[i]);
    }
    if (t->peer_fd < 0) {
        /* The old process stopped (SIGTERM, a crash) before this one was ready: nobody else
         * accepts on these sockets now. */
        log_info("takeover: the old process left before this one was ready: accepting");
        return;
    }
    uint8_t r[2] = {'R', t->unix_kept};
    if (send_rec(t->peer_fd, r, sizeof(r), NULL, 0) < 0) {
        log_error("takeover: cannot tell the old process to hand over (%s): both processes "
                  "accept, the old one keeps its clients",
                  strerror(errno));
        return;
    }
    log_info("takeover: asking the old process for its clients%s",
             w->topo->writer ? "" : " (no writer found yet)");
}

int takeover_ready(struct worker *w)
{
    struct takeover *t = w->tko;
    if (!t || !t->new_side || t->peer_fd < 0)
        return 0;
    t->ready_at = now_ms() + READY_WAIT_MS;
    t->ready_ev = evtimer_new(w->base, ready_cb, w);
    if (!t->ready_ev)
        return -1;
    ready_cb(-1, 0, w);
    return 0;
}

void takeover_free(struct worker *w)
{
    struct takeover *t = w->tko;
    if (!t)
        return;
    close_peer(t);
    close_listen(t, 1);
    if (t->ready_ev)
        event_free(t->ready_ev);
    free(t->buf);
    free(t);
    w->tko = NULL;
}
