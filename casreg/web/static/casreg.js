// casreg ui: the only script, served by casreg (the Content-Security-Policy allows no other,
// and no inline script). Pages work without it; it adds copy buttons and time clicks.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("button.copy").forEach(function (b) {
    b.addEventListener("click", function () {
      var text = b.getAttribute("data-copy") || "";
      var done = function () { b.textContent = "copied"; b.classList.add("done"); };
      if (navigator.clipboard && window.isSecureContext) {
        navigator.clipboard.writeText(text).then(done, function () {});
      }
    });
  });
  // The alias timeline: a click at a point in time asks what each alias pointed at then.
  var tl = document.getElementById("timeline");
  if (tl) {
    tl.addEventListener("click", function (ev) {
      if (ev.target.closest && ev.target.closest("a")) { return; }  // a segment: its own link
      var box = tl.getBoundingClientRect();
      var scale = parseFloat(tl.dataset.width) / box.width;
      var x = (ev.clientX - box.left) * scale;
      var left = parseFloat(tl.dataset.left), right = parseFloat(tl.dataset.right);
      var t0 = parseFloat(tl.dataset.t0), t1 = parseFloat(tl.dataset.t1);
      var frac = Math.min(1, Math.max(0, (x - left) / (right - left)));
      var when = new Date((t0 + frac * (t1 - t0)) * 1000).toISOString().replace(/\.\d+Z$/, "Z");
      var params = new URLSearchParams(window.location.search);
      params.set("at", when);
      var sel = document.querySelector("#at-form select[name=at_alias]");
      if (sel) { params.set("at_alias", sel.value); }
      window.location.search = params.toString();
    });
  }
});
