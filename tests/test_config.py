import pytest

from cxrflow.config import Augmentation, ConfigError, PipelineConfig, Resources


def test_round_trips_through_json():
    config = PipelineConfig(
        data=("folders:/x",), classes=("a", "b"), min_recall=(("a", 0.5),), operating_point=(("b", 0.9),),
        augmentation=Augmentation(flip=True),
        trainer_resources=Resources("4", "16G", "NVIDIA_TESLA_T4", 1), beam_args=("--runner=DirectRunner",),
    )
    assert PipelineConfig.from_json(config.to_json()) == config


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"classes": ("a",)}, "at least two"),
        ({"model": "vgg"}, "model must be"),
        ({"resample": "smote"}, "resample must be"),
        ({"image_size": 8}, "image_size"),
        ({"eval_fraction": 0.6, "test_fraction": 0.5}, "leave data"),
        ({"min_recall": (("flu", 0.9),)}, "not in"),
        ({"data": ("nokind",)}, "KIND:PATH"),
    ],
)
def test_rejects_bad_values_with_a_clear_message(changes, message):
    with pytest.raises(ConfigError, match=message):
        PipelineConfig(**changes)


def test_unknown_keys_are_refused():
    with pytest.raises(ConfigError, match="unknown config keys"):
        PipelineConfig.from_dict({"epochz": 3})
