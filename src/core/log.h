/* Logging: one line per event, always naming its subject (client, server, node). */
#ifndef PGSTAY_CORE_LOG_H
#define PGSTAY_CORE_LOG_H

#include <stddef.h>

enum log_level { LOG_ERROR = 0, LOG_WARNING, LOG_INFO, LOG_DEBUG };

extern int log_verbosity; /* messages above this level are dropped */

void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Send the log (stderr) to path, appending; again on SIGHUP, so that a rotated file is let go.
 * An empty path keeps stderr. 0, or -1 with the reason in err. */
int log_to_file(const char *path, char *err, size_t errlen);

#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                             \
    do {                                                                                           \
        if (log_verbosity >= LOG_DEBUG)                                                            \
            log_msg(LOG_DEBUG, __VA_ARGS__);                                                       \
    } while (0)

#endif
