"""The recommendation cache seen through a real server: the same answer with a new id each time,
and never an answer the current model and studies would not give."""

import pytest

from benchmark_db.records import Pins, resolve_spec
from clients.client import spec
from hparamrec.v1 import recommender_pb2 as pb

pytestmark = pytest.mark.integration
SPEC = spec(n_params=1e9, n_tokens=2e10)


def same(a, b) -> bool:
    return a.model_dump(exclude={"recommendation_id"}) == b.model_dump(exclude={"recommendation_id"})


def test_repeated_recommendations_have_their_own_ids(client):
    first, second = client.recommend(SPEC), client.recommend(SPEC)
    assert first.recommendation_id != second.recommendation_id and same(first, second)


def test_after_reports_and_a_refit_the_answer_is_the_uncached_one(service, client):
    before = client.recommend(SPEC)  # now cached
    for i, factor in enumerate((0.5, 1.0, 2.0, 4.0)):
        client.report_run(pb.ReportRunRequest(
            run_id=f"r{i}", spec=SPEC,
            hyperparameters=pb.Hyperparameters(lr=before.lr * factor, batch_size_tokens=before.batch_size_tokens,
                                               weight_decay=before.weight_decay),
            outcome=pb.RunOutcome(status=pb.RUN_STATUS_COMPLETED, final_loss=2.5 + abs(factor - 1.5) / 10)))
    assert service.registry.wait_idle(timeout=120)
    uncached = service.engine._recommend("default", resolve_spec(n_params=1e9, n_tokens=2e10), Pins())
    after = client.recommend(SPEC)
    assert after.lr == pytest.approx(uncached.lr, rel=1e-12)
    assert after.model_versions == list(uncached.model_versions) != before.model_versions
