"""Typed configuration: one pydantic model per BinderHub configurable class."""

from .dump import dump_settings
from .loader import ConfigError, Settings, load_settings, read_config_file
from .models import SECTIONS

__all__ = ["SECTIONS", "ConfigError", "Settings", "dump_settings", "load_settings", "read_config_file"]
