/* The plain TCP transport and socket tuning shared by every connection. */
#include "core/transport.h"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

static struct bufferevent *plain_wrap(struct event_base *base, evutil_socket_t fd)
{
    /* Callbacks run straight from the loop (not deferred): one loop turn less per message.
     * Nothing pgstay does to a client's bufferevent calls back into it synchronously. */
    return bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
}

const struct transport_ops transport_plain = {
    .name = "plain",
    .wrap = plain_wrap,
};

void net_tune_client(evutil_socket_t fd)
{
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

void net_tune_server(evutil_socket_t fd, int keepalive, int user_timeout_ms)
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
