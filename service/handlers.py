"""RecommenderService: each handler converts the request, makes one domain call, converts back."""

from benchmark_db.errors import InvalidArgument
from benchmark_db.records import check_run_id
from benchmark_db.store import RunStore
from hparamrec.v1 import recommender_pb2 as pb
from hparamrec.v1 import recommender_pb2_grpc as pb_grpc
from predictor.engine import RecommendationEngine
from service import converters
from service.auth import current_tenant
from service.errors import Unimplemented


def tenant_of(context) -> str:
    """The caller's tenant, set by AuthInterceptor from the call's API key."""
    return current_tenant()


class RecommenderServicer(pb_grpc.RecommenderServiceServicer):
    def __init__(self, engine: RecommendationEngine, store: RunStore):
        self.engine = engine
        self.store = store

    def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:
        if request.mode not in pb.Mode.values():  # proto3 enums carry any number
            raise InvalidArgument.single("mode", f"unknown mode {request.mode}: use MODE_EXPLOIT "
                                                 "or MODE_EXPLORE")
        spec = converters.spec_from_proto(request.spec)
        pins = converters.pins_from_proto(request.pins)
        if request.mode == pb.MODE_EXPLORE:
            if self.engine.refiner is None:
                raise Unimplemented("the explore mode is not available on this server; use the "
                                    "exploit mode (MODE_EXPLOIT, --mode exploit)")
            rec = self.engine.explore(tenant_of(context), spec, pins, request.run_id)
            if not request.run_id and not context.is_active():  # the caller gave up: no one
                self.engine.give_back(tenant_of(context), rec.trial_id)  # will run it
        else:
            rec = self.engine.recommend(tenant_of(context), spec, pins, request.run_id)
        return pb.RecommendResponse(recommendation=converters.recommendation_to_proto(rec))

    def ReportRun(self, request: pb.ReportRunRequest, context) -> pb.ReportRunResponse:
        report = converters.report_from_proto(request)
        reported = self.engine.report(tenant_of(context), report)
        return pb.ReportRunResponse(run=converters.run_to_proto(reported.run),
                                    created=reported.created, warnings=reported.warnings,
                                    differing_fields=reported.differing_fields)

    def ListRuns(self, request: pb.ListRunsRequest, context) -> pb.ListRunsResponse:
        runs, token = self.store.page(tenant_of(context), request.page_size, request.page_token,
                                      converters.spec_filter_from_proto(request))
        return pb.ListRunsResponse(runs=[converters.run_to_proto(r) for r in runs],
                                   next_page_token=token, spec_filtered=request.HasField("spec"))

    def PredictLoss(self, request: pb.PredictLossRequest, context) -> pb.PredictLossResponse:
        spec = converters.spec_from_proto(request.spec)
        points = converters.points_from_proto(request, spec)
        queries, prediction, versions = self.engine.predict_loss(tenant_of(context), spec, **points)
        return converters.predictions_to_proto(queries, prediction, versions)

    def GetRun(self, request: pb.GetRunRequest, context) -> pb.GetRunResponse:
        # A run_id no report could carry is bad input, not a run not found. Checked on the
        # request, not in RunStore.get, which also reads stored runs back by id (study_sync).
        run = self.store.get(tenant_of(context), check_run_id(request.run_id))
        return pb.GetRunResponse(run=converters.run_to_proto(run))

    def Heartbeat(self, request: pb.HeartbeatRequest, context) -> pb.HeartbeatResponse:
        if self.engine.refiner is None:
            raise Unimplemented("heartbeats keep explore trials alive, and explore is not "
                                "available on this server")
        status = self.engine.heartbeat(tenant_of(context), request.trial_id,
                                       request.interval_seconds)
        return converters.trial_status_to_proto(status)
