// querywatch dashboard: sortable tables, copy buttons, actions. No dependencies.
"use strict";

function csrfToken() {
  const meta = document.querySelector('meta[name="csrf-token"]');
  return meta ? meta.getAttribute("content") : "";
}

function cellValue(row, index, numeric) {
  const cell = row.cells[index];
  const raw = cell ? (cell.dataset.value ?? cell.textContent) : "";
  return numeric ? parseFloat(raw) || 0 : raw.toLowerCase();
}

function sortBy(table, th) {
  const index = Array.prototype.indexOf.call(th.parentNode.children, th);
  const numeric = th.dataset.sort === "num";
  const descending = th.getAttribute("aria-sort") !== "descending";
  for (const other of th.parentNode.children) other.removeAttribute("aria-sort");
  th.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const body = table.tBodies[0];
  const rows = Array.from(body.rows).filter((r) => !r.querySelector(".empty"));
  rows.sort((a, b) => {
    const x = cellValue(a, index, numeric);
    const y = cellValue(b, index, numeric);
    const order = x < y ? -1 : x > y ? 1 : 0;
    return descending ? -order : order;
  });
  for (const row of rows) body.appendChild(row);
}

async function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = document.createElement("textarea");
  area.value = text;
  area.setAttribute("readonly", "");
  area.className = "offscreen";
  document.body.appendChild(area);
  area.select();
  document.execCommand("copy");
  area.remove();
}

async function runAction(button) {
  const status = button.parentNode.querySelector(".result");
  button.disabled = true;
  if (status) status.textContent = "Analysing…";
  try {
    const response = await fetch(button.dataset.action, {
      method: "POST",
      headers: { "X-CSRF-Token": csrfToken(), Accept: "application/json" },
      credentials: "same-origin",
    });
    const body = await response.json();
    if (status) {
      if (!response.ok) status.textContent = body.error || `Failed (${response.status}).`;
      else if (body.suggestions) status.textContent = `${body.suggestions} suggestion(s); reload to see them.`;
      else status.textContent = `No suggestion: ${body.reason || "the advisor gave no reason."}`;
    }
  } catch (error) {
    if (status) status.textContent = `Failed: ${error}`;
  } finally {
    button.disabled = false;
  }
}

async function postForm(form, button, body) {
  // A dashboard action from a form: POST its JSON with the CSRF header, reload on
  // success, say why in the form's result otherwise.
  const status = form.querySelector(".result");
  button.disabled = true;
  try {
    const response = await fetch(button.dataset.url, {
      method: "POST",
      headers: { "X-CSRF-Token": csrfToken(), "Content-Type": "application/json" },
      credentials: "same-origin",
      body: JSON.stringify(body),
    });
    const result = await response.json();
    if (response.ok) {
      window.location.reload();
    } else if (status) {
      status.textContent = result.error || `Failed (${response.status}).`;
    }
  } catch (error) {
    if (status) status.textContent = `Failed: ${error}`;
  } finally {
    button.disabled = false;
  }
}

function incidentAction(form, button) {
  const data = new FormData(form);
  return postForm(form, button, {
    actor: data.get("actor"), text: data.get("text"), owner: data.get("owner"),
  });
}

function guardAction(form, button) {
  // Lift or pin a containment: the endpoint is the form's, a limit only for a pin.
  const body = { endpoint: form.dataset.endpoint };
  const limit = new FormData(form).get("limit");
  if (button.textContent === "Pin" && limit) body.limit = parseInt(limit, 10);
  return postForm(form, button, body);
}

document.addEventListener("DOMContentLoaded", () => {
  for (const [selector, act] of [["form.guard-action", guardAction],
                                  ["form.incident-action", incidentAction]]) {
    for (const form of document.querySelectorAll(selector)) {
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        const button = event.submitter || form.querySelector("button");
        if (form.reportValidity()) act(form, button);
      });
    }
  }
  for (const table of document.querySelectorAll("table.sortable")) {
    for (const th of table.querySelectorAll("th[data-sort]")) {
      th.tabIndex = 0;
      th.addEventListener("click", () => sortBy(table, th));
      th.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") sortBy(table, th);
      });
    }
  }
  for (const button of document.querySelectorAll("button.copy")) {
    button.addEventListener("click", async () => {
      try {
        await copyText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (error) {
        button.textContent = "Copy failed";
      }
      setTimeout(() => { button.textContent = "Copy"; }, 2000);
    });
  }
  for (const button of document.querySelectorAll("button.action")) {
    button.addEventListener("click", () => runAction(button));
  }
  for (const time of document.querySelectorAll("time[data-ts]")) {
    time.textContent = new Date(parseFloat(time.dataset.ts) * 1000).toLocaleString();
  }
});
