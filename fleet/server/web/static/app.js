// The dashboard's only script: live updates over SSE, acknowledge, commands, verify, issue,
// rollouts.
// Everything from the server is put into the page with textContent, never as HTML.
"use strict";

(function () {
  const T = readJson("i18n") || {};
  const DATA = readJson("page-data") || {};
  const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  function readJson(id) {
    const el = document.getElementById(id);
    return el ? JSON.parse(el.textContent) : null;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.append(c);
    return node;
  }

  function when(iso, withDate) {
    if (!iso) return "—";
    const d = new Date(iso);
    const opts = { timeZone: DATA.zone || "Asia/Shanghai", hour12: false,
      hour: "2-digit", minute: "2-digit", second: "2-digit" };
    if (withDate !== false) { opts.month = "2-digit"; opts.day = "2-digit"; }
    const parts = {};
    for (const p of new Intl.DateTimeFormat("en-GB", opts).formatToParts(d)) parts[p.type] = p.value;
    const time = `${parts.hour}:${parts.minute}:${parts.second}`;
    return withDate === false ? time : `${parts.month}-${parts.day} ${time}`;
  }

  async function api(method, path, body) {
    const headers = { "X-CSRF-Token": CSRF, "Accept": "application/json" };
    if (body !== undefined && !(body instanceof FormData)) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method, headers, credentials: "same-origin",
      body: body === undefined ? undefined : (body instanceof FormData ? body : JSON.stringify(body)),
    });
    let payload = null;
    try { payload = await r.json(); } catch (e) { payload = null; }
    if (!r.ok) throw new Error(payload && payload.detail ? readable(payload.detail) : String(r.status));
    return payload;
  }

  // The API's error detail as one line a person can read: a message, or a 422's list of field
  // errors as "field: message; …" (never the raw JSON, and never the values typed back).
  function readable(detail) {
    if (!Array.isArray(detail)) return typeof detail === "string" ? detail : JSON.stringify(detail);
    return detail.map((d) => {
      const loc = (d.loc || []).filter((p) => !["body", "query", "path"].includes(p)).join(".");
      const msg = String(d.msg || "").replace(/^Value error, /, "");
      return loc && !msg.includes(`${loc}:`) ? `${loc}: ${msg}` : msg;
    }).join("; ");
  }

  // --- live updates ---------------------------------------------------------------------------

  function live(handlers) {
    const badge = document.getElementById("live");
    const source = new EventSource("/api/v1/events");
    const show = (ok) => {
      badge.hidden = false;
      badge.textContent = ok ? T.live_on : T.live_off;
      badge.className = "live " + (ok ? "on" : "off");
      document.body.dataset.live = ok ? "on" : "off";
    };
    source.onopen = () => show(true);
    source.onerror = () => show(false);
    for (const [kind, fn] of Object.entries(handlers)) {
      source.addEventListener(kind, (ev) => fn(JSON.parse(ev.data)));
    }
    // Too slow a reader is dropped by the server: start over from a fresh page.
    source.addEventListener("dropped", () => window.location.reload());
    return source;
  }

  // --- overview -------------------------------------------------------------------------------

  function overview() {
    const terminals = DATA.terminals || {};
    const recount = () => {
      const byState = {}, bySite = {};
      let total = 0;
      for (const [site, state] of Object.values(terminals)) {
        byState[state] = (byState[state] || 0) + 1;
        bySite[site] = (bySite[site] || 0) + 1;
        total += 1;
      }
      document.querySelectorAll("[data-state-count]").forEach((n) => {
        n.textContent = byState[n.dataset.stateCount] || 0;
      });
      document.querySelectorAll("[data-site-count]").forEach((n) => {
        n.textContent = bySite[n.dataset.siteCount] || 0;
      });
      document.getElementById("count-total").textContent = total;
    };
    const row = (id) => document.querySelector(`tr[data-terminal="${CSS.escape(id)}"]`);
    const setState = (id, state) => {
      const tr = row(id);
      if (!tr) return;
      tr.className = "state-" + state;
      const badge = tr.querySelector(".state .badge");
      badge.className = "badge state-" + state;
      badge.textContent = T["state_" + state] || state;
    };
    live({
      status(e) {
        if (terminals[e.terminal]) terminals[e.terminal] = [terminals[e.terminal][0], e.state];
        else terminals[e.terminal] = [e.site, e.state];
        recount();
        const tr = row(e.terminal);
        if (!tr) return;
        setState(e.terminal, e.state);
        const pct = e.paper_pct;
        const bar = tr.querySelector(".paper .bar");
        bar.classList.toggle("low", pct !== null && pct <= 20);
        bar.querySelector(".fill").style.width = (pct || 0) + "%";
        tr.querySelector(".paper .pct").textContent = pct === null ? "—" : pct + "%";
        tr.querySelector(".seen").textContent = when(e.last_seen);
        tr.classList.add("flash");
        setTimeout(() => tr.classList.remove("flash"), 800);
      },
      presence(e) {
        if (!e.online && terminals[e.terminal]) {
          terminals[e.terminal] = [terminals[e.terminal][0], "offline"];
          recount();
          setState(e.terminal, "offline");
        }
      },
      alert(e) {
        const tr = row(e.terminal);
        if (!tr) return;
        const cell = tr.querySelector(".alerts");
        const existing = cell.querySelector(`[data-rule="${CSS.escape(e.rule)}"]`);
        if (e.transition === "opened" && !existing) {
          cell.append(el("span", { class: "alert-badge", "data-rule": e.rule,
            text: (DATA.rules || {})[e.rule] || e.rule }));
        } else if (e.transition === "cleared" && existing) {
          existing.remove();
        }
      },
    });
  }

  // --- alerts ---------------------------------------------------------------------------------

  function ackButton(id) {
    const b = el("button", { type: "button", class: "ack-button", "data-alert": String(id), text: T.ack });
    return b;
  }

  function alertsPage() {
    const active = document.querySelector("#active-alerts tbody");
    const recent = document.querySelector("#recent-alerts tbody");
    const count = () => {
      const n = active.querySelectorAll("tr").length;
      document.getElementById("active-count").textContent = n;
      document.getElementById("no-active").hidden = n > 0;
    };
    const ackedText = (by) => T.acked_by + (by || "");
    document.addEventListener("click", async (ev) => {
      const b = ev.target.closest(".ack-button");
      if (!b) return;
      b.disabled = true;
      try {
        const a = await api("POST", `/api/v1/alerts/${encodeURIComponent(b.dataset.alert)}/ack`);
        b.parentElement.textContent = ackedText(a.acked_by);
      } catch (err) {
        b.disabled = false;
        b.title = String(err.message);
      }
    });
    live({
      alert(e) {
        const existing = active.querySelector(`tr[data-alert="${CSS.escape(String(e.id))}"]`);
        if (e.transition === "opened" && !existing) {
          const sev = e.severity || "warning";
          const link = el("a", { href: "/terminals/" + encodeURIComponent(e.terminal), text: e.terminal });
          const tr = el("tr", { "data-alert": String(e.id), class: "sev-" + sev + " new" }, [
            el("td", {}, [link]),
            el("td", { class: "rule", text: (DATA.rules || {})[e.rule] || e.rule }),
            el("td", {}, [el("span", { class: "badge sev-" + sev, text: T["severity_" + sev] || sev })]),
            el("td", { text: when(e.at) }),
            el("td", { class: "ack" }, [ackButton(e.id)]),
          ]);
          active.prepend(tr);
        } else if (e.transition === "acked" && existing) {
          existing.querySelector(".ack").textContent = ackedText(e.acked_by);
        } else if (e.transition === "cleared" && existing) {
          existing.remove();
          const cells = existing.querySelectorAll("td");
          cells[cells.length - 1].textContent = when(e.at);
          recent.prepend(existing);
        }
        count();
      },
    });
  }

  // --- terminal detail ------------------------------------------------------------------------

  function terminalPage() {
    const out = document.getElementById("command-result");
    document.querySelectorAll("button.command").forEach((b) => {
      b.addEventListener("click", async () => {
        b.disabled = true;
        try {
          const c = await api("POST", `/api/v1/terminals/${encodeURIComponent(b.dataset.terminal)}/commands`,
            { name: b.dataset.command });
          out.textContent = `${T.cmd_sent}: ${c.name} (${c.status})`;
          out.className = "ok";
          setTimeout(() => window.location.reload(), 1500);
        } catch (err) {
          out.textContent = `${T.cmd_failed}: ${err.message}`;
          out.className = "bad";
        } finally {
          b.disabled = false;
        }
      });
    });
    live({
      status(e) {
        if (e.terminal !== DATA.terminal) return;
        const badge = document.getElementById("terminal-state");
        badge.className = "badge state-" + e.state;
        badge.textContent = T["state_" + e.state] || e.state;
      },
    });
  }

  // --- verify ---------------------------------------------------------------------------------

  function verifyPage() {
    const input = document.getElementById("scan");
    const box = document.getElementById("verdict");
    const word = document.getElementById("verdict-word");
    const detail = document.getElementById("verdict-detail");
    const licence = document.getElementById("licence");
    const scans = document.querySelector("#scans tbody");
    const verdicts = DATA.verdicts || {};
    let n = 0;
    const keepFocus = () => { if (document.activeElement !== input) input.focus(); };
    // A handheld scanner types into whatever has focus: the input always has it, except while
    // the auditor is using another control on purpose.
    document.addEventListener("click", (ev) => {
      if (!ev.target.closest("input, button, select, a, label")) keepFocus();
    });
    input.addEventListener("blur", () => setTimeout(() => {
      if (!document.activeElement || document.activeElement === document.body) keepFocus();
    }, 50));

    const field = (k, v) => [el("dt", { text: T[k] || k }), el("dd", { text: v })];
    const show = (r) => {
      const v = verdicts[r.verdict] || { word: r.verdict, tone: "bad" };
      box.className = "verdict " + v.tone;
      box.dataset.verdict = r.verdict;
      word.textContent = v.word;
      detail.textContent = r.valid ? "" : [r.stage, r.detail].filter(Boolean).join(": ");
      licence.replaceChildren();
      const c = r.claims;
      if (c) {
        const lic = c.lic || {};
        const items = [["lic_serial", r.serial || c.cti || ""], ["lic_iss", c.iss || ""]];
        if (c.iat) items.push(["lic_iat", when(new Date(c.iat * 1000).toISOString())]);
        if (c.exp) items.push(["lic_exp", when(new Date(c.exp * 1000).toISOString())]);
        for (let i = 1; i <= 9; i++) if (lic[String(i)] !== undefined) items.push(["lic_" + i, String(lic[String(i)])]);
        for (const [k, val] of items) licence.append(...field(k, val));
        licence.hidden = false;
      } else {
        licence.hidden = true;
      }
      n += 1;
      document.getElementById("scan-count").textContent = n;
      const name = c && c.lic ? (c.lic["2"] || "") : "";
      scans.prepend(el("tr", { class: "tone-" + v.tone, "data-verdict": r.verdict }, [
        el("td", { text: when(new Date().toISOString(), false) }),
        el("td", { text: v.word }),
        el("td", { class: "hash", text: r.serial || "" }),
        el("td", { text: name }),
        el("td", { class: "muted", text: r.valid ? "" : (r.detail || r.verdict) }),
      ]));
    };
    document.getElementById("scan-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const text = input.value.trim();
      input.value = "";
      keepFocus();
      if (!text) return;
      box.className = "verdict busy";
      try {
        const res = await api("POST", "/api/v1/verify", { texts: [text] });
        show(res.results[0]);
      } catch (err) {
        box.className = "verdict bad";
        word.textContent = T.verify_error;
        detail.textContent = err.message;
      }
    });
    document.getElementById("clear-scans").addEventListener("click", () => {
      scans.replaceChildren();
      n = 0;
      document.getElementById("scan-count").textContent = n;
      keepFocus();
    });
    const images = document.getElementById("image-form");
    if (images) {
      images.addEventListener("submit", async (ev) => {
        ev.preventDefault();
        const form = new FormData();
        for (const f of document.getElementById("images").files) form.append("files", f);
        try {
          const res = await api("POST", "/api/v1/verify/images", form);
          const results = (res.images || []).flatMap((i) => i.results || []);
          if (!results.length) { word.textContent = T.upload_none; box.className = "verdict warn"; }
          for (const r of results) show(r);
        } catch (err) {
          box.className = "verdict bad";
          word.textContent = T.verify_error;
          detail.textContent = err.message;
        }
        keepFocus();
      });
    }
    keepFocus();
  }

  // --- issue ----------------------------------------------------------------------------------

  function issuePage() {
    const form = document.getElementById("issue-form");
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const lic = {};
      for (const k of ["uscc", "name", "kind", "rep", "addr", "cap", "est", "scope", "term"]) {
        const v = String(f.get(k) || "").trim();
        if (v) lic[k] = v;
      }
      // The server sets iss (its issuing authority) and iat.
      const claims = { lic };
      const exp = String(f.get("exp") || "");
      if (exp) claims.exp = Math.floor(new Date(exp + "T23:59:59+08:00").getTime() / 1000);
      const title = document.getElementById("issued-title");
      const section = document.getElementById("issued");
      section.hidden = false;
      try {
        const r = await api("POST", "/api/v1/licences", claims);
        title.textContent = `${T.issue_done}: ${r.serial}`;
        const url = URL.createObjectURL(new Blob([r.qr_svg], { type: "image/svg+xml" }));
        document.getElementById("issued-qr").src = url;
        document.getElementById("issued-qr").hidden = false;
        document.getElementById("issued-text").textContent = r.text;
      } catch (err) {
        title.textContent = `${T.issue_failed}: ${err.message}`;
        // The licence issued before must not stay under a failure: it could be printed.
        document.getElementById("issued-qr").removeAttribute("src");
        document.getElementById("issued-qr").hidden = true;
        document.getElementById("issued-text").textContent = "";
      }
    });
  }

  // --- rollouts -------------------------------------------------------------------------------

  // api() already words the error; kept as the rollout pages' name for it.
  const errorText = (err) => err.message;

  const fill = (text, values) => text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? values[k] : m));
  const rstateBadge = (s) => el("span", { class: "badge rstate-" + s, text: T["rstate_" + s] || s });
  const ustateBadge = (s) => el("span", { class: "badge ustate-" + s, text: T["ustate_" + s] || s });
  const progressText = (r) => (r.current_wave < 0 ? T.ro_not_started
    : fill(T.ro_wave_of, { n: r.current_wave + 1, total: r.wave_count }));

  function countBadges(counts) {
    const box = el("span", { class: "ucounts" });
    for (const s of DATA.update_states || []) {
      if (counts[s]) {
        box.append(el("span", { class: "badge ustate-" + s, "data-ucount": s,
          text: `${T["ustate_" + s] || s} ${counts[s]}` }));
      }
    }
    return box;
  }

  // Refresh from the API every few seconds, and at once on the stream's rollout events.
  function refreshing(refresh) {
    let queued = null;
    const soon = () => {
      if (queued === null) queued = setTimeout(() => { queued = null; refresh(); }, 300);
    };
    setInterval(refresh, 5000);
    live({ rollout: soon, rollout_terminal: soon });
  }

  function rolloutsPage() {
    const body = document.querySelector("#rollouts tbody");
    const refresh = async () => {
      let page;
      try { page = await api("GET", "/api/v1/rollouts?limit=200"); } catch (e) { return; }
      body.replaceChildren(...page.items.map((r) => el("tr", { "data-rollout": String(r.id) }, [
        el("td", {}, [el("a", { href: "/rollouts/" + r.id, text: "#" + r.id })]),
        el("td", { class: "version", text: r.version }),
        el("td", { class: "rstate" }, [rstateBadge(r.state)]),
        el("td", { class: "progress", text: progressText(r) }),
        el("td", { class: "counts" }, [countBadges(r.counts)]),
        el("td", { text: when(r.created_at) }),
        el("td", { class: "updated", text: when(r.updated_at) }),
      ])));
      document.getElementById("rollout-total").textContent = page.total;
      document.getElementById("no-rollouts").hidden = page.items.length > 0;
    };
    refreshing(refresh);

    const form = document.getElementById("rollout-form");
    if (!form) return;  // not an admin
    const list = (v) => String(v || "").split(/[\s,，]+/).filter(Boolean);
    const number = (v) => (String(v || "").trim() === "" ? null : Number(v));
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const f = new FormData(form);
      const out = document.getElementById("ro-result");
      const body = {
        version: String(f.get("version") || "").trim(),
        target: { sites: list(f.get("sites")), models: list(f.get("models")),
          tags: list(f.get("tags")), terminals: list(f.get("terminals")) },
        success_threshold: number(f.get("success_threshold")) ?? 1,
        max_failures: number(f.get("max_failures")),
        max_failure_pct: number(f.get("max_failure_pct")),
        failure_action: String(f.get("failure_action") || "pause"),
        per_terminal_timeout_s: number(f.get("per_terminal_timeout_s")) ?? 3600,
        override_window: f.get("override_window") !== null,
      };
      const waves = list(f.get("waves")).map((w) => (/^\d+$/.test(w) ? Number(w) : w));
      if (waves.length) body.waves = waves;
      const button = document.getElementById("ro-submit");
      button.disabled = true;
      out.className = "";
      out.textContent = "";
      try {
        const r = await api("POST", "/api/v1/rollouts", body);
        out.textContent = `${T.ro_new_done}: #${r.id}`;
        out.className = "ok";
        window.location.href = "/rollouts/" + r.id;
      } catch (err) {
        out.textContent = `${T.ro_new_failed}: ${errorText(err)}`;
        out.className = "error";
      } finally {
        button.disabled = false;
      }
    });
  }

  function rolloutPage() {
    const id = DATA.rollout;
    const failures = DATA.failure_states || [];
    const show = (r) => {
      document.getElementById("rollout-state").replaceChildren(rstateBadge(r.state));
      document.getElementById("rollout-progress").textContent = progressText(r);
      const reason = document.getElementById("rollout-reason");
      reason.hidden = !r.reason;
      reason.querySelector("span").textContent = r.reason;
      document.getElementById("rollout-counts").replaceChildren(countBadges(r.counts));
      const failed = failures.reduce((n, s) => n + (r.counts[s] || 0), 0);
      const started = r.waves.filter((w) => w.started).reduce((n, w) => n + w.terminals.length, 0);
      const f = document.getElementById("rollout-failures");
      f.textContent = `${failed} / ${started}`;
      f.className = failed ? "bad" : "";
      document.getElementById("rollout-started").textContent = when(r.started_at);
      document.getElementById("rollout-updated").textContent = when(r.updated_at);
      document.getElementById("rollout-finished").textContent = when(r.finished_at);
      for (const w of r.waves) {
        const box = document.querySelector(`section[data-wave="${w.index}"]`);
        if (!box) { window.location.reload(); return; }
        box.classList.toggle("waiting", !w.started);
        box.querySelector(".wave-state").textContent = w.started ? T.ro_wave_started : T.ro_wave_waiting;
        box.querySelector(".wave-counts").replaceChildren(countBadges(w.counts));
        for (const x of w.terminals) {
          const tr = box.querySelector(`tr[data-terminal="${CSS.escape(x.id)}"]`);
          if (!tr) continue;
          tr.querySelector(".ustate").replaceChildren(ustateBadge(x.state));
          tr.querySelector(".reason").textContent = x.reason;
          tr.querySelector(".started").textContent = when(x.started_at);
          tr.querySelector(".updated").textContent = when(x.updated_at);
        }
      }
      const active = ["pending", "running", "paused"].includes(r.state);
      const enable = { pause: r.state === "pending" || r.state === "running",
        resume: r.state === "paused", abort: active };
      document.querySelectorAll("button.rollout-action").forEach((b) => {
        b.disabled = !enable[b.dataset.action];
      });
      document.body.dataset.rolloutState = r.state;
    };
    const refresh = async () => {
      try { show(await api("GET", `/api/v1/rollouts/${id}`)); } catch (e) { /* next time */ }
    };
    const out = document.getElementById("action-result");
    document.querySelectorAll("button.rollout-action").forEach((b) => {
      b.addEventListener("click", async () => {
        const action = b.dataset.action;
        if (action === "abort" && !window.confirm(fill(T.ro_confirm_abort, { id }))) return;
        b.disabled = true;
        try {
          show(await api("POST", `/api/v1/rollouts/${id}/${action}`));
          out.textContent = T.ro_done;
          out.className = "ok";
        } catch (err) {
          out.textContent = `${T.ro_failed}: ${errorText(err)}`;
          out.className = "bad";
          refresh();
        }
      });
    });
    refreshing(refresh);
  }

  // --- common ---------------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    // Keep the other query parameters (filters) when switching language.
    const sw = document.getElementById("lang-switch");
    if (sw) {
      const url = new URL(window.location.href);
      url.searchParams.set("lang", new URL(sw.href).searchParams.get("lang"));
      sw.href = url.pathname + url.search;
    }
    const printButton = document.getElementById("print-button");
    if (printButton) printButton.addEventListener("click", () => window.print());
    const page = document.body.className;
    if (page === "page-overview") overview();
    else if (page === "page-alerts") alertsPage();
    else if (page === "page-terminal") terminalPage();
    else if (page === "page-verify") verifyPage();
    else if (page === "page-issue") issuePage();
    else if (page === "page-rollouts") rolloutsPage();
    else if (page === "page-rollout") rolloutPage();
  });
})();
