/* A main for the fuzz targets without libFuzzer: runs each file given (or each file of each
 * folder given) through LLVMFuzzerTestOneInput once. `make check` replays the checked-in seed
 * corpus and crash regressions this way with the ordinary compiler. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int replay_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return -1;
    }
    size_t cap = 1 << 16, len = 0;
    uint8_t *buf = malloc(cap);
    size_t n;
    while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
        len += n;
        if (len == cap)
            buf = realloc(buf, cap *= 2);
    }
    fclose(f);
    if (!buf)
        return -1;
    LLVMFuzzerTestOneInput(buf, len);
    free(buf);
    return 0;
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(int argc, char **argv)
{
    int files = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) < 0)
            continue; /* a target without regressions has no folder for them */
        if (!S_ISDIR(st.st_mode)) {
            if (replay_file(argv[i]) < 0)
                return 1;
            files++;
            continue;
        }
        /* In name order: the same order on every machine. */
        DIR *d = opendir(argv[i]);
        if (!d)
            return 1;
        char **names = NULL;
        int n = 0;
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            names = realloc(names, sizeof(*names) * (size_t)(n + 1));
            names[n++] = strdup(e->d_name);
        }
        closedir(d);
        if (n)
            qsort(names, (size_t)n, sizeof(*names), by_name);
        for (int j = 0; j < n; j++) {
            char path[4096];
            snprintf(path, sizeof(path), "%s/%s", argv[i], names[j]);
            if (replay_file(path) < 0)
                return 1;
            files++;
            free(names[j]);
        }
        free(names);
    }
    printf("replayed %d inputs\n", files);
    return 0;
}
