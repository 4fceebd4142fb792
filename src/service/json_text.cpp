#include <conduit/service/json_text.hpp>

#include <cstdio>

namespace conduit::service {

namespace {

/// Length of the valid UTF-8 sequence at the start of `s`, or 0.
std::size_t utf8_sequence(std::string_view s) {
  const auto b0 = static_cast<unsigned char>(s[0]);
  std::size_t n;
  unsigned min;
  if (b0 < 0x80) return 1;
  if ((b0 & 0xe0) == 0xc0) n = 2, min = 0x80;
  else if ((b0 & 0xf0) == 0xe0) n = 3, min = 0x800;
  else if ((b0 & 0xf8) == 0xf0) n = 4, min = 0x10000;
  else return 0;
  if (s.size() < n) return 0;
  unsigned code = b0 & (0x7f >> n);
  for (std::size_t i = 1; i < n; ++i) {
    const auto b = static_cast<unsigned char>(s[i]);
    if ((b & 0xc0) != 0x80) return 0;
    code = (code << 6) | (b & 0x3f);
  }
  // Overlong forms, UTF-16 surrogates and beyond U+10FFFF are not UTF-8.
  if (code < min || (code >= 0xd800 && code <= 0xdfff) || code > 0x10ffff) return 0;
  return n;
}

}  // namespace

std::string json_string(std::string_view text) {
  std::string out = "\"";
  while (!text.empty()) {
    const char c = text.front();
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else if (const std::size_t n = utf8_sequence(text); n == 0) {
          out += "\xef\xbf\xbd";  // U+FFFD for a byte that starts no valid sequence
        } else {
          out.append(text.substr(0, n));
          text.remove_prefix(n);
          continue;
        }
    }
    text.remove_prefix(1);
  }
  return out + "\"";
}

}  // namespace conduit::service
