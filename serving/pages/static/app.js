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
// The page shows the credit report the service renders for this visitor's role (serving/report.py:
// labels, units and panels derived from config/profile_columns.toml, disclosure.toml and
// grading.toml; every value escaped there); the PDF button fetches the same report printed.
async function apiText(path) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  const response = await fetch(path, { headers: { Authorization: "Bearer " + token } });
  if (response.status === 401) { sessionStorage.removeItem(TOKEN_KEY); showLogin(); }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new Error(body.error || response.statusText);
  }
  return response;
}

async function firmPage() {
  const id = decodeURIComponent(location.pathname.split("/").pop());
  const report = "/api/v1/profiles/" + encodeURIComponent(id) + "/report";
  try {
    const html = await (await apiText(report + "?format=html")).text();
    const parsed = new DOMParser().parseFromString(html, "text/html");
    $("report").replaceChildren(...parsed.body.childNodes);
    document.title = $("name").textContent + " · 企业信用画像";
  } catch (error) {
    $("error").textContent = error.message;
  }
  $("report-pdf").addEventListener("click", async () => {
    $("pdf-state").textContent = "正在生成 printing…";
    try {
      const blob = await (await apiText(report + "?format=pdf")).blob();
      const link = el("a");
      link.href = URL.createObjectURL(blob);
      link.download = "credit-report-" + id + ".pdf";
      document.body.append(link);
      link.click();
      link.remove();
      $("pdf-state").textContent = "已下载 downloaded";
    } catch (error) {
      $("pdf-state").textContent = "";
      $("error").textContent = error.message;
    }
  });
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
