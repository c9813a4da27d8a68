/* Intrusive doubly-linked lists: an object's state is the list it lives on. */
#ifndef PGSTAY_CORE_LIST_H
#define PGSTAY_CORE_LIST_H

#include <stddef.h>

struct list {
    struct list *next, *prev;
};

#define LIST_INIT(l) {&(l), &(l)}
#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

static inline void list_init(struct list *l)
{
    l->next = l->prev = l;
}
static inline int list_empty(const struct list *l)
{
    return l->next == l;
}
static inline void list_append(struct list *head, struct list *item)
{
    item->prev = head->prev;
    item->next = head;
    head->prev->next = item;
    head->prev = item;
}
static inline void list_del(struct list *item)
{
    item->prev->next = item->next;
    item->next->prev = item->prev;
    item->next = item->prev = item;
}
static inline struct list *list_first(struct list *head)
{
    return list_empty(head) ? NULL : head->next;
}
/* Walks the list: for short lists only (a pool's idle servers). */
static inline int list_count(const struct list *head)
{
    int n = 0;
    for (const struct list *i = head->next; i != head; i = i->next)
        n++;
    return n;
}

#define list_for_each_safe(pos, tmp, head)                                                         \
    for ((pos) = (head)->next, (tmp) = (pos)->next; (pos) != (head); (pos) = (tmp), (tmp) = (pos)->next)

#endif
