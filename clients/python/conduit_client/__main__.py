"""python3 -m conduit_client --via HOST:PORT script.py ARGS...

Run an unmodified asyncio program with its network on the service's host:
every event loop it makes (asyncio.run included) is a RemoteEventLoop on
the service at --via, as torsocks runs a program in another network.
"""
import argparse
import os
import runpy
import sys

from .loop import RemoteEventLoopPolicy


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m conduit_client",
        description="Run an asyncio program whose connections, servers, subprocesses and name lookups are "
                    "on the host of a `conduit serve`.")
    parser.add_argument("--via", required=True, metavar="HOST:PORT",
                        help="the service (HOST:PORT, port 50051 if left out; or unix:/PATH)")
    parser.add_argument("--token-file", metavar="FILE",
                        help="the service's bearer token, first line of FILE (else $CONDUIT_TOKEN)")
    parser.add_argument("-m", dest="module", metavar="MODULE", help="run a module, as python3 -m does")
    parser.add_argument("script", nargs="?", help="the program to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="its arguments")
    options = parser.parse_args(argv)
    if (options.module is None) == (options.script is None):
        parser.error("give a script or -m MODULE (one of them)")

    import asyncio
    via = options.via
    if not via.startswith("unix:") and ":" not in via.rpartition("]")[2]:
        via += ":50051"
    token = os.environ.get("CONDUIT_TOKEN") if options.token_file is None else None
    asyncio.set_event_loop_policy(RemoteEventLoopPolicy(via, token=token, token_file=options.token_file))
    if options.module is not None:
        sys.argv = [options.module] + ([options.script] if options.script else []) + options.args
        runpy.run_module(options.module, run_name="__main__", alter_sys=True)
    else:
        if not os.path.exists(options.script):
            parser.error(f"{options.script}: no such file")
        sys.argv = [options.script] + options.args
        sys.path.insert(0, os.path.dirname(os.path.abspath(options.script)))
        runpy.run_path(options.script, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
