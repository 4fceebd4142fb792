// --via and its flags: where the service is, how to reach it, and the
// open requests a tool sends it.
#pragma once

#include "endpoint.hpp"
#include "tls_flags.hpp"

#include <conduit/service/remote.hpp>

#include <CLI/CLI.hpp>

#include <string>

namespace conduit::cli {

/// The service's request to connect to `ep` (--via), with its TLS settings.
v1::OpenConnection remote_connect_request(const Endpoint& ep, const TlsFlags& flags);
/// The service's request to listen on `ep` (--via); a tls:// one carries
/// --cert, --key and --cafile as PEM. Throws std::invalid_argument naming a
/// file that cannot be read.
v1::OpenServer remote_listen_request(const Endpoint& ep, const TlsFlags& flags, int backlog);

/// --via HOST:PORT and --token-file: run the tool's protocol through a
/// `conduit serve` session instead of locally.
struct ViaFlags {
  std::string address;
  std::string token_file;
  std::string cafile, cert, key;  // TLS to the service
};
void add_via_flags(CLI::App& app, ViaFlags& flags);
/// The service's address as gRPC takes it: HOST[:PORT] with port 50051 if
/// left out, [IPv6][:PORT], or unix:/PATH as it is; throws
/// std::invalid_argument naming the problem (a URL, a bare IPv6 address, a
/// bad port).
std::string via_address(const std::string& text);
/// Why these flags cannot be used: --token-file or --via-* without --via,
/// --via-cert without --via-key or --via-cafile. Empty: fine.
std::string via_flags_problem(const ViaFlags& flags);
/// The token in flags.token_file's first line ("" without a file); throws
/// std::invalid_argument if it cannot be read.
std::string read_token(const ViaFlags& flags);
/// Everything --via's flags say, files read; throws std::invalid_argument
/// naming a file that cannot be read.
service::RemoteOptions read_remote(const ViaFlags& flags);
/// A file's whole content; throws std::invalid_argument naming it.
std::string read_file(const std::string& path, const char* what);

}  // namespace conduit::cli
