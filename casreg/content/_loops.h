/* What the codecs' C loops (_planes_c.c, _delta_c.c) share: the headers they include and
 * LOOP, which marks a loop to be compiled twice on x86-64 Linux, for AVX2 and for the
 * baseline, the processor picking at load time (target_clones: the AVX2 build was twice as
 * fast here, docs/benchmarks-codec.md); elsewhere, once. setup.py lists this file in each
 * extension's depends, so that an sdist ships it. */
#ifndef CASREG_LOOPS_H
#define CASREG_LOOPS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define LOOP __attribute__((target_clones("avx2", "default")))
#else
#define LOOP
#endif

#endif
