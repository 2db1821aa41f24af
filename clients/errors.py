"""gRPC status codes mapped back to exceptions, with the field violations of bad input."""

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status


class HparamrecError(Exception):
    """An error the service returned (or a failure to reach it)."""

    code = grpc.StatusCode.UNKNOWN
    exit_code = 1  # what the CLI exits with

    def __init__(self, message: str, field_violations: list[tuple[str, str]] | None = None):
        super().__init__(message)
        self.message = message
        self.field_violations = field_violations or []

    def __str__(self) -> str:
        if self.field_violations:
            return "; ".join(f"{f}: {d}" for f, d in self.field_violations)
        return self.message


class InvalidArgumentError(HparamrecError):
    code, exit_code = grpc.StatusCode.INVALID_ARGUMENT, 2


class NotFoundError(HparamrecError):
    code, exit_code = grpc.StatusCode.NOT_FOUND, 4


class UnavailableError(HparamrecError):
    code, exit_code = grpc.StatusCode.UNAVAILABLE, 3


class DeadlineExceededError(HparamrecError):
    code, exit_code = grpc.StatusCode.DEADLINE_EXCEEDED, 3


class CancelledError(HparamrecError):
    """The server cancelled the call (it was stopping): nothing was done; safe to send again."""

    code, exit_code = grpc.StatusCode.CANCELLED, 3


class UnauthenticatedError(HparamrecError):
    code, exit_code = grpc.StatusCode.UNAUTHENTICATED, 5


class PermissionDeniedError(HparamrecError):
    code, exit_code = grpc.StatusCode.PERMISSION_DENIED, 5


class UnimplementedError(HparamrecError):
    code, exit_code = grpc.StatusCode.UNIMPLEMENTED, 1


class ResourceExhaustedError(HparamrecError):
    code, exit_code = grpc.StatusCode.RESOURCE_EXHAUSTED, 2


_BY_CODE = {cls.code: cls for cls in HparamrecError.__subclasses__()}


class ClientSettingsError(InvalidArgumentError):
    """A setting of the client itself is unusable (a tls_ca file that cannot be read, a target
    whose port is out of range), found before any call; its field violation names the setting
    (Client's argument name)."""


class ClientClosedError(HparamrecError, ValueError):
    """A call on a client after its close(): nothing was sent. (A ValueError, as gRPC's own
    error for a closed channel was.)"""

    def __init__(self, call: str):
        super().__init__(f"{call}: this client is closed; make a new one")


# What gRPC answers, as RESOURCE_EXHAUSTED, to a call beyond the server's limit of calls at once
# (its workers and HPARAMREC_MAX_PENDING_CALLS): a busy service, not a bad request.
_BUSY = "Concurrent RPC limit exceeded"


def status_code(error: grpc.RpcError) -> grpc.StatusCode:
    """The call's status as the client acts on it: a service too busy to take the call is
    UNAVAILABLE (retried, and exit 3 in the CLI), like one that cannot be reached."""
    code = error.code()
    if code is grpc.StatusCode.RESOURCE_EXHAUSTED and (error.details() or "").startswith(_BUSY):
        return grpc.StatusCode.UNAVAILABLE
    return code


def from_rpc_error(error: grpc.RpcError, target: str = "", timeout: float | None = None,
                   tls: bool | None = None) -> HparamrecError:
    """The exception of a failed call; `target` and `timeout` make the messages of a service
    that cannot be reached or does not answer say which one, and how long it was given; `tls`
    (whether the call used it) adds a hint when the failure looks like a TLS mismatch."""
    code = status_code(error)
    cls = _BY_CODE.get(code, HparamrecError)
    violations = []
    status = rpc_status.from_call(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations += [(v.field, v.description) for v in bad_request.field_violations]
    message = error.details() or error.code().name
    if code is not error.code():  # busy
        at = f" at {target}" if target else ""
        message = (f"the service{at} is busy: it takes no more calls at once "
                   "(HPARAMREC_MAX_PENDING_CALLS); retry shortly")
    elif cls is UnavailableError:
        message = f"cannot reach the service: {message}{_tls_hint(message, tls)}"
    elif cls is DeadlineExceededError:  # gRPC says only "Deadline Exceeded"
        at = f" at {target}" if target else ""
        within = f" ({timeout:g} s)" if timeout is not None else ""
        message = f"the service{at} did not answer within the deadline{within}"
    return cls(message, violations)


def _tls_hint(details: str, tls: bool | None) -> str:
    """gRPC's words for a client and server that disagree on TLS say nothing of TLS."""
    if tls and "WRONG_VERSION_NUMBER" in details:
        return " (the server does not seem to serve TLS: connect without --tls-ca / tls)"
    if tls is False and "Socket closed" in details:
        return " (if the server serves TLS, connect with --tls-ca FILE, or tls=True)"
    return ""
