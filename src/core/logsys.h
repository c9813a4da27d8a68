/* syslog (PgBouncer's syslog, syslog_ident, syslog_facility): the log also to the system log. */
#ifndef PGSTAY_CORE_LOGSYS_H
#define PGSTAY_CORE_LOGSYS_H

/* The facility names syslog_facility accepts, in the order of their index (config's enum). */
#define LOGSYS_FACILITIES                                                                          \
    "daemon|user|auth|authpriv|local0|local1|local2|local3|local4|local5|local6|local7"

extern int logsys_on; /* 1 while the log also goes to syslog */

/* Start (on) or stop sending the log to syslog as ident with the facility of that index; again
 * at each reload (a changed ident or facility takes effect). */
void logsys_config(int on, const char *ident, int facility);
/* One log line of a level (enum log_level) with its name. */
void logsys_line(int level, const char *level_name, const char *line);

#endif
