"""read_csv_rows: cleaned column names once per file, rows exactly as csv.DictReader gives them
(with names lower-cased and stripped, values stripped)."""

from __future__ import annotations

import csv
import io
import random

from cxrflow.sources import base


def _dictreader_rows(text: str):
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = {(name or "").strip().lower() for name in reader.fieldnames or ()}
    rows = [{k.strip().lower(): (v if isinstance(v, str) else "").strip() for k, v in row.items() if k is not None}
            for row in reader]
    return columns, rows


def _rows(tmp_path, text: str):
    path = tmp_path / "meta.csv"
    path.write_bytes(text.encode())
    return base.read_csv_rows(str(path))


def test_names_and_values_are_cleaned_and_ragged_rows_handled(tmp_path):
    text = 'Patient ID , Finding,notes\r\n p1 ,COVID-19,"two\nlines"\n\np2,Normal\np3,Normal,x,extra\n'
    columns, rows = _rows(tmp_path, text)
    assert columns == {"patient id", "finding", "notes"}
    assert rows == [{"patient id": "p1", "finding": "COVID-19", "notes": "two\nlines"},
                    {"patient id": "p2", "finding": "Normal", "notes": ""},
                    {"patient id": "p3", "finding": "Normal", "notes": "x"}]


def test_repeated_names_pick_the_cells_dictreader_picks(tmp_path):
    # "a" twice and "A": DictReader keeps the last "a" at the first "a"'s place, then "A" comes
    # later and wins once the names are lower-cased.
    columns, rows = _rows(tmp_path, "B ,d,a,A,a\n1,2,3,4,5\n1,2\n")
    assert columns == {"a", "b", "d"}
    assert rows == [{"b": "1", "d": "2", "a": "4"}, {"b": "1", "d": "2", "a": ""}]


def test_random_files_read_as_dictreader_reads_them(tmp_path):
    rng = random.Random(1)
    cells = ["", " a ", "B", "x,y", 'q"uote', "line\nbreak", "  ", "Z "]
    names = ["A", "a", " b", "B ", "c", "", "d"]
    for _ in range(300):
        width = rng.randint(0, 5)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator=rng.choice(["\n", "\r\n"]))
        if rng.random() < 0.9:
            writer.writerow([rng.choice(names) for _ in range(width)])
        for _ in range(rng.randint(0, 4)):
            writer.writerow([rng.choice(cells) for _ in range(rng.randint(0, width + 2))])
            if rng.random() < 0.2:
                buf.write("\n")
        assert _rows(tmp_path, buf.getvalue()) == _dictreader_rows(buf.getvalue()), buf.getvalue()
