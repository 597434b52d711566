/* Module 11: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_11(unsigned long x) {
    unsigned long h = x ^ 11UL;
    for (int r = 0; r < 14; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 17;
    }
    return h;
}
