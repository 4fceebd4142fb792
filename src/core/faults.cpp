#include "conduit/faults.hpp"

#include <algorithm>
#include <charconv>
#include <stdexcept>

namespace conduit {

namespace fault {

namespace {

template <class... Fs>
struct Overloaded : Fs... {
  using Fs::operator()...;
};
template <class... Fs>
Overloaded(Fs...) -> Overloaded<Fs...>;

}  // namespace

Network Network::parse(std::string_view text) {
  const auto slash = text.find('/');
  const std::string address_text(text.substr(0, slash));
  boost::system::error_code ec;
  Network network;
  network.address = boost::asio::ip::make_address(address_text, ec);
  if (ec) throw std::invalid_argument("'" + std::string(text) + "' is not an address or ADDRESS/PREFIX");
  const unsigned bits = network.address.is_v4() ? 32 : 128;
  network.prefix = bits;
  if (slash != std::string_view::npos) {
    const std::string_view digits = text.substr(slash + 1);
    const auto [end, err] = std::from_chars(digits.data(), digits.data() + digits.size(), network.prefix);
    if (err != std::errc() || end != digits.data() + digits.size() || digits.empty() || network.prefix > bits) {
      throw std::invalid_argument("'" + std::string(text) + "': the prefix must be 0 to " + std::to_string(bits));
    }
  }
  return network;
}

std::vector<Network> Network::parse_list(std::string_view list) {
  std::vector<Network> out;
  while (!list.empty()) {
    const auto comma = list.find(',');
    std::string_view item = list.substr(0, comma);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    if (!item.empty()) out.push_back(parse(item));
    list = comma == std::string_view::npos ? std::string_view() : list.substr(comma + 1);
  }
  return out;
}

bool Network::contains(const boost::asio::ip::address& client) const {
  boost::asio::ip::address ip = client;
  if (ip.is_v6() && ip.to_v6().is_v4_mapped())
    ip = boost::asio::ip::make_address_v4(boost::asio::ip::v4_mapped, ip.to_v6());
  if (ip.is_v4() != address.is_v4()) return false;
  auto matches = [this](const auto& a, const auto& b) {
    for (unsigned bit = 0; bit < prefix; ++bit) {
      const unsigned byte = bit / 8, mask = 0x80u >> (bit % 8);
      if ((a[byte] & mask) != (b[byte] & mask)) return false;
    }
    return true;
  };
  if (ip.is_v4()) return matches(ip.to_v4().to_bytes(), address.to_v4().to_bytes());
  return matches(ip.to_v6().to_bytes(), address.to_v6().to_bytes());
}

std::string Network::to_string() const {
  const bool whole = prefix == (address.is_v4() ? 32u : 128u);
  return whole ? address.to_string() : address.to_string() + "/" + std::to_string(prefix);
}

const char* kind_name(const Kind& kind) {
  return std::visit(Overloaded{[](const Latency&) { return "latency"; }, [](const Bandwidth&) { return "bandwidth"; },
                               [](const Slicer&) { return "slicer"; }, [](const Blackhole&) { return "blackhole"; },
                               [](const Reset&) { return "reset"; }, [](const LimitData&) { return "limit_data"; },
                               [](const SlowClose&) { return "slow_close"; }, [](const Loss&) { return "loss"; },
                               [](const Duplicate&) { return "duplicate"; }, [](const Reorder&) { return "reorder"; }},
                    kind);
}

bool for_streams(const Kind& kind) {
  return !std::holds_alternative<Loss>(kind) && !std::holds_alternative<Duplicate>(kind) &&
         !std::holds_alternative<Reorder>(kind);
}

bool for_datagrams(const Kind& kind) {
  return std::holds_alternative<Latency>(kind) || std::holds_alternative<Bandwidth>(kind) ||
         std::holds_alternative<Blackhole>(kind) || std::holds_alternative<Loss>(kind) ||
         std::holds_alternative<Duplicate>(kind) || std::holds_alternative<Reorder>(kind);
}

}  // namespace fault

void Fault::check_kind_for(bool datagram) const {
  if (datagram ? fault::for_datagrams(kind) : fault::for_streams(kind)) return;
  throw std::invalid_argument("fault '" + name + "': " + fault::kind_name(kind) +
                              (datagram ? " is for stream proxies" : " is for datagram proxies"));
}

void Fault::validate() const {
  using namespace fault;
  const std::string what = "fault '" + name + "' (" + kind_name(kind) + "): ";
  if (name.empty()) throw std::invalid_argument(std::string("a fault needs a name (") + kind_name(kind) + ")");
  auto probability = [&](double p, const char* field) {
    if (!(p >= 0 && p <= 1)) throw std::invalid_argument(what + field + " must be between 0 and 1");
  };
  auto not_negative = [&](Duration d, const char* field) {
    if (d.count() < 0) throw std::invalid_argument(what + field + " must not be negative");
  };
  probability(toxicity, "toxicity");
  if (scope.start_after) not_negative(*scope.start_after, "start_after");
  if (scope.stop_after) not_negative(*scope.stop_after, "stop_after");
  if (scope.start_after && scope.stop_after && *scope.stop_after <= *scope.start_after) {
    throw std::invalid_argument(what + "stop_after must be later than start_after");
  }
  if (scope.start_after_bytes && scope.stop_after_bytes && *scope.stop_after_bytes <= *scope.start_after_bytes) {
    throw std::invalid_argument(what + "stop_after_bytes must be more than start_after_bytes");
  }
  std::visit(Overloaded{[&](const Latency& f) {
                          not_negative(f.delay, "delay");
                          not_negative(f.jitter, "jitter");
                        },
                        [&](const Bandwidth& f) {
                          if (f.bytes_per_second == 0) throw std::invalid_argument(what + "the rate must be above 0");
                        },
                        [&](const Slicer& f) {
                          if (f.average_size == 0) throw std::invalid_argument(what + "average_size must be above 0");
                          if (f.size_variation >= f.average_size) {
                            throw std::invalid_argument(what + "size_variation must be below average_size");
                          }
                          not_negative(f.delay, "delay");
                        },
                        [&](const Blackhole& f) {
                          if (f.close_after) not_negative(*f.close_after, "close_after");
                        },
                        [&](const Reset& f) {
                          if (f.after) not_negative(*f.after, "after");
                        },
                        [&](const LimitData&) {}, [&](const SlowClose& f) { not_negative(f.delay, "delay"); },
                        [&](const Loss& f) { probability(f.probability, "probability"); },
                        [&](const Duplicate& f) { probability(f.probability, "probability"); },
                        [&](const Reorder& f) {
                          probability(f.probability, "probability");
                          not_negative(f.hold, "hold");
                        }},
             kind);
}

void FaultList::set(Fault fault) {
  fault.validate();
  for (auto& f : faults_) {
    if (f.name == fault.name) {
      f = std::move(fault);
      return;
    }
  }
  faults_.push_back(std::move(fault));
}

bool FaultList::remove(const std::string& name) {
  return std::erase_if(faults_, [&](const Fault& f) { return f.name == name; }) > 0;
}

void ConnectionFaults::set_client(const boost::asio::ip::address& client) {
  client_ = client;
  update(FaultList(proxy_));
}

void ConnectionFaults::update(const FaultList& proxy_faults, Clock::time_point now) {
  proxy_ = proxy_faults;
  mine_ = FaultList();
  for (const auto& f : proxy_faults.all()) {
    bool acts = f.toxicity >= 1;
    if (!acts && f.toxicity > 0) {
      // Drawn again only when the toxicity changes, not the fault's values.
      auto [it, fresh] = drawn_.try_emplace(f.name, Draw{f.toxicity, false});
      if (fresh || it->second.toxicity != f.toxicity) {
        it->second = {f.toxicity, std::bernoulli_distribution(f.toxicity)(random_)};
      }
      acts = it->second.acts;
    }
    if (acts && !f.scope.clients.empty()) {
      acts = client_ && std::any_of(f.scope.clients.begin(), f.scope.clients.end(),
                                    [this](const fault::Network& n) { return n.contains(*client_); });
    }
    if (acts) mine_.set(f);
  }
  timed_ = std::any_of(mine_.all().begin(), mine_.all().end(), [](const Fault& f) { return f.scope.timed(); });
  acting_.clear();
  if (timed_) {
    refresh(now);
  } else {
    active_ = mine_;
  }
}

std::uint64_t ConnectionFaults::bytes_for(FaultDirection direction) const {
  switch (direction) {
    case FaultDirection::upstream: return bytes_[0];
    case FaultDirection::downstream: return bytes_[1];
    case FaultDirection::both: return bytes_[0] + bytes_[1];
  }
  return 0;
}

bool ConnectionFaults::acts(const Fault& f, Clock::time_point now) const {
  const fault::Scope& s = f.scope;
  const auto age = now - started_;
  const std::uint64_t bytes = bytes_for(f.direction);
  if (s.start_after && age < *s.start_after) return false;
  if (s.stop_after && age >= *s.stop_after) return false;
  if (s.start_after_bytes && bytes < *s.start_after_bytes) return false;
  if (s.stop_after_bytes && bytes >= *s.stop_after_bytes) return false;
  return true;
}

bool ConnectionFaults::refresh(Clock::time_point now) {
  // Called for every chunk relayed: nothing to do (and nothing copied)
  // unless a fault of this connection has a window, and it opened or closed.
  if (!timed_) return false;
  std::vector<bool> acting;
  acting.reserve(mine_.all().size());
  for (const auto& f : mine_.all()) acting.push_back(!f.scope.timed() || acts(f, now));
  if (acting == acting_) return false;
  acting_ = std::move(acting);
  active_ = FaultList();
  for (std::size_t i = 0; i < acting_.size(); ++i) {
    if (acting_[i]) active_.set(mine_.all()[i]);
  }
  return true;
}

std::optional<ConnectionFaults::Clock::time_point> ConnectionFaults::next_change() const {
  std::optional<Clock::time_point> next;
  auto consider = [&](const std::optional<fault::Duration>& after) {
    if (!after) return;
    const Clock::time_point at = started_ + *after;
    if (at > Clock::now() && (!next || at < *next)) next = at;
  };
  for (const auto& f : mine_.all()) {
    consider(f.scope.start_after);
    consider(f.scope.stop_after);
  }
  return next;
}

std::optional<std::uint64_t> ConnectionFaults::bytes_to_change(FaultDirection way) const {
  std::optional<std::uint64_t> next;
  for (const auto& f : mine_.all()) {
    if (!f.acts_on(way)) continue;
    const std::uint64_t bytes = bytes_for(f.direction);
    for (const auto& mark : {f.scope.start_after_bytes, f.scope.stop_after_bytes}) {
      if (mark && *mark > bytes && (!next || *mark - bytes < *next)) next = *mark - bytes;
    }
  }
  return next;
}

// ---- StreamSchedule ---------------------------------------------------------

StreamSchedule::Clock::duration StreamSchedule::draw_jitter(fault::Duration jitter) {
  if (jitter.count() <= 0) return {};
  std::uniform_int_distribution<std::int64_t> draw(-jitter.count(), jitter.count());
  return fault::Duration(draw(random_));
}

std::vector<StreamSchedule::Piece> StreamSchedule::plan(const FaultList& faults, FaultDirection direction,
                                                        std::size_t size, Clock::time_point now) {
  const auto* slicer = faults.find<fault::Slicer>(direction);
  const auto* latency = faults.find<fault::Latency>(direction);
  const auto* bandwidth = faults.find<fault::Bandwidth>(direction);

  // The sizes: slices, and under a bandwidth limit pieces of at most 10 ms
  // worth, so that a large chunk does not leave as one burst.
  struct Size {
    std::size_t bytes;
    bool starts_slice;
  };
  std::vector<Size> sizes;
  const std::size_t bandwidth_piece =
      bandwidth ? std::max<std::size_t>(1, static_cast<std::size_t>(bandwidth->bytes_per_second / 100)) : size;
  auto add = [&](std::size_t n) {
    bool first = true;
    while (n > 0) {
      const std::size_t piece = std::min(n, bandwidth_piece);
      sizes.push_back({piece, first});
      first = false;
      n -= piece;
    }
  };
  if (slicer) {
    std::uniform_int_distribution<std::size_t> draw(slicer->average_size - slicer->size_variation,
                                                    slicer->average_size + slicer->size_variation);
    for (std::size_t left = size; left > 0;) {
      const std::size_t n = std::min(left, std::max<std::size_t>(1, draw(random_)));
      add(n);
      left -= n;
    }
  } else {
    add(size);
  }

  std::vector<Piece> pieces;
  pieces.reserve(sizes.size());
  Clock::time_point at = now;
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    if (slicer && i > 0 && sizes[i].starts_slice) at += slicer->delay;
    Clock::time_point leave = at;
    if (latency) leave += std::max(Clock::duration{}, Clock::duration(latency->delay) + draw_jitter(latency->jitter));
    leave = std::max(leave, last_);  // a stream keeps its order
    if (bandwidth) {
      leave = std::max(leave, bandwidth_);
      bandwidth_ = leave + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                               static_cast<double>(sizes[i].bytes) / static_cast<double>(bandwidth->bytes_per_second)));
    }
    last_ = leave;
    pieces.push_back({leave, sizes[i].bytes});
  }
  return pieces;
}

StreamSchedule::Clock::time_point StreamSchedule::plan_end(const FaultList& faults, FaultDirection direction,
                                                           Clock::time_point now) {
  Clock::time_point at = std::max(now, last_);
  if (const auto* slow = faults.find<fault::SlowClose>(direction)) at += slow->delay;
  last_ = at;
  return at;
}

// ---- DatagramSchedule -------------------------------------------------------

bool DatagramSchedule::chance(double probability) {
  if (probability <= 0) return false;
  if (probability >= 1) return true;
  return std::uniform_real_distribution<double>(0, 1)(random_) < probability;
}

std::vector<DatagramSchedule::Clock::time_point> DatagramSchedule::plan(const FaultList& faults,
                                                                        FaultDirection direction, std::size_t size,
                                                                        Clock::time_point now) {
  if (faults.find<fault::Blackhole>(direction)) return {};
  if (const auto* loss = faults.find<fault::Loss>(direction); loss && chance(loss->probability)) return {};
  Clock::time_point at = now;
  if (const auto* latency = faults.find<fault::Latency>(direction)) {
    Clock::duration delay = latency->delay;
    if (latency->jitter.count() > 0) {
      std::uniform_int_distribution<std::int64_t> draw(-latency->jitter.count(), latency->jitter.count());
      delay += fault::Duration(draw(random_));
    }
    at += std::max(Clock::duration{}, delay);
  }
  if (const auto* reorder = faults.find<fault::Reorder>(direction); reorder && chance(reorder->probability)) {
    at += reorder->hold;
  }
  if (const auto* bandwidth = faults.find<fault::Bandwidth>(direction)) {
    at = std::max(at, bandwidth_);
    bandwidth_ = at + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(
                          static_cast<double>(size) / static_cast<double>(bandwidth->bytes_per_second)));
  }
  std::vector<Clock::time_point> copies{at};
  if (const auto* duplicate = faults.find<fault::Duplicate>(direction); duplicate && chance(duplicate->probability)) {
    copies.push_back(at);
  }
  return copies;
}

}  // namespace conduit
