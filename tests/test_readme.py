"""The README is the front door: short, its Python snippet runs, its commands are the ones CI runs, and every
relative link in it and in docs/ points to a file that exists."""

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]


def code_block(text: str, after_heading: str, language: str) -> str:
    section = text.split(f"## {after_heading}\n", 1)[1]
    return section.split(f"```{language}\n", 1)[1].split("```", 1)[0]


def test_the_readme_is_short():
    assert len(README.read_text().splitlines()) <= 150


def test_the_readme_python_snippet_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code_block(README.read_text(), "Python API", "python"), "README.md", "exec"), {})
    assert (tmp_path / "tiny-infini" / "config.json").is_file()


def test_the_readme_install_and_test_commands_are_the_ones_ci_runs():
    text = README.read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    install = [line.split("#")[0].strip() for line in code_block(text, "Install", "bash").splitlines()]
    for command in filter(None, install):
        words = shlex.split(command)
        assert words[:2] == ["pip", "install"], command
        assert f"python -m pip install --quiet {shlex.join(words[2:])}".replace("'", '"') in ci, command
    assert code_block(text, "Tests", "bash").strip() in ci


def test_the_headline_markers_are_there():
    text = README.read_text()
    assert text.count("<!-- headline: reports/tiny-cpu -->") == 1
    assert text.count("<!-- headline: reports/mini -->") == 1
    assert text.count("<!-- headline: reports/paper-h200 from=0.5 per-seed -->") == 1
    assert text.count("<!-- headline: benchmarks/results/gpu_h200.json -->") == 1
    assert text.count("<!-- /headline -->") == 4


def test_every_relative_link_resolves():
    missing = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" in target:
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(ROOT)}: {target}")
    assert not missing, missing
