/* syslog: kept apart from log.c because <syslog.h> defines LOG_INFO and friends, the names of
 * pgstay's own levels. */
#include "core/logsys.h"

#include <stdio.h>
#include <syslog.h>

int logsys_on;

static const int facilities[] = {LOG_DAEMON, LOG_USER,   LOG_AUTH,   LOG_AUTHPRIV,
                                 LOG_LOCAL0, LOG_LOCAL1, LOG_LOCAL2, LOG_LOCAL3,
                                 LOG_LOCAL4, LOG_LOCAL5, LOG_LOCAL6, LOG_LOCAL7};

/* Index: enum log_level (ERROR, WARNING, LOG, DEBUG). */
static const int priorities[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};

/* openlog keeps the pointer: the ident lives here, not in a config a reload frees. */
static char ident_buf[64];

void logsys_config(int on, const char *ident, int facility)
{
    if (logsys_on)
        closelog();
    logsys_on = 0;
    if (!on)
        return;
    if (facility < 0 || facility >= (int)(sizeof(facilities) / sizeof(facilities[0])))
        facility = 0;
    snprintf(ident_buf, sizeof(ident_buf), "%s", ident && *ident ? ident : "pgstay");
    openlog(ident_buf, LOG_PID | LOG_NDELAY, facilities[facility]);
    logsys_on = 1;
}

void logsys_line(int level, const char *level_name, const char *line)
{
    if (level < 0 || level > 3)
        level = 2;
    /* syslog adds the time; the level name stays in the text, as in the file. */
    syslog(priorities[level], "%s %s", level_name, line);
}
