// Which files an ONNX graph reads its weights from (external data), read off its protobuf bytes
// without a protobuf library: the few fields on the way to a tensor are walked, everything else is
// skipped by its length. A reader must know them before ONNX Runtime opens any (docs/engine-dir.md).
#pragma once

#include <set>
#include <string>

namespace seer {

// The `location` of every tensor stored as external data (initializers, sparse initializers, node
// attributes, subgraphs and functions included). Throws EngineDirError when the bytes are not a
// well-formed protobuf message.
std::set<std::string> external_data_locations(const std::string& model, const std::string& name);

}  // namespace seer
