/* Module 02: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_02(unsigned long x) {
    unsigned long h = x ^ 2UL;
    for (int r = 0; r < 5; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 15;
    }
    return h;
}
