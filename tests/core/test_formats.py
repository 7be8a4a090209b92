"""One table of file formats: the same names, aliases and extensions in and out."""

from __future__ import annotations

import pytest

from genqueue import formats


@pytest.mark.parametrize("direction", ["input", "output"])
def test_names_aliases_and_extensions_mean_the_same_in_both_directions(direction: str) -> None:
    assert formats.names(direction) == ("jsonl", "csv", "parquet", "openai")  # type: ignore[arg-type]
    for name, expected in [
        ("JSON", "jsonl"),
        ("ndjson", "jsonl"),
        ("pq", "parquet"),
        (" csv ", "csv"),
    ]:
        found = formats.by_name(name, direction)  # type: ignore[arg-type]
        assert found is not None and found.name == expected
    for path, expected in [("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("b.pq", "parquet")]:
        found = formats.by_path(path, direction)  # type: ignore[arg-type]
        assert found is not None and found.name == expected
    assert formats.by_name("xml", direction) is None  # type: ignore[arg-type]
    assert formats.by_path("notes.txt", direction) is None  # type: ignore[arg-type]


def test_gzip_endings_are_seen_through_and_parquet_does_not_stream() -> None:
    found = formats.by_path("big.csv.gz", "input")
    assert found is not None and found.name == "csv"
    assert formats.known_extension("x.gz") and formats.known_extension("x.CSV")
    assert not formats.known_extension("<stdin>")
    parquet = formats.by_name("parquet", "output")
    assert parquet is not None and not parquet.streams
