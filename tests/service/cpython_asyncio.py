#!/usr/bin/python3
"""CPython's own asyncio tests (Debian's libpython3.11-testsuite), run with
conduit_client.RemoteEventLoop as the loop under test, against a real
`conduit serve` on this host.

usage: cpython_asyncio.py CONDUIT_BIN PACKAGE_PATH [MODULE...]

Every event loop the tests make is a RemoteEventLoop: test_events'
create_event_loop() returns one, and the event loop policy makes one for
asyncio.new_event_loop(), asyncio.run() and IsolatedAsyncioTestCase. Each
module runs in a child process of its own; the table printed is passed /
failed / skipped per module. A failure is fine only when it is listed in
EXPECTED with its reason; the exit status is 1 if any other test fails, or
if a listed one passes (so that the list stays true).

test_events defines the same tests for each selector (epoll, poll,
select), test_subprocess for each child watcher; the remote loop uses
neither, so one class of each runs (epoll, the threaded watcher).
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

MODULES = ["test_events", "test_streams", "test_server", "test_subprocess", "test_sslproto", "test_ssl",
           "test_sendfile", "test_buffered_proto", "test_protocols"]

# Test ids (module.Class.test) that fail on the remote loop, and why. Each
# fails every time, but those marked `timing` (they look at the connection in
# the instant after close()) may pass when the service is quick.
_LOCAL_POPEN = "needs the child's local Popen object (get_extra_info('subprocess')): the child is on the service's host"
_MOCKED_POPEN = "mocks subprocess.Popen to fail: a remote child is not made by a local Popen"
_SSL_REFERENCE = ("timing: checks the SSLContext is freed in the instant after close(); a remote connection ends "
                  "when the service's connection_lost comes, a round trip later, and holds the context until then")
_LOOP_STOPPED = ("timing: writes TLS's close_notify and stops running the loop at once, then waits in a thread "
                 "for the server to read it; a local transport hands it to the kernel at the call, a remote one as "
                 "the loop runs (the write before it must complete first), so under load it is not sent until the "
                 "test gives up (TestSSL.TIMEOUT, set to 30 s here from 300)")
_UNIX_CLEANUP = ("timing: the test's cleanup checks that its Unix socket file exists, then unlinks it; the "
                 "service removes the file as the remote server session ends (asyncio 3.13's cleanup_socket), a "
                 "message after the loop closed, and can do so between the two (seen once, under the ASan suite)")
_MOCKED_BIND = ("mocks getaddrinfo and socket.socket so that binding 1.2.3.4 (or ::2) succeeds; the service's host "
                "binds for real, and cannot")
EXPECTED = {
    "test_events.EPollEventLoopTests.test_create_server_multiple_hosts_ipv4": _MOCKED_BIND,
    "test_events.EPollEventLoopTests.test_create_server_multiple_hosts_ipv6": _MOCKED_BIND,
    "test_events.EPollEventLoopTests.test_server_close":
        "connects right after Server.close() without letting the loop run; a remote server stops listening when "
        "the service has the command, a message later",
    "test_streams.StreamTests.test_async_writer_api_exception_after_close":
        "expects connection_lost on the loop turn after close(), so that drain() raises; a remote transport's "
        "comes from the service once its socket is closed, a round trip later",
    "test_streams.StreamTests.test_read_all_from_pipe_reader":
        "hands the child a local pipe with pass_fds: a remote child cannot have the caller's descriptors",
    "test_subprocess.GenericWatcherTests.test_create_subprocess_fails_with_inactive_watcher":
        "tests the local child watcher, which a remote loop does not use",
    "test_subprocess.SubprocessThreadedWatcherTests.test_close_dont_kill_finished": _LOCAL_POPEN,
    "test_subprocess.SubprocessThreadedWatcherTests.test_close_kill_running": _LOCAL_POPEN,
    "test_subprocess.SubprocessThreadedWatcherTests.test_pause_reading":
        "mocks the loop's local pipe transports (connect_read_pipe): a remote child's pipes are not local",
    "test_subprocess.SubprocessThreadedWatcherTests.test_popen_error": _MOCKED_POPEN,
    "test_subprocess.SubprocessThreadedWatcherTests.test_popen_error_with_stdin_pipe": _MOCKED_POPEN,
    "test_ssl.TestSSL.test_create_connection_memory_leak": _SSL_REFERENCE,
    "test_ssl.TestSSL.test_handshake_timeout_handler_leak": _SSL_REFERENCE,
    "test_ssl.TestSSL.test_shutdown_timeout_handler_leak": _SSL_REFERENCE,
    "test_ssl.TestSSL.test_start_tls_client_buf_proto_1": _LOOP_STOPPED,
    "test_events.EPollEventLoopTests.test_create_unix_server": _UNIX_CLEANUP,
    "test_events.EPollEventLoopTests.test_create_unix_server_ssl": _UNIX_CLEANUP,
    "test_events.EPollEventLoopTests.test_create_unix_server_ssl_verified": _UNIX_CLEANUP,
    "test_events.EPollEventLoopTests.test_create_unix_server_ssl_verify_failed": _UNIX_CLEANUP,
}

#: Classes that run the same tests again for another selector (test_events)
#: or child watcher (test_subprocess), neither of which a remote loop uses.
SAME_TESTS_AGAIN = ("SelectEventLoopTests", "PollEventLoopTests", "SubprocessFastWatcherTests",
                    "SubprocessPidfdWatcherTests", "SubprocessSafeWatcherTests")

MODULE_TIMEOUT = 300


def run_module(name, address, package):
    """In the child: run test.test_asyncio.NAME on the remote loop; print
    one JSON line of results."""
    sys.path.insert(0, package)
    import asyncio
    import faulthandler
    import importlib
    from conduit_client import RemoteEventLoop, RemoteEventLoopPolicy

    module = importlib.import_module(f"test.test_asyncio.{name}")
    asyncio.set_event_loop_policy(RemoteEventLoopPolicy(address))
    for value in vars(module).values():
        if isinstance(value, type) and "create_event_loop" in vars(value):
            value.create_event_loop = lambda self: RemoteEventLoop(address)
        if isinstance(value, type) and vars(value).get("TIMEOUT", 0) > 30:
            value.TIMEOUT = 30  # a test thread's wait: see _LOOP_STOPPED
    suite = unittest.TestSuite()
    for test in _flatten(unittest.defaultTestLoader.loadTestsFromModule(module)):
        if test.id().split(".")[-2] not in SAME_TESTS_AGAIN:
            suite.addTest(test)
    # A module that hangs says where, before the parent's bound runs out:
    # each test's name as it starts (verbosity 2) and every thread's stack.
    faulthandler.dump_traceback_later(MODULE_TIMEOUT - 30, exit=True)
    result = unittest.TextTestRunner(stream=sys.stderr, verbosity=2).run(suite)
    faulthandler.cancel_dump_traceback_later()
    prefix = "test.test_asyncio."
    print(json.dumps({
        "run": result.testsRun,
        "failed": sorted({t.id().removeprefix(prefix) for t, _ in result.failures + result.errors
                          + [(t, None) for t in result.unexpectedSuccesses]}),
        "skipped": len(result.skipped),
        "details": {t.id().removeprefix(prefix): text[-1500:] for t, text in result.failures + result.errors},
    }))


def _flatten(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _flatten(item)
        else:
            yield item


def main():
    conduit, package = sys.argv[1], os.path.abspath(sys.argv[2])
    modules = sys.argv[3:] or MODULES
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import harness
    tmp = tempfile.mkdtemp(prefix="conduit-cpython-")
    # What the tests ask of a loop: children of any program (sys.executable
    # with scripts), environment variables, Unix sockets under the temporary
    # folders the tests use, servers on every interface (host None, as on
    # asyncio's own loop).
    serve, address = harness.start([conduit, "serve", "--listen", "127.0.0.1:0", "--quiet", "--allow-exec-any",
                                    "--allow-listen", "*:*",
                                    "--allow-env", "*", "--allow-unix", "/tmp", "--allow-unix", tmp,
                                    "--max-sessions", "10000"])
    rows, unexpected, fixed = [], [], []
    try:
        for name in modules:
            try:
                child = subprocess.run([sys.executable, __file__, "--child", name, address, package],
                                       capture_output=True, text=True, timeout=MODULE_TIMEOUT,
                                       env=dict(os.environ, TMPDIR=tmp))
                lines = [line for line in child.stdout.splitlines() if line.startswith("{")]
                result = json.loads(lines[-1]) if lines else None
            except subprocess.TimeoutExpired:
                result, child = None, None
            if result is None:
                rows.append((name, "-", "-", "-"))
                why = "timed out" if child is None else f"exit {child.returncode}: {child.stderr[-8000:]}"
                unexpected.append(f"{name}: did not finish ({why})")
                continue
            failed = result["failed"]
            rows.append((name, result["run"] - len(failed) - result["skipped"], len(failed), result["skipped"]))
            for test in failed:
                if test not in EXPECTED:
                    unexpected.append(f"{test}:\n{result['details'].get(test, '(unexpected success)')}")
            for test, reason in EXPECTED.items():
                if test.startswith(name + ".") and test not in failed and not reason.startswith("timing:"):
                    fixed.append(test)
    finally:
        harness.stop(serve)
    print(f"{'module':<22} {'passed':>7} {'failed':>7} {'skipped':>8}")
    for name, passed, failed, skipped in rows:
        print(f"{name:<22} {passed:>7} {failed:>7} {skipped:>8}")
    listed = [test for test in EXPECTED if test.split(".")[0] in modules]
    if listed:
        print("\nFailing on the remote loop, and why:")
        for test in listed:
            print(f"  {test}: {EXPECTED[test]}")
    for text in unexpected:
        print(f"\nUNEXPECTED FAILURE {text}")
    for test in fixed:
        print(f"\nLISTED AS FAILING BUT PASSED (take it off EXPECTED): {test}")
    return 1 if unexpected or fixed else 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        run_module(*sys.argv[2:5])
    else:
        sys.exit(main())
