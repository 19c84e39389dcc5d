// The scanner page, faster and safe offline: the scan forms go through the
// scan queue of floor.js (stored first, sent in order, kept until answered)
// and the page is updated from the JSON answers instead of reloading. Without
// this file the same forms post normally and the server redirects back.
//
// Each queued scan carries the parent it is meant for, so a scan sent after a
// reload or a closed tab needs nothing from the page. A parent scan (or a
// parent code scanned into the child box) moves the scans queued after it to
// that parent once the server has answered it.
(function () {
  "use strict";

  const page = document.getElementById("scan-parent");
  if (!page || !window.bagtrackFloor) {
    return;
  }
  const { ScanQueue, sound } = window.bagtrackFloor;
  const byId = (id) => document.getElementById(id);
  const feedback = byId("scan-feedback");
  const start = byId("scan-start");
  const complete = byId("scan-complete");
  const parentForm = byId("parent-form");
  const childForm = byId("child-form");
  const undoForm = byId("undo-form");
  const parentInput = byId("parent-qr");
  const childInput = byId("child-qr");
  const areaSelect = parentForm.querySelector('select[name="area"]');
  const AREA_KEY = "bagtrack.area";
  let parentQr = page.dataset.parent || "";
  let parentArea = page.dataset.area || "";

  // What the server's normalising does to a scanned code, near enough to aim the next scans.
  function tidy(code) {
    return code.replace(/[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2060\ufeff]/g, "").trim().toUpperCase();
  }

  function activeInput() {
    return start.hidden ? childInput : parentInput;
  }

  function focusInput() {
    activeInput().focus();
  }

  function show(kind, message) {
    feedback.hidden = false;
    feedback.textContent = message;
    feedback.className = `feedback scan-feedback feedback-${kind}`;
  }

  function childItem(qr) {
    const item = document.createElement("li");
    item.textContent = qr;
    return item;
  }

  function setComplete(isComplete) {
    complete.hidden = !isComplete;
    childForm.hidden = isComplete;
    start.hidden = !isComplete && Boolean(parentQr);
  }

  function showParent(parent, children) {
    const changed = parent.qr !== parentQr;
    parentQr = parent.qr;
    parentArea = parent.area;
    byId("scan-parent-qr").textContent = parent.qr;
    byId("scan-complete-qr").textContent = parent.qr;
    const link = byId("scan-parent-link");
    link.href = link.dataset.base + encodeURIComponent(parent.qr);
    byId("scan-parent-area").textContent = parent.area;
    const status = byId("scan-status");
    status.textContent = parent.status;
    status.className = `status status-${parent.status}`;
    byId("scan-bill").hidden = !parent.bill_no;
    byId("scan-bill-no").textContent = parent.bill_no || "";
    byId("scan-count").textContent = parent.child_count;
    byId("scan-capacity").textContent = parent.capacity;
    const progress = byId("scan-progress");
    progress.max = parent.capacity;
    progress.value = parent.child_count;
    if (children) {
      byId("scan-children").replaceChildren(...children.slice().reverse().map(childItem));
    } else if (changed) {
      byId("scan-children").replaceChildren();
    }
    page.hidden = false;
    setComplete(parent.status === "complete");
    // A reload (or the next visit to this tab) stays on this parent.
    history.replaceState(null, "", `?parent=${encodeURIComponent(parent.qr)}`);
  }

  // Scans waiting to be sent can be aimed at a parent the server has not confirmed yet.
  function aimAt(qr) {
    if (qr === parentQr) {
      return;
    }
    parentQr = qr;
    byId("scan-parent-qr").textContent = qr;
    byId("scan-count").textContent = "…";
    byId("scan-children").replaceChildren();
    page.hidden = false;
    setComplete(false);
  }

  function updateChildren(scan, answer) {
    const list = byId("scan-children");
    if (scan.url.endsWith("/scan/undo")) {
      const taken = Array.from(list.children).find((item) => item.textContent === answer.child.qr);
      if (taken) {
        taken.remove();
      }
    } else if (!answer.duplicate) {
      list.prepend(childItem(answer.child.qr));
    }
  }

  function onAnswer(scan, answer, replayed) {
    if (!answer.ok) {
      show("error", replayed ? `${describe(scan)}: ${answer.message}` : answer.message);
      sound("refused");
      if (scan.url.endsWith("/scan/parent") && tidy(scan.fields.qr) === parentQr && page.dataset.confirmed !== parentQr) {
        // The parent this page was waiting for does not exist for this worker: back to the start.
        parentQr = page.dataset.confirmed || "";
        byId("scan-parent-qr").textContent = parentQr;
        if (!parentQr) {
          page.hidden = true;
          start.hidden = false;
        }
      }
      return [];
    }
    if (answer.parent) {
      page.dataset.confirmed = answer.parent.qr;
      showParent(answer.parent, answer.children);
      if (!answer.children && answer.child) {
        updateChildren(scan, answer);
      }
    }
    const wasChild = answer.child && !scan.url.endsWith("/scan/undo");
    show("ok", answer.message || "Done.");
    const focused = document.activeElement;
    if (!focused || focused === document.body || focused.closest("[hidden]")) {
      focusInput(); // the box that had the focus was just put away (COMPLETE asks for the next parent)
    }
    if (wasChild && answer.duplicate) {
      sound("duplicate");
    } else if (wasChild && answer.parent.status === "complete") {
      sound("complete");
    } else {
      sound("accepted");
    }
    return [];
  }

  // Scans queued after a parent scan follow that parent once it is answered.
  function afterAnswer(scan, answer, rest) {
    const isParentScan = scan.url.endsWith("/scan/parent") || answer.switched;
    if (!answer.ok || !answer.parent || !isParentScan) {
      return rest;
    }
    const aimed = scan.url.endsWith("/scan/parent") ? tidy(scan.fields.qr) : scan.fields.parent;
    for (const later of rest) {
      if (!later.url.endsWith("/scan/parent") && later.fields.parent === aimed) {
        later.fields.parent = answer.parent.qr;
      }
    }
    return rest;
  }

  function describe(scan) {
    if (scan.url.endsWith("/scan/undo")) {
      return `undo in ${scan.fields.parent}`;
    }
    if (scan.url.endsWith("/scan/parent")) {
      return `parent ${scan.fields.qr}`;
    }
    return `${scan.fields.qr} → ${scan.fields.parent}`;
  }

  function loginUrl() {
    const next = parentQr ? `/scan?parent=${encodeURIComponent(parentQr)}` : "/scan";
    return `${page.dataset.login}?next=${encodeURIComponent(next)}`;
  }

  const queue = ScanQueue({
    name: "scan",
    user: page.dataset.user,
    onAnswer: onAnswer,
    afterAnswer: afterAnswer,
    describe: describe,
    loginUrl: loginUrl,
  });

  function take(input) {
    const code = input.value;
    // Cleared at once, so the next scan can be typed while this one is sent.
    input.value = "";
    return code.trim() === "" ? "" : code;
  }

  parentForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const code = take(parentInput);
    if (!code) {
      focusInput();
      return;
    }
    if (!complete.hidden) {
      // After COMPLETE the scan goes to the child route with "switch": a parent code starts that
      // parent, a double-fired last child stays a harmless duplicate, another child is told the parent is full.
      const fields = { parent: parentQr, qr: code, switch: "1" };
      if (areaSelect) {
        fields.area = areaSelect.value || parentArea;
      }
      queue.add({ url: childForm.action, fields: fields });
      return;
    }
    const fields = { qr: code };
    if (areaSelect) {
      fields.area = areaSelect.value;
    }
    queue.add({ url: parentForm.action, fields: fields });
    aimAt(tidy(code));
    focusInput();
  });

  childForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const code = take(childInput);
    if (code) {
      const fields = { parent: parentQr, qr: code, switch: "1" };
      if (areaSelect) {
        fields.area = parentArea;
      }
      queue.add({ url: childForm.action, fields: fields });
    }
    focusInput();
  });

  undoForm.addEventListener("submit", (event) => {
    event.preventDefault();
    queue.add({ url: undoForm.action, fields: { parent: parentQr } });
    focusInput();
  });

  // A biller's area for new parents is remembered on this handheld.
  if (areaSelect) {
    const remembered = localStorage.getItem(AREA_KEY);
    const known = Array.from(areaSelect.options).some((option) => option.value === remembered);
    if (remembered && known && !areaSelect.dataset.chosen) {
      areaSelect.value = remembered;
    }
    areaSelect.addEventListener("change", () => localStorage.setItem(AREA_KEY, areaSelect.value));
  }

  // The page may come from the offline copy: the parent in the address is the one to scan into.
  const asked = new URLSearchParams(location.search).get("parent");
  if (asked && tidy(asked) !== parentQr) {
    aimAt(tidy(asked));
  } else if (page.dataset.status === "complete") {
    setComplete(true);
  }
  page.dataset.confirmed = page.dataset.parent || "";
  byId("queue-box").hidden = false;

  // A wedge scanner types wherever the focus is: a keystroke landing outside
  // an input (after a click on a button, say) is sent to the scan input.
  document.addEventListener("keydown", (event) => {
    const target = event.target;
    if (target instanceof HTMLInputElement || target instanceof HTMLSelectElement) {
      return;
    }
    if (event.ctrlKey || event.altKey || event.metaKey || event.key.length !== 1) {
      return;
    }
    focusInput();
  });
  window.addEventListener("focus", focusInput);
  focusInput();
})();
