// conduit: asyncio-style transports and protocols, as command-line tools.
#include "commands.hpp"
#include "common.hpp"

#ifndef CONDUIT_VERSION
#error "CONDUIT_VERSION must be defined by the build"
#endif

int main(int argc, char** argv) {
  CLI::App app{"conduit: echo servers and clients over asyncio-style transports and protocols"};
  app.set_version_flag("--version", CONDUIT_VERSION);
  app.require_subcommand(1);
  app.footer("Run 'conduit SUBCOMMAND --help' for each tool's options and examples.");
  int exit_code = conduit::cli::exit_ok;
  conduit::cli::set_echo_server_command(app, exit_code);
  conduit::cli::set_echo_client_command(app, exit_code);
  conduit::cli::set_udp_echo_command(app, exit_code);
  conduit::cli::set_run_subprocess_command(app, exit_code);
  conduit::cli::set_serve_command(app, exit_code);
  conduit::cli::set_health_command(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);  // prints help, version or the error
    return rc == 0 ? 0 : conduit::cli::exit_usage;
  }
  return exit_code;
}
