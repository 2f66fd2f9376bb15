// Progressive enhancement only: every form works without this file.
// - filters apply on change; one open menu at a time;
// - action forms post in the background, the card leaves the feed, counts update.
(function () {
  "use strict";
  document.documentElement.classList.add("js");

  function flash(text) {
    var box = document.querySelector(".flash");
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
    clearTimeout(flash.timer);
    flash.timer = setTimeout(function () { box.hidden = true; }, 2500);
  }

  function setText(selector, value) {
    document.querySelectorAll(selector).forEach(function (el) { el.textContent = String(value); });
  }

  function removeCard(card) {
    var group = card.closest(".group");
    card.classList.add("leaving");
    setTimeout(function () {
      card.remove();
      if (group) {
        var left = group.querySelectorAll("[data-testid=insight-card]").length;
        var count = group.querySelector("h2 .count");
        if (count) count.textContent = String(left);
        if (left === 0) group.remove();
      }
    }, 250);
  }

  document.addEventListener("change", function (event) {
    var form = event.target.closest("form[data-autosubmit]");
    if (form) form.submit();
  });

  document.addEventListener("toggle", function (event) {
    var opened = event.target;
    if (!(opened instanceof HTMLDetailsElement) || !opened.open) return;
    document.querySelectorAll("details.menu[open]").forEach(function (d) {
      if (d !== opened) d.open = false;
    });
  }, true);

  document.addEventListener("submit", function (event) {
    var form = event.target;
    var mode = form.getAttribute("data-async");
    if (!mode || !window.fetch) return;
    event.preventDefault();
    var card = form.closest("[data-testid=insight-card]");
    var body = new URLSearchParams(new FormData(form, event.submitter));
    // getAttribute: an input named "action" shadows form.action
    fetch(form.getAttribute("action"), {
      method: "POST",
      body: body,
      credentials: "same-origin",
      headers: { "Accept": "application/json" }
    }).then(function (response) {
      return response.json().then(function (data) { return { ok: response.ok, data: data }; });
    }).then(function (result) {
      if (!result.ok) { flash(result.data.error || "That did not work."); return; }
      setText("[data-unread]", result.data.unread);
      setText("[data-total]", result.data.total);
      var menu = form.closest("details");
      if (menu) menu.open = false;
      if (mode === "remove" && card) { removeCard(card); flash("Done."); }
      else { form.reset(); flash("Shared."); }
    }).catch(function () { flash("Network error: nothing was changed."); });
  });
})();
