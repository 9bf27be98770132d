"""The README's Python example runs as written."""

import re

from tests.conftest import REPO


def test_readme_example_runs():
    text = (REPO / "README.md").read_text()
    code = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert code, "README has no python example"
    scope: dict = {}
    exec(compile(code[0], "README.md", "exec"), scope)
    assert scope["out"]["fused"].shape == (2, 48, 8, 8)
