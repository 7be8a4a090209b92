"""The hostile-input corpus: one function per case, each writing its input file.

The files are written at test time (the largest is 300 MB) rather than committed. Each
case is what a careless or hostile user could send; tests/hostile/test_corpus.py runs
every one through `genqueue submit` and asserts the message, the time and the memory.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

MB = 1_000_000
MiB = 1024 * 1024


def _line(record: object) -> bytes:
    return json.dumps(record).encode() + b"\n"


def _big_prompt_line(path: Path, size: int) -> Path:
    """One `{"prompt": "word word ..."}` line of `size` bytes (and its newline), written
    in pieces, then a normal line."""
    head, tail = b'{"prompt": "', b'"}\n'
    body = size - len(head) - len(tail) + 1
    piece = b"word " * (MiB // 5)
    with path.open("wb") as f:
        f.write(head)
        while body > 0:
            f.write(piece[:body])
            body -= len(piece)
        f.write(tail)
        f.write(_line({"prompt": "a normal line"}))
    return path


def line_30mb(tmp: Path) -> Path:
    return _big_prompt_line(tmp / "line_30mb.jsonl", 30 * MB)


def line_300mb(tmp: Path) -> Path:
    return _big_prompt_line(tmp / "line_300mb.jsonl", 300 * MB)


def deep_nesting(tmp: Path) -> Path:
    """`"params": {"a": {"a": ...}}`, 100,000 levels (past Python's recursion limit)."""
    depth = 100_000
    text = '{"prompt": "x", "params": ' + '{"a": ' * depth + "1" + "}" * depth + "}\n"
    path = tmp / "deep_nesting.jsonl"
    path.write_bytes(_line({"prompt": "fine"}) + text.encode())
    return path


def moderate_nesting(tmp: Path) -> Path:
    """500 levels: json parses it, the depth limit (64) refuses it."""
    depth = 500
    text = '{"prompt": "x", "meta": ' + "[" * depth + "]" * depth + "}\n"
    path = tmp / "moderate_nesting.jsonl"
    path.write_bytes(text.encode())
    return path


def wide_json_record(tmp: Path) -> Path:
    """8 MB of empty objects in one line (under the line limit): parsed, it would take
    25x its size."""
    path = tmp / "wide.jsonl"
    path.write_bytes(b'{"prompt": "a", "x": [' + b"{}," * 2_700_000 + b"{}]}\n")
    return path


def wide_csv_record(tmp: Path) -> Path:
    """A CSV record of 2,700,000 two-letter fields (8 MB)."""
    path = tmp / "wide.csv"
    path.write_bytes(b"prompt\n" + b"ab," * 2_700_000 + b"\n")
    return path


def short_reviews(tmp: Path) -> Path:
    """Two 4-character reviews, for templates that try to amplify them."""
    path = tmp / "reviews.jsonl"
    path.write_bytes(_line({"review": "good"}) + _line({"review": "bad!"}))
    return path


def csv_field_50mb(tmp: Path) -> Path:
    """A CSV whose second row holds a 50 MB quoted field (with newlines in it)."""
    path = tmp / "csv_field_50mb.csv"
    chunk = ("lorem ipsum\n" * (MiB // 12)).encode()
    with path.open("wb") as f:
        f.write(b"prompt,label\n")
        f.write(b"fine,1\n")
        f.write(b'"')
        for _ in range(50 * MB // len(chunk)):
            f.write(chunk)
        f.write(b'",2\n')
        f.write(b"after,3\n")
    return path


def csv_field_5m_chars(tmp: Path) -> Path:
    """One field of 5,000,000 characters: under the record limit (8 MiB), over the
    field limit (4,000,000 characters)."""
    path = tmp / "csv_field_5m.csv"
    path.write_bytes(b"prompt\nfine\n" + b"x" * 5_000_000 + b"\n")
    return path


def gzip_bomb(tmp: Path, lines: int = 2048) -> Path:
    """About 4 MB of gzip that expands 500x: `lines` JSON lines of 1 MiB each, mostly
    spaces (one gzip member per line; gzip readers read members one after another)."""
    record = json.dumps({"prompt": "a" * 1000}).encode()
    line = record + b" " * (MiB - len(record) - 1) + b"\n"
    member = gzip.compress(line, compresslevel=9)
    path = tmp / "gzip_bomb.jsonl.gz"
    with path.open("wb") as f:
        for _ in range(lines):
            f.write(member)
    return path


def parquet_big_row_group(tmp: Path) -> Path:
    """One row group of 20,000 rows (about 20 MB uncompressed)."""
    path = tmp / "big_row_group.parquet"
    prompts = [f"{i:06d}" + "x" * 994 for i in range(20_000)]
    table = pa.table({"prompt": prompts})
    pq.write_table(table, path, row_group_size=20_000, use_dictionary=False)
    return path


def parquet_big_cell(tmp: Path) -> Path:
    """Three rows; the second holds a 20 MB binary cell."""
    path = tmp / "big_cell.parquet"
    table = pa.table(
        {
            "prompt": ["one", "two", "three"],
            "blob": pa.array([b"", b"\x00" * (20 * MB), b""], pa.binary()),
        }
    )
    pq.write_table(table, path)
    return path


def parquet_repeated_value(tmp: Path) -> Path:
    """A file of a few kilobytes that expands to 2 GB: 200 rows holding the same 10 MB
    value, dictionary-encoded and compressed."""
    path = tmp / "repeated_value.parquet"
    table = pa.table({"prompt": pa.array(["x" * (10 * MB)] * 200)})
    pq.write_table(table, path, use_dictionary=True, compression="zstd")
    return path


def nul_heavy(tmp: Path) -> Path:
    """A prompt of 1,000,000 NUL characters (\\u0000 escapes) after a normal line."""
    path = tmp / "nul_heavy.jsonl"
    path.write_bytes(_line({"prompt": "fine"}) + _line({"prompt": "\x00" * 1_000_000}))
    return path


def nul_csv(tmp: Path) -> Path:
    path = tmp / "nul.csv"
    path.write_bytes(b"prompt\nfine\nbad\x00\x00\x00text\n")
    return path


def lone_surrogate(tmp: Path) -> Path:
    r"""`"\ud800"` written as an escape: valid JSON, not text."""
    path = tmp / "lone_surrogate.jsonl"
    path.write_bytes(_line({"prompt": "fine"}) + b'{"prompt": "half a pair: \\ud800!"}\n')
    return path


def encoded_surrogate(tmp: Path) -> Path:
    """The bytes of a surrogate encoded as UTF-8 (CESU-8): not valid UTF-8."""
    path = tmp / "encoded_surrogate.jsonl"
    path.write_bytes(b'{"prompt": "x\xed\xa0\x80y"}\n')
    return path


def huge_numbers(tmp: Path) -> Path:
    """1e999999 (infinite as a float), NaN, and an integer of 5,000 digits in params."""
    path = tmp / "huge_numbers.jsonl"
    path.write_bytes(
        b'{"prompt": "a", "params": {"temperature": 1e999999}}\n'
        b'{"prompt": "b", "params": {"top_p": NaN}}\n'
        b'{"prompt": "c", "params": {"max_new_tokens": ' + b"7" * 5000 + b"}}\n"
        b'{"prompt": "d", "params": {"temperature": 0.5}}\n'
    )
    return path


def many_records(tmp: Path, n: int) -> Path:
    path = tmp / "many_records.jsonl"
    path.write_bytes(b"".join(_line({"prompt": f"p{i}"}) for i in range(n)))
    return path


def long_prompt(tmp: Path, chars: int = 2_000_000) -> Path:
    """A 2,000,000-character prompt (under every input limit) that cannot fit a
    512-token context, then a short one."""
    path = tmp / "long_prompt.jsonl"
    path.write_bytes(_line({"prompt": "word " * (chars // 5)}) + _line({"prompt": "short"}))
    return path


def many_long_documents(tmp: Path, n: int = 40, chars: int = 3_000_000) -> Path:
    """`n` legal documents of 3,000,000 characters (120 MB in all): each under every
    limit, together far more than a window should hold in memory."""
    path = tmp / "long_documents.jsonl"
    with path.open("wb") as f:
        for i in range(n):
            f.write(_line({"text": f"document {i} " + "z" * chars}))
    return path


def openai_deep_body(tmp: Path) -> Path:
    """An OpenAI batch line whose body nests 200 levels deep."""
    path = tmp / "openai_deep.jsonl"
    good = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "hi"}]},
    }
    deep = (
        '{"custom_id": "b", "method": "POST", "url": "/v1/chat/completions", "body": '
        '{"model": "m", "messages": [{"role": "user", "content": "hi"}], "metadata": '
        + '{"k": ' * 200
        + "1"
        + "}" * 200
        + "}}\n"
    )
    path.write_bytes(_line(good) + deep.encode())
    return path


def repeated_field_template(tmp: Path) -> Path:
    """A 3,000,000-character field, for a template that repeats it three times."""
    path = tmp / "repeated.jsonl"
    path.write_bytes(_line({"text": "y" * 3_000_000}))
    return path
