// Errors the core raises beyond std::system_error and std::invalid_argument.
#pragma once

#include <string>
#include <system_error>
#include <vector>

namespace conduit {

/// create_connection failed on every resolved address, with different
/// errors (asyncio: "Multiple exceptions: ..."). code() is the first one's.
class MultipleErrors : public std::system_error {
 public:
  explicit MultipleErrors(std::vector<std::system_error> errors);
  const char* what() const noexcept override { return what_.c_str(); }
  /// Each address's error, in the order tried.
  const std::vector<std::system_error>& errors() const { return errors_; }

 private:
  std::vector<std::system_error> errors_;
  std::string what_;
};

}  // namespace conduit
