// The krewe operator's dashboard: one page, no dependencies. It listens to one server-sent-events
// stream (/v1/events: a snapshot of the network each second) and reads job records
// (/v1/jobs/{id}) and miners' statements (/v1/workers/{address}/statement) when they are opened.
// Every value from the server is escaped before it reaches the page; widths are set through the
// CSSOM, so the page runs under a Content-Security-Policy without inline scripts or styles.
"use strict";

const WEI_PER_KREW = 10n ** 18n;
const VERDICT_LABELS = { agreed: "agreed", no_consensus: "no consensus", deadline: "deadline" };
const state = { snapshot: null, statement: null, sort: { key: "worker", asc: true }, routeKey: null };

// Formatting.

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function krew(wei, digits = 4) {
  const amount = BigInt(wei ?? "0");
  const negative = amount < 0n;
  const abs = negative ? -amount : amount;
  const whole = abs / WEI_PER_KREW;
  const scale = 10n ** BigInt(18 - digits);
  let fraction = ((abs % WEI_PER_KREW) / scale).toString().padStart(digits, "0").replace(/0+$/, "");
  if (whole === 0n && fraction === "" && abs > 0n) return `<0.${"0".repeat(digits - 1)}1`;
  const text = whole.toLocaleString("en-US") + (fraction ? `.${fraction}` : "");
  return (negative ? "−" : "") + text;
}

function krewCell(wei) {
  return `<span title="${esc(wei)} wei">${esc(krew(wei))}</span>`;
}

function ms(value) {
  if (value === null || value === undefined) return "—";
  if (value >= 1000) return `${(value / 1000).toFixed(value >= 10000 ? 0 : 1)} s`;
  if (value >= 100) return `${value.toFixed(0)} ms`;
  if (value >= 10) return `${value.toFixed(1)} ms`;
  return `${value.toFixed(2)} ms`;
}

function short(hex, head = 6, tail = 4) {
  if (!hex) return "—";
  return hex.length > head + tail + 1 ? `${hex.slice(0, head)}…${hex.slice(-tail)}` : hex;
}

function jobShort(id) {
  return id.length > 12 ? `${id.slice(0, 12)}…` : id;
}

function compact(wei) {
  const whole = BigInt(wei ?? "0") / WEI_PER_KREW;
  if (whole < 10_000n) return krew(wei);
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 2 }).format(Number(whole));
}

function ago(seconds) {
  if (!seconds) return "—";
  const delta = Math.max(0, Date.now() / 1000 - seconds);
  if (delta < 60) return `${Math.round(delta)} s ago`;
  if (delta < 3600) return `${Math.round(delta / 60)} min ago`;
  if (delta < 86400) return `${Math.round(delta / 3600)} h ago`;
  return new Date(seconds * 1000).toISOString().slice(0, 16).replace("T", " ");
}

function when(text) {
  return text ? `<span title="${esc(text)}">${esc(text.replace("T", " ").replace(/\.\d+Z$/, ""))}</span>` : "—";
}

function pill(kind, label) {
  return `<span class="pill ${esc(kind)}">${esc(label ?? kind)}</span>`;
}

function fillWidths(root) {
  for (const element of root.querySelectorAll("[data-w]")) {
    element.style.width = `${Math.max(0, Math.min(1, Number(element.dataset.w))) * 100}%`;
  }
  for (const element of root.querySelectorAll("[data-color]")) {
    element.style.background = element.dataset.color;
  }
}

// Charts, drawn as SVG.

function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (step * power >= value) return step * power;
  }
  return 10 * power;
}

function chartFrame(width, height, max, format, times) {
  const left = 50, bottom = 18, top = 8;
  const plotH = height - top - bottom;
  let svg = "";
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotH * (1 - fraction);
    svg += `<line class="grid-line" x1="${left}" x2="${width}" y1="${y}" y2="${y}"></line>`;
    svg += `<text class="axis" x="${left - 6}" y="${y + 3}" text-anchor="end">${esc(format(max * fraction))}</text>`;
  }
  const spanMin = Math.round((times[times.length - 1] - times[0]) / 60);
  const span = spanMin >= 1 ? `−${spanMin} min` : `−${Math.round(times[times.length - 1] - times[0])} s`;
  svg += `<text class="axis" x="${left}" y="${height - 4}">${span}</text>`;
  svg += `<text class="axis" x="${width}" y="${height - 4}" text-anchor="end">now</text>`;
  return { svg, left, top, plotH, plotW: width - left };
}

function verdictChart(series, width) {
  const height = 170;
  const totals = series.t.map((_, i) => series.agreed[i] + series.no_consensus[i] + series.deadline[i]);
  const max = niceMax(Math.max(...totals));
  const frame = chartFrame(width, height, max, (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(1).replace(/\.0$/, "")), series.t);
  const slot = frame.plotW / series.t.length;
  let bars = "";
  series.t.forEach((_, i) => {
    let base = frame.top + frame.plotH;
    for (const verdict of ["agreed", "no_consensus", "deadline"]) {
      const count = series[verdict][i];
      if (!count) continue;
      const h = (count / max) * frame.plotH;
      base -= h;
      const x = frame.left + i * slot + slot * 0.12;
      bars += `<rect class="bar-${verdict}" x="${x.toFixed(1)}" y="${base.toFixed(1)}" width="${(slot * 0.76).toFixed(1)}" height="${h.toFixed(1)}"><title>${count} ${VERDICT_LABELS[verdict]}</title></rect>`;
    }
  });
  return `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="verdicts over time">${frame.svg}${bars}</svg>`;
}

function lineChart(series, names, width, format, label) {
  const height = 170;
  const values = names.flatMap((name) => series[name].filter((v) => v !== null));
  const max = niceMax(Math.max(0, ...values));
  const frame = chartFrame(width, height, max, format, series.t);
  const slot = frame.plotW / series.t.length;
  let lines = "";
  names.forEach((name) => {
    let path = "";
    let pen = "M";
    const points = series[name];
    points.forEach((value, i) => {
      if (value === null) {
        pen = "M";
        return;
      }
      const x = frame.left + i * slot + slot / 2;
      const y = frame.top + frame.plotH * (1 - value / max);
      path += `${pen}${x.toFixed(1)},${y.toFixed(1)} `;
      pen = "L";
      if ((points[i - 1] ?? null) === null && (points[i + 1] ?? null) === null) {
        lines += `<circle class="dot-${name}" cx="${x.toFixed(1)}" cy="${y.toFixed(1)}" r="3"></circle>`;
      }
    });
    if (path) {
      lines += `<path class="line-${name}" d="${path}"></path>`;
    }
  });
  return `<svg viewBox="0 0 ${width} ${height}" role="img" aria-label="${esc(label)}">${frame.svg}${lines}</svg>`;
}

function axisMs(value) {
  if (value >= 1000) return `${+(value / 1000).toFixed(1)} s`;
  return `${+value.toFixed(value >= 10 ? 0 : 2)} ms`;
}

// The buckets since the orchestrator started (its first sample), but at least `least` of them.
function recent(series, least = 24) {
  const first = series.miners.findIndex((value) => value !== null);
  const start = Math.max(0, Math.min(first < 0 ? series.t.length : first, series.t.length - least));
  const cut = {};
  for (const [name, values] of Object.entries(series)) cut[name] = Array.isArray(values) ? values.slice(start) : values;
  return cut;
}

function legend(items) {
  return `<div class="legend">${items.map(([color, text]) => `<span><i data-color="${color}"></i>${esc(text)}</span>`).join("")}</div>`;
}

// The overview.

function overview(snapshot) {
  const { network, series, ledger, chain } = snapshot;
  const window = series.t.length * series.bucket_s;
  const sum = (name) => series[name].reduce((a, b) => a + b, 0);
  const decided = sum("agreed") + sum("no_consensus") + sum("deadline");
  const agreedShare = decided ? `${((100 * sum("agreed")) / decided).toFixed(1)}<small>%</small>` : "—";
  const lastLatency = (name) => [...series[name]].reverse().find((v) => v !== null) ?? null;
  return `
  <section class="grid kpis" id="network">
    <div class="card kpi"><div class="label">Miners connected</div><div class="value" id="kpi-miners">${network.miners}</div><div class="sub">${network.open_jobs} jobs open</div></div>
    <div class="card kpi"><div class="label">Jobs per second</div><div class="value">${network.jobs_per_s.toFixed(network.jobs_per_s >= 10 ? 0 : 2)}</div><div class="sub">last 30 s</div></div>
    <div class="card kpi"><div class="label">Agreed</div><div class="value">${agreedShare}</div><div class="sub">${decided.toLocaleString("en-US")} jobs in ${Math.round(window / 60)} min</div></div>
    <div class="card kpi"><div class="label">Latency p50 / p99</div><div class="value">${esc(ms(lastLatency("p50_ms")))}</div><div class="sub">p99 ${esc(ms(lastLatency("p99_ms")))}</div></div>
    <div class="card kpi"><div class="label">Pending credits</div><div class="value"><span title="${esc(ledger.pending)} wei">${esc(compact(ledger.pending))}</span><small>KREW</small></div><div class="sub">${krewCell(ledger.in_flight)} in flight</div></div>
    <div class="card kpi"><div class="label">Reward pool</div><div class="value">${chain.reachable ? `<span title="${esc(chain.pool)} wei">${esc(compact(chain.pool))}</span><small>KREW</small>` : "—"}</div><div class="sub">${chainLine(chain)}</div></div>
  </section>
  <section class="grid charts">
    <div class="card chart" id="chart-verdicts"><h2>Verdicts <span class="aside">per ${series.bucket_s} s</span></h2><div class="plot"></div>
      ${legend([["var(--agreed)", "agreed"], ["var(--no-consensus)", "no consensus"], ["var(--deadline)", "deadline"]])}</div>
    <div class="card chart" id="chart-latency"><h2>Client latency</h2><div class="plot"></div>
      ${legend([["var(--p50)", "p50"], ["var(--p99)", "p99"]])}</div>
    <div class="card chart" id="chart-miners"><h2>Miners</h2><div class="plot"></div>
      ${legend([["var(--miners)", "connected"]])}</div>
  </section>
  <section class="card" id="miners">
    <h2>Miners <span class="aside">${snapshot.miners.length} connected · click a column to sort</span></h2>
    ${minersTable(snapshot.miners)}
  </section>
  <section class="grid pair">
    <div class="card" id="jobs"><h2>Recent jobs</h2>${jobsTable(snapshot.jobs)}</div>
    <div class="card" id="ledger"><h2>Ledger</h2>${ledgerCard(ledger)}<h2 class="next">Chain</h2>${chainCard(chain)}</div>
  </section>
  <section class="card" id="settlements"><h2>Settlements <span class="aside">every ${snapshot.settlements.window_s} s</span></h2>${settlementsTable(snapshot.settlements)}</section>`;
}

function chainLine(chain) {
  if (chain.reachable === null) return "chain not read yet";
  if (!chain.reachable) return `<span class="dot down"></span>chain unreachable`;
  return `<span class="dot up"></span>block ${Number(chain.block).toLocaleString("en-US")}`;
}

const MINER_COLUMNS = [
  ["worker", "Miner", (m) => m.worker],
  ["engine", "Engine class", (m) => m.engines.join(" ")],
  ["models", "Models and tasks", (m) => m.models.map((o) => o.id).join(" ")],
  ["score", "Score", (m) => m.score, "num"],
  ["latency_ms", "Latency", (m) => m.latency_ms ?? Infinity, "num"],
  ["in_flight", "In flight", (m) => m.in_flight, "num"],
  ["credited", "Credited", (m) => BigInt(m.credited), "num"],
  ["paid", "Paid", (m) => BigInt(m.paid), "num"],
  ["pending", "Pending", (m) => BigInt(m.pending) + BigInt(m.in_flight_wei), "num"],
];

function minersTable(miners) {
  if (!miners.length) return `<div class="empty">No miner is connected.</div>`;
  const column = MINER_COLUMNS.find(([key]) => key === state.sort.key) ?? MINER_COLUMNS[0];
  const value = column[2];
  const sorted = [...miners].sort((a, b) => {
    const x = value(a), y = value(b);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return state.sort.asc ? order : -order;
  });
  const head = MINER_COLUMNS.map(([key, label, , kind]) => {
    const sortedClass = key === state.sort.key ? ` sorted${state.sort.asc ? " asc" : ""}` : "";
    return `<th class="sortable ${kind ?? ""}${sortedClass}" data-sort="${key}">${label}</th>`;
  }).join("");
  const rows = sorted.map((m) => `
    <tr data-worker="${esc(m.worker)}">
      <td class="mono"><a href="#/miners/${esc(m.worker)}" title="${esc(m.worker)} · ${esc(m.agent)}">${esc(short(m.worker, 8, 6))}</a></td>
      <td class="mono muted clip" title="${esc(m.engines.join("\n"))}">${m.engines.map(esc).join("<br>")}</td>
      <td class="clip">${m.models.map((o) => `${esc(o.id)} <span class="muted">${o.tasks.map(esc).join(", ")}</span>`).join("<br>")}</td>
      <td class="num"><span class="score"><span class="bar"><span data-w="${m.score}"></span></span>${m.score.toFixed(3)}</span></td>
      <td class="num">${esc(ms(m.latency_ms))}</td>
      <td class="num">${m.in_flight} <span class="muted">/ ${m.max_concurrency}</span></td>
      <td class="num">${krewCell(m.credited)}</td>
      <td class="num">${krewCell(m.paid)}</td>
      <td class="num">${krewCell((BigInt(m.pending) + BigInt(m.in_flight_wei)).toString())}</td>
    </tr>`).join("");
  return `<div class="table-wrap"><table id="miners-table"><thead><tr>${head}</tr></thead><tbody>${rows}</tbody></table></div>
    <div class="legend">amounts in KREW · pending includes credits in a settlement batch on its way</div>`;
}

function jobsTable(jobs) {
  if (!jobs.length) return `<div class="empty">No job has finished yet.</div>`;
  const rows = jobs.slice(0, 10).map((job) => `
    <tr>
      <td class="muted">${esc(ago(job.closed_at))}</td>
      <td class="mono"><a class="job-link" href="#/jobs/${esc(job.job_id)}">${esc(jobShort(job.job_id))}</a></td>
      <td class="clip" title="${esc(job.model)} · ${esc(job.task)} · ${esc(job.engine)}">${esc(job.model)} <span class="muted">${esc(job.task)}</span></td>
      <td>${pill(job.verdict, VERDICT_LABELS[job.verdict])}</td>
      <td class="num">${job.agreeing}/${job.replicas}</td>
      <td class="num">${esc(ms(job.latency_ms))}</td>
      <td class="num">${job.creditable ? krewCell(job.credited) : '<span class="muted">—</span>'}</td>
    </tr>`).join("");
  return `<div class="table-wrap"><table id="jobs-table"><thead><tr><th>Finished</th><th>Job</th><th>Model</th><th>Verdict</th><th class="num">Agreeing</th><th class="num">Latency</th><th class="num">Credited</th></tr></thead><tbody>${rows}</tbody></table></div>`;
}

function ledgerCard(ledger) {
  const credited = BigInt(ledger.credited);
  const part = (wei) => (credited ? Number((BigInt(wei) * 10000n) / credited) / 10000 : 0);
  return `
    <dl class="facts">
      <dt>Credited</dt><dd>${krewCell(ledger.credited)} KREW</dd>
      <dt><span class="dot" data-color="var(--agreed)"></span>Paid</dt><dd>${krewCell(ledger.paid)} KREW</dd>
      <dt><span class="dot" data-color="var(--no-consensus)"></span>Pending</dt><dd>${krewCell(ledger.pending)} KREW</dd>
      <dt><span class="dot" data-color="var(--accent)"></span>In flight</dt><dd>${krewCell(ledger.in_flight)} KREW</dd>
    </dl>
    <div class="stack" title="paid · pending · in flight">
      <span data-w="${part(ledger.paid)}" data-color="var(--agreed)"></span>
      <span data-w="${part(ledger.pending)}" data-color="var(--no-consensus)"></span>
      <span data-w="${part(ledger.in_flight)}" data-color="var(--accent)"></span>
    </div>`;
}

function chainCard(chain) {
  if (chain.reachable === null) return `<div class="empty">Not read yet.</div>`;
  const status = chain.reachable
    ? `<span class="dot up"></span>reachable`
    : `<span class="dot down"></span>unreachable <span class="muted">${esc(chain.error)}</span>`;
  return `<dl class="facts" id="chain">
      <dt>Status</dt><dd>${status}</dd>
      <dt>Latest block</dt><dd>${chain.block !== undefined ? Number(chain.block).toLocaleString("en-US") : "—"}</dd>
      <dt>Batch nonce</dt><dd>${esc(chain.batch_nonce ?? "—")}</dd>
      <dt>Reward pool</dt><dd>${chain.pool !== undefined ? `${krewCell(chain.pool)} KREW` : "—"}</dd>
      <dt>Distributor</dt><dd class="mono">${esc(short(chain.distributor, 8, 6))}</dd>
    </dl>`;
}

function settlementsTable(settlements) {
  const open = settlements.open.map((batch) => `
    <tr><td class="muted">now</td><td class="num">${esc(batch.batch_nonce ?? "—")}</td><td>${pill("open", "open")}</td>
    <td class="num">${batch.workers}</td><td class="num">${krewCell(batch.total)}</td><td class="mono">${esc(short(batch.tx_hash, 10, 8))}</td><td></td></tr>`);
  const recent = settlements.recent.map((item) => `
    <tr><td class="muted">${esc(ago(item.at))}</td><td class="num">${esc(item.batch_nonce ?? "—")}</td><td>${pill(item.outcome)}</td>
    <td class="num">${item.workers}</td><td class="num">${krewCell(item.total)}</td><td class="mono" title="${esc(item.tx_hash)}">${esc(short(item.tx_hash, 10, 8))}</td>
    <td class="muted">${item.outcome === "paid" ? "" : esc(item.reason)}</td></tr>`);
  const rows = [...open, ...recent];
  if (!rows.length) return `<div class="empty">No settlement yet: credits are paid every window.</div>`;
  return `<div class="table-wrap"><table id="settlements-table"><thead><tr><th>When</th><th class="num">Batch nonce</th><th>Outcome</th><th class="num">Workers</th><th class="num">Total (KREW)</th><th>Transaction</th><th>Note</th></tr></thead><tbody>${rows.join("")}</tbody></table></div>`;
}

function drawCharts(snapshot) {
  const series = recent(snapshot.series);
  const place = (id, draw) => {
    const plot = document.querySelector(`#${id} .plot`);
    if (plot) plot.innerHTML = draw(Math.max(240, plot.clientWidth));
  };
  place("chart-verdicts", (w) => verdictChart(series, w));
  place("chart-latency", (w) => lineChart(series, ["p50_ms", "p99_ms"], w, axisMs, "client latency p50 and p99"));
  place("chart-miners", (w) => lineChart(series, ["miners"], w, (v) => (Number.isInteger(v) ? String(v) : v.toFixed(1)), "miners connected"));
}

// A job's audit record.

async function jobPage(jobId) {
  const record = await fetchJson(`/v1/jobs/${encodeURIComponent(jobId)}`);
  const digests = [...new Set(record.workers.map((w) => w.digest).filter(Boolean))];
  const digestClass = (d) => (d ? `digest-${d === record.digest ? 0 : Math.min(2, 1 + digests.indexOf(d) % 2)}` : "");
  const verdict = record.verdict === "agreed" ? "agreed" : record.deadline_exceeded ? "deadline" : "no_consensus";
  const rows = record.workers.map((w) => `
    <tr>
      <td class="mono"><a href="#/miners/${esc(w.worker)}">${esc(short(w.worker, 8, 6))}</a></td>
      <td>${pill(w.answer)}${record.agreeing.includes(w.worker) ? ' <span class="pill agreed">agreeing</span>' : ""}</td>
      <td class="mono ${digestClass(w.digest)}" title="${esc(w.digest)}">${esc(short(w.digest, 12, 6))}</td>
      <td class="muted">${esc(w.reason ?? "")}</td>
      <td class="num">${esc(ms(w.latency_ms))}</td>
      <td class="num">${record.credits[w.worker] ? krewCell(record.credits[w.worker]) : '<span class="muted">—</span>'}</td>
    </tr>`).join("");
  const output = JSON.stringify(record.output, null, 2) ?? "null";
  return `
    <div class="crumbs"><a href="#/">Overview</a> / job</div>
    <h1 class="mono" id="job-title">${esc(record.job_id)}</h1>
    <section class="grid pair">
      <div class="card"><h2>Verdict</h2>
        <dl class="facts" id="job-facts">
          <dt>Verdict</dt><dd>${pill(verdict, VERDICT_LABELS[verdict])}${record.final ? "" : ' <span class="pill open">collecting</span>'}</dd>
          <dt>Agreeing</dt><dd>${record.agreeing.length} of ${record.replicas} (threshold ${record.threshold})</dd>
          <dt>Model</dt><dd>${esc(record.model)} <span class="muted">${esc(record.task)}</span></dd>
          <dt>Engine class</dt><dd class="mono">${esc(record.engine ?? "—")}</dd>
          <dt>Created</dt><dd>${when(record.created_at)} UTC</dd>
          <dt>Digest</dt><dd class="mono">${esc(record.digest ?? "—")}</dd>
          <dt>Creditable</dt><dd>${record.creditable ? "yes" : "no"}${record.deadline_exceeded ? " · deadline passed" : ""}</dd>
        </dl></div>
      <div class="card"><h2>Agreed output</h2><pre class="output">${esc(output.length > 20000 ? `${output.slice(0, 20000)}\n…` : output)}</pre></div>
    </section>
    <section class="card"><h2>Who answered what</h2>
      <div class="table-wrap"><table id="answers-table"><thead><tr><th>Miner</th><th>Answer</th><th>Digest (SHA-256 of RFC 8785 JSON)</th><th>Reason</th><th class="num">Latency</th><th class="num">Credited (KREW)</th></tr></thead>
      <tbody>${rows}</tbody></table></div></section>`;
}

// A miner's statement.

async function minerPage(address) {
  const statement = await fetchJson(`/v1/workers/${encodeURIComponent(address)}/statement?limit=50`);
  state.statement = statement;
  const live = state.snapshot?.miners.find((m) => m.worker === statement.worker);
  return `
    <div class="crumbs"><a href="#/">Overview</a> / miner</div>
    <h1 class="mono" id="miner-title">${esc(statement.worker)}</h1>
    <section class="grid kpis">
      <div class="card kpi"><div class="label">Credited</div><div class="value" id="statement-credited">${krewCell(statement.credited)}<small>KREW</small></div></div>
      <div class="card kpi"><div class="label">Paid</div><div class="value" id="statement-paid">${krewCell(statement.paid)}<small>KREW</small></div></div>
      <div class="card kpi"><div class="label">Pending</div><div class="value">${krewCell(statement.pending)}<small>KREW</small></div></div>
      <div class="card kpi"><div class="label">In flight</div><div class="value">${krewCell(statement.in_flight)}<small>KREW</small></div></div>
      <div class="card kpi"><div class="label">Score</div><div class="value">${live ? live.score.toFixed(3) : "—"}</div><div class="sub">${live ? `${live.jobs} jobs · ${esc(ms(live.latency_ms))}` : "not connected"}</div></div>
      <div class="card kpi"><div class="label">Engine class</div><div class="value text mono">${live ? esc(live.engines.join(", ")) : "—"}</div><div class="sub">${live ? esc(live.agent) : ""}</div></div>
    </section>
    <section class="grid pair even">
      <div class="card"><h2>Credits <span class="aside">newest first</span></h2>
        <div class="table-wrap"><table id="credits-table"><thead><tr><th>When (UTC)</th><th>Job</th><th class="num">Amount (KREW)</th></tr></thead><tbody></tbody></table></div></div>
      <div class="card"><h2>Payouts</h2>
        <div class="table-wrap"><table id="payouts-table"><thead><tr><th>When (UTC)</th><th class="num">Batch nonce</th><th>Transaction</th><th class="num">Amount (KREW)</th></tr></thead><tbody></tbody></table></div></div>
    </section>
    <button class="more" id="more" hidden>Load more</button>
    <p class="note">The same statement as JSON: <a href="/v1/workers/${esc(statement.worker)}/statement">/v1/workers/${esc(short(statement.worker))}/statement</a>. A miner prints its own with <span class="mono">krewe miner statement</span>.</p>`;
}

function appendStatement(statement) {
  const credits = document.querySelector("#credits-table tbody");
  const payouts = document.querySelector("#payouts-table tbody");
  credits.insertAdjacentHTML("beforeend", statement.credits.map((c) => `
    <tr><td class="muted">${when(c.at)}</td><td class="mono"><a href="#/jobs/${esc(c.job_id)}">${esc(jobShort(c.job_id))}</a></td><td class="num">${krewCell(c.amount)}</td></tr>`).join(""));
  payouts.insertAdjacentHTML("beforeend", statement.payouts.map((p) => `
    <tr><td class="muted">${when(p.at)}</td><td class="num">${esc(p.batch_nonce ?? "—")}</td><td class="mono" title="${esc(p.tx_hash)}">${esc(short(p.tx_hash, 8, 6))}</td><td class="num">${krewCell(p.amount)}</td></tr>`).join(""));
  const more = document.getElementById("more");
  more.hidden = !statement.next_cursor;
  more.onclick = async () => {
    more.disabled = true;
    const next = await fetchJson(`/v1/workers/${encodeURIComponent(statement.worker)}/statement?limit=50&cursor=${encodeURIComponent(statement.next_cursor)}`);
    more.disabled = false;
    appendStatement(next);
  };
}

// Plumbing.

async function fetchJson(url) {
  const response = await fetch(url, { headers: { Accept: "application/json" } });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error?.message ?? `${response.status} ${response.statusText}`);
  return body;
}

function route() {
  const [, kind, id] = (location.hash.replace(/^#/, "") || "/").split("/");
  return { kind: kind || "overview", id: id ? decodeURIComponent(id) : null };
}

async function render() {
  const view = document.getElementById("view");
  const { kind, id } = route();
  const key = `${kind}/${id}`;
  const fresh = state.routeKey !== key;
  state.routeKey = key;
  if (kind === "jobs" && id) {
    if (!fresh) return;
    await show(view, () => jobPage(id));
  } else if (kind === "miners" && id) {
    if (!fresh) return;
    state.statement = null;
    await show(view, () => minerPage(id));
    if (state.statement) appendStatement(state.statement);
  } else {
    if (!state.snapshot) {
      view.innerHTML = `<div class="empty">Waiting for the first snapshot…</div>`;
      return;
    }
    view.innerHTML = overview(state.snapshot);
    drawCharts(state.snapshot);
    fillWidths(view);
    if (fresh && kind !== "overview") document.getElementById(kind)?.scrollIntoView();
  }
}

async function show(view, build) {
  view.innerHTML = `<div class="empty">Loading…</div>`;
  try {
    view.innerHTML = await build();
    fillWidths(view);
    window.scrollTo(0, 0);
  } catch (error) {
    view.innerHTML = `<div class="crumbs"><a href="#/">Overview</a></div><div class="error-box">${esc(error.message)}</div>`;
  }
}

function footer(snapshot) {
  const chain = snapshot.chain;
  document.getElementById("footer").innerHTML =
    `krewe ${esc(snapshot.version)} · orchestrator <span class="mono">${esc(chain.orchestrator ?? "")}</span> · updated ${new Date(snapshot.at * 1000).toLocaleTimeString()}`;
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/v1/events");
  events.addEventListener("snapshot", (event) => {
    state.snapshot = JSON.parse(event.data);
    live.textContent = "live";
    live.className = "live on";
    footer(state.snapshot);
    if (route().kind !== "jobs" && route().kind !== "miners") render();
  });
  events.onerror = () => {
    live.textContent = "reconnecting";
    live.className = "live off";
  };
}

document.addEventListener("click", (event) => {
  const header = event.target.closest("th[data-sort]");
  if (!header) return;
  const key = header.dataset.sort;
  state.sort = { key, asc: state.sort.key === key ? !state.sort.asc : key === "worker" };
  render();
});
window.addEventListener("hashchange", render);
render();
connect();
