"""Data source adapters, looked up by the KIND of `--data KIND:PATH`."""

from __future__ import annotations

from cxrflow.sources.base import Exclusion, Record, SourceAdapter
from cxrflow.sources.covidnet import ActualmedSource, Figure1Source
from cxrflow.sources.covidx import CovidxSource
from cxrflow.sources.dicom import DicomSource
from cxrflow.sources.folders import FolderSource
from cxrflow.sources.ieee import IeeeSource
from cxrflow.sources.kaggle import KaggleSource
from cxrflow.sources.nih import NihSource
from cxrflow.sources.rsna import RsnaSource

ADAPTERS: dict[str, type[SourceAdapter]] = {
    adapter.kind: adapter
    for adapter in (
        FolderSource, IeeeSource, KaggleSource, DicomSource, ActualmedSource, Figure1Source, NihSource, RsnaSource,
        CovidxSource,
    )
}


def adapter_for(entry: str, classes: tuple[str, ...], options: dict[str, str] | None = None) -> SourceAdapter:
    """Builds the adapter for a `KIND:PATH` entry; raises ValueError for an unknown KIND."""
    kind, _, path = entry.partition(":")
    if kind not in ADAPTERS:
        raise ValueError(f"unknown data kind {kind!r} in {entry!r}; known kinds: {sorted(ADAPTERS)}")
    return ADAPTERS[kind](path, classes, options)


__all__ = ["ADAPTERS", "Exclusion", "Record", "SourceAdapter", "adapter_for"]
