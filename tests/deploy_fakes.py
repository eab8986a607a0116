"""Recording fakes of kfp.Client and google.cloud.aiplatform for the cxrflow.deploy tests."""

from __future__ import annotations

import types

HOST = "https://kfp.example.com"
SECRET = "s3cr3t-Tok3n-value"


class Recorder:
    """Records every call made on it or on objects it returns."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict]] = []

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def kwargs(self, name: str) -> dict:
        matches = [kwargs for called, kwargs in self.calls if called == name]
        assert len(matches) == 1, f"{name} called {len(matches)} times: {self.names()}"
        return matches[0]


# --- fakes -----------------------------------------------------------------------------------
def fake_kfp_client(rec: Recorder, fail: BaseException | None = None):
    class FakeClient:
        def __init__(self, **kwargs):
            rec.calls.append(("Client", kwargs))
            if fail is not None:
                raise fail

        def create_run_from_pipeline_package(self, **kwargs):
            rec.calls.append(("create_run_from_pipeline_package", kwargs))
            return types.SimpleNamespace(run_id="run-123")

        def create_experiment(self, **kwargs):
            rec.calls.append(("create_experiment", kwargs))
            return types.SimpleNamespace(experiment_id="exp-7")

        def create_recurring_run(self, **kwargs):
            rec.calls.append(("create_recurring_run", kwargs))
            return types.SimpleNamespace(recurring_run_id="rr-9")

    return FakeClient


def fake_aiplatform(rec: Recorder, fail_submit: BaseException | None = None):
    class FakeJob:
        def __init__(self, **kwargs):
            rec.calls.append(("PipelineJob", kwargs))
            self.resource_name = "projects/p/locations/us-central1/pipelineJobs/job-1"

        def submit(self, **kwargs):
            rec.calls.append(("submit", kwargs))
            if fail_submit is not None:
                raise fail_submit

        def create_schedule(self, **kwargs):
            rec.calls.append(("create_schedule", kwargs))
            return types.SimpleNamespace(resource_name="projects/p/locations/us-central1/schedules/s-1")

    class FakeModel:
        resource_name = "projects/p/locations/us-central1/models/m-1"

        @classmethod
        def upload(cls, **kwargs):
            rec.calls.append(("Model.upload", kwargs))
            return cls()

        def deploy(self, **kwargs):
            rec.calls.append(("deploy", kwargs))

    class FakeEndpoint:
        def __init__(self, **kwargs):
            rec.calls.append(("Endpoint", kwargs))

    return types.SimpleNamespace(
        init=lambda **kwargs: rec.calls.append(("init", kwargs)),
        PipelineJob=FakeJob,
        Model=FakeModel,
        Endpoint=FakeEndpoint,
    )


VERTEX = dict(project="my-proj", region="us-central1", pipeline_root="gs://bucket/root", display_name="cxrflow")
