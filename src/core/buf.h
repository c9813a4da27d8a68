/* A growable byte buffer for messages pgstay builds itself (not for forwarded traffic). Small
 * messages stay in the buffer's own storage: building one costs no allocation. A pbuf is
 * never copied by value (data may point into itself). */
#ifndef PGSTAY_CORE_BUF_H
#define PGSTAY_CORE_BUF_H

#include <stddef.h>
#include <stdint.h>

#define PBUF_INLINE 192

struct pbuf {
    uint8_t *data;
    size_t len;
    size_t cap;
    int failed; /* an allocation failed: the contents are not to be sent */
    uint8_t inl[PBUF_INLINE];
};

void pbuf_init(struct pbuf *b);
void pbuf_free(struct pbuf *b);
void pbuf_reset(struct pbuf *b);
void pbuf_put(struct pbuf *b, const void *p, size_t n);
void pbuf_put_u8(struct pbuf *b, uint8_t v);
void pbuf_put_u16(struct pbuf *b, uint16_t v);
void pbuf_put_u32(struct pbuf *b, uint32_t v);
void pbuf_put_str(struct pbuf *b, const char *s); /* with its NUL */
/* Overwrite 4 bytes at off with v in network order (message lengths). */
void pbuf_patch_u32(struct pbuf *b, size_t off, uint32_t v);

#endif
