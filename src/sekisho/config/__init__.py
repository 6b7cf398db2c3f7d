"""Configuration: one YAML file, validated against `schema.json`, loaded into a frozen `Config`.

Public surface: `load_config(path)`, `parse_config(text, source)`, `config_digest(text)`,
`demo_config(data_dir, upstream_ports)`; errors are `sekisho.errors.ConfigError`.
"""

from sekisho.config.demo import demo_config
from sekisho.config.loader import config_digest, load_config, parse_config
from sekisho.config.model import Config, Route, Secret

__all__ = [
    "Config",
    "Route",
    "Secret",
    "config_digest",
    "demo_config",
    "load_config",
    "parse_config",
]
