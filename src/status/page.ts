/**
 * The status page's HTML, CSS and script, served by the metrics listener at /, /assets/status.css and
 * /assets/status.js. The script polls status.json and writes every value with textContent (recipients
 * and reply lines come from strangers on the internet: nothing is ever parsed as HTML). The chart is
 * uPlot, vendored through npm and served from node_modules at /assets/uplot/.
 */

/** Seconds between two polls of status.json. */
export const POLL_SECONDS = 5;

export const PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>batv-proxy status</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="assets/uplot/uPlot.min.css">
<link rel="stylesheet" href="assets/status.css">
</head>
<body>
<header>
  <h1>batv-proxy <span id="host"></span></h1>
  <p id="updated" class="muted">loading…</p>
</header>
<div id="mode" class="banner" hidden></div>
<div id="error" class="banner bad" hidden></div>
<main>
  <section>
    <h2>Listeners</h2>
    <table id="listeners"><thead><tr><th>Listener</th><th>Address</th><th>Mail goes to</th><th>Next hop</th></tr></thead><tbody></tbody></table>
    <ul id="problems" class="problems"></ul>
  </section>
  <section>
    <h2>Keyring</h2>
    <table id="keys"><thead><tr><th>Key</th><th>Thumbprint (RFC 7638)</th><th>Status</th><th>Age</th><th>Scheduled activation</th></tr></thead><tbody></tbody></table>
  </section>
  <section class="wide">
    <h2>Counts</h2>
    <table id="counts"><thead><tr><th></th><th class="num">last hour</th><th class="num">last day</th></tr></thead><tbody></tbody></table>
  </section>
  <section class="wide">
    <h2>Inbound over the last day <span class="muted">(per 10 minutes)</span></h2>
    <div id="chart"></div>
  </section>
  <section class="wide">
    <h2>Latest refusals and would-refusals</h2>
    <p class="muted">Check that nothing legitimate is among them before switching inbound to enforce.</p>
    <table id="recent"><thead><tr><th>Time (UTC)</th><th>Kind</th><th>Client IP</th><th>Recipient</th><th>Classification</th><th>Reply</th></tr></thead><tbody></tbody></table>
  </section>
</main>
<script src="assets/uplot/uPlot.iife.min.js"></script>
<script src="assets/status.js"></script>
</body>
</html>
`;

export const PAGE_CSS = `:root { --fg: #1d2330; --muted: #6b7385; --line: #e3e6ec; --bg: #f6f7f9; --card: #fff; --ok: #1f8a4c; --bad: #c23b22; --warn: #b7791f; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
header { display: flex; align-items: baseline; justify-content: space-between; gap: 1rem; padding: 14px 24px; background: var(--card); border-bottom: 1px solid var(--line); }
h1 { font-size: 18px; margin: 0; font-weight: 600; }
h1 span { font-weight: 400; color: var(--muted); }
h2 { font-size: 14px; margin: 0 0 10px; font-weight: 600; }
main { display: grid; grid-template-columns: repeat(auto-fit, minmax(640px, 1fr)); gap: 16px; padding: 16px 24px 32px; }
section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px; min-width: 0; overflow-x: auto; }
section.wide { grid-column: 1 / -1; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 5px 14px 5px 0; border-bottom: 1px solid var(--line); vertical-align: top; white-space: nowrap; }
th { font-weight: 600; color: var(--muted); font-size: 12px; }
tr:last-child td { border-bottom: 0; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.group td { font-weight: 600; padding-top: 10px; }
tr.sub td:first-child { padding-left: 16px; color: var(--muted); }
code, .mono { font-family: ui-monospace, "SFMono-Regular", Menlo, Consolas, monospace; font-size: 12.5px; }
.muted { color: var(--muted); }
.ok { color: var(--ok); font-weight: 600; }
.bad { color: var(--bad); font-weight: 600; }
.pill { display: inline-block; white-space: nowrap; padding: 0 8px; border-radius: 10px; font-size: 12px; font-weight: 600; background: var(--line); }
.pill.refused { background: #fbe4df; color: var(--bad); }
.pill.would-refuse { background: #fcf0d9; color: var(--warn); }
.pill.active { background: #ddf3e6; color: var(--ok); }
.banner { margin: 16px 24px 0; padding: 10px 14px; border-radius: 8px; border: 1px solid var(--line); background: var(--card); }
.banner.observe { border-color: #f0d9a8; background: #fdf7ea; }
.banner.bad { border-color: #f3c2b8; background: #fdf0ed; font-weight: 400; }
.problems { margin: 8px 0 0; padding-left: 18px; color: var(--bad); }
td.reply { white-space: normal; min-width: 24em; }
#chart { min-height: 220px; }
#counts { max-width: 760px; }
.empty td { color: var(--muted); font-style: italic; }
`;

export const PAGE_JS = `(function () {
  'use strict';
  var POLL_MS = ${POLL_SECONDS * 1000};
  var plot = null;
  function $(id) { return document.getElementById(id); }
  function el(tag, text, cls) {
    var e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function row(cells) {
    var tr = document.createElement('tr');
    cells.forEach(function (c) { tr.appendChild(c instanceof Node ? c : el('td', c)); });
    return tr;
  }
  function td(child, cls) { var t = el('td', null, cls); t.appendChild(child instanceof Node ? child : document.createTextNode(String(child))); return t; }
  function fill(table, rows, emptyText, cols) {
    var body = $(table).querySelector('tbody');
    body.replaceChildren();
    if (!rows.length) { var tr = row([el('td', emptyText)]); tr.className = 'empty'; tr.firstChild.colSpan = cols; body.appendChild(tr); }
    rows.forEach(function (r) { body.appendChild(r); });
  }
  function when(isoText) { return isoText ? isoText.replace('T', ' ').replace(/\\.\\d+Z$/, '').replace(/Z$/, '') : ''; }
  function sum(o) { return Object.keys(o).reduce(function (n, k) { return n + o[k]; }, 0); }

  function listeners(s) {
    fill('listeners', s.listeners.map(function (l) {
      var goes = l.capture ? el('span', 'captured as .eml in ' + l.capture) : el('code', l.nextHop);
      var st = l.answers ? el('span', 'answers', 'ok') : el('span', 'not answering: ' + (l.problem || ''), 'bad');
      return row([td(el('strong', l.name)), td(el('code', l.address)), td(goes), td(st)]);
    }), 'no listeners', 4);
    var ul = $('problems');
    ul.replaceChildren();
    s.problems.forEach(function (p) { ul.appendChild(el('li', p)); });
  }

  function keys(s) {
    fill('keys', s.keys.map(function (k) {
      var age = k.ageDays === null ? '' : k.ageDays + (k.ageDays === 1 ? ' day' : ' days');
      var status = el('span', k.status === 'active' ? 'active (signs)' : 'verify only', 'pill' + (k.status === 'active' ? ' active' : ''));
      return row([td(el('strong', k.num)), td(el('code', k.thumbprint)), td(status), td(age), td(k.activateAt ? when(k.activateAt) : '—')]);
    }), 'keys given directly (no keyring file)', 5);
  }

  var GROUPS = [
    ['signed', 'Outbound senders signed, by scheme'],
    ['unsigned', 'Outbound senders not signed, by reason'],
    ['accepted', 'Inbound recipients accepted, by verdict'],
    ['refused', 'Inbound recipients refused, by reason'],
    ['wouldRefuse', 'Would have been refused (grace period), by reason'],
    ['refusals', 'Refusals counted by batv_proxy_refusals_total (role/reason)'],
    ['rateLimited', 'Rate limited (cooling off at connect, replayed tags), by kind']
  ];
  function counts(s) {
    var rows = [];
    GROUPS.forEach(function (g) {
      var h = s.counts.hour[g[0]], d = s.counts.day[g[0]];
      var names = Object.keys(d).concat(Object.keys(h).filter(function (k) { return !(k in d); })).sort();
      var head = row([td(g[1]), td(sum(h), 'num'), td(sum(d), 'num')]);
      head.className = 'group';
      rows.push(head);
      names.forEach(function (n) {
        var r = row([td(el('span', n, 'mono')), td(h[n] || 0, 'num'), td(d[n] || 0, 'num')]);
        r.className = 'sub';
        rows.push(r);
      });
    });
    fill('counts', rows, '', 3);
  }

  function chart(s) {
    var c = s.chart;
    var data = [c.starts.map(function (t) { return t / 1000; }), c.accepted, c.refused, c.wouldRefuse];
    if (typeof uPlot !== 'function') return;
    var width = Math.max(300, $('chart').clientWidth);
    if (plot) { plot.setData(data); if (plot.width !== width) plot.setSize({ width: width, height: 220 }); return; }
    plot = new uPlot({
      width: width, height: 220,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, Math.max(4, max)]; } } },
      axes: [{}, { label: 'per 10 min', size: 56 }],
      series: [
        {},
        { label: 'accepted', stroke: '#1f8a4c', fill: 'rgba(31,138,76,0.08)', width: 1.5 },
        { label: 'refused', stroke: '#c23b22', fill: 'rgba(194,59,34,0.10)', width: 1.5 },
        { label: 'would refuse', stroke: '#b7791f', dash: [6, 4], width: 1.5 }
      ]
    }, data, $('chart'));
  }

  function recent(s) {
    fill('recent', s.recent.map(function (e) {
      return row([td(when(e.time)), td(el('span', e.kind, 'pill ' + e.kind)), td(el('code', e.client)), td(el('code', e.rcpt)),
        td(e.classified ? e.verdict + ' · ' + e.classified : e.verdict), td(el('code', e.reply), 'reply')]);
    }), 'none yet', 6);
  }

  function mode(s) {
    var m = $('mode');
    m.hidden = false;
    if (s.grace.active) {
      m.className = 'banner observe';
      m.textContent = 'Observing: untagged bounces that would be refused are let through and counted until ' + when(s.grace.until) + ' UTC (inbound.graceUntil).';
    } else {
      m.className = 'banner';
      m.textContent = s.grace.until ? 'Enforcing: the grace period ended ' + when(s.grace.until) + ' UTC.' : 'Enforcing: no grace period (inbound.graceUntil is not set).';
    }
  }

  function render(s) {
    $('host').textContent = s.hostname;
    $('updated').textContent = 'updated ' + when(s.now) + ' UTC · next hops probed ' + when(s.probedAt) + ' UTC · refreshes every ' + (POLL_MS / 1000) + ' s';
    mode(s); listeners(s); keys(s); counts(s); chart(s); recent(s);
  }

  function poll() {
    fetch('status.json', { cache: 'no-store', credentials: 'same-origin' })
      .then(function (r) { if (!r.ok) throw new Error('status.json: HTTP ' + r.status); return r.json(); })
      .then(function (s) { $('error').hidden = true; render(s); document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1); })
      .catch(function (e) { var b = $('error'); b.hidden = false; b.textContent = 'Cannot update: ' + e.message; })
      .finally(function () { setTimeout(poll, POLL_MS); });
  }
  poll();
})();
`;
