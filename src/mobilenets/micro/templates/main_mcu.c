/* Runs the sample inputs of mn_inputs.c on a Cortex-M under QEMU (semihosting printf).
 * Prints one line per input: "out <i>: <int8 outputs>", then
 * "ticks <SysTick ticks of the first @p@infer>" and "stack <bytes @p@infer used>".
 * Under `qemu-system-arm -icount shift=0` SysTick ticks once per 40 instructions. */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "model.h"

extern const int8_t @p@test_inputs[];
extern const int @p@num_test_inputs;
extern volatile uint32_t mn_systick_wraps;

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define MN_PAINT 0xA5C3E1F7u
#define MN_PAINT_WORDS 4096u /* 16 KB below the caller's frame */

static int8_t output[@P@OUTPUT_BYTES];

static uintptr_t painted_bottom;

static uintptr_t stack_pointer(void)
{
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* Fills 16 KB below this function's frame with a pattern. */
__attribute__((noinline)) static void paint(void)
{
    const uintptr_t top = (stack_pointer() - 64u) & ~(uintptr_t)3u;
    uint32_t i;
    for (i = 0; i < MN_PAINT_WORDS; ++i) *(volatile uint32_t *)(top - 4u * i) = MN_PAINT;
    painted_bottom = top - 4u * (MN_PAINT_WORDS - 1u);
}

/* Bytes from ``top`` down to the lowest word no longer holding the pattern. */
static uint32_t stack_used(uintptr_t top)
{
    uint32_t i = 0;
    while (i < MN_PAINT_WORDS && *(volatile uint32_t *)(painted_bottom + 4u * i) == MN_PAINT) ++i;
    return (uint32_t)(top - (painted_bottom + 4u * i));
}

__attribute__((noinline)) static uint32_t measured_run(const int8_t *in, uint64_t *ticks)
{
    const uintptr_t top = stack_pointer();
    uint32_t w0, c0, w1, c1;
    paint();
    SYST_RVR = 0xFFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7; /* enable, interrupt on wrap, processor clock */
    while (SYST_CVR == 0) {
    } /* the first tick loads RVR */
    w0 = mn_systick_wraps;
    c0 = SYST_CVR;
    (void)@p@infer(in, output);
    c1 = SYST_CVR;
    w1 = mn_systick_wraps;
    SYST_CSR = 0;
    *ticks = (uint64_t)(w1 - w0) * 0x1000000u + c0 - c1;
    /* the stack used below this frame (includes a few words of it) */
    return stack_used(top);
}

int main(void)
{
    uint64_t ticks = 0;
    uint32_t stack = 0;
    int n, i;
    for (n = 0; n < @p@num_test_inputs; ++n) {
        const int8_t *in = @p@test_inputs + (size_t)n * (size_t)@P@INPUT_BYTES;
        if (n == 0) {
            stack = measured_run(in, &ticks);
        } else if (@p@infer(in, output) != 0) {
            return 1;
        }
        printf("out %d:", n);
        for (i = 0; i < @P@OUTPUT_BYTES; ++i) printf(" %d", output[i]);
        printf("\n");
    }
    printf("ticks %llu\n", (unsigned long long)ticks);
    printf("stack %lu\n", (unsigned long)stack);
    return 0;
}
