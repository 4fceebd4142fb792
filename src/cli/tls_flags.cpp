#include "tls_flags.hpp"

#include "common.hpp"

#include <conduit/tls.hpp>

#include <optional>
#include <stdexcept>

namespace conduit::cli {

void add_tls_flags(CLI::App& app, TlsFlags& flags, bool server) {
  if (server) {
    app.add_option("--cert", flags.cert, "TLS: certificate chain (PEM) for tls:// listeners")->check(CLI::ExistingFile);
    app.add_option("--key", flags.key, "TLS: private key (PEM) of --cert")->check(CLI::ExistingFile);
    app.add_option("--cafile", flags.cafile, "TLS: require client certificates signed by this CA (mTLS)")
        ->check(CLI::ExistingFile);
  } else {
    app.add_option("--cafile", flags.cafile, "TLS: trust this CA (PEM) instead of the system's")
        ->check(CLI::ExistingFile);
    app.add_flag("--insecure", flags.insecure, "TLS: do not verify the server's certificate or name");
    app.add_option("--cert", flags.cert, "TLS: client certificate (PEM), for servers that ask")
        ->check(CLI::ExistingFile);
    app.add_option("--key", flags.key, "TLS: private key (PEM) of --cert")->check(CLI::ExistingFile);
  }
}

std::string tls_flags_problem(const TlsFlags& flags, bool uses_tls, bool server) {
  const bool any = !flags.cert.empty() || !flags.key.empty() || !flags.cafile.empty() || flags.insecure;
  if (any && !uses_tls) {
    const char* flag = !flags.cert.empty()     ? "--cert"
                       : !flags.key.empty()    ? "--key"
                       : !flags.cafile.empty() ? "--cafile"
                                               : "--insecure";
    return std::string(flag) + " applies to tls:// endpoints only, and none is given";
  }
  if (!flags.key.empty() && flags.cert.empty()) return "--key needs --cert";
  if (!flags.cert.empty() && flags.key.empty()) {
    // A client's --cert may hold its key too (one PEM file); else say so
    // rather than let OpenSSL report a decoder failure.
    std::ifstream file(flags.cert);
    const std::string pem((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    if (server || pem.find("PRIVATE KEY-----") == std::string::npos) {
      return "--cert " + flags.cert + " needs --key (the file holds no private key)";
    }
  }
  return {};
}

TlsOptions client_tls_options(const TlsFlags& flags) {
  TlsPem pem;
  pem.verify = !flags.insecure;
  if (!flags.cafile.empty()) pem.ca = read_file(flags.cafile, "--cafile");
  if (!flags.cert.empty()) pem.cert = read_file(flags.cert, "--cert");
  if (!flags.key.empty()) pem.key = read_file(flags.key, "--key");
  return tls::client_options(std::move(pem));
}

TlsOptions server_tls_options(const TlsFlags& flags) {
  TlsPem pem;
  pem.cert = read_file(flags.cert, "--cert");
  pem.key = read_file(flags.key, "--key");
  if (!flags.cafile.empty()) pem.ca = read_file(flags.cafile, "--cafile");
  return tls::server_options(std::move(pem));
}

}  // namespace conduit::cli
