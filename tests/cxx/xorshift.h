/* The fuzz harnesses' random numbers (the .c files beside it): xorshift, reproducible from the
 * seed put in `rng` (not 0). */
#include <stdint.h>

static uint32_t rng;
static uint32_t rnd(void) {
    rng ^= rng << 13;
    rng ^= rng >> 17;
    rng ^= rng << 5;
    return rng;
}
