/* The program's side of a worker: create, listen, reload, shut down and free one event loop. */
#ifndef PGSTAY_APP_WORKER_H
#define PGSTAY_APP_WORKER_H

#include "core/worker.h"

struct config;
struct hba;

int worker_init(struct worker *w, struct config *cfg);
/* w is worker 0 (the main thread's): the other workers go with it. */
void worker_free(struct worker *w);
/* workers > 1: start the other workers' threads (after worker_listen; signals stay with the
 * main thread). */
int worker_start_threads(struct worker *w);
/* Break every other worker's loop (SIGINT), then wait for their threads. */
void worker_stop_all(struct worker *w);
void worker_join_threads(struct worker *w);
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
/* pgstay -R: listen on a socket taken over from the old process (role: enum endpoint_role);
 * worker_listen then binds only what was not taken over. The fd is the worker's either way. */
int worker_listen_fd(struct worker *w, int fd, int role);
/* The listening socket of that endpoint, -1 if none: what is handed to pgstay -R. */
int worker_listener_fd(struct worker *w, int role);
/* The same for a unix socket (role: the endpoint it serves): 0 taken, 1 not this configuration's
 * socket (another unix_socket_dir or port: closed, left to the old process, and worker_listen
 * binds this configuration's), -1 failure. */
int worker_listen_unix_fd(struct worker *w, int fd, int role);
/* The unix listening socket of that endpoint, -1 if none. */
int worker_unix_listener_fd(struct worker *w, int role);
/* That endpoint's unix socket file now belongs to the process that took it over: closing the
 * listener here no longer removes it. */
void worker_unix_handed_over(struct worker *w, int role);
void worker_stop_listening(struct worker *w);
/* SIGTERM: stop accepting, let clients finish up to shutdown_timeout. */
void worker_begin_shutdown(struct worker *w);

#endif
