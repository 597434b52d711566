/* Module 00: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_00(unsigned long x) {
    unsigned long h = x ^ 0UL;
    for (int r = 0; r < 3; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 13;
    }
    return h;
}
