"""Structured outputs, logprobs, label scores and post-processing from the command line,
through real workers; and the same features from OpenAI lines give the same results.
(The HTTP API is tested with the API itself.)"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.integration.test_cli import gq, write_jsonl
from tests.schemas import validate_line

pytestmark = pytest.mark.slow

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"enum": ["pos", "neg"]},
        "stars": {"type": "integer", "minimum": 1, "maximum": 5},
    },
    "required": ["label", "stars"],
    "additionalProperties": False,
}
LABELS = ["positive", "negative", "neutral"]

#: Per-item constraints, cycled over the items (the job's own is --choice).
ITEM_PARAMS: list[dict[str, Any]] = [
    {},  # the job's: --choice
    {"regex": r"[a-z]{3}-[0-9]{2}"},
    {"json_schema": SCHEMA},
    {"json_object": True},
    {"choices": ["yes", "no"], "do_sample": False},
    {"postprocess": "trim"},  # job's choices, a different step list
]


def run(src: Path, out: Path, state: Path, *flags: str, workers: int = 2) -> dict[str, Any]:
    proc = gq(
        "run",
        str(src),
        "-o",
        str(out),
        "--state-dir",
        str(state),
        "--workers",
        str(workers),
        "--json",
        *flags,
        timeout=400,
    )
    return dict(json.loads(proc.stdout))


def test_hundreds_of_mixed_constraints_through_real_workers(tmp_path: Path) -> None:
    n = 240
    records = [
        {"custom_id": f"r{i}", "prompt": f"Review {i}: " + "fine " * (i % 4), "params": p}
        for i in range(n)
        for p in [ITEM_PARAMS[i % len(ITEM_PARAMS)]]
    ]
    src = write_jsonl(tmp_path / "in.jsonl", records)
    out = tmp_path / "out.jsonl"
    summary = run(
        src,
        out,
        tmp_path / "state",
        "--model",
        "tiny-gpt2",
        "--max-new-tokens",
        "40",
        "--do-sample",
        "--seed",
        "7",
        *[a for label in LABELS for a in ("--choice", label)],
        "--score-choices",
        "--postprocess",
        "trim,first_line",
    )
    assert summary["state"] == "completed"
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == n
    counts = {"complete": 0, "incomplete": 0}
    for i, ln in enumerate(lines):
        validate_line(ln)
        assert ln["status"] == "succeeded"
        p = ITEM_PARAMS[i % len(ITEM_PARAMS)]
        if ln.get("incomplete"):
            assert ln["finish_reason"] == "length" and "parsed" not in ln
            counts["incomplete"] += 1
            continue
        counts["complete"] += 1
        raw = ln["raw_output"]
        if "regex" in p:
            assert re.fullmatch(p["regex"], raw), raw
        elif "json_schema" in p:
            jsonschema.validate(json.loads(raw), SCHEMA)
            assert ln["parsed"] == json.loads(raw)
        elif "json_object" in p:
            assert isinstance(ln["parsed"], dict)
        elif "choices" in p:
            # Its own labels, scored (the job asks for scores of whatever labels apply).
            assert raw in p["choices"] and set(ln["choice_scores"]) == set(p["choices"])
        else:  # the job's labels, scored
            assert raw in LABELS
            assert ln["output"] == raw.strip().splitlines()[0]
            assert set(ln["choice_scores"]) == set(LABELS)
            assert all(v < 0 for v in ln["choice_scores"].values())
    # Labels, patterns and the small schema always finish within 40 tokens.
    assert counts["complete"] >= n * 4 // 6

    # The raw generation is exportable (CSV), next to the processed text.
    job = summary["job_id"]
    csv_out = tmp_path / "out.csv"
    db = f"sqlite:///{tmp_path / 'state' / 'genqueue.db'}"
    gq("results", job, "-o", str(csv_out), env={"GENQUEUE_DATABASE_URL": db})
    rows = list(csv.DictReader(csv_out.open()))
    assert [r["custom_id"] for r in rows] == [f"r{i}" for i in range(n)]
    assert rows[0]["raw_output"] == lines[0]["raw_output"]
    assert json.loads(rows[2]["parsed"] or "null") == lines[2].get("parsed")


def openai_line(i: int, url: str, **body: Any) -> dict[str, Any]:
    if url == "/v1/chat/completions":
        body["messages"] = [{"role": "user", "content": f"Review {i}: so so"}]
    else:
        body["prompt"] = f"Review {i}: so so"
    return {"custom_id": f"q{i}", "method": "POST", "url": url, "body": body}


def test_openai_lines_give_what_the_cli_flags_give(tmp_path: Path) -> None:
    """response_format, logprobs/top_logprobs and the penalties on OpenAI lines produce
    exactly the outputs, parsed values and log-probabilities of the CLI flags."""
    n = 12
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps(SCHEMA))
    common = ["--model", "tiny-gpt2", "--max-new-tokens", "30"]

    # One OpenAI file (one run) of both kinds: chat with a JSON schema, logprobs and
    # penalties; completions with labels (vLLM's guided_choice) and logprobs as a count.
    chat = [
        openai_line(
            i,
            "/v1/chat/completions",
            response_format={"type": "json_schema", "json_schema": {"schema": SCHEMA}},
            logprobs=True,
            top_logprobs=3,
            presence_penalty=0.5,
            frequency_penalty=0.25,
            max_tokens=30,
        )
        for i in range(n)
    ]
    text = [
        openai_line(i, "/v1/completions", guided_choice=LABELS, logprobs=2, max_tokens=30)
        for i in range(n)
    ]
    for line in text:
        line["custom_id"] = "t" + line["custom_id"]
    openai_src = write_jsonl(tmp_path / "openai.jsonl", chat + text)
    openai_out = tmp_path / "openai.out.jsonl"
    run(
        openai_src,
        openai_out,
        tmp_path / "s1",
        "--model",
        "tiny-gpt2",
        "--results-format",
        "openai",
        workers=1,
    )
    plain_src = write_jsonl(
        tmp_path / "plain.jsonl", [{"prompt": f"Review {i}: so so"} for i in range(n)]
    )
    flags_out = tmp_path / "flags.out.jsonl"
    run(
        plain_src,
        flags_out,
        tmp_path / "s2",
        *common,
        "--chat",
        "--json-schema",
        str(schema_file),
        "--logprobs",
        "--top-logprobs",
        "3",
        "--presence-penalty",
        "0.5",
        "--frequency-penalty",
        "0.25",
        workers=1,
    )
    openai_lines = [json.loads(x) for x in openai_out.read_text().splitlines()]
    assert [o["custom_id"] for o in openai_lines] == [ln["custom_id"] for ln in chat + text]
    flag_lines = [json.loads(x) for x in flags_out.read_text().splitlines()]
    for o, f in zip(openai_lines[:n], flag_lines, strict=True):
        validate_line(f)
        choice = o["response"]["body"]["choices"][0]
        assert choice["message"]["content"] == f["output"]
        assert choice["finish_reason"] == f["finish_reason"]
        assert choice["logprobs"]["content"] == f["logprobs"]["content"]
        assert len(f["logprobs"]["content"][0]["top_logprobs"]) == 3
        if not f.get("incomplete"):
            jsonschema.validate(json.loads(f["output"]), SCHEMA)
            assert f["parsed"] == json.loads(choice["message"]["content"])

    flags2_out = tmp_path / "flags2.out.jsonl"
    run(
        plain_src,
        flags2_out,
        tmp_path / "s4",
        *common,
        *[a for label in LABELS for a in ("--choice", label)],
        "--logprobs",
        "--top-logprobs",
        "2",
        workers=1,
    )
    text_lines = openai_lines[n:]
    flag_lines = [json.loads(x) for x in flags2_out.read_text().splitlines()]
    for o, f in zip(text_lines, flag_lines, strict=True):
        choice = o["response"]["body"]["choices"][0]
        assert choice["text"] == f["output"] and f["output"] in LABELS
        legacy = choice["logprobs"]
        assert legacy["tokens"] == [e["token"] for e in f["logprobs"]["content"]]
        assert legacy["token_logprobs"] == [e["logprob"] for e in f["logprobs"]["content"]]
        assert [len(t) for t in legacy["top_logprobs"]] == [2] * len(legacy["tokens"])
