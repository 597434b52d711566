/* Module 10: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_10(unsigned long x) {
    unsigned long h = x ^ 10UL;
    for (int r = 0; r < 13; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 16;
    }
    return h;
}
