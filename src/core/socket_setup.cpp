#include "socket_setup.hpp"

#include <sys/stat.h>
#include <unistd.h>

namespace conduit::detail {

void remove_stale_socket(const std::string& path) {
  if (path.empty() || path.front() == '\0') return;
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  if (!S_ISSOCK(st.st_mode)) {
    throw std::system_error(std::make_error_code(std::errc::address_in_use),
                            "cannot bind " + path + ": it exists and is not a socket");
  }
  ::unlink(path.c_str());
}

}  // namespace conduit::detail
