/* The program's side of a worker: create, listen, reload, shut down and free one event loop. */
#ifndef PGSTAY_APP_WORKER_H
#define PGSTAY_APP_WORKER_H

#include "core/worker.h"

struct config;
struct hba;

int worker_init(struct worker *w, struct config *cfg);
void worker_free(struct worker *w);
/* The TLS contexts cfg asks for (NULL where that side has TLS off): 0, or -1 with err set.
 * Also what --check-config runs, so that a certificate that cannot be read is found then. */
int worker_tls_build(const struct config *cfg, tls_ctx **client, tls_ctx **server, char *err,
                     size_t errlen);
/* auth_hba_file's rules (*out NULL when no file is set): 0, or -1 with "file:line: why" in err.
 * --check-config runs it too. */
int worker_hba_load(const struct config *cfg, struct hba **out, char *err, size_t errlen);
void worker_hba_free(struct hba *h);
/* Re-read config, auth_file, auth_hba_file and the TLS files (SIGHUP, RELOAD). */
int worker_reload(struct worker *w);
int worker_listen(struct worker *w);
void worker_stop_listening(struct worker *w);
/* SIGTERM: stop accepting, let clients finish up to shutdown_timeout. */
void worker_begin_shutdown(struct worker *w);

#endif
