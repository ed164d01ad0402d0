"""report.html: the whole report in one file that opens offline (no server, no CDN).

The results table sorts by any column; the charts are inline PNGs; the per-query view lists each query's
scores for two chosen systems and shows their top 10 side by side, relevant documents marked, with a
snippet of each. Its data is one JSON block (the groups of irlm.eval.significance); every text reaches the
page through `textContent`, so a document's text can never become markup.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

from irlm.eval.significance import versus_cells

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:24px;color:#222;max-width:1320px}
h1{font-size:20px}h2{font-size:17px;margin-top:28px}
table{border-collapse:collapse}th,td{padding:3px 9px;border-bottom:1px solid #ddd;text-align:left}
th{cursor:pointer;background:#f3f3f3;user-select:none}th:hover{background:#e6e6e6}
td.num{text-align:right;font-variant-numeric:tabular-nums}
tr.sig-up td{background:#e8f5e9}tr.sig-down td{background:#fdecea}tr.base td{font-weight:600}
.note{color:#555;font-size:12.5px}img{max-width:100%;display:block;margin:10px 0}
#pq-controls select{margin:0 12px 0 4px}
#pq-list{max-height:260px;overflow-y:auto;border:1px solid #ddd;margin:10px 0;display:inline-block}
#pq-list tr{cursor:pointer}#pq-list tr.on td{background:#fff3c4}
#pq-side{display:flex;gap:18px}#pq-side>div{flex:1;min-width:0}
#pq-side ol{padding-left:0;list-style:none;margin:0}
#pq-side li{border:1px solid #ddd;border-left:5px solid #ddd;margin:5px 0;padding:4px 8px}
#pq-side li.rel{border-left-color:#2e7d32;background:#f1f8f1}
.doc{font-size:12px;color:#555}.tag{font-size:11px;color:#fff;background:#2e7d32;border-radius:3px;padding:0 4px}
.rank{display:inline-block;width:22px;color:#888}
"""

SCRIPT = """
// the results table: a click on a header sorts by that column (numbers by their data-v value)
function sortable(table) {
  table.querySelectorAll("th").forEach((th, i) => th.onclick = () => {
    const body = table.tBodies[0], up = th.dataset.dir !== "asc";
    th.dataset.dir = up ? "asc" : "desc";
    const key = r => { const v = r.cells[i].dataset.v ?? r.cells[i].textContent, n = parseFloat(v);
                       return isNaN(n) ? [1, v] : [0, n]; };
    const order = (x, y) => x[0] - y[0] || (x[1] < y[1] ? -1 : x[1] > y[1] ? 1 : 0);
    [...body.rows].sort((a, b) => order(key(a), key(b)) * (up ? 1 : -1)).forEach(r => body.appendChild(r));
  });
}
document.querySelectorAll("table.sortable").forEach(sortable);

// the per-query view: every text goes in through textContent
const groups = JSON.parse(document.getElementById("perquery").textContent);
const $ = id => document.getElementById(id);
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}
const fmt = x => x == null ? "-" : x.toFixed(4);
const cut = (text, n) => text.length > n ? text.slice(0, n - 1) + "…" : text;
const signed = x => (x >= 0 ? "+" : "") + fmt(x);
const group = () => groups[+$("pq-group").value];
const mean = (g, n) => { const v = Object.values(g.scores[n]); return v.reduce((x, y) => x + y, 0) / v.length; };
let current = null;

function options(select, names, chosen) {
  select.replaceChildren(...names.map(n => { const o = el("option", null, n); o.value = n;
                                             o.selected = n === chosen; return o; }));
}
function chooseGroup() {  // A: the baseline, B: the best other system
  const g = group(), others = g.systems.filter(n => n !== g.baseline);
  const best = others.sort((p, q) => mean(g, q) - mean(g, p))[0] || g.baseline;
  options($("pq-a"), g.systems, g.baseline);
  options($("pq-b"), g.systems, best);
  listQueries();
}
function listQueries() {  // largest difference between B and A first
  const g = group(), a = $("pq-a").value, b = $("pq-b").value, diff = q => g.scores[b][q] - g.scores[a][q];
  const qids = Object.keys(g.queries).sort((p, q) => Math.abs(diff(q)) - Math.abs(diff(p)));
  $("pq-head").replaceChildren(...["query", "text", a, b, b + " - " + a].map(t => el("th", null, t)));
  $("pq-list").tBodies[0].replaceChildren(...qids.map(q => {
    const tr = el("tr");
    tr.dataset.q = q;
    tr.append(el("td", null, q), el("td", null, cut(g.queries[q], 90)), el("td", "num", fmt(g.scores[a][q])),
              el("td", "num", fmt(g.scores[b][q])), el("td", "num", signed(diff(q))));
    tr.onclick = () => show(q);
    return tr;
  }));
  if (qids.length) show(current in g.queries ? current : qids[0]);
}
function topTen(g, name, q) {
  const box = el("div"), rel = g.relevant[q] || {}, top = g.top[name][q] || [];
  const found = top.filter(([d]) => d in rel).length, total = Object.keys(rel).length;
  box.append(el("h3", null, name + ": " + g.metric + " " + fmt(g.scores[name][q])),
             el("div", "note", found + " of " + total + " relevant documents in its top " + top.length));
  const list = el("ol");
  top.forEach(([d, score], i) => {
    const li = el("li", d in rel ? "rel" : null), doc = g.docs[d] || {title: "", text: ""};
    li.append(el("span", "rank", String(i + 1)), el("b", null, doc.title ? doc.title + " " : ""));
    if (d in rel) li.append(el("span", "tag", "relevant " + rel[d]));
    li.append(el("div", "doc", d + " · score " + score.toFixed(4) + " · " + doc.text));
    list.append(li);
  });
  box.append(list);
  return box;
}
function show(q) {
  const g = group();
  current = q;
  [...$("pq-list").tBodies[0].rows].forEach(r => r.classList.toggle("on", r.dataset.q === q));
  $("pq-query").textContent = q + ": " + g.queries[q];
  $("pq-side").replaceChildren(topTen(g, $("pq-a").value, q), topTen(g, $("pq-b").value, q));
}
if (groups.length) {
  options($("pq-group"), groups.map(g => g.data + " " + g.split), null);
  [...$("pq-group").options].forEach((o, i) => o.value = i);
  $("pq-group").onchange = chooseGroup;
  $("pq-a").onchange = listQueries;
  $("pq-b").onchange = listQueries;
  chooseGroup();
}
"""

COLUMNS = ("system", "data", "metric", "value", "vs baseline", "95% CI", "p rand. (Holm)", "p t-test (Holm)", "W/T/L")


def write_html(path: Path, title: str, rows: list[dict], charts: list[Path], groups: list[dict], headline,
               note: str) -> Path:  # fmt: skip
    """Write report.html; `headline(row)` gives a row's (metric, value), `note` explains the marks."""
    body = [f"<h1>{html.escape(title)}</h1>", results_table(rows, headline), f'<p class="note">{html.escape(note)}</p>']
    body += ["<h2>Charts</h2>"] + [_image(c) for c in charts]
    body += per_query_section(groups)
    page = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{html.escape(title)}</title>",
            f"<style>{STYLE}</style></head><body>", *body, _json_block(groups), f"<script>{SCRIPT}</script>",
            "</body></html>"]  # fmt: skip
    path.write_text("\n".join(page), encoding="utf-8")
    return path


def results_table(rows: list[dict], headline) -> str:
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    lines = [f'<table class="sortable" id="results"><thead><tr>{head}</tr></thead><tbody>']
    for row in rows:
        h = headline(row)
        if h:
            lines.append(_row(row, *h))
    return "\n".join(lines + ["</tbody></table>"])


def _row(row: dict, metric: str, value: float) -> str:
    vs = row.get("vs")
    cls = "base" if row.get("baseline") else ""
    if vs and vs["significant"]:
        cls = "sig-up" if vs["diff"] > 0 else "sig-down"
    cells = [_td(row["system"]), _td(row["data"]), _td(metric), _num(value, f"{value:.4f}")]
    # numbers sort by value (data-v), not by their text
    values = [vs["diff"], None, vs["p_randomization_holm"], vs["p_ttest_holm"], None] if vs else [None] * 5
    cells += [_td(text) if v is None else _num(v, text) for text, v in zip(versus_cells(row), values)]
    return f'<tr class="{cls}">{"".join(cells)}</tr>'


def _td(text: str) -> str:
    return f"<td>{html.escape(str(text))}</td>"


def _num(value: float, text: str) -> str:
    return f'<td class="num" data-v="{value!r}">{html.escape(text)}</td>'


def _image(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}">'


def per_query_section(groups: list[dict]) -> list[str]:
    if not groups:
        return ["<h2>Per query</h2>", '<p class="note">No system was compared with a baseline (no run files of '
                "the baseline's data set), so there is no per-query view.</p>"]  # fmt: skip
    return ["<h2>Per query</h2>",
            '<div id="pq-controls">data <select id="pq-group"></select> system A <select id="pq-a"></select>'
            ' system B <select id="pq-b"></select></div>',
            '<p class="note">Queries by the size of the difference between B and A; choose one to see both top 10s.'
            " Green: relevant (with its grade).</p>",
            '<table id="pq-list"><thead><tr id="pq-head"></tr></thead><tbody></tbody></table>',
            '<p id="pq-query"></p><div id="pq-side"></div>']  # fmt: skip


def _json_block(groups: list[dict]) -> str:
    # "<" escaped: a document containing "</script>" must not end the block
    text = json.dumps(groups, ensure_ascii=False).replace("<", "\\u003c")
    return f'<script type="application/json" id="perquery">{text}</script>'
