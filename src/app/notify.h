/* systemd's service protocol (Type=notify): READY, RELOADING and STOPPING through sd_notify. */
#ifndef PGSTAY_APP_NOTIFY_H
#define PGSTAY_APP_NOTIFY_H

/* Each is a no-op unless systemd (or anything) set NOTIFY_SOCKET. */
void notify_ready(void);     /* listeners open: clients may connect */
void notify_reloading(void); /* a reload (SIGHUP, RELOAD) begins */
void notify_stopping(void);  /* shutdown begins */

#endif
