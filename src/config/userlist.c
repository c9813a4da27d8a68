/* The auth file reader: PgBouncer's "user" "secret" lines, each secret classified by its form. */
#include "config/userlist.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proto/scram.h"

/* One "quoted" field starting at *pp, where "" stands for a quote. Returns a heap copy with
 * the quoting removed and advances *pp past the closing quote; NULL if unterminated. */
static char *quoted_field(const char **pp)
{
    const char *p = *pp + 1;
    size_t cap = strlen(p) + 1, n = 0;
    char *out = malloc(cap);
    if (out == NULL)
        return NULL;
    for (;; p++) {
        if (*p == '\0') {
            free(out);
            return NULL;
        }
        if (*p == '"') {
            if (p[1] != '"')
                break;
            p++;
        }
        out[n++] = *p;
    }
    out[n] = '\0';
    *pp = p + 1;
    return out;
}

static int is_md5_secret(const char *s)
{
    if (strncmp(s, "md5", 3) != 0 || strlen(s) != 35)
        return 0;
    for (int i = 3; i < 35; i++)
        if (!isxdigit((unsigned char)s[i]))
            return 0;
    return 1;
}

static int classify(const char *secret)
{
    if (is_md5_secret(secret))
        return SECRET_MD5;
    if (strncmp(secret, SCRAM_MECHANISM "$", sizeof(SCRAM_MECHANISM)) == 0)
        return SECRET_SCRAM;
    return SECRET_PLAIN;
}

static void free_secret(struct user_secret *u)
{
    free(u->user);
    if (u->secret) {
        /* Plain passwords live here: do not leave them in freed heap. */
        explicit_bzero(u->secret, strlen(u->secret));
        free(u->secret);
    }
    u->user = u->secret = NULL;
}

/* Add or, for a user seen before, replace (the last line wins, as in PgBouncer). Takes both
 * strings. */
static int add_user(struct userlist *ul, char *user, char *secret, int *cap)
{
    for (int i = 0; i < ul->n; i++) {
        if (strcmp(ul->users[i].user, user) == 0) {
            free_secret(&ul->users[i]);
            ul->users[i] = (struct user_secret){user, secret, classify(secret)};
            return 0;
        }
    }
    if (ul->n == *cap) {
        int ncap = *cap ? *cap * 2 : 16;
        struct user_secret *nu = realloc(ul->users, (size_t)ncap * sizeof(*nu));
        if (nu == NULL)
            return -1;
        ul->users = nu;
        *cap = ncap;
    }
    ul->users[ul->n++] = (struct user_secret){user, secret, classify(secret)};
    return 0;
}

int userlist_load(const char *path, struct userlist *ul, char *err, size_t errlen)
{
    char *line = NULL, *user = NULL, *secret = NULL;
    size_t linecap = 0;
    int lineno = 0, cap = 0;
    FILE *f;

    ul->users = NULL;
    ul->n = 0;
    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    while (getline(&line, &linecap, f) >= 0) {
        lineno++;
        const char *p = line;
        while (isspace((unsigned char)*p))
            p++;
        if (*p == '\0' || *p == ';' || *p == '#')
            continue;
        if (*p != '"') {
            snprintf(err, errlen, "%s:%d: expected a quoted user name", path, lineno);
            goto fail;
        }
        user = quoted_field(&p);
        if (user == NULL) {
            snprintf(err, errlen, "%s:%d: unterminated quote in user name", path, lineno);
            goto fail;
        }
        if (user[0] == '\0') {
            snprintf(err, errlen, "%s:%d: empty user name", path, lineno);
            goto fail;
        }
        while (isspace((unsigned char)*p))
            p++;
        if (*p != '"') {
            snprintf(err, errlen, "%s:%d: expected a quoted secret after user \"%s\"", path, lineno,
                     user);
            goto fail;
        }
        secret = quoted_field(&p);
        if (secret == NULL) {
            snprintf(err, errlen, "%s:%d: unterminated quote in the secret of user \"%s\"", path,
                     lineno, user);
            goto fail;
        }
        /* A broken SCRAM secret would otherwise only show up as failed logins. */
        struct scram_secret parsed;
        if (classify(secret) == SECRET_SCRAM && scram_parse_secret(secret, &parsed) < 0) {
            snprintf(err, errlen, "%s:%d: malformed SCRAM secret for user \"%s\"", path, lineno,
                     user);
            goto fail;
        }
        /* Further fields (PgBouncer allows them) are ignored. */
        if (add_user(ul, user, secret, &cap) < 0) {
            snprintf(err, errlen, "%s:%d: out of memory", path, lineno);
            goto fail;
        }
        user = secret = NULL;
    }
    if (ferror(f)) {
        snprintf(err, errlen, "%s:%d: read error: %s", path, lineno + 1, strerror(errno));
        goto fail;
    }
    if (line) {
        /* The buffer still holds the last line's secret. */
        explicit_bzero(line, linecap);
        free(line);
    }
    fclose(f);
    return 0;

fail:
    free(user);
    if (secret) {
        explicit_bzero(secret, strlen(secret));
        free(secret);
    }
    if (line) {
        explicit_bzero(line, linecap);
        free(line);
    }
    fclose(f);
    userlist_free(ul);
    return -1;
}

void userlist_free(struct userlist *ul)
{
    for (int i = 0; i < ul->n; i++)
        free_secret(&ul->users[i]);
    free(ul->users);
    ul->users = NULL;
    ul->n = 0;
}

const struct user_secret *userlist_find(const struct userlist *ul, const char *user)
{
    for (int i = 0; i < ul->n; i++)
        if (strcmp(ul->users[i].user, user) == 0)
            return &ul->users[i];
    return NULL;
}
