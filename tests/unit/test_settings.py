"""The server's settings: every one documented, and misspelt variables named."""

from pathlib import Path

from service.settings import Settings, unknown_variables

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_setting_is_in_the_readme_configuration_table():
    missing = [name for name in Settings.model_fields
               if f"`HPARAMREC_{name.upper()}`" not in README
               and f"/ `HPARAMREC_{name.upper()}`" not in README]
    assert missing == []


def test_unknown_variables_are_named_with_the_setting_they_may_mean():
    environ = {"HPARAMREC_REFIT_POLL_SECOND": "1", "HPARAMREC_SERVER": "h:1",
               "HPARAMREC_PORT": "1", "HPARAMREC_ZZZ": "1", "PATH": "/bin"}
    assert unknown_variables(environ) == [
        "HPARAMREC_REFIT_POLL_SECOND is not a setting, and is ignored (did you mean "
        "HPARAMREC_REFIT_POLL_SECONDS?)",
        "HPARAMREC_ZZZ is not a setting, and is ignored"]


def test_the_metrics_port_can_be_switched_off():
    assert Settings(metrics_port="off").metrics_port is None
    assert Settings(metrics_port="9100").metrics_port == 9100
