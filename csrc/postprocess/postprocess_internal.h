// Internals shared by the CPU post-processing kernels (csrc/postprocess/*.cpp):
// the byte scans over mask rows. Not a public header: csrc/postprocess.h is.
//
// Built with -ffp-contract=off: several ops must reproduce another library's
// float32 arithmetic operation by operation, and a fused multiply-add would
// round differently.
#pragma once

#include "postprocess.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#ifdef _OPENMP
#include <omp.h>
#endif

// Byte scans read eight mask bytes as one word and count trailing zeros.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the byte-scanning kernels assume little-endian words");

// A named namespace rather than an anonymous one: these are shared between
// translation units; -fvisibility=hidden keeps them out of the module's exports.
namespace sam_edge {
namespace postprocess {

constexpr uint64_t kOnes = 0x0101010101010101ULL;  // eight bytes holding 1

inline uint64_t load8(const uint8_t* p) {
  uint64_t x;
  std::memcpy(&x, p, 8);
  return x;
}

inline int ctz64(uint64_t x) { return __builtin_ctzll(x); }
inline int clz64(uint64_t x) { return __builtin_clzll(x); }

// First index in [i, end) whose byte equals v (0 or 1), or end.
inline int64_t find_byte(const uint8_t* row, int64_t i, int64_t end, uint8_t v) {
  const uint64_t other = v ? 0 : kOnes;  // eight bytes that all differ from v
  while (i + 8 <= end) {
    const uint64_t x = load8(row + i) ^ other;
    if (x) return i + (ctz64(x) >> 3);
    i += 8;
  }
  while (i < end && row[i] != v) ++i;
  return i;
}

// Last index in [begin, end) holding a nonzero byte, or begin - 1.
inline int64_t rfind_nonzero(const uint8_t* row, int64_t begin, int64_t end) {
  int64_t i = end;
  while (i - 8 >= begin) {
    const uint64_t x = load8(row + i - 8);
    if (x) return i - 8 + ((63 - clz64(x)) >> 3);
    i -= 8;
  }
  while (i > begin && row[i - 1] == 0) --i;
  return i - 1;
}

}  // namespace postprocess
}  // namespace sam_edge
