"""The README's headline tables are the numbers of the reports they name."""

from pathlib import Path

from infini_llama.study.headline import BLOCK, render

ROOT = Path(__file__).resolve().parents[2]


def test_readme_headline_tables_match_their_reports():
    readme = (ROOT / "README.md").read_text()
    blocks = list(BLOCK.finditer(readme))
    assert blocks, "the README has at least one headline table"
    assert render(readme, ROOT) == readme, (
        "a README headline table differs from its report's results.json: run "
        "`python -m infini_llama.study.headline README.md` and commit"
    )


def test_a_changed_number_is_caught():
    readme = (ROOT / "README.md").read_text()
    block = next(BLOCK.finditer(readme))
    changed = readme.replace(block["table"], block["table"].replace("| 0 |", "| 1 |", 1), 1)
    assert changed != readme and render(changed, ROOT) == readme
