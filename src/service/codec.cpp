#include "codec.hpp"

#include <boost/asio/ip/address.hpp>

#include <stdexcept>
#include <system_error>

namespace conduit::service {

v1::Error error_of(std::exception_ptr exc) {
  v1::Error error;
  try {
    std::rethrow_exception(exc);
  } catch (const std::system_error& e) {
    if (e.code().category() == std::generic_category() || e.code().category() == std::system_category() ||
        std::string_view(e.code().category().name()) == "system") {
      error.set_errno_value(e.code().value());
    }
    error.set_message(e.what());
  } catch (const std::exception& e) {
    error.set_message(e.what());
  } catch (...) {
    error.set_message("unknown error");
  }
  return error;
}

std::exception_ptr exception_of(const v1::Error& error) {
  if (error.errno_value() != 0) {
    // The service's text already ends with the errno's; system_error adds it again.
    const std::error_code code(error.errno_value(), std::generic_category());
    std::string what = error.message();
    const std::string suffix = ": " + code.message();
    if (what.size() >= suffix.size() && what.compare(what.size() - suffix.size(), suffix.size(), suffix) == 0) {
      what.resize(what.size() - suffix.size());
    }
    return std::make_exception_ptr(std::system_error(code, what));
  }
  return std::make_exception_ptr(std::runtime_error(error.message()));
}

std::optional<SocketAddress> parse_address(const std::string& text) {
  const auto colon = text.rfind(':');
  if (colon == std::string::npos) return std::nullopt;
  std::string host = text.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[') host = host.substr(1, host.size() - 2);
  boost::system::error_code ec;
  auto ip = boost::asio::ip::make_address(host, ec);
  if (ec) return std::nullopt;
  return SocketAddress(ip, static_cast<std::uint16_t>(std::stoi(text.substr(colon + 1))));
}

std::optional<SocketAddress> parse_stream_address(const std::string& text) {
  if (text.empty()) return std::nullopt;
  if (auto ip = parse_address(text)) return ip;
  return SocketAddress::unix_path(text);
}

std::string command_name(const v1::Command& command) {
  const auto* field = v1::Command::descriptor()->FindFieldByNumber(command.kind_case());
  return field ? field->name() : "unknown";
}

namespace {

fault::Duration us(std::uint64_t micros) { return fault::Duration(static_cast<fault::Duration::rep>(micros)); }
std::uint64_t us_of(fault::Duration d) { return static_cast<std::uint64_t>(d.count()); }

}  // namespace

Fault fault_of(const v1::FaultSpec& spec) {
  Fault f;
  f.name = spec.name();
  switch (spec.direction()) {
    case v1::UPSTREAM: f.direction = FaultDirection::upstream; break;
    case v1::DOWNSTREAM: f.direction = FaultDirection::downstream; break;
    default: f.direction = FaultDirection::both; break;
  }
  switch (spec.kind_case()) {
    case v1::FaultSpec::kLatency:
      f.kind = fault::Latency{us(spec.latency().delay_us()), us(spec.latency().jitter_us())};
      break;
    case v1::FaultSpec::kBandwidth: f.kind = fault::Bandwidth{spec.bandwidth().bytes_per_second()}; break;
    case v1::FaultSpec::kSlicer:
      f.kind =
          fault::Slicer{spec.slicer().average_size(), spec.slicer().size_variation(), us(spec.slicer().delay_us())};
      break;
    case v1::FaultSpec::kBlackhole: {
      fault::Blackhole hole;
      if (spec.blackhole().close_after_us()) hole.close_after = us(spec.blackhole().close_after_us());
      f.kind = hole;
      break;
    }
    case v1::FaultSpec::kReset: {
      fault::Reset reset;
      if (spec.reset().after_bytes()) reset.after_bytes = spec.reset().after_bytes();
      if (spec.reset().after_us()) reset.after = us(spec.reset().after_us());
      f.kind = reset;
      break;
    }
    case v1::FaultSpec::kLimitData: f.kind = fault::LimitData{spec.limit_data().bytes()}; break;
    case v1::FaultSpec::kSlowClose: f.kind = fault::SlowClose{us(spec.slow_close().delay_us())}; break;
    case v1::FaultSpec::kLoss: f.kind = fault::Loss{spec.loss().probability()}; break;
    case v1::FaultSpec::kDuplicate: f.kind = fault::Duplicate{spec.duplicate().probability()}; break;
    case v1::FaultSpec::kReorder:
      f.kind = fault::Reorder{spec.reorder().probability(),
                              spec.reorder().hold_us() ? us(spec.reorder().hold_us()) : fault::Reorder{}.hold};
      break;
    default: throw std::invalid_argument("fault '" + spec.name() + "': set one kind (latency, bandwidth, ...)");
  }
  if (spec.has_toxicity()) f.toxicity = spec.toxicity().value();
  const v1::FaultScope& scope = spec.scope();
  for (const auto& client : scope.clients()) {
    try {
      f.scope.clients.push_back(fault::Network::parse(client));
    } catch (const std::invalid_argument& e) {
      throw std::invalid_argument("fault '" + spec.name() + "': scope.clients: " + e.what());
    }
  }
  if (scope.start_after_us()) f.scope.start_after = us(scope.start_after_us());
  if (scope.stop_after_us()) f.scope.stop_after = us(scope.stop_after_us());
  if (scope.start_after_bytes()) f.scope.start_after_bytes = scope.start_after_bytes();
  if (scope.stop_after_bytes()) f.scope.stop_after_bytes = scope.stop_after_bytes();
  f.validate();
  return f;
}

v1::FaultSpec spec_of(const Fault& f) {
  v1::FaultSpec spec;
  spec.set_name(f.name);
  if (f.toxicity != 1) spec.mutable_toxicity()->set_value(f.toxicity);
  v1::FaultScope& scope = *spec.mutable_scope();
  for (const auto& network : f.scope.clients) scope.add_clients(network.to_string());
  if (f.scope.start_after) scope.set_start_after_us(us_of(*f.scope.start_after));
  if (f.scope.stop_after) scope.set_stop_after_us(us_of(*f.scope.stop_after));
  if (f.scope.start_after_bytes) scope.set_start_after_bytes(*f.scope.start_after_bytes);
  if (f.scope.stop_after_bytes) scope.set_stop_after_bytes(*f.scope.stop_after_bytes);
  spec.set_direction(f.direction == FaultDirection::upstream     ? v1::UPSTREAM
                     : f.direction == FaultDirection::downstream ? v1::DOWNSTREAM
                                                                 : v1::BOTH);
  struct Fill {
    v1::FaultSpec& spec;
    void operator()(const fault::Latency& k) const {
      spec.mutable_latency()->set_delay_us(us_of(k.delay));
      spec.mutable_latency()->set_jitter_us(us_of(k.jitter));
    }
    void operator()(const fault::Bandwidth& k) const {
      spec.mutable_bandwidth()->set_bytes_per_second(k.bytes_per_second);
    }
    void operator()(const fault::Slicer& k) const {
      spec.mutable_slicer()->set_average_size(static_cast<std::uint32_t>(k.average_size));
      spec.mutable_slicer()->set_size_variation(static_cast<std::uint32_t>(k.size_variation));
      spec.mutable_slicer()->set_delay_us(us_of(k.delay));
    }
    void operator()(const fault::Blackhole& k) const {
      spec.mutable_blackhole()->set_close_after_us(k.close_after ? us_of(*k.close_after) : 0);
    }
    void operator()(const fault::Reset& k) const {
      spec.mutable_reset()->set_after_bytes(k.after_bytes.value_or(0));
      spec.mutable_reset()->set_after_us(k.after ? us_of(*k.after) : 0);
    }
    void operator()(const fault::LimitData& k) const { spec.mutable_limit_data()->set_bytes(k.bytes); }
    void operator()(const fault::SlowClose& k) const { spec.mutable_slow_close()->set_delay_us(us_of(k.delay)); }
    void operator()(const fault::Loss& k) const { spec.mutable_loss()->set_probability(k.probability); }
    void operator()(const fault::Duplicate& k) const { spec.mutable_duplicate()->set_probability(k.probability); }
    void operator()(const fault::Reorder& k) const {
      spec.mutable_reorder()->set_probability(k.probability);
      spec.mutable_reorder()->set_hold_us(us_of(k.hold));
    }
  };
  std::visit(Fill{spec}, f.kind);
  return spec;
}

}  // namespace conduit::service
