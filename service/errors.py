"""Domain errors -> gRPC status: one table, applied in one place (ErrorInterceptor)."""

import logging

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from benchmark_db.errors import (DatabaseFileGone, DomainError, InvalidArgument, NotFound,
                                 database_disk_full, database_error_summary,
                                 database_read_only, database_unreachable)
from service.observability import request_id_metadata

log = logging.getLogger(__name__)


class Unimplemented(DomainError):
    """A mode or feature this version of the service does not offer."""


STATUS_OF = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    DatabaseFileGone: grpc.StatusCode.UNAVAILABLE,
}


# The status travels in the trailers, which clients cap (8 KiB by default): beyond it a precise
# INVALID_ARGUMENT would arrive as a bare RESOURCE_EXHAUSTED. Errors are cut to fit.
MAX_MESSAGE_CHARS = 1000
MAX_VIOLATIONS = 20
MAX_DESCRIPTION_CHARS = 300


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def to_status(exc: DomainError) -> grpc.Status:
    code = next((c for t, c in STATUS_OF.items() if isinstance(exc, t)), grpc.StatusCode.INTERNAL)
    status = status_pb2.Status(code=getattr(code_pb2, code.name),
                               message=_cut(str(exc), MAX_MESSAGE_CHARS))
    if isinstance(exc, InvalidArgument):
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.BadRequest(field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field=_cut(v.field, MAX_DESCRIPTION_CHARS),
                description=_cut(v.reason, MAX_DESCRIPTION_CHARS))
            for v in exc.violations[:MAX_VIOLATIONS]
        ]))
        status.details.append(detail)
    return rpc_status.to_status(status)


class ErrorInterceptor(grpc.ServerInterceptor):
    """Turns domain errors raised by unary handlers into their status codes, and an unreachable
    database into UNAVAILABLE (clients retry it, through another replica too); anything else is
    logged with its traceback and becomes INTERNAL without leaking internals to the caller."""

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        inner = handler.unary_unary
        method = handler_call_details.method

        def guarded(request, context):
            try:
                return inner(request, context)
            except DomainError as exc:
                if isinstance(exc, DatabaseFileGone):  # for the operator: only a restart helps
                    log.error("%s (in %s)", exc, method)
                status = to_status(exc)
                context.abort_with_status(status._replace(
                    trailing_metadata=tuple(status.trailing_metadata) + request_id_metadata()))
            except Exception as exc:
                if context.code() is not None:  # already aborted on purpose
                    raise
                if database_unreachable(exc):
                    log.warning("database unreachable in %s: %s", method,
                                database_error_summary(exc))
                    context.abort(grpc.StatusCode.UNAVAILABLE,
                                  "the service's database is out of disk space; retry later"
                                  if database_disk_full(exc) else
                                  "the service's database is read-only (a standby, a failover "
                                  "under way, a read-only file or disk); retry later"
                                  if database_read_only(exc) else
                                  "the service's database is unreachable; retry shortly")
                log.exception("internal error in %s", method)
                context.abort(grpc.StatusCode.INTERNAL, "internal error; see the server log")

        return handler._replace(unary_unary=guarded)
