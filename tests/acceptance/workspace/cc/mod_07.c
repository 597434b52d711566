/* Module 07: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_07(unsigned long x) {
    unsigned long h = x ^ 7UL;
    for (int r = 0; r < 10; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 13;
    }
    return h;
}
