"""API-key authentication. The key arrives as call metadata (`authorization: Bearer KEY` or
`x-api-key: KEY`); its tenant is set in a context variable for the duration of the call, and
every domain call is scoped by it. Health and reflection stay open for probes and tools."""

import contextvars
import ipaddress
import socket

import grpc

from benchmark_db.keys import KeyStore, key_id_of
from benchmark_db.store import DEFAULT_TENANT
from service.observability import note_caller

_tenant: contextvars.ContextVar[str] = contextvars.ContextVar("tenant")
OPEN_METHOD_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def current_tenant() -> str:
    return _tenant.get()


def api_key_from(metadata) -> str | None:
    for key, value in metadata or ():
        if key == "authorization" and value.lower().startswith("bearer "):
            return value[7:].strip()
        if key == "x-api-key":
            return value.strip()
    return None


class AuthInterceptor(grpc.ServerInterceptor):
    """With `keys` None (authentication switched off) every caller is the default tenant, and a
    call that sends a key is refused: it means to act as its key's tenant, and would otherwise
    read and write the tenant every caller shares without being told."""

    def __init__(self, keys: KeyStore | None):
        self.keys = keys

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_METHOD_PREFIXES):
            return handler
        if handler.unary_unary is None:  # no method here streams: one added must not skip this
            return _refused(handler)
        inner = handler.unary_unary

        def authenticated(request, context):
            tenant = self._tenant(context)
            token = _tenant.set(tenant)
            try:
                return inner(request, context)
            finally:
                _tenant.reset(token)

        return handler._replace(unary_unary=authenticated)

    def _tenant(self, context) -> str:
        key = api_key_from(context.invocation_metadata())
        if self.keys is None:
            if key is not None:
                _note_refused(key)
                context.abort(grpc.StatusCode.UNAUTHENTICATED,
                              "this server runs without authentication (--no-auth): the API key "
                              "sent would be ignored and the call act on the tenant every caller "
                              "shares; call it without a key, or use a server with keys")
            return DEFAULT_TENANT
        tenant = self.keys.tenant_for(key) if key else None
        if tenant is None:
            if key:
                _note_refused(key)
            context.abort(grpc.StatusCode.UNAUTHENTICATED,
                          "missing API key" if not key else "invalid or revoked API key")
        note_caller(tenant=tenant)
        return tenant


def _note_refused(key: str) -> None:
    """The refused key's id in the call's log line: an operator can trace a revoked key still
    in use (never the secret)."""
    note_caller(key=key_id_of(key) or "malformed")


def _refused(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """The streaming handler, answering UNIMPLEMENTED: AuthInterceptor authenticates unary
    calls only."""

    def refuse(request_or_iterator, context):
        context.abort(grpc.StatusCode.UNIMPLEMENTED,
                      "streaming methods are not authenticated, so not served")

    kind = next(name for name in ("unary_stream", "stream_unary", "stream_stream")
                if getattr(handler, name) is not None)
    return handler._replace(**{kind: refuse})


def is_loopback(host: str) -> bool:
    if host in ("localhost", ""):
        return host == "localhost"
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(info[4][0]).is_loopback
                       for info in socket.getaddrinfo(host, None))
        except OSError:
            return False
