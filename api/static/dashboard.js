// genqueue dashboard: confirm dialogs for actions, and live refresh of the
// [data-live] regions (the page is fetched again and those regions swapped in).
(function () {
  "use strict";
  // Milliseconds between refreshes (a page may set window.GQ_REFRESH_MS first).
  var EVERY_MS = window.GQ_REFRESH_MS || 2000;

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  function refresh() {
    var regions = document.querySelectorAll("[data-live]");
    if (!regions.length || document.querySelector("[data-live][data-final]")) {
      return;
    }
    if (document.hidden) {
      window.setTimeout(refresh, EVERY_MS);
      return;
    }
    fetch(window.location.href, { credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.redirected && new URL(response.url).pathname === "/login") {
          window.location.assign(response.url);
          return null;
        }
        return response.ok ? response.text() : null;
      })
      .then(function (html) {
        if (html) {
          var fresh = new DOMParser().parseFromString(html, "text/html");
          regions.forEach(function (old) {
            var next = old.id && fresh.getElementById(old.id);
            if (next) {
              var node = document.importNode(next, true);
              // A [data-stable] part that did not change is kept as it is, so a
              // button the user is clicking is not swapped away under the pointer.
              old.querySelectorAll("[data-stable][id]").forEach(function (part) {
                var same = node.querySelector("#" + CSS.escape(part.id));
                if (same && same.outerHTML === part.outerHTML) {
                  same.replaceWith(part);
                }
              });
              old.replaceWith(node);
            }
          });
          document.body.setAttribute("data-refreshed", String(Date.now()));
        }
      })
      .catch(function () { /* the server is away for a moment: try again */ })
      .finally(function () { window.setTimeout(refresh, EVERY_MS); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    window.setTimeout(refresh, EVERY_MS);
  });
})();
