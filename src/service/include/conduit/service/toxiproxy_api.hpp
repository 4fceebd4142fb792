// Toxiproxy 2.x's HTTP API (github.com/Shopify/toxiproxy, v2.5.0) served by
// the service, so that toxiproxy's clients and `toxiproxy-cli` drive
// Conduit's proxies unchanged: proxies are the core's stream proxies, on
// the service's loop and under its policy (--allow-listen, --allow-connect),
// and toxics are the core's faults. HTTP from Boost.Beast, JSON from
// Boost.JSON.
//
// Routes: GET /version, GET/POST /proxies, POST /populate, POST /reset,
// GET/POST/DELETE /proxies/{name}, GET/POST /proxies/{name}/toxics,
// GET/POST/DELETE /proxies/{name}/toxics/{toxic}; toxiproxy's JSON shapes,
// status codes and error bodies ({"error": "...", "status": N}).
#pragma once

#include <conduit/service/service.hpp>

#include <cstdint>
#include <memory>
#include <string>

namespace conduit::service {

struct ToxiproxyApiOptions {
  std::string host = "127.0.0.1";  ///< where the API listens
  std::uint16_t port = 8474;       ///< toxiproxy's port; 0 picks a free one
  /// With a token, every request must carry "Authorization: Bearer TOKEN"
  /// (toxiproxy's clients send it as a custom header); empty: none asked.
  std::string token;
  /// Proxies to make before the API answers, as JSON in POST /populate's
  /// form (toxiproxy's -config file), each with its "toxics" if it has any.
  std::string config;
};

class ToxiproxyApi {
 public:
  /// Listen as `options` say, on the service's loop, and make the
  /// start-up proxies; returns once done, or throws std::system_error (the
  /// address is taken, say) or std::invalid_argument (a start-up proxy
  /// cannot be made: its words).
  static std::shared_ptr<ToxiproxyApi> start(ConduitService& service, ToxiproxyApiOptions options);
  virtual ~ToxiproxyApi() = default;
  /// Where it listens ("127.0.0.1:8474").
  virtual std::string address() const = 0;
  /// Stop listening and close every proxy it made; returns once done.
  virtual void stop() = 0;
};

}  // namespace conduit::service
