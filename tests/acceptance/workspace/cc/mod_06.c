/* Module 06: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_06(unsigned long x) {
    unsigned long h = x ^ 6UL;
    for (int r = 0; r < 9; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 19;
    }
    return h;
}
