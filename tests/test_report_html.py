"""report.html: rendered by a real browser (headless Chromium), self-contained, escaped, and in
agreement with report.json and the markdown report."""

from __future__ import annotations

import re
import shutil
import subprocess
import uuid
from html.parser import HTMLParser
from pathlib import Path

from PIL import Image

from influence_core.report_html import render_html
from influence_core.reports import top_tokens

REPORT = Path("reports/prompt_scores")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class ReportPage(HTMLParser):
    """What the page shows, read back from its HTML: per prompt section the prompt, the completion
    and the listed examples (index, score) under each heading; the self-influence list; the
    highlighted tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.prompts: list[dict] = []
        self.self_influence: list[tuple[int, float]] = []
        self.highlighted: list[tuple[str, float]] = []  # (class, score) of tokens with a background
        self._list: list | None = None
        self._capture: str | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        classes = (attributes.get("class") or "").split()
        if tag == "section" and "prompt" in classes:
            self.prompts.append({"prompt": "", "completion": "", "top_positive": [], "top_negative": []})
        elif tag == "section" and attributes.get("id") == "self-influence":
            self._list = self.self_influence
        elif tag == "div" and ("positive" in classes or "negative" in classes):
            self._list = self.prompts[-1]["top_positive" if "positive" in classes else "top_negative"]
        elif tag == "span" and ("prompt-text" in classes or "completion" in classes) and self.prompts:
            self._capture = "prompt" if "prompt-text" in classes else "completion"
        elif tag == "li" and "example" in classes:
            self._list.append((int(attributes["data-index"]), float(attributes["data-score"])))
        elif tag == "span" and "tok" in classes and "background-color" in (attributes.get("style") or ""):
            self.highlighted.append((classes[1], float(attributes["data-score"])))

    def handle_endtag(self, tag: str) -> None:
        if tag == "span":
            self._capture = None

    def handle_data(self, data: str) -> None:
        if self._capture:
            self.prompts[-1][self._capture] += data


def read_page(html: str) -> ReportPage:
    page = ReportPage()
    page.feed(html)
    return page


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    binary = shutil.which("chromium")
    assert binary, "chromium is not installed: make test installs it (make test-chromium)"
    profile = tmp_path / f"chromium-profile-{uuid.uuid4().hex[:8]}"
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180)


def test_report_html_renders_in_headless_chromium(demo_run, demo_report, tmp_path):
    page_url = (demo_run / REPORT / "report.html").resolve().as_uri()
    dom = chromium(tmp_path, "--dump-dom", page_url)
    assert dom.returncode == 0 and "<main>" in dom.stdout, dom.stderr[-2000:]
    shown = read_page(dom.stdout)
    assert [(p["prompt"], p["completion"]) for p in shown.prompts] == [
        (entry["prompt"], entry["completion"]) for entry in demo_report["prompts"]]
    assert any(kind == "pos" for kind, _ in shown.highlighted) and any(kind == "neg" for kind, _ in shown.highlighted)

    screenshot = tmp_path / "report.png"
    shot = chromium(tmp_path, f"--screenshot={screenshot}", "--window-size=1280,4000", page_url)
    assert shot.returncode == 0 and screenshot.exists(), shot.stderr[-2000:]
    image = Image.open(screenshot).convert("RGB")
    assert image.size == (1280, 4000)
    # The highlights are on screen: pixels of the green and red token backgrounds.
    pixels = list(image.resize((640, 2000)).getdata())
    green = sum(g > r + 40 and g > b + 20 for r, g, b in pixels)
    red = sum(r > g + 60 and r > b + 60 for r, g, b in pixels)
    assert green > 100 and red > 100, (green, red)
    print(f"screenshot: {screenshot}")


def test_html_agrees_with_report_json(demo_run, demo_report):
    page = read_page((demo_run / REPORT / "report.html").read_text(encoding="utf-8"))
    assert len(page.prompts) == len(demo_report["prompts"])
    for shown, entry in zip(page.prompts, demo_report["prompts"]):
        assert (shown["prompt"], shown["completion"]) == (entry["prompt"], entry["completion"])
        for key in ("top_positive", "top_negative"):
            assert shown[key] == [(item["index"], item["score"]) for item in entry[key]]
    assert page.self_influence == [(item["index"], item["score"]) for item in demo_report["self_influence"]["top"]]
    shown_tokens = sorted(score for _, score in page.highlighted)
    all_tokens = sorted(score for entry in demo_report["prompts"] for item in entry["top_positive"] +
                        entry["top_negative"] for score in item["token_scores"])
    assert set(shown_tokens) <= set(all_tokens) and len(shown_tokens) > 0


def test_markdown_agrees_with_report_json(demo_run, demo_report):
    markdown = (demo_run / REPORT / "prompt_scores_report.md").read_text()
    for number, entry in enumerate(demo_report["prompts"], start=1):
        assert f"## {number}. {entry['prompt']} → {entry['completion'].strip()}" in markdown
        assert f"](score_distribution_{number:02d}.png)" in markdown
        for item in entry["top_positive"] + entry["top_negative"]:
            line = f"- **#{item['index']}** score {item['score']:.4g}: "
            assert line in markdown
            tokens = top_tokens(item)
            assert tokens and f"`{tokens[0][0].strip() or repr(tokens[0][0])}` {tokens[0][1]:+.3g}" in markdown
    positions = [markdown.index(f"- **#{item['index']}** self-influence {item['score']:.4g}: ")
                 for item in demo_report["self_influence"]["top"]]
    assert positions == sorted(positions) and len(positions) == 10


def test_html_is_self_contained(demo_run, demo_report):
    html = (demo_run / REPORT / "report.html").read_text(encoding="utf-8")
    assert "<script" not in html.lower() and "<link" not in html.lower() and "@import" not in html
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", html), "a resource outside the page"
    images = re.findall(r'<img [^>]*src="data:image/png;base64,', html)
    assert len(images) == len(demo_report["prompts"])


def test_everything_is_escaped():
    evil = "<script>alert('x')</script> & <marquee>"
    item = {"index": 3, "score": 2.5, "text": evil, "tokens": ["<img src=x>", " & ", "ok"],
            "token_scores": [2.0, 0.5, 0.0]}
    report = {"scores_name": "s<1>", "factors_name": "f&", "strategy": "ekfac",
              "prompts": [{"prompt": evil, "completion": "</span>", "top_positive": [item], "top_negative": []}],
              "self_influence": {"factors_name": "f&", "num_examples": 9,
                                 "top": [{"index": 3, "score": 7.0, "text": evil}]}}
    html = render_html(report, {}, excerpt_chars=100)
    assert "<script>" not in html and "<img src=x>" not in html and "<marquee>" not in html
    assert "&lt;script&gt;" in html and "&lt;img src=x&gt;" in html
    page = read_page(html)
    assert page.prompts[0]["prompt"] == evil and page.prompts[0]["completion"] == "</span>"
    assert page.prompts[0]["top_positive"] == [(3, 2.5)] and page.self_influence == [(3, 7.0)]
    # The strongest token is the most opaque; a zero score gets no background.
    assert [score for _, score in page.highlighted] == [2.0, 0.5]
    assert html.count("&lt;script&gt;") == 3  # prompt, table of contents, self-influence excerpt
