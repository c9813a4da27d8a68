/* The program's side of a worker: create, listen, reload, shut down and free one event loop. */
#ifndef PGSTAY_APP_WORKER_H
#define PGSTAY_APP_WORKER_H

#include "core/worker.h"

struct config;

int worker_init(struct worker *w, struct config *cfg);
void worker_free(struct worker *w);
/* The TLS contexts cfg asks for (NULL where that side has TLS off): 0, or -1 with err set.
 * Also what --check-config runs, so that a certificate that cannot be read is found then. */
int worker_tls_build(const struct config *cfg, tls_ctx **client, tls_ctx **server, char *err,
                     size_t errlen);
/* Re-read config, auth_file and the TLS files (SIGHUP, RELOAD). */
int worker_reload(struct worker *w);
int worker_listen(struct worker *w);
void worker_stop_listening(struct worker *w);
/* SIGTERM: stop accepting, let clients finish up to shutdown_timeout. */
void worker_begin_shutdown(struct worker *w);

#endif
