#include "session_kind.hpp"

#include <string>

namespace conduit::service {

namespace {

// The one list of kinds: a new kind adds its line here.
constexpr const SessionKind* kinds[] = {
    &connection_session_kind, &server_session_kind, &datagram_session_kind,
    &subprocess_session_kind, &proxy_session_kind,
};

}  // namespace

std::span<const SessionKind* const> session_kinds() { return kinds; }

const SessionKind* session_kind_of(const v1::ClientMessage& message) {
  for (const SessionKind* kind : kinds) {
    if (kind->open_case == message.kind_case()) return kind;
  }
  return nullptr;
}

const std::string& open_field_list() {
  static const std::string list = [] {
    std::string text;
    for (std::size_t i = 0; i < std::size(kinds); ++i) {
      if (i > 0) text += i + 1 == std::size(kinds) ? " or " : ", ";
      text += kinds[i]->open_field;
    }
    return text;
  }();
  return list;
}

}  // namespace conduit::service
