/* Host driver: `mn_host` reads int8 inputs (MN_INPUT_BYTES each) from stdin and writes the int8
 * outputs to stdout; `mn_host --bench N` times N inferences of the first sample input. */
#define _POSIX_C_SOURCE 199309L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

extern const int8_t mn_test_inputs[];

int main(int argc, char **argv)
{
    static int8_t in[MN_INPUT_BYTES], out[MN_OUTPUT_BYTES];
    if (argc == 3 && strcmp(argv[1], "--bench") == 0) {
        const long n = atol(argv[2]);
        struct timespec t0, t1;
        long i;
        mn_infer(mn_test_inputs, out);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (i = 0; i < n; ++i) mn_infer(mn_test_inputs, out);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("%.1f us per inference\n",
               ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3 / (n ? n : 1));
        return 0;
    }
    while (fread(in, 1, MN_INPUT_BYTES, stdin) == MN_INPUT_BYTES) {
        if (mn_infer(in, out) != 0) return 1;
        if (fwrite(out, 1, MN_OUTPUT_BYTES, stdout) != MN_OUTPUT_BYTES) return 1;
    }
    return 0;
}
