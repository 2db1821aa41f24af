import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_EXPLOIT: _ClassVar[Mode]
    MODE_EXPLORE: _ClassVar[Mode]

class RunStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RUN_STATUS_UNSPECIFIED: _ClassVar[RunStatus]
    RUN_STATUS_COMPLETED: _ClassVar[RunStatus]
    RUN_STATUS_DIVERGED: _ClassVar[RunStatus]
    RUN_STATUS_FAILED: _ClassVar[RunStatus]

class TrialState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRIAL_STATE_UNSPECIFIED: _ClassVar[TrialState]
    TRIAL_STATE_RUNNING: _ClassVar[TrialState]
    TRIAL_STATE_REPORTED: _ClassVar[TrialState]
    TRIAL_STATE_TIMED_OUT: _ClassVar[TrialState]
    TRIAL_STATE_SUPERSEDED: _ClassVar[TrialState]
    TRIAL_STATE_CLOSED: _ClassVar[TrialState]
MODE_UNSPECIFIED: Mode
MODE_EXPLOIT: Mode
MODE_EXPLORE: Mode
RUN_STATUS_UNSPECIFIED: RunStatus
RUN_STATUS_COMPLETED: RunStatus
RUN_STATUS_DIVERGED: RunStatus
RUN_STATUS_FAILED: RunStatus
TRIAL_STATE_UNSPECIFIED: TrialState
TRIAL_STATE_RUNNING: TrialState
TRIAL_STATE_REPORTED: TrialState
TRIAL_STATE_TIMED_OUT: TrialState
TRIAL_STATE_SUPERSEDED: TrialState
TRIAL_STATE_CLOSED: TrialState

class TrainingSpec(_message.Message):
    __slots__ = ("n_params", "n_active_params", "n_tokens", "compute_flops", "seq_len", "architecture", "optimizer", "weight_bits")
    N_PARAMS_FIELD_NUMBER: _ClassVar[int]
    N_ACTIVE_PARAMS_FIELD_NUMBER: _ClassVar[int]
    N_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_FLOPS_FIELD_NUMBER: _ClassVar[int]
    SEQ_LEN_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_BITS_FIELD_NUMBER: _ClassVar[int]
    n_params: float
    n_active_params: float
    n_tokens: float
    compute_flops: float
    seq_len: int
    architecture: str
    optimizer: str
    weight_bits: int
    def __init__(self, n_params: _Optional[float] = ..., n_active_params: _Optional[float] = ..., n_tokens: _Optional[float] = ..., compute_flops: _Optional[float] = ..., seq_len: _Optional[int] = ..., architecture: _Optional[str] = ..., optimizer: _Optional[str] = ..., weight_bits: _Optional[int] = ...) -> None: ...

class Pins(_message.Message):
    __slots__ = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")
    LR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    QAT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    lr: float
    batch_size_tokens: float
    weight_decay: float
    qat_fraction: float
    def __init__(self, lr: _Optional[float] = ..., batch_size_tokens: _Optional[float] = ..., weight_decay: _Optional[float] = ..., qat_fraction: _Optional[float] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("spec", "pins", "mode", "run_id")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    PINS_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    pins: Pins
    mode: Mode
    run_id: str
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., pins: _Optional[_Union[Pins, _Mapping]] = ..., mode: _Optional[_Union[Mode, str]] = ..., run_id: _Optional[str] = ...) -> None: ...

class Interval(_message.Message):
    __slots__ = ("lo", "hi")
    LO_FIELD_NUMBER: _ClassVar[int]
    HI_FIELD_NUMBER: _ClassVar[int]
    lo: float
    hi: float
    def __init__(self, lo: _Optional[float] = ..., hi: _Optional[float] = ...) -> None: ...

class Source(_message.Message):
    __slots__ = ("field", "name", "version", "detail")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    field: str
    name: str
    version: str
    detail: str
    def __init__(self, field: _Optional[str] = ..., name: _Optional[str] = ..., version: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class Recommendation(_message.Message):
    __slots__ = ("lr", "lr_interval", "batch_size_tokens", "batch_size_tokens_interval", "batch_size_sequences", "weight_decay", "weight_decay_interval", "qat_fraction", "qat_fraction_interval", "predicted_loss", "predicted_loss_interval", "sources", "warnings", "recommendation_id", "spec", "model_versions", "trial_id")
    LR_FIELD_NUMBER: _ClassVar[int]
    LR_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_TOKENS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    QAT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    QAT_FRACTION_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LOSS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_LOSS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    SOURCES_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    lr: float
    lr_interval: Interval
    batch_size_tokens: float
    batch_size_tokens_interval: Interval
    batch_size_sequences: int
    weight_decay: float
    weight_decay_interval: Interval
    qat_fraction: float
    qat_fraction_interval: Interval
    predicted_loss: float
    predicted_loss_interval: Interval
    sources: _containers.RepeatedCompositeFieldContainer[Source]
    warnings: _containers.RepeatedScalarFieldContainer[str]
    recommendation_id: str
    spec: TrainingSpec
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    trial_id: str
    def __init__(self, lr: _Optional[float] = ..., lr_interval: _Optional[_Union[Interval, _Mapping]] = ..., batch_size_tokens: _Optional[float] = ..., batch_size_tokens_interval: _Optional[_Union[Interval, _Mapping]] = ..., batch_size_sequences: _Optional[int] = ..., weight_decay: _Optional[float] = ..., weight_decay_interval: _Optional[_Union[Interval, _Mapping]] = ..., qat_fraction: _Optional[float] = ..., qat_fraction_interval: _Optional[_Union[Interval, _Mapping]] = ..., predicted_loss: _Optional[float] = ..., predicted_loss_interval: _Optional[_Union[Interval, _Mapping]] = ..., sources: _Optional[_Iterable[_Union[Source, _Mapping]]] = ..., warnings: _Optional[_Iterable[str]] = ..., recommendation_id: _Optional[str] = ..., spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., model_versions: _Optional[_Iterable[str]] = ..., trial_id: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("recommendation",)
    RECOMMENDATION_FIELD_NUMBER: _ClassVar[int]
    recommendation: Recommendation
    def __init__(self, recommendation: _Optional[_Union[Recommendation, _Mapping]] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("lr", "batch_size_tokens", "weight_decay", "qat_fraction")
    LR_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    QAT_FRACTION_FIELD_NUMBER: _ClassVar[int]
    lr: float
    batch_size_tokens: float
    weight_decay: float
    qat_fraction: float
    def __init__(self, lr: _Optional[float] = ..., batch_size_tokens: _Optional[float] = ..., weight_decay: _Optional[float] = ..., qat_fraction: _Optional[float] = ...) -> None: ...

class RunOutcome(_message.Message):
    __slots__ = ("status", "final_loss")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FINAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    status: RunStatus
    final_loss: float
    def __init__(self, status: _Optional[_Union[RunStatus, str]] = ..., final_loss: _Optional[float] = ...) -> None: ...

class ReportRunRequest(_message.Message):
    __slots__ = ("run_id", "spec", "hyperparameters", "outcome", "metadata", "recommendation_id", "trial_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec: TrainingSpec
    hyperparameters: Hyperparameters
    outcome: RunOutcome
    metadata: _containers.ScalarMap[str, str]
    recommendation_id: str
    trial_id: str
    def __init__(self, run_id: _Optional[str] = ..., spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., outcome: _Optional[_Union[RunOutcome, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., recommendation_id: _Optional[str] = ..., trial_id: _Optional[str] = ...) -> None: ...

class Run(_message.Message):
    __slots__ = ("run_id", "spec", "hyperparameters", "outcome", "metadata", "recommendation_id", "source", "created_at", "trial_id")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDATION_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    spec: TrainingSpec
    hyperparameters: Hyperparameters
    outcome: RunOutcome
    metadata: _containers.ScalarMap[str, str]
    recommendation_id: str
    source: str
    created_at: _timestamp_pb2.Timestamp
    trial_id: str
    def __init__(self, run_id: _Optional[str] = ..., spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., outcome: _Optional[_Union[RunOutcome, _Mapping]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., recommendation_id: _Optional[str] = ..., source: _Optional[str] = ..., created_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., trial_id: _Optional[str] = ...) -> None: ...

class ReportRunResponse(_message.Message):
    __slots__ = ("run", "created", "warnings", "differing_fields")
    RUN_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    DIFFERING_FIELDS_FIELD_NUMBER: _ClassVar[int]
    run: Run
    created: bool
    warnings: _containers.RepeatedScalarFieldContainer[str]
    differing_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ..., created: _Optional[bool] = ..., warnings: _Optional[_Iterable[str]] = ..., differing_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class ListRunsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "spec")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    spec: TrainingSpec
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., spec: _Optional[_Union[TrainingSpec, _Mapping]] = ...) -> None: ...

class ListRunsResponse(_message.Message):
    __slots__ = ("runs", "next_page_token", "spec_filtered")
    RUNS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SPEC_FILTERED_FIELD_NUMBER: _ClassVar[int]
    runs: _containers.RepeatedCompositeFieldContainer[Run]
    next_page_token: str
    spec_filtered: bool
    def __init__(self, runs: _Optional[_Iterable[_Union[Run, _Mapping]]] = ..., next_page_token: _Optional[str] = ..., spec_filtered: _Optional[bool] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("run_id",)
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    def __init__(self, run_id: _Optional[str] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...

class PredictLossRequest(_message.Message):
    __slots__ = ("spec", "points")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    spec: TrainingSpec
    points: _containers.RepeatedCompositeFieldContainer[Hyperparameters]
    def __init__(self, spec: _Optional[_Union[TrainingSpec, _Mapping]] = ..., points: _Optional[_Iterable[_Union[Hyperparameters, _Mapping]]] = ...) -> None: ...

class LossPrediction(_message.Message):
    __slots__ = ("hyperparameters", "loss", "loss_interval")
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LOSS_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    hyperparameters: Hyperparameters
    loss: float
    loss_interval: Interval
    def __init__(self, hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., loss: _Optional[float] = ..., loss_interval: _Optional[_Union[Interval, _Mapping]] = ...) -> None: ...

class PredictLossResponse(_message.Message):
    __slots__ = ("predictions", "model_versions")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[LossPrediction]
    model_versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, predictions: _Optional[_Iterable[_Union[LossPrediction, _Mapping]]] = ..., model_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class HeartbeatRequest(_message.Message):
    __slots__ = ("trial_id", "interval_seconds")
    TRIAL_ID_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_SECONDS_FIELD_NUMBER: _ClassVar[int]
    trial_id: str
    interval_seconds: float
    def __init__(self, trial_id: _Optional[str] = ..., interval_seconds: _Optional[float] = ...) -> None: ...

class HeartbeatResponse(_message.Message):
    __slots__ = ("state", "detail", "run_id", "heartbeat_at", "expires_at")
    STATE_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    state: TrialState
    detail: str
    run_id: str
    heartbeat_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    def __init__(self, state: _Optional[_Union[TrialState, str]] = ..., detail: _Optional[str] = ..., run_id: _Optional[str] = ..., heartbeat_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
