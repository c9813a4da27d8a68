/* The admin console: the "pgstay" database for admin_users (SHOW, PAUSE, RESUME, RELOAD, SHUTDOWN). */
#ifndef PGSTAY_ADMIN_ADMIN_H
#define PGSTAY_ADMIN_ADMIN_H

#include "core/worker.h"

struct client;

/* Logged in to the admin database: parameters and ReadyForQuery. */
void admin_welcome(struct client *c);
/* Run the admin client's queries. */
void admin_process(struct client *c);
/* Periodic: answer PAUSE once in-flight transactions are done (or pause_timeout). */
void admin_check_pause(struct worker *w);

#endif
