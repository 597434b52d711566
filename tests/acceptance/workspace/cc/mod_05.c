/* Module 05: a small deterministic mixing function. */
#include "mod.h"

unsigned long mod_05(unsigned long x) {
    unsigned long h = x ^ 5UL;
    for (int r = 0; r < 8; r++) {
        h = h * 6364136223846793005UL + 1442695040888963407UL;
        h ^= h >> 18;
    }
    return h;
}
