// pybind11 module sam_edge._C: a thin layer over postprocess.h.
//
// The Python package (sam_edge/postprocess) validates user input and hands
// these functions C-contiguous arrays of the right dtype; the checks here only
// guard memory safety, and raise ValueError (std::invalid_argument).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#include "attention.h"
#include "postprocess.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;
using namespace sam_edge;

namespace {

// A C-contiguous array of one-byte bools or uint8 holding 0/1.
const uint8_t* byte_data(const py::array& a, int ndim, const char* name) {
  const char kind = a.dtype().kind();
  if (!((kind == 'b' || kind == 'u') && a.itemsize() == 1))
    throw std::invalid_argument(std::string(name) + " must be bool or uint8, got dtype " +
                                std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) +
                                " dimensions, got " + std::to_string(a.ndim()));
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  return static_cast<const uint8_t*>(a.data());
}

template <typename T>
const T* typed_data(const py::array& a, int ndim, const char* name) {
  if (!py::isinstance<py::array_t<T>>(a))
    throw std::invalid_argument(std::string(name) + " has dtype " + std::string(py::str(a.dtype())) +
                                ", expected " + std::string(py::str(py::dtype::of<T>())));
  if (a.ndim() != ndim)
    throw std::invalid_argument(std::string(name) + " must have " + std::to_string(ndim) +
                                " dimensions, got " + std::to_string(a.ndim()));
  if (!(a.flags() & py::array::c_style))
    throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  return static_cast<const T*>(a.data());
}

py::array_t<bool> new_bool(std::vector<py::ssize_t> shape) { return py::array_t<bool>(shape); }

// OpenMP aborts the process when it cannot start a team, so an absurd thread
// count is refused here; below 1 means all cores.
constexpr int kMaxThreads = 1024;

int checked_threads(int threads) {
  if (threads > kMaxThreads)
    throw std::invalid_argument("threads must be at most " + std::to_string(kMaxThreads) + " (0 for all cores), got " +
                                std::to_string(threads));
  return threads;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "sam-edge compiled post-processing (CPU). Use sam_edge.postprocess, not this module.";

  m.def("num_threads", &max_threads, "Threads the kernels use (1 when built without OpenMP).");
  m.def(
      "set_num_threads",
      [](int threads) {
        if (threads < 1) throw std::invalid_argument("threads must be >= 1");
        checked_threads(threads);
#ifdef _OPENMP
        omp_set_num_threads(threads);
#endif
      },
      py::arg("threads"));
  m.attr("openmp") =
#ifdef _OPENMP
      true;
#else
      false;
#endif

  m.def("rel_pos_attention_has_avx512", &rel_pos_attention_has_avx512,
        "Whether rel_pos_attention runs its AVX-512 path on this CPU.");
  m.def("rel_pos_attention_has_avx512_fp16", &rel_pos_attention_has_avx512_fp16,
        "Whether this CPU has AVX512-FP16, which rel_pos_attention(fp16=True) needs.");
  m.def("rel_pos_attention_has_amx_bf16", &rel_pos_attention_has_amx_bf16,
        "Whether this CPU has AMX-BF16 and the OS grants the tiles, which rel_pos_attention_qkv(bf16=True) needs.");
  m.def(
      "rel_pos_attention",
      [](const py::array& q, const py::array& k, const py::array& v, const py::array& rel_h,
         const py::array& rel_w, int64_t k_h, int64_t k_w, double scale, int threads, bool force_portable, bool fp16) {
        checked_threads(threads);
        const float* qp = typed_data<float>(q, 3, "q");
        const float* kp = typed_data<float>(k, 3, "k");
        const float* vp = typed_data<float>(v, 3, "v");
        const float* hp = typed_data<float>(rel_h, 3, "rel_h");
        const float* wp = typed_data<float>(rel_w, 3, "rel_w");
        const int64_t bh = q.shape(0), n = q.shape(1), d = q.shape(2);
        auto same = [](const py::array& a, std::vector<int64_t> shape) {
          for (size_t i = 0; i < shape.size(); ++i)
            if (a.shape(i) != shape[i]) return false;
          return true;
        };
        if (!same(k, {bh, k_h * k_w, d}) || !same(v, {bh, k_h * k_w, d}) || !same(rel_h, {bh, n, k_h}) ||
            !same(rel_w, {bh, n, k_w}))
          throw std::invalid_argument(
              "rel_pos_attention: expected k, v (BH, k_h*k_w, D), rel_h (BH, N, k_h), rel_w (BH, N, k_w) "
              "for q (BH, N, D)");
        py::array_t<float> out({bh, n, d});
        float* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          rel_pos_attention_cpu(qp, kp, vp, hp, wp, op, bh, n, k_h, k_w, d, static_cast<float>(scale), threads,
                                force_portable, fp16);
        }
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("rel_h"), py::arg("rel_w"), py::arg("k_h"),
      py::arg("k_w"), py::arg("scale"), py::arg("threads") = 0, py::arg("force_portable") = false, py::arg("fp16") = false,
      "Fused softmax(scale q k^T + rel-pos bias) v over float32 (BH, N, D) arrays; see attention.h.");

  m.def(
      "rel_pos_attention_qkv",
      [](const py::array& qkv, const py::array& rel_pos_h, const py::array& rel_pos_w, const py::object& kv_bias,
         int64_t heads, int64_t window, double scale, int threads, bool force_portable, bool fp16, bool bf16) {
        checked_threads(threads);
        const float* xp = typed_data<float>(qkv, 4, "qkv");
        const float* hp = typed_data<float>(rel_pos_h, 2, "rel_pos_h");
        const float* wp = typed_data<float>(rel_pos_w, 2, "rel_pos_w");
        const int64_t b = qkv.shape(0), height = qkv.shape(1), width = qkv.shape(2);
        if (heads < 1 || window < 0 || heads > qkv.shape(3) || qkv.shape(3) % (3 * heads) != 0)
          throw std::invalid_argument("rel_pos_attention_qkv: qkv's last axis must be 3 * heads * head_dim "
                                      "(heads >= 1, window >= 0)");
        // A window past the grid only adds padded keys (a window of 1000 over 20 x 20
        // tokens is 10^6 keys per window); no SAM block has one.
        if (window > std::max(height, width))
          throw std::invalid_argument("rel_pos_attention_qkv: window " + std::to_string(window) +
                                      " is larger than the " + std::to_string(height) + " x " +
                                      std::to_string(width) + " grid");
        const int64_t d = qkv.shape(3) / (3 * heads);
        const int64_t s_h = window > 0 ? window : height, s_w = window > 0 ? window : width;
        if (rel_pos_h.shape(0) != 2 * s_h - 1 || rel_pos_h.shape(1) != d || rel_pos_w.shape(0) != 2 * s_w - 1 ||
            rel_pos_w.shape(1) != d)
          throw std::invalid_argument("rel_pos_attention_qkv: expected rel_pos_h (2 * s_h - 1, D) and rel_pos_w "
                                      "(2 * s_w - 1, D), s the window (or the grid when window is 0)");
        const float* bp = nullptr;
        py::array bias;
        if (!kv_bias.is_none()) {
          bias = py::array::ensure(kv_bias);
          if (!bias) throw std::invalid_argument("rel_pos_attention_qkv: kv_bias must be an array");
          bp = typed_data<float>(bias, 3, "kv_bias");
          if (bias.shape(0) != 2 || bias.shape(1) != heads || bias.shape(2) != d)
            throw std::invalid_argument("rel_pos_attention_qkv: expected kv_bias (2, heads, D)");
        }
        py::array_t<float> out({b, height, width, heads * d});
        float* op = out.mutable_data();
        {
          py::gil_scoped_release release;
          rel_pos_attention_qkv_cpu(xp, hp, wp, bp, op, b, height, width, heads, d, window,
                                    static_cast<float>(scale), threads, force_portable, fp16, bf16);
        }
        return out;
      },
      py::arg("qkv"), py::arg("rel_pos_h"), py::arg("rel_pos_w"), py::arg("kv_bias"), py::arg("heads"),
      py::arg("window"), py::arg("scale"), py::arg("threads") = 0, py::arg("force_portable") = false,
      py::arg("fp16") = false, py::arg("bf16") = false,
      "SAM's block attention from its qkv projection (B, H, W, 3 * heads * D) -> (B, H, W, heads * D); "
      "see attention.h.");

  m.def(
      "rle_encode",
      [](const py::array& masks) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        std::vector<std::vector<uint32_t>> counts;
        {
          py::gil_scoped_release release;
          rle_encode(data, n, h, w, counts);
        }
        py::list out;
        for (auto& c : counts) out.append(py::array_t<uint32_t>(c.size(), c.data()));
        return out;
      },
      py::arg("masks"), "(N, H, W) masks -> N uint32 arrays of column-major run lengths.");

  m.def(
      "rle_encode_strings",
      [](const py::array& masks) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        std::vector<std::vector<uint32_t>> counts;
        std::vector<std::string> strings(n);
        {
          py::gil_scoped_release release;
          rle_encode(data, n, h, w, counts);
          for (int64_t i = 0; i < n; ++i)
            strings[i] = rle_to_string(counts[i].data(), static_cast<int64_t>(counts[i].size()));
        }
        py::list out;
        for (auto& s : strings) out.append(py::bytes(s));
        return out;
      },
      py::arg("masks"), "(N, H, W) masks -> N pycocotools compressed RLE strings (bytes).");

  m.def(
      "rle_decode",
      [](const py::list& counts_list, int64_t h, int64_t w) {
        const int64_t n = static_cast<int64_t>(counts_list.size());
        std::vector<py::array_t<uint32_t>> counts;
        for (auto item : counts_list) {
          counts.push_back(py::array_t<uint32_t, py::array::c_style | py::array::forcecast>::ensure(item));
          if (!counts.back()) throw std::invalid_argument("counts must be arrays of uint32");
          if (counts.back().ndim() != 1) throw std::invalid_argument("counts must be 1-D");
        }
        auto out = new_bool({n, h, w});
        uint8_t* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
        std::vector<const uint32_t*> ptrs;
        std::vector<int64_t> lens;
        for (auto& c : counts) {
          ptrs.push_back(c.data());
          lens.push_back(c.shape(0));
        }
        int64_t bad = -1;
        {
          py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && worth_parallel(n * h * w))
          for (int64_t i = 0; i < n; ++i)
            if (!rle_decode(ptrs[i], lens[i], h, w, dst + i * h * w)) {
#pragma omp critical
              bad = (bad < 0 || i < bad) ? i : bad;
            }
        }
        if (bad >= 0)
          throw std::invalid_argument("RLE " + std::to_string(bad) + ": run lengths do not sum to h * w = " +
                                      std::to_string(h * w));
        return out;
      },
      py::arg("counts"), py::arg("h"), py::arg("w"),
      "N uint32 run-length arrays -> (N, H, W) bool masks.");

  m.def(
      "counts_to_string",
      [](const py::array& counts) {
        const uint32_t* c = typed_data<uint32_t>(counts, 1, "counts");
        return py::bytes(rle_to_string(c, counts.shape(0)));
      },
      py::arg("counts"), "uint32 run lengths -> pycocotools compressed string (bytes).");

  m.def(
      "string_to_counts",
      [](const py::bytes& s) {
        std::string str = s;
        std::vector<uint32_t> counts;
        if (!rle_from_string(str.data(), static_cast<int64_t>(str.size()), counts))
          throw std::invalid_argument(
              "malformed compressed RLE string: expected characters '0'..'o' encoding "
              "non-negative 32-bit run lengths");
        return py::array_t<uint32_t>(counts.size(), counts.data());
      },
      py::arg("string"), "pycocotools compressed string -> uint32 run lengths.");

  m.def(
      "masks_to_boxes",
      [](const py::array& masks) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        py::array_t<int64_t> boxes({n, static_cast<int64_t>(4)});
        int64_t* out = boxes.mutable_data();
        {
          py::gil_scoped_release release;
          masks_to_boxes(data, n, h, w, out);
        }
        return boxes;
      },
      py::arg("masks"), "(N, H, W) masks -> (N, 4) int64 XYXY boxes; empty -> 0s.");

  m.def(
      "stability_scores",
      [](const py::array& logits, double hi, double lo) {
        const float* data = typed_data<float>(logits, 2, "logits");
        const int64_t n = logits.shape(0), hw = logits.shape(1);
        py::array_t<float> scores(n);
        float* out = scores.mutable_data();
        const float hi32 = static_cast<float>(hi), lo32 = static_cast<float>(lo);
        {
          py::gil_scoped_release release;
          stability_scores(data, n, hw, hi32, lo32, out);
        }
        return scores;
      },
      py::arg("logits"), py::arg("hi"), py::arg("lo"),
      "(N, H*W) float32 logits -> (N,) float32 count(> hi) / count(> lo).");

  m.def(
      "connected_components",
      [](const py::array& mask, int value) {
        const uint8_t* data = byte_data(mask, 2, "mask");
        const int64_t h = mask.shape(0), w = mask.shape(1);
        py::array_t<int32_t> labels({h, w});
        int32_t* out = labels.mutable_data();
        std::vector<int64_t> areas;
        {
          py::gil_scoped_release release;
          connected_components(data, h, w, static_cast<uint8_t>(value != 0), out, areas);
        }
        return py::make_tuple(labels, py::array_t<int64_t>(areas.size(), areas.data()));
      },
      py::arg("mask"), py::arg("value") = 1,
      "8-connected components of the pixels equal to value -> (labels int32 (H, W), areas int64).");

  m.def(
      "remove_small_regions",
      [](const py::array& masks, double area_thresh, bool holes) {
        const uint8_t* data = byte_data(masks, 3, "masks");
        const int64_t n = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
        auto out = new_bool({n, h, w});
        auto changed = py::array_t<bool>(n);
        uint8_t* dst = reinterpret_cast<uint8_t*>(out.mutable_data());
        bool* flags = changed.mutable_data();
        {
          py::gil_scoped_release release;
#pragma omp parallel for schedule(dynamic, 1) if (n > 1 && worth_parallel(2 * n * h * w))
          for (int64_t i = 0; i < n; ++i)
            flags[i] = remove_small_regions(data + i * h * w, h, w, area_thresh, holes, dst + i * h * w);
        }
        return py::make_tuple(out, changed);
      },
      py::arg("masks"), py::arg("area_thresh"), py::arg("holes"),
      "(N, H, W) masks -> ((N, H, W) bool, (N,) bool changed), as amg.remove_small_regions.");

  m.def(
      "batched_nms",
      [](const py::array& boxes, const py::array& scores, const py::array& categories,
         double iou_threshold, bool offset_trick) {
        const float* b = typed_data<float>(boxes, 2, "boxes");
        const float* s = typed_data<float>(scores, 1, "scores");
        const int64_t* c = typed_data<int64_t>(categories, 1, "categories");
        const int64_t n = boxes.shape(0);
        if (boxes.shape(1) != 4 || scores.shape(0) != n || categories.shape(0) != n)
          throw std::invalid_argument("boxes (N, 4), scores (N,) and categories (N,) must agree");
        std::vector<int64_t> keep(n);
        int64_t kept;
        {
          py::gil_scoped_release release;
          kept = batched_nms(b, s, c, n, iou_threshold, offset_trick, keep.data());
        }
        return py::array_t<int64_t>(kept, keep.data());
      },
      py::arg("boxes"), py::arg("scores"), py::arg("categories"), py::arg("iou_threshold"),
      py::arg("offset_trick"), "Greedy NMS within categories -> kept indices, best first.");

  m.def(
      "upsample_threshold_stability",
      [](const py::array& low_res, std::pair<int64_t, int64_t> frame, std::pair<int64_t, int64_t> crop,
         std::pair<int64_t, int64_t> out_size, double threshold, double hi, double lo, bool want_masks,
         bool want_logits) {
        const float* src = typed_data<float>(low_res, 3, "low_res");
        UpsampleGeometry g{low_res.shape(1), low_res.shape(2), frame.first, frame.second,
                           crop.first,       crop.second,       out_size.first, out_size.second};
        if (g.in_h < 1 || g.in_w < 1 || g.crop_h < 1 || g.crop_w < 1 || g.crop_h > g.frame_h ||
            g.crop_w > g.frame_w || g.out_h < 1 || g.out_w < 1)
          throw std::invalid_argument("invalid geometry");
        const int64_t n = low_res.shape(0);
        py::object masks = py::none(), logits = py::none();
        uint8_t* mask_ptr = nullptr;
        float* logit_ptr = nullptr;
        if (want_masks) {
          auto a = new_bool({n, g.out_h, g.out_w});
          mask_ptr = reinterpret_cast<uint8_t*>(a.mutable_data());
          masks = a;
        }
        if (want_logits) {
          auto a = py::array_t<float>({n, g.out_h, g.out_w});
          logit_ptr = a.mutable_data();
          logits = a;
        }
        py::array_t<float> stability(n);
        py::array_t<int64_t> boxes({n, static_cast<int64_t>(4)});
        float* st = stability.mutable_data();
        int64_t* bx = boxes.mutable_data();
        {
          py::gil_scoped_release release;
          upsample_threshold_stability(src, n, g, static_cast<float>(threshold), static_cast<float>(hi),
                                       static_cast<float>(lo), mask_ptr, logit_ptr, st, bx);
        }
        return py::make_tuple(masks, logits, stability, boxes);
      },
      py::arg("low_res"), py::arg("frame"), py::arg("crop"), py::arg("out_size"), py::arg("threshold"),
      py::arg("hi"), py::arg("lo"), py::arg("want_masks") = true, py::arg("want_logits") = false,
      "(N, h, w) float32 low-res logits -> (masks, logits, stability, boxes); see "
      "sam_edge.postprocess.upsample_threshold_stability.");
}
