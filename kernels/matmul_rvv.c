// placeholder
#include "quants.h"
void lz_init_rvv(lz_kernels *k) { (void)k; }
