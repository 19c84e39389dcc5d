// Loading parent bags onto a bill with a keyboard-wedge scanner: each scan
// (code + Enter) goes through the scan queue of floor.js (stored first, sent
// in order, kept until answered), so the page never reloads and the input is
// ready for the next scan at once. Without this script the form posts
// normally and the server redirects back to the bill.
(function () {
  "use strict";

  // Remove and Close ask first through confirm.js, with or without the loading box.
  const form = document.getElementById("load-form");
  if (!form || !window.bagtrackFloor) {
    return;
  }
  const { ScanQueue, sound } = window.bagtrackFloor;
  const input = form.elements.namedItem("qr");
  const feedback = document.getElementById("load-feedback");
  const rows = document.getElementById("parent-rows");
  const scanRows = document.querySelector("#bill-scans tbody");
  const full = document.getElementById("bill-full");
  const user = document.getElementById("bill-scans").dataset.user;
  const billNo = form.dataset.bill;
  // An empty Enter (some scanners send a second one) is ignored here rather than
  // answered with the browser's "fill out this field" bubble.
  form.noValidate = true;

  function show(ok, message, actions) {
    feedback.hidden = false;
    feedback.textContent = message;
    feedback.classList.toggle("feedback-ok", ok);
    feedback.classList.toggle("feedback-error", !ok);
    for (const action of actions || []) {
      const button = document.createElement("button");
      button.type = "button";
      button.className = "scan-go";
      button.textContent = action.label;
      button.addEventListener("click", () => {
        feedback.hidden = true;
        queue.add(action.scan);
        input.focus();
      });
      feedback.append(" ", button);
    }
  }

  // Weights are shown as the server renders them (33.0, 7.25); counts as whole numbers.
  function weight(kg) {
    return Number.isInteger(kg) ? kg.toFixed(1) : String(kg);
  }

  function showFigures(bill) {
    const figures = {
      parent_count: String(bill.parent_count),
      capacity: String(bill.capacity),
      child_count: String(bill.child_count),
      weight_kg: weight(bill.weight_kg),
      expected_weight_kg: weight(bill.expected_weight_kg),
    };
    for (const [name, text] of Object.entries(figures)) {
      const field = document.querySelector(`[data-field="${name}"]`);
      if (field) {
        field.textContent = text;
      }
    }
    const progress = document.querySelector('[data-field="progress"]');
    if (progress) {
      progress.max = bill.capacity;
      progress.value = bill.parent_count;
    }
    full.hidden = bill.parent_count < bill.capacity;
  }

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text;
    return td;
  }

  function addParentRow(parent) {
    const empty = rows.querySelector("tr.empty");
    if (empty) {
      empty.remove();
    }
    const row = document.createElement("tr");
    const link = document.createElement("a");
    link.href = `/bags/${encodeURIComponent(parent.qr)}`;
    link.textContent = parent.qr;
    const qrCell = document.createElement("td");
    qrCell.append(link);
    // Removing is a page action with its confirmation: the next page view shows the button.
    row.append(qrCell, cell(`${parent.child_count}/${parent.capacity}`), cell(parent.status), cell(parent.area), cell(""));
    // Same order as the page renders them: by QR.
    const after = Array.from(rows.rows).find((existing) => existing.cells[0].textContent.trim() > parent.qr);
    rows.insertBefore(row, after || null);
  }

  // The scan log row the server has just written, shown without a reload.
  function addScanRow(scan, answer) {
    const empty = scanRows.querySelector("tr.empty");
    if (empty) {
      empty.remove();
    }
    const now = new Date().toISOString().replace("T", " ").slice(0, 19);
    let outcome = "ok";
    if (!answer.ok) {
      outcome = `rejected (${answer.error})`;
    } else if (answer.duplicate) {
      outcome = "ok (duplicate)";
    }
    const row = document.createElement("tr");
    row.className = answer.ok ? "outcome-ok" : "outcome-rejected";
    const area = answer.parent ? answer.parent.area : "—";
    row.append(cell(now), cell("load"), cell(outcome), cell(scan.fields.qr.trim().toUpperCase()), cell(user), cell(area));
    scanRows.prepend(row);
    while (scanRows.rows.length > 20) {
      scanRows.lastElementChild.remove();
    }
  }

  function onAnswer(scan, answer, replayed) {
    addScanRow(scan, answer);
    if (!answer.ok) {
      const actions =
        answer.error === "parent_not_complete"
          ? [{ label: "Load anyway", scan: { url: scan.url, fields: { ...scan.fields, confirm: "1" } } }]
          : [];
      const prefix = replayed ? `${scan.fields.qr}: ` : "";
      show(false, prefix + answer.message, replayed ? [] : actions);
      sound("refused");
      return actions;
    }
    const bill = answer.bill;
    showFigures(bill);
    if (answer.duplicate) {
      show(true, `${answer.parent.qr} is already on this bill (${bill.parent_count}/${bill.capacity}).`);
      sound("duplicate");
    } else {
      addParentRow(answer.parent);
      show(true, `Loaded ${answer.parent.qr}: ${bill.parent_count}/${bill.capacity} parent bags.`);
      sound(bill.parent_count >= bill.capacity ? "complete" : "accepted");
    }
    return [];
  }

  const queue = ScanQueue({
    name: `bill-${billNo}`,
    user: user,
    onAnswer: onAnswer,
    describe: (scan) => scan.fields.qr + (scan.fields.confirm ? " (load anyway)" : ""),
    loginUrl: () => `${form.dataset.login}?next=${encodeURIComponent(location.pathname)}`,
  });
  document.getElementById("queue-box").hidden = false;

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const qr = input.value.trim();
    // Cleared before the answer arrives, so the next scan starts on an empty input.
    input.value = "";
    input.focus();
    if (qr) {
      queue.add({ url: form.action, fields: { qr: qr } });
    }
  });
})();
