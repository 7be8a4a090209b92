"""The contract scheduler and workers share: queue names and a model's context length."""

from __future__ import annotations

from genqueue.protocol import context_length, queue_for


def test_context_length_reads_the_first_key_a_config_declares() -> None:
    assert context_length({"n_positions": 1024}) == 1024  # GPT-2
    assert context_length({"max_position_embeddings": 4096, "n_positions": 1024}) == 4096
    assert context_length({"seq_length": 2048}) == 2048
    assert context_length({"d_model": 512}) is None  # T5: no fixed limit
    assert context_length({"max_position_embeddings": True, "n_positions": 0}) is None


def test_a_model_and_revision_have_one_queue() -> None:
    a = queue_for("/models/llama", None)
    assert a == queue_for("/models/llama") and a.startswith("genqueue.llama.")
    assert queue_for("/models/llama", "v2") != a
    assert queue_for("org/llama") != a  # same name, another model
