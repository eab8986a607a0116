"""How ExampleGen's Beam pipeline carries its data: the listing travels as a file in the run's
temporary folder, never inside the pickled transforms (which Beam bz2-compresses and, locally,
unpickles and re-pickles several times per run; bench/README.md, issue 14)."""

from __future__ import annotations

from apache_beam.internal import cloudpickle_pickler

from cxrflow.sources import Exclusion, Record
from cxrflow.stages.example_gen import read_listing, run_example_gen, scan_sources, write_listing


def test_no_listed_path_is_pickled_into_the_pipeline(tiny_config, tmp_path, monkeypatch):
    pickled: list[bytes] = []
    real_dumps = cloudpickle_pickler._dumps

    def spy(*args, **kwargs):
        out = real_dumps(*args, **kwargs)
        pickled.append(out)
        return out

    monkeypatch.setattr(cloudpickle_pickler, "_dumps", spy)
    report = run_example_gen(tiny_config, str(tmp_path / "out"))
    assert sum(sum(s["kept"].values()) for s in report["sources"].values()) == 42
    assert pickled  # the spy saw Beam's pickling
    paths = [r.path.encode() for r in scan_sources(tiny_config)[0]]
    assert not [p for p in paths if any(p in blob for blob in pickled)]


def test_the_listing_file_round_trips_records_and_exclusions(tmp_path):
    records = [Record("/d/a.png", "s:a.png", "covid", "s:p1", "s", view="PA", sex="F", age="41",
                      provided_split="test", age_group="adult", patient_known=False),
               Record("/d/b é.png", "s:b é.png", "normal", "s:p2", "s")]
    exclusions = [Exclusion("s", "/d/c.png", "view"), Exclusion("s", "/d/d.txt", "finding:SARS")]
    path = str(tmp_path / "listing.json")
    write_listing(path, records, exclusions)
    assert read_listing(path) == (records, exclusions)
