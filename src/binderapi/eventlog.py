"""Analytics events (BinderHub's ``binderhub.jupyter.org/launch``, version 6) as JSON lines.

Each event is validated against its schema before it is written, so a mybinder-style pipeline
consuming the file never sees a malformed record. jsonschema is imported and the validators are
compiled only when a handler is configured: importing it can cost most of a second of start-up.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from ._importing import import_object

log = logging.getLogger(__name__)

LAUNCH_SCHEMA = "binderhub.jupyter.org/launch"
LAUNCH_VERSION = 6


def load_schema(name: str) -> dict[str, Any]:
    return json.loads(resources.files("binderapi.event_schemas").joinpath(name).read_text())


def compile_validator(schema: dict[str, Any]) -> Any:
    import jsonschema  # deferred: see the module docstring

    validator_class = jsonschema.validators.validator_for(schema)
    validator_class.check_schema(schema)
    return validator_class(schema)


class _JsonLineFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return record.getMessage()


class EventLog:
    """Writes validated events to the handlers ``EventLog`` configures; drops them when none."""

    def __init__(self, config: Any) -> None:
        self.schemas = {(LAUNCH_SCHEMA, LAUNCH_VERSION): load_schema("launch.json")}
        self._validators: dict[tuple[str, int], Any] = {}
        self.logger = logging.getLogger("binderapi.events")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()
        for handler in self._handlers(config):
            handler.setFormatter(_JsonLineFormatter())
            self.logger.addHandler(handler)
        if self.enabled:
            self._validators = {key: compile_validator(schema) for key, schema in self.schemas.items()}

    @staticmethod
    def _handlers(config: Any) -> list[logging.Handler]:
        if config.handlers_maker:
            return list(import_object(config.handlers_maker)(config))
        if config.path == "-":
            return [logging.StreamHandler(sys.stdout)]
        if config.path:
            return [logging.FileHandler(config.path, encoding="utf-8")]
        return []

    @property
    def enabled(self) -> bool:
        return bool(self.logger.handlers)

    def emit(self, schema: str, version: int, event: dict[str, Any]) -> None:
        """Validate and write one event; an invalid event is a bug and raises."""
        if not self.enabled:
            return
        self._validators[(schema, version)].validate(event)
        capsule = {"timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                   "schema": schema, "version": version, **event}
        self.logger.info(json.dumps(capsule))

    def emit_launch(self, *, provider: str, spec: str, ref: str, status: str, build_token: bool, origin: str,
                    request_origin: str) -> None:
        self.emit(LAUNCH_SCHEMA, LAUNCH_VERSION, {
            "provider": provider, "spec": spec, "ref": ref, "status": status, "build_token": build_token,
            "origin": origin, "request_origin": request_origin,
        })

    def close(self) -> None:
        for handler in list(self.logger.handlers):
            self.logger.removeHandler(handler)
            handler.close()
