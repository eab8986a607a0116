"""Submit and schedule compiled pipelines on KFP or Vertex AI, and upload models to Vertex AI.

Plain functions over the client libraries. `kfp` and `google.cloud.aiplatform` are imported inside
the functions (importing this module touches neither), and every function takes a factory
argument so tests can hand in recording fakes. Every error is a `DeployError` whose message has
passed through `redact`, so a token or password in a host URL or a client's error text never
reaches a log.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cxrflow.deploy_checks import (
    DeployError,
    call_client,
    check_labels,
    error_reason,
    gcs_path,
    kfp_cron,
    kfp_host,
    local_package,
    pipeline_template,
    redact,
    require,
    validate_cron,
    vertex_target,
)

__all__ = [
    "DeployError",
    "kfp_cron",
    "redact",
    "schedule_kfp",
    "schedule_vertex",
    "submit_kfp",
    "submit_vertex",
    "upload_vertex_model",
    "validate_cron",
]


def _aiplatform():
    from google.cloud import aiplatform

    return aiplatform


def _vertex_init(aiplatform: Any, project: str, region: str) -> None:
    try:
        aiplatform.init(project=project, location=region)
    except Exception as exc:  # the SDK rejects unknown regions with a ValueError
        raise DeployError(f"Vertex AI rejected project {project!r} / region {region!r}: {error_reason(exc)}") from None


def _vertex_host(region: str) -> str:
    return f"Vertex AI ({region}-aiplatform.googleapis.com)"


# --- KFP -------------------------------------------------------------------------------------
def _kfp_factory(client_factory: Callable[..., Any] | None) -> Callable[..., Any]:
    if client_factory is not None:
        return client_factory
    import kfp

    return kfp.Client


def submit_kfp(
    package_path: str | Path,
    host: str,
    *,
    run_name: str | None = None,
    experiment: str | None = None,
    arguments: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    client_factory: Callable[..., Any] | None = None,
) -> str:
    """Start one run of a compiled pipeline on a KFP v2 endpoint; returns the run id."""
    package, host = local_package(package_path), kfp_host(host)
    factory = _kfp_factory(client_factory)

    def run() -> str:
        client = factory(host=host)
        result = client.create_run_from_pipeline_package(
            pipeline_file=package,
            arguments=dict(arguments or {}),
            run_name=run_name,
            experiment_name=experiment,
            namespace=namespace,
        )
        return str(result.run_id)

    return call_client(host, run)


def schedule_kfp(
    package_path: str | Path,
    host: str,
    *,
    cron: str,
    schedule_name: str = "cxrflow",
    experiment: str = "cxrflow",
    arguments: Mapping[str, Any] | None = None,
    namespace: str | None = None,
    client_factory: Callable[..., Any] | None = None,
) -> str:
    """Create a KFP recurring run from a standard 5-field cron; returns the recurring run id.

    One run at a time (`max_concurrency=1`), and no catch-up burst of training runs after the
    scheduler was down (`no_catchup=True`).
    """
    cron6 = kfp_cron(cron)
    package, host = local_package(package_path), kfp_host(host)
    schedule_name = require(schedule_name, "a schedule name", "cxrflow-nightly")
    experiment = require(experiment, "an experiment name", "cxrflow")
    factory = _kfp_factory(client_factory)

    def run() -> str:
        client = factory(host=host)
        experiment_id = client.create_experiment(name=experiment, namespace=namespace).experiment_id
        recurring = client.create_recurring_run(
            experiment_id=experiment_id,
            job_name=schedule_name,
            cron_expression=cron6,
            pipeline_package_path=package,
            params=dict(arguments or {}),
            max_concurrency=1,
            no_catchup=True,
        )
        return str(recurring.recurring_run_id)

    return call_client(host, run)


# --- Vertex AI -------------------------------------------------------------------------------
def _pipeline_job(
    package_path: str | Path,
    *,
    project: str,
    region: str,
    pipeline_root: str,
    display_name: str,
    parameter_values: Mapping[str, Any] | None,
    enable_caching: bool | None,
    labels: Mapping[str, str] | None,
    job_factory: Callable[..., Any] | None,
) -> tuple[Any, str]:
    """Validate everything, init the SDK and build the PipelineJob (which reads a gs:// template)."""
    project, region = vertex_target(project, region)
    pipeline_root = gcs_path(pipeline_root, "the pipeline root", "--pipeline-root")
    display_name = require(display_name, "a display name", "cxrflow")
    template, checked_labels = pipeline_template(package_path), check_labels(labels)
    aiplatform = _aiplatform()
    _vertex_init(aiplatform, project, region)
    factory = job_factory or aiplatform.PipelineJob
    host = _vertex_host(region)
    job = call_client(
        host,
        lambda: factory(
            display_name=display_name,
            template_path=template,
            pipeline_root=pipeline_root,
            parameter_values=dict(parameter_values or {}),
            enable_caching=enable_caching,
            labels=checked_labels,
        ),
    )
    return job, host


def submit_vertex(
    package_path: str | Path,
    *,
    project: str,
    region: str,
    pipeline_root: str,
    display_name: str,
    service_account: str | None = None,
    parameter_values: Mapping[str, Any] | None = None,
    enable_caching: bool | None = None,
    labels: Mapping[str, str] | None = None,
    job_factory: Callable[..., Any] | None = None,
) -> str:
    """Submit one Vertex AI Pipelines run (without waiting); returns the job's resource name.

    `enable_caching=None` keeps each task's compiled caching setting (pipeline.CACHED_TASKS:
    on for the stages whose inputs say everything about their output); True or False
    overrides every task.
    """
    job, host = _pipeline_job(
        package_path,
        project=project,
        region=region,
        pipeline_root=pipeline_root,
        display_name=display_name,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=labels,
        job_factory=job_factory,
    )

    def run() -> str:
        job.submit(service_account=service_account)
        return str(job.resource_name)

    return call_client(host, run)


def schedule_vertex(
    package_path: str | Path,
    *,
    cron: str,
    project: str,
    region: str,
    pipeline_root: str,
    display_name: str,
    schedule_name: str | None = None,
    service_account: str | None = None,
    parameter_values: Mapping[str, Any] | None = None,
    enable_caching: bool | None = None,
    labels: Mapping[str, str] | None = None,
    job_factory: Callable[..., Any] | None = None,
) -> str:
    """Create a Vertex AI pipeline schedule (one run at a time); returns its resource name.

    `cron` is a standard 5-field cron, optionally prefixed with `TZ=Area/City` (UTC otherwise).
    """
    cron = validate_cron(cron, allow_timezone=True)
    job, host = _pipeline_job(
        package_path,
        project=project,
        region=region,
        pipeline_root=pipeline_root,
        display_name=display_name,
        parameter_values=parameter_values,
        enable_caching=enable_caching,
        labels=labels,
        job_factory=job_factory,
    )

    def run() -> str:
        schedule = job.create_schedule(
            cron=cron,
            display_name=schedule_name or f"{display_name}-schedule",
            max_concurrent_run_count=1,
            service_account=service_account,
        )
        return str(schedule.resource_name)

    return call_client(host, run)


def upload_vertex_model(
    model_dir: str,
    *,
    project: str,
    region: str,
    display_name: str,
    serving_image: str,
    endpoint: str | None = None,
    machine_type: str = "n1-standard-2",
    model_factory: Any = None,
    endpoint_factory: Callable[..., Any] | None = None,
) -> str:
    """Register a SavedModel directory (gs://..., the one holding saved_model.pb) as a Vertex AI
    Model; with `endpoint` (a resource name or id), deploy it there taking 100% of the traffic.
    Returns the model's resource name."""
    project, region = vertex_target(project, region)
    model_dir = gcs_path(model_dir, "the model directory", "--vertex-model")
    display_name = require(display_name, "a model display name", "cxrflow")
    serving_image = require(
        serving_image, "a serving container image", "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
    )
    aiplatform = _aiplatform()
    _vertex_init(aiplatform, project, region)
    model_cls = model_factory or aiplatform.Model
    endpoint_cls = endpoint_factory or aiplatform.Endpoint

    def run() -> str:
        model = model_cls.upload(
            display_name=display_name,
            artifact_uri=model_dir,
            serving_container_image_uri=serving_image,
        )
        if endpoint:
            target = endpoint_cls(endpoint_name=endpoint)
            model.deploy(endpoint=target, machine_type=machine_type, traffic_percentage=100)
        return str(model.resource_name)

    return call_client(_vertex_host(region), run)


def predict_vertex(endpoint: str, instances: list, *, endpoint_factory: Callable[..., Any] | None = None) -> list:
    """Online prediction on a Vertex AI endpoint (`projects/P/locations/R/endpoints/E`).

    `instances` are TF Serving-style rows (`{"b64": ...}`); the answer is the endpoint's
    prediction rows, in order.
    """
    match = re.fullmatch(r"projects/[^/]+/locations/(?P<region>[^/]+)/endpoints/[^/]+", endpoint or "")
    if not match:
        raise DeployError(f"a Vertex endpoint is projects/P/locations/R/endpoints/E, got {endpoint!r}")
    endpoint_cls = endpoint_factory or _aiplatform().Endpoint

    def run() -> list:
        return list(endpoint_cls(endpoint_name=endpoint).predict(instances=instances).predictions)

    return call_client(_vertex_host(match.group("region")), run)
