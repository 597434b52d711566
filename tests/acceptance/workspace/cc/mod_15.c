/* Module 15: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_15(unsigned long x) {
    unsigned long h = x ^ 15UL;
    for (int r = 0; r < 18; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 14;
    }
    return h;
}
