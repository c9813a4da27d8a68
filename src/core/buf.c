/* Growable byte buffer: amortised doubling, big-endian integer writers. */
#include "core/buf.h"

#include <stdlib.h>
#include <string.h>

void pbuf_init(struct pbuf *b)
{
    b->data = b->inl;
    b->len = 0;
    b->cap = sizeof(b->inl);
    b->failed = 0;
}

void pbuf_free(struct pbuf *b)
{
    if (b->data != b->inl)
        free(b->data);
    pbuf_init(b);
}

void pbuf_reset(struct pbuf *b)
{
    b->len = 0;
    b->failed = 0;
}

static int pbuf_reserve(struct pbuf *b, size_t n)
{
    if (b->failed)
        return -1;
    if (b->len + n <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + n)
        cap *= 2;
    uint8_t *d = b->data == b->inl ? malloc(cap) : realloc(b->data, cap);
    if (!d) {
        b->failed = 1;
        return -1;
    }
    if (b->data == b->inl)
        memcpy(d, b->inl, b->len);
    b->data = d;
    b->cap = cap;
    return 0;
}

void pbuf_put(struct pbuf *b, const void *p, size_t n)
{
    if (n == 0 || pbuf_reserve(b, n) < 0)
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void pbuf_put_u8(struct pbuf *b, uint8_t v)
{
    pbuf_put(b, &v, 1);
}

void pbuf_put_u16(struct pbuf *b, uint16_t v)
{
    uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    pbuf_put(b, x, 2);
}

void pbuf_put_u32(struct pbuf *b, uint32_t v)
{
    uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};
    pbuf_put(b, x, 4);
}

void pbuf_put_str(struct pbuf *b, const char *s)
{
    pbuf_put(b, s, strlen(s) + 1);
}

void pbuf_patch_u32(struct pbuf *b, size_t off, uint32_t v)
{
    if (b->failed || off + 4 > b->len)
        return;
    b->data[off] = (uint8_t)(v >> 24);
    b->data[off + 1] = (uint8_t)(v >> 16);
    b->data[off + 2] = (uint8_t)(v >> 8);
    b->data[off + 3] = (uint8_t)v;
}
