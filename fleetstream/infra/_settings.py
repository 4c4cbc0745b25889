"""Settings of the local broker stack (`fleetstream infra`)."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

KAFKA_VERSION = "4.1.1"


def _project_root() -> Path | None:
    """Return the source checkout this package runs from, if it runs from one."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        pyproject = parent / "pyproject.toml"
        if pyproject.is_file() and 'name = "fleetstream"' in pyproject.read_text("utf-8"):
            return parent
    return None


def _default_dir(checkout_name: str, xdg_var: str, xdg_default: str) -> Path:
    # In a checkout everything stays inside it (git-ignored); installed, use XDG dirs.
    root = _project_root()
    if root is not None:
        return root / checkout_name
    base = Path(os.environ.get(xdg_var, Path.home() / xdg_default))
    return base / "fleetstream"


class InfraSettings(BaseSettings):
    """Ports, credentials and folders of the local Kafka and Mosquitto.

    Every field can be set from the environment with the ``FLEETSTREAM_`` prefix,
    e.g. ``FLEETSTREAM_KAFKA_PORT=19092``.
    """

    model_config = SettingsConfigDict(env_prefix="FLEETSTREAM_", extra="ignore")

    host: str = "127.0.0.1"
    kafka_port: int = Field(default=9092, ge=1, le=65535)
    kafka_controller_port: int = Field(default=9093, ge=1, le=65535)
    kafka_heap_mb: int = Field(default=512, ge=128)
    kafka_default_partitions: int = Field(default=4, ge=1)
    kafka_start_timeout_s: float = Field(default=90.0, gt=0)
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_auth_port: int = Field(default=1884, ge=1, le=65535)
    mqtt_username: str = "fleet"
    mqtt_password: SecretStr = SecretStr("fleet-secret")
    run_dir: Path = Field(
        default_factory=lambda: _default_dir(".run", "XDG_STATE_HOME", ".local/state")
    )
    cache_dir: Path = Field(
        default_factory=lambda: _default_dir(".cache", "XDG_CACHE_HOME", ".cache")
    )

    @field_validator("run_dir", "cache_dir")
    @classmethod
    def _absolute(cls, value: Path) -> Path:
        # The brokers' command lines hold these paths, and a broker is recognised by
        # them: a relative one would match another checkout's broker.
        return value.expanduser().absolute()

    @field_validator("host")
    @classmethod
    def _routable_host(cls, value: str) -> str:
        # Kafka also advertises this address to its clients, who cannot connect to it.
        if value in {"0.0.0.0", "::", ""}:  # noqa: S104 - refused here, not bound
            msg = (
                f"FLEETSTREAM_HOST={value!r}: the brokers listen on this address and Kafka "
                "tells its clients to connect to it, so it must be an address of this "
                "machine that clients can reach (e.g. 127.0.0.1 or the machine's IP)"
            )
            raise ValueError(msg)
        return value

    @field_validator("mqtt_username")
    @classmethod
    def _storable_user_name(cls, value: str) -> str:
        # Checked here, not when the password file is written: `infra up` then failed
        # with exit 1 after taking the lock, and only when Mosquitto had to be started.
        if not value or ":" in value or any(c in value for c in "\r\n"):
            msg = (
                "must be non-empty and contain no ':' or line break (Mosquitto's password "
                "file separates user and password with ':')"
            )
            raise ValueError(msg)
        return value

    @field_validator("mqtt_password")
    @classmethod
    def _storable_password(cls, value: SecretStr) -> SecretStr:
        # mosquitto_passwd reads it at its prompt: a line break would end it there.
        secret = value.get_secret_value()
        if not secret or any(c in secret for c in "\r\n"):
            msg = "must be non-empty and contain no line break"
            raise ValueError(msg)
        return value

    @property
    def kafka_bootstrap(self) -> str:
        """The ``host:port`` clients use to reach the local Kafka."""
        return f"{self.host}:{self.kafka_port}"

    @property
    def kafka_libs_dir(self) -> Path:
        """Folder holding the broker's jars, resolved from Maven Central."""
        return self.cache_dir / "kafka" / KAFKA_VERSION / "libs"
