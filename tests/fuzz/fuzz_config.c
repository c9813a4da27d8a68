/* Fuzz target: the INI config parser, and reload between two parses of the same file. The
 * bytes are the file (a memfd, named by its /proc path). Checked: a file either loads or gives
 * a "file:line: message" error; a loaded config is within its key table's bounds. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/config.h"
#include "core/log.h"

#include "../harness/pgfake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    log_verbosity = -1;
    int fd = memfd_create("pgstay-fuzz.ini", 0);
    HCHECK(fd >= 0);
    HCHECK(write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct config cfg, fresh;
    char err[512] = "";
    if (config_load(path, &cfg, err, sizeof(err)) == 0) {
        HCHECK(cfg.n_nodes >= 0 && cfg.n_nodes <= CONFIG_MAX_NODES);
        HCHECK(cfg.pool_mode == POOL_SESSION || cfg.pool_mode == POOL_TRANSACTION);
        HCHECK(cfg.auth_type >= AUTH_TRUST && cfg.auth_type <= AUTH_SCRAM);
        for (int i = 0; i < cfg.n_nodes; i++)
            HCHECK(memchr(cfg.nodes[i].name, 0, sizeof(cfg.nodes[i].name)) &&
                   memchr(cfg.nodes[i].host, 0, sizeof(cfg.nodes[i].host)));
        if (config_load(path, &fresh, err, sizeof(err)) == 0)
            config_apply_reload(&cfg, &fresh);
        config_free(&cfg);
    } else {
        HCHECK(err[0] != 0);
    }
    close(fd);
    return 0;
}
