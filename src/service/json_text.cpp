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
  if ((b0 & 0xe0) == 0xc0)
    n = 2, min = 0x80;
  else if ((b0 & 0xf0) == 0xe0)
    n = 3, min = 0x800;
  else if ((b0 & 0xf8) == 0xf0)
    n = 4, min = 0x10000;
  else
    return 0;
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

/// C1 controls (U+0080 to U+009F), two bytes in UTF-8: some terminals act
/// on them as on ESC sequences.
bool is_c1(std::string_view sequence) {
  return sequence.size() == 2 && static_cast<unsigned char>(sequence[0]) == 0xc2 &&
         static_cast<unsigned char>(sequence[1]) < 0xa0;
}

}  // namespace

std::string printable_text(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  char buf[8];
  while (!text.empty()) {
    const auto c = static_cast<unsigned char>(text.front());
    std::size_t n = 1;
    switch (c) {
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      default:
        // A control byte, or one that starts no valid UTF-8 sequence.
        if (c < 0x20 || c == 0x7f || (n = utf8_sequence(text)) == 0) {
          std::snprintf(buf, sizeof buf, "\\x%02x", c);
          out += buf;
          n = 1;
        } else if (is_c1(text.substr(0, n))) {
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(text[1]));
          out += buf;
        } else {
          out.append(text.substr(0, n));
        }
    }
    text.remove_prefix(n);
  }
  return out;
}

bool needs_escaping(std::string_view text) { return printable_text(text) != text; }

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
        if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned>(c));
          out += buf;
        } else if (const std::size_t n = utf8_sequence(text); n == 0) {
          out += "\xef\xbf\xbd";  // U+FFFD for a byte that starts no valid sequence
        } else if (is_c1(text.substr(0, n))) {
          // Valid JSON raw, but a log read on a terminal would act on it.
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", static_cast<unsigned char>(text[1]));
          out += buf;
          text.remove_prefix(n);
          continue;
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
