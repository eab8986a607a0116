"""Finding -> class rules: the one table every metadata-driven adapter maps its labels through.

`ieee`, `actualmed`, `figure1`, `nih`, `rsna` and `covidx` all name a finding per image, each in
its own vocabulary. They share this table so that one `--finding-map` works on all of them and a
pathogen is never `bacterial` in one source and excluded in another.

Rules are matched on whole `/`-separated path elements after `normalize_finding` (case and blanks
ignored): a rule `pneumonia/bacterial` covers `Pneumonia/Bacterial/Klebsiella` but not
`Pneumonia/Bacterialish`. Findings with no rule have no class and are excluded by the adapter as
`finding:<value>`, counted in the ingest report.
"""

from __future__ import annotations

# Bacterial pathogens by the names the IEEE metadata has used. The 2020 releases name them flat
# (`Streptococcus`, `Mycoplasma Bacterial Pneumonia`, `Bacterial`); current releases file them
# under `Pneumonia/Bacterial/...`, which the `pneumonia/bacterial` rule covers as a whole.
FLAT_BACTERIAL_FINDINGS = (
    "bacterial",
    "bacterial pneumonia",
    "chlamydophila",
    "e.coli",
    "klebsiella",
    "legionella",
    "mrsa",
    "mycoplasma",
    "mycoplasma bacterial pneumonia",
    "nocardia",
    "staphylococcus",
    "streptococcus",
)

DEFAULT_FINDING_RULES: dict[str, str] = {
    # IEEE, current releases. Only bacterial pneumonia as a group: its species are too few per
    # class to learn.
    "pneumonia/bacterial": "bacterial",
    "pneumonia/viral/covid-19": "covid",
    # IEEE 2020 flat names; Actualmed, Figure1 and COVIDx also spell COVID-19 flat.
    **dict.fromkeys(FLAT_BACTERIAL_FINDINGS, "bacterial"),
    "covid-19": "covid",
    # `No Finding` (IEEE, NIH), `No finding` (Actualmed, Figure1), `Normal` (RSNA), `normal` (COVIDx).
    "no finding": "normal",
    "normal": "normal",
    # COVIDx labels: `positive` (binary releases); `bacteria` (the first release's 3-column list).
    "positive": "covid",
    "bacteria": "bacterial",
    # Deliberately absent, so excluded unless mapped: `Pneumonia` alone (cause unknown; NIH,
    # Figure1, COVIDx, old IEEE), RSNA's `Lung Opacity`, and COVIDx's `negative`, which means
    # "not COVID-19" and holds non-COVID pneumonias as well as normal films.
}

# Co-findings that name a complication, not a competing cause: `COVID-19, ARDS` is COVID-19.
COMPLICATIONS = frozenset({"ards"})

# Adapters that map through this table; a `--finding-map` rule may be limited to one of them.
METADATA_KINDS = ("actualmed", "covidx", "figure1", "ieee", "nih", "rsna")


def normalize_finding(value: str) -> str:
    """Lower-cased, with blanks around `/` removed: `Pneumonia / Viral` == `pneumonia/viral`."""
    return "/".join(part.strip() for part in value.strip().lower().split("/"))


def parse_finding_map(text: str, kind: str = "") -> dict[str, str]:
    """`--finding-map` rules that apply to adapter `kind` (all of them when `kind` is empty).

    `"Pneumonia/Viral=viral,nih:Pneumonia=bacterial"` -> {"pneumonia/viral": "viral",
    "pneumonia": "bacterial"} for `nih`, and only the first rule for any other kind. A rule
    limited to a kind wins over an unlimited one for the same finding. Limiting matters because
    rules match by prefix: a bare `Pneumonia=bacterial` meant for NIH would also turn current
    IEEE's `Pneumonia/Viral/COVID-19` into bacterial.
    """
    general: dict[str, str] = {}
    limited: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        prefix, sep, label = item.partition("=")
        if not sep or not prefix.strip() or not label.strip():
            raise ValueError(f"--finding-map entries take [KIND:]FINDING_PREFIX=CLASS, got {item!r}")
        rule_kind, colon, finding = prefix.partition(":")
        if not colon:
            general[normalize_finding(prefix)] = label.strip()
            continue
        rule_kind = rule_kind.strip().lower()
        if rule_kind not in METADATA_KINDS or not finding.strip():
            raise ValueError(f"--finding-map entry {item!r}: KIND must be one of {list(METADATA_KINDS)}")
        if not kind or rule_kind == kind:
            limited[normalize_finding(finding)] = label.strip()
    return {**general, **limited}


def _longest_prefix(finding: str, rules: dict[str, str]) -> str | None:
    # Whole path elements only: "pneumonia/bac" must not match "pneumonia/bacterial/...".
    hits = [p for p in rules if finding == p or finding.startswith(p + "/")]
    return rules[max(hits, key=len)] if hits else None


def class_for_finding(finding: str, user_rules: dict[str, str]) -> str | None:
    """The class a finding maps to (maybe one not configured), or None when it has none.

    The user's rules win over the defaults whatever their length, so `Pneumonia=pneumonia`
    really does put every pneumonia, COVID-19 included, into one class. A comma-separated value
    names several findings: it maps only when exactly one of them is not a complication
    (`COVID-19, ARDS` is covid). Two causes (`COVID-19, Streptococcus`) make the image no clean
    example of either, so it maps to None.
    """
    key = normalize_finding(finding)
    label = _longest_prefix(key, user_rules)
    if label is not None:
        return label
    parts = [part.strip() for part in key.split(",") if part.strip()]
    causes = [part for part in parts if part not in COMPLICATIONS] if len(parts) > 1 else parts
    if len(causes) != 1:
        return None
    return _longest_prefix(causes[0], user_rules) or _longest_prefix(causes[0], DEFAULT_FINDING_RULES)
