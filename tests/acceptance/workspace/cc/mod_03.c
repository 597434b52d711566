/* Module 03: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_03(unsigned long x) {
    unsigned long h = x ^ 3UL;
    for (int r = 0; r < 6; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 16;
    }
    return h;
}
