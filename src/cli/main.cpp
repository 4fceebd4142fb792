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
  conduit::cli::set_proxy_command(app, exit_code);
  conduit::cli::set_connect_command(app, exit_code);
  conduit::cli::set_listen_command(app, exit_code);
  conduit::cli::set_sessions_command(app, exit_code);
  conduit::cli::set_faults_command(app, exit_code);
  // A first word that is no subcommand: name it (CLI11 would only say that
  // a subcommand is required).
  if (argc > 1 && argv[1][0] != '-') {
    const std::string word = argv[1];
    std::string names;
    bool known = false;
    for (const CLI::App* sub : app.get_subcommands({})) {
      known = known || sub->check_name(word);
      names += (names.empty() ? "" : ", ") + sub->get_name();
    }
    if (!known) {
      std::cerr << "conduit: unknown subcommand '" << word << "' (the subcommands: " << names << ")\n"
                << "Run 'conduit --help' for more information.\n";
      return conduit::cli::exit_usage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int usage = conduit::cli::exit_usage;
    // CLI11 checks required options before unknown ones, so a misspelt
    // `--conect` read as "--connect is required": name the unknown option.
    if (dynamic_cast<const CLI::RequiredError*>(&e) != nullptr) {
      for (const CLI::App* sub : app.get_subcommands()) {
        for (const std::string& extra : sub->remaining()) {
          if (extra.size() < 2 || extra[0] != '-') continue;
          std::cerr << "conduit " << sub->get_name() << ": unknown option '" << extra << "'\n"
                    << "Run 'conduit " << sub->get_name() << " --help' for its options.\n";
          return usage;
        }
      }
    }
    const int rc = app.exit(e);  // prints help, version or the error
    if (rc == 0) return 0;
    return usage;
  }
  return exit_code;
}
