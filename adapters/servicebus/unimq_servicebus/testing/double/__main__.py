"""``python -m unimq_servicebus.testing.double --host 127.0.0.1 --port 5673 [--config entities.json]
[--static] [--data-dir DIR]``."""

import argparse
import logging
import signal
import sys

from .server import ServiceBusDouble


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m unimq_servicebus.testing.double",
                                     description="Azure Service Bus test double (AMQP 1.0, no TLS).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5673)
    parser.add_argument("--config", help="JSON file declaring entities (see docs/servicebus-double.md)")
    parser.add_argument("--static", action="store_true",
                        help="the official emulator's constraints: no $unimq-control node, no entity created on "
                             "first use (declare them with --config, e.g. the emulator's own Config.json)")
    parser.add_argument("--data-dir", help="keep the state in DIR across restarts (written on SIGTERM and "
                                           "about every second; see persistence.py)")
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(stream=sys.stderr, level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.config:
        double = ServiceBusDouble.from_config_file(args.config, args.host, args.port, args.data_dir, args.static)
    elif args.static:
        parser.error("--static needs --config: in static mode every entity comes from the config file")
    else:
        double = ServiceBusDouble(args.host, args.port, data_dir=args.data_dir)
    # SIGTERM/SIGINT ask the reactor thread to stop; run() then returns and the process exits 0.
    signal.signal(signal.SIGTERM, lambda *_: double.stop(timeout=0))
    signal.signal(signal.SIGINT, lambda *_: double.stop(timeout=0))
    try:
        double.start()
    except RuntimeError as exc:
        logging.getLogger("unimq.servicebus_double").error("%s", exc)
        return 1
    logging.getLogger("unimq.servicebus_double").info("connection string: %s", double.connection_string)
    while double._thread is not None and double._thread.is_alive():
        double._thread.join(0.5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
