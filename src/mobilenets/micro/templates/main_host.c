/* Host driver: `mn_host` reads int8 inputs (@P@INPUT_BYTES each) from stdin and writes the int8
 * outputs to stdout; `mn_host --bench N` times N inferences of the first sample input.
 * A partial trailing input, an empty stdin, a read or write error or a bad N: a message on
 * stderr and a non-zero exit status. */
#define _POSIX_C_SOURCE 199309L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

#define MN_BENCH_MAX 1000000000L

extern const int8_t @p@test_inputs[];

static int8_t out[@P@OUTPUT_BYTES];

static int bench(const char *arg)
{
    char *end = NULL;
    long n, i;
    struct timespec t0, t1;
    double ns;
    errno = 0;
    n = strtol(arg, &end, 10);
    if (errno != 0 || end == arg || *end != '\0' || n < 1 || n > MN_BENCH_MAX) {
        fprintf(stderr, "mn_host: --bench N needs a whole number 1..%ld, got '%s'\n",
                MN_BENCH_MAX, arg);
        return 2;
    }
    if (@p@infer(@p@test_inputs, out) != 0) return 1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (i = 0; i < n; ++i) {
        if (@p@infer(@p@test_inputs, out) != 0) return 1;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ns = (double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec);
    printf("%.1f us per inference\n", ns / 1e3 / (double)n);
    return fflush(stdout) == 0 && !ferror(stdout) ? 0 : 1;
}

static int stream(void)
{
    static int8_t in[@P@INPUT_BYTES];
    unsigned long count = 0;
    size_t got;
    for (;;) {
        got = fread(in, 1, @P@INPUT_BYTES, stdin);
        if (got < (size_t)@P@INPUT_BYTES) break;
        if (@p@infer(in, out) != 0) {
            fprintf(stderr, "mn_host: inference failed on input %lu\n", count);
            return 1;
        }
        if (fwrite(out, 1, @P@OUTPUT_BYTES, stdout) != (size_t)@P@OUTPUT_BYTES) break;
        ++count;
    }
    if (ferror(stdin)) {
        fprintf(stderr, "mn_host: read error on stdin: %s\n", strerror(errno));
        return 1;
    }
    if (got > 0 && got < (size_t)@P@INPUT_BYTES) {
        fprintf(stderr, "mn_host: %lu trailing bytes after %lu inputs: not a whole input of %d bytes\n",
                (unsigned long)got, count, @P@INPUT_BYTES);
        return 1;
    }
    if (fflush(stdout) != 0 || ferror(stdout)) {
        fprintf(stderr, "mn_host: write error on stdout: %s\n", strerror(errno));
        return 1;
    }
    if (count == 0) {
        fprintf(stderr, "mn_host: no input on stdin (%d bytes per input)\n", @P@INPUT_BYTES);
        return 1;
    }
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--bench") == 0) return bench(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: mn_host < inputs.bin > outputs.bin | mn_host --bench N\n");
        return 2;
    }
    return stream();
}
