/* Fuzz target: what a client sends before and during login. The bytes go to the startup-packet
 * codec alone, then to a real worker as a client's first bytes: startup packets, SSLRequest,
 * GSSENCRequest, CancelRequest, protocol versions and options, then password and SASL
 * messages (first byte: trust, md5 or SCRAM; the rest of the byte sends the stream in small
 * pieces). Checked: every byte the client gets is an 'N' to an encryption request or a well
 * framed message valid where it comes; pgstay keeps no client; a bystander is untouched. */
#include <stdint.h>
#include <string.h>

#include "config/config.h"
#include "proto/proto.h"
#include "proto/scram.h"

#include "fuzz.h"

/* The codec alone: every name and value it returns lies inside the packet. */
static void codec(const uint8_t *data, size_t size)
{
    uint32_t len = 0;
    const char *err = NULL;
    if (proto_startup_len(data, size, &len, &err) != PROTO_OK || len > size)
        return;
    struct startup_pkt sp;
    if (proto_parse_startup(data, len, &sp, &err) != PROTO_OK)
        return;
    HCHECK(sp.n_params >= 0 && sp.n_params <= STARTUP_MAX_PARAMS);
    for (int i = 0; i < sp.n_params; i++) {
        const uint8_t *n = (const uint8_t *)sp.names[i], *v = (const uint8_t *)sp.values[i];
        HCHECK(n >= data && n < data + len && v >= data && v < data + len);
        HCHECK(memchr(v, 0, (size_t)(data + len - v)) != NULL);
    }
    (void)startup_param(&sp, "user");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1 || size > 16384)
        return 0;
    codec(data + 1, size - 1);
    fz_init(FZ_SETTINGS);
    static const int auth[4] = {AUTH_TRUST, AUTH_MD5, AUTH_SCRAM, AUTH_TRUST};
    hcfg.auth_type = auth[data[0] & 3];
    /* Bits 2-4: pieces of 1, 3 or 7 bytes with the loop run between them (else all at once:
     * the loop runs once a piece, so pieces are kept for short inputs and 3 values in 8). */
    static const size_t pieces[8] = {0, 0, 0, 0, 0, 1, 3, 7};
    size_t piece = size <= 1024 ? pieces[(data[0] >> 2) & 7] : 0;
    scram_set_test_nonce(FZ_NONCE); /* the server nonce of a SCRAM exchange: reproducible */
    struct fz_client c;
    fz_client_open(&c);
    const uint8_t *p = data + 1;
    size_t left = size - 1;
    while (left > 0 && !c.eof) {
        size_t n = piece && left > piece ? piece : left;
        fz_client_send(&c, p, n);
        p += n;
        left -= n;
        quiesce();
    }
    quiesce();
    fz_client_read(&c);
    fz_client_close(&c);
    hcfg.auth_type = AUTH_TRUST;
    fz_end_run();
    fz_bystander();
    fz_end_run();
    return 0;
}
