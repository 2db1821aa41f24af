"""Domain errors shared by every layer; service/errors.py maps each to one gRPC status."""

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldViolation:
    field: str  # dotted path in the request, e.g. "spec.n_params"
    reason: str

    def __str__(self) -> str:
        return f"{self.field}: {self.reason}"


class DomainError(Exception):
    """Base of the errors a caller can act on."""


class InvalidArgument(DomainError):
    def __init__(self, violations: list[FieldViolation]):
        self.violations = violations
        super().__init__("; ".join(str(v) for v in violations))

    @classmethod
    def single(cls, field: str, reason: str) -> "InvalidArgument":
        return cls([FieldViolation(field, reason)])


class NotFound(DomainError):
    pass
