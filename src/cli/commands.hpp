// The subcommands of the conduit binary; main.cpp only registers them.
#pragma once

#include <CLI/CLI.hpp>

namespace conduit::cli {

/// Each adds its subcommand to `app`; when it runs, its exit code lands in `exit_code`.
void set_echo_server_command(CLI::App& app, int& exit_code);
void set_echo_client_command(CLI::App& app, int& exit_code);
void set_udp_echo_command(CLI::App& app, int& exit_code);
void set_run_subprocess_command(CLI::App& app, int& exit_code);
void set_serve_command(CLI::App& app, int& exit_code);
void set_health_command(CLI::App& app, int& exit_code);
void set_proxy_command(CLI::App& app, int& exit_code);
void set_connect_command(CLI::App& app, int& exit_code);
void set_listen_command(CLI::App& app, int& exit_code);
void set_sessions_command(CLI::App& app, int& exit_code);
void set_faults_command(CLI::App& app, int& exit_code);

}  // namespace conduit::cli
