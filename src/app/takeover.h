/* Restart without dropping clients (pgstay -R): the control socket through which a new process
 * takes the listening sockets and the idle clients of the running one (SCM_RIGHTS). */
#ifndef PGSTAY_APP_TAKEOVER_H
#define PGSTAY_APP_TAKEOVER_H

#include "core/worker.h"

/* Listen on takeover_socket for a future pgstay -R (nothing if it is "off"). A failure is
 * logged and the process runs on without it: 0 always. */
int takeover_listen(struct worker *w);
/* pgstay -R: connect to the running process and take its listening sockets (which start
 * accepting here at once); then, from the loop, every client it hands over. 0, or -1 with the
 * reason logged (the old process runs on). */
int takeover_receive(struct worker *w);
/* pgstay -R, once everything else started: as soon as this process's probes know the writer
 * (or after a few seconds), the old process is told to stop accepting and hand over its
 * clients. Until then both accept, so a new process that fails to start loses nothing. */
int takeover_ready(struct worker *w);
/* The old process, from its reaper: hand over each client that can move now; returns 1 once
 * every client is gone (or shutdown_timeout passed) and the process can exit. */
int takeover_sweep(struct worker *w);
/* The old process stops listening: the unix socket files a new process may be listening on
 * (sent, and no 'R' yet) are left in place rather than removed. */
void takeover_keep_unix_files(struct worker *w);
void takeover_free(struct worker *w);

#endif
