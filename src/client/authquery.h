/* auth_query: the secret of a user not in auth_file, fetched from the current writer as auth_user
 * and cached for auth_cache_ttl (PgBouncer's semantics), without blocking the loop. */
#ifndef PGSTAY_CLIENT_AUTHQUERY_H
#define PGSTAY_CLIENT_AUTHQUERY_H

struct client;
struct worker;
struct user_secret;

/* Is auth_query on (auth_user set)? */
int authq_enabled(const struct worker *w);
/* The client's user is not in auth_file. 1: a fresh answer is cached (authq_find has it, or
 * knows the user does not exist); 0: a lookup runs and auth_resume(c) is called once it
 * answered, or the client is closed if it cannot be answered. */
int authq_lookup(struct client *c);
/* The secret auth_query last fetched for user (however old), NULL if none or no such user:
 * what a client's exchange and a server login for that user check against. */
const struct user_secret *authq_find(struct worker *w, const char *user);
/* A writer appeared (or a reload): start the lookups that were waiting for one. */
void authq_kick(struct worker *w);
/* At exit: every cached secret. The lookup connections are servers, freed with the others. */
void authq_free(struct worker *w);

#endif
