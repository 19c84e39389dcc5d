// The Print button of the office's paper (dispatch note, label sheet).
(function () {
  "use strict";

  const button = document.getElementById("print-button");
  if (button) {
    button.addEventListener("click", function () {
      window.print();
    });
  }
})();
