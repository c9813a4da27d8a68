/* The auth file, in PgBouncer's format: one "user" "secret" per line. */
#ifndef PGSTAY_CONFIG_USERLIST_H
#define PGSTAY_CONFIG_USERLIST_H

#include <stddef.h>

/* How a secret is stored: plain text, "md5" + 32 hex, or "SCRAM-SHA-256$iter:salt$stored:server". */
enum secret_kind { SECRET_PLAIN = 0, SECRET_MD5 = 1, SECRET_SCRAM = 2 };

struct scram_secret;

struct user_secret {
    char *user;
    char *secret;
    int kind;                   /* enum secret_kind */
    struct scram_secret *scram; /* SCRAM verifier, parsed or (plain) derived once at load */
};

struct userlist {
    struct user_secret *users;
    int n;
    /* Derives the SCRAM salt and keys shown for users not in the file, so that a login for
     * one costs no PBKDF2 and looks like a real user's (the same salt each time). Kept across
     * reloads (userlist_keep_mock). */
    unsigned char mock_key[32];
};

/* Read path into *ul (replacing nothing: *ul must be empty). Returns -1 and
 * "file:line: message" in err on a syntax error or unreadable file. */
int userlist_load(const char *path, struct userlist *ul, char *err, size_t errlen);
void userlist_free(struct userlist *ul);
const struct user_secret *userlist_find(const struct userlist *ul, const char *user);
/* The doomed verifier for a user not in the file (as PostgreSQL's mock authentication). */
void userlist_mock_secret(const struct userlist *ul, const char *user, struct scram_secret *out);
/* A reloaded list shows unknown users the same salts as the one it replaces. */
void userlist_keep_mock(struct userlist *fresh, const struct userlist *old);

#endif
