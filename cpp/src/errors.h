// The three kinds of failure libseer reports, as the Python runtime names them: a bad request
// (UsageError), a directory that cannot be trusted or run (EngineDirError), and a run that failed
// (RunError: ONNX Runtime failed, or a value became NaN/Inf). Each message is one line that names
// the problem and the fix.
#pragma once

#include <stdexcept>
#include <string>

namespace seer {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct EngineDirError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct RunError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace seer

namespace seer {
// A directory this build of libseer cannot run (a 16-bit graph): the Python runtime or a re-export runs it.
struct UnsupportedError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace seer

namespace seer {
// A request whose estimated memory exceeds the budget or what the machine has available.
struct MemoryError : std::runtime_error {
  using std::runtime_error::runtime_error;
};
}  // namespace seer
