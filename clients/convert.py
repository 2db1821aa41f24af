"""Generated proto messages <-> the client's pydantic models (clients/models.py).

One generic mapping driven by the message descriptors: an optional field that is unset becomes
None (and None leaves it unset), enums map to the lower-case names of their values without the
enum's prefix (RUN_STATUS_COMPLETED <-> "completed"), Timestamps to aware datetimes. Because
the mapping is lossless, `as_json(model)` prints exactly what the proto's JSON form of the
original message would: the CLI's --json contract.
"""

import json
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import TypeVar

from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ValidationError

from clients import models
from clients.errors import InvalidArgumentError
from hparamrec.v1 import recommender_pb2 as pb

M = TypeVar("M", bound=BaseModel)

# Every message the client returns or sends whole, with its model.
MODELS: dict[str, type[BaseModel]] = {
    "TrainingSpec": models.TrainingSpec,
    "Pins": models.Pins,
    "Interval": models.Interval,
    "Source": models.Source,
    "Recommendation": models.Recommendation,
    "Hyperparameters": models.Hyperparameters,
    "RunOutcome": models.RunOutcome,
    "ReportRunRequest": models.RunReport,
    "Run": models.Run,
    "ReportRunResponse": models.ReportResult,
    "ListRunsResponse": models.RunPage,
    "LossPrediction": models.LossPrediction,
    "PredictLossResponse": models.LossPredictions,
    "HeartbeatResponse": models.HeartbeatResult,
}
# Requests the client builds field by field and responses it unwraps: no model of their own.
WRAPPERS = frozenset({"RecommendRequest", "RecommendResponse", "ListRunsRequest",
                      "GetRunRequest", "GetRunResponse", "PredictLossRequest",
                      "HeartbeatRequest"})
ENUMS: dict[str, type[StrEnum]] = {"RunStatus": models.RunStatus, "Mode": models.Mode,
                                   "TrialState": models.TrialState}

_MESSAGE_CLASSES = {name: getattr(pb, name) for name in MODELS}
_MODEL_NAMES = {model: name for name, model in MODELS.items()}


def enum_prefix(enum_name: str) -> str:
    """RunStatus -> 'RUN_STATUS_'."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", enum_name).upper() + "_"


def from_proto(message: Message) -> BaseModel:
    """The model of a generated message (whose type must be in MODELS)."""
    name = message.DESCRIPTOR.name
    model = MODELS[name]
    values = {}
    for field in message.DESCRIPTOR.fields:
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values[field.name] = dict(value)
        elif field.is_repeated:
            values[field.name] = [_scalar_or_model(field, v) for v in value]
        elif field.has_presence and not message.HasField(field.name) and field.message_type is None:
            values[field.name] = None
        elif field.message_type is not None and field.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
            values[field.name] = (value.ToDatetime(tzinfo=UTC)
                                  if message.HasField(field.name) else None)
        else:
            values[field.name] = _scalar_or_model(field, value)
    return model.model_validate(values)


def _scalar_or_model(field, value):
    if field.message_type is not None:
        return from_proto(value)
    if field.enum_type is not None:
        enum_name = field.enum_type.name
        return ENUMS[enum_name](
            field.enum_type.values_by_number[value].name.removeprefix(enum_prefix(enum_name)).lower())
    return value


def to_proto(model: BaseModel, path: str = "") -> Message:
    """The generated message of a model (whose type must be in MODELS). `path` is where the
    message sits in its request ("spec"), for the field names of InvalidArgumentError."""
    message = _MESSAGE_CLASSES[_MODEL_NAMES[type(model)]]()
    _fill(message, model, path + "." if path else "")
    return message


# The range of each integer field type: a value outside it cannot be sent at all, so it is bad
# input found before the call (the server's own, narrower limits then apply to the rest).
_INT_RANGES = {FieldDescriptor.CPPTYPE_INT32: ("a 32-bit integer", -2**31, 2**31 - 1),
               FieldDescriptor.CPPTYPE_UINT32: ("an unsigned 32-bit integer", 0, 2**32 - 1),
               FieldDescriptor.CPPTYPE_INT64: ("a 64-bit integer", -2**63, 2**63 - 1),
               FieldDescriptor.CPPTYPE_UINT64: ("an unsigned 64-bit integer", 0, 2**64 - 1)}


def _fill(message: Message, model: BaseModel, prefix: str = "") -> None:
    for field in message.DESCRIPTOR.fields:
        value = getattr(model, field.name)
        if value is None:
            continue
        target = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            target.update(value)
        elif field.is_repeated:
            if field.message_type is not None:
                for i, item in enumerate(value):
                    _fill(target.add(), item, f"{prefix}{field.name}[{i}].")
            else:
                target.extend(_proto_scalar(field, v, f"{prefix}{field.name}[{i}]")
                              for i, v in enumerate(value))
        elif field.message_type is not None:
            if isinstance(value, datetime):
                target.FromDatetime(value.astimezone(UTC) if value.tzinfo else value)
            else:
                _fill(target, value, f"{prefix}{field.name}.")
                if not message.HasField(field.name):
                    target.SetInParent()  # an all-default message is still set
        else:
            setattr(message, field.name, _proto_scalar(field, value, prefix + field.name))


def _proto_scalar(field, value, name: str):
    if field.enum_type is not None:
        return field.enum_type.values_by_name[enum_prefix(field.enum_type.name) + value.upper()].number
    kind, lo, hi = _INT_RANGES.get(field.cpp_type, (None, None, None))
    if kind and isinstance(value, int) and not lo <= value <= hi:
        raise InvalidArgumentError(f"{name} out of range",
                                   [(name, f"out of range for {kind} (got {value})")])
    return value


def coerce(value, model: type[M], where: str = "") -> M:
    """A model from a model, a dict of its fields, or the generated message. A dict it cannot
    validate is InvalidArgumentError naming each field by its path in the request (`where`,
    e.g. "points[1]"), as the service names them."""
    if isinstance(value, model):
        return value
    if isinstance(value, Message):
        converted = from_proto(value)
        if not isinstance(converted, model):
            raise TypeError(f"expected {model.__name__} or its message, got {type(value).__name__}")
        return converted
    if isinstance(value, dict):
        try:
            return model.model_validate(value)
        except ValidationError as exc:  # as the service would refuse it: one error type
            violations = [(".".join(map(str, (where, *e["loc"]) if where else e["loc"]))
                           or model.__name__, e["msg"].removeprefix("Value error, "))
                          for e in exc.errors()]
            raise InvalidArgumentError("; ".join(f"{f}: {m}" for f, m in violations),
                                       violations) from None
    raise TypeError(f"expected {model.__name__}, a dict of its fields or its proto message, "
                    f"got {type(value).__name__}")


def as_dict(model_or_message) -> dict:
    """The proto JSON form (proto field names, enums by their proto names, timestamps as RFC
    3339, unset optional fields left out)."""
    message = model_or_message if isinstance(model_or_message, Message) else to_proto(model_or_message)
    return json_format.MessageToDict(message, preserving_proto_field_name=True,
                                     always_print_fields_with_no_presence=True)


def as_json(model_or_message, indent: int | None = 2) -> str:
    return json.dumps(as_dict(model_or_message), indent=indent)
