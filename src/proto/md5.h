/* PostgreSQL's md5 password scheme: the stored hash and the salted answer to the server. */
#ifndef PGSTAY_PROTO_MD5_H
#define PGSTAY_PROTO_MD5_H

/* "md5" + hex(md5(password || user)): what pg_authid stores and what an md5 auth_file secret holds.
 * out receives 35 characters and a terminating NUL. */
void pg_md5_hash(const char *password, const char *user, char out[36]);

/* The answer to AuthenticationMD5Password: "md5" + hex(md5(hex32 || salt)), where hash is a
 * "md5…" string (35 chars), so a server login works from a stored hash without the password. */
void pg_md5_salted(const char *hash, const unsigned char salt[4], char out[36]);

#endif
