#include <stdio.h>

/* Swift 6 cannot name glibc's `stdout` (a mutable global); C can. Line-buffered standard output
   shows each line as it is printed when it is piped (`| tee log`), and a killed run leaves its
   lines. */
static inline void cohort_line_buffer_standard_output(void) { setvbuf(stdout, NULL, _IOLBF, 0); }
