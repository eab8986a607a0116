"""Fakes of kfp.Client and google.cloud.aiplatform for the cxrflow.deploy tests.

Built with `mock.create_autospec` from the real SDK classes, so a call with an argument the
installed SDK does not take (a renamed or removed keyword, a missing required one) raises
TypeError here just as it would against the service: the tests fail when the SDK changes.
"""

from __future__ import annotations

import types
from unittest import mock

HOST = "https://kfp.example.com"
SECRET = "s3cr3t-Tok3n-value"
RUN_ID, EXPERIMENT_ID, RECURRING_RUN_ID = "run-123", "exp-7", "rr-9"
JOB_NAME = "projects/p/locations/us-central1/pipelineJobs/job-1"
SCHEDULE_NAME = "projects/p/locations/us-central1/schedules/s-1"
MODEL_NAME = "projects/p/locations/us-central1/models/m-1"


class Recorder:
    """Every call made on the fakes attached to it, in order, as (name, kwargs).

    Names are the SDK's: `Client`, `create_run_from_pipeline_package`, `init`, `PipelineJob`,
    `submit`, `Model.upload`, `deploy`, ... (a method on an object a call returned is named by
    the method alone).
    """

    def __init__(self) -> None:
        self.manager = mock.MagicMock()

    def attach(self, fake, name: str):
        self.manager.attach_mock(fake, name)
        return fake

    @property
    def calls(self) -> list[tuple[str, dict]]:
        out = []
        for name, args, kwargs in self.manager.mock_calls:
            assert not args, f"{name} called with positional arguments {args}: deploy passes keywords"
            out.append((name.rsplit("().", 1)[-1], dict(kwargs)))
        return out

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def kwargs(self, name: str) -> dict:
        matches = [kwargs for called, kwargs in self.calls if called == name]
        assert len(matches) == 1, f"{name} called {len(matches)} times: {self.names()}"
        return matches[0]


# --- fakes -----------------------------------------------------------------------------------
def fake_kfp_client(rec: Recorder, fail: BaseException | None = None):
    """An autospec of kfp.Client (the class: calling it checks the constructor's signature)."""
    import kfp
    from kfp.client.client import RunPipelineResult

    client_cls = rec.attach(mock.create_autospec(kfp.Client), "Client")
    if fail is not None:
        client_cls.side_effect = fail
    client = client_cls.return_value
    client.create_run_from_pipeline_package.return_value = mock.create_autospec(
        RunPipelineResult, instance=True, run_id=RUN_ID)
    client.create_experiment.return_value = types.SimpleNamespace(experiment_id=EXPERIMENT_ID)
    client.create_recurring_run.return_value = types.SimpleNamespace(recurring_run_id=RECURRING_RUN_ID)
    return client_cls


def fake_aiplatform(rec: Recorder, fail_submit: BaseException | None = None):
    """The parts of google.cloud.aiplatform that cxrflow.deploy uses, each an autospec."""
    from google.cloud import aiplatform

    init = rec.attach(mock.create_autospec(aiplatform.init), "init")
    job_cls = rec.attach(mock.create_autospec(aiplatform.PipelineJob), "PipelineJob")
    job = job_cls.return_value
    job.resource_name = JOB_NAME
    if fail_submit is not None:
        job.submit.side_effect = fail_submit
    job.create_schedule.return_value = types.SimpleNamespace(resource_name=SCHEDULE_NAME)
    model_cls = rec.attach(mock.create_autospec(aiplatform.Model), "Model")
    model_cls.upload.return_value.resource_name = MODEL_NAME
    endpoint_cls = rec.attach(mock.create_autospec(aiplatform.Endpoint), "Endpoint")
    return types.SimpleNamespace(init=init, PipelineJob=job_cls, Model=model_cls, Endpoint=endpoint_cls)


VERTEX = dict(project="my-proj", region="us-central1", pipeline_root="gs://bucket/root", display_name="cxrflow")
