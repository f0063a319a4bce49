"""The report's figures: PNGs of 256 colours at the figure's size, each kind of plot."""

from PIL import Image

from infini_llama.eval import plots


def test_figures_are_palette_pngs_at_the_figures_size(tmp_path):
    plots.heatmap(
        [[100.0, 50.0], [0.0, None]], ["a", "b"], ["1", "2"], tmp_path / "heat.png", title="t", xlabel="x", ylabel="y"
    )
    plots.lines({"x": ([1, 2, 4], [10.0, 50.0, 90.0])}, tmp_path / "lines.png", title="t", xlabel="x", ylabel="y")
    plots.histogram([0.1, 0.5, 0.9], tmp_path / "hist.png", title="t", xlabel="g")
    for name, size in (("heat.png", (480, 360)), ("lines.png", (768, 480)), ("hist.png", (600, 420))):
        with Image.open(tmp_path / name) as image:
            assert image.format == "PNG" and image.mode == "P", name
            assert image.size == size, (name, image.size)
            # The plot is drawn, not blank: many of the palette's colours are used.
            assert len(image.getcolors(256) or []) > 8, name
