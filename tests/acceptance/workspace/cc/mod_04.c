/* Module 04: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_04(unsigned long x) {
    unsigned long h = x ^ 4UL;
    for (int r = 0; r < 7; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 17;
    }
    return h;
}
