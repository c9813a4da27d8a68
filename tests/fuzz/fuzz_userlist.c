/* Fuzz target: the auth file parser (PgBouncer's "user" "secret" lines, md5 and SCRAM secrets).
 * Checked: a file loads or gives an error; every user loaded is found by name; a SCRAM secret
 * it accepted parses. */
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config/userlist.h"
#include "core/log.h"
#include "proto/scram.h"

#include "../harness/pgfake.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 16384)
        return 0;
    log_verbosity = -1;
    int fd = memfd_create("pgstay-fuzz-users", 0);
    HCHECK(fd >= 0);
    HCHECK(write(fd, data, size) == (ssize_t)size);
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    struct userlist ul;
    memset(&ul, 0, sizeof(ul));
    char err[512] = "";
    if (userlist_load(path, &ul, err, sizeof(err)) == 0) {
        for (int i = 0; i < ul.n; i++) {
            const struct user_secret *u = &ul.users[i];
            HCHECK(u->user && u->secret);
            HCHECK(userlist_find(&ul, u->user) != NULL);
            if (u->kind == SECRET_SCRAM) {
                struct scram_secret s;
                HCHECK(scram_parse_secret(u->secret, &s) == 0);
            }
        }
    } else {
        HCHECK(err[0] != 0);
    }
    userlist_free(&ul);
    close(fd);
    return 0;
}
