/* The lexer behind session-state tracking: keywords, quotes and comments, no full SQL grammar. */
#include "proto/sqlscan.h"

#include <ctype.h>
#include <stdio.h>
#include <strings.h>
#include <string.h>

const char *pin_reason_name(int reason)
{
    static const char *const names[PIN_NREASONS] = {
        "none",          "temp table", "advisory lock",
        "LISTEN",        "SQL PREPARE", "WITH HOLD cursor",
        "LOAD",          "prepared statements beyond the replay limit",
        "untracked SET",
    };
    return reason >= 0 && reason < PIN_NREASONS ? names[reason] : "?";
}

struct lexer {
    const char *p;
    size_t len;
    size_t pos;
};

/* Skip whitespace and comments (-- and nested block comments). */
static void skip_space(struct lexer *lx)
{
    while (lx->pos < lx->len) {
        char ch = lx->p[lx->pos];
        if (isspace((unsigned char)ch)) {
            lx->pos++;
        } else if (ch == '-' && lx->pos + 1 < lx->len && lx->p[lx->pos + 1] == '-') {
            while (lx->pos < lx->len && lx->p[lx->pos] != '\n')
                lx->pos++;
        } else if (ch == '/' && lx->pos + 1 < lx->len && lx->p[lx->pos + 1] == '*') {
            int depth = 0;
            while (lx->pos + 1 < lx->len) {
                if (lx->p[lx->pos] == '/' && lx->p[lx->pos + 1] == '*') {
                    depth++;
                    lx->pos += 2;
                } else if (lx->p[lx->pos] == '*' && lx->p[lx->pos + 1] == '/') {
                    lx->pos += 2;
                    if (--depth == 0)
                        break;
                } else {
                    lx->pos++;
                }
            }
            if (depth > 0)
                lx->pos = lx->len;
        } else {
            break;
        }
    }
}

/* Read one token into out (lower-cased words; quoted strings and identifiers kept whole). */
static int next_token(struct lexer *lx, char *out, size_t cap)
{
    skip_space(lx);
    size_t n = 0;
    if (lx->pos >= lx->len)
        return 0;
    char ch = lx->p[lx->pos];
    if (ch == '\'' || ch == '"') {
        char q = ch;
        size_t start = lx->pos++;
        while (lx->pos < lx->len) {
            if (lx->p[lx->pos] == q) {
                if (lx->pos + 1 < lx->len && lx->p[lx->pos + 1] == q) {
                    lx->pos += 2;
                    continue;
                }
                lx->pos++;
                break;
            }
            lx->pos++;
        }
        size_t l = lx->pos - start;
        if (l >= cap)
            l = cap - 1;
        memcpy(out, lx->p + start, l);
        out[l] = 0;
        return 1;
    }
    if (isalnum((unsigned char)ch) || ch == '_' || ch == '.' || ch == '-' || ch == '+') {
        while (lx->pos < lx->len) {
            ch = lx->p[lx->pos];
            if (!(isalnum((unsigned char)ch) || ch == '_' || ch == '.' || ch == '$' ||
                  (n == 0 && (ch == '-' || ch == '+'))))
                break;
            if (n + 1 < cap)
                out[n++] = (char)tolower((unsigned char)ch);
            lx->pos++;
        }
        out[n] = 0;
        return 1;
    }
    out[0] = ch;
    out[1] = 0;
    lx->pos++;
    return 1;
}

/* Words that may pin a session, found in one pass over the identifiers of the text (this runs
 * on every query, so no per-word rescans). */
enum {
    W_TEMP = 1 << 0,
    W_ADVISORY = 1 << 1,
    W_LISTEN = 1 << 2,
    W_HOLD = 1 << 3,
    W_DECLARE = 1 << 4,
    W_WITHOUT = 1 << 5,
    W_PREPARE = 1 << 6,
    W_TRANSACTION = 1 << 7,
    W_LOAD = 1 << 8,
};

static const struct {
    const char *word;
    int flag;
} pin_words[] = {
    {"temp", W_TEMP},
    {"temporary", W_TEMP},
    {"pg_advisory_lock", W_ADVISORY},
    {"pg_try_advisory_lock", W_ADVISORY},
    {"pg_advisory_lock_shared", W_ADVISORY},
    {"pg_try_advisory_lock_shared", W_ADVISORY},
    {"listen", W_LISTEN},
    {"hold", W_HOLD},
    {"declare", W_DECLARE},
    {"without", W_WITHOUT},
    {"prepare", W_PREPARE},
    {"transaction", W_TRANSACTION},
    {"load", W_LOAD},
};

/* Is word (lower case) one of the identifiers of the text? */
static int has_word(const char *q, size_t len, const char *word)
{
    size_t wl = strlen(word), i = 0;
    while (i < len) {
        if (!(isalnum((unsigned char)q[i]) || q[i] == '_')) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < len && (isalnum((unsigned char)q[i]) || q[i] == '_'))
            i++;
        if (i - start == wl && strncasecmp(q + start, word, wl) == 0)
            return 1;
    }
    return 0;
}

static int find_pin(const char *q, size_t len)
{
    int seen = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char ch = (unsigned char)q[i];
        if (!(isalnum(ch) || ch == '_')) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < len && (isalnum((unsigned char)q[i]) || q[i] == '_'))
            i++;
        size_t wl = i - start;
        if (wl < 4 || wl > 27)
            continue;
        for (size_t k = 0; k < sizeof(pin_words) / sizeof(pin_words[0]); k++) {
            if (strlen(pin_words[k].word) == wl && strncasecmp(q + start, pin_words[k].word, wl) == 0) {
                seen |= pin_words[k].flag;
                break;
            }
        }
    }
    if (seen & W_TEMP)
        return PIN_TEMP_TABLE;
    if (seen & W_ADVISORY)
        return PIN_ADVISORY_LOCK;
    if (seen & W_LISTEN)
        return PIN_LISTEN;
    if ((seen & W_HOLD) && (seen & W_DECLARE) && !(seen & W_WITHOUT))
        return PIN_HOLD_CURSOR;
    if ((seen & W_PREPARE) && !(seen & W_TRANSACTION))
        return PIN_SQL_PREPARE;
    if (seen & W_LOAD)
        return PIN_LOAD;
    return PIN_NONE;
}

void sql_scan(const char *q, size_t len, struct sql_info *out)
{
    memset(out, 0, sizeof(*out));
    struct lexer lx = {q, len, 0};
    char t1[64], t2[64] = "";
    if (!next_token(&lx, t1, sizeof(t1)))
        return;
    /* Multi-statement text: anything after a ';' that is not just space. */
    char quote = 0;
    for (size_t i = 0; i < len; i++) {
        if (quote) {
            if (q[i] == quote)
                quote = 0;
            continue;
        }
        if (q[i] == '\'' || q[i] == '"') {
            quote = q[i];
            continue;
        }
        if (q[i] == ';') {
            struct lexer rest = {q, len, i + 1};
            skip_space(&rest);
            if (rest.pos < len && q[rest.pos] != 0)
                out->multi = 1;
            break;
        }
    }
    out->pin = find_pin(q, len);
    if (out->multi && !out->pin && (has_word(q, len, "set") || has_word(q, len, "reset")))
        out->pin = PIN_UNTRACKED_SET;
    if (!strcmp(t1, "begin") || !strcmp(t1, "start")) {
        out->kind = SQL_BEGIN;
    } else if (!strcmp(t1, "commit") || !strcmp(t1, "end")) {
        size_t save = lx.pos;
        if (next_token(&lx, t2, sizeof(t2)) && !strcmp(t2, "prepared"))
            out->kind = SQL_OTHER;
        else
            out->kind = SQL_COMMIT;
        lx.pos = save;
    } else if (!strcmp(t1, "rollback") || !strcmp(t1, "abort")) {
        size_t save = lx.pos;
        out->kind = SQL_ROLLBACK;
        if (next_token(&lx, t2, sizeof(t2)) && (!strcmp(t2, "to") || !strcmp(t2, "prepared")))
            out->kind = SQL_OTHER;
        if (!strcmp(t2, "work") || !strcmp(t2, "transaction")) {
            if (next_token(&lx, t2, sizeof(t2)) && !strcmp(t2, "to"))
                out->kind = SQL_OTHER;
        }
        lx.pos = save;
    } else if (!strcmp(t1, "discard")) {
        if (next_token(&lx, t2, sizeof(t2)) && !strcmp(t2, "all")) {
            out->kind = SQL_RESET_ALL;
            out->discard_all = 1;
        }
    } else if (!strcmp(t1, "deallocate")) {
        if (next_token(&lx, t2, sizeof(t2)) && !strcmp(t2, "prepare"))
            next_token(&lx, t2, sizeof(t2));
        if (t2[0] && strlen(t2) < sizeof(out->name) - 1) {
            out->kind = SQL_DEALLOCATE;
            snprintf(out->name, sizeof(out->name), "%s", t2);
        }
    } else if (!strcmp(t1, "reset")) {
        if (next_token(&lx, t2, sizeof(t2))) {
            if (!strcmp(t2, "all")) {
                out->kind = SQL_RESET_ALL;
            } else {
                out->kind = SQL_RESET;
                snprintf(out->name, sizeof(out->name), "%s", t2);
            }
        }
    } else if (!strcmp(t1, "set")) {
        if (!next_token(&lx, t2, sizeof(t2)))
            return;
        int local = 0;
        if (!strcmp(t2, "session")) {
            if (!next_token(&lx, t2, sizeof(t2)))
                return;
            if (!strcmp(t2, "characteristics") || !strcmp(t2, "authorization")) {
                if (!out->pin)
                    out->pin = PIN_UNTRACKED_SET; /* session state the lexer does not follow */
                return;
            }
        } else if (!strcmp(t2, "local")) {
            local = 1;
            if (!next_token(&lx, t2, sizeof(t2)))
                return;
        }
        if (!strcmp(t2, "transaction") || !strcmp(t2, "constraints"))
            return; /* transaction-scoped: nothing to follow the client */
        /* The special forms name a setting of their own; the value follows without = or TO. */
        int eq_optional = 0;
        if (!strcmp(t2, "time")) {
            if (!next_token(&lx, t2, sizeof(t2)) || strcmp(t2, "zone"))
                return;
            snprintf(t2, sizeof(t2), "timezone");
            eq_optional = 1;
        } else if (!strcmp(t2, "names")) {
            snprintf(t2, sizeof(t2), "client_encoding");
            eq_optional = 1;
        } else if (!strcmp(t2, "role")) {
            eq_optional = 1;
        } else if (t2[0] == '"') {
            /* A quoted name: setting names are case-insensitive. */
            size_t l = strlen(t2);
            if (l < 3 || t2[l - 1] != '"' || memchr(t2 + 1, '"', l - 2))
                return;
            memmove(t2, t2 + 1, l - 2);
            t2[l - 2] = 0;
            for (char *p = t2; *p; p++)
                *p = (char)tolower((unsigned char)*p);
        }
        if (strlen(t2) >= sizeof(out->name) - 1)
            return; /* a name this long may have been cut short: left untracked */
        snprintf(out->name, sizeof(out->name), "%s", t2);
        size_t save = lx.pos;
        char eq[8];
        if (!next_token(&lx, eq, sizeof(eq)) || (strcmp(eq, "=") && strcmp(eq, "to"))) {
            if (!eq_optional)
                return;
            lx.pos = save;
        }
        skip_space(&lx);
        /* The value runs to the end of the statement; kept verbatim for replay. */
        size_t start = lx.pos, end = lx.pos;
        int inq = 0;
        while (end < len && q[end] && (inq || q[end] != ';')) {
            if (q[end] == '\'')
                inq = !inq;
            end++;
        }
        while (end > start && isspace((unsigned char)q[end - 1]))
            end--;
        if (end - start == 0 || end - start >= sizeof(out->value))
            return;
        memcpy(out->value, q + start, end - start);
        out->value[end - start] = 0;
        out->kind = local ? SQL_SET_LOCAL : SQL_SET;
    }
}
