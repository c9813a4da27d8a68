/* A logged-in client's session as bytes, so that a new pgstay (pgstay -R) can carry on with the
 * same socket without a byte on the wire: what is movable, the record, and its rebuilding. */
#ifndef PGSTAY_CLIENT_HANDOVER_H
#define PGSTAY_CLIENT_HANDOVER_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

struct client;
struct worker;

/* Bumped whenever the record's layout changes: an old and a new pgstay that disagree on it
 * refuse the takeover rather than misread a session. */
#define HANDOVER_VERSION 1

/* Can c move now? Only a client idle between transactions whose whole state is in the record:
 * logged in and welcomed, no server, nothing in flight or buffered either way, not TLS (the
 * TLS session's keys live in this process), not pinned (its state is on a server). */
int client_movable(const struct client *c);
/* Session mode: a client between transactions whose session pgstay can rebuild gives its
 * server back (reset into the pool) and becomes idle, so that it can move: 1 if it did. */
int client_release_for_handover(struct client *c);
/* c's session, appended to b (its socket travels beside it). */
void client_export(const struct client *c, struct pbuf *b);
/* A client rebuilt from a record on socket fd, idle in its pool: NULL (fd untouched) if the
 * record does not read. The client is never told: its next request is served here. */
struct client *client_import(struct worker *w, int fd, const uint8_t *p, size_t n);

#endif
