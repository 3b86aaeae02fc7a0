// The dashboard's live part: follows /events/stream and keeps the server-rendered table
// current. No framework, no network beyond the registry. Rows are updated in place and in
// batches, so a burst of a thousand metrics events costs one pass over the changed rows.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const HISTORY = 30;                       // samples kept per service for the history lines
  const BARS = "▁▂▃▄▅▆▇█";
  const FLASH = [{ backgroundColor: "#fff3a6" }, { backgroundColor: "transparent" }];

  const services = new Map();               // name -> entry (as /services has it)
  const metrics = new Map();                // name -> latest metrics
  const history = new Map();                // name -> { cpu: [], memory: [], at: sampled_at_ms }
  const lastChange = new Map();             // name -> what the last change was
  const rows = new Map();                   // name -> <tr>
  let order = [];                           // names in table order
  const dirty = new Set();                  // names whose row must be redrawn
  const flashes = new Set();                // names whose row changed by a live event
  let rebuild = true;                       // redraw every row (after a snapshot or reset)
  let flushPending = false;

  let source = null;
  let lastId = null;                        // id of the last event received
  let dropped = false;                      // the connection dropped since it was last open
  let droppedAfter = null;                  // the id we had when it dropped
  let resumes = 0;

  const byName = (a, b) => (a < b ? -1 : a > b ? 1 : 0);

  function setConnection(state, detail) {
    const badge = $("connection");
    badge.dataset.state = state;
    badge.dataset.resumes = String(resumes);
    badge.className = "badge " + state;
    badge.textContent = state;
    $("connection-detail").textContent = detail || "";
  }

  // ---- state from events -------------------------------------------------------------

  function noteSample(name, m) {
    if (!m) return;
    const h = history.get(name) || { cpu: [], memory: [], at: null };
    if (h.at !== m.sampled_at_ms) {
      h.at = m.sampled_at_ms;
      h.cpu.push(m.cpu_pct);
      h.memory.push(m.memory_bytes);
      if (h.cpu.length > HISTORY) { h.cpu.shift(); h.memory.shift(); }
    }
    history.set(name, h);
  }

  function replaceAll(body) {
    services.clear();
    metrics.clear();
    for (const s of body.services) services.set(s.name, s);
    for (const [name, m] of Object.entries(body.metrics || {})) {
      if (!m) continue;
      metrics.set(name, m);
      noteSample(name, m);
    }
    for (const name of [...history.keys()]) if (!services.has(name)) history.delete(name);
    rebuild = true;
  }

  function changed(name, text) {
    lastChange.set(name, `${text} at ${new Date().toLocaleTimeString()}`);
    dirty.add(name);
    flashes.add(name);
  }

  const handlers = {
    snapshot: (b) => replaceAll(b),
    reset: (b) => {
      replaceAll(b);
      setConnection("live", `caught up from a full state (reset: ${b.reason})`);
    },
    "service.added": (b) => {
      services.set(b.service.name, b.service);
      changed(b.service.name, "added");
    },
    "service.updated": (b) => {
      services.set(b.service.name, b.service);
      changed(b.service.name, `updated: ${(b.changed_fields || []).join(", ")}`);
    },
    "service.removed": (b) => {
      services.delete(b.service_name);
      metrics.delete(b.service_name);
      history.delete(b.service_name);
      lastChange.delete(b.service_name);
      dirty.add(b.service_name);
    },
    "services.updated": (b) => replaceAll(b),
    "metrics.updated": (b) => {
      if (b.metrics) {
        metrics.set(b.service_name, b.metrics);
        noteSample(b.service_name, b.metrics);
      } else {
        metrics.delete(b.service_name);
      }
      dirty.add(b.service_name);
    },
    "health.check": (b) => {
      showSource(b.source && b.source.state);
      refreshHealth();
    },
    shutdown: () => {
      setConnection("reconnecting", `the registry is stopping; will resume after id ${lastId}`);
    },
  };

  // ---- drawing -------------------------------------------------------------------------

  function spark(values, floor) {
    if (!values || values.length === 0) return "";
    const top = Math.max(floor, ...values);
    return values.map((v) => BARS[Math.max(0, Math.min(7, Math.round((v / top) * 7)))]).join("");
  }

  function memoryText(m) {
    const b = m.memory_bytes;
    const size = b >= 1073741824 ? `${(b / 1073741824).toFixed(1)} GiB`
      : b >= 1048576 ? `${(b / 1048576).toFixed(1)} MiB`
        : `${(b / 1024).toFixed(0)} KiB`;
    return m.memory_pct == null ? size : `${size} (${m.memory_pct.toFixed(1)} %)`;
  }

  function newRow(name) {
    const tr = document.createElement("tr");
    tr.dataset.name = name;
    for (const cls of ["name", "replicas", "range", "scaling", "cpu", "cpu-history spark",
      "memory", "memory-history spark", "errors", "change"]) {
      const td = document.createElement("td");
      td.className = cls;
      tr.append(td);
    }
    return tr;
  }

  function drawRow(tr, name) {
    const s = services.get(name);
    const m = metrics.get(name);
    const h = history.get(name);
    const c = tr.cells;
    const mode = document.createElement("small");
    mode.textContent = s.mode;
    c[0].replaceChildren(`${name} `, mode);
    c[1].textContent = `${s.running_tasks ?? "–"}/${s.current_replicas}`;
    c[2].textContent = `${s.min_replicas}–${s.max_replicas}`;
    const threshold = s.thresholds ? s.thresholds[s.metric] : undefined;
    c[3].textContent = `${s.metric} > ${threshold} %`;
    if (m) {
      c[4].textContent = `${m.cpu_pct.toFixed(1)} %`;
      c[4].title = `sampled ${Math.max(0, Math.round((Date.now() - m.sampled_at_ms) / 1000))} s ago`;
      c[6].textContent = memoryText(m);
    } else {
      c[4].textContent = "–";
      c[4].title = "no running task sampled";
      c[6].textContent = "–";
    }
    c[5].textContent = spark(h && h.cpu, Math.max(1, threshold || 0));
    c[7].textContent = spark(h && h.memory, 1);
    const errors = s.config_errors || [];
    c[8].className = errors.length ? "errors bad" : "errors";
    if (errors.length) {
      const ul = document.createElement("ul");
      for (const e of errors) {
        const li = document.createElement("li");
        li.textContent = `${e.label}="${e.value}": ${e.reason}`;
        ul.append(li);
      }
      c[8].replaceChildren(ul);
    } else {
      c[8].replaceChildren();
    }
    c[9].textContent = lastChange.get(name) || "";
  }

  function insertPosition(name) {
    let lo = 0;
    let hi = order.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (byName(order[mid], name) < 0) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  function flush() {
    flushPending = false;
    const tbody = $("services");
    if (rebuild) {
      rebuild = false;
      rows.clear();
      order = [...services.keys()].sort(byName);
      const fragment = document.createDocumentFragment();
      for (const name of order) {
        const tr = newRow(name);
        drawRow(tr, name);
        rows.set(name, tr);
        fragment.append(tr);
      }
      tbody.replaceChildren(fragment);
    } else {
      for (const name of dirty) {
        let tr = rows.get(name);
        if (!services.has(name)) {
          if (tr) {
            tr.remove();
            rows.delete(name);
            order.splice(insertPosition(name), 1);
          }
          continue;
        }
        if (!tr) {
          tr = newRow(name);
          const at = insertPosition(name);
          tbody.insertBefore(tr, at < order.length ? rows.get(order[at]) : null);
          order.splice(at, 0, name);
          rows.set(name, tr);
        }
        drawRow(tr, name);
      }
    }
    for (const name of flashes) {
      const tr = rows.get(name);
      if (tr && tr.animate) tr.animate(FLASH, { duration: 2000, easing: "ease-out" });
    }
    dirty.clear();
    flashes.clear();
    $("count").textContent = String(services.size);
    $("empty").hidden = services.size > 0;
  }

  function schedule() {
    if (flushPending) return;
    flushPending = true;
    setTimeout(flush, 30);
  }

  // ---- the stream ----------------------------------------------------------------------

  function connect(since) {
    setConnection(since == null ? "connecting" : "reconnecting",
      since == null ? "" : `resuming after id ${since}`);
    source = new EventSource("/events/stream" + (since == null ? "" : `?since=${encodeURIComponent(since)}`));
    source.onopen = () => {
      if (dropped) {
        resumes += 1;
        dropped = false;
        setConnection("live", `resumed after id ${droppedAfter} with Last-Event-ID`);
      } else {
        setConnection("live", "");
      }
      refreshHealth();
    };
    source.onerror = () => {
      if (!dropped) {
        dropped = true;
        droppedAfter = lastId;
      }
      setConnection("reconnecting", lastId == null ? "" : `will resume after id ${lastId}`);
      if (source.readyState === EventSource.CLOSED) {
        // The browser gave up (an answer that was not a stream, e.g. 503 while the registry
        // stops). Start a new one, resuming where this one ended.
        source.close();
        setTimeout(() => connect(lastId), 2000);
      }
    };
    for (const [event, apply] of Object.entries(handlers)) {
      source.addEventListener(event, (e) => {
        let body;
        try {
          body = JSON.parse(e.data);
        } catch (error) {
          console.warn("unreadable event", event, error);
          return;
        }
        if (e.lastEventId) lastId = e.lastEventId;
        apply(body);
        if (body.revision != null) $("revision").textContent = String(body.revision);
        schedule();
      });
    }
  }

  // ---- registry health -----------------------------------------------------------------

  function badge(id, text, cls) {
    const el = $(id);
    el.textContent = text;
    el.className = "badge " + (cls || text);
  }

  function showSource(state) {
    if (state) badge("source", state);
  }

  function renderAgents(agents) {
    const section = $("agents-section");
    if (agents == null) {
      section.hidden = true;
      return;
    }
    const list = Array.isArray(agents) ? agents : Object.entries(agents).map(([name, v]) =>
      (v && typeof v === "object" && !Array.isArray(v)) ? { name, ...v } : { name, value: v });
    const keys = [...new Set(list.flatMap((a) => (a && typeof a === "object" ? Object.keys(a) : ["value"])))];
    const cell = (tag, text) => {
      const el = document.createElement(tag);
      el.textContent = text;
      return el;
    };
    const show = (v) => (v == null ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
    const head = document.createElement("tr");
    head.append(...keys.map((k) => cell("th", k)));
    const body = list.map((a) => {
      const tr = document.createElement("tr");
      const record = a && typeof a === "object" ? a : { value: a };
      tr.append(...keys.map((k) => cell("td", show(record[k]))));
      return tr;
    });
    $("agents").tHead.replaceChildren(head);
    $("agents").tBodies[0].replaceChildren(...body);
    section.hidden = false;
  }

  let healthInFlight = false;
  async function refreshHealth() {
    if (healthInFlight) return;
    healthInFlight = true;
    try {
      const answer = await fetch("/health", { cache: "no-store", headers: { accept: "application/json" } });
      const h = await answer.json();
      badge("health", h.status);
      showSource(h.source && h.source.state);
      const stale = Boolean(h.source && h.source.stale);
      $("stale").hidden = !stale;
      $("services-table").classList.toggle("stale", stale);
      const p = h.publisher || {};
      $("publisher").textContent = !p.enabled ? "off"
        : `${p.connected ? "connected" : "disconnected"}${p.stream ? ` (${p.stream})` : ""}, outbox ${p.outbox_len}`;
      $("warnings").replaceChildren(...(h.warnings || []).map((w) => {
        const li = document.createElement("li");
        li.textContent = w;
        return li;
      }));
      renderAgents(h.agents);
    } catch (error) {
      badge("health", "unreachable", "degraded");
    } finally {
      healthInFlight = false;
    }
  }

  connect(null);
  setInterval(refreshHealth, 10000);
})();
