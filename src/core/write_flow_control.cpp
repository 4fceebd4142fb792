#include "conduit/detail/write_flow_control.hpp"

#include <stdexcept>
#include <string>

namespace conduit::detail {

void WriteFlowControl::set_limits(std::optional<std::int64_t> high, std::optional<std::int64_t> low) {
  if (!high) high = low ? 4 * *low : static_cast<std::int64_t>(default_high_);
  if (!low) low = *high / 4;
  if (!(*high >= *low && *low >= 0)) {
    throw std::invalid_argument("high (" + std::to_string(*high) + ") must be >= low (" + std::to_string(*low) +
                                ") must be >= 0");
  }
  high_ = static_cast<std::size_t>(*high);
  low_ = static_cast<std::size_t>(*low);
}

}  // namespace conduit::detail
