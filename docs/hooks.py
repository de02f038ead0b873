"""mkdocs hooks: the benchmark plots that docs/benchmarks.md shows live in benchmarks/results/,
outside the docs folder; they are added to the site as results/<name>.png."""

from pathlib import Path

from mkdocs.structure.files import File

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
LINK = "](../benchmarks/results/"


def on_files(files, config):
    for image in sorted(RESULTS.glob("*.png")):
        files.append(File.generated(config, f"results/{image.name}", abs_src_path=str(image)))
    return files


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(LINK, "](results/")
