// --via and its flags: where the service is, how to reach it, and the
// Opener a tool makes its transports with.
#pragma once

#include "endpoint.hpp"
#include "tls_flags.hpp"

#include <conduit/opener.hpp>
#include <conduit/service/remote.hpp>

#include <CLI/CLI.hpp>

#include <memory>
#include <string>

namespace conduit::cli {

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
/// Where the tool's transports are made: on this host, or with --via on
/// the service's (its flags read; throws std::invalid_argument naming a
/// file that cannot be read). The one place a tool chooses.
std::unique_ptr<Opener> make_opener(EventLoop& loop, const ViaFlags& flags);

}  // namespace conduit::cli
