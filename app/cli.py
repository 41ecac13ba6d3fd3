"""``spark-control``: ``up`` (the whole stack), ``web``, ``worker ssh|signer|health``."""

from __future__ import annotations

import argparse
import logging
import sys

from app import aio
from app.access.policy import check_exposure
from app.config import ConfigError, Settings, ensure_data_dir, load_settings
from app.errors import SparkError

CONFIG_EXIT = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="spark-control", description=__doc__)
    p.add_argument("--config", help="settings file (YAML); default $SPARK_CONTROL_CONFIG")
    sub = p.add_subparsers(dest="part", required=True)
    sub.add_parser("up", help="run NATS (unless NATS_URL is set), the web front and the workers")
    sub.add_parser("web", help="run the web front only")
    worker = sub.add_parser("worker", help="run one worker")
    worker.add_argument("kind", choices=["ssh", "signer", "health"])
    return p


async def _web(settings: Settings) -> None:
    """Connect first (a clear one-line error if NATS is unreachable), then serve HTTP."""
    import uvicorn

    from app.bus import connect
    from app.web import create_app

    bus = await connect(settings, name="spark-web")
    config = uvicorn.Config(
        create_app(settings, bus), host=settings.bind_host, port=settings.bind_port,
        log_level=settings.log_level, lifespan="on",
        # access lines are INFO: above that level uvicorn would format each one for nothing
        access_log=settings.log_level in ("debug", "info"),
    )  # fmt: skip
    await uvicorn.Server(config).serve()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = load_settings(args.config)
        logging.basicConfig(
            level=settings.log_level.upper(),
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
        )
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
        ensure_data_dir(settings)
        if args.part in ("up", "web"):
            check_exposure(settings)  # beyond loopback: tokens, or an explicit open LAN
        if args.part == "up":
            from app.supervisor import up

            return up(settings, args.config)
        if args.part == "web":
            aio.run(_web(settings))
        elif args.kind == "ssh":
            from workers.ssh_executor import serve

            aio.run(serve(settings))
        elif args.kind == "health":
            from workers.health import serve as serve_health

            aio.run(serve_health(settings))
        else:
            from workers.blob_signer import serve as serve_signer

            aio.run(serve_signer(settings))
    except ConfigError as exc:
        print(f"spark-control: {exc}", file=sys.stderr)
        return CONFIG_EXIT
    except SparkError as exc:  # e.g. NATS unreachable at start: one line, not a traceback
        print(f"spark-control: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
