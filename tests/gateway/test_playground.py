"""The playground's first impression (issue 32: it opened with a German question at
temperature 1 on an English 135M model, and newcomers saw gibberish)."""

from __future__ import annotations

import re
from importlib.resources import files


def test_the_playground_opens_with_an_english_question_the_default_model_answers_at_a_low_temperature() -> None:
    page = (files("allmende.gateway") / "static" / "index.html").read_text()
    question = re.search(r'<textarea id="chat-input"[^>]*>([^<]*)</textarea>', page)
    temperature = re.search(r'<input id="chat-temperature"[^>]*value="([^"]+)"', page)
    assert question and temperature
    # tests/engine/test_smollm2.py: SmolLM2 answers exactly this with "Paris" and ends by itself
    assert question.group(1) == "What is the capital of France?"
    assert float(temperature.group(1)) <= 0.7
    script = (files("allmende.gateway") / "static" / "app.js").read_text()
    assert "value || 0.2)" in script  # an emptied field falls back to the same low temperature
