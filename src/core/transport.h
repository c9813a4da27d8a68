/* Transports behind one table: plain TCP now, TLS later, chosen per connection. */
#ifndef PGSTAY_CORE_TRANSPORT_H
#define PGSTAY_CORE_TRANSPORT_H

#include <event2/bufferevent.h>
#include <event2/event.h>

/* Bytes queued towards a peer past which pgstay stops reading from the other side: what bounds
 * memory per connection pair whatever the size of a result or a COPY. */
#define NET_HIGH_WATER (512 * 1024)

struct transport_ops {
    const char *name;
    /* Wrap an accepted or to-be-connected socket (fd -1: create one on connect). */
    struct bufferevent *(*wrap)(struct event_base *base, evutil_socket_t fd);
};

extern const struct transport_ops transport_plain;

/* Socket options every connection gets: TCP_NODELAY; server sockets also keepalive and
 * TCP_USER_TIMEOUT so a dead or blackholed host is noticed without a probe. */
void net_tune_client(evutil_socket_t fd);
void net_tune_server(evutil_socket_t fd, int keepalive, int user_timeout_ms);

#endif
