/* The auth file, in PgBouncer's format: one "user" "secret" per line. */
#ifndef PGSTAY_CONFIG_USERLIST_H
#define PGSTAY_CONFIG_USERLIST_H

#include <stddef.h>

/* How a secret is stored: plain text, "md5" + 32 hex, or "SCRAM-SHA-256$iter:salt$stored:server". */
enum secret_kind { SECRET_PLAIN = 0, SECRET_MD5 = 1, SECRET_SCRAM = 2 };

struct user_secret {
    char *user;
    char *secret;
    int kind; /* enum secret_kind */
};

struct userlist {
    struct user_secret *users;
    int n;
};

/* Read path into *ul (replacing nothing: *ul must be empty). Returns -1 and
 * "file:line: message" in err on a syntax error or unreadable file. */
int userlist_load(const char *path, struct userlist *ul, char *err, size_t errlen);
void userlist_free(struct userlist *ul);
const struct user_secret *userlist_find(const struct userlist *ul, const char *user);

#endif
