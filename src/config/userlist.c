/* The auth file reader: PgBouncer's "user" "secret" lines, each secret classified by its form. */
#include "config/userlist.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

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
    if (u->scram) {
        OPENSSL_cleanse(u->scram, sizeof(*u->scram));
        free(u->scram);
        u->scram = NULL;
    }
}

/* Add or, for a user seen before, replace (the last line wins, as in PgBouncer). Takes both
 * strings. */
static int add_user(struct userlist *ul, char *user, char *secret, int *cap)
{
    for (int i = 0; i < ul->n; i++) {
        if (strcmp(ul->users[i].user, user) == 0) {
            free_secret(&ul->users[i]);
            ul->users[i] = (struct user_secret){user, secret, classify(secret), NULL};
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
    ul->users[ul->n++] = (struct user_secret){user, secret, classify(secret), NULL};
    return 0;
}

/*
 * Every user's SCRAM verifier, once: parsed for a SCRAM secret, derived (PBKDF2, 4096 rounds,
 * a few ms each) for a plain password, so that no login runs PBKDF2 on the event loop. md5
 * secrets have none (SCRAM cannot use them). And the key for unknown users' mock verifiers.
 */
static int derive_secrets(struct userlist *ul)
{
    if (RAND_bytes(ul->mock_key, sizeof(ul->mock_key)) != 1)
        return -1;
    for (int i = 0; i < ul->n; i++) {
        struct user_secret *u = &ul->users[i];
        if (u->kind == SECRET_MD5)
            continue;
        u->scram = calloc(1, sizeof(*u->scram));
        if (!u->scram)
            return -1;
        int rc = u->kind == SECRET_SCRAM ? scram_parse_secret(u->secret, u->scram)
                                         : scram_secret_generate(u->secret, u->scram);
        if (rc < 0) {
            free(u->scram);
            u->scram = NULL;
            return -1;
        }
    }
    return 0;
}

static void mock_part(const struct userlist *ul, const char *what, const char *user,
                      unsigned char out[SCRAM_KEY_LEN])
{
    unsigned char msg[512];
    size_t lw = strlen(what), lu = strnlen(user, sizeof(msg) - lw - 1);
    memcpy(msg, what, lw);
    msg[lw] = 0;
    memcpy(msg + lw + 1, user, lu);
    unsigned int n = SCRAM_KEY_LEN;
    HMAC(EVP_sha256(), ul->mock_key, sizeof(ul->mock_key), msg, lw + 1 + lu, out, &n);
}

void userlist_mock_secret(const struct userlist *ul, const char *user, struct scram_secret *out)
{
    unsigned char salt[SCRAM_KEY_LEN];
    memset(out, 0, sizeof(*out));
    mock_part(ul, "salt", user, salt);
    memcpy(out->salt, salt, SCRAM_SALT_LEN);
    out->salt_len = SCRAM_SALT_LEN;
    out->iterations = SCRAM_ITERATIONS;
    /* keys nobody's password yields: every proof fails, after the whole exchange */
    mock_part(ul, "stored", user, out->stored_key);
    mock_part(ul, "server", user, out->server_key);
}

void userlist_keep_mock(struct userlist *fresh, const struct userlist *old)
{
    memcpy(fresh->mock_key, old->mock_key, sizeof(fresh->mock_key));
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
    if (derive_secrets(ul) < 0) {
        snprintf(err, errlen, "%s: out of memory deriving SCRAM secrets", path);
        userlist_free(ul);
        return -1;
    }
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
