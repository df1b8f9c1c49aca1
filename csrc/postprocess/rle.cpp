// COCO run-length encoding on column bit-planes: each 64 x 64 tile of a mask is
// packed into words and bit-transposed, so runs fall out of XOR and count-trailing-zeros.
#include "postprocess_internal.h"

namespace sam_edge {

using namespace postprocess;

namespace {

// Packs up to 64 bytes (each 0 or 1) into a word, byte i -> bit i.
inline uint64_t pack_bits(const uint8_t* p, int64_t count) {
  uint64_t word = 0;
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) {
    // For bytes that are 0 or 1 the product gathers byte k into bit 56 + k.
    word |= ((load8(p + i) * 0x0102040810204080ULL) >> 56) << i;
  }
  for (; i < count; ++i) word |= static_cast<uint64_t>(p[i] & 1) << i;
  return word;
}

// In-place transpose of a 64x64 bit matrix: bit c of a[r] <-> bit r of a[c].
inline void transpose64(uint64_t a[64]) {
  uint64_t m = 0x00000000FFFFFFFFULL;
  for (int j = 32; j != 0; j >>= 1, m ^= (m << j)) {
    for (int k = 0; k < 64; k = ((k | j) + 1) & ~j) {
      const uint64_t t = ((a[k] >> j) ^ a[k | j]) & m;
      a[k] ^= (t << j);
      a[k | j] ^= t;
    }
  }
}

// 8 bits -> 8 bytes of 0/1.
struct SpreadTable {
  uint64_t v[256];
  SpreadTable() {
    for (int b = 0; b < 256; ++b) {
      uint64_t x = 0;
      for (int i = 0; i < 8; ++i) x |= static_cast<uint64_t>((b >> i) & 1) << (8 * i);
      v[b] = x;
    }
  }
};
const SpreadTable kSpread;

// Column bit-planes of one mask: word (x, j) holds rows 64j..64j+63 of column x.
void mask_to_column_bits(const uint8_t* mask, int64_t h, int64_t w, uint64_t* cols) {
  const int64_t h64 = (h + 63) / 64, w64 = (w + 63) / 64;
  uint64_t tile[64];
  for (int64_t j = 0; j < h64; ++j) {
    const int64_t rows = std::min<int64_t>(64, h - 64 * j);
    for (int64_t k = 0; k < w64; ++k) {
      const int64_t width = std::min<int64_t>(64, w - 64 * k);
      for (int64_t r = 0; r < 64; ++r)
        tile[r] = r < rows ? pack_bits(mask + (64 * j + r) * w + 64 * k, width) : 0;
      transpose64(tile);
      for (int64_t c = 0; c < width; ++c) cols[(64 * k + c) * h64 + j] = tile[c];
    }
  }
}

void column_bits_to_mask(const uint64_t* cols, int64_t h, int64_t w, uint8_t* mask) {
  const int64_t h64 = (h + 63) / 64, w64 = (w + 63) / 64;
  uint64_t tile[64];
  for (int64_t j = 0; j < h64; ++j) {
    const int64_t rows = std::min<int64_t>(64, h - 64 * j);
    for (int64_t k = 0; k < w64; ++k) {
      const int64_t width = std::min<int64_t>(64, w - 64 * k);
      for (int64_t c = 0; c < 64; ++c) tile[c] = c < width ? cols[(64 * k + c) * h64 + j] : 0;
      transpose64(tile);
      for (int64_t r = 0; r < rows; ++r) {
        uint8_t* out = mask + (64 * j + r) * w + 64 * k;
        const uint64_t word = tile[r];
        int64_t c = 0;
        for (; c + 8 <= width; c += 8) {
          const uint64_t bytes = kSpread.v[(word >> c) & 0xFF];
          std::memcpy(out + c, &bytes, 8);
        }
        for (; c < width; ++c) out[c] = (word >> c) & 1;
      }
    }
  }
}

void encode_one(const uint8_t* mask, int64_t h, int64_t w, std::vector<uint32_t>& counts) {
  counts.clear();
  const int64_t h64 = (h + 63) / 64;
  std::vector<uint64_t> cols(static_cast<size_t>(std::max<int64_t>(1, w * h64)));
  mask_to_column_bits(mask, h, w, cols.data());
  // Walk the column-major bit stream; a run ends at every bit that differs
  // from the one before it. The stream starts in state 0, so a mask whose
  // first pixel is set begins with a zero-length run, as pycocotools does.
  int64_t pos = 0, run_start = 0;
  uint64_t current = 0;
  for (int64_t x = 0; x < w; ++x) {
    for (int64_t j = 0; j < h64; ++j) {
      const int64_t nbits = std::min<int64_t>(64, h - 64 * j);
      const uint64_t valid = nbits == 64 ? ~0ULL : ((1ULL << nbits) - 1);
      const uint64_t word = cols[x * h64 + j] & valid;
      uint64_t changes = (word ^ ((word << 1) | current)) & valid;
      while (changes) {
        const int64_t at = pos + ctz64(changes);
        counts.push_back(static_cast<uint32_t>(at - run_start));
        run_start = at;
        changes &= changes - 1;
      }
      current = (word >> (nbits - 1)) & 1;
      pos += nbits;
    }
  }
  counts.push_back(static_cast<uint32_t>(pos - run_start));
}

// Sets bits [y0, y1) of column x.
inline void set_column_range(uint64_t* cols, int64_t h64, int64_t x, int64_t y0, int64_t y1) {
  uint64_t* col = cols + x * h64;
  while (y0 < y1) {
    const int64_t j = y0 >> 6, b = y0 & 63;
    const int64_t n = std::min<int64_t>(64 - b, y1 - y0);
    const uint64_t bits = n == 64 ? ~0ULL : (((1ULL << n) - 1) << b);
    col[j] |= bits;
    y0 += n;
  }
}

}  // namespace

void rle_encode(const uint8_t* masks, int64_t n, int64_t h, int64_t w,
                std::vector<std::vector<uint32_t>>& counts) {
  counts.assign(n, {});
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && worth_parallel(n * h * w))
  for (int64_t i = 0; i < n; ++i) encode_one(masks + i * h * w, h, w, counts[i]);
}

bool rle_decode(const uint32_t* counts, int64_t m, int64_t h, int64_t w, uint8_t* mask) {
  int64_t total = 0;
  for (int64_t i = 0; i < m; ++i) total += counts[i];
  if (total != h * w) return false;
  const int64_t h64 = (h + 63) / 64;
  std::vector<uint64_t> cols(static_cast<size_t>(std::max<int64_t>(1, w * h64)), 0);
  int64_t pos = 0;
  for (int64_t i = 0; i < m; ++i) {
    const int64_t end = pos + counts[i];
    if (i & 1) {  // odd runs are ones
      int64_t p = pos;
      while (p < end) {
        const int64_t x = p / h, y = p % h;
        const int64_t y1 = std::min<int64_t>(h, y + (end - p));
        set_column_range(cols.data(), h64, x, y, y1);
        p += y1 - y;
      }
    }
    pos = end;
  }
  column_bits_to_mask(cols.data(), h, w, mask);
  return true;
}

std::string rle_to_string(const uint32_t* counts, int64_t m) {
  std::string s;
  s.reserve(static_cast<size_t>(m) * 2);
  for (int64_t i = 0; i < m; ++i) {
    // pycocotools stores count i as a difference from count i - 2, from i = 3 on.
    int64_t x = counts[i];
    if (i > 2) x -= counts[i - 2];
    bool more = true;
    while (more) {
      char c = static_cast<char>(x & 0x1f);
      x >>= 5;  // arithmetic: negative differences keep their sign
      more = (c & 0x10) ? x != -1 : x != 0;
      if (more) c |= 0x20;
      s.push_back(static_cast<char>(c + 48));
    }
  }
  return s;
}

bool rle_from_string(const char* s, int64_t len, std::vector<uint32_t>& counts) {
  counts.clear();
  int64_t p = 0;
  while (p < len) {
    int64_t x = 0;
    int k = 0;
    bool more = true;
    while (more) {
      if (p >= len || k >= 12) return false;
      const int c = static_cast<unsigned char>(s[p]) - 48;
      if (c < 0 || c > 63) return false;
      x |= static_cast<int64_t>(c & 0x1f) << (5 * k);
      more = (c & 0x20) != 0;
      ++p;
      ++k;
      if (!more && (c & 0x10)) x |= -(static_cast<int64_t>(1) << (5 * k));
    }
    const size_t m = counts.size();
    if (m > 2) x += counts[m - 2];
    if (x < 0 || x > static_cast<int64_t>(std::numeric_limits<uint32_t>::max())) return false;
    counts.push_back(static_cast<uint32_t>(x));
  }
  return true;
}

}  // namespace sam_edge
