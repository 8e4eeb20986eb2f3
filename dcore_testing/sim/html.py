"""A trace as one self-contained HTML page: lanes as columns, the step and virtual time
down the side, faults in red, retries in amber, dead letters in purple. No external
assets, and only characters every stock font has (see :data:`timeline.GLYPHS`): the
page must read the same in a bare headless browser as on a desktop."""

from __future__ import annotations

import html
import json

from dcore_testing.sim.timeline import lanes, rows, severity, summary
from dcore_testing.sim.trace import Trace

__all__ = ["render_html"]

_STYLE = """
body{font:13px/1.4 system-ui,sans-serif;margin:16px;color:#1d2330;background:#fafbfc}
h1{font-size:18px;margin:0 0 4px}.meta{color:#555;margin:2px 0;font-family:monospace}
.controls{margin:10px 0}table{border-collapse:collapse;width:100%;table-layout:fixed}
th{position:sticky;top:0;background:#1d2330;color:#fff;padding:6px;text-align:left}
td{border-bottom:1px solid #e3e6ea;padding:3px 6px;vertical-align:top;
font-family:ui-monospace,monospace;font-size:12px;overflow-wrap:anywhere}
td.t,td.n{color:#777;text-align:right}
.ev{display:inline-block;border-radius:4px;padding:1px 5px;border-left:4px solid #9aa5b1;
background:#fff}
.fault{border-color:#d7263d;background:#fde8ea;font-weight:600}
.retry{border-color:#f49d37;background:#fff4e5}.dead{border-color:#7d3c98;background:#f4ecf7}
.effect{border-color:#2e86de;background:#eaf3fd}.stage{border-color:#27ae60}
.lock{border-color:#566573;background:#f2f3f4}.call{border-color:#c8ccd1;color:#555}
.legend span{margin-right:10px}body.nocalls tr.call{display:none}
"""

_SCRIPT = """
document.getElementById('calls').addEventListener('change',function(e){
document.body.classList.toggle('nocalls',!e.target.checked)});
"""


def render_html(trace: Trace, *, title: str = "dcore simulation trace") -> str:
    names = lanes(trace)
    col = {name: i for i, name in enumerate(names)}
    head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
    body = []
    for row in rows(trace):
        kind = severity(row.event)
        cells = ["<td></td>"] * len(names)
        detail = html.escape(json.dumps(row.event), quote=True)
        cells[col[row.lane]] = (
            f'<td><span class="ev {kind}" title="{detail}">{html.escape(row.text)}</span></td>'
        )
        body.append(
            f'<tr class="{kind}"><td class="n">{row.step}</td>'
            f'<td class="t">{row.t:.3f}</td>{"".join(cells)}</tr>'
        )
    meta = "".join(f'<p class="meta">{html.escape(line)}</p>' for line in summary(trace))
    legend = (
        '<p class="legend"><span class="ev fault">fault / crash</span>'
        '<span class="ev retry">retry / redelivery</span>'
        '<span class="ev dead">dead letter</span><span class="ev effect">effect</span>'
        '<span class="ev stage">stage</span><span class="ev lock">lock</span>'
        '<span class="ev call">service call</span></p>'
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{meta}{legend}"
        "<div class='controls'><label><input type='checkbox' id='calls' checked> "
        "show service calls</label></div>"
        "<table><thead><tr><th style='width:48px' title='the event index in the trace, as "
        "in: replay diverged at event N'>step</th>"
        f"<th style='width:80px'>time (s)</th>{head}</tr></thead>"
        f"<tbody>{''.join(body)}</tbody></table><script>{_SCRIPT}</script></body></html>\n"
    )
