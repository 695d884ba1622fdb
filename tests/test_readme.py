"""The README's Python API example runs as written (model and video swapped for offline ones), and its
first answer already has evidence: it waits for something to be ingested before asking (issue 10, item 12)."""
from __future__ import annotations

import re

from conftest import REPO

SAMPLE = str(REPO / "data" / "sample.mp4")


def _api_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_api_example_answers_with_evidence(tmp_path, monkeypatch, capsys):
    code = _api_example()
    assert 'agent.watch("lecture.mp4")' in code and "Qwen/Qwen2.5-VL-3B-Instruct" in code
    code = code.replace("Qwen/Qwen2.5-VL-3B-Instruct", "tiny-smolvlm").replace('"lecture.mp4"', repr(SAMPLE))
    monkeypatch.chdir(tmp_path)  # session.save("lecture.vmem") writes here
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    ans = scope["ans"]
    assert ans.evidence, "the first answer was asked before anything was ingested"
    assert ans.asked_at_s > 0
    assert (tmp_path / "lecture.vmem" / "config.json").is_file()
