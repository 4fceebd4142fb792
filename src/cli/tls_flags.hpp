// --cert, --key, --cafile and --insecure of the tools that speak TLS.
#pragma once

#include <conduit/tls.hpp>

#include <CLI/CLI.hpp>

#include <string>

namespace conduit::cli {

/// --cert, --key, --cafile, --insecure of the TLS-capable tools.
struct TlsFlags {
  std::string cert, key, cafile;
  bool insecure = false;
};
/// Adds them to `app`; `server` words the help for a server.
void add_tls_flags(CLI::App& app, TlsFlags& flags, bool server);
/// Why these TLS flags cannot be used: given without a tls:// endpoint
/// (`uses_tls` false), or --cert without its key. Empty: fine.
std::string tls_flags_problem(const TlsFlags& flags, bool uses_tls, bool server);

/// TLS settings of a tls:// client from its flags (the system's CAs unless
/// --cafile; none checked with --insecure), made from the files' PEM text
/// so that a --via session can carry them; throws std::invalid_argument
/// naming a file it cannot read, and what OpenSSL throws.
TlsOptions client_tls_options(const TlsFlags& flags);
/// The same for a tls:// listener: --cert and --key, and with --cafile,
/// client certificates required (mTLS).
TlsOptions server_tls_options(const TlsFlags& flags);

}  // namespace conduit::cli
