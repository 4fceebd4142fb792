// TLS for stream transports, on OpenSSL through asio::ssl: the options that
// turn create_connection / create_server / start_tls into TLS, contexts with
// sane defaults, and what get_extra_info tells about a TLS connection.
#pragma once

#include <boost/asio/ssl/context.hpp>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace conduit {

/// The PEM text a TlsOptions' context was made from (tls::client_options,
/// tls::server_options): what an opener on another host sends in its
/// place, since an OpenSSL context cannot leave this process.
struct TlsPem {
  /// Client: trust only these CAs (empty: the system's store). Server:
  /// clients must present a certificate these signed (empty: none asked).
  std::string ca;
  /// Server: its certificate chain and key. Client: a certificate to
  /// present to servers that ask (the key may be in the cert's text).
  std::string cert, key;
  bool verify = true;  ///< client: false checks nothing (encryption only)
};

/// TLS settings of a connection or server (asyncio's ssl=,
/// server_hostname=, ssl_handshake_timeout=, ssl_shutdown_timeout=).
struct TlsOptions {
  TlsOptions() = default;
  explicit TlsOptions(std::shared_ptr<boost::asio::ssl::context> ctx) : context(std::move(ctx)) {}

  /// The OpenSSL context: certificates, verification mode, protocols.
  std::shared_ptr<boost::asio::ssl::context> context;
  /// Client side: the name sent as SNI and checked against the server's
  /// certificate (when the context verifies peers). Default: the host
  /// given to create_connection.
  std::optional<std::string> server_hostname;
  /// Handshake and close_notify exchange bounds (asyncio's 60 s and 30 s);
  /// must be positive.
  std::chrono::milliseconds handshake_timeout = std::chrono::seconds(60);
  std::chrono::milliseconds shutdown_timeout = std::chrono::seconds(30);
  /// What `context` was made of, when it was made from PEM text; a remote
  /// opener (conduit/service/remote.hpp) needs it, a local one does not.
  std::optional<TlsPem> pem;
};

/// get_extra_info("peercert"): the peer's certificate, when it sent one.
struct CertificateInfo {
  std::string subject;                         ///< One line, e.g. "CN=localhost, O=Conduit"
  std::string issuer;                          ///< Same form.
  std::vector<std::string> subject_alt_names;  ///< "DNS:localhost", "IP Address:127.0.0.1", ...
  std::string not_before, not_after;           ///< As OpenSSL prints them.
  std::string serial_number;                   ///< Hex.
  std::string pem;                             ///< The certificate itself.
};

/// get_extra_info("cipher"): as Python's SSLSocket.cipher().
struct CipherInfo {
  std::string name;      ///< e.g. "TLS_AES_256_GCM_SHA384"
  std::string protocol;  ///< e.g. "TLSv1.3"
  int secret_bits = 0;
};

namespace tls {

/// A client context that verifies the server: the system's CA store, or
/// only `cafile` when given, TLS 1.2 at least. Hostnames are checked per
/// connection (TlsOptions::server_hostname).
std::shared_ptr<boost::asio::ssl::context> client_context(const std::optional<std::string>& cafile = std::nullopt);

/// A client context that verifies nothing (--insecure): encryption only.
std::shared_ptr<boost::asio::ssl::context> insecure_client_context();

/// A server context with this certificate chain and key (PEM files). With
/// `client_cafile`, clients must present a certificate it signed (mTLS).
std::shared_ptr<boost::asio::ssl::context> server_context(
    const std::string& certfile, const std::string& keyfile,
    const std::optional<std::string>& client_cafile = std::nullopt);

/// client_context trusting only the CA certificates in `ca_pem` (PEM text).
std::shared_ptr<boost::asio::ssl::context> client_context_from_pem(std::string_view ca_pem);

/// server_context from PEM text instead of files (an empty `client_ca_pem`:
/// no client certificates asked for). Throws what OpenSSL finds wrong.
std::shared_ptr<boost::asio::ssl::context> server_context_from_pem(std::string_view cert_pem, std::string_view key_pem,
                                                                   std::string_view client_ca_pem = {});

/// A client's TlsOptions from PEM text, `pem` kept: trust only pem.ca (the
/// system's store when empty), or nothing when !pem.verify; present
/// pem.cert when given. Throws what
/// OpenSSL finds wrong.
TlsOptions client_options(TlsPem pem);
/// A server's: pem.cert and pem.key, and with pem.ca, clients must present
/// a certificate it signed (mTLS). Throws what OpenSSL finds wrong.
TlsOptions server_options(TlsPem pem);

}  // namespace tls

}  // namespace conduit
