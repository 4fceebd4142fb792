#include <conduit/service/descriptor_budget.hpp>

#include <dirent.h>
#include <sys/resource.h>

#include <algorithm>

namespace conduit::service {

DescriptorBudget::DescriptorBudget(std::size_t reserve) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0) {
    if (limit.rlim_cur < limit.rlim_max) {
      rlimit raised = limit;
      raised.rlim_cur = limit.rlim_max;
      if (::setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
    }
    rlimit_ = limit.rlim_cur == RLIM_INFINITY ? std::size_t{1} << 20 : static_cast<std::size_t>(limit.rlim_cur);
  } else {
    rlimit_ = 1024;
  }
  if (reserve == 0) reserve = std::max<std::size_t>(64, rlimit_ / 16);
  budget_ = rlimit_ > reserve ? rlimit_ - reserve : 0;
}

std::size_t DescriptorBudget::open_now() {
  DIR* dir = ::opendir("/proc/self/fd");
  if (!dir) return 0;  // no /proc: no budget to enforce
  std::size_t count = 0;
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count > 0 ? count - 1 : 0;  // less the directory's own
}

bool DescriptorBudget::allows(std::size_t more) {
  constexpr auto recount_after = std::chrono::milliseconds(100);
  // Within this of the budget, estimates are not trusted.
  const std::size_t near = std::max<std::size_t>(16, budget_ / 8);
  std::lock_guard lock(mutex_);
  const auto now = std::chrono::steady_clock::now();
  if (now - counted_at_ > recount_after || counted_ + allowed_since_ + more + near > budget_) {
    counted_ = open_now();
    allowed_since_ = 0;
    counted_at_ = now;
  }
  if (counted_ + allowed_since_ + more > budget_) return false;
  allowed_since_ += more;
  return true;
}

std::string DescriptorBudget::describe() {
  std::lock_guard lock(mutex_);
  return std::to_string(counted_ + allowed_since_) + " descriptors open, " + std::to_string(budget_) +
         " usable by sessions (RLIMIT_NOFILE " + std::to_string(rlimit_) +
         ", the rest kept for the service's "
         "listener and new callers)";
}

}  // namespace conduit::service
