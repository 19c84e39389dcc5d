// The dashboard refreshes its figures and charts by itself; without this script it is the same page, static.
(function () {
  "use strict";
  var live = document.getElementById("live");
  var updated = document.getElementById("updated");
  var ago = document.getElementById("updated-ago");
  if (!live || !updated || !ago || !window.fetch) return;
  var url = live.getAttribute("data-live-url");
  var every = Math.max(500, 1000 * parseFloat(live.getAttribute("data-refresh-s") || "5"));
  var last = Date.now();
  updated.hidden = false;

  function tick() {
    ago.textContent = String(Math.round((Date.now() - last) / 1000));
  }

  function refresh() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (response) {
        if (!response.ok) throw new Error("status " + response.status);
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        last = Date.now();
        tick();
      })
      .catch(function () {
        // Keep showing what we have; "updated N s ago" tells how old it is.
      })
      .finally(function () {
        window.setTimeout(refresh, every);
      });
  }

  window.setInterval(tick, 1000);
  window.setTimeout(refresh, every);
})();
