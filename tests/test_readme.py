"""The README's library example runs as written and classifies its toy data."""

from __future__ import annotations

import pathlib
import re

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_library_example_runs(capsys):
    section = README.read_text().split("## Library example", 1)[1]
    example = re.findall(r"```python\n(.*?)```", section, flags=re.S)[0]
    exec(compile(example, "README.md", "exec"), {})
    accuracy = float(re.search(r"accuracy ([0-9.]+)", capsys.readouterr().out).group(1))
    assert accuracy > 0.95
