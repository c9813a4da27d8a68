/* Host-based authentication: auth_hba_file in pg_hba.conf's format, and which line a login meets.
 */
#ifndef PGSTAY_CONFIG_HBA_H
#define PGSTAY_CONFIG_HBA_H

#include <stddef.h>
#include <stdint.h>

/* The connection types of pg_hba.conf. pgstay listens on TCP only, so local lines are read
 * (a file shared with PostgreSQL keeps working) but never match. */
enum hba_type { HBA_LOCAL, HBA_HOST, HBA_HOSTSSL, HBA_HOSTNOSSL };

/* The methods pgstay can carry out itself. peer is accepted on local lines only (they never
 * match); everything PostgreSQL delegates to another system (ident, ldap, gss, pam...) is
 * refused when the file is read, so a file never silently means something weaker. */
enum hba_method {
    HBA_TRUST,
    HBA_REJECT,
    HBA_MD5,      /* md5, or SCRAM for a user whose secret is SCRAM (as PostgreSQL) */
    HBA_SCRAM,    /* SCRAM-SHA-256 only: an md5 secret cannot pass */
    HBA_PASSWORD, /* cleartext password, checked against any kind of secret */
    HBA_CERT,     /* a verified client certificate whose CN is the user name */
    HBA_PEER,
};

/* clientcert= on a line (hostssl only), or what cert implies (verify-full). */
enum hba_clientcert { HBA_CERT_NONE, HBA_CERT_VERIFY_CA, HBA_CERT_VERIFY_FULL };

/* A database or user token: a keyword unless it was quoted ("all" is a database named all). */
enum hba_kw { HBA_KW_NAME, HBA_KW_ALL, HBA_KW_SAMEUSER, HBA_KW_REPLICATION };

struct hba_name {
    char *name;
    int kw; /* enum hba_kw */
};

enum hba_addr_kind { HBA_ADDR_ANY, HBA_ADDR_CIDR, HBA_ADDR_SAMEHOST, HBA_ADDR_SAMENET };

struct hba_rule {
    int line; /* in the file, for the log line that says which rule decided */
    int type; /* enum hba_type */
    struct hba_name *dbs;
    int n_dbs;
    struct hba_name *users;
    int n_users;
    int addr_kind; /* enum hba_addr_kind */
    int family;    /* AF_INET or AF_INET6, for HBA_ADDR_CIDR */
    uint8_t addr[16], mask[16];
    int method;     /* enum hba_method */
    int clientcert; /* enum hba_clientcert */
};

struct hba {
    struct hba_rule *rules;
    int n;
};

/* Read path into *h (which must be empty). -1 with "file:line: message" in err on anything
 * pgstay cannot enforce as written: unknown type or method, +group, @file, a host name... */
int hba_load(const char *path, struct hba *h, char *err, size_t errlen);
void hba_free(struct hba *h);

/* What a login looks like to the rules: the client's address (family AF_INET or AF_INET6, 4 or
 * 16 bytes; an IPv4-mapped IPv6 address counts as IPv4), whether it came over TLS, and the
 * database and user it asked for. */
struct hba_login {
    int family;
    const uint8_t *ip;
    int tls;
    const char *database;
    const char *user;
};

/* The first rule that matches, as PostgreSQL reads the file; NULL when none does (reject). */
const struct hba_rule *hba_match(const struct hba *h, const struct hba_login *l);

const char *hba_method_name(int method);

#endif
