#include "onnx_scan.h"

#include <cstdint>

#include "errors.h"

namespace seer {

namespace {

enum class Kind { model, graph, node, attribute, function, sparse, tensor, entry };

struct Scanner {
  const std::string& name;
  std::set<std::string> found;

  [[noreturn]] void bad() {
    throw EngineDirError(name + " is not a well-formed ONNX graph (its protobuf bytes do not parse); re-export the engine directory");
  }

  uint64_t varint(const char*& p, const char* end) {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      if (p >= end) bad();
      auto byte = static_cast<uint8_t>(*p++);
      v |= static_cast<uint64_t>(byte & 0x7F) << shift;
      if (!(byte & 0x80)) return v;
    }
    bad();
  }

  // The message kind a field of `kind` holds, if it is one on the way to a tensor.
  static bool child(Kind kind, uint64_t field, Kind* out) {
    switch (kind) {
      case Kind::model:  // ModelProto: graph = 7, functions = 25
        if (field == 7) { *out = Kind::graph; return true; }
        if (field == 25) { *out = Kind::function; return true; }
        return false;
      case Kind::graph:  // GraphProto: node = 1, initializer = 5, sparse_initializer = 15
        if (field == 1) { *out = Kind::node; return true; }
        if (field == 5) { *out = Kind::tensor; return true; }
        if (field == 15) { *out = Kind::sparse; return true; }
        return false;
      case Kind::function:  // FunctionProto: node = 7
        if (field == 7) { *out = Kind::node; return true; }
        return false;
      case Kind::node:  // NodeProto: attribute = 5
        if (field == 5) { *out = Kind::attribute; return true; }
        return false;
      case Kind::attribute:  // AttributeProto: t = 5, g = 6, tensors = 10, graphs = 11, sparse_tensor(s) = 22, 23
        if (field == 5 || field == 10) { *out = Kind::tensor; return true; }
        if (field == 6 || field == 11) { *out = Kind::graph; return true; }
        if (field == 22 || field == 23) { *out = Kind::sparse; return true; }
        return false;
      case Kind::sparse:  // SparseTensorProto: values = 1, indices = 2
        if (field == 1 || field == 2) { *out = Kind::tensor; return true; }
        return false;
      case Kind::tensor:  // TensorProto: external_data = 13
        if (field == 13) { *out = Kind::entry; return true; }
        return false;
      case Kind::entry:
        return false;
    }
    return false;
  }

  void walk(const char* p, const char* end, Kind kind, int depth) {
    if (depth > 64) bad();
    bool external = false;
    std::string location, key, value;
    while (p < end) {
      uint64_t tag = varint(p, end);
      uint64_t field = tag >> 3;
      switch (tag & 7) {
        case 0: {
          uint64_t v = varint(p, end);
          if (kind == Kind::tensor && field == 14) external = v == 1;  // data_location: EXTERNAL
          break;
        }
        case 1:
          if (end - p < 8) bad();
          p += 8;
          break;
        case 5:
          if (end - p < 4) bad();
          p += 4;
          break;
        case 2: {
          uint64_t n = varint(p, end);
          if (n > static_cast<uint64_t>(end - p)) bad();
          Kind sub;
          if (kind == Kind::entry) {  // StringStringEntryProto: key = 1, value = 2
            if (field == 1) key.assign(p, n);
            if (field == 2) value.assign(p, n);
          } else if (kind == Kind::tensor && field == 13) {
            std::string k, v;
            parse_entry(p, p + n, &k, &v);
            if (k == "location") location = v;
          } else if (child(kind, field, &sub)) {
            walk(p, p + n, sub, depth + 1);
          }
          p += n;
          break;
        }
        default:
          bad();
      }
    }
    if (kind == Kind::tensor && (external || !location.empty())) found.insert(location);
  }

  void parse_entry(const char* p, const char* end, std::string* key, std::string* value) {
    while (p < end) {
      uint64_t tag = varint(p, end);
      if ((tag & 7) != 2) {
        if ((tag & 7) == 0) { varint(p, end); continue; }
        bad();
      }
      uint64_t n = varint(p, end);
      if (n > static_cast<uint64_t>(end - p)) bad();
      if ((tag >> 3) == 1) key->assign(p, n);
      if ((tag >> 3) == 2) value->assign(p, n);
      p += n;
    }
  }
};

}  // namespace

std::set<std::string> external_data_locations(const std::string& model, const std::string& name) {
  Scanner s{name, {}};
  s.walk(model.data(), model.data() + model.size(), Kind::model, 0);
  return s.found;
}

}  // namespace seer
