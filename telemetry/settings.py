"""Connection settings shared by the services' settings classes.

Each service has one pydantic-settings class (env prefix ``FLEETSTREAM_``) that inherits
the connection fields it needs from here, so ``FLEETSTREAM_KAFKA_BOOTSTRAP_SERVERS`` or
``FLEETSTREAM_MQTT_PASSWORD`` mean the same thing to every service.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

ENV_PREFIX = "FLEETSTREAM_"


class KafkaConnectionSettings(BaseSettings):
    """How to reach Kafka.

    ``kafka_config`` is passed through to librdkafka (security settings such as
    ``security.protocol``, ``sasl.mechanism``, ``sasl.username``, ``ssl.ca.location``), e.g.
    ``FLEETSTREAM_KAFKA_CONFIG='{"security.protocol": "SASL_SSL", "socket.timeout.ms":
    30000, "enable.ssl.certificate.verification": false}'``: values may be JSON strings,
    numbers or booleans and reach librdkafka as its strings (``30000``, ``false``).
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    kafka_bootstrap_servers: str = "127.0.0.1:9092"
    kafka_config: dict[str, str] = Field(default_factory=dict)
    kafka_password: SecretStr | None = Field(
        default=None, description="sasl.password, kept out of logs and reprs"
    )

    @field_validator("kafka_config", mode="before")
    @classmethod
    def _librdkafka_strings(cls, value: Any) -> Any:
        """JSON strings, numbers and booleans as the strings librdkafka parses."""
        if not isinstance(value, dict):
            return value  # pydantic reports what is wrong
        out: dict[Any, str] = {}
        for name, item in value.items():
            if isinstance(item, bool):
                out[name] = "true" if item else "false"
            elif isinstance(item, str | int | float):
                out[name] = str(item)
            else:
                msg = (
                    f"{name!r}: librdkafka settings are strings, numbers or booleans, "
                    f"got {type(item).__name__}"
                )
                raise ValueError(msg)  # noqa: TRY004 - pydantic turns it into its error
        return out

    def kafka_client_config(self, **overrides: Any) -> dict[str, Any]:
        """Client configuration for librdkafka: bootstrap + pass-through settings + overrides."""
        config: dict[str, Any] = {"bootstrap.servers": self.kafka_bootstrap_servers}
        config.update(self.kafka_config)
        if self.kafka_password is not None:
            config["sasl.password"] = self.kafka_password.get_secret_value()
        config.update(overrides)
        return config


class FutureLimitSettings(BaseSettings):
    """How far ahead of the wall clock a record's time may be.

    Processing quarantines such records and the dashboard skips them, at the same limit.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    processing_max_future_s: float = Field(
        default=10.0,
        gt=0,
        allow_inf_nan=False,
        description="A record whose ts (or message timestamp) is further ahead of the "
        "wall clock is quarantined (reason future_ts): it would move the partition's "
        "clock, and a clock more than the grace period ahead of a car's records makes "
        "them late. At most FLEETSTREAM_PROCESSING_GRACE_S (default 10), or one car with a "
        "fast clock costs every other car on its partition the end of each window. The "
        "dashboard skips such telemetry: it would hide the car's later samples.",
    )


class MqttConnectionSettings(BaseSettings):
    """How to reach the MQTT broker."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore")

    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(default=1883, ge=1, le=65535)
    mqtt_username: str | None = None
    mqtt_password: SecretStr | None = None
    mqtt_tls: bool = False
    mqtt_ca_file: Path | None = None
    mqtt_cert_file: Path | None = None
    mqtt_key_file: Path | None = None
    mqtt_tls_insecure: bool = False
    mqtt_keepalive_s: int = Field(default=30, ge=5)


def settings_problems(exc: ValidationError | SettingsError) -> list[str]:
    """One line per invalid setting: its variable and what is wrong, never its value.

    pydantic's own message repeats the input, which may be a secret (``sasl.password``
    in ``FLEETSTREAM_KAFKA_CONFIG``): every service logs this instead.
    """
    if isinstance(exc, SettingsError):
        # pydantic-settings: 'error parsing value for field "kafka_config" from source ...'
        found = re.search(r'field "(\w+)"', str(exc))
        where = f"{ENV_PREFIX}{found.group(1).upper()}" if found else "a setting"
        cause = exc.__cause__
        if isinstance(cause, json.JSONDecodeError):
            return [f"{where}: not valid JSON ({cause.msg}, at character {cause.pos})"]
        return [f"{where}: cannot be parsed"]
    lines = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        loc = error["loc"]
        where = f"{ENV_PREFIX}{str(loc[0]).upper()}" if loc else exc.title
        if len(loc) > 1:
            where += "[" + ".".join(str(part) for part in loc[1:]) + "]"
        lines.append(f"{where}: {error['msg']}")
    return lines


_S = TypeVar("_S", bound=BaseSettings)


def load_settings(cls: type[_S], log: logging.Logger) -> _S | None:
    """A service's settings, or None after logging each invalid one (never its value)."""
    try:
        return cls()
    except (ValidationError, SettingsError) as exc:
        problems = settings_problems(exc)
    # Outside the handler: a logged traceback would repeat the values.
    log.error("invalid settings:%s", "".join(f"\n  {line}" for line in problems))
    return None
