/* Module 13: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_13(unsigned long x) {
    unsigned long h = x ^ 13UL;
    for (int r = 0; r < 16; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 19;
    }
    return h;
}
