"""Every citation in the code names a file of this repository (docs/...), and the cited files exist."""

import os
import re
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tracked(*patterns):
    out = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    return [p for p in out.stdout.split() if not p.startswith("docs/")]


def test_citations_stay_inside_the_repository():
    outside = re.compile(r"(?<![\w/])(spec|perf|design)/[\w-]+\.md|\.\./shared/")
    cited = re.compile(r"docs/([\w-]+\.md)")
    bad, missing = [], set()
    for path in tracked("*.py", "*.sh", "*.sbatch", "*.md", "Makefile"):
        text = open(os.path.join(ROOT, path), errors="replace").read()
        bad += [f"{path}: {m.group(0)}" for m in outside.finditer(text)]
        missing |= {m for m in cited.findall(text) if not os.path.isfile(os.path.join(ROOT, "docs", m))}
    assert not bad, bad
    assert not missing, missing


def test_cited_repository_files_exist():
    """Paths of this repository named in the code, README and scripts (cosmos_jax/weights/dit.py, ...) exist: a
    moved module leaves no stale citation. docs/ quotes upstream's repositories, so its own text is not checked."""
    cited = re.compile(r"(?<![\w/.-])((?:cosmos_jax|converters|scripts|tests|configs|bench)/[\w/-]*\w"
                       r"\.(?:py|md|sh|sbatch|json))(?![\w/])")
    missing = [f"{path}: {m}" for path in tracked("*.py", "*.sh", "*.sbatch", "*.md", "Makefile")
               for m in cited.findall(open(os.path.join(ROOT, path), errors="replace").read())
               if not os.path.exists(os.path.join(ROOT, m))]
    assert not missing, missing
