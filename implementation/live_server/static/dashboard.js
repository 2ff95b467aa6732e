// The live dashboard: one WebSocket to /ws, a snapshot first, then every update applied in place.
// Values are the exchange's decimal strings and are shown exactly as received (never parsed).
(() => {
  "use strict";

  const ACCOUNT_FIELDS = [
    "total_balance", "available_balance", "equity", "unrealized_pnl",
    "margin_used", "margin_level", "leverage",
  ];
  const POSITION_FIELDS = [
    "symbol", "side", "size", "entry_price", "mark_price",
    "leverage", "unrealized_pnl", "liquidation", "margin_type",
  ];
  const NUMERIC_FIELDS = new Set([
    "size", "entry_price", "mark_price", "leverage", "unrealized_pnl", "liquidation",
  ]);
  const SIGNED_FIELDS = new Set(["unrealized_pnl"]);
  const RETRY_MIN_MS = 500;
  const RETRY_MAX_MS = 5000;

  const statusEl = document.getElementById("connection-status");
  const statusLabel = statusEl.querySelector(".status-label");
  const tbody = document.getElementById("positions-body");
  const positionCount = document.getElementById("position-count");
  const positionsUpdated = document.getElementById("positions-updated");
  const feedSummary = document.getElementById("feed-summary");

  let socketOpen = false;
  let everOpened = false;
  let retryMs = RETRY_MIN_MS;
  let upstream = { connected: false, ready: false, reason: "waiting for live_server" };
  let updates = 0;

  // ------------------------------------------------------------------ connection status
  function renderStatus() {
    let state;
    let label;
    let detail = "";
    if (!socketOpen) {
      state = everOpened ? "reconnecting" : "connecting";
      label = everOpened ? "Reconnecting to live_server…" : "Connecting…";
    } else if (!upstream.connected) {
      state = "reconnecting";
      label = "Reconnecting to exchange connector…";
      detail = upstream.reason || "";
    } else if (!upstream.ready) {
      state = "connecting";
      label = "Waiting for data…";
      detail = upstream.reason || "";
    } else {
      state = "connected";
      label = "Live";
    }
    statusEl.dataset.state = state;
    statusLabel.textContent = label;
    statusEl.title = detail;
    document.body.dataset.ws = socketOpen ? "open" : "closed";
    document.body.dataset.stale = state === "connected" ? "false" : "true";
  }

  // ------------------------------------------------------------------ values
  function signClass(value) {
    if (typeof value !== "string" || value === "") return "";
    if (value.startsWith("-")) return "negative";
    return /[1-9]/.test(value) ? "positive" : "";
  }

  function setValue(el, value, signed) {
    const text = value === undefined || value === null || value === "" ? "—" : String(value);
    const previous = el.textContent;
    if (previous === text) return;
    el.textContent = text;
    if (signed) {
      el.classList.remove("positive", "negative");
      const cls = signClass(value);
      if (cls) el.classList.add(cls);
    }
    if (previous !== "" && previous !== "—") flash(el); // a change, not the first fill
  }

  function flash(el) {
    el.classList.remove("flash");
    void el.offsetWidth; // restart the animation
    el.classList.add("flash");
  }

  function formatTime(rfc3339) {
    if (!rfc3339) return "—";
    const date = new Date(rfc3339);
    if (Number.isNaN(date.getTime())) return rfc3339;
    return date.toLocaleString(undefined, {
      year: "numeric", month: "short", day: "2-digit",
      hour: "2-digit", minute: "2-digit", second: "2-digit",
    });
  }

  // ------------------------------------------------------------------ account
  function renderAccount(account) {
    for (const field of ACCOUNT_FIELDS) {
      const el = document.querySelector(`[data-account-field="${field}"]`);
      if (el) setValue(el, account ? account[field] : "", SIGNED_FIELDS.has(field));
    }
    const stamp = document.getElementById("account-updated");
    const raw = account ? account.updated_at : "";
    stamp.dateTime = raw || "";
    stamp.dataset.raw = raw || "";
    stamp.textContent = formatTime(raw);
  }

  // ------------------------------------------------------------------ positions
  function rowFor(symbol) {
    for (const row of tbody.rows) {
      if (row.dataset.symbol === symbol) return row;
    }
    return null;
  }

  function newRow(symbol) {
    const row = document.createElement("tr");
    row.dataset.symbol = symbol;
    for (const field of POSITION_FIELDS) {
      const cell = document.createElement("td");
      cell.dataset.positionField = field;
      if (NUMERIC_FIELDS.has(field)) cell.classList.add("num");
      if (field === "symbol") cell.classList.add("symbol");
      row.appendChild(cell);
    }
    return row;
  }

  function upsertPosition(position) {
    const placeholder = tbody.querySelector(".empty-row");
    if (placeholder) placeholder.remove();
    let row = rowFor(position.symbol);
    if (!row) {
      row = newRow(position.symbol);
      tbody.appendChild(row);
    }
    for (const field of POSITION_FIELDS) {
      const cell = row.querySelector(`[data-position-field="${field}"]`);
      if (field === "side") {
        renderPill(cell, position.side, position.side === "SHORT" ? "pill-short" : "pill-long");
      } else if (field === "margin_type") {
        renderPill(cell, position.margin_type, "pill-neutral");
      } else {
        setValue(cell, position[field], SIGNED_FIELDS.has(field));
      }
    }
    positionCount.textContent = String(tbody.querySelectorAll("tr[data-symbol]").length);
    positionsUpdated.textContent = `Last change ${new Date().toLocaleTimeString()}`;
  }

  function renderPill(cell, value, cls) {
    let pill = cell.firstElementChild;
    if (!pill) {
      pill = document.createElement("span");
      cell.appendChild(pill);
    }
    const previous = pill.textContent;
    if (previous !== value) {
      pill.textContent = value || "—";
      pill.className = `pill ${cls}`;
      if (previous) flash(cell);
    }
  }

  function replacePositions(positions) {
    const keep = new Set(positions.map((p) => p.symbol));
    for (const row of Array.from(tbody.rows)) {
      if (!row.dataset.symbol || !keep.has(row.dataset.symbol)) row.remove();
    }
    for (const position of positions) upsertPosition(position);
    positionCount.textContent = String(positions.length);
    if (positions.length === 0) {
      const row = document.createElement("tr");
      row.className = "empty-row";
      const cell = document.createElement("td");
      cell.colSpan = POSITION_FIELDS.length;
      cell.textContent = "No open positions";
      row.appendChild(cell);
      tbody.appendChild(row);
    }
  }

  // ------------------------------------------------------------------ feed
  function countUpdate() {
    updates += 1;
    document.body.dataset.updates = String(updates);
    feedSummary.textContent =
      `${updates} update${updates === 1 ? "" : "s"} received · last at ${new Date().toLocaleTimeString()}`;
  }

  function handle(message) {
    switch (message.type) {
      case "snapshot":
        upstream = message.data.status || upstream;
        renderAccount(message.data.account);
        replacePositions(message.data.positions || []);
        if (updates === 0) {
          feedSummary.textContent = `Snapshot at ${new Date().toLocaleTimeString()} · waiting for updates`;
        }
        break;
      case "account":
        renderAccount(message.data);
        countUpdate();
        break;
      case "position":
        upsertPosition(message.data);
        countUpdate();
        break;
      case "status":
        upstream = message.data;
        break;
      default:
        return;
    }
    renderStatus();
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(`${scheme}//${location.host}/ws`);
    socket.addEventListener("open", () => {
      socketOpen = true;
      everOpened = true;
      retryMs = RETRY_MIN_MS;
      renderStatus();
    });
    socket.addEventListener("message", (event) => {
      try {
        handle(JSON.parse(event.data));
      } catch (err) {
        console.error("bad message from /ws", err);
      }
    });
    socket.addEventListener("close", () => {
      socketOpen = false;
      renderStatus();
      setTimeout(connect, retryMs);
      retryMs = Math.min(retryMs * 2, RETRY_MAX_MS);
    });
  }

  renderStatus();
  connect();
})();
