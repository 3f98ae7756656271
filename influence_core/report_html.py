"""report.html: the report as one self-contained page (inline CSS, images as data URIs, no scripts),
built from report.json so the two always agree. Every piece of text is HTML-escaped."""

from __future__ import annotations

import base64
from html import escape

from influence_core.artifacts import Report
from influence_core.reports import (
    NEAR_CERTAIN_NOTE,
    READING_SCORES,
    RECALL_AT,
    SELF_INFLUENCE_NOTE,
    evidence_line,
    lds_summary,
)

MAX_ALPHA = 0.85  # the strongest token's background; text stays readable on it
POSITIVE_RGB, NEGATIVE_RGB = (22, 163, 74), (220, 38, 38)

STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2328; margin: 0;
       background: #f6f8fa; }
main { max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { margin: 0 0 4px; font-size: 26px; }
h2 { font-size: 19px; margin: 0 0 8px; }
h3 { font-size: 15px; margin: 16px 0 6px; }
.meta { color: #57606a; margin-bottom: 16px; }
.note { background: #fff8c5; border: 1px solid #d4a72c66; border-radius: 6px; padding: 4px 14px; margin: 12px 0; }
.note ul { padding-left: 18px; }
.legend span { padding: 1px 6px; border-radius: 3px; }
nav ol { columns: 2; margin: 0; }
section { background: #fff; border: 1px solid #d0d7de; border-radius: 8px; padding: 16px 20px; margin: 18px 0; }
.completion { color: #0550ae; }
.recall, .probability { color: #57606a; }
.warning { background: #fff1e5; border: 1px solid #d1242f66; border-radius: 6px; padding: 6px 12px; }
img.distribution { max-width: 100%; height: auto; display: block; margin: 8px 0; }
ol.examples { padding-left: 0; list-style: none; margin: 0; }
li.example { border-top: 1px solid #eaeef2; padding: 8px 0; }
.example-head { font-size: 13px; color: #57606a; margin-bottom: 4px; }
.example-head b { color: #1f2328; }
.tokens, .text { font: 13px/1.6 ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; white-space: pre-wrap;
                 word-break: break-word; background: #f6f8fa; border-radius: 4px; padding: 6px 8px; }
.tok { border-radius: 2px; }
.none { color: #57606a; font-style: italic; }
footer { color: #57606a; font-size: 12px; margin: 24px 0; }
"""


def _score(value: float) -> str:
    return f"{value:.4g}"


def _token_spans(tokens: list[str], scores: list[float]) -> str:
    """Each token on a green (positive) or red (negative) background, opacity in proportion to its
    share of the example's largest absolute token score; the exact score is the tooltip."""
    largest = max((abs(score) for score in scores), default=0.0) or 1.0
    spans = []
    for piece, score in zip(tokens, scores):
        alpha = MAX_ALPHA * abs(score) / largest
        kind, rgb = ("pos", POSITIVE_RGB) if score >= 0 else ("neg", NEGATIVE_RGB)
        style = f' style="background-color: rgba({rgb[0]}, {rgb[1]}, {rgb[2]}, {alpha:.3f})"' if alpha >= 0.01 else ""
        spans.append(f'<span class="tok {kind}" data-score="{score!r}" title="{score:+.4g}"{style}>'
                     f"{escape(piece)}</span>")
    return "".join(spans)


def _example(item: dict, label: str, excerpt_chars: int, fused: bool = False) -> str:
    head = f"<b>#{item['index']}</b> · {label} <b>{_score(item['score'])}</b>"
    if fused:  # the ranking's score is not the influence: show that too
        head += f" · influence {_score(item['influence'])}"
    if "exact" in item:  # scores a query made from the gradient index
        head += " · exact" if item["exact"] else " · index estimate"
    if "token_scores" in item:
        total = _score(sum(item["token_scores"]))
        head += f" · {len(item['tokens'])} tokens, their scores summing to the influence, {total}"
        body = f'<div class="tokens">{_token_spans(item["tokens"], item["token_scores"])}</div>'
    else:
        text = item["text"] if len(item["text"]) <= excerpt_chars else item["text"][: excerpt_chars - 1] + "…"
        body = f'<div class="text">{escape(text)}</div>'
    return (f'<li class="example" data-index="{item["index"]}" data-score="{item["score"]!r}">'
            f'<div class="example-head">{head}</div>{body}</li>')


def _examples(items: list[dict], label: str, excerpt_chars: int, fused: bool = False) -> str:
    if not items:
        return '<p class="none">(none)</p>'
    return '<ol class="examples">' + "".join(_example(item, label, excerpt_chars, fused) for item in items) + "</ol>"


def _image(png: bytes | None, alt: str) -> str:
    if png is None:
        return ""
    data = base64.b64encode(png).decode("ascii")
    return f'<img class="distribution" alt="{escape(alt)}" src="data:image/png;base64,{data}">'


def _prompt_section(number: int, entry: dict, images: dict[str, bytes], excerpt_chars: int, fused: bool) -> str:
    parts = [f'<section class="prompt" id="prompt-{number}">',
             f'<h2>{number}. <span class="prompt-text">{escape(entry["prompt"])}</span> → '
             f'<span class="completion">{escape(entry["completion"])}</span></h2>']
    if "probability" in entry:
        lds = f' LDS of this prompt: {entry["lds"]:+.2f}.' if "lds" in entry else ""
        parts.append(f'<p class="probability">The model\'s probability of the completion: '
                     f'<b>{entry["probability"]:.3f}</b>.{lds}</p>')
        if entry["near_certain"]:
            parts.append(f'<p class="warning"><b>Near-certain completion.</b> '
                         f'{escape(NEAR_CERTAIN_NOTE.format(**entry))}</p>')
    if "evidence_overlap" in entry:
        css = "warning" if entry["evidence_overlap"] == 0 else "probability"
        parts.append(f'<p class="{css}">{escape(evidence_line(entry))}</p>')
    if f"recall_at_{RECALL_AT}" in entry:
        parts.append(f'<p class="recall">Recall@{RECALL_AT} {entry[f"recall_at_{RECALL_AT}"]:.2f}: planted documents '
                     f'{escape(str(entry["planted_documents"]))} rank {escape(str(entry["planted_ranks"]))}.</p>')
    parts.append(_image(images.get(Report.distribution_plot(number)), f"Score distribution of prompt {number}"))
    for title, key, css in (("Top positive (helpful)", "top_positive", "positive"),
                            ("Top negative (harmful)", "top_negative", "negative")):
        parts.append(f'<div class="{css}"><h3>{title}</h3>{_examples(entry[key], "score", excerpt_chars, fused)}'
                     "</div>")
    parts.append("</section>")
    return "".join(parts)


def _self_influence_section(self_influence: dict, excerpt_chars: int) -> str:
    return (f'<section id="self-influence"><h2>Most self-influential training examples</h2>'
            f'<p>{escape(SELF_INFLUENCE_NOTE)} Top {len(self_influence["top"])} of '
            f'{self_influence["num_examples"]} (factors <code>{escape(self_influence["factors_name"])}</code>).</p>'
            f'{_examples(self_influence["top"], "self-influence", excerpt_chars)}</section>')


def render_html(report: dict, images: dict[str, bytes], excerpt_chars: int) -> str:
    """The page for report.json `report`; `images` maps plot file names to PNG bytes."""
    title = f"Influence report: {report['scores_name']}"
    meta = f"Factors <code>{escape(report['factors_name'])}</code> (strategy {escape(str(report['strategy']))})"
    if f"fact_recall_at_{RECALL_AT}" in report:
        meta += f" · planted-fact recall@{RECALL_AT} <b>{report[f'fact_recall_at_{RECALL_AT}']:.3f}</b>"
    if "ranking" in report:
        meta += f"<p>Ranking: {escape(report['ranking'])}.</p>"
    if "lds" in report:
        meta += f'<p class="lds">{escape(lds_summary(report["lds"]))}</p>'
    if "suggestion" in report:
        meta += f'<p class="suggestion">Tip: {escape(report["suggestion"])}</p>'

    reading = "".join(f"<li><b>{escape(topic)}</b>: {escape(text)}</li>" for topic, text in READING_SCORES)
    legend = (f'<p class="legend">Token colours: <span style="background: rgba{(*POSITIVE_RGB, 0.6)}">helps the '
              f'completion</span> <span style="background: rgba{(*NEGATIVE_RGB, 0.6)}">works against it</span>; '
              "the stronger the colour, the larger the token's share of the example's largest token score "
              "(hover a token for its score).</p>")
    contents = "".join(f'<li><a href="#prompt-{number}">{escape(entry["prompt"])} → '
                       f'{escape(entry["completion"])}</a></li>'
                       for number, entry in enumerate(report["prompts"], start=1))
    if "self_influence" in report:
        contents += '<li><a href="#self-influence">Most self-influential training examples</a></li>'
    body = [f"<h1>{escape(title)}</h1>", f'<div class="meta">{meta}</div>',
            f'<div class="note"><ul>{reading}</ul>{legend}</div>',
            f"<nav><ol>{contents}</ol></nav>"]
    body += [_prompt_section(number, entry, images, excerpt_chars, report.get("fused", False))
             for number, entry in enumerate(report["prompts"], start=1)]
    if "self_influence" in report:
        body.append(_self_influence_section(report["self_influence"], excerpt_chars))
    body.append("<footer>Generated by inspect_scores from report.json. Scores: Kronfluence pairwise influence; "
                "per-token scores computed for the examples shown only.</footer>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{escape(title)}</title><style>{STYLE}</style></head>"
            f"<body><main>{''.join(body)}</main></body></html>\n")
