"""cxrflow.deploy on KFP with a recording fake client: exact arguments, validation and redaction."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cxrflow import deploy
from cxrflow.deploy import DeployError
from tests.deploy_fakes import HOST, SECRET, Recorder, fake_kfp_client


# --- import hygiene --------------------------------------------------------------------------
def test_importing_deploy_imports_no_client_library():
    code = "import sys, cxrflow.deploy; print('kfp' in sys.modules, 'google.cloud.aiplatform' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# --- KFP -------------------------------------------------------------------------------------
def test_submit_kfp_passes_exact_arguments(package, rec):
    run_id = deploy.submit_kfp(
        package,
        HOST + "/",
        run_name="r1",
        experiment="exp",
        arguments={"epochs": 2},
        namespace="team-a",
        client_factory=fake_kfp_client(rec),
    )
    assert run_id == "run-123"
    assert rec.calls == [
        ("Client", {"host": HOST}),
        (
            "create_run_from_pipeline_package",
            {
                "pipeline_file": package,
                "arguments": {"epochs": 2},
                "run_name": "r1",
                "experiment_name": "exp",
                "namespace": "team-a",
            },
        ),
    ]


def test_submit_kfp_defaults_use_kfp_client(package, rec, monkeypatch):
    import kfp

    monkeypatch.setattr(kfp, "Client", fake_kfp_client(rec))
    assert deploy.submit_kfp(package, HOST) == "run-123"
    assert rec.kwargs("create_run_from_pipeline_package") == {
        "pipeline_file": package,
        "arguments": {},
        "run_name": None,
        "experiment_name": None,
        "namespace": None,
    }


def test_schedule_kfp_converts_cron_and_passes_exact_arguments(package, rec):
    rr = deploy.schedule_kfp(
        package,
        HOST,
        cron="30 2 * * 1-5",
        schedule_name="nightly",
        experiment="cx",
        arguments={"epochs": 1},
        namespace="ns",
        client_factory=fake_kfp_client(rec),
    )
    assert rr == "rr-9"
    assert rec.kwargs("create_experiment") == {"name": "cx", "namespace": "ns"}
    assert rec.kwargs("create_recurring_run") == {
        "experiment_id": "exp-7",
        "job_name": "nightly",
        "cron_expression": "0 30 2 * * 1-5",
        "pipeline_package_path": package,
        "params": {"epochs": 1},
        "max_concurrency": 1,
        "no_catchup": True,
    }


@pytest.mark.parametrize(
    "host",
    [
        f"https://admin:{SECRET}@kfp.example.com",
        "https://kfp.example.com",
    ],
)
@pytest.mark.parametrize(
    "error",
    [
        ConnectionError(f"Max retries exceeded with url: /apis/v2beta1/runs?access_token={SECRET}"),
        OSError(f"401 headers={{'Authorization': 'Bearer {SECRET}'}}"),
        RuntimeError(f"proxy https://bob:{SECRET}@proxy.internal:3128 refused; password: {SECRET}"),
    ],
)
def test_kfp_connection_failures_become_redacted_deploy_errors(package, rec, host, error):
    with pytest.raises(DeployError) as info:
        deploy.submit_kfp(package, host, client_factory=fake_kfp_client(rec, fail=error))
    message = str(info.value)
    assert message.startswith("could not reach https://")
    assert "kfp.example.com" in message and type(error).__name__ in message
    assert SECRET not in message
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_schedule_kfp_failure_in_recurring_run_is_redacted(package, rec):
    failing = fake_kfp_client(rec)
    failing.return_value.create_experiment.side_effect = ConnectionError(f"connection reset; token={SECRET}")
    with pytest.raises(DeployError, match="could not reach") as info:
        deploy.schedule_kfp(package, HOST, cron="0 3 * * *", client_factory=failing)
    assert SECRET not in str(info.value)
    assert rec.names() == ["Client", "create_experiment"]


def test_kfp_input_errors(package, tmp_path, rec):
    factory = fake_kfp_client(rec)
    with pytest.raises(DeployError, match="not found"):
        deploy.submit_kfp(str(tmp_path / "missing.yaml"), HOST, client_factory=factory)
    with pytest.raises(DeployError, match="KFP host is required"):
        deploy.submit_kfp(package, "", client_factory=factory)
    with pytest.raises(DeployError, match="http:// or https://"):
        deploy.submit_kfp(package, "kfp.example.com", client_factory=factory)
    with pytest.raises(DeployError, match="bad cron"):
        deploy.schedule_kfp(package, HOST, cron="0 3 * *", client_factory=factory)
    with pytest.raises(DeployError, match="TZ= prefix"):
        deploy.schedule_kfp(package, HOST, cron="TZ=Europe/Paris 0 3 * * *", client_factory=factory)
    assert rec.calls == []  # nothing reached the client


def test_deploy_error_always_redacts_and_long_reasons_are_cut(package):
    assert SECRET not in str(DeployError(f"x token={SECRET}"))

    chatty = fake_kfp_client(Recorder(), fail=RuntimeError("<html>" + "x" * 5000))
    with pytest.raises(DeployError) as info:
        deploy.submit_kfp(package, HOST, client_factory=chatty)
    assert len(str(info.value)) < 600 and str(info.value).endswith("...")


def test_the_kfp_fake_has_the_sdks_signatures(rec):
    """What makes the tests above able to fail: an argument kfp.Client does not take is refused."""
    client_cls = fake_kfp_client(rec)
    with pytest.raises(TypeError):
        client_cls(hostname=HOST)
    client = client_cls(host=HOST)
    with pytest.raises(TypeError):
        client.create_run_from_pipeline_package(pipeline_file="p.yaml", params={})  # it is arguments
    with pytest.raises(TypeError):
        client.create_recurring_run(experiment_id="e", job_name="j", cron="0 0 3 * * *")  # cron_expression
