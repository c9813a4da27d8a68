/* The Prometheus endpoint: GET /metrics on metrics_listen, in the text exposition format. */
#ifndef PGSTAY_ADMIN_METRICS_H
#define PGSTAY_ADMIN_METRICS_H

#include <stddef.h>

#include "core/worker.h"

/* Listen on cfg->metrics_listen (host:port) if set: 0, or -1 with the reason logged. */
int metrics_start(struct worker *w);
/* The same on a socket already listening (taken over from an old process by pgstay -R). */
int metrics_start_fd(struct worker *w, int fd);
/* The endpoint's listening socket, -1 if none: what pgstay -R takes over. */
int metrics_fd(struct worker *w);
void metrics_stop(struct worker *w);
/* The whole exposition as text (malloc'd, *len bytes): what GET /metrics answers. */
char *metrics_render(struct worker *w, size_t *len);

#endif
