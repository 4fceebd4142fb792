"""A protocol's callback under asyncio's contract, for every remote transport
(stream, datagram, subprocess): what the callback raises goes to the loop's
exception handler, with the transport and protocol as asyncio's own
transports report them, and a fatal one then ends the transport. The C++
side's ProtocolGuard does the same for the core's transports."""

# What call_protocol returns when the callback raised.
FAILED = object()


def call_protocol(loop, transport, protocol, failure: str, fn, *args, on_fatal=None):
    """fn(*args), a callback of `protocol` on `transport`. SystemExit and
    KeyboardInterrupt propagate (asyncio lets them); any other exception is
    reported as `failure` to the loop's exception handler, then passed to
    `on_fatal` if given (the transport aborts with it), and FAILED is
    returned."""
    try:
        return fn(*args)
    except (SystemExit, KeyboardInterrupt):
        raise
    except BaseException as exc:  # noqa: BLE001  (asyncio's contract: report, never propagate)
        loop.call_exception_handler({"message": failure, "exception": exc, "transport": transport,
                                     "protocol": protocol})
        if on_fatal is not None:
            on_fatal(exc)
        return FAILED
