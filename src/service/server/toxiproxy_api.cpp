#include <conduit/service/toxiproxy_api.hpp>

#include "codec.hpp"
#include "session_open.hpp"

#include <conduit/datagram_proxy.hpp>
#include <conduit/stream_proxy.hpp>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/json.hpp>

#include <algorithm>
#include <charconv>
#include <future>
#include <map>
#include <optional>
#include <stdexcept>
#include <system_error>
#include <tuple>

namespace conduit::service {

namespace {

namespace http = boost::beast::http;
namespace json = boost::json;
using tcp = asio::ip::tcp;

/// What a request gets wrong, as toxiproxy says it: {"error", "status"}.
struct ApiError {
  http::status status;
  std::string message;
};

ApiError bad_request(const std::string& why) { return {http::status::bad_request, "bad request body: " + why}; }

/// One toxic as the API shows it. Its fault (the core's) has its name.
struct Toxic {
  std::string name, type, stream = "downstream";
  double toxicity = 1;
  json::object attributes;
};

/// Each toxic type's attributes, with toxiproxy's defaults (all zero).
const std::map<std::string, std::vector<std::string>, std::less<>>& toxic_types() {
  static const std::map<std::string, std::vector<std::string>, std::less<>> types = {
      {"latency", {"latency", "jitter"}},
      {"bandwidth", {"rate"}},
      {"slow_close", {"delay"}},
      {"timeout", {"timeout"}},
      {"reset_peer", {"timeout"}},
      {"slicer", {"average_size", "size_variation", "delay"}},
      {"limit_data", {"bytes"}},
      // Not toxiproxy's: datagram faults, for udp:// proxies.
      {"loss", {"probability"}},
      {"duplicate", {"probability"}},
      {"reorder", {"probability", "hold"}},
  };
  return types;
}

/// Attributes any toxic may have, not toxiproxy's: its scope (the clients
/// it is for, and when in each connection's life it acts).
const std::vector<std::string>& scope_attributes() {
  static const std::vector<std::string> keys = {"clients", "start_after", "stop_after", "start_after_bytes",
                                                "stop_after_bytes"};
  return keys;
}

std::int64_t attribute(const Toxic& toxic, const char* key) {
  const json::value* v = toxic.attributes.if_contains(key);
  if (!v) return 0;
  if (v->is_int64()) return v->as_int64();
  if (v->is_uint64()) return static_cast<std::int64_t>(v->as_uint64());
  if (v->is_double()) return static_cast<std::int64_t>(v->as_double());
  throw bad_request("attributes." + std::string(key) + " is not a number");
}

double real_attribute(const Toxic& toxic, const char* key) {
  const json::value* v = toxic.attributes.if_contains(key);
  if (!v) return 0;
  if (!v->is_number()) throw bad_request("attributes." + std::string(key) + " is not a number");
  return v->to_number<double>();
}

/// The scope attributes: clients as "ADDRESS[/PREFIX],..." or a list of
/// them; times in milliseconds (toxiproxy's unit); 0 or absent, no bound.
fault::Scope scope_of(const Toxic& toxic) {
  fault::Scope scope;
  if (const json::value* clients = toxic.attributes.if_contains("clients")) {
    try {
      if (clients->is_string()) {
        scope.clients = fault::Network::parse_list(clients->as_string());
      } else if (clients->is_array()) {
        for (const auto& item : clients->as_array()) {
          if (!item.is_string()) throw bad_request("attributes.clients: each is an address or ADDRESS/PREFIX string");
          scope.clients.push_back(fault::Network::parse(item.as_string()));
        }
      } else {
        throw bad_request("attributes.clients is an address list (\"10.0.0.0/8,192.0.2.7\" or a JSON array)");
      }
    } catch (const std::invalid_argument& e) {
      throw bad_request(std::string("attributes.clients: ") + e.what());
    }
  }
  auto count = [&](const char* key) -> std::optional<std::int64_t> {
    if (!toxic.attributes.contains(key)) return std::nullopt;
    const std::int64_t n = attribute(toxic, key);
    if (n < 0) throw bad_request("attributes." + std::string(key) + " must not be negative");
    if (n == 0) return std::nullopt;
    return n;
  };
  if (auto ms = count("start_after")) scope.start_after = std::chrono::milliseconds(*ms);
  if (auto ms = count("stop_after")) scope.stop_after = std::chrono::milliseconds(*ms);
  if (auto n = count("start_after_bytes")) scope.start_after_bytes = static_cast<std::uint64_t>(*n);
  if (auto n = count("stop_after_bytes")) scope.stop_after_bytes = static_cast<std::uint64_t>(*n);
  return scope;
}

/// The core's fault for a toxic, or none where it has no effect (toxicity
/// 0; a bandwidth of 0, which toxiproxy lets through unlimited); with
/// `datagram`, first refused if that kind of proxy does not carry it.
std::optional<Fault> fault_of(const Toxic& toxic, std::optional<bool> datagram = std::nullopt) {
  using std::chrono::microseconds;
  using std::chrono::milliseconds;
  if (toxic.toxicity == 0) return std::nullopt;
  Fault fault;
  fault.name = toxic.name;
  fault.toxicity = toxic.toxicity;  // validated below: 0 to 1
  fault.direction = toxic.stream == "upstream" ? FaultDirection::upstream
                    : toxic.stream == "both"   ? FaultDirection::both
                                               : FaultDirection::downstream;
  fault.scope = scope_of(toxic);
  const std::string& t = toxic.type;
  if (t == "latency") {
    fault.kind = fault::Latency{milliseconds(attribute(toxic, "latency")), milliseconds(attribute(toxic, "jitter"))};
  } else if (t == "bandwidth") {
    const std::int64_t rate = attribute(toxic, "rate");  // KB/s
    if (rate <= 0) return std::nullopt;
    fault.kind = fault::Bandwidth{static_cast<std::uint64_t>(rate) * 1000};
  } else if (t == "slow_close") {
    fault.kind = fault::SlowClose{milliseconds(attribute(toxic, "delay"))};
  } else if (t == "timeout") {
    const std::int64_t timeout = attribute(toxic, "timeout");
    fault.kind = fault::Blackhole{timeout > 0 ? std::optional<fault::Duration>(milliseconds(timeout)) : std::nullopt};
  } else if (t == "reset_peer") {
    // Toxiproxy resets once data comes (timeout 0: at the first byte, which
    // is dropped); with a timeout, the core's reset counts it from the
    // connection's accept rather than from the first byte.
    const std::int64_t timeout = attribute(toxic, "timeout");
    if (timeout > 0)
      fault.kind = fault::Reset{std::nullopt, milliseconds(timeout)};
    else
      fault.kind = fault::Reset{std::uint64_t{0}, std::nullopt};
  } else if (t == "slicer") {
    fault.kind = fault::Slicer{static_cast<std::size_t>(attribute(toxic, "average_size")),
                               static_cast<std::size_t>(attribute(toxic, "size_variation")),
                               microseconds(attribute(toxic, "delay"))};
  } else if (t == "limit_data") {
    fault.kind = fault::LimitData{static_cast<std::uint64_t>(attribute(toxic, "bytes"))};
  } else if (t == "loss") {
    fault.kind = fault::Loss{real_attribute(toxic, "probability")};
  } else if (t == "duplicate") {
    fault.kind = fault::Duplicate{real_attribute(toxic, "probability")};
  } else {
    fault.kind = fault::Reorder{real_attribute(toxic, "probability"), milliseconds(attribute(toxic, "hold"))};
  }
  try {
    if (datagram) fault.check_kind_for(*datagram);
    fault.validate();
  } catch (const std::invalid_argument& e) {
    throw bad_request(e.what());
  }
  return fault;
}

json::object toxic_json(const Toxic& toxic) {
  // 1 and 0 as Go writes them, not 1E0.
  json::value toxicity = toxic.toxicity;
  if (toxic.toxicity == 0 || toxic.toxicity == 1) toxicity = static_cast<std::int64_t>(toxic.toxicity);
  return {{"name", toxic.name},
          {"type", toxic.type},
          {"stream", toxic.stream},
          {"toxicity", toxicity},
          {"attributes", toxic.attributes}};
}

/// A listen or upstream address: toxiproxy's "host:port", or (not
/// toxiproxy's) "tcp://", "udp://" or "tls://" before it.
struct Address {
  enum class Scheme { plain, udp, tls };
  Scheme scheme = Scheme::plain;  // TCP
  std::string host;
  std::uint16_t port = 0;
};

Address address_of(const std::string& text, const char* field) {
  Address address;
  std::string_view rest = text;
  if (const auto colons = rest.find("://"); colons != std::string_view::npos) {
    const std::string_view scheme = rest.substr(0, colons);
    if (scheme == "udp") {
      address.scheme = Address::Scheme::udp;
    } else if (scheme == "tls") {
      address.scheme = Address::Scheme::tls;
    } else if (scheme != "tcp") {
      throw bad_request(std::string(field) + " '" + text + "': the scheme is tcp://, udp:// or tls://");
    }
    rest.remove_prefix(colons + 3);
  }
  const std::string host_port(rest);
  const auto colon = host_port.rfind(':');
  if (colon == std::string::npos) throw bad_request(std::string(field) + " '" + text + "' is not HOST:PORT");
  std::string host = host_port.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  unsigned port = 0;
  const char* first = host_port.data() + colon + 1;
  const char* last = host_port.data() + host_port.size();
  const auto [end, ec] = std::from_chars(first, last, port);
  if (ec != std::errc() || end != last || port > 65535) {
    throw bad_request(std::string(field) + " '" + text + "' has no port 0 to 65535");
  }
  address.host = std::move(host);
  address.port = static_cast<std::uint16_t>(port);
  return address;
}

/// A proxy's two addresses, checked together: UDP both or neither.
std::pair<Address, Address> addresses_of(const std::string& listen, const std::string& upstream) {
  Address l = address_of(listen, "listen"), u = address_of(upstream, "upstream");
  if ((l.scheme == Address::Scheme::udp) != (u.scheme == Address::Scheme::udp)) {
    throw bad_request("listen '" + listen + "' and upstream '" + upstream + "': a udp:// proxy is UDP at both ends");
  }
  return {std::move(l), std::move(u)};
}

/// An optional JSON object field of strings and booleans, as given.
json::object object_field(const json::object& body, const char* key) {
  const json::value* v = body.if_contains(key);
  if (!v || v->is_null()) return {};
  if (!v->is_object()) throw bad_request(std::string(key) + " is not an object");
  return v->as_object();
}

std::string tls_text(const json::object& tls, const char* field, const char* key) {
  const json::value* v = tls.if_contains(key);
  if (!v || v->is_null()) return {};
  if (!v->is_string()) throw bad_request(std::string(field) + "." + key + " is not a string");
  return std::string(v->as_string());
}

/// A tls:// end's TLS settings from its "listen_tls" or "upstream_tls"
/// object: PEM text for cert, key and ca; a listener needs cert and key
/// (ca: clients must show a certificate it signed); an upstream trusts ca
/// (else the system's store) unless verify is false, and checks
/// server_name (else the upstream's host).
TlsOptions tls_of(const json::object& tls, const Address& address, bool listening) {
  const char* field = listening ? "listen_tls" : "upstream_tls";
  TlsPem pem;
  pem.cert = tls_text(tls, field, "cert");
  pem.key = tls_text(tls, field, "key");
  pem.ca = tls_text(tls, field, "ca");
  if (const json::value* verify = tls.if_contains("verify"); verify && !verify->is_null()) {
    if (!verify->is_bool()) throw bad_request(std::string(field) + ".verify is not true or false");
    pem.verify = verify->as_bool();
  }
  try {
    if (listening) {
      if (pem.cert.empty() || pem.key.empty()) {
        throw bad_request("a tls:// listen address needs listen_tls.cert and listen_tls.key (PEM)");
      }
      return tls::server_options(std::move(pem));
    }
    TlsOptions options = tls::client_options(std::move(pem));
    const std::string name = tls_text(tls, field, "server_name");
    options.server_hostname = name.empty() ? address.host : name;
    return options;
  } catch (const ApiError&) {
    throw;
  } catch (const std::exception& e) {
    throw bad_request(std::string(field) + ": OpenSSL cannot use it: " + e.what());
  }
}

/// A proxy of the API: its toxiproxy fields and the core's proxy.
struct Entry {
  std::string name, listen, upstream;
  bool enabled = true;
  std::vector<Toxic> toxics;
  /// Not toxiproxy's: the TLS of tls:// ends (never shown: keys).
  json::object listen_tls, upstream_tls;
  std::shared_ptr<Proxy> proxy;

  bool datagram() const { return address_of(listen, "listen").scheme == Address::Scheme::udp; }
  /// What the connections that ended moved (the open ones' is the proxy's
  /// to tell), and how many there were: for /metrics.
  ProxyConnectionInfo ended;
  std::uint64_t connections_total = 0;

  /// Bytes received and sent each way, ended connections and open ones.
  ProxyConnectionInfo totals() const {
    ProxyConnectionInfo sum = ended;
    if (proxy) {
      for (const auto& c : proxy->connections()) {
        sum.bytes_upstream += c.bytes_upstream;
        sum.bytes_downstream += c.bytes_downstream;
        sum.received_upstream += c.received_upstream;
        sum.received_downstream += c.received_downstream;
      }
    }
    return sum;
  }

  json::object to_json() const {
    json::array list;
    for (const auto& t : toxics) list.push_back(toxic_json(t));
    return {{"name", name}, {"listen", listen}, {"upstream", upstream}, {"enabled", enabled}, {"toxics", list}};
  }
  Toxic* find(std::string_view toxic) {
    for (auto& t : toxics) {
      if (t.name == toxic) return &t;
    }
    return nullptr;
  }
};

struct Response {
  http::status status = http::status::ok;
  std::string body;
  const char* content_type = "application/json";
};

Response json_response(http::status status, const json::value& value) { return {status, json::serialize(value)}; }

Response error_response(const ApiError& error) {
  return json_response(error.status,
                       json::object{{"error", error.message}, {"status", static_cast<int>(error.status)}});
}

class Api;

/// One HTTP/1.1 connection: read a request, answer it, again while the
/// client keeps the connection alive.
class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(tcp::socket socket, std::shared_ptr<Api> api) : socket_(std::move(socket)), api_(std::move(api)) {}
  void read();

 private:
  void answer(Response response);

  tcp::socket socket_;
  std::shared_ptr<Api> api_;
  boost::beast::flat_buffer buffer_;
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
};

class Api final : public ToxiproxyApi, public std::enable_shared_from_this<Api> {
 public:
  Api(ConduitService& service, ToxiproxyApiOptions options)
      : service_(service), options_(std::move(options)), acceptor_(service.loop().context()) {}

  void listen() {
    const tcp::endpoint endpoint(asio::ip::make_address(options_.host), options_.port);
    acceptor_.open(endpoint.protocol());
    acceptor_.set_option(tcp::acceptor::reuse_address(true));
    acceptor_.bind(endpoint);
    acceptor_.listen();
    const auto bound = acceptor_.local_endpoint();
    address_ = host_port(bound.address().to_string(), bound.port());
    accept();
  }

  std::string address() const override { return address_; }

  /// The proxies of a populate file, made before the API answers anyone;
  /// `done(error)` with the first failure's words.
  void populate_file(const std::string& text, std::function<void(std::optional<std::string>)> done) {
    http::request<http::string_body> request;
    request.body() = text;
    try {
      populate(request, [done](Response response) {
        if (response.status == http::status::created) return done(std::nullopt);
        boost::system::error_code ec;
        const json::value body = json::parse(response.body, ec);
        const json::value* error = !ec && body.is_object() ? body.as_object().if_contains("error") : nullptr;
        done(error && error->is_string() ? std::string(error->as_string()) : response.body);
      });
    } catch (const ApiError& error) {
      done(error.message);
    }
  }

  void stop() override {
    std::promise<void> done;
    asio::post(service_.loop().context(), [this, &done] {
      boost::system::error_code ignored;
      acceptor_.close(ignored);
      for (auto& [name, entry] : proxies_) {
        if (entry->proxy) entry->proxy->close();
      }
      proxies_.clear();
      done.set_value();
    });
    done.get_future().wait();
  }

  /// Answer `request` through `reply` (on the loop, once).
  void handle(const http::request<http::string_body>& request, std::function<void(Response)> reply) {
    try {
      if (request[http::field::user_agent].starts_with("Mozilla/")) {
        return reply({http::status::forbidden, "User agent not allowed\n", "text/plain; charset=utf-8"});
      }
      if (!options_.token.empty() && request[http::field::authorization] != "Bearer " + options_.token) {
        return reply(error_response({http::status::unauthorized,
                                     "this API needs the service's token: send "
                                     "'Authorization: Bearer TOKEN'"}));
      }
      route(request, reply);
    } catch (const ApiError& error) {
      reply(error_response(error));
    }
  }

 private:
  void accept() {
    acceptor_.async_accept([self = shared_from_this()](const boost::system::error_code& ec, tcp::socket socket) {
      if (ec == asio::error::operation_aborted) return;
      if (!ec) std::make_shared<HttpConnection>(std::move(socket), self)->read();
      self->accept();
    });
  }

  std::shared_ptr<Entry> entry(std::string_view name) {
    auto it = proxies_.find(std::string(name));
    if (it == proxies_.end()) throw ApiError{http::status::not_found, "proxy not found"};
    return it->second;
  }

  static json::object body_object(const http::request<http::string_body>& request) {
    boost::system::error_code ec;
    json::value value = json::parse(request.body(), ec);
    if (ec) throw bad_request(ec.message());
    if (!value.is_object()) throw bad_request("expected a JSON object");
    return value.as_object();
  }

  static std::string string_field(const json::object& object, const char* key, std::string fallback = {}) {
    const json::value* v = object.if_contains(key);
    if (!v || v->is_null()) return fallback;
    if (!v->is_string()) throw bad_request(std::string(key) + " is not a string");
    return std::string(v->as_string());
  }

  void route(const http::request<http::string_body>& request, const std::function<void(Response)>& reply) {
    std::string_view target = request.target();
    target = target.substr(0, target.find('?'));
    std::vector<std::string_view> parts;
    while (!target.empty()) {
      if (target.front() == '/') {
        target.remove_prefix(1);
        continue;
      }
      const auto slash = target.find('/');
      parts.push_back(target.substr(0, slash));
      target = slash == std::string_view::npos ? std::string_view() : target.substr(slash);
    }
    const auto method = request.method();
    const auto n = parts.size();
    if (n == 1 && parts[0] == "version" && method == http::verb::get) {
      return reply({http::status::ok, "2.5.0", "text/plain;charset=utf-8"});
    }
    if (n == 1 && parts[0] == "reset" && method == http::verb::post) return reset(reply);
    if (n == 1 && parts[0] == "metrics" && method == http::verb::get) {
      return reply({http::status::ok, metrics(), "text/plain; version=0.0.4; charset=utf-8"});
    }
    if (n == 1 && parts[0] == "populate" && method == http::verb::post) return populate(request, reply);
    if (n >= 1 && parts[0] == "proxies") {
      if (n == 1 && method == http::verb::get) {
        json::object all;
        for (const auto& [name, e] : proxies_) all[name] = e->to_json();
        return reply(json_response(http::status::ok, all));
      }
      if (n == 1 && method == http::verb::post) {
        const auto body = body_object(request);
        return create(body, [reply](std::shared_ptr<Entry> e, std::optional<ApiError> error) {
          reply(error ? error_response(*error) : json_response(http::status::created, e->to_json()));
        });
      }
      if (n == 2 && method == http::verb::get)
        return reply(json_response(http::status::ok, entry(parts[1])->to_json()));
      if (n == 2 && method == http::verb::post) return update(entry(parts[1]), body_object(request), reply);
      if (n == 2 && method == http::verb::delete_) {
        auto e = entry(parts[1]);
        if (e->proxy) e->proxy->close();
        proxies_.erase(e->name);
        return reply({http::status::no_content, "", "application/json"});
      }
      if (n == 3 && parts[2] == "toxics" && method == http::verb::get) {
        json::array list;
        for (const auto& t : entry(parts[1])->toxics) list.push_back(toxic_json(t));
        return reply(json_response(http::status::ok, list));
      }
      if (n == 3 && parts[2] == "toxics" && method == http::verb::post) {
        return add_toxic(entry(parts[1]), body_object(request), reply);
      }
      if (n == 4 && parts[2] == "toxics") {
        auto e = entry(parts[1]);
        Toxic* toxic = e->find(parts[3]);
        if (!toxic) throw ApiError{http::status::not_found, "toxic not found"};
        if (method == http::verb::get) return reply(json_response(http::status::ok, toxic_json(*toxic)));
        if (method == http::verb::post) return update_toxic(e, *toxic, body_object(request), reply);
        if (method == http::verb::delete_) {
          if (e->proxy) e->proxy->remove_fault(toxic->name);
          e->toxics.erase(e->toxics.begin() + (toxic - e->toxics.data()));
          return reply({http::status::no_content, "", "application/json"});
        }
      }
    }
    reply({http::status::not_found, "404 page not found\n", "text/plain; charset=utf-8"});
  }

  /// Prometheus' text format: toxiproxy's two byte counters per proxy and
  /// direction (toxiproxy's -proxy-metrics), and Conduit's connection counts.
  std::string metrics() const {
    auto quoted = [](const std::string& text) {
      std::string out;
      for (char c : text) {
        if (c == '\\' || c == '"') out += '\\';
        if (c == '\n') {
          out += "\\n";
          continue;
        }
        out += c;
      }
      return out;
    };
    std::string received = "# TYPE toxiproxy_proxy_received_bytes_total counter\n";
    std::string sent = "# TYPE toxiproxy_proxy_sent_bytes_total counter\n";
    std::string open =
        "# HELP conduit_proxy_connections Connections open now.\n# TYPE conduit_proxy_connections gauge\n";
    std::string total =
        "# HELP conduit_proxy_connections_total Connections accepted.\n# TYPE conduit_proxy_connections_total "
        "counter\n";
    for (const auto& [name, e] : proxies_) {
      const ProxyConnectionInfo t = e->totals();
      const std::string labels = "proxy=\"" + quoted(name) + "\",listener=\"" + quoted(e->listen) + "\",upstream=\"" +
                                 quoted(e->upstream) + "\"";
      for (const auto& [direction, in, out] : {std::tuple{"upstream", t.received_upstream, t.bytes_upstream},
                                               std::tuple{"downstream", t.received_downstream, t.bytes_downstream}}) {
        const std::string l = "{direction=\"" + std::string(direction) + "\"," + labels + "}";
        received += "toxiproxy_proxy_received_bytes_total" + l + " " + std::to_string(in) + "\n";
        sent += "toxiproxy_proxy_sent_bytes_total" + l + " " + std::to_string(out) + "\n";
      }
      open += "conduit_proxy_connections{" + labels + "} " +
              std::to_string(e->proxy ? e->proxy->connections().size() : 0) + "\n";
      total += "conduit_proxy_connections_total{" + labels + "} " + std::to_string(e->connections_total) + "\n";
    }
    return received + sent + open + total;
  }

  /// Make a proxy from its JSON (name, listen, upstream, enabled), then
  /// `done(entry, error)`.
  void create(const json::object& body, std::function<void(std::shared_ptr<Entry>, std::optional<ApiError>)> done) {
    auto e = std::make_shared<Entry>();
    try {
      e->name = string_field(body, "name");
      e->listen = string_field(body, "listen", "127.0.0.1:0");
      e->upstream = string_field(body, "upstream");
      if (const json::value* v = body.if_contains("enabled"); v && v->is_bool()) e->enabled = v->as_bool();
      if (e->name.empty()) throw ApiError{http::status::bad_request, "missing required field: name"};
      if (e->upstream.empty()) throw ApiError{http::status::bad_request, "missing required field: upstream"};
      if (proxies_.count(e->name)) throw ApiError{http::status::conflict, "proxy already exists"};
      e->listen_tls = object_field(body, "listen_tls");
      e->upstream_tls = object_field(body, "upstream_tls");
      check_addresses(*e);
      // Not in toxiproxy 2.5.0 (its issue 447): a proxy's toxics with it,
      // for populate and the start-up file.
      if (const json::value* toxics = body.if_contains("toxics"); toxics && !toxics->is_null()) {
        if (!toxics->is_array()) throw bad_request("toxics is not an array");
        for (const auto& t : toxics->as_array()) {
          if (!t.is_object()) throw bad_request("each toxic is a JSON object");
          e->toxics.push_back(new_toxic(*e, t.as_object()));
        }
      }
    } catch (const ApiError& error) {
      return done(nullptr, error);
    }
    proxies_[e->name] = e;
    if (!e->enabled) return done(e, std::nullopt);
    start(e, [this, e, done](std::optional<ApiError> error) {
      if (error) proxies_.erase(e->name);
      done(e, error);
    });
  }

  /// The entry's addresses and TLS settings as they would be used:
  /// throws ApiError for a bad one.
  static void check_addresses(const Entry& e) {
    const auto [listen, upstream] = addresses_of(e.listen, e.upstream);
    if (!e.listen_tls.empty() && listen.scheme != Address::Scheme::tls) {
      throw bad_request("listen_tls is for a tls:// listen address");
    }
    if (!e.upstream_tls.empty() && upstream.scheme != Address::Scheme::tls) {
      throw bad_request("upstream_tls is for a tls:// upstream address");
    }
    if (listen.scheme == Address::Scheme::tls) tls_of(e.listen_tls, listen, true);
    if (upstream.scheme == Address::Scheme::tls) tls_of(e.upstream_tls, upstream, false);
  }

  /// Listen as the entry says, under the service's policy and descriptor
  /// budget, with its toxics.
  void start(const std::shared_ptr<Entry>& e, std::function<void(std::optional<ApiError>)> done) {
    const Policy& policy = service_.options().policy;
    // Checked as it was set. (Named, not bound: clang cannot capture a structured binding.)
    const std::pair<Address, Address> ends = addresses_of(e->listen, e->upstream);
    const Address listen = ends.first, upstream = ends.second;
    if (auto why = service_.check_not_own_address(listen.port, {}))
      return done(ApiError{http::status::forbidden, *why});
    std::vector<std::string> names = policy.listen_names();
    for (auto& n : policy.connect_names()) names.push_back(std::move(n));
    with_rule_names(service_.loop(), std::move(names), [this, e, done, &policy, listen, upstream](auto resolved) {
      const std::string what = "toxiproxy proxy " + e->name + " from " + e->listen + " to " + e->upstream;
      std::weak_ptr<Entry> weak = e;
      auto on_accepted = [weak](const ProxyConnectionInfo&) {
        if (auto entry = weak.lock()) ++entry->connections_total;
      };
      auto on_closed = [weak](const ProxyConnectionInfo& info, std::exception_ptr) {
        auto entry = weak.lock();
        if (!entry) return;
        entry->ended.bytes_upstream += info.bytes_upstream;
        entry->ended.bytes_downstream += info.bytes_downstream;
        entry->ended.received_upstream += info.received_upstream;
        entry->ended.received_downstream += info.received_downstream;
      };
      std::vector<Fault> faults;
      for (const auto& toxic : e->toxics) {
        if (auto fault = fault_of(toxic)) faults.push_back(std::move(*fault));
      }
      auto finish = [e, done, listen](std::exception_ptr error, std::shared_ptr<Proxy> proxy) {
        if (error) {
          const bool refused = [&] {
            try {
              std::rethrow_exception(error);
            } catch (const PolicyRefusal&) {
              return true;
            } catch (...) {
              return false;
            }
          }();
          return done(ApiError{refused ? http::status::forbidden : http::status::internal_server_error,
                               error_of(error).message()});
        }
        e->proxy = std::move(proxy);
        // toxiproxy reports where it listens, the port it picked included.
        if (const auto sockets = e->proxy->sockets(); !sockets.empty()) {
          const auto scheme = e->listen.find("://");
          e->listen = (scheme == std::string::npos ? std::string() : e->listen.substr(0, scheme + 3)) +
                      sockets.front().to_string();
        }
        done(std::nullopt);
      };
      DescriptorBudget& descriptors = service_.descriptors();
      if (listen.scheme == Address::Scheme::udp) {
        DatagramProxyOptions options;
        options.listen_host = listen.host;
        options.listen_port = listen.port;
        options.upstream_host = upstream.host;
        options.upstream_port = upstream.port;
        options.faults = std::move(faults);
        options.on_accepted = on_accepted;
        options.on_closed = on_closed;
        options.check_listen_address = policy_check(policy, AddressUse::listen, what, resolved);
        options.check_upstream_address = policy_check(policy, AddressUse::connect, what, resolved);
        options.admit = [&descriptors](const SocketAddress&) { return descriptors.allows(1); };
        return DatagramProxy::create(service_.loop(), std::move(options), finish);
      }
      StreamProxyOptions options;
      options.listen.host = listen.host;
      options.listen.port = listen.port;
      options.upstream.host = upstream.host;
      options.upstream.port = upstream.port;
      try {
        if (listen.scheme == Address::Scheme::tls) options.listen.tls = tls_of(e->listen_tls, listen, true);
        if (upstream.scheme == Address::Scheme::tls) options.upstream.tls = tls_of(e->upstream_tls, upstream, false);
      } catch (const ApiError& error) {
        return done(error);
      }
      options.faults = std::move(faults);
      options.on_accepted = on_accepted;
      options.on_closed = on_closed;
      options.check_listen_address = policy_check(policy, AddressUse::listen, what, resolved);
      options.check_upstream_address = policy_check(policy, AddressUse::connect, what, resolved);
      options.admit = [&descriptors] { return descriptors.allows(2); };
      StreamProxy::create(service_.loop(), std::move(options), finish);
    });
  }

  void update(const std::shared_ptr<Entry>& e, const json::object& body, const std::function<void(Response)>& reply) {
    const std::string listen = string_field(body, "listen", e->listen);
    const std::string upstream = string_field(body, "upstream", e->upstream);
    bool enabled = e->enabled;
    if (const json::value* v = body.if_contains("enabled"); v && v->is_bool()) enabled = v->as_bool();
    Entry changed;
    changed.listen = listen;
    changed.upstream = upstream;
    changed.listen_tls = body.contains("listen_tls") ? object_field(body, "listen_tls") : e->listen_tls;
    changed.upstream_tls = body.contains("upstream_tls") ? object_field(body, "upstream_tls") : e->upstream_tls;
    check_addresses(changed);
    for (const auto& toxic : e->toxics) check_toxic(changed, toxic);
    auto answer = [e, reply](std::optional<ApiError> error) {
      reply(error ? error_response(*error) : json_response(http::status::ok, e->to_json()));
    };
    const bool moved = listen != e->listen || upstream != e->upstream || changed.listen_tls != e->listen_tls ||
                       changed.upstream_tls != e->upstream_tls;
    e->listen = listen;
    e->upstream = upstream;
    e->listen_tls = std::move(changed.listen_tls);
    e->upstream_tls = std::move(changed.upstream_tls);
    if (moved && e->proxy) {  // toxiproxy restarts a proxy whose addresses change
      e->proxy->close();
      e->proxy.reset();
    }
    e->enabled = enabled;
    if (!enabled) {
      if (e->proxy) e->proxy->down();
      return answer(std::nullopt);
    }
    if (!e->proxy) return start(e, answer);
    if (e->proxy->is_up()) return answer(std::nullopt);
    e->proxy->up([answer](std::exception_ptr error) {
      answer(error ? std::optional<ApiError>(ApiError{http::status::internal_server_error, error_of(error).message()})
                   : std::nullopt);
    });
  }

  void add_toxic(const std::shared_ptr<Entry>& e, const json::object& body,
                 const std::function<void(Response)>& reply) {
    Toxic toxic = new_toxic(*e, body);
    apply(e, toxic);
    e->toxics.push_back(toxic);
    reply(json_response(http::status::ok, toxic_json(toxic)));
  }

  /// A toxic from its JSON, with toxiproxy's defaults (downstream,
  /// toxicity 1, named TYPE_STREAM); throws ApiError for a bad one or a
  /// name `e` has already.
  static Toxic new_toxic(Entry& e, const json::object& body) {
    Toxic toxic;
    toxic.type = string_field(body, "type");
    toxic.stream = string_field(body, "stream");
    if (toxic.stream.empty()) toxic.stream = "downstream";
    if (toxic.stream != "upstream" && toxic.stream != "downstream" && toxic.stream != "both") {
      throw ApiError{http::status::bad_request, "stream was invalid, can be either upstream or downstream (or both)"};
    }
    const auto type = toxic_types().find(toxic.type);
    if (type == toxic_types().end()) throw ApiError{http::status::bad_request, "invalid toxic type"};
    toxic.name = string_field(body, "name");
    if (toxic.name.empty()) toxic.name = toxic.type + "_" + toxic.stream;
    if (e.find(toxic.name)) throw ApiError{http::status::conflict, "toxic already exists"};
    toxic.toxicity = number_field(body, "toxicity", 1);
    for (const auto& key : type->second) toxic.attributes[key] = 0;
    if (toxic.type == "reorder") toxic.attributes["hold"] = 10;  // ms, as the core's default
    take_attributes(toxic, body);
    check_toxic(e, toxic);
    return toxic;
  }

  /// What the core would refuse, refused now: a bad value, or a kind the
  /// proxy's transport does not carry.
  static void check_toxic(const Entry& e, const Toxic& toxic) { fault_of(toxic, e.datagram()); }

  void update_toxic(const std::shared_ptr<Entry>& e, Toxic& toxic, const json::object& body,
                    const std::function<void(Response)>& reply) {
    Toxic changed = toxic;
    changed.toxicity = number_field(body, "toxicity", toxic.toxicity);
    take_attributes(changed, body);
    check_toxic(*e, changed);
    apply(e, changed);
    toxic = changed;
    reply(json_response(http::status::ok, toxic_json(toxic)));
  }

  static double number_field(const json::object& body, const char* key, double fallback) {
    const json::value* v = body.if_contains(key);
    if (!v || v->is_null()) return fallback;
    if (v->is_double()) return v->as_double();
    if (v->is_int64()) return static_cast<double>(v->as_int64());
    if (v->is_uint64()) return static_cast<double>(v->as_uint64());
    throw bad_request(std::string(key) + " is not a number");
  }

  /// The attributes the body gives, over the toxic's own: only its type's.
  static void take_attributes(Toxic& toxic, const json::object& body) {
    const json::value* attributes = body.if_contains("attributes");
    if (!attributes || attributes->is_null()) return;
    if (!attributes->is_object()) throw bad_request("attributes is not an object");
    const auto& scope = scope_attributes();
    for (const auto& [key, value] : attributes->as_object()) {
      const bool scoped = std::find(scope.begin(), scope.end(), key) != scope.end();
      // As Go's decoder, unknown fields are ignored.
      if (!scoped && !toxic.attributes.contains(key)) continue;
      if (key == "clients") {
        if (value.is_null()) {
          toxic.attributes.erase(key);
          continue;
        }
      } else if (!value.is_number()) {
        throw bad_request("attributes." + std::string(key) + " is not a number");
      }
      toxic.attributes[key] = value;
    }
  }

  /// The toxic's fault on the running proxy (set, or removed where it has
  /// no effect); throws ApiError if the core refuses it.
  static void apply(const std::shared_ptr<Entry>& e, const Toxic& toxic) {
    std::optional<Fault> fault = fault_of(toxic);
    if (!e->proxy) return;
    if (!fault) {
      e->proxy->remove_fault(toxic.name);
      return;
    }
    try {
      e->proxy->set_fault(std::move(*fault));
    } catch (const std::invalid_argument& error) {
      throw bad_request(error.what());
    }
  }

  void reset(const std::function<void(Response)>& reply) {
    auto pending = std::make_shared<std::size_t>(1);
    auto finish = [pending, reply] {
      if (--*pending == 0) reply({http::status::no_content, "", "application/json"});
    };
    for (auto& [name, e] : proxies_) {
      for (const auto& toxic : e->toxics) {
        if (e->proxy) e->proxy->remove_fault(toxic.name);
      }
      e->toxics.clear();
      e->enabled = true;
      ++*pending;
      if (!e->proxy) {
        start(e, [finish](std::optional<ApiError>) { finish(); });
      } else if (!e->proxy->is_up()) {
        e->proxy->up([finish](std::exception_ptr) { finish(); });
      } else {
        finish();
      }
    }
    finish();
  }

  /// POST /populate: each proxy of the array made (or, when one of its name
  /// exists with other addresses, remade), in order; 201 with all of
  /// them, or the first error with those made before it.
  void populate(const http::request<http::string_body>& request, const std::function<void(Response)>& reply) {
    boost::system::error_code ec;
    json::value value = json::parse(request.body(), ec);
    if (ec || !value.is_array()) {
      throw bad_request(ec ? ec.message() : std::string("expected a JSON array of proxies"));
    }
    auto list = std::make_shared<json::array>(value.as_array());
    auto made = std::make_shared<json::array>();
    populate_next(list, 0, made, reply);
  }

  void populate_next(std::shared_ptr<json::array> list, std::size_t at, std::shared_ptr<json::array> made,
                     std::function<void(Response)> reply) {
    if (at == list->size()) return reply(json_response(http::status::created, json::object{{"proxies", *made}}));
    auto fail = [made, reply](const ApiError& error) {
      reply(json_response(
          error.status,
          json::object{{"error", error.message}, {"status", static_cast<int>(error.status)}, {"proxies", *made}}));
    };
    if (!(*list)[at].is_object()) return fail(bad_request("each proxy is a JSON object"));
    const json::object body = (*list)[at].as_object();
    std::string name;
    try {
      name = string_field(body, "name");
    } catch (const ApiError& error) {
      return fail(error);
    }
    // An existing proxy of that name is replaced, as toxiproxy does.
    if (auto it = proxies_.find(name); it != proxies_.end()) {
      if (it->second->proxy) it->second->proxy->close();
      proxies_.erase(it);
    }
    create(body, [this, list, at, made, reply, fail](std::shared_ptr<Entry> e, std::optional<ApiError> error) {
      if (error) return fail(*error);
      made->push_back(e->to_json());
      populate_next(list, at + 1, made, reply);
    });
  }

  ConduitService& service_;
  ToxiproxyApiOptions options_;
  tcp::acceptor acceptor_;
  std::string address_;
  std::map<std::string, std::shared_ptr<Entry>> proxies_;
};

void HttpConnection::read() {
  request_ = {};
  http::async_read(
      socket_, buffer_, request_, [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
        if (ec) return;  // the client went away, or sent no HTTP
        self->api_->handle(self->request_, [self](Response response) { self->answer(std::move(response)); });
      });
}

void HttpConnection::answer(Response response) {
  response_ = {};
  response_.version(request_.version());
  response_.result(response.status);
  response_.keep_alive(request_.keep_alive());
  if (response.status != http::status::no_content) {
    response_.set(http::field::content_type, response.content_type);
    response_.body() = std::move(response.body);
  }
  response_.prepare_payload();
  http::async_write(socket_, response_, [self = shared_from_this()](const boost::system::error_code& ec, std::size_t) {
    if (ec || !self->response_.keep_alive()) {
      boost::system::error_code ignored;
      self->socket_.shutdown(tcp::socket::shutdown_send, ignored);
      return;
    }
    self->read();
  });
}

}  // namespace

std::shared_ptr<ToxiproxyApi> ToxiproxyApi::start(ConduitService& service, ToxiproxyApiOptions options) {
  const std::string config = options.config;
  auto api = std::make_shared<Api>(service, std::move(options));
  std::promise<void> ready;
  asio::post(service.loop().context(), [&] {
    try {
      api->listen();
      if (config.empty()) return ready.set_value();
      api->populate_file(config, [&](std::optional<std::string> error) {
        if (!error) return ready.set_value();
        ready.set_exception(std::make_exception_ptr(std::invalid_argument("the start-up proxies: " + *error)));
      });
    } catch (...) {
      ready.set_exception(std::current_exception());
    }
  });
  try {
    ready.get_future().get();
  } catch (...) {
    api->stop();
    throw;
  }
  return api;
}

}  // namespace conduit::service

// Boost.JSON's compiled part, once, in this library (Debian packages no
// libboost_json for 1.81's header-only use).
#include <boost/json/src.hpp>
