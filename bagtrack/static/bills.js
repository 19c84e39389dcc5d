// Loading parent bags onto a bill with a keyboard-wedge scanner: each scan
// (code + Enter) is posted in the background, so the page never reloads and
// the input is ready for the next scan at once. Without this script the form
// posts normally and the server redirects back to the bill.
(function () {
  "use strict";

  const form = document.getElementById("load-form");
  if (!form) {
    return;
  }
  const input = form.elements.namedItem("qr");
  const feedback = document.getElementById("load-feedback");
  const rows = document.getElementById("parent-rows");
  const csrfToken = document.querySelector('meta[name="csrf-token"]').content;
  // An empty Enter (some scanners send a second one) is ignored here rather than
  // answered with the browser's "fill out this field" bubble.
  form.noValidate = true;

  function show(ok, message) {
    feedback.hidden = false;
    feedback.textContent = message;
    feedback.classList.toggle("feedback-ok", ok);
    feedback.classList.toggle("feedback-error", !ok);
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

    const remove = document.createElement("form");
    remove.method = "post";
    remove.action = `${form.action}/${encodeURIComponent(parent.qr)}/remove`;
    const token = document.createElement("input");
    token.type = "hidden";
    token.name = "csrf_token";
    token.value = csrfToken;
    const button = document.createElement("button");
    button.type = "submit";
    button.textContent = "Remove";
    remove.append(token, button);
    const removeCell = document.createElement("td");
    removeCell.append(remove);

    row.append(qrCell, cell(`${parent.child_count}/${parent.capacity}`), cell(parent.status), cell(parent.area), removeCell);
    // Same order as the page renders them: by QR.
    const after = Array.from(rows.rows).find((existing) => existing.cells[0].textContent.trim() > parent.qr);
    rows.insertBefore(row, after || null);
  }

  async function load(qr) {
    const body = new FormData(form);
    body.set("qr", qr);
    let response;
    let answer;
    try {
      response = await fetch(form.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken },
      });
      answer = await response.json();
    } catch (error) {
      show(false, `${qr}: not saved (no answer from the server). Scan it again.`);
      return;
    }
    if (!answer.ok) {
      show(false, answer.message);
      return;
    }
    const bill = answer.bill;
    showFigures(bill);
    if (answer.duplicate) {
      show(true, `${answer.parent.qr} is already on this bill (${bill.parent_count}/${bill.capacity}).`);
    } else {
      addParentRow(answer.parent);
      show(true, `Loaded ${answer.parent.qr}: ${bill.parent_count}/${bill.capacity} parent bags.`);
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const qr = input.value.trim();
    // Cleared before the answer arrives, so the next scan starts on an empty input.
    input.value = "";
    input.focus();
    if (qr) {
      load(qr);
    }
  });
})();
