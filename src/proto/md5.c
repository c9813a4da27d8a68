/* PostgreSQL's md5 password scheme, computed with OpenSSL's EVP digest API. */
#include "proto/md5.h"

#include <string.h>

#include <openssl/evp.h>

/* Digest two byte strings back to back and write "md5" + 32 lowercase hex digits. */
static void md5_hex2(const void *a, size_t alen, const void *b, size_t blen, char out[36])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char digest[EVP_MAX_MD_SIZE];
    unsigned int dlen = 0;

    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    /* MD5 can only be unavailable under a FIPS-only provider; an all-zero answer then simply
     * fails authentication at the server instead of crashing the proxy. */
    if (ctx == NULL || EVP_DigestInit_ex(ctx, EVP_md5(), NULL) != 1 ||
        EVP_DigestUpdate(ctx, a, alen) != 1 || EVP_DigestUpdate(ctx, b, blen) != 1 ||
        EVP_DigestFinal_ex(ctx, digest, &dlen) != 1 || dlen != 16) {
        memset(digest, 0, sizeof(digest));
    }
    EVP_MD_CTX_free(ctx);

    memcpy(out, "md5", 3);
    for (int i = 0; i < 16; i++) {
        out[3 + 2 * i] = hex[digest[i] >> 4];
        out[3 + 2 * i + 1] = hex[digest[i] & 0x0f];
    }
    out[35] = '\0';
}

void pg_md5_hash(const char *password, const char *user, char out[36])
{
    md5_hex2(password, strlen(password), user, strlen(user), out);
}

void pg_md5_salted(const char *hash, const unsigned char salt[4], char out[36])
{
    /* Skip the "md5" prefix: the salted digest is over the 32 hex digits only. */
    md5_hex2(hash + 3, 32, salt, 4, out);
}
