/* systemd's service protocol: systemctl start returns once pgstay listens, systemctl reload once
 * the new configuration is in, and the unit shows a reload or a drain while it runs. */
#include "app/notify.h"

#include <stdio.h>
#include <time.h>

#include <systemd/sd-daemon.h>

#include "core/log.h"

static void send_state(const char *state)
{
    int r = sd_notify(0, state);
    if (r < 0)
        log_warn("sd_notify \"%s\" failed (%d)", state, r);
}

void notify_ready(void)
{
    send_state("READY=1\nSTATUS=listening");
}

void notify_reloading(void)
{
    /* MONOTONIC_USEC: newer systemd matches the reload it asked for by it. */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    char msg[96];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu",
             (unsigned long long)ts.tv_sec * 1000000ULL + (unsigned long long)ts.tv_nsec / 1000);
    send_state(msg);
}

void notify_stopping(void)
{
    send_state("STOPPING=1");
}
