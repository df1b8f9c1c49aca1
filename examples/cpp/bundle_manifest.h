// The part of a sam-edge bundle's manifest.json that sam_edge_example reads:
// which files are the encoder (the standard-op graph, and the one graph with
// sam_edge_ops' nodes when the bundle has it) and the decoder, and the sizes the
// feeds need. Header-only, so the example stays one translation unit.
#pragma once

#include <sys/stat.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <stdexcept>
#include <string>
#include <utility>

namespace sam_edge_example {

// The example's one error type: main prints its message as one line.
struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A strict reader of the one manifest form sam-edge writes: objects, arrays,
// strings, numbers and literals, walked so that a key is only ever matched at
// the level asked for.
class Json {
 public:
  explicit Json(std::string text) : text_(std::move(text)) {}

  // The members of the object at `at`: key -> [start, end) of its raw value.
  std::map<std::string, std::pair<size_t, size_t>> members(size_t at) const {
    std::map<std::string, std::pair<size_t, size_t>> out;
    size_t i = skip_space(at);
    expect(i, '{');
    i = skip_space(i + 1);
    if (peek(i) == '}') return out;
    while (true) {
      std::string key;
      i = skip_space(read_string(i, &key));
      expect(i, ':');
      const size_t start = skip_space(i + 1);
      const size_t end = skip_value(start);
      out[key] = {start, end};
      i = skip_space(end);
      if (peek(i) == '}') return out;
      expect(i, ',');
      i = skip_space(i + 1);
    }
  }

  std::string string_at(size_t at) const {
    std::string value;
    read_string(at, &value);
    return value;
  }

  bool null_at(size_t at, size_t end) const { return end - at == 4 && text_.compare(at, 4, "null") == 0; }

  long integer_at(size_t at, size_t end) const {
    const std::string raw = text_.substr(at, end - at);
    char* stop = nullptr;
    errno = 0;
    const long value = std::strtol(raw.c_str(), &stop, 10);
    if (raw.empty() || *stop || errno) throw Error("manifest: expected an integer, found " + raw);
    return value;
  }

 private:
  char peek(size_t i) const { return i < text_.size() ? text_[i] : '\0'; }

  void expect(size_t i, char c) const {
    if (peek(i) != c) throw Error(std::string("manifest is not valid JSON: expected '") + c + "' at byte " +
                                  std::to_string(i));
  }

  size_t skip_space(size_t i) const {
    while (i < text_.size() && std::strchr(" \t\r\n", text_[i])) ++i;
    return i;
  }

  // The string at i into *out (ASCII escapes only: sam-edge writes no others
  // in the fields read here); returns the index past its closing quote.
  size_t read_string(size_t i, std::string* out) const {
    expect(i, '"');
    for (++i; i < text_.size(); ++i) {
      char c = text_[i];
      if (c == '"') return i + 1;
      if (c == '\\') {
        c = peek(++i);
        if (c == 'u') {
          const std::string hex = text_.substr(i + 1, 4);
          if (hex.size() != 4 || hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
            throw Error("manifest is not valid JSON: bad \\u escape at byte " + std::to_string(i));
          const unsigned code = std::stoul(hex, nullptr, 16);
          c = code < 0x80 ? static_cast<char>(code) : '?';
          i += 4;
        } else {
          const char* from = "\"\\/bfnrt";
          const char* to = "\"\\/\b\f\n\r\t";
          const char* at = std::strchr(from, c);
          if (!c || !at) throw Error("manifest is not valid JSON: bad escape at byte " + std::to_string(i));
          c = to[at - from];
        }
      }
      out->push_back(c);
    }
    throw Error("manifest is not valid JSON: unterminated string");
  }

  size_t skip_value(size_t i) const {
    const char c = peek(i);
    if (c == '"') {
      std::string ignored;
      return read_string(i, &ignored);
    }
    if (c == '{' || c == '[') {
      const char close = c == '{' ? '}' : ']';
      i = skip_space(i + 1);
      if (peek(i) == close) return i + 1;
      while (true) {
        if (c == '{') {
          std::string ignored;
          i = skip_space(read_string(i, &ignored));
          expect(i, ':');
          i = skip_space(i + 1);
        }
        i = skip_space(skip_value(i));
        if (peek(i) == close) return i + 1;
        expect(i, ',');
        i = skip_space(i + 1);
      }
    }
    const size_t start = i;
    while (i < text_.size() && (std::isalnum(static_cast<unsigned char>(text_[i])) || std::strchr("+-.", text_[i])))
      ++i;
    if (i == start) throw Error("manifest is not valid JSON: unexpected byte at " + std::to_string(i));
    return i;
  }

  std::string text_;
};

// The op domain, and its version, that csrc/ort/sam_edge_ops.h implements.
constexpr const char* kOpsDomain = "ai.sam_edge";
constexpr long kOpsDomainVersion = 1;

struct Bundle {
  std::string dir;
  // File names in dir: the standard-op encoder, the one-graph encoder with
  // sam_edge_ops' RelPosAttention nodes (empty when the bundle has none), the decoder.
  std::string encoder, encoder_ops, decoder;
  long image_size = 0, mask_input_size = 0;

  std::string path(const std::string& file) const { return dir + "/" + file; }
};

inline bool is_file(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
}

inline bool is_dir(const std::string& path) {
  struct stat info;
  return stat(path.c_str(), &info) == 0 && S_ISDIR(info.st_mode);
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read " + path + ": " + std::strerror(errno));
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The bundle's encoder graphs and its decoder, from manifest.json. The files'
// sha256 are not checked here; sam_edge.load does that in Python.
inline Bundle read_bundle(const std::string& dir) {
  if (!is_dir(dir)) throw Error("bundle not found: " + dir + " is not a directory (build one with `sam-edge build`)");
  const std::string path = dir + "/manifest.json";
  if (!is_file(path)) throw Error(dir + " is not a sam-edge bundle: it has no manifest.json");
  const Json json(read_file(path));
  const auto top = json.members(0);
  auto field = [&](const char* key) {
    const auto it = top.find(key);
    if (it == top.end()) throw Error(path + " lacks the field \"" + key + "\"");
    return it->second;
  };
  if (json.string_at(field("format").first) != "sam-edge-bundle")
    throw Error(path + " is not a sam-edge bundle manifest");
  const std::string backend = json.string_at(field("backend").first);
  if (backend != "onnxruntime") throw Error("bundle " + dir + " is for backend " + backend + "; this example runs onnxruntime bundles");
  Bundle bundle;
  bundle.dir = dir;
  bundle.image_size = json.integer_at(field("image_size").first, field("image_size").second);
  bundle.mask_input_size = json.integer_at(field("mask_input_size").first, field("mask_input_size").second);
  auto present = [&](const std::string& file) {
    if (!is_file(bundle.path(file))) throw Error("bundle " + dir + " is incomplete: " + bundle.path(file) + " is missing");
    return file;
  };
  const auto graphs = json.members(field("graphs").first);
  for (const char* graph : {"encoder", "decoder"}) {
    const auto it = graphs.find(graph);
    if (it == graphs.end()) throw Error(path + ": graphs lacks \"" + graph + "\"");
    (std::string(graph) == "encoder" ? bundle.encoder : bundle.decoder) = present(json.string_at(it->second.first));
  }
  // Optional: bundles for other precisions, or from an older sam-edge, have none.
  const auto ops = top.find("encoder_ops");
  if (ops != top.end() && !json.null_at(ops->second.first, ops->second.second)) {
    const auto entry = json.members(ops->second.first);
    auto member = [&](const char* key) {
      const auto it = entry.find(key);
      if (it == entry.end()) throw Error(path + ": encoder_ops lacks \"" + key + "\"");
      return it->second;
    };
    const std::string domain = json.string_at(member("domain").first);
    const long version = json.integer_at(member("domain_version").first, member("domain_version").second);
    if (domain != kOpsDomain || version != kOpsDomainVersion)
      throw Error(path + ": encoder_ops needs the op domain " + domain + " version " + std::to_string(version) +
                  "; this example knows " + kOpsDomain + " version " + std::to_string(kOpsDomainVersion));
    const std::string file = json.string_at(member("file").first);
    if (file.empty() || file.find('/') != std::string::npos)
      throw Error(path + ": encoder_ops names a file outside the bundle: \"" + file + "\"");
    bundle.encoder_ops = present(file);
  }
  return bundle;
}

}  // namespace sam_edge_example
