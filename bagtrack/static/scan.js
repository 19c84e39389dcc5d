// The scanner page, faster: the scan forms are sent with fetch and the page is
// updated from the JSON answer instead of reloading. Without this file the same
// forms post normally and the server redirects back to the scanner page.
//
// Scans are sent one at a time, in the order they were scanned, so a child
// scanned right after a parent switch goes into the new parent. A scan that
// did not reach the server (network error, server error, expired session,
// rate limit) is never dropped quietly: the banner turns red, lists what was
// not sent, and the code is put back in the input, selected, so Enter resends
// it and the next scan replaces it.
(function () {
  "use strict";

  const page = document.getElementById("scan-parent");
  if (!page) {
    return;
  }
  const byId = (id) => document.getElementById(id);
  const feedback = byId("scan-feedback");
  const start = byId("scan-start");
  const parentInput = byId("parent-qr");
  const childInput = byId("child-qr");
  const csrfMeta = document.querySelector('meta[name="csrf-token"]');
  // Answers that mean the server did not act on the scan: it must be sent again.
  const RESEND_ERRORS = new Set(["login_required", "csrf_failed", "rate_limited", "unavailable"]);
  const queue = [];
  let sending = false;
  let audio = null;

  function activeInput() {
    return page.hidden ? parentInput : childInput;
  }

  function focusInput() {
    activeInput().focus();
  }

  function beep() {
    // Operators do not watch the screen at every scan; a refusal must be heard.
    try {
      audio = audio || new AudioContext();
      const tone = audio.createOscillator();
      tone.frequency.value = 220;
      tone.connect(audio.destination);
      tone.start();
      tone.stop(audio.currentTime + 0.3);
    } catch (error) {
      // No sound on this device: the red banner still shows.
    }
  }

  function show(ok, message) {
    feedback.hidden = false;
    feedback.textContent = message;
    feedback.className = "feedback scan-feedback " + (ok ? "feedback-ok" : "feedback-error");
    if (!ok) {
      beep();
    }
  }

  function childItem(qr) {
    const item = document.createElement("li");
    item.textContent = qr;
    return item;
  }

  function updateChildren(form, answer) {
    const list = byId("scan-children");
    if (form.action.endsWith("/scan/undo")) {
      const taken = Array.from(list.children).find((item) => item.textContent === answer.child.qr);
      if (taken) {
        taken.remove();
      }
    } else if (!answer.duplicate) {
      list.prepend(childItem(answer.child.qr));
    }
  }

  function showParent(parent, children) {
    byId("scan-parent-qr").textContent = parent.qr;
    const link = byId("scan-parent-link");
    link.href = link.dataset.base + encodeURIComponent(parent.qr);
    byId("scan-parent-area").textContent = parent.area;
    const status = byId("scan-status");
    status.textContent = parent.status;
    status.className = "status status-" + parent.status;
    byId("scan-bill").hidden = !parent.bill_no;
    byId("scan-bill-no").textContent = parent.bill_no || "";
    byId("scan-count").textContent = parent.child_count;
    byId("scan-capacity").textContent = parent.capacity;
    const progress = byId("scan-progress");
    progress.max = parent.capacity;
    progress.value = parent.child_count;
    page.querySelectorAll('input[name="parent"]').forEach((input) => {
      input.value = parent.qr;
    });
    page.querySelectorAll('input[name="area"]').forEach((input) => {
      input.value = parent.area;
    });
    // Parent scans send the whole list; child scans and undo send only the child.
    if (children) {
      byId("scan-children").replaceChildren(...children.slice().reverse().map(childItem));
    }
    start.hidden = true;
    page.hidden = false;
    // A reload (or the next visit to this tab) stays on this parent.
    history.replaceState(null, "", "?parent=" + encodeURIComponent(parent.qr));
  }

  async function send(scan) {
    const body = new FormData(scan.form);
    if (scan.code !== null) {
      body.set("qr", scan.code);
    }
    let response;
    try {
      response = await fetch(scan.form.action, {
        method: "POST",
        body: body,
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfMeta ? csrfMeta.content : "" },
      });
    } catch (error) {
      return { sent: false, message: "No connection to the server." };
    }
    let answer = null;
    try {
      answer = await response.json();
    } catch (error) {
      answer = null;
    }
    if (!answer || typeof answer.ok !== "boolean" || response.status >= 500) {
      return { sent: false, message: "The server answered " + response.status + "." };
    }
    if (!answer.ok && RESEND_ERRORS.has(answer.error)) {
      return { sent: false, message: answer.message };
    }
    if (answer.ok && answer.parent) {
      showParent(answer.parent, answer.children);
      if (!answer.children && answer.child) {
        updateChildren(scan.form, answer);
      }
    }
    show(answer.ok, answer.message || (answer.ok ? "Done." : "Refused."));
    return { sent: true };
  }

  function keepUnsent(failed, message) {
    const unsent = [failed, ...queue.splice(0)].map((scan) => scan.code).filter((code) => code !== null);
    show(false, message + (unsent.length ? " Not sent — scan again: " + unsent.join(", ") : " Not sent — try again."));
    const input = activeInput();
    // Never overwrite a scan being typed right now.
    if (unsent.length && input.value === "") {
      input.value = unsent[0];
      input.focus();
      input.select();
    }
  }

  async function drain() {
    if (sending) {
      return;
    }
    sending = true;
    while (queue.length) {
      const scan = queue.shift();
      const result = await send(scan);
      if (!result.sent) {
        keepUnsent(scan, result.message);
        break;
      }
    }
    sending = false;
    if (document.activeElement !== activeInput()) {
      focusInput();
    }
  }

  document.querySelectorAll("form[data-scan]").forEach((form) => {
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const input = form.querySelector('input[name="qr"]');
      let code = null;
      if (input) {
        code = input.value;
        // Cleared at once, so the next scan can be typed while this one is sent.
        input.value = "";
        if (code.trim() === "") {
          focusInput();
          return;
        }
      }
      queue.push({ form: form, code: code });
      drain();
    });
  });

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
})();
