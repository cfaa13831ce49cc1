"""The HTML report: one self-contained file (tables, inline SVG figures, sanity flags, run provenance).

The writer's pieces are checked on their own (escaping, SVG ids, provenance filter); the page is then
opened in a real headless Chromium over the DevTools protocol (`--remote-debugging-pipe`: stdlib
only), which dumps the DOM, takes screenshots and reports every console message, uncaught exception
and network request.
"""
from __future__ import annotations

import base64
import io
import json
import os
import re
import select
import shutil
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from test_report import Cfg, populate

from ssbench.printing import SafeConsole
from ssbench.report import build_report
from ssbench.report.html import HtmlTable, inline_svg, render_html
from ssbench.report.provenance import run_provenance
from ssbench.report import build_tables, display_frame
from ssbench.report.tables import ReportFilter
from ssbench.store import open_store

CHROMIUM = shutil.which("chromium")
VIEWPORT = (1366, 768)  # a laptop screen


# -- a small DOM reader (stdlib html.parser) ------------------------------------------------------

class Dom(HTMLParser):
    """Rows and header cells of each <table data-name>, root <svg> elements inside <figure>, every
    id, every in-page reference (href="#x", url(#x)), and the attributes that could load something."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.rows: dict[str, list[list[str]]] = {}
        self.headers: dict[str, list[str]] = {}
        self.ids: list[str] = []
        self.refs: list[str] = []
        self.loads: list[tuple[str, str, str]] = []  # (tag, attribute, value) of src / external href
        self.tags: list[str] = []
        self.figure_svgs = 0
        self._table: str | None = None
        self._in_body = self._in_head = False
        self._cell: list[str] | None = None
        self._svg_depth = 0
        self._in_figure = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        if "id" in a:
            self.ids.append(a["id"])
        for k, v in a.items():
            if k in ("href", "xlink:href") and v.startswith("#"):
                self.refs.append(v[1:])
            elif k in ("src", "href", "xlink:href", "action", "srcset", "poster", "data"):
                self.loads.append((tag, k, v))
            self.refs += re.findall(r"url\(#([^)]+)\)", v)
        if tag == "table" and "data-name" in a:
            self._table = a["data-name"]
            self.rows[self._table], self.headers[self._table] = [], []
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_body = True
        elif tag == "tr" and self._in_body and self._table:
            self.rows[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = []
        elif tag == "figure":
            self._in_figure = True
        elif tag == "svg":
            self.figure_svgs += self._in_figure and self._svg_depth == 0
            self._svg_depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            text = "".join(self._cell)
            if self._in_head:
                self.headers[self._table].append(text)
            elif self._in_body and tag == "td":
                self.rows[self._table][-1].append(text)
            self._cell = None
        elif tag == "thead":
            self._in_head = False
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._table = None
        elif tag == "figure":
            self._in_figure = False
        elif tag == "svg":
            self._svg_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


# -- the report under test --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The populated fake study of test_report, its tables, figures and provenance, written as HTML by
    `ssbench report --format html --out DIR` (build_report, as the CLI calls it)."""
    root = tmp_path_factory.mktemp("html")
    store = open_store(f"sqlite:///{root / 'results.db'}", artifacts=root / "artifacts")
    info = populate(store)
    f = ReportFilter()
    built = build_tables(store, f, "all")
    shown = {name: display_frame(name, df) for name, df in built.items()}
    written = build_report(store, formats=("html",), out=root / "out", console=SafeConsole(file=io.StringIO())).files
    figures = [p for p in written if p.suffix == ".svg"]
    runs = run_provenance(store, f)
    path = root / "out" / "report.html"
    assert path in written
    return {"store": store, "info": info, "shown": shown, "figures": figures, "runs": runs, "path": path}


def test_the_file_is_self_contained(report) -> None:
    text = report["path"].read_text(encoding="utf-8")
    dom = Dom(text)
    assert not dom.loads, f"the page would load: {dom.loads[:3]}"  # no src=, no external href
    assert {"script", "link", "img", "iframe", "object"}.isdisjoint(dom.tags)
    assert "<?xml" not in text and "<!DOCTYPE svg" not in text and "<metadata" not in text
    assert len(dom.ids) == len(set(dom.ids)), "duplicate ids across the inlined figures"
    assert set(dom.refs) <= set(dom.ids), f"dangling references: {sorted(set(dom.refs) - set(dom.ids))[:5]}"
    assert dom.figure_svgs == len(report["figures"]) == 3
    for name, frame in report["shown"].items():  # every table, its rows and cells exactly
        key = "flags" if name == "sanity" else name
        assert dom.headers[key] == [str(c) for c in frame.columns]
        assert dom.rows[key] == frame.astype(str).values.tolist()


def test_inline_svg_prefixes_every_id_and_reference(report) -> None:
    raw = report["figures"][0].read_text(encoding="utf-8")
    ids = re.findall(r'\bid="([^"]+)"', raw)
    refs = re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', raw)
    assert len(ids) > 20 and refs  # matplotlib's: patch_1, clip paths, glyphs
    a, b = inline_svg(raw, "fa"), inline_svg(raw, "fb")
    assert re.findall(r'\bid="([^"]+)"', a) == [f"fa-{i}" for i in ids]
    assert set(re.findall(r'\bid="([^"]+)"', a)).isdisjoint(re.findall(r'\bid="([^"]+)"', b))
    assert [x or y for x, y in re.findall(r'url\(#([^)]+)\)|href="#([^"]+)"', a)] == [f"fa-{x or y}" for x, y in refs]
    assert a.startswith("<svg") and a.rstrip().endswith("</svg>")
    # matplotlib's `*{stroke-linejoin: ...}` would style the whole page: it is scoped to the figure
    assert re.search(r"<style[^>]*>\s*#fa \*\s*\{", a), re.search(r"<style.*?</style>", a, re.S)
    with pytest.raises(ValueError, match="not an SVG"):
        inline_svg("<html></html>", "x")


def test_text_is_escaped_and_flags_explained() -> None:
    evil = "<script>alert('x')</script> & \"q\""
    frame = pd.DataFrame({"rule": [evil, "fa"], "accuracy": ["0.500 ± 0.010!", "0.700 ± 0.020"]})
    calm = pd.DataFrame({"rule": ["bp"], "accuracy": ["0.900"]})
    html = render_html(title=f"t {evil}", tables=[HtmlTable("flagged", evil, frame), HtmlTable("calm", "c", calm)],
                       flags=pd.DataFrame({"run": ["3"], "check": [evil]}))
    assert "<script" not in html
    dom = Dom(html)
    assert dom.rows["flagged"] == [[evil, "0.500 ± 0.010!"], ["fa", "0.700 ± 0.020"]]  # text survives exactly
    assert dom.rows["flags"] == [["3", evil]]
    assert len(re.findall(r'<td class="num flag" title="[^"]*failed sanity checks">0\.500', html)) == 1
    flagged, calm_part = html.split('id="table-flagged"')[1].split('id="table-calm"')
    assert "rests on failed sanity checks" in flagged and "rests on failed sanity checks" not in calm_part
    assert '<a href="#flags">' in flagged
    assert "1 sanity check(s) failed in 1 attack run(s)" in html
    assert "No sanity check failed" in render_html(title="t", tables=[], flags=calm.iloc[:0])
    with pytest.raises(ValueError, match="inline SVG"):
        render_html(title="t", tables=[], figures=[Path("fig.png")])


def test_provenance_is_what_the_store_holds_for_the_filtered_runs(report, tmp_path) -> None:
    store, info = report["store"], report["info"]
    assert [r.id for r in report["runs"]] == sorted(int(i) for i in store.frame_runs()["id"])  # no filter: all 21
    fa = run_provenance(store, ReportFilter(rule="fa"))
    want = {info["finetune"][("fa", s)] for s in (0, 1, 2)} | {info["attack"][("fa", s)] for s in (0, 1, 2)}
    want |= {store.get_run(info["finetune"][("fa", s)]).parent_id for s in (0, 1, 2)}  # the bp pretrains they started from
    assert {r.id for r in fa} == want
    for r in fa:
        run = store.get_run(r.id)
        assert (r.kind, r.seed, r.parent, r.git_commit, r.config) == (run.kind, run.seed, run.parent_id, run.git_commit, run.config)
        assert r.versions == {k: v for k, v in run.versions.items() if v} and r.versions["python"]
    assert {r.rule for r in fa if r.kind == "attack"} == {"fa"}  # the attacked model's label
    # a failed run is behind no number (a fresh store: the module's is shared)
    other = open_store(f"sqlite:///{tmp_path / 'other.db'}", artifacts=tmp_path / "artifacts")
    with other.run("finetune", config=Cfg(seed=9, rule="fa"), seed=9, rule="fa") as ok:
        pass
    with pytest.raises(RuntimeError), other.run("finetune", config=Cfg(seed=8, rule="fa"), seed=8, rule="fa"):
        raise RuntimeError("boom")
    assert [r.id for r in run_provenance(other, ReportFilter(rule="fa"))] == [ok.run_id]


# -- Chromium over the DevTools protocol (a pipe on fds 3 / 4: no websocket client needed) -------------

class Chromium:
    """One headless Chromium; `open(url)` loads a page and returns its console errors, exceptions,
    log errors and requested URLs; `call` sends one DevTools command to the page."""

    def __init__(self, profile: Path) -> None:
        to_r, self._to = os.pipe()
        self._from, from_w = os.pipe()

        def fds() -> None:  # Chromium reads commands on fd 3 and writes replies on fd 4
            a, b = os.dup(to_r), os.dup(from_w)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self._err = open(profile.parent / "chromium.stderr", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             "--no-default-browser-check", f"--user-data-dir={profile}", f"--window-size={VIEWPORT[0]},{VIEWPORT[1]}",
             "about:blank"],
            pass_fds=(3, 4), preexec_fn=fds, stdout=subprocess.DEVNULL, stderr=self._err)
        os.close(to_r)
        os.close(from_w)
        self._buf, self._id, self.events = b"", 0, []
        page = next(t for t in self.call("Target.getTargets", session=None)["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=None)["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            self.call(f"{domain}.enable")
        self.call("Emulation.setDeviceMetricsOverride", {"width": VIEWPORT[0], "height": VIEWPORT[1], "deviceScaleFactor": 1, "mobile": False})

    def _recv(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buf:
            if not select.select([self._from], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._from, 1 << 20)
            if not chunk:
                self._err.seek(0)
                raise RuntimeError(f"Chromium exited: {self._err.read()[-2000:]}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def call(self, method: str, params: dict[str, Any] | None = None, *, session: Any = ..., timeout: float = 30) -> Any:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session is ... and getattr(self, "session", None):
            msg["sessionId"] = self.session
        os.write(self._to, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            m = self._recv(deadline)
            if m.get("id") == self._id:
                if "error" in m:
                    raise RuntimeError(f"{method}: {m['error']}")
                return m["result"]
            self.events.append(m)

    def open(self, url: str, timeout: float = 30) -> dict[str, list[str]]:
        self.events = []
        self.call("Page.navigate", {"url": url})
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == "Page.loadEventFired" for e in self.events):
            self.events.append(self._recv(deadline))
        self.call("Runtime.evaluate", {"expression": "1"})  # flush what the page logged while loading
        out: dict[str, list[str]] = {"console": [], "exceptions": [], "log": [], "requests": []}
        for e in self.events:
            p, method = e.get("params", {}), e.get("method")
            if method == "Runtime.consoleAPICalled" and p["type"] in ("error", "assert", "warning"):
                out["console"].append(" ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
            elif method == "Runtime.exceptionThrown":
                out["exceptions"].append(p["exceptionDetails"].get("text", ""))
            elif method == "Log.entryAdded" and p["entry"]["level"] in ("error", "warning"):
                out["log"].append(p["entry"]["text"])
            elif method == "Network.requestWillBeSent":
                out["requests"].append(p["request"]["url"])
        return out

    def js(self, expression: str) -> Any:
        r = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        assert "exceptionDetails" not in r, r
        return r["result"]["value"]

    def screenshot(self, clip: dict[str, float] | None = None) -> bytes:
        params: dict[str, Any] = {"format": "png"}
        if clip:
            params |= {"clip": {**clip, "scale": 1}, "captureBeyondViewport": True}
        return base64.b64decode(self.call("Page.captureScreenshot", params)["data"])

    def close(self) -> None:
        try:
            self.call("Browser.close", session=None, timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        for fd in (self._to, self._from):
            os.close(fd)
        self._err.close()


def _pixels(png: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (make paper-tools installs it)")
def test_report_in_headless_chromium(report, tmp_path) -> None:
    path: Path = report["path"]
    url = path.as_uri()
    control = tmp_path / "control.html"  # proves the harness hears a broken page
    control.write_text("<!DOCTYPE html><p>x</p><img src='missing.png'><script>console.error('boom'); nope();</script>")
    browser = Chromium(tmp_path / "profile")
    try:
        seen = browser.open(url)
        dom_text = browser.js("document.documentElement.outerHTML")  # the DOM as the browser built it (--dump-dom)
        layout = browser.js("""(() => {
            const box = (e) => { const r = e.getBoundingClientRect(); return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height}; };
            return {page: document.documentElement.scrollWidth, inner: innerWidth,
                    tables: Object.fromEntries([...document.querySelectorAll('table[data-name]')].map(t =>
                        [t.dataset.name, {rows: t.tBodies[0].rows.length, box: t.parentElement.clientWidth, width: t.scrollWidth}])),
                    svgs: [...document.querySelectorAll('figure svg:not(svg svg)')].map(box)};
        })()""")
        shot = browser.screenshot()
        s = layout["svgs"][0]
        figure_shot = browser.screenshot({"x": s["x"], "y": s["y"], "width": s["width"], "height": s["height"]})
        broken = browser.open(control.as_uri())
    finally:
        browser.close()
    (tmp_path / "report.png").write_bytes(shot)

    # the report: no console errors, no exceptions, nothing loaded but the file itself
    assert seen["console"] == seen["exceptions"] == seen["log"] == [], seen
    assert seen["requests"] == [url]
    # the control page's three faults are all heard: the checks above can fail
    assert broken["console"] == ["boom"] and broken["exceptions"] == ["Uncaught"], broken
    assert any("ERR_FILE_NOT_FOUND" in m for m in broken["log"]) and len(broken["requests"]) == 2

    dom = Dom(dom_text)
    expected = {("flags" if n == "sanity" else n): len(frame) for n, frame in report["shown"].items()}
    expected["runs"] = len(report["store"].frame_runs(status="finished"))
    assert {k: len(v) for k, v in dom.rows.items()} == expected
    assert {k: v["rows"] for k, v in layout["tables"].items()} == expected
    assert expected["robust"] == 27 and expected["flags"] == 7 and expected["runs"] == 21
    assert dom.rows["flags"] == report["shown"]["sanity"].astype(str).values.tolist()
    assert dom.figure_svgs == len(layout["svgs"]) == len(report["figures"]) == 3
    assert len(dom.ids) == len(set(dom.ids))

    # laptop screen: the page never scrolls sideways; the wide robust table scrolls inside its box
    assert layout["page"] <= layout["inner"] == VIEWPORT[0]
    robust = layout["tables"]["robust"]
    assert robust["width"] > robust["box"] > 0
    assert all(300 < s["width"] <= VIEWPORT[0] and s["height"] > 100 for s in layout["svgs"]), layout["svgs"]

    # the screenshots show something: the top of the page and the first figure, drawn
    page = _pixels(shot)
    assert page.shape == (VIEWPORT[1], VIEWPORT[0], 3)
    assert len(np.unique(page.reshape(-1, 3), axis=0)) > 20 and (page < 100).any() and (page > 240).any()
    fig = _pixels(figure_shot)
    assert abs(fig.shape[1] - s["width"]) <= 2 and len(np.unique(fig.reshape(-1, 3), axis=0)) > 50
    assert ((fig.max(axis=2) - fig.min(axis=2)) > 80).mean() > 0.001  # coloured curves, not a grey box
