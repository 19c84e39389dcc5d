// Corrections, Remove and Close ask once more before they post: a form with data-confirm is sent
// only after the browser's confirmation. Without this script the reason field
// in the opened form is the confirmation.
(function () {
  "use strict";

  document.addEventListener("submit", function (event) {
    const form = event.target;
    const question = form.dataset && form.dataset.confirm;
    if (question && !window.confirm(question.endsWith("?") ? question : question + "?")) {
      event.preventDefault();
    }
  });
})();
