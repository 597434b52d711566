/* Chains every module and prints the result. */
#include <stdio.h>
#include "mod.h"

int main(void) {
    unsigned long (*const fns[])(unsigned long) = {
        mod_00, mod_01, mod_02, mod_03, mod_04, mod_05, mod_06, mod_07,
        mod_08, mod_09, mod_10, mod_11, mod_12, mod_13, mod_14, mod_15,
    };
    unsigned long x = 42;
    for (unsigned i = 0; i < sizeof fns / sizeof fns[0]; i++) {
        x = fns[i](x);
        printf("step %2u: %016lx\n", i, x);
    }
    return 0;
}
