"""The README's headline tables are the numbers of the reports they name."""

import json
from pathlib import Path

import pytest

from infini_llama.study.headline import BLOCK, main, render

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


def test_a_headline_can_start_below_the_training_length():
    # As the 302M study's, whose 1x is its pretraining length (8,192 tokens) and whose fine-tuning length is 0.5x.
    source = "reports/mini"
    results = json.loads((ROOT / source / "results.json").read_text())
    block = f"<!-- headline: {source} from=0.5 -->\n| stale |\n<!-- /headline -->\n"
    made = render(block, ROOT)
    header = [c.strip() for c in made.splitlines()[1].strip("|").split("|")]
    assert header == ["arm", "0.5×", "1×", "2×", "4×", "8×", "16×"]
    infini = next(row for row in results["rows"] if row["label"] == "infini")
    half = next(x for x in infini["haystacks"]["repeat"] if x["multiple"] == 0.5)
    assert made.splitlines()[3].startswith(f"| Infini | {100 * half['exact']['mean']:.0f} |")
    assert render(block.replace(" from=0.5", ""), ROOT).splitlines()[1].count("×") == 5, "from the training length"


def test_the_command_rewrites_a_file_and_refuses_a_missing_one(tmp_path, capsys):
    # Sources are read relative to the file's folder, as the README's are to the repository root.
    (tmp_path / "reports").symlink_to(ROOT / "reports", target_is_directory=True)
    page = tmp_path / "page.md"
    page.write_text("before\n<!-- headline: reports/mini -->\n| stale |\n<!-- /headline -->\nafter\n")
    assert main([str(page)]) == 0
    made = page.read_text()
    assert "| stale |" not in made and made.startswith("before\n") and made.endswith("after\n")
    assert render(made, tmp_path) == made
    with pytest.raises(SystemExit) as stop:
        main([str(tmp_path / "missing.md")])
    assert stop.value.code == 2 and "no such file" in capsys.readouterr().err


def test_a_headline_can_show_each_seed():
    # The 302M study's seeds disagree (one baseline never learned the task), so its headline shows both, not a mean.
    source = "reports/paper-h200"
    results = json.loads((ROOT / source / "results.json").read_text())
    block = f"<!-- headline: {source} from=0.5 per-seed -->\n| stale |\n<!-- /headline -->\n"
    lines = render(block, ROOT).splitlines()
    seeds = [str(seed) for seed in results["seeds"]]
    assert len(seeds) >= 2 and lines[1].startswith(f"| arm: seed {' / '.join(seeds)} | 0.5× |")
    full = next(row for row in results["rows"] if row["label"] == "full")
    half = next(x for x in full["haystacks"]["repeat"] if x["multiple"] == 0.5)["exact"]["per_seed"]
    expected = " / ".join(f"{100 * half[seed]:.0f}" for seed in seeds)
    assert lines[4].startswith(f"| full attention | {expected} |")
    assert render(block.replace(" per-seed", ""), ROOT).splitlines()[1].startswith("| arm | 0.5× |")
