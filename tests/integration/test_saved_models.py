"""Fitted predictors are saved in the database: a restarted server, or another replica, loads
the one fitted on the same runs by the same code instead of fitting again."""

import threading

import pytest
import sqlalchemy as sa

from benchmark_db.records import Pins, resolve_spec
from benchmark_db.store import RunStore
from predictor import registry as registry_module
from predictor.registry import ModelRegistry
from tests.factories import SWEEP_GROUPS, make_report, synthetic_sweep

pytestmark = pytest.mark.integration
SPEC = resolve_spec(n_params=4e8, n_tokens=2e10)


@pytest.fixture
def database(database_url):
    store = RunStore(database_url)
    store.add_many("t", synthetic_sweep(groups=SWEEP_GROUPS[:4]))
    store.close()
    return database_url


class Counted:
    """A registry on its own store, counting the fits its child process made."""

    def __init__(self, url: str):
        self.store = RunStore(url)
        self.registry = ModelRegistry(self.store, kind="surface", debounce_seconds=0)
        self.fits = 0
        fit = self.registry._fit_worker.fit

        def counted(*args):
            self.fits += 1
            return fit(*args)

        self.registry._fit_worker.fit = counted

    def refit(self):
        self.registry.schedule_refit("t")
        assert self.registry.wait_idle(timeout=120)
        return self.registry.get("t")

    def close(self):
        self.registry.close()
        self.store.close()


@pytest.fixture
def servers(database):
    """Registries started on the database one after another (restarts) or side by side."""
    made = []

    def start():
        made.append(Counted(database))
        return made[-1]

    yield start
    for one in made:
        one.close()


def test_a_restarted_server_loads_the_model_fitted_on_the_same_runs(servers):
    first = servers()
    fitted = first.refit()
    assert first.fits == 1
    second = servers()  # the server restarted
    loaded = second.refit()
    assert second.fits == 0
    assert loaded.version == fitted.version
    same = {"exclude": {"recommendation_id"}}  # a new one for every answer
    assert (loaded.recommend(SPEC, Pins()).model_dump(**same)
            == fitted.recommend(SPEC, Pins()).model_dump(**same))


def test_a_new_run_or_other_code_fits_again(servers, monkeypatch):
    first = servers()
    first.refit()
    first.store.report("t", make_report("one-more", n_params=4e8, loss=2.9))
    first.refit()
    assert first.fits == 2  # fitted on 1 run more: the saved model is not that one
    monkeypatch.setattr(registry_module, "fitting_code", lambda: "another release")
    upgraded = servers()
    upgraded.refit()
    assert upgraded.fits == 1


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_saved_model_that_cannot_be_loaded_is_fitted_again(servers, caplog):
    first = servers()
    first.refit()
    with first.store.engine.begin() as conn:
        conn.execute(sa.text("UPDATE fitted_models SET model = :m"), {"m": b"not a pickle"})
    second = servers()
    assert second.refit() is not None
    assert second.fits == 1
    assert "could not load the saved surface model of tenant t" in caplog.text


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_replicas_refitting_at_once_fit_once(servers):
    """They take turns on the tenant's fit: the first fits, the other loads what it saved."""
    replicas = [servers(), servers()]
    got = {}
    threads = [threading.Thread(target=lambda r=r: got.update({id(r): r.refit()}))
               for r in replicas]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.fits for r in replicas) == 1
    assert len({p.version for p in got.values()}) == 1
