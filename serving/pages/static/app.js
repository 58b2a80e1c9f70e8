// The regulator pages: plain JavaScript over the JSON API. The token stays in this tab
// (sessionStorage) and goes out only as an Authorization header; text is inserted with
// textContent, never as HTML.
"use strict";

const TOKEN_KEY = "credit-token";
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (cls) node.className = cls;
  return node;
}

async function api(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) {
    sessionStorage.removeItem(TOKEN_KEY);
    showLogin();
  }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showLogin() {
  $("login").hidden = false;
  $("app").hidden = true;
}

function fmt(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return value ? "是 yes" : "否 no";
  if (Array.isArray(value)) return value.length ? value.join("；") : "—";
  if (typeof value === "number") return value.toLocaleString("zh-CN");
  return String(value);
}

function hitItem(hit) {
  const li = el("li");
  const link = el("a", hit.name);
  link.href = "/firm/" + encodeURIComponent(hit.entity_id);
  li.append(link, el("span", [hit.uscc || hit.entity_id, hit.division_name, "等级 " + (hit.grade || "不公开 not public")].filter(Boolean).join(" · "), "score-tag"));
  if (hit.match_score !== undefined) li.append(el("span", "匹配度 " + hit.match_score, "score-tag"));
  return li;
}

// ------------------------------------------------------------------ search page
// the list and grade pickers come from the service (config/grading.toml), never restated here
async function fillPickers() {
  const catalogue = await api("/api/v1/lists");
  for (const entry of catalogue.lists) {
    const option = el("option", entry.label + " " + entry.label_en);
    option.value = entry.name;
    $("list").append(option);
  }
  for (const grade of catalogue.grades) $("grade").append(el("option", grade));
}

function searchPage() {
  let page = 1;
  fillPickers().catch((error) => { $("error").textContent = error.message; });
  $("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const q = $("q").value.trim();
    $("error").textContent = "";
    $("results").replaceChildren();
    if (!q) return;
    try {
      let hits;
      if ($("by-rep").checked) {
        hits = (await api("/api/v1/search/legal-representative?name=" + encodeURIComponent(q))).hits;
      } else if (/^[0-9A-Za-z\- ]{9,20}$/.test(q)) {
        try {
          hits = [(await api("/api/v1/profiles/" + encodeURIComponent(q))).profile];
        } catch (error) {
          hits = (await api("/api/v1/search?q=" + encodeURIComponent(q))).hits;
        }
      } else {
        hits = (await api("/api/v1/search?q=" + encodeURIComponent(q))).hits;
      }
      if (!hits.length) $("error").textContent = "没有找到 No firm found";
      hits.forEach((hit) => $("results").append(hitItem(hit)));
    } catch (error) {
      $("error").textContent = error.message;
    }
  });
  async function loadList(reset) {
    if (reset) { page = 1; $("list-results").replaceChildren(); }
    const params = new URLSearchParams({ page: String(page), size: "50" });
    for (const key of ["division", "industry", "grade"]) if ($(key).value) params.set(key, $(key).value);
    try {
      const body = await api("/api/v1/lists/" + $("list").value + "?" + params);
      $("list-total").textContent = "共 " + body.total.toLocaleString() + " 家 firms";
      body.firms.forEach((firm) => $("list-results").append(hitItem(firm)));
      $("more").hidden = page * body.size >= body.total;
    } catch (error) {
      $("error").textContent = error.message;
    }
  }
  $("list-form").addEventListener("submit", (event) => { event.preventDefault(); loadList(true); });
  $("more").addEventListener("click", () => { page += 1; loadList(false); });
}

// ------------------------------------------------------------------ firm page
// [title, domain (config/disclosure.toml; null for identity and summary), fields]
const PANELS = [
  ["身份 Identity", null, ["uscc", "org_code", "reg_no", "entity_type", "division_name", "industry", "legal_rep", "former_names"]],
  ["信贷 Lending", "lending", ["lending_loans", "lending_amount", "lending_balance", "lending_overdue_principal", "lending_worst_class"]],
  ["税务 Tax", "tax", ["tax_latest_rating", "tax_arrears_balance", "tax_major_violation"]],
  ["履约 Contract performance", "contract", ["contract_cases", "contract_dishonest", "contract_unperformed_amount"]],
  ["产品质量 Product quality", "product_quality", ["quality_checks_36m", "quality_failures_36m", "quality_fail_rate", "quality_recalls"]],
  ["社会保险 Social insurance", "social_insurance", ["si_headcount", "si_arrears_months", "si_arrears_amount"]],
  ["违法违规 Violations", "violations", ["violations_penalties_12m", "violations_fines_12m", "violations_serious_in_force", "on_abnormal_list", "on_serious_dishonesty_list"]],
  ["名单与数据质量 Lists & data quality", null, ["lists", "quality_score", "record_count", "source_count", "as_of"]],
];

// fields shown together with what qualifies them: a rating means nothing without its year
const SHOWN_WITH = {
  tax_latest_rating: (p) => p.tax_latest_rating && p.tax_latest_rating + "（" + p.tax_latest_rating_year + " 年度 rating year）",
};

// The service says which domains it withheld from this visitor (profile.withheld): those panels
// say so instead of showing fields, and the evidence table holds none of their records.
function panel(title, domain, profile, fields) {
  const box = el("section", null, "panel");
  box.append(el("h3", title));
  const list = el("dl");
  const withheld = (profile.withheld || []).includes(domain);
  const shown = withheld ? [] : fields.filter((field) => field in profile);
  if (!shown.length) list.append(el("dt", "—"), el("dd", withheld ? "不公开 not public" : "无 none"));
  for (const field of shown) {
    const value = SHOWN_WITH[field] ? SHOWN_WITH[field](profile) : profile[field];
    list.append(el("dt", field), el("dd", fmt(value), "field-" + field));
  }
  box.append(list);
  return box;
}

function historyChart(versions) {
  const ns = "http://www.w3.org/2000/svg";
  const width = 640, height = 180, pad = 60;
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  svg.setAttribute("role", "img"); svg.setAttribute("aria-label", "score history");
  const x = (i) => pad + (versions.length === 1 ? (width - 2 * pad) / 2 : i * (width - 2 * pad) / (versions.length - 1));
  const y = (score) => height - pad - (score / 1000) * (height - 2 * pad);
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", versions.map((v, i) => x(i) + "," + y(v.score)).join(" "));
  line.setAttribute("fill", "none"); line.setAttribute("stroke", "#1f4e79"); line.setAttribute("stroke-width", "2");
  for (const mark of [0, 500, 1000]) {
    const tick = document.createElementNS(ns, "text");
    tick.setAttribute("x", 4); tick.setAttribute("y", y(mark) + 4);
    tick.textContent = String(mark);
    const rule = document.createElementNS(ns, "line");
    rule.setAttribute("x1", pad); rule.setAttribute("x2", width - pad);
    rule.setAttribute("y1", y(mark)); rule.setAttribute("y2", y(mark)); rule.setAttribute("stroke", "#ddd");
    svg.append(tick, rule);
  }
  svg.append(line);
  versions.forEach((v, i) => {
    const dot = document.createElementNS(ns, "circle");
    dot.setAttribute("cx", x(i)); dot.setAttribute("cy", y(v.score)); dot.setAttribute("r", "4");
    dot.setAttribute("fill", "#1f4e79"); dot.setAttribute("class", "history-point");
    const title = document.createElementNS(ns, "title");
    title.textContent = v.version + ": " + v.grade + " " + v.score;
    dot.append(title);
    const label = document.createElementNS(ns, "text");
    label.setAttribute("x", x(i)); label.setAttribute("y", height - 8);
    label.setAttribute("text-anchor", "middle");
    label.textContent = String(v.as_of) + " " + v.grade;
    svg.append(dot, label);
  });
  return svg;
}

async function firmPage() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  try {
    const [profileBody, evidence, history] = await Promise.all([
      api("/api/v1/profiles/" + encodeURIComponent(id)),
      api("/api/v1/profiles/" + encodeURIComponent(id) + "/evidence"),
      api("/api/v1/profiles/" + encodeURIComponent(id) + "/history"),
    ]);
    const profile = profileBody.profile;
    document.title = profile.name + " · 企业信用画像";
    $("name").textContent = profile.name;
    $("grade").textContent = profile.grade || "—";
    $("grade").className = "grade grade-" + profile.grade;
    $("score").textContent = "信用分 score " + (profile.score === null || profile.score === undefined ? "不公开 not public" : profile.score + " / 1000");
    for (const [title, domain, fields] of PANELS) $("panels").append(panel(title, domain, profile, fields));
    const stale = (profile.provenance || []).filter((p) => p.stale).map((p) => p.source);
    if (stale.length) $("panels").append(el("p", "数据可能过期 stale sources: " + stale.join(", "), "stale"));
    // every veto and every deduction, each naming its records, their dates and until when
    const reasons = [...(profile.veto_reasons || []), ...(profile.grade_reasons || [])];
    if (!reasons.length) $("reasons").append(el("li", "无扣分 no deductions"));
    reasons.forEach((reason) => $("reasons").append(el("li", reason)));
    const scored = history.versions.filter((v) => v.score !== null && v.score !== undefined);
    $("history").append(scored.length ? historyChart(scored) : el("p", "不公开 not public"));
    const body = $("evidence").querySelector("tbody");
    for (const record of evidence.records) {
      const row = el("tr");
      for (const key of ["source", "source_record_id", "recorded_name", "recorded_code", "match_method", "match_confidence", "match_grade"]) {
        row.append(el("td", fmt(record[key])));
      }
      body.append(row);
    }
  } catch (error) {
    $("error").textContent = error.message;
  }
}

// ------------------------------------------------------------------ runs page
async function runsPage() {
  try {
    const body = await api("/api/v1/runs");
    $("serving").textContent = "Serving version " + body.serving;
    for (const run of body.runs) {
      const box = el("section", null, "panel");
      box.append(el("h3", run.business_date + " — " + (run.published ? "published " + run.version : "NOT published")
        + (run.books_balanced ? " · books balance" : " · books do not balance")));
      const table = el("table");
      const head = el("tr");
      ["source", "extracted", "accepted", "quarantined", "snapshot", "state", "problems"].forEach((h) => head.append(el("th", h)));
      table.append(head);
      for (const [name, s] of Object.entries(run.sources)) {
        const row = el("tr");
        [name, s.extracted, s.accepted, s.quarantined, s.snapshot_records].forEach((v) => row.append(el("td", fmt(v))));
        row.append(el("td", s.stale ? "stale" : "fresh", s.stale ? "stale" : ""));
        row.append(el("td", fmt(s.problems)));
        table.append(row);
      }
      box.append(table);
      $("runs").append(box);
    }
  } catch (error) {
    $("error").textContent = error.message;
  }
}

function start() {
  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    location.reload();
  });
  $("logout").addEventListener("click", () => { sessionStorage.removeItem(TOKEN_KEY); location.reload(); });
  if (!sessionStorage.getItem(TOKEN_KEY)) { showLogin(); return; }
  $("app").hidden = false;
  const page = document.body.dataset.page;
  if (page === "search") searchPage();
  if (page === "firm") firmPage();
  if (page === "runs") runsPage();
}

document.addEventListener("DOMContentLoaded", start);
