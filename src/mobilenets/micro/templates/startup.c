/* Minimal Cortex-M startup for QEMU's mps2/mps3 boards (newlib's crt0 faults there). */
#include <stdint.h>
#include <stdlib.h>

extern uint32_t __data_load__, __data_start__, __data_end__, __bss_start__,
    __bss_end__;
/* the linker script's stack top, declared as a function so that the vector table needs no
 * object-to-function pointer conversion (ISO C has none) */
extern void __stack_top(void);
extern int main(void);
extern void initialise_monitor_handles(void);
extern void __libc_init_array(void);
void _init(void);
void _fini(void);
void _init(void) {}
void _fini(void) {}

void Reset_Handler(void);
void Fault_Handler(void);
void SysTick_Handler(void);
volatile uint32_t mn_systick_wraps;

void Reset_Handler(void)
{
    uint32_t *src = &__data_load__, *dst = &__data_start__;
    while (dst < &__data_end__) *dst++ = *src++;
    for (dst = &__bss_start__; dst < &__bss_end__;) *dst++ = 0;
#if defined(__ARM_FP)
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20; /* CPACR: CP10, CP11 full access */
#endif
    initialise_monitor_handles();
    __libc_init_array();
    exit(main());
}

void Fault_Handler(void) { exit(99); }
void SysTick_Handler(void) { mn_systick_wraps++; }

__attribute__((section(".vectors"), used)) static void (*const vectors[16])(void) = {
    __stack_top, Reset_Handler, Fault_Handler, Fault_Handler,
    Fault_Handler, Fault_Handler, Fault_Handler, 0, 0, 0, 0, Fault_Handler, Fault_Handler, 0,
    Fault_Handler, SysTick_Handler,
};
