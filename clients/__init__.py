"""Client library and CLI. Imports only the generated stubs: no server-side packages."""

from clients.client import Client, spec
from clients.errors import HparamrecError

__all__ = ["Client", "HparamrecError", "spec"]
