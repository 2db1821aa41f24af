"""One settings object, built at start-up from HPARAMREC_* variables and flags, passed down."""

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="HPARAMREC_", frozen=True)

    database_url: str = "sqlite:///var/hparamrec.db"
    host: str = "127.0.0.1"
    port: int = Field(default=50051, ge=0, le=65535)
    max_workers: int = Field(default=32, ge=1)
    # Requests above this size get RESOURCE_EXHAUSTED before any handler runs.
    max_message_bytes: int = Field(default=1 << 20, ge=1024)
    # How long SIGTERM waits for in-flight calls before cancelling them.
    grace_seconds: float = Field(default=10.0, ge=0)
