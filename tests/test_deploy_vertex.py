"""cxrflow.deploy on Vertex AI with recording fakes: exact arguments, validation and redaction."""

from __future__ import annotations

import types

import pytest

from cxrflow import deploy
from cxrflow.deploy import DeployError
from tests.deploy_fakes import SECRET, VERTEX, Recorder, fake_aiplatform


# --- Vertex AI -------------------------------------------------------------------------------
def test_submit_vertex_passes_exact_arguments(package, rec, monkeypatch):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec))
    name = deploy.submit_vertex(
        package,
        **VERTEX,
        service_account="sa@my-proj.iam.gserviceaccount.com",
        parameter_values={"epochs": 3},
        labels={"team": "radiology"},
    )
    assert name == "projects/p/locations/us-central1/pipelineJobs/job-1"
    assert rec.calls == [
        ("init", {"project": "my-proj", "location": "us-central1"}),
        (
            "PipelineJob",
            {
                "display_name": "cxrflow",
                "template_path": package,
                "pipeline_root": "gs://bucket/root",
                "parameter_values": {"epochs": 3},
                "enable_caching": None,  # the compiled per-task caching settings
                "labels": {"team": "radiology"},
            },
        ),
        ("submit", {"service_account": "sa@my-proj.iam.gserviceaccount.com"}),
    ]


def test_submit_vertex_uses_real_module_attributes_and_gcs_templates(rec, monkeypatch):
    from google.cloud import aiplatform

    fake = fake_aiplatform(rec)
    monkeypatch.setattr(aiplatform, "init", fake.init)
    monkeypatch.setattr(aiplatform, "PipelineJob", fake.PipelineJob)
    deploy.submit_vertex("gs://bucket/pipelines/0.1.0/pipeline.yaml", **VERTEX, enable_caching=True)
    assert rec.names() == ["init", "PipelineJob", "submit"]
    assert rec.kwargs("PipelineJob")["template_path"] == "gs://bucket/pipelines/0.1.0/pipeline.yaml"
    assert rec.kwargs("PipelineJob")["enable_caching"] is True
    assert rec.kwargs("submit") == {"service_account": None}


def test_submit_vertex_job_factory_argument(package, rec, monkeypatch):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(Recorder()))
    deploy.submit_vertex(package, **VERTEX, job_factory=fake_aiplatform(rec).PipelineJob)
    assert rec.names() == ["PipelineJob", "submit"]


def test_schedule_vertex_passes_exact_arguments(package, rec, monkeypatch):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec))
    name = deploy.schedule_vertex(
        package, cron="0 4 * * 0", **VERTEX, schedule_name="weekly", service_account="sa@x.iam.gserviceaccount.com"
    )
    assert name == "projects/p/locations/us-central1/schedules/s-1"
    assert rec.names() == ["init", "PipelineJob", "create_schedule"]
    assert rec.kwargs("create_schedule") == {
        "cron": "0 4 * * 0",
        "display_name": "weekly",
        "max_concurrent_run_count": 1,
        "service_account": "sa@x.iam.gserviceaccount.com",
    }
    deploy.schedule_vertex(package, cron="TZ=Europe/Berlin 0 4 * * 0", **VERTEX)
    assert rec.calls[-1] == (
        "create_schedule",
        {
            "cron": "TZ=Europe/Berlin 0 4 * * 0",
            "display_name": "cxrflow-schedule",
            "max_concurrent_run_count": 1,
            "service_account": None,
        },
    )


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"project": ""}, "Google Cloud project (--project) is required"),
        ({"project": None}, "Google Cloud project (--project) is required"),
        ({"region": ""}, "Vertex AI region (--region) is required"),
        ({"region": "us-central1-a"}, "not a zone"),
        ({"pipeline_root": ""}, "pipeline root (--pipeline-root) is required"),
        ({"pipeline_root": "/tmp/root"}, "must be a gs://BUCKET/... path"),
        ({"pipeline_root": "s3://bucket/root"}, "must be a gs://BUCKET/... path"),
        ({"display_name": " "}, "display name is required"),
        ({"labels": {"Team": "x"}}, "label Team="),
    ],
)
def test_vertex_input_errors(package, rec, monkeypatch, changes, message):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec))
    with pytest.raises(DeployError) as info:
        deploy.submit_vertex(package, **{**VERTEX, **changes})
    assert message in str(info.value)
    with pytest.raises(DeployError):
        deploy.schedule_vertex(package, cron="0 3 * * *", **{**VERTEX, **changes})
    assert rec.calls == []


def test_schedule_vertex_rejects_bad_cron_before_any_call(package, rec, monkeypatch):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec))
    with pytest.raises(DeployError, match="out of range"):
        deploy.schedule_vertex(package, cron="0 25 * * *", **VERTEX)
    assert rec.calls == []


def test_vertex_connection_failure_is_redacted(package, rec, monkeypatch):
    error = ConnectionError(f"503 failed to connect; metadata={{'authorization': 'Bearer ya29.{SECRET}'}}")
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec, fail_submit=error))
    with pytest.raises(DeployError) as info:
        deploy.submit_vertex(package, **VERTEX)
    message = str(info.value)
    assert message.startswith("could not reach Vertex AI (us-central1-aiplatform.googleapis.com): ConnectionError")
    assert SECRET not in message


def test_vertex_init_rejection_is_a_deploy_error(package, monkeypatch):
    def init(**kwargs):
        raise ValueError("Unsupported region for Vertex AI, select from frozenset({...})")

    monkeypatch.setattr(deploy, "_aiplatform", lambda: types.SimpleNamespace(init=init))
    with pytest.raises(DeployError, match="Vertex AI rejected project 'my-proj' / region 'us-central1'"):
        deploy.submit_vertex(package, **VERTEX)


# --- Vertex AI models ------------------------------------------------------------------------
MODEL = dict(
    project="my-proj",
    region="europe-west4",
    display_name="cxrflow",
    serving_image="us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest",
)


def test_upload_vertex_model_without_endpoint(rec, monkeypatch):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec))
    name = deploy.upload_vertex_model("gs://bucket/serving/1700000000", **MODEL)
    assert name == "projects/p/locations/us-central1/models/m-1"
    assert rec.calls == [
        ("init", {"project": "my-proj", "location": "europe-west4"}),
        (
            "Model.upload",
            {
                "display_name": "cxrflow",
                "artifact_uri": "gs://bucket/serving/1700000000",
                "serving_container_image_uri": MODEL["serving_image"],
            },
        ),
    ]


def test_upload_vertex_model_deploys_to_endpoint(rec, monkeypatch):
    fake = fake_aiplatform(rec)
    monkeypatch.setattr(deploy, "_aiplatform", lambda: types.SimpleNamespace(init=fake.init))
    deploy.upload_vertex_model(
        "gs://bucket/serving/1",
        **MODEL,
        endpoint="projects/p/locations/europe-west4/endpoints/42",
        model_factory=fake.Model,
        endpoint_factory=fake.Endpoint,
    )
    assert rec.names() == ["init", "Model.upload", "Endpoint", "deploy"]
    assert rec.kwargs("Endpoint") == {"endpoint_name": "projects/p/locations/europe-west4/endpoints/42"}
    deployed = rec.kwargs("deploy")
    assert deployed["machine_type"] == "n1-standard-2" and deployed["traffic_percentage"] == 100
    assert deployed["endpoint"] is fake.Endpoint.return_value


def test_upload_vertex_model_input_errors_and_failures(rec, monkeypatch):
    monkeypatch.setattr(deploy, "_aiplatform", lambda: fake_aiplatform(rec))
    with pytest.raises(DeployError, match="gs://BUCKET"):
        deploy.upload_vertex_model("/local/serving/1", **MODEL)
    with pytest.raises(DeployError, match="serving container image is required"):
        deploy.upload_vertex_model("gs://bkt/m", **{**MODEL, "serving_image": ""})
    assert rec.calls == []

    broken = fake_aiplatform(Recorder()).Model
    broken.upload.side_effect = PermissionError(f"403 on https://storage.googleapis.com/b?X-Goog-Signature={SECRET}")
    with pytest.raises(DeployError, match="could not reach Vertex AI") as info:
        deploy.upload_vertex_model("gs://bkt/m", **MODEL, model_factory=broken)
    assert SECRET not in str(info.value)


def test_the_fakes_have_the_sdks_signatures(rec):
    """What makes the tests above able to fail: an argument the SDK does not take is refused."""
    fake = fake_aiplatform(rec)
    with pytest.raises(TypeError):
        fake.PipelineJob(display_name="x", template_path="p.yaml", enable_cache=True)  # it is enable_caching
    with pytest.raises(TypeError):
        fake.PipelineJob(display_name="x").submit(service_acount="sa")  # template_path is required
    job = fake.PipelineJob(display_name="x", template_path="p.yaml")
    with pytest.raises(TypeError):
        job.create_schedule(cron="0 3 * * *", display_name="s", max_concurrent_runs=1)
    with pytest.raises(TypeError):
        fake.Model.upload(display_name="m", artifact_uri="gs://b/m", serving_image="img")
    with pytest.raises(TypeError):
        fake.init(project="p", region="us-central1")  # it is location
