/* Logging to stderr (or logfile) with a microsecond timestamp (failover steps are ms apart) and
 * the level. */
#include "core/log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <sys/time.h>
#include <time.h>

#include "core/logsys.h"

int log_verbosity = LOG_INFO;

static const char *const level_names[] = {"ERROR", "WARNING", "LOG", "DEBUG"};

void log_msg(enum log_level lvl, const char *fmt, ...)
{
    if ((int)lvl > log_verbosity)
        return;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char ts[32];
    strftime(ts, sizeof(ts), "%Y-%m-%d %H:%M:%S", &tm);
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s.%06ld %s %s\n", ts, (long)tv.tv_usec, level_names[lvl], line);
    if (logsys_on)
        logsys_line((int)lvl, level_names[lvl], line);
}

int log_to_file(const char *path, char *err, size_t errlen)
{
    if (!path || !*path)
        return 0;
    /* stderr itself is redirected: whatever writes there (libevent's warnings too) follows */
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
    if (fd < 0) {
        snprintf(err, errlen, "logfile %s: %s", path, strerror(errno));
        return -1;
    }
    fflush(stderr);
    if (dup2(fd, STDERR_FILENO) < 0) {
        snprintf(err, errlen, "logfile %s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    close(fd);
    return 0;
}
