#include "conduit/errors.hpp"

namespace conduit {

MultipleErrors::MultipleErrors(std::vector<std::system_error> errors)
    : std::system_error(errors.front().code()), errors_(std::move(errors)) {
  what_ = "Multiple exceptions: ";
  for (std::size_t i = 0; i < errors_.size(); ++i) {
    if (i) what_ += ", ";
    what_ += errors_[i].what();
  }
}

}  // namespace conduit
