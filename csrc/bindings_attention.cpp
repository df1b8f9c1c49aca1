// sam_edge._C's attention functions: a thin layer over attention.h.
// sam_edge/kernels/cpu_attention.py is their interface.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "attention.h"
#include "bindings.h"

namespace sam_edge {

void bind_attention(py::module_& m) {
  py::enum_<Compute>(m, "Compute", "The precision of both products of rel_pos_attention and rel_pos_attention_qkv.")
      .value("fp32", Compute::fp32)
      .value("fp16", Compute::fp16)
      .value("bf16", Compute::bf16);

  m.def("rel_pos_attention_has_avx512", &rel_pos_attention_has_avx512,
        "Whether rel_pos_attention runs its AVX-512 path on this CPU.");
  m.def("rel_pos_attention_has_avx512_fp16", &rel_pos_attention_has_avx512_fp16,
        "Whether this CPU has AVX512-FP16, which fp16 compute needs.");
  m.def("rel_pos_attention_has_amx_bf16", &rel_pos_attention_has_amx_bf16,
        "Whether this CPU has AMX-BF16 and the OS grants the tiles, bf16 compute's first choice.");
  m.def("rel_pos_attention_has_avx512_bf16", &rel_pos_attention_has_avx512_bf16,
        "Whether this CPU has AVX512-BF16, bf16 compute's path where AMX is not.");
  m.def(
      "rel_pos_attention_fast_compute",
      [](int64_t head_dim, int64_t k_h, int64_t k_w, Compute preferred, bool avx512, bool avx512_fp16, bool amx_bf16,
         bool avx512_bf16) {
        return rel_pos_attention_fast_compute(head_dim, k_h, k_w, preferred,
                                              CpuFeatures{avx512, avx512_fp16, amx_bf16, avx512_bf16});
      },
      py::arg("head_dim"), py::arg("k_h"), py::arg("k_w"), py::arg("preferred"), py::kw_only(), py::arg("avx512"),
      py::arg("avx512_fp16"), py::arg("amx_bf16"), py::arg("avx512_bf16"),
      "The Compute a fast path of rel_pos_attention_qkv runs for head_dim and a k_h x k_w key grid on a CPU with "
      "these features: preferred, else the next down bf16 -> fp16 -> fp32; None when none of them does.");
  m.def(
      "rel_pos_attention",
      [](const py::array& q, const py::array& k, const py::array& v, const py::array& rel_h,
         const py::array& rel_w, int64_t k_h, int64_t k_w, double scale, int threads, bool force_portable, Compute compute) {
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
                                force_portable, compute);
        }
        return out;
      },
      py::arg("q"), py::arg("k"), py::arg("v"), py::arg("rel_h"), py::arg("rel_w"), py::arg("k_h"),
      py::arg("k_w"), py::arg("scale"), py::arg("threads") = 0, py::arg("force_portable") = false,
      py::arg("compute") = Compute::fp32,
      "Fused softmax(scale q k^T + rel-pos bias) v over float32 (BH, N, D) arrays; see attention.h.");

  m.def(
      "rel_pos_attention_qkv",
      [](const py::array& qkv, const py::array& rel_pos_h, const py::array& rel_pos_w, const py::object& kv_bias,
         int64_t heads, int64_t window, double scale, int threads, bool force_portable, Compute compute) {
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
                                    static_cast<float>(scale), threads, force_portable, compute);
        }
        return out;
      },
      py::arg("qkv"), py::arg("rel_pos_h"), py::arg("rel_pos_w"), py::arg("kv_bias"), py::arg("heads"),
      py::arg("window"), py::arg("scale"), py::arg("threads") = 0, py::arg("force_portable") = false,
      py::arg("compute") = Compute::fp32,
      "SAM's block attention from its qkv projection (B, H, W, 3 * heads * D) -> (B, H, W, heads * D); "
      "see attention.h.");
}

}  // namespace sam_edge
