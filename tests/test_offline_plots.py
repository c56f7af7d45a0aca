"""`dvc plots show` / `dvc plots diff` pages draw their charts offline.

DVC's own page loads vega from a CDN and stays blank without a network. The repository's template
(plots/templates/offline.html, set in .dvc/config) loads vega, vega-lite and vega-embed from
node_modules instead. These tests render the committed plots with plain DVC commands and open the
page in headless Chromium with every host name unresolvable, so nothing can come from a network.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from dvc_render.html import PAGE_HTML as DVC_DEFAULT_PAGE

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
LOSS_PLOT_ID = "dvclive_train_plots_metrics_train_loss_tsv"
MISSING_SCRIPTS_NOTE_ID = "offline-plots-error"
COMMAND_TIMEOUT_S = 120
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # No host name resolves: a page that needs a CDN cannot get it, even where CI has a network.
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", "--dump-dom",
)


def run_checked(command: list[str], what: str) -> subprocess.CompletedProcess:
    """Run a command in the repository; fail the test with its output if it fails."""
    result = subprocess.run(command, cwd=REPO, check=False, capture_output=True, text=True,
                            timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0:
        pytest.fail(f"{what} failed ({' '.join(command)}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="module")
def node_modules() -> Path:
    """The npm packages the template loads, installed by `make npm-install` (npm ci) if needed."""
    for tool in ("npm", "make"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: install Debian package {tool} (.ci/run does it)")
    run_checked(["make", "--no-print-directory", "npm-install"], "installing the npm packages")
    return REPO / "node_modules"


def render_page(node_modules: Path, site: Path, dvc_args: list[str]) -> Path:
    """Write a DVC plots page to site/dvc_plots/, laid out like the default one at the root.

    The template's script paths are relative to the page (../node_modules), so the temporary
    site gets node_modules beside its dvc_plots/ folder, as the repository root has it.
    """
    site.mkdir()
    (site / "node_modules").symlink_to(node_modules, target_is_directory=True)
    out_dir = site / "dvc_plots"
    run_checked([sys.executable, "-m", "dvc", "plots", *dvc_args, "-o", str(out_dir)],
                f"dvc plots {dvc_args[0]}")
    return out_dir / "index.html"


def vega_specs(page_source: str) -> dict[str, dict]:
    """Container id -> the vega-lite spec DVC embedded for it."""
    specs = {
        container_id: json.loads(spec)
        for spec, container_id in re.findall(
            r"var spec = (.*);\s*vegaEmbed\('#([^']+)'", page_source)
    }
    assert specs, "the page embeds no vega plot"
    return specs


def script_sources(page_source: str) -> list[str]:
    """The src of every script tag: what the page loads besides its inline code."""
    return re.findall(r"<script\b[^>]*\bsrc\s*=\s*[\"']([^\"']*)", page_source)


class PlotContainers(HTMLParser):
    """For each container id: the vega marks elements (canvas or svg) and the text inside it."""

    def __init__(self, container_ids):
        super().__init__()
        self.marks = {container_id: [] for container_id in container_ids}
        self.text = {container_id: [] for container_id in container_ids}
        self.current: str | None = None
        self.div_depth = 0
        self.in_code = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        if tag in ("script", "style"):
            self.in_code = True
        if self.current is None:
            if tag == "div" and attributes.get("id") in self.marks:
                self.current, self.div_depth = attributes["id"], 1
            return
        if tag == "div":
            self.div_depth += 1
        if tag in ("canvas", "svg") and "marks" in (attributes.get("class") or "").split():
            self.marks[self.current].append(attributes)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.in_code = False
        if self.current is not None and tag == "div":
            self.div_depth -= 1
            if self.div_depth == 0:
                self.current = None

    def handle_data(self, data):
        if self.current is not None and not self.in_code:
            self.text[self.current].append(data)


@pytest.fixture(scope="module")
def chromium() -> Path:
    """The headless browser that proves the page draws; missing means a broken setup, not a skip."""
    if not CHROMIUM.is_file():
        pytest.fail(f"{CHROMIUM} not found: install Debian package chromium (.ci/run does it)")
    return CHROMIUM


def browse(chromium: Path, page: Path, profile: Path) -> tuple[PlotContainers, str, list[str]]:
    """Open the page in headless Chromium: its vega containers, its DOM and its console errors."""
    result = subprocess.run(
        [str(chromium), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", page.as_uri()],
        check=False, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    if result.returncode != 0 or "</html>" not in result.stdout:
        pytest.fail(f"chromium could not load {page} (exit {result.returncode}):\n{result.stderr}")
    console_errors = [line for line in result.stderr.splitlines()
                      if ":CONSOLE" in line and "Uncaught" in line]
    containers = PlotContainers(vega_specs(page.read_text(encoding="utf8")))
    containers.feed(result.stdout)
    return containers, result.stdout, console_errors


def drawn(marks: list[dict]) -> bool:
    """Whether vega laid out a chart there: a marks canvas/svg with a positive size."""
    return any(float(element.get("width") or 0) > 0 and float(element.get("height") or 0) > 0
               for element in marks)


@pytest.mark.parametrize("dvc_args", [["show"], ["diff", "HEAD"]], ids=["show", "diff"])
def test_page_draws_every_vega_plot_without_a_network(node_modules, chromium, tmp_path, dvc_args):
    page = render_page(node_modules, tmp_path / "site", dvc_args)
    source = page.read_text(encoding="utf8")

    sources = script_sources(source)
    remote = [src for src in sources if re.match(r"(https?:)?//", src)]
    assert not remote, f"{page} still loads scripts from the network: {remote}"
    assert "cdn.jsdelivr.net" not in source
    assert {Path(src).name for src in sources} == {
        "vega.min.js", "vega-lite.min.js", "vega-embed.min.js"}
    for src in sources:
        assert (page.parent / src).is_file(), f"{src} (from {page}) is not installed"

    specs = vega_specs(source)
    with_data = sorted(cid for cid, spec in specs.items() if spec.get("data"))
    assert LOSS_PLOT_ID in with_data
    containers, dom, console_errors = browse(chromium, page, tmp_path / "chromium-profile")
    assert not console_errors, "\n".join(console_errors)
    assert f'<p id="{MISSING_SCRIPTS_NOTE_ID}">' not in dom
    blank = [cid for cid in with_data if not drawn(containers.marks[cid])]
    assert not blank, f"vega drew nothing in {blank}"
    for cid in specs:
        text = " ".join(containers.text[cid])
        assert "error" not in text.lower(), f"{cid}: {text}"


def test_dvc_default_page_stays_blank_without_a_network(node_modules, chromium, tmp_path):
    """The bug this template fixes, and proof that the drawn-chart check can fail."""
    cdn_template = tmp_path / "dvc-default.html"
    cdn_template.write_text(DVC_DEFAULT_PAGE, encoding="utf8")
    page = render_page(node_modules, tmp_path / "site",
                       ["show", "--html-template", str(cdn_template)])
    assert any("cdn.jsdelivr.net" in src for src in script_sources(page.read_text(encoding="utf8")))

    containers, _, console_errors = browse(chromium, page, tmp_path / "chromium-profile")
    assert not drawn(containers.marks[LOSS_PLOT_ID])
    assert any("vegaEmbed is not defined" in line for line in console_errors)


def test_page_without_node_modules_says_how_to_install_them(node_modules, chromium, tmp_path):
    page = render_page(node_modules, tmp_path / "site", ["show"])
    moved_out_dir = tmp_path / "elsewhere" / "dvc_plots"
    shutil.copytree(page.parent, moved_out_dir)

    containers, dom, _ = browse(chromium, moved_out_dir / "index.html",
                                tmp_path / "chromium-profile")
    assert not drawn(containers.marks[LOSS_PLOT_ID])
    note = re.search(rf'<p id="{MISSING_SCRIPTS_NOTE_ID}">([^<]*)</p>', dom)
    assert note and "make plots" in note.group(1), dom[:2000]
