"""The ``binderapi`` command: serve, show the configuration, or mint a build token."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from . import __version__

USAGE_EXTRA = """
Any option can also be given as --<Section>.<option>=<value>, e.g. --BinderHub.image_prefix=127.0.0.1:5000/binder-
(values are parsed as JSON when they can be, else taken as text).

Subcommands:
  binderapi token <prefix>/<spec> --origin <host>   mint a build token for an external frontend
"""


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _split_overrides(argv: list[str]) -> tuple[list[str], dict[str, dict[str, Any]]]:
    """Pull ``--Section.option=value`` (or ``--Section.option value``) out of argv."""
    rest: list[str] = []
    overrides: dict[str, dict[str, Any]] = {}
    args = iter(argv)
    for arg in args:
        name = arg[2:].split("=", 1)[0] if arg.startswith("--") else ""
        if "." in name and name[:1].isupper():
            section, option = name.split(".", 1)
            value = arg.split("=", 1)[1] if "=" in arg else next(args, "")
            overrides.setdefault(section, {})[option] = _parse_value(value)
        else:
            rest.append(arg)
    return rest, overrides


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="binderapi", description="BinderHub's API as a fast async service.", epilog=USAGE_EXTRA,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", "-f", help="YAML, JSON or TOML config file (BinderHub.config_file), or a whole BinderHub "
                        "Helm values file; Python config files are not run")
    parser.add_argument("--ip", help="address to listen on (BinderHub.ip)")
    parser.add_argument("--port", type=int, help="port to listen on (BinderHub.port, default 8585)")
    parser.add_argument("--workers", type=int, help="processes serving the port (BinderHub.workers, default 1)")
    parser.add_argument("--log-level", help="log level name or number (BinderHub.log_level)")
    parser.add_argument("--debug", action="store_true", default=None, help="debug logging (BinderHub.debug)")
    parser.add_argument("--show-config", action="store_true", help="print the effective configuration as YAML and exit")
    parser.add_argument("--show-config-json", action="store_true", help="print the effective configuration as JSON and exit")
    parser.add_argument("--version", action="version", version=f"binderapi {__version__}")
    return parser


def _load(config_file: str | None, overrides: dict[str, dict[str, Any]]) -> Any:
    from .settings import ConfigError, load_settings

    try:
        return load_settings(config_file=config_file, cli=overrides)
    except ConfigError as e:
        sys.exit(f"binderapi: {e}")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["token"]:
        from .tokens import token_command

        return token_command(argv[1:], _load)
    argv, overrides = _split_overrides(argv)
    args = _parser().parse_args(argv)
    flags = {"ip": args.ip, "port": args.port, "workers": args.workers, "log_level": args.log_level, "debug": args.debug,
             "show_config": args.show_config or None, "show_config_json": args.show_config_json or None}
    binderhub = overrides.setdefault("BinderHub", {})
    for option, value in flags.items():
        if value is not None:
            binderhub[option] = value
    settings = _load(args.config_file, overrides)

    if settings.BinderHub.show_config or settings.BinderHub.show_config_json:
        from .settings.dump import show_config_json, show_config_text

        for notice in settings.warnings:  # logging is not set up here: say them plainly
            print(f"binderapi: warning: {notice}", file=sys.stderr)
        print(show_config_json(settings) if settings.BinderHub.show_config_json else show_config_text(settings))
        return
    serve(settings)


def serve(settings: Any) -> None:
    """Start the services first (a start-up problem is one clear message), then serve."""
    import asyncio
    import logging

    from .logs import settings_secrets, setup_logging

    setup_logging(settings.BinderHub, settings_secrets(settings))
    for notice in settings.warnings:
        logging.getLogger("binderapi").warning(notice)
    if settings.BinderHub.workers > 1:
        from .workers import serve_workers

        return serve_workers(settings)
    from .metrics import WORKER_INFO
    from .services import StartupError

    WORKER_INFO.labels(worker="0").set(1)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    try:
        with runner:
            runner.run(_serve(settings))
    except StartupError as e:
        sys.exit(f"binderapi: {e}")


async def _serve(settings: Any, sockets: list[Any] | None = None, on_started: Any = None) -> None:
    """Serve until SIGINT or SIGTERM, then close the services (hub clean-ups included) before the
    process exits: the signals stay caught until then (httpserver.StopSignals). A worker of
    ``--workers`` serves on the ``sockets`` its parent opened, and says when it serves (``on_started``)."""
    from .app import create_app
    from .httpserver import Server, StopSignals, uvicorn_config
    from .services import Services

    with StopSignals() as stop:
        services = await Services.start(settings)  # StartupError: the caller's one clear message
        config = uvicorn_config(create_app(settings, services), settings.BinderHub)
        server = stop.attach(Server(config, on_stop=services.stop, on_started=on_started))
        try:
            await server.serve(sockets)
        finally:
            await services.close()
