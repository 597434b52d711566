/* Module 12: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_12(unsigned long x) {
    unsigned long h = x ^ 12UL;
    for (int r = 0; r < 15; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 18;
    }
    return h;
}
